"""Every command that reads a file, fuzzed in-process: exit 0, 1 or 2 with a message, never a
traceback (issue 15).

Two kinds of input per command: arbitrary bytes, and documents derived from the file schemas
(a trace with every action of the vocabulary, a counterexample, a conformance case, a
configuration) and then mutated: wrong types at any field, booleans and floats for integers,
huge and negative numbers, deep nesting, duplicate keys, unknown fields, actions and variants,
integer literals longer than Python converts, ``NaN``, non-UTF-8 bytes, truncation.

The ``quick`` profile (the default) keeps the whole file to about 20 s; set
``IVSHMEM_TEST_PROFILE=deep`` for long runs (many more examples per command).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ivshmem_model.properties.progress as progress_module
import ivshmem_model.properties.stateful  # noqa: F401  (registers the quick, check and deep profiles)
from ivshmem_model.cli import main
from ivshmem_model.model.actions import ACTION_TYPES, Action, trace_from_json
from ivshmem_model.model.jsonfile import MAX_DEPTH, MAX_FILE_BYTES, MAX_INT_DIGITS
from ivshmem_model.properties.progress import Progress
from ivshmem_model.properties.trace import expectations

ROOT = Path(__file__).resolve().parent.parent
PROFILE = os.environ.get("IVSHMEM_TEST_PROFILE", "quick")
DEEP = PROFILE == "deep"

# ---------------------------------------------------------------------------------------------
# Schema-derived seeds


FIELD_VALUES: dict[str, Any] = {
    "endpoint": 0, "peer": 0, "vector": 0, "value": 1, "offset": 0, "size": 4,
    "enabled": True, "masked": False, "device": "ivshmem-doorbell",
    "props": {"chardev": True, "vectors": 1, "master": "on", "ioeventfd": True},
    "fd": "eventfd", "extra_fds": ["pipe", "file:4096"], "register": "command",
    "hotplug": False,
}


def schema_step(cls: type[Action]) -> dict[str, Any]:
    """A valid step of ``cls`` with every field present (optional ones too)."""
    step: dict[str, Any] = {"action": cls.name}
    for f in fields(cls):  # a field this table does not know yet: its default, or 0
        step[f.name] = FIELD_VALUES.get(f.name, 0 if f.default is MISSING else f.default)
    return step


def schema_trace() -> dict[str, Any]:
    """The example of docs/trace-format.md, then one step of every action type."""
    return {
        "format": "ivshmem-trace/1",
        "config": {"endpoints": 2,
                   "server": {"policy": "scripted", "vectors": 1, "shm_size": 4194304,
                              "messages": [[0, None], [-1, "shm"]]},
                   "host": {"kvm_msi_irqfd": False, "ioeventfd": True},
                   "clients": [1],
                   "realize": [{"device": "ivshmem-plain", "props": {"memdev_size": 4096}}]},
        "steps": [{"action": "connect", "endpoint": 0},
                  {"action": "server_send", "endpoint": 0, "value": 0, "fd": None},
                  {"action": "server_send", "endpoint": 0, "value": 0, "fd": None},
                  {"action": "server_send", "endpoint": 0, "value": -1, "fd": "shm"},
                  *(schema_step(cls) for cls in ACTION_TYPES.values())],
    }


def counterexample_of(trace: dict[str, Any]) -> dict[str, Any]:
    return {"format": "ivshmem-counterexample/1", "name": "fuzzed", "property": "memory_safety",
            "summary": "s", "origin": "o",
            "trace": {"config": trace["config"], "steps": trace["steps"]},
            "expect": {"seed": {"violates": "memory_safety", "step": 3, "line": 439},
                       "fixed": "holds"},
            "found_by": {"checker": "explore", "seconds": 0.5}}


def conformance_of(trace: dict[str, Any]) -> dict[str, Any]:
    return {"format": "ivshmem-conformance/1", "name": "fuzzed", "summary": "s", "origin": "o",
            "trace": {"config": trace["config"], "steps": trace["steps"][:3]},
            "qemu": {"7.2": [{"enabled": True, "observations": ["{}"]}]}}


def corpus_seed() -> dict[str, Any]:
    """A real counterexample (8 steps): mutations that keep it valid replay a violation.  Its
    expectations are recomputed, so that it replays whatever the variants are today."""
    loaded: dict[str, Any] = json.loads(
        (ROOT / "counterexamples" / "peer-eventfds-freed-twice.json").read_text())
    trace = trace_from_json(loaded["trace"], require_format=False)
    loaded["expect"] = expectations(trace.config, trace.steps, loaded["property"])
    return loaded


TRACE_SEEDS = [schema_trace(), counterexample_of(schema_trace()),
               conformance_of(schema_trace()), corpus_seed()]
CONFIG_SEEDS = [json.loads(p.read_text()) for p in sorted((ROOT / "configs").glob("*.json"))
                if p.stat().st_size < 4096] or [{"config": {"endpoints": 1}}]

# ---------------------------------------------------------------------------------------------
# Mutations

# Raw JSON text put where a value stands (the sentinel string is replaced after dumping).
SENTINEL = "\x00raw\x00"
RAW_TEXTS = [
    "NaN", "Infinity", "-Infinity", "9" * 5000, "-" + "9" * (MAX_INT_DIGITS + 1), "1e400",
    "4.0", "4E0", "-0", "-0.0", '{"a": 1, "a": 2}', "[" * (MAX_DEPTH + 8) + "]" * (MAX_DEPTH + 8),
    "1" * MAX_INT_DIGITS, '"\\ud800"', '"\\u0000"',
]
NASTY = st.one_of(
    st.booleans(), st.none(),
    st.sampled_from([4.0, 0.0, -1.0, 1.5, 1e308, -1e308, 2**63, 2**64, -(2**63) - 1, 10**30,
                     -1, 65536, 4096, 2**32]),
    st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["holds", "seed", "fixed", "warp", "eventfd", "shm:7", "file:x", "on",
                     "ivshmem", "ivshmem-plain", "memory_safety", "nope", ""]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.sampled_from(["violates", "step", "a", "action"]),
                    st.integers(min_value=-1, max_value=9), max_size=2),
)
# Values a valid file could hold: they keep the document readable and change what it does.
PLAUSIBLE_INTS = st.one_of(st.integers(min_value=-2, max_value=70),
                           st.sampled_from([255, 256, 4092, 4096, 65535, 65536, 2**32 - 1,
                                            2**63 - 1, 4194304]))
PLAUSIBLE_TEXTS = st.sampled_from([
    "connect", "disconnect", "deliver", "realize", "ring", "reset", "unplug", "migrate",
    "handle_irq", "server_exit", "ivshmem", "ivshmem-plain", "ivshmem-doorbell", "eventfd",
    "shm", "shm:4096", "pipe", "devnull", "file:0", "memfd-ro:8", "contrib", "scripted", "on",
    "off", "auto", "memfd", "ram", "file", "socket", "null", "command", "bar0", "bar2",
    "msix_control", "holds", "seed", "fixed", "qemu-7.2", "memory_safety", "no_abort", "4M"])
UNKNOWN_KEYS = st.sampled_from(["zz", "qemu-99", "warp", "before-000000000000", "Action",
                                "endpoint", "step", "violates", ""])


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            out += _paths(value, (*prefix, index))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _replace(obj[head], rest, value)
    return copy


def _mutate_steps(draw: st.DrawFn, doc: Any) -> Any:
    """Drop, repeat or swap steps, or insert a step of any action type: the file stays
    readable and runs differently."""
    where = next((p for p in _paths(doc) if p and p[-1] == "steps"
                  and isinstance(_get(doc, p), list)), None)
    if where is None:
        return doc
    steps = list(_get(doc, where))
    how = draw(st.sampled_from(["drop", "repeat", "swap", "insert"]))
    at = draw(st.integers(min_value=0, max_value=max(len(steps) - 1, 0)))
    if how == "insert" or not steps:
        step = schema_step(draw(st.sampled_from(list(ACTION_TYPES.values()))))
        if "endpoint" in step:
            step["endpoint"] = draw(st.integers(min_value=0, max_value=1))
        steps.insert(at, step)
    elif how == "drop":
        del steps[at]
    elif how == "repeat":
        steps.insert(at, steps[at])
    else:
        other = draw(st.integers(min_value=0, max_value=len(steps) - 1))
        steps[at], steps[other] = steps[other], steps[at]
    return _replace(doc, where, steps)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> bytes:
    """A seed document with one to four mutations, as file bytes."""
    doc: Any = draw(st.sampled_from(seeds))
    raws: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(_paths(doc)))
        target = _get(doc, path)
        kind = draw(st.sampled_from(["plausible", "plausible", "plausible", "steps", "steps",
                                     "value", "raw", "nest", "delete", "add", "duplicate"]))
        if kind == "plausible":
            if isinstance(target, bool):
                doc = _replace(doc, path, not target)
            elif isinstance(target, int):
                doc = _replace(doc, path, draw(PLAUSIBLE_INTS))
            elif isinstance(target, str):
                doc = _replace(doc, path, draw(PLAUSIBLE_TEXTS))
        elif kind == "steps":
            doc = _mutate_steps(draw, doc)
        elif kind == "value":
            doc = _replace(doc, path, draw(NASTY))
        elif kind == "raw":
            raws.append(draw(st.sampled_from(RAW_TEXTS)))
            doc = _replace(doc, path, f"{SENTINEL}{len(raws) - 1}")
        elif kind == "nest":
            depth = draw(st.integers(min_value=2, max_value=MAX_DEPTH + 10))
            for _ in range(depth):
                target = [target] if draw(st.booleans()) else {"a": target}
            doc = _replace(doc, path, target)
        elif kind == "delete" and path:
            parent = _get(doc, path[:-1])
            if isinstance(parent, dict):
                doc = _replace(doc, path[:-1], {k: v for k, v in parent.items()
                                                if k != path[-1]})
            else:
                doc = _replace(doc, path[:-1], parent[:path[-1]] + parent[path[-1] + 1:])
        elif kind == "add" and isinstance(target, dict):
            doc = _replace(doc, path, {**target, draw(UNKNOWN_KEYS): draw(NASTY)})
        elif kind == "duplicate" and isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            pairs = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in target.items())
            raws.append("{" + pairs + f", {json.dumps(key)}: {json.dumps(draw(NASTY))}" + "}")
            doc = _replace(doc, path, f"{SENTINEL}{len(raws) - 1}")
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 1])))
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(f"{SENTINEL}{index}"), raw)
    data = text.encode("utf-8", "surrogatepass")
    tail = draw(st.sampled_from(["", "", "", "bad-byte", "truncate"]))
    if tail and data:
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data = data[:at] + b"\xff\xfe" + data[at:] if tail == "bad-byte" else data[:at]
    return data


# ---------------------------------------------------------------------------------------------
# Running a command in-process


Command = Callable[[str], list[str]]
COMMANDS: dict[str, tuple[Command, list[dict[str, Any]], int]] = {
    # name: (argv for a file, the seeds its files are made from, examples under quick)
    "run": (lambda p: ["run", p], TRACE_SEEDS, 60),
    "run --json": (lambda p: ["run", p, "--json"], TRACE_SEEDS, 60),
    "run --program": (lambda p: ["run", p, "--program"], TRACE_SEEDS, 30),
    "replay": (lambda p: ["replay", p], TRACE_SEEDS, 60),
    "replay --json": (lambda p: ["replay", p, "--json"], TRACE_SEEDS, 30),
    "minimize": (lambda p: ["minimize", p, "-o", p + ".out"], TRACE_SEEDS, 40),
    "graph --sequence": (lambda p: ["graph", "--sequence", p], TRACE_SEEDS, 40),
    "graph --counterexample": (lambda p: ["graph", "--counterexample", p, "--max-states", "50"],
                               TRACE_SEEDS, 15),
    "graph --config": (lambda p: ["graph", "--config", p, "--depth", "1"], CONFIG_SEEDS, 30),
    "explore --config": (lambda p: ["explore", "--config", p, "--depth", "1"], CONFIG_SEEDS,
                         30),
}
DEEP_EXAMPLES = 1500


def examples(name: str, kind: str) -> settings:
    count = COMMANDS[name][2]
    if kind == "bytes":
        count = 40
    return settings(settings.get_profile(PROFILE),
                    max_examples=DEEP_EXAMPLES if DEEP else count,
                    suppress_health_check=list(HealthCheck), deadline=None)


def call(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with its output captured; an exception escapes (the test fails)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# inputs tried per command and kind, and their exit codes: shown with -s
TRIED: dict[str, Counter[int]] = {}


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried() -> Iterator[None]:
    yield
    for name, codes in sorted(TRIED.items()):
        shown = ", ".join(f"exit {code}: {count}" for code, count in sorted(codes.items()))
        print(f"\n{PROFILE}: {name}: {codes.total()} inputs ({shown})", end="")


def check_clean(name: str, data: bytes, kind: str) -> None:
    codes = TRIED.setdefault(f"{name} ({kind})", Counter())
    with tempfile.TemporaryDirectory(prefix="ivfz-") as folder:
        path = os.path.join(folder, "input.json")
        Path(path).write_bytes(data)
        code, _out, err = call(COMMANDS[name][0](path))
    codes[code] += 1
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        assert err.strip(), "exit 2 without a message"
        assert path in err, f"the message does not name the file: {err}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_arbitrary_bytes_give_a_message_not_a_traceback(name: str) -> None:
    @examples(name, "bytes")
    @given(st.one_of(st.binary(max_size=400),
                     st.text(alphabet='{}[]":,0123456789-.eE truefalsn\\u', max_size=200)
                     .map(lambda text: text.encode())))
    def fuzz(data: bytes) -> None:
        check_clean(name, data, "bytes")

    fuzz()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_mutated_documents_give_a_message_not_a_traceback(name: str) -> None:
    @examples(name, "mutated")
    @given(mutated(COMMANDS[name][1]))
    def fuzz(data: bytes) -> None:
        check_clean(name, data, "mutated")

    fuzz()


def test_the_seeds_are_valid(tmp_path: Path) -> None:
    """Unmutated, every seed is read (a seed that is refused tests nothing beyond it)."""
    for index, seed in enumerate(TRACE_SEEDS):
        path = tmp_path / f"seed{index}.json"
        path.write_text(json.dumps(seed))
        code, _out, err = call(["run", str(path), "--json"])
        assert code == 0, err
    for index, seed in enumerate(CONFIG_SEEDS):
        path = tmp_path / f"config{index}.json"
        path.write_text(json.dumps(seed))
        code, _out, err = call(["explore", "--config", str(path), "--depth", "1"])
        assert code == 0, err


# ---------------------------------------------------------------------------------------------
# The failures the fuzzer found, one by one


CX = json.dumps(corpus_seed())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 100_000 + "]" * 100_000, f"nest more than {MAX_DEPTH} deep"),
        ('{"a":' * 5000 + "1" + "}" * 5000, f"nest more than {MAX_DEPTH} deep"),
        (CX.replace('"endpoint": 0', '"endpoint": ' + "9" * 5000, 1),
         "an integer of 5,000 digits at line 1 column"),
        (CX.replace('"step": 7', '"step": 7.0'), ".step: expected an integer, got 7.0"),
        (CX.replace('"step": 7', '"step": true'), ".step: expected an integer, got true"),
        (CX.replace('"step": 7', '"step": 7, "line": 4.0'),
         ".line: expected an integer, got 4.0"),
        (CX.replace('"fixed": "holds"', '"qemu-99": "holds"'),
         'expect.qemu-99: unknown variant "qemu-99"'),
        (CX.replace('"format":', '"format": 1, "format":'), 'duplicate key "format"'),
        (CX.replace('"endpoint": 0', '"endpoint": NaN', 1), "NaN is not JSON"),
        (CX.replace('"summary": "', '"summary": "\udcff'), "not UTF-8 text: byte 0xff at line"),
    ],
    ids=["deep-array", "deep-object", "long-int", "float-step", "bool-step", "float-line",
         "unknown-variant", "duplicate-key", "nan", "non-utf8"],
)
@pytest.mark.parametrize("command", ["run", "replay", "minimize", "graph"])
def test_each_found_failure_is_a_clean_exit_2(tmp_path: Path, text: str, fragment: str,
                                              command: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    argv = {"run": ["run", str(path)], "replay": ["replay", str(path)],
            "minimize": ["minimize", str(path)], "graph": ["graph", "--sequence", str(path)]}
    code, _out, err = call(argv[command])
    assert code == 2, err
    assert fragment in err, err
    assert str(path) in err


def test_unknown_property_in_expect_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(CX.replace('"violates": "memory_safety"', '"violates": "memory_safty"', 1))
    code, _out, err = call(["replay", str(path)])
    assert code == 2
    assert 'expect.seed.violates: unknown property "memory_safty"' in err


def test_replay_dir_reports_a_bad_file_and_runs_the_others(tmp_path: Path) -> None:
    good = corpus_seed()
    (tmp_path / "a-good.json").write_text(json.dumps(good))
    (tmp_path / "b-bad.json").write_text(CX.replace('"fixed": "holds"', '"nope": "holds"'))
    (tmp_path / "c-deep.json").write_text("[" * 1000 + "]" * 1000)
    (tmp_path / "d-good.json").write_text(json.dumps({**good, "name": "again"}))
    code, out, err = call(["replay", str(tmp_path)])
    assert code == 2
    assert f"ERROR {tmp_path / 'b-bad.json'}: expect.nope: unknown variant" in err
    assert f"ERROR {tmp_path / 'c-deep.json'}: arrays and objects nest more than" in err
    assert out.count("ok   a-good.json") == len(good["expect"])
    assert out.count("ok   d-good.json") == len(good["expect"])
    assert "4 files" in out and "2 unreadable" in out


def test_a_file_over_the_size_cap_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:  # sparse: nothing is written but the size
        handle.truncate(MAX_FILE_BYTES + 1)
    code, _out, err = call(["run", str(path)])
    assert code == 2
    assert f"the file is {MAX_FILE_BYTES + 1:,} bytes; at most {MAX_FILE_BYTES:,}" in err


def test_a_stream_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    code, _out, err = call(["run", "/dev/zero"])
    assert code == 2
    assert "/dev/zero: the file is larger; at most" in err


@pytest.mark.parametrize("text", ["[" + ", ".join(["{}"] * 100_000) + "]",
                                  json.dumps({**schema_trace(), "steps": "x" * 100_000})])
def test_a_message_shows_only_the_beginning_of_a_large_value(tmp_path: Path,
                                                             text: str) -> None:
    """A wrong top level or field is named with its beginning, not its whole text (the
    loader once printed a 16 MB array back)."""
    path = tmp_path / "big.json"
    path.write_text(text)
    code, _out, err = call(["run", str(path)])
    assert code == 2
    assert len(err) < 300, err[:300]
    assert "…" in err


def test_a_directory_is_not_a_trace(tmp_path: Path) -> None:
    code, _out, err = call(["run", str(tmp_path)])
    assert code == 2
    assert f"{tmp_path}: is a directory, not a file" in err


# ---------------------------------------------------------------------------------------------
# Long traces: progress on stderr


def long_trace(steps: int) -> dict[str, Any]:
    """Connect, realize, then guest register reads and shared-memory writes (always enabled)."""
    head = [{"action": "connect", "endpoint": 0},
            {"action": "realize", "endpoint": 0, "device": "ivshmem-doorbell",
             "props": {"chardev": True, "vectors": 1}}]
    cycle = [{"action": "mmio_read", "endpoint": 0, "offset": 8, "size": 4},
             {"action": "shm_write", "endpoint": 0, "offset": 0, "value": 7, "size": 4}]
    return {"format": "ivshmem-trace/1",
            "config": {"endpoints": 1, "server": {"policy": "contrib", "vectors": 1}},
            "steps": head + [cycle[i % 2] for i in range(steps - len(head))]}


def test_progress_lines_after_the_quiet_time() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress("run t.json", 10_000, out, quiet=3.0, interval=5.0,
                        clock=lambda: now[0])
    progress(256)
    assert out.getvalue() == "", "nothing within the quiet time"
    now[0] = 4.0
    progress(4000)
    now[0] = 6.0
    progress(6000)  # within the interval: no line
    now[0] = 9.5
    progress(9000)
    progress.finish(10_000)
    assert out.getvalue().splitlines() == [
        "run t.json: step 4,000 of 10,000 (40%), 1,000 steps/s, about 6 s left",
        "run t.json: step 9,000 of 10,000 (90%), 947 steps/s, about 1 s left",
        "run t.json: 10,000 steps in 10 s (1,053 steps/s)",
    ]


def test_a_short_run_prints_no_progress(tmp_path: Path) -> None:
    path = tmp_path / "long.json"
    path.write_text(json.dumps(long_trace(600)))
    code, _out, err = call(["run", str(path)])
    assert code == 0
    assert err == ""


@pytest.mark.parametrize("command", ["run", "replay"])
def test_a_long_run_shows_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   command: str) -> None:
    """With the quiet time at 0 (as if the machine were slow), ``run`` and ``replay`` report
    the steps on stderr and finish with the total."""
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr(progress_module, "INTERVAL_SECONDS", 0.0)
    trace = long_trace(1000)
    path = tmp_path / "long.json"
    if command == "replay":
        cx = {**counterexample_of(trace), "property": "no_abort",
              "expect": {"seed": "holds"}}
        cx.pop("found_by")
        path.write_text(json.dumps(cx))
        code, out, err = call(["replay", str(path)])
        label = "replay long.json [seed]"
        assert code == 0, out + err
    else:
        path.write_text(json.dumps(trace))
        code, out, err = call(["run", str(path)])
        label = f"run {path}"
        assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith(f"{label}: step 0 of 1,000 (0%)")
    assert any(line.startswith(f"{label}: step 768 of 1,000 (76%)") for line in lines)
    assert lines[-1].startswith(f"{label}: 1,000 steps in ")

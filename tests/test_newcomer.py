"""A newcomer's path: every stumble a new user met, each pinned by a test that would have
caught it (the printed program runs, a pipe closed early is quiet, the docs say what a
hand-written trace needs, the tables fit a terminal, the README lists what exists)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from rich.console import Console

from ivshmem_model.check import Cell, Evidence, check_table, count, unreached_reason
from ivshmem_model.cli import build_parser, main
from ivshmem_model.model.actions import load_counterexample, trace_from_json
from ivshmem_model.model.device import Reg
from ivshmem_model.model.variants import QEMU_7_2, SEED, VARIANTS, get_variant
from ivshmem_model.properties.invariants import PROPERTIES, SAFETY, violations
from ivshmem_model.properties.trace import run_trace

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "counterexamples"
DOCS = ROOT / "docs" / "trace-format.md"
CLI = [sys.executable, "-m", "ivshmem_model.cli"]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# ---------------------------------------------------------------------------------------------
# run --program, and pipes


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.stem)
def test_run_program_runs_as_printed(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cx = load_counterexample(str(path))
    variant = cx.expect[0][0]
    assert main(["run", str(path), "--program", "--variant", variant]) == 0
    program = capsys.readouterr().out.split("\nvariant ")[0]
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    final = run_trace(cx.trace, get_variant(variant)).final
    assert final is not None
    assert done.stdout.strip() == repr(violations(final))


def test_run_piped_into_a_reader_that_stops_is_quiet(tmp_path: Path) -> None:
    steps = [{"action": "connect", "endpoint": 0},
             {"action": "realize", "endpoint": 0, "device": "ivshmem-doorbell",
              "props": {"chardev": True, "vectors": 1}}]
    steps += [{"action": "mmio_read", "endpoint": 0, "offset": 8, "size": 4}] * 3000
    path = tmp_path / "long.trace.json"
    path.write_text(json.dumps({"format": "ivshmem-trace/1",
                                "config": {"endpoints": 1}, "steps": steps}))
    with subprocess.Popen([*CLI, "run", str(path), "--program"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=ROOT) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"from ivshmem_model.model.actions import")
        proc.stdout.close()  # what `| head -1` does
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert err == ""
    assert code in (0, 141)


# ---------------------------------------------------------------------------------------------
# Texts that point outside the repository


OUTSIDE = re.compile(r"design §|facts §|\.\./shared|shared/|design\.md|style\.md")


def test_readme_docs_and_help_point_only_inside_the_repository() -> None:
    texts = {"README.md": (ROOT / "README.md").read_text(), "docs": DOCS.read_text(),
             "notebooks/README.md": (ROOT / "notebooks" / "README.md").read_text()}
    texts["--help"] = build_parser().format_help()
    for name, parser in _subcommands().items():
        texts[f"{name} --help"] = parser.format_help()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        texts[nb.name] = nb.read_text()
    for name, text in texts.items():
        # "shared memory" is the device's subject, not a folder
        hits = [m.group(0) for m in OUTSIDE.finditer(text.replace("shared memory", ""))]
        assert not hits, f"{name} points outside the repository: {hits}"


# ---------------------------------------------------------------------------------------------
# docs/trace-format.md: realize reads the setup messages, BAR0, deliver shows what it took


def _doc_example() -> dict[str, object]:
    text = DOCS.read_text()
    start = text.index("A minimal contrib-server trace")
    block = text[text.index("```json", start) + len("```json"):]
    result: dict[str, object] = json.loads(block[:block.index("```")])
    return result


def test_trace_format_lists_the_bar0_registers() -> None:
    text = DOCS.read_text()
    for reg in Reg:
        assert f"| {int(reg)} | `{reg.name}` |" in text


def test_trace_format_example_realize_reads_setup_deliver_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = _doc_example()
    trace = trace_from_json(example)
    result = run_trace(trace, SEED)
    assert result.disabled_step is None
    realize, deliver = result.steps[1], result.steps[2]
    assert realize.received and realize.received[-1] == {"value": -1, "fd": "shm"}
    assert deliver.received == [{"value": 0, "fd": "eventfd"}]
    # one `deliver` too many: disabled, and `run` says why
    steps = [*example["steps"], {"action": "deliver", "endpoint": 0}]  # type: ignore[list-item]
    path = tmp_path / "one-too-many.trace.json"
    path.write_text(json.dumps({**example, "steps": steps}))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "received: 0, 0, -1 (shm)" in out
    assert "received: 0 (eventfd)" in out
    assert "DISABLED" in out and "realize reads the setup messages itself" in out
    assert main(["run", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"][2]["received"] == [{"value": 0, "fd": "eventfd"}]
    assert "received" not in report["steps"][0]


# ---------------------------------------------------------------------------------------------
# check: the table, its counts, its progress


def test_count_never_shows_zero_thousands() -> None:
    for n in (0, 7, 14, 999, 1000, 4567, 12_345, 124_000, 999_999, 1_234_567):
        text = count(n)
        assert not re.fullmatch(r"0(\.0)?[kM]", text), text
        value = float(text.rstrip("kM")) * {"k": 1e3, "M": 1e6}.get(text[-1], 1)
        assert abs(value - n) <= 0.05 * n, (n, text)


def test_check_table_fits_80_columns_one_line_per_property() -> None:
    variants = [get_variant(v) for v in ("seed", "qemu-7.2", "fixed")]
    cells = {}
    for i, prop in enumerate(SAFETY):
        for v in variants:
            cell = Cell(explored=1_234_567, tested=12_345)
            if i % 3 == 0:
                cell.violated.append(Evidence("hypothesis", 99, "f.json", "m"))
            elif i % 3 == 1:
                cell.proved = 123.4
            cells[(prop.name, v.name)] = cell
    table, legend = check_table("ivshmem-model check (999 s)", variants, cells, {}, "check-out")
    buffer = io.StringIO()
    Console(file=buffer, width=80).print(table)
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in [*lines, *legend]) <= 80
    for prop in PROPERTIES:
        rows = [line for line in lines if f" {prop.name}" in line]
        assert len(rows) == 1, f"{prop.name} wraps: {rows}"
    assert any("VIOLATED 99 hyp" in line for line in lines)
    assert any("intx_raised under qemu-7.2" in line for line in legend)


def test_unreached_intx_under_qemu_72_says_why() -> None:
    reason = unreached_reason("intx_raised", QEMU_7_2)
    assert reason is not None and "legacy 'ivshmem' device" in reason
    assert unreached_reason("intx_raised", SEED) is None


def test_check_json_progress_on_stderr_without_source_tags(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"name": "tiny", "config": {"endpoints": 1}, "depth": 3,
                                  "seconds": 2}))
    done = subprocess.run(
        [*CLI, "check", "--config", str(config), "--variant", "fixed", "--no-hypothesis",
         "--json", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
        env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["runs"][0]["config"] == "tiny"
    assert "tiny / fixed" in done.stderr
    assert "z3:" in done.stderr
    assert not re.search(r"\w+\.py:\d+", done.stderr), done.stderr


# ---------------------------------------------------------------------------------------------
# prove and replay


def test_prove_shows_progress_and_explains_fate_and_state(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "prove", "--variant", "seed", "--depth", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert "[1/5" in done.stderr and "[5/5" in done.stderr
    assert "[fate]" in done.stdout and "[state]" in done.stdout
    legend = done.stdout[done.stdout.index("\n\n"):]
    assert "[fate]" in legend and "[state]" in legend


def test_replay_ends_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(CORPUS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ok = sum(1 for line in lines if line.startswith("ok "))
    files = len(list(CORPUS.glob("*.json")))
    assert lines[-1] == f"{files} files, {ok} expectations: {ok} ok, 0 failed"


# ---------------------------------------------------------------------------------------------
# README and --help


def _readme_commands() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Commands"):]
    block = block[block.index("```sh") + 5:]
    block = block[:block.index("```")]
    joined = re.sub(r"\n\s+", " ", block)  # continuation lines
    out: dict[str, str] = {}
    for line in joined.splitlines():
        for part in line.split(";"):
            words = part.split()
            if len(words) >= 2 and words[0] == "ivshmem-model":
                out[words[1]] = out.get(words[1], "") + " " + part.split("#")[0]
    return out


def test_readme_command_list_names_every_option() -> None:
    readme = _readme_commands()
    for name, parser in _subcommands().items():
        assert name in readme, f"README misses `ivshmem-model {name}`"
        if name in ("server", "client"):
            continue  # the contrib programs' own flags, listed by --help
        for action in parser._actions:
            if not action.option_strings or "-h" in action.option_strings:
                continue
            assert any(re.search(re.escape(o) + r"\b", readme[name])
                       for o in action.option_strings), f"README misses {name} {action.dest}"


@pytest.mark.parametrize("command", ["run", "explore", "graph"])
def test_help_lists_the_variants(command: str) -> None:
    text = " ".join(_subcommands()[command].format_help().split())
    text = text.replace("- ", "-")  # argparse wraps lines after a hyphen too
    for name in VARIANTS:
        assert name in text


# ---------------------------------------------------------------------------------------------
# Packaging and notebooks


def test_pyproject_license_is_spdx_and_every_package_is_listed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    listed = set(project["tool"]["setuptools"]["packages"])
    # one namespace: model/ and properties/ install under ivshmem_model (through the links)
    assert (ROOT / "ivshmem_model" / "model").resolve() == ROOT / "model"
    assert (ROOT / "ivshmem_model" / "properties").resolve() == ROOT / "properties"
    assert not {name for name in listed if not name.startswith("ivshmem_model")}
    for top in ("model", "properties", "ivshmem_model"):
        for folder in [ROOT / top, *(ROOT / top).rglob("*")]:
            if not folder.is_dir() or folder.is_symlink() or folder.name == "__pycache__":
                continue
            if any(f.is_file() for f in folder.iterdir()):
                parts = folder.relative_to(ROOT).parts
                dotted = ".".join(parts if top == "ivshmem_model" else ("ivshmem_model", *parts))
                assert dotted in listed, f"{dotted} is not in [tool.setuptools] packages"


def test_notebooks_are_committed_without_outputs() -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [], f"{nb.name} has outputs"
                assert cell.get("execution_count") is None, f"{nb.name} was executed"

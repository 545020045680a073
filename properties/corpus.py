"""The counterexample corpus: minimizing, de-duplicating, expectations and the README table.

A counterexample's *outcome* under a variant is ``None`` when the property holds on its trace,
or the site (``properties.invariants.site_of``) where the property first fails.  Minimizing
keeps every variant's outcome: the same violation at the same site where there was one, and
"holds" where it held, so a ``before-<commit>`` counterexample stays one the seed passes.

Two counterexamples are duplicates when they violate the same property at the same site and
their traces are equal up to a renumbering of the endpoints (:func:`identity`).

``differential_search`` is the explorer run for the history corpus: breadth-first over the
states of a ``before-<commit>`` variant (``properties.explore.explore`` with the graph kept),
the shortest path to each property and site that variant violates while a baseline variant
(the seed) holds that property on the same trace.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ivshmem_model.model.actions import (
    Action,
    Config,
    Counterexample,
    Trace,
    counterexample_from_json,
    load_counterexample,
    load_json_file,
)
from ivshmem_model.model.variants import SEED, VARIANTS, Variant, get_variant
from ivshmem_model.properties.invariants import site_of, violations
from ivshmem_model.properties.minimize import Keep, ddmin
from ivshmem_model.properties.trace import expectations, run_trace

Steps = tuple[Action, ...]
Outcome = str | None  # None: holds; otherwise the site of the first violation
Outcomes = dict[str, Outcome]

# ---------------------------------------------------------------------------------------------
# Outcomes and expectations


def outcome(config: Config, steps: Steps, variant: Variant, prop: str) -> Outcome | bool:
    """The site where ``prop`` first fails under ``variant``, ``None`` if it holds, or
    ``False`` when a step is not enabled (the trace does not run)."""
    result = run_trace(Trace(config, steps), variant)
    if result.disabled_step is not None:
        return False
    hit = result.first(prop)
    return None if hit is None else site_of(hit.message)


def outcomes(config: Config, steps: Steps, prop: str, names: Iterable[str]) -> Outcomes | None:
    """Every named variant's outcome, or ``None`` if the trace does not run under one."""
    out: Outcomes = {}
    for name in names:
        got = outcome(config, steps, get_variant(name), prop)
        if got is False:
            return None
        out[name] = got if isinstance(got, str) else None
    return out


def update_expectations(path: str | Path) -> bool:
    """Rewrite the ``expect`` of the counterexample file at ``path`` with what every variant
    does now; the rest of the file is kept.  True when the file changed."""
    path = Path(path)
    cx = load_counterexample(str(path))
    expect = expectations(cx.trace.config, cx.trace.steps, cx.property)
    if not any(v != "holds" for v in expect.values()):
        raise ValueError(f"{path}: no variant violates {cx.property} any more; not rewritten")
    obj = load_json_file(str(path))
    if obj.get("expect") == expect:
        return False
    obj["expect"] = expect
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return True


# ---------------------------------------------------------------------------------------------
# Endpoint renumbering and de-duplication


def renumber(config: Config, steps: Steps, mapping: dict[int, int]) -> tuple[Config, Steps]:
    """The trace with endpoint ``e`` renamed ``mapping[e]`` (a permutation of the config's
    endpoints; unmapped endpoints keep their number)."""

    def move(e: int) -> int:
        return mapping.get(e, e)

    renamed = tuple(
        replace(a, endpoint=move(a.endpoint)) if hasattr(a, "endpoint") else a  # type: ignore[call-arg]
        for a in steps
    )
    clients = tuple(sorted(move(e) for e in config.clients))
    return replace(config, clients=clients), renamed


def first_use_order(config: Config, steps: Steps) -> dict[int, int]:
    """The renumbering that numbers endpoints in the order the trace first uses them."""
    order: list[int] = []
    for a in steps:
        e = getattr(a, "endpoint", None)
        if isinstance(e, int) and e not in order:
            order.append(e)
    order += [e for e in range(config.endpoints) if e not in order]
    return {old: new for new, old in enumerate(order)}


def _trace_text(config: Config, steps: Steps) -> str:
    return json.dumps(Trace(config, steps).to_json(), sort_keys=True)


MAX_PERMUTED_ENDPOINTS = 6


def canonical_trace(config: Config, steps: Steps) -> str:
    """The least text of the trace over all renumberings of its endpoints."""
    n = config.endpoints
    if n > MAX_PERMUTED_ENDPOINTS:
        return _trace_text(*renumber(config, steps, first_use_order(config, steps)))
    return min(
        _trace_text(*renumber(config, steps, dict(enumerate(perm))))
        for perm in itertools.permutations(range(n))
    )


def violation_site(cx: Counterexample) -> str:
    """The site of ``cx``'s violation under the first variant (in registry order: the seed
    first) it expects to violate."""
    expected = dict(cx.expect)
    for name in VARIANTS:
        if expected.get(name, "holds") != "holds":
            result = run_trace(cx.trace, get_variant(name))
            hit = result.first(cx.property)
            if hit is not None:
                return site_of(hit.message)
    return ""


def identity(cx: Counterexample) -> tuple[str, str, str]:
    """Property, site and canonical trace: equal identities are one counterexample."""
    return cx.property, violation_site(cx), canonical_trace(cx.trace.config, cx.trace.steps)


def duplicates(corpus: Iterable[Counterexample]) -> list[list[str]]:
    """Groups (two or more names) of counterexamples that are one and the same."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for cx in corpus:
        groups.setdefault(identity(cx), []).append(cx.name)
    return [sorted(names) for names in groups.values() if len(names) > 1]


# ---------------------------------------------------------------------------------------------
# Minimization


SIMPLIFIABLE = ("vector", "peer", "value", "offset")


def _smaller(value: int) -> list[int]:
    """Candidate replacements for ``value``, simplest first, all of smaller magnitude."""
    out = [0, 1, -1, 2, 3]
    half = abs(value) // 2
    while half > 3:
        out.append(half if value > 0 else -half)
        half //= 2
    return [c for c in dict.fromkeys(out) if abs(c) < abs(value)]


def simplify_values(config: Config, steps: Steps, keep: Keep) -> Steps:
    """Replace vector, peer, value and offset numbers by smaller ones while ``keep`` holds."""
    for index in range(len(steps)):
        for f in fields(steps[index]):
            if f.name not in SIMPLIFIABLE:
                continue
            current = getattr(steps[index], f.name)
            if isinstance(current, bool) or not isinstance(current, int):
                continue
            for candidate in _smaller(current):
                changed = replace(steps[index], **{f.name: candidate})
                trial = (*steps[:index], changed, *steps[index + 1:])
                if keep(config, trial):
                    steps = trial
                    break
    return steps


def keeper(cx: Counterexample) -> Keep:
    """``keep`` for ``cx``: every variant it names has the outcome it has now."""
    names = [name for name, _ in cx.expect if name in VARIANTS]
    target = outcomes(cx.trace.config, cx.trace.steps, cx.property, names)
    if target is None or all(site is None for site in target.values()):
        raise ValueError(f"{cx.name}: the trace does not show a violation of {cx.property}")

    def keep(config: Config, steps: Steps) -> bool:
        return outcomes(config, steps, cx.property, names) == target

    return keep


def _cut_after_violation(cx: Counterexample) -> Steps:
    """The trace up to the last step where a variant first violates the property."""
    last = -1
    for name, expect in cx.expect:
        if isinstance(expect, dict) and name in VARIANTS:
            hit = run_trace(cx.trace, get_variant(name)).first(cx.property)
            if hit is not None:
                last = max(last, hit.step)
    return cx.trace.steps[: last + 1] if last >= 0 else cx.trace.steps


def minimize_counterexample(cx: Counterexample) -> Counterexample:
    """Drop steps (ddmin), simplify values, renumber endpoints by first use; every variant's
    outcome (violation site or "holds") is kept.  Expectations are recomputed."""
    keep = keeper(cx)
    config = cx.trace.config
    steps = _cut_after_violation(cx)
    if not keep(config, steps):
        steps = cx.trace.steps
    steps = ddmin(config, steps, keep)
    steps = simplify_values(config, steps, keep)
    renamed_config, renamed = renumber(config, steps, first_use_order(config, steps))
    if keep(renamed_config, renamed):
        config, steps = renamed_config, renamed
    expect = expectations(config, steps, cx.property)
    return replace(cx, trace=Trace(config, steps), expect=tuple(sorted(expect.items())))


def is_minimal(cx: Counterexample) -> bool:
    """1-minimal: removing any one step changes some variant's outcome."""
    keep = keeper(cx)
    steps = cx.trace.steps
    return not any(
        len(steps) > 1 and keep(cx.trace.config, steps[:i] + steps[i + 1:])
        for i in range(len(steps))
    )


# ---------------------------------------------------------------------------------------------
# Writing a checker's finding (``check``, ``prove``): a counterexample with every variant's
# expectation, as the model replays it


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def make_counterexample(
    name: str, prop: str, message: str, config: Config, steps: tuple[Action, ...], origin: str
) -> Counterexample:
    return Counterexample(
        name=name,
        property=prop,
        summary=message,
        origin=origin,
        trace=Trace(config, steps),
        expect=tuple(expectations(config, steps, prop).items()),
    )


def write_counterexample(folder: Path, cx: Counterexample) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cx.name}.json"
    path.write_text(json.dumps(cx.to_json(), indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# The explorer, differentially


@dataclass(frozen=True, slots=True)
class DiffFinding:
    property: str
    site: str
    message: str
    path: Steps
    seconds: float  # from the start of the search to this finding


def differential_search(
    config: Config,
    variant: Variant,
    baseline: Variant = SEED,
    max_depth: int = 8,
    max_states: int = 80_000,
    time_limit: float = 30.0,
) -> list[DiffFinding]:
    """Breadth-first exploration of ``variant`` (``properties.explore.explore``, graph kept),
    then, in order of depth, the first state per (property, site) whose path from the initial
    state violates that property under ``variant`` while ``baseline`` holds it on the same
    trace.  Shortest such paths within the bounds; each replayed through ``run_trace``."""
    from ivshmem_model.properties.explore import ExploreOptions, explore, rebuild_path

    began = time.perf_counter()
    result = explore(config, variant, ExploreOptions(
        max_depth=max_depth, max_states=max_states, time_limit=time_limit, graph=True))
    graph = result.graph
    parent: dict[int, tuple[int, Action] | None] = {0: None}
    order: deque[int] = deque([0])
    visit: list[int] = []
    while order:
        node = order.popleft()
        visit.append(node)
        for nxt in sorted(graph.successors(node)):
            if nxt not in parent:
                parent[nxt] = (node, graph.edges[node, nxt]["action"])
                order.append(nxt)

    def path_to(node: int) -> Steps:
        return rebuild_path(parent, node)  # type: ignore[arg-type]

    found: dict[tuple[str, str], DiffFinding] = {}
    tried: dict[tuple[str, str], int] = {}
    for node in visit:
        for prop, message in violations(graph.nodes[node]["state"]):
            key = (prop, site_of(message))
            if key in found or tried.get(key, 0) >= 200:
                continue
            tried[key] = tried.get(key, 0) + 1
            path = path_to(node)
            if outcome(config, path, baseline, prop) is not None:
                continue
            if outcome(config, path, variant, prop) != key[1]:
                continue
            found[key] = DiffFinding(prop, key[1], message, path, time.perf_counter() - began)
    return list(found.values())


# ---------------------------------------------------------------------------------------------
# The README table


def found_by(cx: Counterexample) -> str:
    """The checker that found ``cx``, with its time-to-find when recorded."""
    extra = dict(cx.extra)
    info = extra.get("found_by")
    if isinstance(info, dict) and "checker" in info:
        seconds = info.get("seconds")
        if not isinstance(seconds, int | float):
            return str(info["checker"])
        took = "<0.1" if seconds < 0.1 else f"{seconds:.1f}"
        return f"{info['checker']} ({took} s)"
    if re.search(r"breadth-first|explor", cx.origin, re.IGNORECASE):
        return "explore"
    if "hypothesis" in cx.origin.lower():
        return "hypothesis"
    return "by hand"


def on_qemu(cx: Counterexample) -> str:
    """What QEMU did with ``cx``, per version (``replay --backend qemu --update`` records it)."""
    record = dict(cx.extra).get("qemu")
    if not isinstance(record, dict) or not record:
        return "-"
    parts = []
    for version, entry in sorted(record.items(), key=lambda item: _version_key(item[0])):
        verdict = entry.get("verdict", "?") if isinstance(entry, dict) else "?"
        fate = entry.get("qemu") if isinstance(entry, dict) else None
        shown = f" ({fate.get('fate')})" if isinstance(fate, dict) else ""
        parts.append(f"{version}: {verdict}{shown}")
    return ", ".join(parts)


def _version_key(version: str) -> tuple[int, ...]:
    """``"7.2"`` before ``"10.0"``: QEMU versions in release order."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def load_corpus(folder: str | Path) -> list[tuple[Path, Counterexample]]:
    return [(p, load_counterexample(str(p))) for p in sorted(Path(folder).glob("*.json"))]


def _variants_text(names: list[str]) -> str:
    """Variant names in registry order, every ``before-*`` variant folded into one word."""
    ordered = [name for name in VARIANTS if name in names]
    before = [name for name in VARIANTS if name.startswith("before-")]
    missing = [name for name in before if name not in names]
    if before and len(missing) <= 3 and len(missing) < len(before):
        ordered = [name for name in ordered if not name.startswith("before-")]
        ordered.append("every before-*" + (f" but {', '.join(missing)}" if missing else ""))
    return ", ".join(ordered)


def readme_text(folder: str | Path) -> str:
    """``counterexamples/README.md``, generated from the files in ``folder``."""
    corpus = load_corpus(folder)
    lines = [
        "# Counterexamples",
        "",
        "Generated by `ivshmem-model corpus-readme` (`properties/corpus.py`); do not edit.",
        "Each file is a trace plus the variants it violates (`ivshmem-model replay FILE`).",
        "*minimal*: removing any one step changes some variant's outcome.",
        "*on QEMU*: what the real QEMU did with the trace (`ivshmem-model replay DIR --backend "
        "qemu`): *confirmed*, the same fate at the same step; *consistent*, every observable "
        "step agrees and the violated state is internal (KVM routes, descriptors); entries the "
        "variant of that QEMU (`qemu-7.2`, `qemu-10.0`) holds are not run.  `conformance/` "
        "keeps the traces on which the model once differed from QEMU, with what QEMU showed.",
        "",
        "| name | property | site | variants violated | found by | steps | minimal | on QEMU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, cx in corpus:
        violated = _variants_text([name for name, expect in cx.expect if expect != "holds"])
        lines.append(
            f"| [{cx.name}]({cx.name}.json) | {cx.property} | {violation_site(cx) or '-'} | "
            f"{violated} | {found_by(cx)} | {len(cx.trace.steps)} | "
            f"{'yes' if is_minimal(cx) else 'no'} | {on_qemu(cx)} |"
        )
    lines += history_lines(corpus)
    groups = duplicates(cx for _, cx in corpus)
    lines.append("")
    if groups:
        lines.append("Duplicates (same property and site, equal up to endpoint renumbering):")
        lines += [f"* {', '.join(group)}" for group in groups]
    else:
        lines.append("No duplicates (same property and site, equal up to endpoint renumbering).")
    return "\n".join(lines) + "\n"


def history_lines(corpus: list[tuple[Path, Counterexample]]) -> list[str]:
    """The README's history table (``properties.history``): per fix, the shortest corpus
    entry on which its ``before-<commit>`` variant fails while the variant with the fix holds;
    then the fixes the model cannot tell apart, with the reason."""
    from ivshmem_model.properties.history import HISTORY, showing

    lines = [
        "",
        "## History",
        "",
        "Each behaviour-changing fix of the device's past (before and after the seed) that the "
        "model can revert, found unaided by `ivshmem-model history` (the differential explorer "
        "over the `before-<commit>` variant against the variant with the fix).",
        "",
        "| fix | release | what broke | property | found by | steps | entry |",
        "|---|---|---|---|---|---|---|",
    ]
    for fix in HISTORY:
        if fix.search is None:
            continue
        shows = showing((cx for _, cx in corpus), fix)
        if not shows:
            lines.append(f"| {fix.commit} | {fix.release} | {fix.broke} | - | - | - | none |")
            continue
        cx = min(shows, key=lambda c: (len(c.trace.steps), c.name))
        lines.append(f"| {fix.commit} | {fix.release} | {fix.broke} | {cx.property} | "
                     f"{found_by(cx)} | {len(cx.trace.steps)} | [{cx.name}]({cx.name}.json) |")
    lines += ["", "Not told apart at this level of abstraction:", ""]
    lines += [f"* {fix.commit} ({fix.release}): {fix.broke}. {fix.unmodelled[0].upper()}"
              f"{fix.unmodelled[1:]}." for fix in HISTORY if fix.search is None]
    return lines


def write_readme(folder: str | Path) -> bool:
    """Write ``folder/README.md``; True when it changed."""
    path = Path(folder) / "README.md"
    text = readme_text(folder)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def counterexample_json(cx: Counterexample) -> str:
    return json.dumps(cx.to_json(), indent=2) + "\n"


def parse_counterexample(text: str) -> Counterexample:
    return counterexample_from_json(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Hypothesis, differentially


class _FoundError(Exception):
    def __init__(self, finding: DiffFinding) -> None:
        super().__init__(finding.property)
        self.finding = finding


def differential_hypothesis(
    config: Config,
    variant: Variant,
    baseline: Variant = SEED,
    max_examples: int = 200,
    max_steps: int = 12,
) -> DiffFinding | None:
    """Random walks over ``variant``'s enabled actions (Hypothesis, derandomized, no shrink),
    the same actions applied to ``baseline``; the first walk that violates a property under
    ``variant`` that ``baseline`` holds on the same steps, cut after the violation."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from ivshmem_model.model.system import initial_state, step, successors

    began = time.perf_counter()

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              phases=(Phase.generate,), suppress_health_check=list(HealthCheck))
    @given(st.data())
    def walk(data: Any) -> None:
        state = initial_state(config, variant)
        other = initial_state(config, baseline)
        held = {name for name, _ in violations(other)}
        steps: list[Action] = []
        for _ in range(max_steps):
            options = successors(state)
            if not options:
                return
            action, state, _ = data.draw(st.sampled_from(options))
            after = step(other, action)
            if after is None:
                return
            other = after[0]
            steps.append(action)
            held |= {name for name, _ in violations(other)}
            for prop, message in violations(state):
                if prop not in held:
                    raise _FoundError(DiffFinding(prop, site_of(message), message, tuple(steps),
                                             time.perf_counter() - began))

    try:
        walk()
    except _FoundError as found:
        return found.finding
    return None

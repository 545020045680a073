"""Running traces and replaying counterexamples: one place, used by the CLI, tests and checkers.

``run_trace`` executes a trace through ``step`` and judges every state with the registry;
``replay`` compares a counterexample's expectations with what the model does, naming the
first step where they diverge.  ``as_program`` prints a trace as a Python program that
rebuilds it and runs as it is printed (counterexamples as runnable traces).
"""

from __future__ import annotations

import json
import pprint
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ivshmem_model.model.actions import (
    Action,
    Config,
    Counterexample,
    Deliver,
    Realize,
    Trace,
    TraceError,
    shown_value,
)
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, step
from ivshmem_model.model.variants import Variant, get_variant
from ivshmem_model.properties.invariants import SAFETY, violations
from ivshmem_model.properties.progress import EVERY_STEPS, Progress

Observation = dict[str, Any]


@dataclass
class StepRecord:
    index: int
    action: Action
    enabled: bool
    observations: list[Observation]
    # For ``deliver`` and ``realize``: the messages the endpoint took off its channel, each
    # ``{"value": v, "fd": kind}`` (``realize`` reads the setup messages itself).
    received: list[Observation] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "action": self.action.to_json(),
            "enabled": self.enabled,
            "observations": self.observations,
        }
        if self.received:
            out["received"] = self.received
        return out


@dataclass
class Violation:
    property: str
    step: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"property": self.property, "step": self.step, "message": self.message}


@dataclass
class RunResult:
    variant: str
    steps: list[StepRecord] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    final: SystemState | None = None

    @property
    def disabled_step(self) -> int | None:
        for record in self.steps:
            if not record.enabled:
                return record.index
        return None

    def first(self, prop: str) -> Violation | None:
        return next((v for v in self.violations if v.property == prop), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "steps": [s.to_json() for s in self.steps],
            "violations": [v.to_json() for v in self.violations],
        }


def queued_messages(state: SystemState, endpoint: int) -> list[Observation]:
    """The messages waiting in ``endpoint``'s channel, oldest first, each as
    ``{"value": v, "fd": kind}`` (``kind``: ``None``, ``"eventfd"`` or ``"shm"``)."""
    out: list[Observation] = []
    for value, d in state.channels[endpoint]:
        kind: str | None = None
        if d >= 0:
            fd = state.fds[d]
            obj = state.objects[fd.obj] if fd is not None else None
            kind = obj.kind if obj is not None else "closed"
        out.append({"value": value, "fd": kind})
    return out


def run_trace(trace: Trace, variant: Variant,
              progress: Callable[[int], None] | None = None) -> RunResult:
    """Execute ``trace``; stop at the first disabled step (it is reported, not skipped).
    ``progress`` (``properties.progress.Progress``) is told the step every ``EVERY_STEPS``."""
    result = RunResult(variant.name)
    state = initial_state(trace.config, variant)
    seen: set[str] = set()
    for index, action in enumerate(trace.steps):
        if progress is not None and not index % EVERY_STEPS:
            progress(index)
        # deliver and realize take messages off the endpoint's channel: record which
        reader = action.endpoint if isinstance(action, Deliver | Realize) else None
        queued = queued_messages(state, reader) if reader is not None else []
        outcome = step(state, action)
        if outcome is None:
            result.steps.append(StepRecord(index, action, False, []))
            break
        state, obs = outcome
        taken = len(queued) - len(state.channels[reader]) if reader is not None else 0
        result.steps.append(StepRecord(index, action, True, obs, queued[:taken] or None))
        for name, message in violations(state):
            if name not in seen:
                seen.add(name)
                result.violations.append(Violation(name, index, message))
    result.final = state
    return result


@dataclass
class ReplayOutcome:
    """One variant's expectation against what happened; ``ok`` when they agree."""

    variant: str
    expected: str
    observed: str
    ok: bool
    diverges_at: int | None = None


def describe_expectation(expect: Any) -> str:
    if expect == "holds":
        return "holds"
    return f"violates {expect['violates']} at step {expect['step']}"


def check_properties(cx: Counterexample) -> None:
    """A :class:`TraceError` naming the field when ``cx`` names a property that is not a
    safety property of the registry (``property``, or ``violates`` in ``expect``)."""
    known = [p.name for p in SAFETY]
    named = [("property", cx.property)]
    named += [(f"expect.{variant}.violates", expect["violates"])
              for variant, expect in cx.expect if isinstance(expect, dict)]
    for where, name in named:
        if name not in known:
            raise TraceError(f"unknown property {shown_value(name)}; known properties: "
                             f"{', '.join(known)}", where)


def replay(cx: Counterexample, only: str | None = None,
           label: str | None = None) -> list[ReplayOutcome]:
    """Check every expectation of ``cx`` (or only the one for variant ``only``); a property
    name the registry lacks is a :class:`TraceError`.  With ``label``, a run that takes more
    than a few seconds shows its progress on stderr under that label."""
    check_properties(cx)
    outcomes = []
    for name, expect in cx.expect:
        if only is not None and name != only:
            continue
        progress = Progress(f"{label} [{name}]", len(cx.trace.steps)) if label else None
        result = run_trace(cx.trace, get_variant(name), progress)
        if progress is not None:
            progress.finish(len(result.steps))
        outcomes.append(judge(cx, name, expect, result))
    return outcomes


def judge(cx: Counterexample, variant: str, expect: Any, result: RunResult) -> ReplayOutcome:
    expected = describe_expectation(expect)
    disabled = result.disabled_step
    if disabled is not None:
        return ReplayOutcome(variant, expected, f"step {disabled} is not enabled", False,
                             disabled)
    if expect == "holds":
        hit = result.first(cx.property)
        if hit is None:
            return ReplayOutcome(variant, expected, "holds", True)
        return ReplayOutcome(variant, expected, f"violates {cx.property} at step {hit.step}: "
                             f"{hit.message}", False, hit.step)
    prop, at = expect["violates"], expect["step"]
    hit = result.first(prop)
    if hit is None:
        return ReplayOutcome(variant, expected, f"{prop} holds", False, len(result.steps) - 1)
    observed = f"violates {prop} at step {hit.step}"
    if hit.step != at:
        return ReplayOutcome(variant, expected, observed, False, min(hit.step, at))
    return ReplayOutcome(variant, expected, observed, True)


def expectations(config: Config, steps: tuple[Action, ...], prop: str) -> dict[str, Any]:
    """What every registered variant does with this trace, as counterexample expectations:
    ``"holds"`` or ``{"violates": prop, "step": i}``; variants under which a step is not
    enabled are left out."""
    from ivshmem_model.model.variants import VARIANTS

    expect: dict[str, Any] = {}
    for name, variant in VARIANTS.items():
        result = run_trace(Trace(config, steps), variant)
        if result.disabled_step is not None:
            continue
        hit = result.first(prop)
        expect[name] = "holds" if hit is None else {"violates": prop, "step": hit.step}
    return expect


def as_program(config: Config, steps: list[Action] | tuple[Action, ...],
               variant: str = "seed", result: RunResult | None = None) -> str:
    """The trace as a Python program over ``initial_state`` and ``step`` that runs as printed.

    With ``result`` (the run of these steps), each step carries its observations as a comment
    and the program ends by naming each violated property and its 0-based step."""
    names = sorted({type(a).__name__ for a in steps})
    config_text = pprint.pformat(config.to_json(), indent=1, width=88, sort_dicts=False)
    lines = [
        f"from ivshmem_model.model.actions import {', '.join([*names, 'config_from_json'])}",
        "from ivshmem_model.model.system import initial_state, step",
        "from ivshmem_model.model.variants import get_variant",
        "from ivshmem_model.properties.invariants import violations",
        "",
        "config = config_from_json(" + config_text.replace("\n", "\n" + " " * 26) + ")",
        f"s = initial_state(config, get_variant({variant!r}))",
    ]
    records = result.steps if result is not None else []
    for index, action in enumerate(steps):
        line = f"s, obs = step(s, {action!r})"
        if index < len(records):
            record = records[index]
            if not record.enabled:
                lines.append(f"# step {index} is not enabled here: step() returns None")
                lines.append(f"assert step(s, {action!r}) is None")
                break
            if record.observations:
                shown = json.dumps(record.observations, separators=(",", ":"))
                line += "  # " + (shown if len(shown) <= 100 else shown[:99] + "…")
        lines.append(line)
    lines.append("print(violations(s))")
    if result is not None:
        for v in result.violations:
            lines.append(f"# {v.property} is first violated after step {v.step}: {v.message}")
    return "\n".join(lines) + "\n"

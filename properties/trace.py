"""Running traces and replaying counterexamples: one place, used by the CLI, tests and checkers.

``run_trace`` executes a trace through ``step`` and judges every state with the registry;
``replay`` compares a counterexample's expectations with what the model does, naming the
first step where they diverge.  ``as_program`` prints a trace as the Python program that
rebuilds it (style.md: counterexamples as runnable traces).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from model.actions import Action, Config, Counterexample, Trace
from model.state import SystemState
from model.system import initial_state, step
from model.variants import Variant, get_variant
from properties.invariants import violations

Observation = dict[str, Any]


@dataclass
class StepRecord:
    index: int
    action: Action
    enabled: bool
    observations: list[Observation]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "action": self.action.to_json(),
            "enabled": self.enabled,
            "observations": self.observations,
        }


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


def run_trace(trace: Trace, variant: Variant) -> RunResult:
    """Execute ``trace``; stop at the first disabled step (it is reported, not skipped)."""
    result = RunResult(variant.name)
    state = initial_state(trace.config, variant)
    seen: set[str] = set()
    for index, action in enumerate(trace.steps):
        outcome = step(state, action)
        if outcome is None:
            result.steps.append(StepRecord(index, action, False, []))
            break
        state, obs = outcome
        result.steps.append(StepRecord(index, action, True, obs))
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


def replay(cx: Counterexample, only: str | None = None) -> list[ReplayOutcome]:
    """Check every expectation of ``cx`` (or only the one for variant ``only``)."""
    outcomes = []
    for name, expect in cx.expect:
        if only is not None and name != only:
            continue
        result = run_trace(cx.trace, get_variant(name))
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
    from model.variants import VARIANTS

    expect: dict[str, Any] = {}
    for name, variant in VARIANTS.items():
        result = run_trace(Trace(config, steps), variant)
        if result.disabled_step is not None:
            continue
        hit = result.first(prop)
        expect[name] = "holds" if hit is None else {"violates": prop, "step": hit.step}
    return expect


def as_program(config: Config, steps: list[Action] | tuple[Action, ...]) -> str:
    """The trace as a Python program over ``initial_state`` and ``step``."""
    lines = [
        "from model.actions import *",
        "from model.system import initial_state, step",
        f"s = initial_state(config_from_json({json.dumps(config.to_json())}))",
    ]
    for action in steps:
        lines.append(f"s, obs = step(s, {action!r})")
    return "\n".join(lines)

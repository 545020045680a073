"""Delta debugging on traces: drop steps while the same property still fails.

A candidate is kept when every step is still enabled and the property is violated at all; the
result is 1-minimal (removing any single step loses the violation).  Cheap next to Hypothesis'
shrinker for our short traces: a few hundred replays of a dozen steps.
"""

from __future__ import annotations

from model.actions import Action, Config, Trace
from model.variants import Variant
from properties.trace import run_trace


def still_fails(config: Config, steps: tuple[Action, ...], variant: Variant, prop: str) -> bool:
    result = run_trace(Trace(config, steps), variant)
    return result.disabled_step is None and result.first(prop) is not None


def minimize(config: Config, steps: tuple[Action, ...], variant: Variant,
             prop: str) -> tuple[Action, ...]:
    """The shortest prefix that fails, then ddmin over its steps."""
    if not still_fails(config, steps, variant, prop):
        return steps
    hit = run_trace(Trace(config, steps), variant).first(prop)
    assert hit is not None
    steps = steps[: hit.step + 1]
    chunk = max(1, len(steps) // 2)
    while chunk >= 1:
        index = 0
        removed = False
        while index < len(steps):
            candidate = steps[:index] + steps[index + chunk:]
            if candidate and still_fails(config, candidate, variant, prop):
                steps = candidate
                removed = True
            else:
                index += chunk
        if not removed:
            chunk //= 2
    return steps

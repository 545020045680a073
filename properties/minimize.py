"""Delta debugging on traces: drop steps while the same property still fails.

A candidate is kept when every step is still enabled and the property is violated at all; the
result is 1-minimal (removing any single step loses the violation).  Cheap next to Hypothesis'
shrinker for our short traces: a few hundred replays of a dozen steps.
"""

from __future__ import annotations

from collections.abc import Callable

from ivshmem_model.model.actions import Action, Config, Trace
from ivshmem_model.model.variants import Variant
from ivshmem_model.properties.trace import run_trace

Keep = Callable[[Config, tuple[Action, ...]], bool]


def ddmin(config: Config, steps: tuple[Action, ...], keep: Keep) -> tuple[Action, ...]:
    """Delta debugging: drop chunks of steps while ``keep`` still holds; 1-minimal result."""
    chunk = max(1, len(steps) // 2)
    while chunk >= 1:
        index, removed = 0, False
        while index < len(steps):
            candidate = steps[:index] + steps[index + chunk:]
            if candidate and keep(config, candidate):
                steps, removed = candidate, True
            else:
                index += chunk
        if not removed:
            chunk //= 2
    return steps


def still_fails(config: Config, steps: tuple[Action, ...], variant: Variant, prop: str) -> bool:
    result = run_trace(Trace(config, steps), variant)
    return result.disabled_step is None and result.first(prop) is not None


def minimize(config: Config, steps: tuple[Action, ...], variant: Variant,
             prop: str) -> tuple[Action, ...]:
    """The shortest prefix that fails, then ddmin over its steps."""
    result = run_trace(Trace(config, steps), variant)
    hit = result.first(prop)
    if result.disabled_step is not None or hit is None:
        return steps
    return ddmin(config, steps[: hit.step + 1],
                 lambda c, s: still_fails(c, s, variant, prop))

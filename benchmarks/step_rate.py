"""Steps per second of ``step`` and of ``enabled`` on one core.

Collects a pool of reachable states by a short breadth-first walk of each embedded
configuration, then times ``step`` over (state, enabled action) pairs and ``enabled`` over the
states.  Prints figures; not a pass/fail test.

    python benchmarks/step_rate.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import time

from ivshmem_model.model.actions import Action
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import enabled, initial_state, step
from ivshmem_model.model.variants import SEED
from ivshmem_model.properties.configs import embedded_configs


def sample_states(config_index: int, limit: int = 3000) -> list[SystemState]:
    named = embedded_configs()[config_index]
    frontier = [initial_state(named.config, SEED)]
    seen = set(frontier)
    states: list[SystemState] = []
    while frontier and len(states) < limit:
        state = frontier.pop(0)
        states.append(state)
        for action in enabled(state):
            outcome = step(state, action)
            assert outcome is not None
            if outcome[0] not in seen:
                seen.add(outcome[0])
                frontier.append(outcome[0])
    return states


def rate(body: list[tuple[SystemState, Action]] | list[SystemState], seconds: float,
         fn: object) -> float:
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for item in body:
            fn(*item) if isinstance(item, tuple) else fn(item)  # type: ignore[operator]
        count += len(body)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{'configuration':<14} {'states':>7} {'step/s':>10} {'enabled/s':>10} "
          f"{'actions/state':>13}")
    for index, named in enumerate(embedded_configs()):
        states = sample_states(index)
        pairs = [(s, a) for s in states for a in enabled(s)]
        step_rate = rate(pairs, args.seconds, step)
        enabled_rate = rate(states, args.seconds, enabled)
        print(f"{named.name:<14} {len(states):>7} {step_rate:>10.0f} {enabled_rate:>10.0f} "
              f"{len(pairs) / len(states):>13.1f}")


if __name__ == "__main__":
    main()

"""Steps per second of ``step`` and of ``enabled`` on one core.

Collects a pool of reachable states by a short breadth-first walk of each embedded
configuration, then times ``step`` over (state, enabled action) pairs and ``enabled`` over the
states.  ``--in-flight 2000,4000`` times instead one long trace: a scripted server's sends
of an eventfd to a QEMU that reads none, at that many descriptors in flight (the rate of the
500 sends around it; descriptor allocation once rescanned the whole table).  Prints figures;
not a pass/fail test.

    python benchmarks/step_rate.py [--seconds 3] [--in-flight N,...]
"""

from __future__ import annotations

import argparse
import time

from ivshmem_model.model.actions import Action, Config, Connect, ServerConfig, ServerSend
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


def in_flight_rate(count: int) -> float:
    """Steps per second of ``server_send`` with an eventfd around ``count`` in flight."""
    state = initial_state(Config(endpoints=1, server=ServerConfig(policy="scripted")), SEED)
    send = ServerSend(0, 0, "eventfd")
    for action in [Connect(0)] + [send] * max(0, count - 250):
        state = step(state, action)[0]  # type: ignore[index]
    start = time.perf_counter()
    for _ in range(500):
        state = step(state, send)[0]  # type: ignore[index]
    return 500 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--in-flight", default="", metavar="N,...",
                        help="time the long trace at these numbers of descriptors in flight")
    args = parser.parse_args()
    if args.in_flight:
        for count in (int(n) for n in args.in_flight.split(",")):
            print(f"{count:>6} descriptors in flight: {in_flight_rate(count):>8.0f} steps/s")
        return
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

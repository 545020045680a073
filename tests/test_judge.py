"""``Judge``: the explorer's ``violations`` that reuses the verdicts of the properties marked
``local`` (they read only the endpoint records and the configuration)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ivshmem_model.model.actions import load_counterexample
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, step, successors
from ivshmem_model.model.variants import SEED, get_variant
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.explore import compiled
from ivshmem_model.properties.invariants import SAFETY, Judge, violations

CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"
CONFIGS = {n.name: n.config for n in embedded_configs()}


def reachable(name: str, limit: int = 400) -> list[SystemState]:
    """The first ``limit`` states of a breadth-first walk."""
    frontier = [initial_state(CONFIGS[name], SEED)]
    seen = set(frontier)
    out: list[SystemState] = []
    while frontier and len(out) < limit:
        state = frontier.pop(0)
        out.append(state)
        for _, nxt, _ in successors(state):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return out


def corpus_states() -> Iterator[SystemState]:
    """Every state on the way of every corpus entry, under the variants it names: states
    that violate local and other properties, several at once."""
    for path in sorted(CORPUS.glob("*.json")):
        cx = load_counterexample(path)
        for variant, _ in cx.expect:
            state = initial_state(cx.trace.config, get_variant(variant))
            yield state
            for action in cx.trace.steps:
                outcome = step(state, action)
                if outcome is None:
                    break
                state = outcome[0]
                yield state


class EndpointsOnly:
    """A state that has nothing but what a local property may read."""

    __slots__ = ("config", "endpoints")

    def __init__(self, state: SystemState) -> None:
        self.endpoints = state.endpoints
        self.config = state.config


def assert_judged_alike(states: list[SystemState]) -> None:
    judge = Judge()
    for state in states:
        assert judge(state) == violations(state)
        assert judge(state) == violations(state)  # the second time from the memo


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_judge_agrees_with_violations(name: str) -> None:
    assert_judged_alike(reachable(name))


def test_judge_agrees_on_the_corpus() -> None:
    states = list(corpus_states())
    assert sum(bool(violations(s)) for s in states) > 20
    assert any(len(violations(s)) > 1 for s in states)
    assert_judged_alike(states)


@pytest.mark.skipif(compiled(), reason="hands the checks a stand-in state, which compiled checks "
                    "refuse by type (mypyc build); the interpreted run holds the source to it")
def test_local_properties_read_only_endpoints_and_config() -> None:
    """Run every local check on a stand-in that holds the endpoints and the configuration
    only: reading anything else raises, and the verdict must be the same."""
    local = [p for p in SAFETY if p.local]
    assert len(local) >= 10
    states = list(corpus_states()) + [s for name in sorted(CONFIGS) for s in reachable(name, 150)]
    for state in states:
        stand_in = EndpointsOnly(state)
        for prop in local:
            assert prop.check is not None
            assert prop.check(stand_in) == prop.check(state), prop.name  # type: ignore[arg-type]

"""The explorer on small configurations: pinned counts, shortest counterexamples, fixed clean."""

from __future__ import annotations

from helpers import contrib, scripted

from model.variants import FIXED, SEED
from properties.explore import ExploreOptions, explore


def test_explore_pins_the_state_count_of_a_small_configuration() -> None:
    result = explore(contrib(endpoints=1), SEED, ExploreOptions(max_depth=5))
    assert (result.states, result.transitions) == (RESULT_1_ENDPOINT_DEPTH_5)


def test_shortest_counterexamples_in_the_scripted_configuration() -> None:
    result = explore(scripted(), SEED, ExploreOptions(max_depth=5))
    lengths = {key: len(f.path) for key, f in result.found.items()}
    assert lengths[("no_hang", "seed 672")] == 3  # connect, server_exit, realize
    assert lengths[("memory_safety", "seed 393")] == 5


def test_fixed_is_clean_within_bounds() -> None:
    for config in (contrib(endpoints=1), scripted(), contrib(endpoints=1, irqfd=True)):
        assert explore(config, FIXED, ExploreOptions(max_depth=5)).found == {}


def test_the_model_can_ring_a_doorbell_end_to_end() -> None:
    result = explore(contrib(endpoints=2), FIXED, ExploreOptions(max_depth=7))
    assert "doorbell_reaches_msi" in result.witnesses


RESULT_1_ENDPOINT_DEPTH_5 = (60, 262)

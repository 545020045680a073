"""Symmetry reduction: same violations as the full search, fewer states, canonical orbits."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import contrib, doorbell, play

from ivshmem_model.model.actions import Config, Connect, Deliver
from ivshmem_model.model.variants import SEED
from ivshmem_model.properties.explore import ExploreOptions, explore
from ivshmem_model.properties.symmetry import permute, representative

SMALL: dict[str, tuple[Config, int]] = {
    "contrib-tcg-2": (contrib(endpoints=2), 6),
    "contrib-kvm-2": (contrib(endpoints=2, irqfd=True, vectors=2), 5),
    "client-and-qemu": (contrib(endpoints=2, clients=(1,)), 6),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_symmetry_finds_the_same_violations(name: str) -> None:
    config, depth = SMALL[name]
    plain = explore(config, SEED, ExploreOptions(max_depth=depth, max_states=10**6))
    reduced = explore(config, SEED, ExploreOptions(max_depth=depth, max_states=10**6,
                                                   symmetry=True))
    assert plain.complete == reduced.complete
    assert set(reduced.found) == set(plain.found)
    assert {k: len(f.path) for k, f in reduced.found.items()} == {
        k: len(f.path) for k, f in plain.found.items()}
    assert reduced.unconfirmed == 0
    factor = plain.states / reduced.states
    print(f"{name} depth {depth}: {plain.states} -> {reduced.states} states "
          f"(reduction {factor:.2f}x)")
    if config.clients:
        assert factor == 1.0  # a client and a QEMU are not interchangeable
    else:
        assert factor > 1.8


def test_representative_is_the_same_for_both_numberings() -> None:
    config = contrib(endpoints=2)
    a = play(config, Connect(0), doorbell(0), Connect(1), Deliver(0))
    b = play(config, Connect(1), doorbell(1), Connect(0), Deliver(1))
    assert a != b
    assert representative(a) == representative(b)
    assert representative(representative(a)) == representative(a)


def test_permute_swaps_endpoints_channels_owners_and_server_peers() -> None:
    state = play(contrib(endpoints=2), Connect(0), doorbell(0))
    swapped = permute(state, [1, 0])
    assert swapped.endpoints == (state.endpoints[1], state.endpoints[0])
    assert swapped.channels == (state.channels[1], state.channels[0])
    assert [p.endpoint for p in swapped.server.peers] == [1]
    owners = {f.owner for f in state.fds if f is not None and f.owner >= 0}
    swapped_owners = {f.owner for f in swapped.fds if f is not None and f.owner >= 0}
    assert swapped_owners == {1 - o for o in owners}
    assert permute(swapped, [1, 0]) == state


def test_permute_keeps_every_field_it_does_not_renumber() -> None:
    state = play(contrib(endpoints=2), Connect(0), doorbell(0))
    state = dataclasses.replace(state, server=dataclasses.replace(state.server, failure="gone"))
    swapped = permute(state, [1, 0])
    assert swapped.server.failure == "gone"
    assert (swapped.objects, swapped.config, swapped.variant) == (
        state.objects, state.config, state.variant)
    assert permute(swapped, [1, 0]) == state

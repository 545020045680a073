"""The free-slot hints of ``World`` (model/proc.py): the lowest free descriptor and object,
as POSIX numbers them, found from the hint exactly as by scanning from 0."""

from __future__ import annotations

import dataclasses
import random

import pytest
from helpers import contrib, scripted

from ivshmem_model.model.actions import Action, Config, Connect, Disconnect, ServerSend
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import candidates, initial_state, step
from ivshmem_model.model.variants import SEED
from ivshmem_model.properties.configs import embedded_configs


def without_hints(state: SystemState) -> SystemState:
    """The same state with hints 0: ``World`` then scans from slot 0 (the plain scan)."""
    plain = dataclasses.replace(state)
    assert plain._free == (0, 0)
    return plain


def assert_hints_hold(state: SystemState) -> None:
    """Every slot below a hint is taken."""
    free_fd, free_object = state._free
    assert all(entry is not None for entry in state.fds[:free_fd])
    assert all(obj is not None for obj in state.objects[:free_object])


def walk(config: Config, seed: int, length: int, menu: list[Action] | None = None) -> int:
    """A random walk; at every step the hinted and the plain state step alike.  Returns how
    many steps changed the descriptor table."""
    rng = random.Random(seed)
    state = initial_state(config, SEED)
    changed = 0
    for _ in range(length):
        options = menu or list(candidates(state))
        rng.shuffle(options)
        for action in options:
            hinted = step(state, action)
            if hinted is None:
                continue
            plain = step(without_hints(state), action)
            assert plain is not None
            assert hinted[0].fds == plain[0].fds and hinted[0].objects == plain[0].objects
            assert hinted == plain
            assert_hints_hold(hinted[0])
            changed += hinted[0].fds != state.fds
            state = hinted[0]
            break
        else:
            break
    return changed


@pytest.mark.parametrize("name", [n.name for n in embedded_configs()])
def test_numbering_unchanged_on_random_walks(name: str) -> None:
    config = {n.name: n for n in embedded_configs()}[name].config
    assert sum(walk(config, seed, 60) for seed in range(6)) > 0


def test_numbering_unchanged_with_many_slots_freed_and_reused() -> None:
    """Scripted sends pile up descriptors in flight, disconnects free them in the middle of
    the tables, connects and sends reuse the holes: the hinted search must pick the same
    lowest slots as the plain scan."""
    config = scripted(endpoints=3)
    menu: list[Action] = [Connect(e) for e in range(3)] + [Disconnect(e) for e in range(3)]
    menu += [ServerSend(e, 0, kind) for e in range(3) for kind in ("eventfd", "shm", None)]
    assert sum(walk(config, seed, 300, menu) for seed in range(8)) > 100
    assert sum(walk(contrib(endpoints=3, vectors=2), seed, 120) for seed in range(4)) > 0


def test_hint_follows_descriptors_in_flight() -> None:
    """4,000 descriptors in flight: the hints sit at the tables' ends, so the next send
    appends without rescanning (benchmarks/step_rate.py --in-flight measures the rate)."""
    state = step(initial_state(scripted(), SEED), Connect(0))[0]  # type: ignore[index]
    for _ in range(4000):
        state = step(state, ServerSend(0, 0, "eventfd"))[0]  # type: ignore[index]
    assert state._free == (len(state.fds), len(state.objects)) == (4000, 4000)
    state = step(state, Disconnect(0))[0]  # type: ignore[index]
    assert state.fds == () and state._free == (0, 0)

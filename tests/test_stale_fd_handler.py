"""The fd handler an unplugged doorbell leaves behind (seed 1001-1012): the model numbers each
process's descriptors as POSIX does (``Fd.number``, lowest free) and runs the stale handler, a
use after free, once its number belongs to a readable descriptor again
(``model.device.stale_fd_handler_poll``).  The conformance cases run the same traces on QEMU
(``tests/test_conform.py``); here the model's side, step by step, and the numbering itself."""

from __future__ import annotations

from pathlib import Path

from ivshmem_model.model.actions import (
    Action,
    Deliver,
    Realize,
    Ring,
    ServerSend,
    Trace,
    load_trace,
)
from ivshmem_model.model.proc import World
from ivshmem_model.model.state import IN_FLIGHT, FileObject, SystemState
from ivshmem_model.model.system import initial_state, step
from ivshmem_model.model.variants import Variant, get_variant

CASES = Path(__file__).resolve().parents[1] / "counterexamples" / "conformance"
MEMFD_CASE = CASES / "stale-fd-handler-runs-when-a-memfd-takes-its-number.json"
PEER_CASE = CASES / "stale-fd-handler-runs-when-a-peer-eventfd-takes-its-number.json"
QEMU_72 = get_variant("qemu-7.2")


def _walk(trace: Trace, steps: tuple[Action, ...], variant: Variant = QEMU_72
          ) -> list[tuple[SystemState, list[dict[str, object]]]]:
    state = initial_state(trace.config, variant)
    out = []
    for action in steps:
        result = step(state, action)
        assert result is not None, action
        state = result[0]
        out.append(result)
    return out


def _fate(obs: list[dict[str, object]]) -> dict[str, object] | None:
    return next((o for o in obs if "fate" in o), None)


def _handler_number(state: SystemState, e: int) -> int:
    ((d, _vector),) = state.endpoints[e].fd_handlers
    entry = state.fds[d]
    assert entry is not None and not entry.open
    return entry.number


def test_first_memfd_takes_the_shared_memorys_number_the_second_the_handlers() -> None:
    trace = load_trace(str(MEMFD_CASE))
    run = _walk(trace, trace.steps)
    unplugged, first, second = run[3][0], run[4], run[6]
    assert _handler_number(unplugged, 1) == 1  # shm got 0, the own eventfd 1
    assert first[0].endpoints[1].memdev_fds == (0,)  # the BAR2 fd's number, closed at unplug
    assert _fate(first[1]) is None
    fate = _fate(second[1])
    assert fate is not None and fate["fate"] == "crashed" and fate["line"] == 293
    assert str(fate["reason"]).startswith("use_after_free")
    assert second[0].endpoints[1].memdev_fds == (0, 1)


def test_the_fixed_variant_removes_the_handler_and_runs_on() -> None:
    trace = load_trace(str(MEMFD_CASE))
    run = _walk(trace, trace.steps, get_variant("fixed"))
    assert run[3][0].endpoints[1].fd_handlers == ()
    assert all(_fate(obs) is None for _, obs in run)


def test_a_peer_eventfd_on_the_number_crashes_only_when_rung() -> None:
    trace = load_trace(str(PEER_CASE))
    run = _walk(trace, trace.steps)
    *before, (_, last) = run
    assert all(_fate(obs) is None for _, obs in before)  # the eventfd is there, not readable
    assert trace.steps[-1] == Ring(0, 1, 0)
    fate = _fate(last)
    assert fate is not None and fate["fate"] == "crashed" and fate["line"] == 293


def test_a_new_own_eventfd_on_the_number_replaces_the_stale_handler() -> None:
    trace = load_trace(str(PEER_CASE))
    replug = trace.steps[:-3]  # the doorbell realized again, before peer 1's message
    steps = (*replug, ServerSend(0, 0, "eventfd"), Deliver(0), Ring(0, 0, 0))
    run = _walk(trace, steps)
    assert all(_fate(obs) is None for _, obs in run)
    state = run[-1][0]
    ((d, vector),) = state.endpoints[0].fd_handlers  # aio_set_fd_handler: one node per number
    entry = state.fds[d]
    assert vector == 0 and entry is not None and entry.open and entry.number == 1
    assert isinstance(replug[-1], Realize) and replug[-1].hotplug


def test_a_file_on_the_number_runs_the_handler_at_once() -> None:
    trace = load_trace(str(PEER_CASE))
    steps = (*trace.steps[:-3], ServerSend(0, 1, "file"), Deliver(0))
    run = _walk(trace, steps)
    assert _fate(run[-2][1]) is None  # in the socket: not yet the process's
    fate = _fate(run[-1][1])
    assert fate is not None and str(fate["reason"]).startswith("use_after_free")


def test_numbers_are_lowest_free_per_process() -> None:
    world = World((), (), ((), (), ()), True)
    world.process = lambda e: (0, 1) if e in (0, 1) else (e,)
    held = {0: (), 1: (), 2: (0,)}  # endpoint 2's memory backend holds its number 0
    world.held = held.__getitem__
    obj = world.new_object(FileObject("eventfd"))
    a, b = world.new_fd(obj, 0), world.new_fd(obj, 1)  # one process: 0, then 1
    c = world.new_fd(obj, 2)  # another process, whose 0 is taken
    flying = world.new_fd(obj, IN_FLIGHT)
    assert [_number(world, d) for d in (a, b, c, flying)] == [0, 1, 1, -1]
    world.close_fd(a)
    world.give(flying, 1)  # SCM_RIGHTS: the lowest free, the number a closed
    assert _number(world, flying) == 0
    assert _number(world, a) == 0 and not world.is_open(a)  # a closed one keeps its number
    assert world.at_number(0, 0) == flying and world.at_number(2, 0) is None


def test_without_processes_nothing_is_numbered() -> None:
    world = World((), (), ((),), True)
    d = world.new_fd(world.new_object(FileObject("eventfd")), 0)
    assert _number(world, d) == -1


def _number(world: World, d: int) -> int:
    entry = world.fds[d]
    assert entry is not None
    return entry.number

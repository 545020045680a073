"""QEMU 7.2's C ``ivshmem-server`` as the server side: raw clients in lock step with the model's
contrib policy (``model/executor/contrib.py``), the executor's device lock-step against it, and
the properties users of the service rely on.  Needs ``scripts/build-contrib.sh``; skips
otherwise.  ``IVSHMEM_CONTRIB_EXAMPLES`` sets the size of the generated campaign."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from model.actions import Connect, Disconnect, Trace
from model.executor.contrib import (
    OPS,
    PROPERTIES,
    RawStep,
    RawTrace,
    ServerModel,
    contrib_programs,
    run_raw_lockstep,
    serves_on,
    settle_model,
    socket_capacity,
    views_match_roster,
)
from model.executor.lockstep import run_lockstep
from model.proc import World
from model.server import (
    Pending,
    SocketLimits,
    contrib_start,
    handle_new_conn,
    select_round,
)
from model.state import Server
from model.system import initial_state, step

sys.path.insert(0, os.path.dirname(__file__))
from helpers import contrib
from test_lockstep import two_peers

PROGRAMS = contrib_programs()
needs_c = pytest.mark.skipif(isinstance(PROGRAMS, str), reason=str(PROGRAMS))
Property = Callable[[ServerModel], "str | None"]
EXAMPLES = int(os.environ.get("IVSHMEM_CONTRIB_EXAMPLES", "30"))


def c_server() -> str:
    assert not isinstance(PROGRAMS, str)
    return PROGRAMS[0]


def R(op: str, endpoint: int = 0) -> RawStep:  # noqa: N802 - reads like the trace
    assert op in OPS
    return RawStep(op, endpoint)  # type: ignore[arg-type]


def agree(trace: RawTrace, **kwargs: object) -> ServerModel:
    model = ServerModel(trace.clients, trace.vectors, trace.shm_size,
                        kwargs.pop("capacity", None) or socket_capacity())  # type: ignore[arg-type]
    report = run_raw_lockstep(trace, c_server(), model=model)
    assert report.ok, report.summary()
    assert report.checks > 0
    return model


# ---------------------------------------------------------------------------------------------
# Ordinary traces


@needs_c
def test_c_server_connect_read_close_reconnect_exit() -> None:
    steps = [R("connect", 0), R("connect", 1), R("read", 0), R("read", 0), R("read", 1),
             R("connect", 2), R("close", 1), R("connect", 1), R("read", 2), R("exit")]
    model = agree(RawTrace(3, tuple(steps), vectors=2))
    assert [p.id for p in model.server.peers] == []
    assert model.seen[2][:3] == [(0, None, None), (2, None, None), model.seen[2][2]]


@needs_c
def test_c_server_device_lockstep_agrees() -> None:
    """The executor's lock-step (software devices) with the C server as the server side."""
    config, steps = two_peers(vectors=2)
    report = run_lockstep(Trace(config, (*steps, Disconnect(0), Connect(0))),
                          server_program=c_server())
    assert report.ok, report.summary()


# ---------------------------------------------------------------------------------------------
# What the C server does that the system model's contrib policy does not (model/server.py)


@needs_c
def test_select_round_client_gone_before_accept_shuts_the_server_down() -> None:
    """S:183-186 + S:414-419: EPIPE on the version message is a failed accept, and the whole
    server closes (M:172-175, 266-271); the peer already served gets end of file."""
    steps = [R("connect", 0), R("freeze"), R("connect", 1), R("close", 1), R("thaw")]
    model = agree(RawTrace(2, tuple(steps)))
    assert model.failure == "cannot send initial info"
    assert serves_on(model) is not None
    assert model.eof == {0}
    # The system model (unbounded, atomic connect) keeps serving: the abstraction documented.
    state = initial_state(contrib(2))
    for action in (Connect(0), Connect(1), Disconnect(1)):
        outcome = step(state, action)
        assert outcome is not None
        state = outcome[0]
    assert state.server.up


@needs_c
def test_select_round_garbage_is_a_disconnect_but_the_client_keeps_its_messages() -> None:
    """S:421-427: any readability frees the peer; the client still reads what was sent, then
    end of file."""
    steps = [R("connect", 0), R("connect", 1), R("garbage", 1), R("read", 1), R("read", 1)]
    model = agree(RawTrace(2, tuple(steps)))
    assert model.eof == {1}
    assert [m[0] for m in model.seen[0]][-1] == 1  # the delete of peer 1


@needs_c
def test_select_round_accepts_one_connection_then_frees_readable_peers() -> None:
    """Connect and close in one select: peer 1 first learns of the newcomer through messages
    it never reads, peer 0 gets the newcomer and then the delete of 1."""
    steps = [R("connect", 0), R("connect", 1), R("freeze"), R("close", 1), R("connect", 2),
             R("garbage", 2), R("thaw")]
    model = agree(RawTrace(3, tuple(steps)))
    assert [p.id for p in model.server.peers] == [0]


@needs_c
def test_full_socket_loses_messages_and_views_part_from_the_roster() -> None:
    """S:189-208 ignore send errors and S:149 makes sockets non-blocking: past the socket's
    capacity messages are lost, so a peer's view never matches the roster again."""
    trace = RawTrace(5, tuple(R("connect", e) for e in range(5)), vectors=64)
    capacity = socket_capacity()
    if capacity >= 3 + 64 * 5:  # client 0's share: setup, its own vectors, four newcomers'
        pytest.skip(f"sockets here take {capacity} messages; the trace overflows none")
    model = agree(trace)
    settle_model(model)
    assert views_match_roster(model) is not None
    # The unbounded model (the system model's channels) diverges at the overflowing connect.
    unbounded = ServerModel(5, 64, trace.shm_size, None)
    report = run_raw_lockstep(trace, c_server(), model=unbounded)
    assert report.divergence is not None
    assert report.divergence.check == "queued"
    assert report.divergence.real == capacity


# ---------------------------------------------------------------------------------------------
# The check can fail


class EpipeBlindModel(ServerModel):
    """Sends to a closed client succeed: the server survives a client gone before accept."""

    @property
    def limits(self) -> SocketLimits:
        return SocketLimits(self.capacity)


@needs_c
def test_a_model_blind_to_epipe_diverges_at_the_thaw() -> None:
    steps = (R("connect", 0), R("freeze"), R("connect", 1), R("close", 1), R("thaw"))
    model = EpipeBlindModel(2, 1, 1 << 20, socket_capacity())
    report = run_raw_lockstep(RawTrace(2, steps), c_server(), model=model)
    assert report.divergence is not None
    assert report.divergence.step == 4
    # first seen as the messages about the newcomer that the real server never sent
    assert report.divergence.check == "queued"
    assert report.divergence.model > report.divergence.real


@needs_c
def test_a_model_that_reorders_ids_diverges_at_the_read() -> None:
    class Reversed(ServerModel):
        def step(self, s: RawStep):  # type: ignore[no-untyped-def]
            got = super().step(s)
            if got is not None and got[0] in (0, 1) and s.endpoint == 1 and got[1] is None:
                return (1 - got[0], *got[1:])
            return got

    steps = (R("connect", 0), R("connect", 1), R("read", 1), R("read", 1))
    report = run_raw_lockstep(RawTrace(2, steps), c_server(),
                              model=Reversed(2, 1, 1 << 20, socket_capacity()))
    assert report.divergence is not None
    assert (report.divergence.step, report.divergence.check) == (2, "message")


# ---------------------------------------------------------------------------------------------
# Generated campaigns


def raw_traces(clients: int, size: int = 16) -> st.SearchStrategy[tuple[RawStep, ...]]:
    weights = st.sampled_from(("connect", "connect", "read", "read", "read", "close",
                               "garbage", "freeze", "thaw", "exit"))
    one = st.builds(RawStep, weights, st.integers(0, clients - 1))
    return st.lists(one, max_size=size).map(tuple)


@needs_c
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 3), st.integers(0, 2), st.data())
def test_generated_hostile_traces_agree_with_the_c_server(clients: int, vectors: int,
                                                          data: st.DataObject) -> None:
    steps = data.draw(raw_traces(clients))
    report = run_raw_lockstep(RawTrace(clients, steps, vectors), c_server())
    assert report.ok, report.summary()


def run_model(steps: tuple[RawStep, ...], capacity: int) -> ServerModel:
    model = ServerModel(3, 1, 1 << 20, capacity)
    for s in steps:
        if not model.reused(s) and model.enabled(s):
            model.step(s)
    settle_model(model)
    return model


@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: p.__name__)
def test_properties_found_minimized_and_confirmed_on_the_c_server(prop: Property) -> None:
    """Each property users rely on fails on the contrib policy (a tiny socket of 4 messages
    brings overflow near); Hypothesis minimizes the trace, which then runs on the C server
    with the real capacity: agreement there confirms what the minimal trace shows."""
    minimal = find(raw_traces(3, 12), lambda steps: prop(run_model(steps, 4)) is not None,
                   settings=settings(max_examples=3000, derandomize=True, database=None))
    assert len(minimal) <= 5, minimal
    if isinstance(PROGRAMS, str):
        pytest.skip(PROGRAMS)
    model = agree(RawTrace(3, minimal))
    settle_model(model)
    if prop is serves_on:  # the real server shut itself down too
        assert serves_on(model) is not None


# ---------------------------------------------------------------------------------------------
# The contrib policy's new pieces alone (no C programs needed)


def fresh(endpoints: int) -> tuple[World, Server]:
    world = World((), (), tuple(() for _ in range(endpoints)), True)
    return world, contrib_start(world, 1 << 20)


def test_select_round_accepts_one_connection_per_round() -> None:
    world, server = fresh(3)
    server, pending, failure = select_round(server, world, 1, Pending((0, 1)), [])
    assert failure is None
    assert ([p.endpoint for p in server.peers], pending.backlog) == ([0], (1,))


def test_select_round_frees_readable_peers_but_not_the_one_just_accepted() -> None:
    world, server = fresh(3)
    server, _pending, _failure = select_round(server, world, 1, Pending((0,)), [])
    obs: list[dict[str, object]] = []
    server, pending, _failure = select_round(server, world, 1,
                                             Pending((1,), frozenset({0, 1})), obs)
    assert [p.endpoint for p in server.peers] == [1]
    assert pending == Pending((), frozenset({1}))  # 1 goes in the next round
    assert obs[-1] == {"send": {"to": 1, "value": 0, "fd": None}}  # delete of peer 0


def test_new_conn_to_a_closed_client_fails_and_select_round_closes_the_server() -> None:
    world, server = fresh(3)
    for e in (0, 2):
        server, _pending, _failure = select_round(server, world, 1, Pending((e,)), [])
    obs: list[dict[str, object]] = []
    limits = SocketLimits(closed=frozenset({1}))
    server, pending, failure = select_round(server, world, 1, Pending((1,)), obs, limits)
    assert failure == "cannot send initial info"
    assert not server.up and not pending
    assert obs == [{"dropped": {"to": 1, "value": 0, "fd": None}},
                   {"send": {"to": 2, "value": 0, "fd": None}}]  # server_close: 0 leaves


def test_send_past_capacity_is_dropped_and_keeps_nothing_in_flight() -> None:
    world, server = fresh(2)
    limits = SocketLimits(capacity=4)
    obs: list[dict[str, object]] = []
    for e in (0, 1):
        server, _pending, _failure = select_round(server, world, 1, Pending((e,)), obs, limits)
    assert len(world.channel(0)) == 4
    assert obs[7] == {"dropped": {"to": 0, "value": 1, "fd": "eventfd"}}
    assert handle_new_conn(server, world, 0, 1, [], SocketLimits(closed=frozenset({0}))) is None

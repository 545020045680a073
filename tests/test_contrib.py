"""QEMU 7.2's C ``ivshmem-server`` as the server side: raw clients in lock step with the model's
contrib policy (``model/executor/contrib.py``), the executor's device lock-step against it, and
the properties users of the service rely on.  Needs ``scripts/build-contrib.sh``; skips
otherwise.  ``IVSHMEM_CONTRIB_EXAMPLES`` sets the size of the generated campaign."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from ivshmem_model.model.actions import (
    Abandon,
    Action,
    Config,
    Connect,
    Deliver,
    Disconnect,
    Garbage,
    Realize,
    ServerConfig,
    ServerExit,
    ServerSend,
    Trace,
    load_counterexample,
)
from ivshmem_model.model.executor.contrib import (
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
from ivshmem_model.model.executor.lockstep import run_lockstep
from ivshmem_model.model.proc import World
from ivshmem_model.model.server import (
    Pending,
    SocketLimits,
    contrib_start,
    handle_new_conn,
    select_round,
)
from ivshmem_model.model.state import Fate, Server, SystemState
from ivshmem_model.model.system import enabled, initial_state, step
from ivshmem_model.model.variants import VARIANTS
from ivshmem_model.properties.invariants import BY_NAME
from ivshmem_model.properties.trace import run_trace

sys.path.insert(0, os.path.dirname(__file__))
from helpers import contrib, play
from test_lockstep import two_peers

PROGRAMS = contrib_programs()
needs_c = pytest.mark.skipif(isinstance(PROGRAMS, str), reason=str(PROGRAMS))
Property = Callable[[ServerModel], "str | None"]
EXAMPLES = int(os.environ.get("IVSHMEM_CONTRIB_EXAMPLES", "30"))
CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"
QEMU_72 = VARIANTS["qemu-7.2"]  # the variant of the QEMU whose contrib programs run here


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
    # In the system model connect is atomic: a connect then a disconnect keeps it serving;
    # a close before the accept is the action abandon, which brings it down the same way.
    state = initial_state(contrib(2))
    for action in (Connect(0), Connect(1), Disconnect(1)):
        outcome = step(state, action)
        assert outcome is not None
        state = outcome[0]
    assert state.server.up
    state = play(contrib(2), Connect(0), Abandon(1))
    assert (state.server.up, state.server.failure) == (False, model.failure)
    assert state.server.peers == ()  # peer 0 freed by the server's close: its socket closed


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


# ---------------------------------------------------------------------------------------------
# The system model's plain client: the C client's rules (model/server.py, C:26-72, C:293-324)


def client_set_up(*steps: Action) -> SystemState:
    """A plain client on a scripted server, set up (version, id 1, shm), then ``steps``."""
    config = Config(endpoints=1, clients=(0,), server=ServerConfig(policy="scripted"))
    setup: list[Action] = [Connect(0)]
    for value, fd in ((0, None), (1, None), (-1, "shm")):
        setup += [ServerSend(0, value, fd), Deliver(0)]
    return play(config, *setup, *steps)


def unreferenced_open_fds(state: SystemState, e: int) -> int:
    client = state.endpoints[e].client
    assert client is not None
    held = {client.shm_fd, *client.local, *(d for p in client.peers for d in p.vectors)}
    return sum(1 for d, entry in enumerate(state.fds)
               if entry is not None and entry.open and entry.owner == e and d not in held)


def test_system_client_keeps_no_fd_of_a_message_with_two_and_reads_a_delete() -> None:
    """C:33 has room for one descriptor and C:62-66 keep only a header of exactly one: two
    eventfds for known peer 0 read as "peer 0 left", and both descriptors leak."""
    known = (ServerSend(0, 0, "eventfd"), Deliver(0))
    client = client_set_up(*known).endpoints[0].client
    assert client is not None and [p.id for p in client.peers] == [0]
    state = client_set_up(*known, ServerSend(0, 0, "eventfd", ("eventfd",)), Deliver(0))
    client = state.endpoints[0].client
    assert client is not None and client.peers == ()
    assert state.endpoints[0].fate is None
    assert unreferenced_open_fds(state, 0) == 2
    check = BY_NAME["fd_conservation"].check
    assert check is not None and (check(state) or "").startswith("endpoint 0 leaks descriptor")


def test_system_client_fails_on_three_fds_for_an_unknown_peer_and_leaks_two() -> None:
    state = client_set_up(ServerSend(0, 5, "eventfd", ("pipe", "devnull")), Deliver(0))
    assert state.endpoints[0].fate == Fate("failed", "receive delete for invalid peer 5")
    # the kernel cut the third descriptor (MSG_CTRUNC): only the first two reach the process
    owned = [e for e in state.fds if e is not None and e.open and e.owner == 0]
    kinds = sorted(o.kind for o in (state.objects[e.obj] for e in owned) if o is not None)
    assert kinds == ["eventfd", "pipe", "shm"]


def test_system_client_keeps_one_fd_as_before() -> None:
    state = client_set_up(ServerSend(0, 0, "eventfd", ()), Deliver(0))
    client = state.endpoints[0].client
    assert client is not None and [len(p.vectors) for p in client.peers] == [1]
    assert unreferenced_open_fds(state, 0) == 0


@pytest.mark.parametrize(("kind", "error"), [
    ("devnull", "invalid read size = 0"), ("file:13", "invalid read size = 5"),
    ("shm:4096", "invalid read size = 0"), ("eventfd", None), ("pipe", None)])
def test_system_client_own_vector_that_reads_short_ends_it(kind: str, error: str | None) -> None:
    """C:282-288 select on own vectors, C:311-315 fail on a short read: an own vector that
    is a file or /dev/null ends the client once it arrives (client_own_vector_eof)."""
    state = client_set_up(ServerSend(0, 1, kind), Deliver(0))
    fate = state.endpoints[0].fate
    assert fate == (None if error is None else Fate("failed", error))
    if error is None:
        client = state.endpoints[0].client
        assert client is not None and len(client.local) == 1


# ---------------------------------------------------------------------------------------------
# The C server's failures in the system model (abandon, garbage, server.socket_capacity),
# against the raw model (ServerModel) and the C server


def raw_steps_of(steps: tuple[Action, ...]) -> tuple[RawStep, ...]:
    """A system-model trace of the contrib server as raw-client steps: ``abandon`` is a
    connect and a close while the server is stopped; a ``realize`` reads the three setup
    messages (S:97-127) and a ``deliver`` one message."""
    out: list[RawStep] = []
    for a in steps:
        e = getattr(a, "endpoint", 0)
        if isinstance(a, Abandon):
            out += [R("freeze"), R("connect", e), R("close", e), R("thaw")]
        elif isinstance(a, Realize):
            out += [R("read", e)] * 3
        else:
            op = {Connect: "connect", Deliver: "read", Disconnect: "close", Garbage: "garbage",
                  ServerExit: "exit"}[type(a)]
            out.append(R(op, e))
    return tuple(out)


def raw_trace_of(trace: Trace) -> RawTrace:
    server = trace.config.server
    return RawTrace(trace.config.endpoints, raw_steps_of(trace.steps), server.vectors,
                    server.shm_size)


def overflow_shape(capacity: int, vectors: int) -> int:
    """How many clients must connect, each with ``vectors`` eventfds, before the first one's
    socket of ``capacity`` messages overflows (3 setup messages, then every peer's vectors)."""
    clients = 2
    while 3 + vectors * clients <= capacity:
        clients += 1
    return clients


@needs_c
def test_corpus_abandoned_connection_is_confirmed_on_the_c_server() -> None:
    cx = load_counterexample(str(CORPUS / "contrib-server-shuts-down-on-an-abandoned-connection"
                                 ".json"))
    violation = run_trace(cx.trace, QEMU_72).first("serves_on")
    assert violation is not None
    model = agree(raw_trace_of(cx.trace))
    assert model.failure == "cannot send initial info"
    assert serves_on(model) == violation.message


@needs_c
@pytest.mark.parametrize("name", ["contrib-full-socket-loses-a-peer",
                                  "contrib-full-socket-device-misses-a-peer"])
def test_corpus_full_socket_is_confirmed_on_the_c_server(name: str) -> None:
    """The entry's shape (every endpoint connects, then endpoint 0 reads its socket dry) with
    as many clients of 64 vectors as this machine's sockets need to overflow: the system
    model with that capacity and the C server (in lock step) both lose the advertisement."""
    cx = load_counterexample(str(CORPUS / f"{name}.json"))
    config = cx.trace.config
    assert config.server.socket_capacity is not None
    reads = [s for s in raw_steps_of(cx.trace.steps) if s.op == "read"]
    connects = raw_steps_of(cx.trace.steps)[:config.endpoints]
    assert connects == tuple(R("connect", e) for e in range(config.endpoints))
    assert reads == [R("read", 0)] * config.server.socket_capacity
    capacity = socket_capacity()
    clients = overflow_shape(capacity, 64)
    assert overflow_shape(config.server.socket_capacity, config.server.vectors) == \
        config.endpoints
    scaled = Trace(
        Config(endpoints=clients, clients=tuple(range(clients)),
               server=ServerConfig(vectors=64, socket_capacity=capacity)),
        (*(Connect(e) for e in range(clients)), *[Deliver(0)] * capacity))
    violation = run_trace(scaled, QEMU_72).first("peer_view")
    assert violation is not None and violation.step == len(scaled.steps) - 1
    model = agree(raw_trace_of(scaled))
    assert views_match_roster(model) is not None


def test_abandon_and_garbage_are_on_the_menus_only_when_asked() -> None:
    def hostile(config: Config) -> set[Action]:
        return {a for a in enabled(play(config, Connect(0))) if isinstance(a, Abandon | Garbage)}

    assert hostile(contrib(2, clients=(0,))) == set()
    assert hostile(contrib(2, clients=(0,), hostile_clients=True)) == {Garbage(0), Abandon(1)}
    # off the menus, a trace may still take them
    assert step(play(contrib(2, clients=(0,)), Connect(0)), Garbage(0)) is not None


def system_raw_pair(capacity: int, vectors: int) -> tuple[SystemState, ServerModel]:
    config = Config(endpoints=3, clients=(0, 1, 2), hostile_clients=True,
                    server=ServerConfig(vectors=vectors, socket_capacity=capacity))
    return initial_state(config), ServerModel(3, vectors, config.server.shm_size, capacity)


def _channel(world_channel: object, fds: object, objects: object) -> list[tuple[int, object]]:
    out = []
    for value, d in world_channel:  # type: ignore[attr-defined]
        out.append((value, None if d < 0 else objects[fds[d].obj].kind))  # type: ignore[index]
    return out


hostile_actions = st.lists(st.builds(
    lambda kind, e: ServerExit() if kind is ServerExit else kind(e),
    st.sampled_from([Connect, Connect, Deliver, Deliver, Deliver, Disconnect, Abandon, Garbage,
                     ServerExit]),
    st.integers(0, 2)), max_size=25)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(3, 8), st.integers(0, 2), hostile_actions)
def test_system_model_agrees_with_the_raw_model_on_hostile_clients(
        capacity: int, vectors: int, actions: list[Action]) -> None:
    """The system model's contrib server (connect, deliver, disconnect, abandon, garbage,
    server_exit, a socket capacity) sends what the raw model, checked in lock step against
    the C server, sends: every step, the server's fate and roster and every open channel."""
    state, raw = system_raw_pair(capacity, vectors)
    for action in actions:
        outcome = step(state, action)
        if outcome is None:
            continue
        state = outcome[0]
        for s in raw_steps_of((action,)):
            assert not raw.reused(s) and raw.enabled(s), (action, s)
            raw.step(s)
        assert state.server.up == raw.server.up
        assert state.server.failure == (raw.failure or "")
        assert [(p.endpoint, p.id) for p in state.server.peers] == \
            [(p.endpoint, p.id) for p in raw.server.peers]
        for e in raw.open:
            assert _channel(state.channels[e], state.fds, state.objects) == \
                _channel(raw.world.channel(e), raw.world.fds, raw.world.objects), e

"""QEMU 7.2's C ``ivshmem-client`` against a scripted server, in lock step with the model's
client (``model/executor/contrib_client.py``).  Needs ``scripts/build-contrib.sh``; skips
otherwise.  ``IVSHMEM_CONTRIB_EXAMPLES`` sets the size of the generated campaign."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ivshmem_model.model.executor.contrib_client as harness
from ivshmem_model.model.executor.contrib import RawDivergence, contrib_programs
from ivshmem_model.model.executor.contrib_client import (
    KINDS,
    ClientModel,
    Kind,
    ServerStep,
    ServerTrace,
    parse_dump,
    run_client_lockstep,
    setup,
)
from ivshmem_model.model.server import (
    client_handle_msg,
    client_own_vector_eof,
    client_read_failed,
    client_read_one_msg,
    client_vector_fd,
    command_int,
)
from ivshmem_model.model.state import Client, ClientPeer, FileObject

PROGRAMS = contrib_programs()
needs_c = pytest.mark.skipif(isinstance(PROGRAMS, str), reason=str(PROGRAMS))
EXAMPLES = int(os.environ.get("IVSHMEM_CONTRIB_EXAMPLES", "100"))  # about 0.1 s each
S = ServerStep


def c_client() -> str:
    assert not isinstance(PROGRAMS, str)
    return PROGRAMS[1]


def send(value: int, *fds: Kind) -> ServerStep:
    return S("send", value, fds)


def kick(peer: int, vector: int) -> ServerStep:
    return S("int", peer, vector=vector)


def agree(*steps: ServerStep) -> ClientModel:
    model = ClientModel()
    report = run_client_lockstep(ServerTrace(steps), c_client(), model=model)
    assert report.ok, report.summary()
    assert report.checks > 0
    return model


def diverge(*steps: ServerStep) -> RawDivergence:
    report = run_client_lockstep(ServerTrace(steps), c_client())
    assert report.divergence is not None, report.summary()
    return report.divergence


# ---------------------------------------------------------------------------------------------
# Ordinary traces


@needs_c
def test_c_client_setup_peers_delete_and_notify() -> None:
    model = agree(*setup(7, 2), send(3, "eventfd"), send(3, "eventfd"), send(4, "eventfd"),
                  kick(3, 1), S("bcast"), kick(7, 0), kick(9, 0), send(3), kick(4, 0))
    assert (model.client.id, len(model.client.local)) == (7, 2)
    assert [(p.id, len(p.vectors)) for p in model.client.peers] == [(4, 1)]
    assert sorted(model.counts.values()) == [1, 2, 2]  # 3/0 once; 3/1 and 4/0 twice


@needs_c
def test_c_client_reconnects_at_once_after_a_failure_once_set_up() -> None:
    """main.c:229-236: ``ivshmem_client_close`` and a new connection, a fresh view."""
    model = agree(*setup(1, 1), send(2, "eventfd"), S("close"), *setup(5), send(2, "eventfd"))
    assert model.connections == 2
    assert (model.client.id, model.client.local, len(model.client.peers)) == (5, (), 1)


# ---------------------------------------------------------------------------------------------
# The C client's failures, each against the model's text


@needs_c
@pytest.mark.parametrize(("steps", "error"), [
    ((send(1),), "cannot read from server"),
    ((send(0, "eventfd"),), "cannot read from server"),  # the fd leaks (C:210-214)
    ((send(0), send(-3)), "cannot read from server (2)"),
    ((send(0), send(2, "pipe")), "cannot read from server (2)"),
    ((send(0), send(2), send(-1)), "cannot read from server (3)"),
    ((send(0), send(2), send(0, "shm")), "cannot read from server (3)"),
    ((S("close"),), "cannot read from server"),
    ((send(0), S("half")), "cannot read from server (2)"),
    ((send(0), send(2), S("partial", -1)), "cannot read from server (3)"),
], ids=["version", "version-fd", "negative-id", "id-fd", "shm-nofd", "shm-value", "closed",
        "half-closed", "partial"])
def test_c_client_setup_failures_retry(steps: tuple[ServerStep, ...], error: str) -> None:
    model = agree(*steps, *setup(0))  # the steps after a setup failure are not run
    assert model.retrying and model.errors == [error]
    assert model.leaked == ({0} if steps[-1].fds and len(steps) < 3 else set())


@needs_c
@pytest.mark.parametrize("kind", ["devnull", "file", "shm"])
def test_c_client_fails_on_an_own_vector_that_reads_short(kind: Kind) -> None:
    """C:293-324: the client selects on its own vectors and fails at the first short read."""
    model = agree(*setup(1), send(1, kind), *setup(2), send(3, "eventfd"))
    assert model.errors == ["invalid read size = 0"]
    assert client_own_vector_eof(harness.object_of(kind)) == "invalid read size = 0"


@needs_c
def test_c_client_keeps_a_pipe_as_own_vector_and_cannot_notify_through_one() -> None:
    model = agree(*setup(1), send(1, "pipe"), send(2, "pipe"), kick(2, 0), S("bcast"),
                  kick(1, 0))
    assert model.errors == [] and model.connections == 1


@needs_c
def test_c_client_prints_kicks_on_its_own_vectors() -> None:
    """C:293-324: an eventfd or a pipe, kicked by a peer (``ring``) or by the client itself."""
    agree(*setup(1, 2), send(1, "pipe"), S("ring", vector=0), S("ring", vector=2),
          S("ring", vector=1), kick(1, 1), kick(1, 2), S("ring", vector=2))


@needs_c
def test_c_client_takes_setup_messages_with_two_fds_as_fd_less() -> None:
    """C:210-221 see fd -1 for a version and an id with two fds (both leak), C:226-233 then
    refuse the shared memory sent with two."""
    model = agree(send(0, "eventfd", "eventfd"), send(5, "shm", "pipe"), send(-1, "shm", "shm"))
    assert model.errors == ["cannot read from server (3)"]
    assert model.leaked == {0, 1, 2, 3, 4, 5}


@needs_c
def test_c_client_reads_a_message_with_two_fds_as_a_delete_and_leaks_them() -> None:
    """C:33 + C:62-66: a header of two fds is skipped; fd -1 makes it a delete of peer 3."""
    model = agree(*setup(7), send(3, "eventfd", "eventfd"), *setup(1), send(2, "eventfd"),
                  send(2, "eventfd", "shm", "pipe"), send(2, "file", "file"))
    # and with a known peer, it deletes it: the second message of peer 2 is its delete
    assert model.errors == [f"receive delete for invalid peer {p}" for p in (3, 2)]
    assert model.leaked == {1, 2, 5, 6, 8, 9}  # the third of three never arrives
    assert model.connections == 3


@needs_c
@pytest.mark.parametrize("own", [True, False], ids=["own", "peer"])
def test_c_client_too_many_vectors_fails_and_leaks_the_fd(own: bool) -> None:
    """C:131-134 for the client itself and for a peer (the 65th vector)."""
    target = 1 if own else 2
    model = agree(*setup(1), *(send(target, "eventfd") for _ in range(65)), *setup(1))
    assert model.errors == ["Too many vectors received, failing"] and len(model.leaked) == 1


@needs_c
def test_c_client_deletes_of_itself_and_of_unknown_peers_fail() -> None:
    model = agree(*setup(4), send(4), *setup(4), send(5), *setup(4), send(-1), *setup(4),
                  send(2**63 - 1, "eventfd"), send(2**63 - 1), send(-2**63))
    assert model.errors == [f"receive delete for invalid peer {p}" for p in (4, 5, -1, -2**63)]


@needs_c
def test_c_client_huge_and_negative_peer_ids_are_peers() -> None:
    model = agree(*setup(2**63 - 1), send(-1, "eventfd"), send(-2**63, "eventfd"),
                  send(2**63 - 1, "eventfd"), kick(-1, 0))
    assert [p.id for p in model.client.peers] == [-1, -2**63]


@needs_c
def test_c_client_reads_command_numbers_as_c_ints() -> None:
    """main.c:84, 106: ``int 9223372036854775807 0`` names peer -1; the client's own id
    2**63-1 cannot be named; ``int 4294967298 4294967296`` is peer 2's vector 0."""
    model = agree(*setup(2**63 - 1, 1), send(-1, "eventfd"), send(2, "eventfd"),
                  kick(2**63 - 1, 0), kick(2**32 + 2, 2**32), kick(2**31, 0))
    assert sorted(model.counts.values()) == [1, 1]


# ---------------------------------------------------------------------------------------------
# The check can fail: the model as it was before this harness


@needs_c
def test_a_model_that_keeps_the_first_of_two_fds_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chardev's rule (``tcp_get_msgfds``), which the system model applies to clients."""
    monkeypatch.setattr(harness, "client_read_one_msg", lambda fds: fds[0] if fds else -1)
    d = diverge(*setup(7), send(3, "eventfd", "eventfd"))
    assert (d.step, d.check, d.model, d.real) == (3, "fate", "running", "reconnects")


@needs_c
def test_a_model_blind_to_own_vector_reads_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "client_handle_msg",
                        lambda c, v, fd, obj=None: client_handle_msg(c, v, fd))
    d = diverge(*setup(1), send(1, "devnull"))
    assert (d.step, d.check) == (3, "fate")


@needs_c
def test_a_model_with_negative_vector_indexes_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    """``int 3 -1``: the old ``vectors[vector] if vector < len(vectors)`` took the last one."""
    def old(client: Client, peer: int, vector: int) -> int | None:
        vectors = client.local if peer == client.id else next(
            (p.vectors for p in client.peers if p.id == peer), ())
        return vectors[vector] if vector < len(vectors) else None

    monkeypatch.setattr(harness, "client_vector_fd", old)
    d = diverge(*setup(7), send(3, "eventfd"), send(3, "eventfd"), kick(3, -1))
    assert (d.step, d.check) == (5, "kicks")


@needs_c
def test_a_model_that_forgets_a_peer_diverges_on_the_dump() -> None:
    class Forgetful(ClientModel):
        def step(self, s: ServerStep, labels: tuple[int, ...] = ()) -> harness.Outcome:
            outcome = super().step(s, labels)
            if self.client.stage == 3 and len(self.client.peers) > 1:
                self.client = Client(3, self.client.id, self.client.shm_fd, self.client.local,
                                     self.client.peers[:1])
            return outcome

    steps = (*setup(0), send(1, "eventfd"), send(2, "eventfd"))
    report = run_client_lockstep(ServerTrace(steps), c_client(), model=Forgetful())
    assert report.divergence is not None
    assert (report.divergence.step, report.divergence.check) == (4, "state")


# ---------------------------------------------------------------------------------------------
# Generated campaigns


VALUES = (0, 1, 2, 3, -1, -2, 7, 65535, 2**31, 2**63 - 1, -2**63)
PEERS = (0, 1, 2, 3, -1, 7)
IDS = (0, 1, 7, 2**63 - 1)


def server_steps(own: int) -> st.SearchStrategy[ServerStep]:
    """One step of a server whose client's id is ``own``: any message, vectors for peers or
    for the client itself (of every kind), deletes, hostile closes, the client's commands."""
    kinds = st.sampled_from(KINDS)
    fds = st.one_of(st.just(()), st.just(("eventfd",)), st.just(("eventfd",)), st.tuples(kinds),
                    st.lists(kinds, min_size=2, max_size=3).map(tuple))
    peers = st.sampled_from(PEERS)
    return st.one_of(
        st.builds(ServerStep, st.just("send"), st.sampled_from((*VALUES, own)), fds),
        st.builds(ServerStep, st.just("send"), peers, st.just(("eventfd",))),
        st.builds(ServerStep, st.just("send"), st.just(own), st.tuples(kinds)),
        st.builds(ServerStep, st.just("send"), peers),
        st.builds(ServerStep, st.sampled_from(("half", "close", "bcast"))),
        st.builds(ServerStep, st.just("partial"), st.sampled_from(VALUES)),
        st.builds(ServerStep, st.just("int"), st.sampled_from((*PEERS, own)),
                  vector=st.integers(-1, 2)),
        st.builds(ServerStep, st.just("ring"), vector=st.integers(0, 2)),
    )


@st.composite
def server_traces(draw: st.DrawFn, size: int = 10) -> ServerTrace:
    """Mostly an honest setup (some own vectors) then steps and, now and then, another honest
    setup (for the client's next connection); else steps from the start (out of order, bad
    versions, the server closing early)."""
    own = draw(st.sampled_from(IDS))
    honest = st.integers(0, 2).map(lambda n: setup(own, n))
    one = server_steps(own).map(lambda s: (s,))
    prefix = draw(honest) if draw(st.integers(0, 3)) else ()
    chunks = draw(st.lists(st.one_of(one, one, one, one, honest), max_size=size))
    return ServerTrace((*prefix, *(s for chunk in chunks for s in chunk)))


@needs_c
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(server_traces())
def test_generated_server_traces_agree_with_the_c_client(trace: ServerTrace) -> None:
    report = run_client_lockstep(trace, c_client())
    assert report.ok, report.summary()


# ---------------------------------------------------------------------------------------------
# The model's client pieces alone (no C programs needed)


def test_read_one_msg_keeps_a_single_fd_only() -> None:
    assert [client_read_one_msg(fds) for fds in ((), (5,), (5, 6), (5, 6, 7))] == [-1, 5, -1, -1]


def test_read_failed_names_the_stage() -> None:
    assert [client_read_failed(Client(stage)) for stage in range(4)] == [
        "cannot read from server", "cannot read from server (2)",
        "cannot read from server (3)", "cannot read message"]


def test_own_vector_eof_by_kind_and_size() -> None:
    assert client_own_vector_eof(FileObject("eventfd")) is None
    assert client_own_vector_eof(FileObject("pipe")) is None
    assert client_own_vector_eof(FileObject("devnull")) == "invalid read size = 0"
    assert client_own_vector_eof(FileObject("shm", 0, 13)) == "invalid read size = 5"
    # only when the object is given (the system model gives none)
    running = Client(3, 1, 9)
    assert client_handle_msg(running, 1, 4)[1] is None
    assert client_handle_msg(running, 1, 4, FileObject("devnull"))[1] == "invalid read size = 0"
    assert client_handle_msg(running, 2, 4, FileObject("devnull"))[1] is None


def test_vector_fd_refuses_negative_vectors() -> None:
    client = Client(3, 1, 9, (4, 5), (ClientPeer(2, (6, 7)),))
    assert [client_vector_fd(client, 2, v) for v in (-1, 0, 1, 2)] == [None, 6, 7, None]
    assert client_vector_fd(client, 1, -2) is None


def test_vector_fd_reads_the_numbers_as_c_ints() -> None:
    assert [command_int(v) for v in (2**63 - 1, 2**31, 2**32 + 1, -(2**63), 10**20)] == [
        -1, -(2**31), 1, 0, -1]  # as glibc's sscanf stores them
    client = Client(3, 2**63 - 1, 9, (4,), (ClientPeer(-1, (6,)),))
    assert client_vector_fd(client, 2**63 - 1, 0) == 6  # names peer -1, not the client
    assert client_vector_fd(client, 2**32 + 1, 0) is None
    assert client_vector_fd(client, -1, 2**32) == 6


def test_parse_dump() -> None:
    text = ("new peer id = 3\nour_id = 7\n  vector 0 is enabled (fd=5)\npeer_id = 3\n"
            "  vector 0 is enabled (fd=6)\n  vector 1 is enabled (fd=8)\npeer_id = -1\ncmd> ")
    dump = parse_dump(text)
    assert dump is not None
    assert (dump.id, dump.local, dump.peers) == (7, (5,), ((3, (6, 8)), (-1, ())))
    assert parse_dump("cmd> ") is None

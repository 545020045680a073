"""QEMU's own contrib ``ivshmem-server`` as a third interpreter: raw clients against it, in lock
step with the model's contrib policy (``model/server.py``).

A raw client does only what a trace says: ``connect``, ``read`` one message, ``garbage`` (write
8 bytes, which the server takes for a disconnect, S:421-427), ``close`` its socket.  ``freeze``
stops the server (SIGSTOP) so that the following steps pile up unseen, and ``thaw`` lets it run
(SIGCONT): that is how badly timed traces (a client gone before it is accepted, a close and a
connect in one ``select``) are made exact.  ``exit`` is SIGTERM.

The model side is :class:`ServerModel`: the policy's pure functions over a
:class:`~model.proc.World`, with the kernel's socket limits (:class:`~model.server.SocketLimits`:
the capacity measured here, EPIPE to closed clients) and the select loop
(:func:`~model.server.select_round`).  After every step, in this order, the first disagreement
is reported:

1. ``enabled``: both sides take the step, or both refuse it;
2. ``message``: a ``read`` gets the model's message: value, fd kind, and which object the fd is
   (eventfds by the kernel's ``eventfd-id``, the shared memory by inode, matched one to one with
   the model's objects, so each eventfd is checked to belong to the same peer and vector);
3. ``queued``: every open client's unread messages (``SIOCINQ`` / 8) against its channel;
4. ``fate``: the server running, or exited with the model's code and failure text;
5. ``fds``: the server's ``/proc/PID/fd`` count against its peers' sockets and eventfds.

At the end every open client is drained and each remaining message compared (2), then whether
the server closed the client's socket (``eof``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import struct
import tempfile
import termios
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.lockstep import RealServer
from ivshmem_model.model.proc import World
from ivshmem_model.model.server import (
    Pending,
    SocketLimits,
    contrib_shm_size,
    contrib_start,
    select_round,
    server_close,
)

TIMEOUT = 1.0  # seconds a real effect may take to show
QUIET = 0.01  # seconds to wait for unexpected extra messages after a step
DEFAULT_DIR = Path.home() / ".cache" / "ivshmem-model" / "contrib" / "bin"

Op = Literal["connect", "close", "garbage", "read", "freeze", "thaw", "exit"]
OPS: tuple[Op, ...] = ("connect", "close", "garbage", "read", "freeze", "thaw", "exit")


def contrib_programs() -> tuple[str, str] | str:
    """The built ``ivshmem-server`` and ``ivshmem-client`` (``IVSHMEM_CONTRIB_DIR``/bin, default
    ``~/.cache/ivshmem-model/contrib/bin``), or why they are not there."""
    base = os.environ.get("IVSHMEM_CONTRIB_DIR")
    where = Path(base) / "bin" if base else DEFAULT_DIR
    server, client = where / "ivshmem-server", where / "ivshmem-client"
    for program in (server, client):
        if not os.access(program, os.X_OK):
            return f"{program} is not built (run scripts/build-contrib.sh)"
    return str(server), str(client)


def socket_capacity() -> int:
    """How many 8-byte messages one unix stream socket takes before ``EAGAIN`` here (Linux
    counts buffer bytes against ``SO_SNDBUF``, so this is per machine)."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        count = 0
        with contextlib.suppress(BlockingIOError):
            while count < 1 << 16:
                a.send(b"\0" * wire.MSG.size)
                count += 1
    return count


@dataclass(frozen=True, slots=True)
class RawStep:
    op: Op
    endpoint: int = 0

    def __str__(self) -> str:
        return self.op if self.op in ("freeze", "thaw", "exit") else f"{self.op}({self.endpoint})"


@dataclass(frozen=True, slots=True)
class RawTrace:
    clients: int
    steps: tuple[RawStep, ...]
    vectors: int = 1
    shm_size: int = 1 << 20


Label = tuple[str, int]  # ("eventfd" | "shm", object); messages without fd have None
Received = tuple[int, str | None, Label | None]


# ---------------------------------------------------------------------------------------------
# The model side


@dataclass
class ServerModel:
    """The contrib policy, the kernel's socket rules and the clients' sockets."""

    clients: int
    vectors: int
    shm_size: int
    capacity: int | None
    world: World = field(init=False)
    frozen: bool = False
    pending: Pending = field(default_factory=Pending)
    open: set[int] = field(default_factory=set)
    closed: set[int] = field(default_factory=set)  # the client closed its end, server has not
    eof: set[int] = field(default_factory=set)  # the server closed its end
    failure: str | None = None  # why the server shut down on its own
    exited: bool = False  # SIGTERM
    seen: dict[int, list[Received]] = field(default_factory=dict)  # messages each client read

    def __post_init__(self) -> None:
        self.world = World((), (), tuple(() for _ in range(self.clients)), True)
        self.server = contrib_start(self.world, self.shm_size)

    @property
    def limits(self) -> SocketLimits:
        return SocketLimits(self.capacity, frozenset(self.closed))

    def reused(self, s: RawStep) -> bool:
        """A ``connect`` of a client whose previous socket the server has not seen closed yet:
        the harness names sockets by client, so it skips the step on both sides."""
        e = s.endpoint
        return s.op == "connect" and (e in self.closed or e in self.pending.backlog)

    def enabled(self, s: RawStep) -> bool:
        up = self.server.up
        if s.op == "connect":
            return up and s.endpoint not in self.open
        if s.op in ("close", "garbage"):
            return s.endpoint in self.open
        if s.op == "read":
            return s.endpoint in self.open and bool(self.world.channel(s.endpoint))
        if s.op == "freeze":
            return up and not self.frozen
        if s.op == "thaw":
            return self.frozen
        return up and not self.frozen  # exit

    def step(self, s: RawStep) -> Received | None:
        """Take an enabled step; a ``read`` returns the message."""
        e = s.endpoint
        obs: list[dict[str, Any]] = []
        if s.op == "read":
            value, d = self.world.pop_message(e)
            if d < 0:
                self.seen.setdefault(e, []).append((value, None, None))
                return value, None, None
            entry = self.world.fds[d]
            assert entry is not None
            kind = self.world.objects[entry.obj]
            assert kind is not None
            got: Received = (value, kind.kind, (kind.kind, entry.obj))
            self.seen.setdefault(e, []).append(got)
            return got
        if s.op == "connect":
            self.seen[e] = []
            self.open.add(e)
            self.eof.discard(e)
            self.pending = replace(self.pending, backlog=(*self.pending.backlog, e))
        elif s.op in ("close", "garbage"):
            if s.op == "close":
                self.open.discard(e)
                self.world.clear_channel(e)
                if e not in self.eof:
                    self.closed.add(e)
            if e not in self.eof:
                self.pending = replace(self.pending, readable=self.pending.readable | {e})
        elif s.op == "freeze":
            self.frozen = True
        elif s.op == "thaw":
            self.frozen = False
        else:
            self.server = server_close(self.server, self.world, obs, self.limits)
            self.exited = True
            self.after_close()
        if not self.frozen:
            self.run()
        return None

    def run(self) -> None:
        """The server's select loop until nothing is pending."""
        while self.pending and self.server.up:
            peers = {p.endpoint for p in self.server.peers}
            self.server, self.pending, failure = select_round(
                self.server, self.world, self.vectors, self.pending, [], self.limits)
            if failure is not None:
                self.failure = failure
                self.after_close()
                return
            left = peers - {p.endpoint for p in self.server.peers}
            self.eof |= left
            self.closed -= left

    def after_close(self) -> None:
        self.eof |= self.open
        self.closed.clear()
        self.pending = Pending()

    def fds(self) -> int:
        """Descriptors the server holds beyond its base: a socket and the eventfds per peer."""
        return sum(1 + len(p.eventfds) for p in self.server.peers)


# ---------------------------------------------------------------------------------------------
# What users of the service rely on


def view_of(seen: list[Received]) -> dict[int, tuple[Label | None, ...]] | None:
    """The peers a client believes in after reading ``seen`` (as ``ivshmem-client`` and the
    device count them: an fd is the next vector of that id, no fd deletes it), own id
    included; ``None`` before the three setup messages."""
    if len(seen) < 3:
        return None
    view: dict[int, tuple[Label | None, ...]] = {}
    for value, kind, label in seen[3:]:
        if kind is None:
            view.pop(value, None)
        else:
            view[value] = (*view.get(value, ()), label)
    return view


def serves_on(model: ServerModel) -> str | None:
    """The server keeps serving whatever one client does: it goes down only when told to."""
    if not model.server.up and not model.exited:
        return f"the server shut itself down: {model.failure}"
    return None


def views_match_roster(model: ServerModel) -> str | None:
    """Once every message is read, every client the server still serves believes in exactly
    the server's roster, each peer with its eventfds in vector order."""
    if not model.server.up or model.frozen:
        return None
    roster = {p.id: tuple(("eventfd", o) for o in p.eventfds) for p in model.server.peers}
    for peer in model.server.peers:
        e = peer.endpoint
        if e not in model.open or model.world.channel(e):
            continue
        view = view_of(model.seen.get(e, []))
        if view != roster:
            return f"client {e} (id {peer.id}) believes {view}, the server has {roster}"
    return None


PROPERTIES = (serves_on, views_match_roster)


def settle_model(model: ServerModel) -> None:
    """Thaw, then read every open client dry (the model's own drain)."""
    if model.frozen:
        model.step(RawStep("thaw"))
    for e in sorted(model.open):
        while model.world.channel(e):
            model.step(RawStep("read", e))


# ---------------------------------------------------------------------------------------------
# The real side


def _queued(sock: socket.socket) -> int:
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    value: int = struct.unpack("i", buf)[0]
    return value // wire.MSG.size


def _eventfd_id(fd: int) -> int | None:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("eventfd-id:"):
            return int(line.split()[1])
    return None


@dataclass
class RawClient:
    sock: socket.socket | None = None
    held: list[int] = field(default_factory=list)  # received fds, kept so ids stay unique

    def connect(self, path: str) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            return False
        self.sock = sock
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def garbage(self) -> None:
        assert self.sock is not None
        with contextlib.suppress(OSError):
            self.sock.send(b"garbage!", socket.MSG_NOSIGNAL)

    def queued(self) -> int:
        return 0 if self.sock is None else _queued(self.sock)

    def read(self) -> tuple[int, str | None, tuple[str, int] | None] | None:
        """One message with its fd's kind and identity; ``None`` at end of file."""
        assert self.sock is not None
        self.sock.settimeout(TIMEOUT)
        try:
            msg = wire.recv_msg(self.sock)
        except (wire.WireError, OSError):
            return None
        if msg.fd is None:
            return msg.value, None, None
        self.held.append(msg.fd)
        if wire.fd_kind(msg.fd) == "eventfd":
            ident = _eventfd_id(msg.fd)
            return msg.value, "eventfd", ("eventfd", -1 if ident is None else ident)
        st = os.fstat(msg.fd)
        return msg.value, f"shm:{st.st_size}", ("shm", st.st_ino)

    def at_eof(self) -> bool:
        assert self.sock is not None
        self.sock.settimeout(0.0)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def release(self) -> None:
        self.close()
        for fd in self.held:
            os.close(fd)
        self.held.clear()


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True, slots=True)
class RawDivergence:
    step: int  # len(steps) for the final drain
    what: str
    check: str
    detail: str
    model: Any
    real: Any

    def __str__(self) -> str:
        return (f"step {self.step} {self.what}: {self.check}: {self.detail}: "
                f"model {self.model!r}, real {self.real!r}")


@dataclass(frozen=True, slots=True)
class RawReport:
    steps: int
    messages: int  # messages compared (value, fd kind and identity)
    checks: int
    divergence: RawDivergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def summary(self) -> str:
        if self.divergence is None:
            return f"agree: {self.steps} steps, {self.messages} messages, {self.checks} checks"
        return f"diverge at {self.divergence}"


class _Diverged(Exception):  # noqa: N818 - control flow, carries the divergence
    def __init__(self, divergence: RawDivergence) -> None:
        super().__init__(str(divergence))
        self.divergence = divergence


@dataclass
class _RawRun:
    model: ServerModel
    server: RealServer
    clients: list[RawClient]
    shm_kind: str
    index: int = 0
    what: str = ""
    checks: int = 0
    messages: int = 0
    to_real: dict[Label, tuple[str, int]] = field(default_factory=dict)
    to_model: dict[tuple[str, int], Label] = field(default_factory=dict)

    def same(self, check: str, detail: str, model: Any, real: Any) -> None:
        self.checks += 1
        if model != real:
            raise _Diverged(RawDivergence(self.index, self.what, check, detail, model, real))

    def real_step(self, s: RawStep) -> Received | bool | None:
        """Take the step on the real side: False when it cannot be taken."""
        client = self.clients[s.endpoint]
        proc = self.server.proc
        if s.op == "connect":
            return client.connect(self.server.path) or False
        if s.op == "close":
            client.close()
        elif s.op == "garbage":
            client.garbage()
        elif s.op == "read":
            got = client.read()
            return False if got is None else self.real_label(got)
        elif s.op == "freeze":
            proc.send_signal(signal.SIGSTOP)
            _wait(lambda: _state(proc.pid) in ("T", "t", "X", "Z", ""))
        elif s.op == "thaw":
            proc.send_signal(signal.SIGCONT)
        else:
            proc.send_signal(signal.SIGTERM)
        return None

    def real_label(self, got: tuple[int, str | None, tuple[str, int] | None]) -> Received:
        value, kind, ident = got
        if kind is not None and kind.startswith("shm:"):
            kind = "shm" if kind == self.shm_kind else kind
        return value, kind, ident

    def compare_message(self, e: int, model: Received, real: Received) -> None:
        self.messages += 1
        self.same("message", f"client {e}'s message (value, fd kind)", model[:2], real[:2])
        label, ident = model[2], real[2]
        if label is None or ident is None:
            return
        known = self.to_real.get(label)
        back = self.to_model.get(ident)
        if known is None and back is None:
            self.to_real[label], self.to_model[ident] = ident, label
            return
        self.same("message", f"client {e}'s fd is the object the model sent (model object, "
                  "real id)", (label, known), (back, ident))

    def settle(self) -> None:
        """Wait until the real side shows what the model predicts, then a little longer."""
        model = self.model
        if model.frozen:
            return
        proc = self.server.proc

        def matches() -> bool:
            if (proc.poll() is None) != model.server.up:
                return False
            return all(c.queued() == len(model.world.channel(e))
                       for e, c in enumerate(self.clients) if e in model.open)

        _wait(matches)
        time.sleep(QUIET)

    def compare(self) -> None:
        model, proc = self.model, self.server.proc
        for e, client in enumerate(self.clients):
            if e in model.open:
                self.same("queued", f"client {e}'s unread messages",
                          len(model.world.channel(e)), client.queued())
        if not model.frozen and not model.server.up:
            _wait(lambda: proc.poll() is not None)
        running = proc.poll() is None
        self.same("fate", "the server is running", model.server.up, running)
        if not running:
            self.server.exited = True
            out, err = self.server.output()
            failure = model.failure
            self.same("fate", "exit code", 0, proc.returncode)
            self.same("fate", "the failure in its output (stderr; -v stdout)",
                      (failure is not None, failure is not None),
                      ("ivshmem_server_handle_fds() failed" in err,
                       failure is not None and failure in out))
            return
        want = self.server.base + model.fds()
        if not model.frozen:
            _wait(lambda: self.server.fds() == want)
        self.same("fds", "the server's /proc/PID/fd", want, self.server.fds())

    def drain(self) -> None:
        """Read every open client dry and compare what remains, then end of file."""
        model = self.model
        if model.frozen:
            self.server.proc.send_signal(signal.SIGCONT)
            model.frozen = False
            model.run()
            self.settle()
        self.what = "drain"
        for e in sorted(model.open):
            client = self.clients[e]
            while model.world.channel(e):
                expected = model.step(RawStep("read", e))
                got = client.read()
                assert expected is not None
                self.same("message", f"client {e} has a message", True, got is not None)
                assert got is not None
                self.compare_message(e, expected, self.real_label(got))
            self.same("queued", f"client {e} has no further message", 0, client.queued())
            if e in model.eof:
                _wait(client.at_eof)
            self.same("eof", f"the server closed client {e}'s socket", e in model.eof,
                      client.at_eof())


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def _wait(ready: Any, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def run_raw_lockstep(trace: RawTrace, program: str, capacity: int | None = None,
                     model: ServerModel | None = None) -> RawReport:
    """Run ``trace`` with raw clients against ``program`` (QEMU's C ``ivshmem-server``) and
    against the model; the report names the first divergence.  ``capacity`` defaults to
    :func:`socket_capacity`; ``model`` lets a test plant a fault."""
    if capacity is None:
        capacity = socket_capacity()
    if model is None:
        model = ServerModel(trace.clients, trace.vectors, trace.shm_size, capacity)
    shm_kind = f"shm:{contrib_shm_size(trace.shm_size)}"
    with tempfile.TemporaryDirectory(prefix="ivshmem-contrib-") as directory:
        server = RealServer(directory, trace.vectors, trace.shm_size, program)
        clients = [RawClient() for _ in range(trace.clients)]
        run = _RawRun(model, server, clients, shm_kind)
        try:
            for index, s in enumerate(trace.steps):
                run.index, run.what = index, str(s)
                if model.reused(s):
                    continue
                enabled = model.enabled(s)
                real: Received | bool | None = False
                if enabled or s.op != "read":  # a read the model refuses would block
                    real = run.real_step(s) if _real_enabled(run, s) else False
                run.same("enabled", "the step is enabled", enabled, real is not False)
                if not enabled:
                    continue
                expected = model.step(s)
                if expected is not None:
                    assert isinstance(real, tuple)
                    run.compare_message(s.endpoint, expected, real)
                run.settle()
                run.compare()
            run.index = len(trace.steps)
            run.drain()
        except _Diverged as diverged:
            return RawReport(len(trace.steps), run.messages, run.checks, diverged.divergence)
        finally:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)
            for client in clients:
                client.release()
            server.stop()
    return RawReport(len(trace.steps), run.messages, run.checks)


def _real_enabled(run: _RawRun, s: RawStep) -> bool:
    """Steps the harness itself cannot take: socket state it tracks, not the server's."""
    client = run.clients[s.endpoint]
    running = run.server.proc.poll() is None
    if s.op == "connect":
        return client.sock is None
    if s.op in ("close", "garbage", "read"):
        return client.sock is not None
    if s.op == "freeze":
        return running and _state(run.server.proc.pid) not in ("T", "t")
    if s.op == "thaw":
        return running and _state(run.server.proc.pid) in ("T", "t")
    return running and _state(run.server.proc.pid) not in ("T", "t")

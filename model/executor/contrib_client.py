"""QEMU's own contrib ``ivshmem-client`` against a scripted server, in lock step with the
model's client (``client_handle_msg`` and its neighbours in ``model/server.py``).

The scripted server is this module: a unix socket listener on which the C client (``-v -S
PATH``) connects, and a trace of :class:`ServerStep`: ``send`` one 8-byte little-endian
message with fresh descriptors of the kinds named (an eventfd; the shared memory, a memfd of
:data:`SHM_BYTES`; or hostile kinds: a pipe's read end, ``/dev/null``, a regular file of
:data:`FILE_BYTES`; none where one is expected; two or three where one is), ``partial`` (4
bytes of a message), ``half`` (``shutdown(SHUT_WR)``), ``close``, ``ring`` (write a kick to
the client's own vector N, as a peer does: an eventfd, or a pipe through its write end); and
the client's own stdin commands ``int <peer> <vector>`` and ``int all`` (``bcast``).  The
same trace goes through :class:`ClientModel`: the model's client functions, a kick count per
eventfd and the client's reconnection loop.  After every step, in this order, the first
disagreement is reported:

1. ``fate``: the client runs on, reconnects at once (a failure after setup: main.c:229-236),
   or sleeps to retry (a failure during setup: main.c:221-225); a process that ended is a
   divergence (the C client never exits on its own);
2. ``error``: the failure's text: the last of the client's debug lines (``-v``) that name
   one (during setup ``cannot read message`` comes first, then the stage's own text);
3. ``state`` (once set up): ``dump``'s own id, own vectors and peers in list order with their
   vectors, each descriptor resolved through ``/proc/PID/fd`` to the object the harness sent
   (eventfds by ``eventfd-id``, the rest by inode; ``/dev/null`` objects are one inode);
4. ``shm``: the descriptor of ``shm_fd=N`` (printed at setup) is still the shared memory sent;
5. ``fds``: the client's ``/proc/PID/fd`` count: stdio and socket, the view's descriptors,
   and the descriptors the C client leaks (see below);
6. ``kicks``: after ``int``/``bcast``/``ring``, each eventfd's counter against the model's
   kicks (an own vector is read back to 0 by the client), and the lines printed: own-vector
   notifications, ``cannot find peer_id``, ``invalid vector``, ``could not write``.

Setup progress is seen in the debug lines ``our_id=`` and ``shm_fd=`` / ``listen on server
socket`` (stdin is not read before setup ends); stdout and stderr share one pty, so the lines
come line-buffered and in the order written.

Documented abstractions (what ``model/server.py``'s client does not hold, kept here):

* The reconnection loop (main.c:220-237).  The system model's client fails for good
  (``Fate("failed")``); the C client closes everything (``ivshmem_client_close``, C:246-268)
  and connects again: at once after a failure once set up, after ``sleep(1)`` during setup.
  :class:`ClientModel` restarts with a fresh ``Client()``; after a setup failure the run ends
  (the harness does not wait the second).
* Leaked descriptors.  The C client never closes: the descriptors of a message with two or
  more (the first two; C:33, C:62-66, :func:`~model.server.client_read_one_msg`); an fd that
  came with the version or the id message (C:210-221 close only the socket); the fd of a
  message refused with ``Too many vectors`` (C:131-134).  They stay open across
  reconnections; :class:`ClientModel` counts them for the ``fds`` check.
* Events.  The model's ``Client`` has no event state: a kick on an own vector is read and
  printed (C:293-324) and leaves the view as it was; :class:`ClientModel` predicts the line.
* Events on own vectors beyond the first failure: a file or the shared memory as an own
  vector is read to its end, one notification per 8 bytes, before the failure
  (:func:`~model.server.client_own_vector_eof`); those notifications are not compared.  A
  pipe's write end stays with the harness, so a pipe is readable only after a ``ring``.
* Writes through ``int`` to a file, ``/dev/null`` or the shared memory succeed and leave no
  trace that is compared (they move the file offset); a pipe's read end refuses them.
* A message the client has not read is not in the model: the harness sends one step at a
  time and waits until the client took it (``TIOCOUTQ`` 0 on the server's end).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Any, Literal

from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.contrib import RawDivergence, RawReport, _Diverged, _wait
from ivshmem_model.model.server import (
    CLIENT_CMSG_ROOM,
    client_broadcast_fds,
    client_descriptors,
    client_handle_msg,
    client_read_failed,
    client_read_one_msg,
    client_search_peer,
    client_vector_fd,
    command_int,
)
from ivshmem_model.model.state import Client, FileObject

TIMEOUT = 1.0  # seconds a real effect may take to show
START = 5.0  # seconds the client may take to start and connect
QUIET = 0.02  # seconds to wait for an unexpected failure after a setup message
PROMPT = "cmd> "
SHM_BYTES = 4096
FILE_BYTES = 8
BASE_FDS = 3  # stdin (a pipe), stdout and stderr (the pty)

Kind = Literal["eventfd", "shm", "pipe", "devnull", "file"]
KINDS: tuple[Kind, ...] = ("eventfd", "shm", "pipe", "devnull", "file")
Op = Literal["send", "partial", "half", "close", "ring", "int", "bcast"]
OPS: tuple[Op, ...] = ("send", "partial", "half", "close", "ring", "int", "bcast")
Fate = Literal["running", "reconnects", "retries"]

# The client's debug lines (``-v``) that name a failure, C:48, 109, 132, 212-231, 312.
FAILURE = re.compile(
    r"^(cannot read from server(?: \(\d\))?|receive delete for invalid peer -?\d+"
    r"|Too many vectors received, failing|cannot read message|invalid read size = -?\d+)",
    re.MULTILINE,
)
NOTIFICATION = re.compile(r"^receive notification from peer_id=(-?\d+) vector=(\d+)$",
                          re.MULTILINE)



def spawn_on_pty(program: str, path: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """QEMU's C ivshmem-client on the socket ``path``, verbose, printing to a raw pty (no echo,
    no "\r\n") and reading commands from a pipe: (process, the pty's master, the pipe)."""
    master, slave = os.openpty()
    stdin_r, stdin_w = os.pipe()
    try:
        tty.setraw(slave)
        proc = subprocess.Popen([program, "-v", "-S", path], stdin=stdin_r,
                                stdout=slave, stderr=slave)
    except BaseException:
        for fd in (master, stdin_w):
            os.close(fd)
        raise
    finally:
        os.close(slave)
        os.close(stdin_r)
    return proc, master, stdin_w

@dataclass(frozen=True, slots=True)
class ServerStep:
    op: Op
    value: int = 0  # send, partial: the message's value; int: the peer
    fds: tuple[Kind, ...] = ()  # send: the descriptors attached, all fresh
    vector: int = 0  # int, ring

    def __str__(self) -> str:
        if self.op == "send":
            return f"send({self.value}, {', '.join(self.fds) or '-'})"
        if self.op == "int":
            return f"int({self.value}, {self.vector})"
        if self.op == "ring":
            return f"ring({self.vector})"
        return f"{self.op}({self.value})" if self.op == "partial" else self.op


@dataclass(frozen=True, slots=True)
class ServerTrace:
    steps: tuple[ServerStep, ...]


def setup(own_id: int, vectors: int = 0) -> tuple[ServerStep, ...]:
    """What an honest server sends first: version, id, shared memory, the own vectors."""
    return (ServerStep("send", 0), ServerStep("send", own_id), ServerStep("send", -1, ("shm",)),
            *(ServerStep("send", own_id, ("eventfd",)) for _ in range(vectors)))


def object_of(kind: Kind) -> FileObject:
    """The model's object for a descriptor of ``kind`` as the harness makes it."""
    if kind == "shm":
        return FileObject("shm", 0, SHM_BYTES)
    if kind == "file":
        return FileObject("file", 1, FILE_BYTES)
    return FileObject(kind)


# ---------------------------------------------------------------------------------------------
# The model side


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one step does, as the model predicts it."""

    fate: Fate = "running"
    error: str | None = None
    notified: tuple[tuple[int, int], ...] = ()  # own-vector kicks: (own id, vector)
    missing: int = 0  # "cannot find peer_id"
    invalid: int = 0  # "invalid vector"
    unwritable: int = 0  # "could not write"


@dataclass
class ClientModel:
    """The model's client, its reconnections and the eventfd counters its kicks set.  Labels
    (ints from 0) name the objects the server sent; the client's view holds labels."""

    client: Client = field(default_factory=Client)
    objects: dict[int, FileObject] = field(default_factory=dict)
    leaked: set[int] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)
    connections: int = 1
    retrying: bool = False  # a setup failure: the run ends
    errors: list[str] = field(default_factory=list)  # each failure's text, in order

    def enabled(self, s: ServerStep) -> bool:
        if self.retrying:
            return False
        if s.op == "ring":
            return self.client.stage == 3 and 0 <= s.vector < len(self.client.local)
        return self.client.stage == 3 or s.op not in ("int", "bcast")

    def step(self, s: ServerStep, labels: tuple[int, ...] = ()) -> Outcome:
        """Take an enabled step; ``send`` takes the labels of its fresh objects."""
        if s.op == "send":
            for label, kind in zip(labels, s.fds, strict=True):
                self.objects[label] = object_of(kind)
            fd = client_read_one_msg(labels)
            if len(labels) > 1:
                self.leaked.update(labels[:CLIENT_CMSG_ROOM])
            obj = self.objects[fd] if fd >= 0 else None
            client, error = client_handle_msg(self.client, s.value, fd, obj)
            if error is None:
                self.client = client
                return Outcome()
            return self.fail(error, fd)
        if s.op in ("partial", "half", "close"):
            return self.fail(client_read_failed(self.client), -1)
        if s.op == "bcast":
            return self.kick(client_broadcast_fds(self.client))
        if s.op == "ring":  # an eventfd or a pipe (others failed the client already)
            return Outcome(notified=((self.client.id, s.vector),))
        if client_search_peer(self.client, command_int(s.value)) is None:
            return Outcome(missing=1)
        d = client_vector_fd(self.client, s.value, s.vector)
        return Outcome(invalid=1) if d is None else self.kick((d,))

    def fail(self, error: str, fd: int) -> Outcome:
        self.errors.append(error)
        stage = self.client.stage
        if fd >= 0 and (stage < 2 or error.startswith("Too many")):
            self.leaked.add(fd)  # C:210-221, C:131-134
        if stage < 3:
            self.retrying = True
            return Outcome("retries", error)
        self.client = Client()
        self.connections += 1
        return Outcome("reconnects", error)

    def kick(self, targets: tuple[int, ...]) -> Outcome:
        notified: list[tuple[int, int]] = []
        unwritable = 0
        for d in targets:
            kind = self.objects[d].kind
            if kind == "pipe":
                unwritable += 1
            elif kind == "eventfd" and d in self.client.local:
                notified.append((self.client.id, self.client.local.index(d)))
            elif kind == "eventfd":
                self.counts[d] = self.counts.get(d, 0) + 1
        return Outcome(notified=tuple(notified), unwritable=unwritable)

    def held(self) -> int:
        """Descriptors the client holds beyond stdio: socket, view, leaks."""
        socket_fd = 0 if self.retrying else 1
        return socket_fd + len(client_descriptors(self.client)) + len(self.leaked)


# ---------------------------------------------------------------------------------------------
# The real side


Ident = tuple[Any, ...]


def ident(pid: int | str, fd: int) -> Ident:
    """Which kernel object ``/proc/PID/fd/FD`` is: eventfds by id, the rest by inode."""
    path = f"/proc/{pid}/fd/{fd}"
    try:
        if os.readlink(path) == "anon_inode:[eventfd]":
            return ("eventfd", wire.eventfd_field(fd, "eventfd-id", pid))
        st = os.stat(path)
    except OSError:
        return ("closed", fd)
    return ("inode", st.st_dev, st.st_ino)


def _outq(sock: socket.socket) -> int:
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    value: int = struct.unpack("i", buf)[0]
    return value


class RealClient:
    """The C client on a socket in ``directory``, its stdout and stderr on a pty that a thread
    reads, its stdin a pipe; and the server's end: the listener and the current connection."""

    def __init__(self, program: str, directory: str) -> None:
        self.path = os.path.join(directory, "sock")
        self.directory = directory
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.conn: socket.socket | None = None
        self.held: dict[int, int] = {}  # label -> the harness's copy
        self.writers: dict[int, int] = {}  # label -> the write end of a pipe sent
        self.idents: dict[int, Ident] = {}
        self._text = ""
        self._lock = threading.Lock()
        try:
            self.proc, self.master, self.stdin = spawn_on_pty(program, self.path)
        except BaseException:
            self.listener.close()
            raise
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._text += data.decode(errors="replace")

    def text(self, since: int = 0) -> str:
        with self._lock:
            return self._text[since:]

    def mark(self) -> int:
        with self._lock:
            return len(self._text)

    def accept(self, timeout: float = TIMEOUT) -> bool:
        self.listener.settimeout(timeout)
        try:
            self.conn, _addr = self.listener.accept()
        except OSError:
            return False
        return True

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def new_object(self, label: int, kind: Kind) -> int:
        if kind == "eventfd":
            fd = wire.new_eventfd()
        elif kind == "shm":
            fd = wire.shm_memfd()
            os.ftruncate(fd, SHM_BYTES)
        elif kind == "pipe":
            fd, self.writers[label] = os.pipe()
        elif kind == "devnull":
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        else:
            fd, path = tempfile.mkstemp(prefix="file.", dir=self.directory)
            os.unlink(path)
            os.write(fd, b"\1" * FILE_BYTES)
            os.lseek(fd, 0, os.SEEK_SET)
        self.held[label] = fd
        self.idents[label] = ident("self", fd)
        return fd

    def send(self, value: int, labels: tuple[int, ...]) -> bool:
        """One whole message with its descriptors; False when the client has gone."""
        assert self.conn is not None
        fds = tuple(self.held[label] for label in labels)
        try:
            wire.send_msg(self.conn, value, fds[0] if fds else None, fds[1:])
        except OSError:
            return False
        return _wait(lambda: self.conn is None or _outq(self.conn) == 0)

    def partial(self, value: int) -> bool:
        assert self.conn is not None
        try:
            self.conn.send(wire.MSG.pack(value)[:4], socket.MSG_NOSIGNAL)
        except OSError:
            return False
        return True

    def command(self, line: str) -> str | None:
        """Write a stdin command; its output up to the prompt, ``None`` when none came."""
        start = self.mark()
        os.write(self.stdin, line.encode() + b"\n")
        if not _wait(lambda: PROMPT in self.text(start)):
            return None
        return self.text(start)

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return -1

    def ring(self, label: int) -> None:
        """Kick the object ``label`` as a peer would: 8 bytes into an eventfd or a pipe."""
        wire.kick(self.writers.get(label, self.held[label]))

    def eventfd_count(self, label: int) -> int:
        return wire.eventfd_field(self.held[label], "eventfd-count") or 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(TIMEOUT)
        self.drop()
        self.listener.close()
        for fd in (self.master, self.stdin, *self.held.values(), *self.writers.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.held.clear()
        self.writers.clear()


@dataclass(frozen=True, slots=True)
class Dump:
    """What ``dump`` printed (C:423-445): own id, own vectors' fds, peers with theirs."""

    id: int
    local: tuple[int, ...]
    peers: tuple[tuple[int, tuple[int, ...]], ...]


def parse_dump(text: str) -> Dump | None:
    start = text.rfind("our_id = ")
    if start < 0:
        return None
    own: int | None = None
    local: list[int] = []
    peers: list[tuple[int, list[int]]] = []
    for line in text[start:].splitlines():
        if line.startswith("our_id = "):
            own = int(line.split()[-1])
        elif line.startswith("peer_id = "):
            peers.append((int(line.split()[-1]), []))
        elif match := re.match(r"^  vector \d+ is enabled \(fd=(\d+)\)$", line):
            (peers[-1][1] if peers else local).append(int(match[1]))
        elif line.startswith(PROMPT):
            break
    assert own is not None
    return Dump(own, tuple(local), tuple((p, tuple(v)) for p, v in peers))


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _ClientRun:
    model: ClientModel
    real: RealClient
    index: int = 0
    what: str = ""
    checks: int = 0
    messages: int = 0
    next_label: int = 0

    def same(self, check: str, detail: str, model: Any, real: Any) -> None:
        self.checks += 1
        if model != real:
            raise _Diverged(RawDivergence(self.index, self.what, check, detail, model, real))

    def real_step(self, s: ServerStep, labels: tuple[int, ...]) -> str | None:
        """Take the step on the real side; the command's output for ``int``/``bcast``, ""
        for ``ring``."""
        real = self.real
        if s.op == "send":
            for label, kind in zip(labels, s.fds, strict=True):
                real.new_object(label, kind)
            self.messages += 1
            self.same("fate", "the client takes the message", True, real.send(s.value, labels))
        elif s.op == "partial":
            self.same("fate", "the client's socket is open", True, real.partial(s.value))
        elif s.op == "half":
            assert real.conn is not None
            real.conn.shutdown(socket.SHUT_WR)
        elif s.op == "close":
            real.drop()
        elif s.op == "ring":
            real.ring(self.model.client.local[s.vector])
            return ""
        else:
            line = "int all" if s.op == "bcast" else f"int {s.value} {s.vector}"
            out = real.command(line)
            self.same("fate", f"the client answers {line!r}", True, out is not None)
            return out
        return None

    def real_fate(self, since: int, expected: Outcome) -> Fate | str:
        """Wait for what ``expected`` says, then read what the client did."""
        real = self.real
        marker: dict[Fate, str] = {"retries": "cannot connect to server, retry in 1 second",
                                   "reconnects": "close client\n"}
        if expected.fate != "running":
            _wait(lambda: marker[expected.fate] in real.text(since) or
                  real.proc.poll() is not None)
        elif self.model.client.stage < 3:
            sign = ("", "", "our_id=", "listen on server socket")[self.model.client.stage]
            _wait(lambda: sign in real.text(since) or real.proc.poll() is not None)
            time.sleep(QUIET)
        code = real.proc.poll()
        if code is not None:
            return f"exited {code}" if code >= 0 else f"killed by signal {-code}"
        text = real.text(since)
        for fate, sign in marker.items():
            if sign in text:
                return fate
        return "running"

    def compare(self, since: int, expected: Outcome, out: str | None) -> None:
        """Steps 1-6 of the module docstring."""
        real, model = self.real, self.model
        dump: str | None = None
        if expected.fate == "running" and model.client.stage == 3:
            dump = real.command("dump")  # None: the client is not reading its stdin
        fate = self.real_fate(since, expected)
        self.same("fate", "the client's fate", expected.fate, fate)
        failures = FAILURE.findall(real.text(since))
        self.same("error", "the failure the client printed (its last such line)",
                  expected.error, failures[-1] if failures else None)
        if fate == "reconnects":
            real.drop()
            self.same("fate", "the client connects again", True, real.accept())
        if dump is not None:
            self.compare_state(dump)
        self.same("fds", "the client's /proc/PID/fd", BASE_FDS + model.held(), real.fds())
        if out is not None:
            self.compare_kicks(since, expected)

    def compare_state(self, dump_text: str) -> None:
        model, real = self.model.client, self.real
        pid = real.proc.pid
        dump = parse_dump(dump_text)
        assert dump is not None
        names = real.idents
        expected = (model.id, tuple(names[d] for d in model.local),
                    tuple((p.id, tuple(names[d] for d in p.vectors)) for p in model.peers))
        got = (dump.id, tuple(ident(pid, d) for d in dump.local),
               tuple((p, tuple(ident(pid, d) for d in v)) for p, v in dump.peers))
        self.same("state", "own id, own vectors, peers and their vectors (as objects)",
                  expected, got)
        shm_fd = int(re.findall(r"^shm_fd=(\d+)$", real.text(), re.MULTILINE)[-1])
        self.same("shm", "the shared memory the client keeps (shm_fd=N of this connection)",
                  names[model.shm_fd], ident(pid, shm_fd))

    def compare_kicks(self, since: int, expected: Outcome) -> None:
        real = self.real

        def notified() -> list[tuple[int, int]]:
            found = NOTIFICATION.findall(real.text(since))
            return [(int(p), int(v)) for p, v in found]

        _wait(lambda: len(notified()) >= len(expected.notified))
        time.sleep(QUIET)  # a kick the model did not predict is read in a later select round
        eventfds = [d for d, o in self.model.objects.items() if o.kind == "eventfd"]
        self.same("kicks", "every eventfd's counter", {d: self.model.counts.get(d, 0)
                                                       for d in eventfds},
                  {d: real.eventfd_count(d) for d in eventfds})
        text = real.text(since)
        self.same("kicks", "own-vector notifications, missing peers, invalid vectors, "
                  "failed writes",
                  (list(expected.notified), expected.missing, expected.invalid,
                   expected.unwritable),
                  (notified(), text.count("cannot find peer_id = "),
                   text.count("invalid vector "), text.count("could not write to ")))

    def step(self, s: ServerStep) -> None:
        model = self.model
        labels: tuple[int, ...] = ()
        if s.op == "send":
            labels = tuple(range(self.next_label, self.next_label + len(s.fds)))
            self.next_label += len(s.fds)
        since = self.real.mark()
        out = self.real_step(s, labels)
        self.compare(since, model.step(s, labels), out)


def run_client_lockstep(trace: ServerTrace, program: str,
                        model: ClientModel | None = None) -> RawReport:
    """Run ``trace`` as the server of ``program`` (QEMU's C ``ivshmem-client``) and through the
    model; the report names the first divergence.  ``model`` lets a test plant a fault."""
    if model is None:
        model = ClientModel()
    with tempfile.TemporaryDirectory(prefix="ivshmem-client-") as directory:
        real = RealClient(program, directory)
        run = _ClientRun(model, real)
        try:
            run.what = "start"
            run.same("fate", "the client connects", True, real.accept(START))
            run.same("fate", "the client prints its prompt", True,
                     _wait(lambda: PROMPT in real.text()))
            for index, s in enumerate(trace.steps):
                run.index, run.what = index, str(s)
                if not model.enabled(s):
                    if model.retrying:
                        break
                    continue
                run.step(s)
        except _Diverged as diverged:
            return RawReport(len(trace.steps), run.messages, run.checks, diverged.divergence)
        finally:
            real.close()
    return RawReport(len(trace.steps), run.messages, run.checks)


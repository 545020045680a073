"""The socket between the server and one endpoint, holding messages until the trace delivers them.

In the model an endpoint's channel is a FIFO that ``realize`` and ``deliver`` pop from (design
§2).  A real QEMU reads its chardev whenever the socket is readable, so the backend puts this
channel in between: QEMU's chardev connects to :attr:`Channel.path`, the server's messages are
queued here (from the contrib server's socket, or injected by ``server_send``), and only
``forward_setup`` (realize) and ``forward_one`` (deliver) pass them on, each waiting until QEMU
has read the bytes (``TIOCOUTQ`` is 0) so the caller's next qtest round trip sees the handler's
effect.  ``forward_part`` (deliver with ``bytes``) writes only the first bytes of the next
message, its descriptors with them; the next ``forward`` writes the rest.

Doorbells between endpoints are held the same way.  With the contrib server, a peer's eventfd
reaches another endpoint as a *stand-in* eventfd of ours (``Standin``); a doorbell QEMU rings
lands there, and ``handle_irq`` moves it into the owner's real eventfd, so the owner's handler
runs in the step the trace says, not whenever the owner's main loop gets to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import termios
import time
from collections import deque
from dataclasses import dataclass

from ivshmem_model.model.executor import wire

FORWARD_TIMEOUT = 3.0
QUIET = 0.03  # seconds without a new message after which the server is taken to be done


@dataclass
class Queued:
    value: int
    fd: int | None  # ours until forwarded
    kind: str | None  # the model's fd kind: "eventfd", "shm", or another kind's name
    extra: tuple[int, ...] = ()  # more fds in the same message (ours until forwarded)


@dataclass
class Standin:
    """An eventfd of ours that an endpoint holds for ``(peer, vector)``."""

    fd: int
    peer: int
    vector: int


class Channel:
    def __init__(self, workdir: str, name: int | str, standins: bool) -> None:
        self.path = os.path.join(workdir, f"e{name}.chardev")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.upstream: socket.socket | None = None  # to the contrib server
        self.qemu: socket.socket | None = None
        self.queue: deque[Queued] = deque()
        self.connected = False
        self.server_closed = False
        self.use_standins = standins
        self.received = 0  # messages the server sent this endpoint so far
        self.own_id: int | None = None
        self.own_eventfds: list[int] = []  # dups of the endpoint's own eventfds, by vector
        self.peer_fds_seen: dict[int, int] = {}
        self.standins: list[Standin] = []
        # what QEMU was handed, as the device files it: peer id -> our copies of the fds of
        # its vectors 0, 1, ... (a message without fd for that peer, a disconnect, clears it)
        self.delivered: dict[int, list[int]] = {}
        self.forwarded = 0  # messages passed to QEMU (the first two: version and ID)
        self.head_sent = 0  # bytes of the next queued message already written (its fds too)

    # -- the server side -------------------------------------------------------------------------

    def connect_upstream(self, server_path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(server_path)
        self.upstream = sock

    def pump(self) -> list[tuple[int, str | None]]:
        """Queue what the contrib server sent; returns (value, kind) for each message."""
        sock = self.upstream
        got: list[tuple[int, str | None]] = []
        while sock is not None and select.select([sock], [], [], QUIET)[0]:
            try:
                message = wire.recv_msg(sock)
            except (wire.WireError, OSError):
                self.server_closed = True
                sock.close()
                self.upstream = sock = None
                break
            kind = None if message.fd is None else model_fd_kind(message.fd)
            self.enqueue(message.value, message.fd, kind)
            got.append((message.value, kind))
        return got

    def enqueue(self, value: int, fd: int | None, kind: str | None,
                extra: tuple[int, ...] = ()) -> None:
        """One message from the server, in the order it was sent."""
        if self.received == 1 and fd is None:
            self.own_id = value
        self.received += 1
        if fd is not None and value >= 0 and value == self.own_id:
            # the own vectors, in order, whatever a hostile server sent as their "eventfd"
            self.own_eventfds.append(os.dup(fd))
        elif fd is not None and kind == "eventfd" and value >= 0:
            if self.use_standins:
                vector = self.peer_fds_seen.get(value, 0)
                self.peer_fds_seen[value] = vector + 1
                standin = wire.new_eventfd()
                self.standins.append(Standin(standin, value, vector))
                os.close(fd)
                fd = os.dup(standin)  # forward closes what it sends; the standin stays ours
        elif fd is None and value >= 0 and value != self.own_id and self.received > 2:
            self.peer_fds_seen.pop(value, None)  # a disconnect: its next fds start at vector 0
        self.queue.append(Queued(value, fd, kind, extra))

    def close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- the QEMU side ---------------------------------------------------------------------------

    def accept_qemu(self, timeout: float) -> bool:
        if self.qemu is not None:
            return True
        if not select.select([self.listener], [], [], timeout)[0]:
            return False
        self.qemu, _addr = self.listener.accept()
        return True

    def setup_count(self) -> int:
        """How many queued messages realize reads: up to the first shared-memory message
        (seed 678-746 stops there), or all of them."""
        for index, queued in enumerate(self.queue):
            if queued.value == -1:
                return index + 1
        return len(self.queue)

    def forward(self, count: int) -> None:
        """Pass ``count`` queued messages to QEMU; then end the stream if the server is gone
        and nothing is left."""
        sock = self.qemu
        if sock is None:
            return
        for _ in range(min(count, len(self.queue))):
            queued = self.queue.popleft()
            self._file(queued)
            if self.head_sent:  # its first bytes and its fds went out already
                with contextlib.suppress(OSError):
                    sock.sendall(wire.MSG.pack(queued.value)[self.head_sent:])
                self.head_sent = 0
                self._close_fds(queued)
                continue
            with contextlib.suppress(OSError):
                wire.send_msg(sock, queued.value, queued.fd, queued.extra)
            self._close_fds(queued)
        if self.server_closed and not self.queue:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    def forward_part(self, size: int) -> bool:
        """Write ``size`` more bytes of the next message (with its fds if they are the first),
        leaving at least one byte of it unsent; False if that is not possible."""
        sock = self.qemu
        if sock is None or not self.queue or self.head_sent + size >= wire.MSG.size:
            return False
        queued = self.queue[0]
        data = wire.MSG.pack(queued.value)[self.head_sent:self.head_sent + size]
        with contextlib.suppress(OSError):
            if self.head_sent:
                sock.sendall(data)
            else:
                sent = wire.send_some(sock, data, queued.fd, queued.extra)
                if sent < size:
                    sock.sendall(data[sent:])
        self.head_sent += size  # our copies of its fds stay open until the message is filed
        return True

    @staticmethod
    def _close_fds(queued: Queued) -> None:
        """Our copies of a message's fds, once QEMU has been sent them."""
        for fd in (queued.fd, *queued.extra):
            if fd is not None:
                os.close(fd)

    def _file(self, queued: Queued) -> None:
        """Keep a copy of a peer fd QEMU is being handed, where the device will file it."""
        self.forwarded += 1
        if self.forwarded <= 2 or queued.value < 0:
            return
        if queued.fd is not None:
            self.delivered.setdefault(queued.value, []).append(os.dup(queued.fd))
        else:
            for fd in self.delivered.pop(queued.value, []):
                os.close(fd)

    def pending_rings(self, peer: int, vector: int) -> int:
        """Doorbells this endpoint rang to ``(peer, vector)`` not yet moved (a peek)."""
        return sum(wire.eventfd_count(s.fd) for s in self.standins
                   if s.peer == peer and s.vector == vector)

    def wait_read(self, alive: object = None) -> bool:
        """Until QEMU has read every byte sent (``TIOCOUTQ`` 0); False on timeout."""
        sock = self.qemu
        if sock is None:
            return True
        deadline = time.monotonic() + FORWARD_TIMEOUT
        while time.monotonic() < deadline:
            try:
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
            except OSError:
                return True
            if struct.unpack("i", raw)[0] == 0:
                return True
            time.sleep(0.002)
        return False

    # -- doorbells ---------------------------------------------------------------------------

    def take_rings(self, peer: int, vector: int) -> int:
        """Doorbells this endpoint rang to ``(peer, vector)`` since the last call."""
        total = 0
        for standin in self.standins:
            if standin.peer == peer and standin.vector == vector:
                total += wire.read_kick(standin.fd)
        return total

    def forget_peer(self, peer: int) -> None:
        keep = []
        for standin in self.standins:
            if standin.peer == peer:
                os.close(standin.fd)
            else:
                keep.append(standin)
        self.standins = keep

    def close(self) -> None:
        for fd in [*self.own_eventfds, *(s.fd for s in self.standins),
                   *(q.fd for q in self.queue if q.fd is not None),
                   *(fd for q in self.queue for fd in q.extra)]:
            with contextlib.suppress(OSError):
                os.close(fd)
        for fds in self.delivered.values():
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.delivered.clear()
        self.own_eventfds, self.standins = [], []
        self.queue.clear()
        for sock in (self.upstream, self.qemu, self.listener):
            if sock is not None:
                sock.close()
        self.upstream = self.qemu = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def model_fd_kind(fd: int) -> str:
    """The model's name for what an fd is: ``eventfd``, ``shm`` (memory or a file), or the
    kind ``/proc`` shows."""
    kind = wire.fd_kind(fd)
    return "shm" if kind in ("memfd", "file") else kind

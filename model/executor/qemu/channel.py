"""The socket between the server and one endpoint, holding messages until the trace delivers them.

In the model an endpoint's channel is a FIFO that ``realize`` and ``deliver`` pop from (design
§2).  A real QEMU reads its chardev whenever the socket is readable, so the backend puts this
channel in between: QEMU's chardev connects to :attr:`Channel.path`, the server's messages are
queued here (from the contrib server's socket, or injected by ``server_send``), and only
``forward`` passes them on, as many bytes as realize or deliver reads, waiting until QEMU has
read them (``TIOCOUTQ`` is 0) so the caller's next qtest round trip sees the handler's effect.
A message may go in parts (deliver with ``bytes``), its descriptors with the first; the stream
goes on where QEMU's chardev stands, so a device realized after one unplugged holding part of
a message reads from mid-message, as the chardev does (``model.chardev``).

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
        self.shm_copy: int | None = None  # the first shared memory passed on (migration.py)
        self.head_sent = 0  # bytes of the next queued message already written (its fds too)
        self.fill = 0  # bytes the device on the chardev holds of its next 8 (msg_buffered_bytes)

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

    def pending(self) -> int:
        """The bytes queued and not yet written to QEMU."""
        return wire.MSG.size * len(self.queue) - self.head_sent

    def setup_bytes(self) -> int:
        """How many bytes realize reads: 8 at a time from where QEMU's chardev stands (mid-
        message after a torn one: ``model.chardev``) up to the first 8 that read -1, the
        shared memory (seed 678-746 stops there), or all that are queued."""
        stream = b"".join(wire.MSG.pack(q.value) for q in self.queue)[self.head_sent:]
        for end in range(wire.MSG.size, len(stream) + 1, wire.MSG.size):
            if wire.MSG.unpack(stream[end - wire.MSG.size:end])[0] == -1:
                return end
        return len(stream)

    def forward(self, size: int) -> bool:
        """Write the next ``size`` queued bytes to QEMU, each message's part in one
        ``sendmsg`` as the server writes it, its fds with its first byte; then end the stream
        if the server is gone and nothing is left.  False, writing nothing, if fewer bytes
        are queued."""
        sock = self.qemu
        if sock is None or size > self.pending():
            return False
        while size:
            queued = self.queue[0]
            take = min(size, wire.MSG.size - self.head_sent)
            data = wire.MSG.pack(queued.value)[self.head_sent:self.head_sent + take]
            with contextlib.suppress(OSError):
                if self.head_sent:  # its fds went out with its first bytes
                    sock.sendall(data)
                else:
                    sent = wire.send_some(sock, data, queued.fd, queued.extra)
                    if sent < take:
                        sock.sendall(data[sent:])
            self.head_sent += take
            size -= take
            if self.head_sent == wire.MSG.size:  # our copies of its fds stay open until filed
                self.queue.popleft()
                self._file(queued)
                self._close_fds(queued)
                self.head_sent = 0
        if self.server_closed and not self.queue:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
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
        if queued.value == -1 and queued.fd is not None and self.shm_copy is None:
            self.shm_copy = os.dup(queued.fd)  # what a migration destination is handed
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
            # only a set counter is read: QEMU's chardev makes a received fd blocking
            # (char-socket.c tcp_chr_recv), and a stand-in it holds is the same file
            if standin.peer == peer and standin.vector == vector and \
                    wire.eventfd_count(standin.fd):
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
                   *([] if self.shm_copy is None else [self.shm_copy]),
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

"""A client with the contrib ivshmem-client's behaviour (facts §4), usable as a library.

``connect`` reads version, id and shared memory strictly (C:179-244); afterwards a message
without fd deletes a peer, one with fd adds a peer or its next vector, own-id fds fill
``local`` (``ivshmem_client_handle_server_msg``, C:91-141).  Notifications write the 8-byte 1
to a peer's eventfd (C:346-402).  Errors carry the contrib client's texts.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from ivshmem_model.model.executor import wire

MAX_VECTORS = 64  # client.h:30, IVSHMEM_CLIENT_MAX_VECTORS
DEFAULT_TIMEOUT = 5.0  # seconds a started message may take to complete

Log = Callable[[str], None]


class ClientError(Exception):
    """A protocol or I/O failure, with the contrib client's text."""


@dataclass(slots=True)
class PeerInfo:
    """``IvshmemClientPeer`` (client.h:43-48): an id and its vector fds in arrival order."""

    id: int
    vectors: list[int] = field(default_factory=list)


class Client:
    """One connection to an ivshmem server.  ``poll`` handles server messages and own
    vector events; ``notify*`` ring other peers."""

    def __init__(self, socket_path: str, log: Log | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.shm_fd = -1
        self.local = PeerInfo(-1)
        self.peers: list[PeerInfo] = []
        self._log = log or (lambda _text: None)

    @property
    def our_id(self) -> int:
        return self.local.id

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- connection (C:179-244) ------------------------------------------------------------

    def connect(self) -> None:
        """Connect and read the three setup messages; ``ClientError`` on any deviation."""
        self._log(f"connect to client {self.socket_path}")
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as err:
            raise ClientError(f"cannot create socket: {err.strerror}") from None
        sock.settimeout(self.timeout)
        try:
            self._connect(sock)
            self.sock = sock
            version = self._read("cannot read from server")
            if version.value != wire.PROTOCOL_VERSION or version.fd is not None:
                _close_fd(version.fd)
                raise ClientError("cannot read from server")
            own = self._read("cannot read from server (2)")
            if own.value < 0 or own.fd is not None:
                _close_fd(own.fd)
                raise ClientError("cannot read from server (2)")
            self.local.id = own.value
            self._log(f"our_id={own.value}")
            shm = self._read("cannot read from server (3)")
            if shm.value != -1 or shm.fd is None:
                _close_fd(shm.fd)
                raise ClientError("cannot read from server (3)")
            self.shm_fd = shm.fd
            self._log(f"shm_fd={shm.fd}")
        except BaseException:
            self.close()
            sock.close()
            raise

    def _connect(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                sock.connect(self.socket_path)
                return
            except BlockingIOError:  # a full backlog: wait for the server to accept
                if time.monotonic() < deadline:
                    time.sleep(0.001)
                    continue
                reason = os.strerror(errno.EAGAIN)
            except OSError as err:
                reason = err.strerror or str(err)
            raise ClientError(f"cannot connect to {self.socket_path}: {reason}")

    def _read(self, text: str) -> wire.Message:
        assert self.sock is not None
        try:
            return wire.recv_msg(self.sock)
        except (OSError, wire.WireError) as err:
            self._log(f"cannot read message: {err}")
            raise ClientError(text) from None

    def close(self) -> None:
        """Close the socket, the shared memory and every vector fd (C:247-270)."""
        if self.sock is not None:
            self._log("close client")
            self.sock.close()
            self.sock = None
        _close_fd(self.shm_fd if self.shm_fd >= 0 else None)
        self.shm_fd = -1
        for peer in self.peers:
            _close_all(peer.vectors)
        self.peers = []
        _close_all(self.local.vectors)
        self.local = PeerInfo(-1)

    # -- server messages (C:91-141) --------------------------------------------------------

    def search_peer(self, peer_id: int) -> PeerInfo | None:
        """The peer with that id; our own id gives ``local`` (C:405-420)."""
        if peer_id == self.local.id:
            return self.local
        return next((p for p in self.peers if p.id == peer_id), None)

    def handle_server_msg(self) -> None:
        """Read and apply one message; ``ClientError`` if the server went away or lied."""
        msg = self._read("ivshmem_client_handle_server_msg() failed")
        peer = self.search_peer(msg.value)
        if msg.fd is None:
            if peer is None or peer is self.local:
                raise ClientError(f"receive delete for invalid peer {msg.value}")
            self._log(f"delete peer id = {msg.value}")
            self.peers.remove(peer)
            _close_all(peer.vectors)
            return
        if peer is None:
            peer = PeerInfo(msg.value)
            self.peers.append(peer)
            self._log(f"new peer id = {msg.value}")
        self._log(f"  new vector {len(peer.vectors)} (fd={msg.fd}) for peer id {msg.value}")
        if len(peer.vectors) >= MAX_VECTORS:
            os.close(msg.fd)  # C:132-135 leaks it
            raise ClientError("Too many vectors received, failing")
        peer.vectors.append(msg.fd)

    def poll(self, timeout: float | None = 0.0) -> list[tuple[int, int]]:
        """Wait up to ``timeout`` for anything, then handle every ready server message and
        own-vector event.  Returns the events as ``(vector, counter)`` pairs."""
        if self.sock is None:
            raise ClientError("not connected")
        watched = [self.sock.fileno(), *self.local.vectors]
        ready = readable(watched, timeout)
        events: list[tuple[int, int]] = []
        for fd in ready:
            if self.sock is not None and fd == self.sock.fileno():
                self._handle_pending()
            elif fd in self.local.vectors:
                vector = self.local.vectors.index(fd)
                value = self._read_event(fd, vector)
                if value:
                    self._log(f"received event on fd {fd} vector {vector}: {value}")
                    events.append((vector, value))
        return events

    def _read_event(self, fd: int, vector: int) -> int:
        """One own-vector counter (C:293-325).  Whatever the server sent as the vector's fd
        is read as the contrib client reads it: 8 bytes, else the read fails (a pipe at end
        of file, /dev/null, an empty or exhausted file), and that ends the connection as
        ``ivshmem_client_handle_fds`` does in CM:165-167."""
        try:
            return wire.read_kick(fd)
        except OSError as err:
            try:
                kind = wire.fd_kind(fd)
            except OSError:
                kind = "closed descriptor"
            self._log(f"{err.strerror or err} on fd {fd}")
            raise ClientError(f"ivshmem_client_handle_event() failed: own vector {vector} "
                              f"(fd {fd}) is a {kind}, not an eventfd: "
                              f"{err.strerror or err}") from None

    def _handle_pending(self) -> None:
        assert self.sock is not None
        while True:
            self.handle_server_msg()
            if self.sock is None or not readable([self.sock.fileno()], 0):
                return

    def wait_until(self, predicate: Callable[[Client], bool], timeout: float) -> bool:
        """Handle messages until ``predicate(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.05))
        return True

    def wait_event(self, timeout: float) -> list[tuple[int, int]]:
        """Handle messages until at least one own-vector event arrives; [] on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            events = self.poll(left)
            if events:
                return events

    def settle(self, quiet: float = 0.05, timeout: float = 2.0) -> None:
        """Handle messages until the socket has been quiet for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while self.sock is not None and time.monotonic() < deadline:
            if not readable([self.sock.fileno()], quiet):
                return
            self._handle_pending()

    # -- notifications (C:346-402) ---------------------------------------------------------

    def notify(self, peer_id: int, vector: int) -> None:
        """Ring ``vector`` of a peer (our own id is allowed, as in CM:105-112)."""
        peer = self.search_peer(peer_id)
        if peer is None:
            raise ClientError(f"cannot find peer_id = {peer_id}")
        if not 0 <= vector < len(peer.vectors):
            raise ClientError(f"invalid vector {vector} on peer {peer_id}")
        fd = peer.vectors[vector]
        self._log(f"notify peer {peer_id} on vector {vector}, fd {fd}")
        try:
            wire.kick(fd)
        except OSError as err:
            raise ClientError(f"could not write to {fd}: {err.strerror}") from None

    def notify_all_vectors(self, peer_id: int) -> None:
        """Ring every vector of a peer (C:372-386)."""
        peer = self.search_peer(peer_id)
        if peer is None:
            raise ClientError(f"cannot find peer_id = {peer_id}")
        for vector in range(len(peer.vectors)):
            self.notify(peer_id, vector)

    def notify_broadcast(self) -> None:
        """Ring every vector of every other peer (C:389-402)."""
        for peer in list(self.peers):
            self.notify_all_vectors(peer.id)

    # -- inspection ------------------------------------------------------------------------

    def dump(self) -> str:
        """Our id and vectors, then each peer's, as ``ivshmem_client_dump`` prints them."""
        lines = [f"our_id = {self.local.id}"]
        lines += _vector_lines(self.local)
        for peer in self.peers:
            lines.append(f"peer_id = {peer.id}")
            lines += _vector_lines(peer)
        return "\n".join(lines) + "\n"

    def map_shm(self) -> mmap.mmap:
        """The shared memory, mapped read-write."""
        if self.shm_fd < 0:
            raise ClientError("not connected")
        return wire.map_shm(self.shm_fd)


def readable(fds: list[int], timeout: float | None) -> list[int]:
    """The fds of ``fds`` that are readable (or hung up) within ``timeout`` seconds (``None``:
    no limit).  ``poll(2)``, not ``select``: a client given many descriptors by its server
    has fd numbers beyond select's 1,024."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    wait = None if timeout is None else max(0, math.ceil(timeout * 1000))
    while True:
        try:
            return [fd for fd, _mask in poller.poll(wait)]
        except InterruptedError:  # pragma: no cover - PEP 475 retries poll itself
            continue


def _vector_lines(peer: PeerInfo) -> list[str]:
    return [f"  vector {i} is enabled (fd={fd})" for i, fd in enumerate(peer.vectors)]


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()

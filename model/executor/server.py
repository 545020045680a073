"""An ivshmem server on real sockets with the contrib server's policy (facts §2.2-2.6).

Same messages in the same order as ``ivshmem_server_handle_new_conn`` (S:131-223), same id
policy (S:160-172), same disconnect handling (``ivshmem_server_free_peer``, S:74-94) and
shutdown (``ivshmem_server_close``, S:362-379 and its 2019 ``shm_unlink``).  Unlike the
contrib server, trouble with one client never stops the server: a failed accept, a client
gone before its setup, EPIPE, a client that sends data (any readability is a disconnect,
S:416-422) only affect that client.  A client whose socket is full gets its messages queued
(the fds dup'ed until sent) instead of losing them; one that stops reading for
``MAX_QUEUED`` messages is dropped like a disconnect.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from model.executor import wire

DEFAULT_SOCKET_PATH = "/tmp/ivshmem_socket"  # M:18
DEFAULT_SHM_NAME = "ivshmem"  # M:19
DEFAULT_SHM_SIZE = 4 * 1024 * 1024  # M:20
MAX_VECTORS = 64  # H:38, IVSHMEM_SERVER_MAX_VECTORS
LISTEN_BACKLOG = 10  # S:29
MAX_QUEUED = 8192  # messages waiting for one slow client before it is dropped
_SUN_PATH_MAX = 108
_ACCEPT_PAUSE = 0.05  # seconds without accepting after EMFILE and friends

ShmKind = Literal["posix", "dir", "memfd"]
Log = Callable[[str], None]


class ServerError(Exception):
    """Start-up failed; the text is the contrib server's stderr line (S:289-359)."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """``shm_kind`` ``posix``: ``shm_path`` is a POSIX name (-M); ``dir``: a directory (-m);
    ``memfd``: an anonymous memfd (library use; the contrib server cannot)."""

    socket_path: str = DEFAULT_SOCKET_PATH
    shm_path: str = DEFAULT_SHM_NAME
    shm_kind: ShmKind = "posix"
    shm_size: int = DEFAULT_SHM_SIZE
    vectors: int = 1


class _Pending:
    __slots__ = ("data", "fd")

    def __init__(self, data: bytes, fd: int | None) -> None:
        self.data = data
        self.fd = fd  # a dup owned by the queue


@dataclass(eq=False, slots=True)
class Peer:
    """A connected client (``IvshmemServerPeer``, H:40-46) with its outgoing queue."""

    id: int
    sock: socket.socket
    vectors: list[int]
    queue: deque[_Pending] = field(default_factory=deque)
    dead: bool = False


class Server:
    """``start()``, then ``serve()`` until ``stop()`` (thread- and signal-safe), then
    ``close()``.  ``log`` receives the contrib server's verbose lines."""

    def __init__(self, options: ServerOptions, log: Log | None = None) -> None:
        self.options = options
        self.peers: list[Peer] = []
        self.shm_fd = -1
        self.shm_size = 0
        self._log = log or (lambda _text: None)
        self._by_id: dict[int, Peer] = {}
        self._cur_id = 0  # uint16_t cur_id, H:73
        self._listen: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel: selectors.BaseSelector | None = None
        self._quit = False
        self._accept_paused_until = 0.0
        self._closed = False

    # -- start-up (S:289-359) -------------------------------------------------------------

    def start(self) -> None:
        """Open and size the shared memory, bind and listen; ``ServerError`` on failure."""
        opts = self.options
        if not 0 <= opts.vectors <= MAX_VECTORS:  # M:129-134
            raise ServerError(f"too many requested vectors (max is {MAX_VECTORS})")
        label = opts.shm_path
        if opts.shm_kind == "dir":
            label = os.path.join(opts.shm_path, "ivshmem.XXXXXX")  # S:301
        try:
            if opts.shm_kind == "posix":
                self._log(f"Using POSIX shared memory: {opts.shm_path}")
                self.shm_fd = wire.shm_open(opts.shm_path)
            elif opts.shm_kind == "dir":
                self.shm_fd, label = wire.shm_file(opts.shm_path)
                self._log(f"Using file-backed shared memory: {label}")
            else:
                self.shm_fd = wire.shm_memfd()
        except OSError as err:
            raise ServerError(f"cannot open shm file {label}: {err.strerror}") from None
        try:
            self.shm_size = wire.size_shm(self.shm_fd, opts.shm_size)
        except OSError as err:
            self._close_shm()
            raise ServerError(f"ftruncate({label}) failed: {err.strerror}") from None
        try:
            self._listen = self._bind(opts.socket_path)
        except ServerError:
            self._close_shm()
            raise

    def _bind(self, path: str) -> socket.socket:
        self._log(f"create & bind socket {path}")
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as err:
            raise ServerError(f"cannot create socket: {err.strerror}") from None
        try:
            if len(os.fsencode(path)) >= _SUN_PATH_MAX:
                raise ServerError("could not copy unix socket path")
            try:
                sock.bind(path)  # no stale-socket unlink, as in S:337-341
            except OSError as err:
                raise ServerError(f"cannot connect to {path}: {err.strerror}") from None
            try:
                sock.listen(LISTEN_BACKLOG)
            except OSError as err:
                os.unlink(path)
                raise ServerError(f"listen() failed: {err.strerror}") from None
        except ServerError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _close_shm(self) -> None:
        if self.shm_fd >= 0:
            os.close(self.shm_fd)
            self.shm_fd = -1
        if self.options.shm_kind == "posix":
            wire.shm_unlink(self.options.shm_path)

    # -- main loop (M:146-179, S:404-425) --------------------------------------------------

    def stop(self) -> None:
        """Ask ``serve`` to return; safe from a signal handler or another thread."""
        self._quit = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        """Handle connections and disconnections until ``stop()``."""
        if self._listen is None:
            raise RuntimeError("start() first")
        self._sel = sel = selectors.DefaultSelector()
        sel.register(self._listen, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        listening = True
        while not self._quit:
            timeout = None
            if not listening:
                timeout = max(0.0, self._accept_paused_until - time.monotonic())
                if timeout == 0.0:
                    sel.register(self._listen, selectors.EVENT_READ, None)
                    listening = True
                    timeout = None
            for key, mask in sel.select(timeout):
                if key.fileobj is self._wake_r:
                    self._drain_wakeup()
                elif key.fileobj is self._listen:
                    if not self._accept_some():
                        sel.unregister(self._listen)
                        listening = False
                else:
                    self._peer_event(key.data, mask)
            self._reap()

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _peer_event(self, peer: Peer, mask: int) -> None:
        if peer.dead:
            return
        if mask & selectors.EVENT_READ:
            peer.dead = True  # data or EOF alike: S:416-422
        elif mask & selectors.EVENT_WRITE:
            self._flush(peer)

    def _accept_some(self) -> bool:
        """Accept what is pending; False to pause accepting after fd exhaustion."""
        assert self._listen is not None
        for _ in range(64):
            try:
                conn, _addr = self._listen.accept()
            except BlockingIOError:
                return True
            except OSError as err:
                self._log(f"cannot accept() {err.strerror}")
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE
                    return False
                continue
            self._new_conn(conn)
        return True

    # -- one connection (S:131-223) --------------------------------------------------------

    def _next_id(self) -> int | None:
        for _ in range(0xFFFF):  # S:160-165
            if self._cur_id not in self._by_id:
                break
            self._cur_id = (self._cur_id + 1) & 0xFFFF
        else:
            return None
        new_id = self._cur_id
        self._cur_id = (self._cur_id + 1) & 0xFFFF  # S:172
        return new_id

    def _new_conn(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._log(f"accept()={conn.fileno()}")
        new_id = self._next_id()
        if new_id is None:
            self._log("cannot allocate new client id")
            conn.close()
            return
        vectors: list[int] = []
        try:
            for _ in range(self.options.vectors):
                vectors.append(wire.new_eventfd())
        except OSError:
            self._log("cannot create eventfd")
            _close_all(vectors)
            conn.close()
            return
        peer = Peer(new_id, conn, vectors)
        self._post(peer, wire.PROTOCOL_VERSION)  # S:97-128
        self._post(peer, peer.id)
        self._post(peer, -1, self.shm_fd)
        if peer.dead:
            self._log("cannot send initial info")
            self._discard(peer)
            return
        assert self._sel is not None
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.queue else 0)
        self._sel.register(conn, mask, peer)
        for other in self.peers:  # S:190-195
            for fd in peer.vectors:
                self._post(other, peer.id, fd)
        for other in self.peers:  # S:198-203
            for fd in other.vectors:
                self._post(peer, other.id, fd)
        for fd in peer.vectors:  # S:206-209
            self._post(peer, peer.id, fd)
        self.peers.append(peer)  # S:211
        self._by_id[peer.id] = peer
        self._log(f"new peer id = {peer.id}")

    def _post(self, peer: Peer, value: int, fd: int | None = None) -> None:
        """Send one message now, or queue it behind earlier ones."""
        if peer.dead:
            return
        data = wire.MSG.pack(value)
        if not peer.queue:
            try:
                sent = wire.send_some(peer.sock, data, fd)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                self._fail(peer, err)
                return
            if sent == len(data):
                return
            data, fd = data[sent:], (fd if sent == 0 else None)
        if len(peer.queue) >= MAX_QUEUED:
            self._fail(peer, OSError(errno.ENOBUFS, "peer does not read its messages"))
            return
        try:
            dup = None if fd is None else os.dup(fd)
        except OSError as err:
            self._fail(peer, err)
            return
        peer.queue.append(_Pending(data, dup))
        self._want_write(peer, True)

    def _want_write(self, peer: Peer, on: bool) -> None:
        if self._sel is None:
            return
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        # not registered yet: _new_conn registers it with the right mask
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(peer.sock, mask, peer)

    def _flush(self, peer: Peer) -> None:
        while peer.queue and not peer.dead:
            head = peer.queue[0]
            try:
                sent = wire.send_some(peer.sock, head.data, head.fd)
            except BlockingIOError:
                return
            except OSError as err:
                self._fail(peer, err)
                return
            head.data = head.data[sent:]
            if head.fd is not None and sent > 0:
                os.close(head.fd)
                head.fd = None
            if not head.data:
                peer.queue.popleft()
        if not peer.dead:
            self._want_write(peer, False)

    def _fail(self, peer: Peer, err: OSError) -> None:
        self._log(f"cannot send to peer {peer.id}: {err.strerror}")
        peer.dead = True

    # -- disconnection (S:74-94) -----------------------------------------------------------

    def _reap(self) -> None:
        while True:
            dead = next((p for p in self.peers if p.dead), None)
            if dead is None:
                return
            self._free_peer(dead)

    def _free_peer(self, peer: Peer) -> None:
        self._log(f"free peer {peer.id}")
        self._discard(peer)
        self.peers.remove(peer)
        del self._by_id[peer.id]
        for other in self.peers:
            self._post(other, peer.id)

    def _discard(self, peer: Peer) -> None:
        """Close the socket, the queued fd dups and the peer's eventfds."""
        peer.dead = True
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(peer.sock)
        peer.sock.close()
        while peer.queue:
            pending = peer.queue.popleft()
            if pending.fd is not None:
                os.close(pending.fd)
        _close_all(peer.vectors)
        peer.vectors = []

    # -- shutdown (S:362-379) --------------------------------------------------------------

    def close(self) -> None:
        """Free every peer (the others get disconnects), unlink the socket and a POSIX
        object, close everything.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._log("close server")
        while self.peers:
            first = self.peers[0]
            self._flush(first)
            first.dead = True
            self._free_peer(first)
        if self._listen is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.options.socket_path)
            self._listen.close()
            self._listen = None
        self._close_shm()
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        self._wake_r.close()
        self._wake_w.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)

"""An ivshmem server on real sockets with the contrib server's policy (facts §2.2-2.6).

Same messages in the same order as ``ivshmem_server_handle_new_conn`` (S:131-223), same id
policy (S:160-172), same disconnect handling (``ivshmem_server_free_peer``, S:74-94) and
shutdown (``ivshmem_server_close``, S:362-379 and its 2019 ``shm_unlink``).  Unlike the
contrib server, trouble with one client never stops the server: a failed accept, a client
gone before its setup, EPIPE, a client that sends data (any readability is a disconnect,
S:416-422) only affect that client.  A client whose socket is full gets its messages queued
instead of losing them; one that stops reading for ``MAX_QUEUED`` messages (more in a large
roster, :meth:`Server._queue_limit`) is dropped like a disconnect.

Descriptors (issue 15): a queued message holds a reference to the descriptor it carries
(:class:`SharedFd`), never a copy, so a burst costs no descriptor per queued message; a peer's
eventfds stay open after it leaves until the last message carrying them is sent or dropped.
``start`` raises the soft ``RLIMIT_NOFILE`` to the hard limit, and the server stops accepting
(the kernel's backlog and the clients' connect retries wait) while a new peer's socket and
eventfds would not fit under it, instead of accepting and then disconnecting healthy peers.
A peer needs ``1 + vectors`` descriptors here; the README's "Descriptor limits" has the sums.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ivshmem_model.model.executor import wire

DEFAULT_SOCKET_PATH = "/tmp/ivshmem_socket"  # M:18
DEFAULT_SHM_NAME = "ivshmem"  # M:19
DEFAULT_SHM_SIZE = 4 * 1024 * 1024  # M:20
MAX_VECTORS = 64  # H:38, IVSHMEM_SERVER_MAX_VECTORS
LISTEN_BACKLOG = 10  # S:29
MAX_QUEUED = 8192  # messages waiting for one slow client before it is dropped
_SUN_PATH_MAX = 108
_ACCEPT_PAUSE = 0.05  # seconds without accepting after EMFILE and friends
_RETRY_SEND = 0.02  # seconds before a send refused with ETOOMANYREFS is tried again
FD_RESERVE = 8  # descriptors kept free for everything but peers (pid file, logs, selector)

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


class SharedFd:
    """A descriptor sent to many peers: closed when its owner (the server, or the peer whose
    eventfd it is) and every queued message carrying it have let it go."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1

    def hold(self) -> SharedFd:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)


class _Pending:
    __slots__ = ("data", "fd")

    def __init__(self, data: bytes, fd: SharedFd | None) -> None:
        self.data = data
        self.fd = fd  # a reference held until the first byte is sent


@dataclass(eq=False, slots=True)
class Peer:
    """A connected client (``IvshmemServerPeer``, H:40-46) with its outgoing queue."""

    id: int
    sock: socket.socket
    vectors: list[SharedFd]
    queue: deque[_Pending] = field(default_factory=deque)
    dead: bool = False


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (capped by ``fs.nr_open`` when the
    hard limit is infinite); the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as handle:
                target = int(handle.read())
        except (OSError, ValueError):
            return soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft


def open_fds() -> int | None:
    """How many descriptors this process has open (``None`` without ``/proc``)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError:
        return None


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
        self._shm_ref: SharedFd | None = None
        self._stalled: set[Peer] = set()  # sends refused with ETOOMANYREFS, retried soon
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._budget_logged = False

    # -- start-up (S:289-359) -------------------------------------------------------------

    def start(self) -> None:
        """Open and size the shared memory, bind and listen; ``ServerError`` on failure."""
        opts = self.options
        if not 0 <= opts.vectors <= MAX_VECTORS:  # M:129-134
            raise ServerError(f"too many requested vectors (max is {MAX_VECTORS})")
        self.fd_limit = raise_nofile_limit()
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
        self._shm_ref = SharedFd(self.shm_fd)
        self._log(f"descriptor limit {self.fd_limit}: room for about "
                  f"{self.peer_capacity()} peers of {opts.vectors} vector(s)")

    def peer_capacity(self) -> int:
        """How many peers fit under the descriptor limit, counting what is open now."""
        now = open_fds() or 0
        return max(0, (self.fd_limit - FD_RESERVE - now) // (1 + self.options.vectors))

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
        if self._shm_ref is not None:  # queued messages may hold it a little longer
            self._shm_ref.release()
            self._shm_ref = None
        elif self.shm_fd >= 0:
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
            timeout: float | None = None
            if not listening:
                timeout = max(0.0, self._accept_paused_until - time.monotonic())
                if timeout == 0.0:
                    sel.register(self._listen, selectors.EVENT_READ, None)
                    listening = True
                    timeout = None
            if self._stalled:
                timeout = _RETRY_SEND if timeout is None else min(timeout, _RETRY_SEND)
            for key, mask in sel.select(timeout):
                if key.fileobj is self._wake_r:
                    self._drain_wakeup()
                elif key.fileobj is self._listen:
                    if not self._accept_some():
                        sel.unregister(self._listen)
                        listening = False
                else:
                    self._peer_event(key.data, mask)
            self._retry_stalled()
            self._reap()

    def _retry_stalled(self) -> None:
        stalled, self._stalled = self._stalled, set()
        for peer in stalled:
            self._flush(peer)

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
        """Accept what is pending; False to pause accepting: after fd exhaustion, or while a
        new peer's descriptors would not fit under the limit (back-pressure: the clients
        wait in the backlog or retry their connect; no connected peer is dropped)."""
        assert self._listen is not None
        need = 1 + self.options.vectors
        opened = open_fds()
        for _ in range(64):
            if opened is not None and opened + need + FD_RESERVE > self.fd_limit:
                if not self._budget_logged:
                    self._log(f"not accepting: {opened} descriptors open, a new peer needs "
                              f"{need} more, the limit is {self.fd_limit}")
                    self._budget_logged = True
                self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE
                return False
            self._budget_logged = False
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
            if opened is not None:
                opened += need
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
        vectors: list[SharedFd] = []
        try:
            for _ in range(self.options.vectors):
                vectors.append(SharedFd(wire.new_eventfd()))
        except OSError:
            self._log("cannot create eventfd")
            _release_all(vectors)
            conn.close()
            return
        peer = Peer(new_id, conn, vectors)
        self._post(peer, wire.PROTOCOL_VERSION)  # S:97-128
        self._post(peer, peer.id)
        self._post(peer, -1, self._shm_ref)
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

    def _post(self, peer: Peer, value: int, fd: SharedFd | None = None) -> None:
        """Send one message now, or queue it behind earlier ones (holding ``fd``)."""
        if peer.dead:
            return
        data = wire.MSG.pack(value)
        if not peer.queue:
            try:
                sent = wire.send_some(peer.sock, data, None if fd is None else fd.fd)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                if err.errno != errno.ETOOMANYREFS:
                    self._fail(peer, err)
                    return
                sent = 0  # too many fds in flight for this user: try again soon
                self._stalled.add(peer)
            if sent == len(data):
                return
            data, fd = data[sent:], (fd if sent == 0 else None)
        if len(peer.queue) >= self._queue_limit():
            self._fail(peer, OSError(errno.ENOBUFS, "peer does not read its messages"))
            return
        peer.queue.append(_Pending(data, None if fd is None else fd.hold()))
        self._want_write(peer, peer not in self._stalled)

    def _queue_limit(self) -> int:
        """Messages one peer may have waiting: ``MAX_QUEUED``, plus room for a whole roster
        joining at once (its eventfds and ids), so that a burst never reaches it."""
        return MAX_QUEUED + len(self.peers) * (self.options.vectors + 1)

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
                sent = wire.send_some(peer.sock, head.data,
                                      None if head.fd is None else head.fd.fd)
            except BlockingIOError:
                self._want_write(peer, True)  # a retried stalled peer had it off
                return
            except OSError as err:
                if err.errno == errno.ETOOMANYREFS:
                    self._stalled.add(peer)
                    self._want_write(peer, False)
                    return
                self._fail(peer, err)
                return
            head.data = head.data[sent:]
            if head.fd is not None and sent > 0:
                head.fd.release()
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
        self._accept_paused_until = 0.0  # descriptors came free: accept again at once
        self.peers.remove(peer)
        del self._by_id[peer.id]
        for other in self.peers:
            self._post(other, peer.id)

    def _discard(self, peer: Peer) -> None:
        """Close the socket; let go of the queued messages' descriptors and of the peer's
        eventfds (closed once no other peer's queue holds them)."""
        peer.dead = True
        self._stalled.discard(peer)
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(peer.sock)
        peer.sock.close()
        while peer.queue:
            pending = peer.queue.popleft()
            if pending.fd is not None:
                pending.fd.release()
        _release_all(peer.vectors)
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


def _release_all(fds: list[SharedFd]) -> None:
    for shared in fds:
        shared.release()

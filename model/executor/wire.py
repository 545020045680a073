"""The ivshmem protocol on real OS objects (facts §2.1; notes "Wire format").

A message is one 8-byte little-endian int64, optionally with one fd in SCM_RIGHTS (contrib
server ``ivshmem_server_send_one_msg``, S:44-67; client ``ivshmem_client_read_one_msg``,
C:26-72).  A doorbell is the 8-byte native-endian integer 1 written to an eventfd (C:346-369).
Shared memory is a POSIX object by name, a file made in a directory and unlinked (S:296-312),
or a memfd (an extension; the contrib server has none); it is sized like S:230-252.
"""

from __future__ import annotations

import array
import contextlib
import errno
import mmap
import os
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass

PROTOCOL_VERSION = 0  # include/hw/misc/ivshmem.h:23
MSG = struct.Struct("<q")
KICK = struct.Struct("=Q")
MAX_HUGEPAGE_SIZE = 1024 * 1024 * 1024  # S:26, IVSHMEM_SERVER_MAX_HUGEPAGE_SIZE
SHM_DIR = "/dev/shm"  # where glibc's shm_open keeps POSIX objects
_MAX_FDS = 16  # fds accepted with one message; extras are closed, the last one is kept


class WireError(Exception):
    """The peer broke the protocol or went away mid-message."""


@dataclass(frozen=True, slots=True)
class Message:
    """One received message; the receiver owns ``fd`` and must close it."""

    value: int
    fd: int | None = None


def send_some(sock: socket.socket, data: bytes, fd: int | None = None,
              extra: tuple[int, ...] = ()) -> int:
    """One ``sendmsg`` of ``data`` with ``fd`` (then ``extra``) attached; returns the bytes
    sent.

    The fds travel with the first byte, so after a partial send the rest goes without them.
    Raises ``BlockingIOError`` on a full non-blocking socket and ``OSError`` on failure.
    """
    attached = ([] if fd is None else [fd]) + list(extra)
    if not attached:
        return sock.sendmsg([data])
    fds = array.array("i", attached)
    return sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])


def send_msg(sock: socket.socket, value: int, fd: int | None = None,
             extra: tuple[int, ...] = ()) -> None:
    """Send one whole message on a blocking socket (S:44-67); ``extra`` fds ride along."""
    data = MSG.pack(value)
    while data:
        sent = send_some(sock, data, fd, extra)
        if sent <= 0:
            raise WireError("cannot send message: nothing written")
        data, fd, extra = data[sent:], None, ()


def _take_fds(ancdata: list[tuple[int, int, bytes]], kept: list[int]) -> None:
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
            continue
        fds = array.array("i")
        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        kept.extend(fds)


def recv_msg(sock: socket.socket) -> Message:
    """Receive one message, reading until 8 bytes have arrived (C:26-72).

    Like the contrib client, the last fd received wins; other fds are closed.  End of stream
    before 8 bytes is a :class:`WireError` that says how many bytes came.
    """
    buf = b""
    fds: list[int] = []
    try:
        while len(buf) < MSG.size:
            data, ancdata, _flags, _addr = sock.recvmsg(
                MSG.size - len(buf), socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
            _take_fds(ancdata, fds)
            if not data:
                if buf:
                    raise WireError(f"partial message: {len(buf)} of {MSG.size} bytes")
                raise WireError("lost connection to server")
            buf += data
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in fds[:-1]:
        os.close(fd)
    return Message(MSG.unpack(buf)[0], fds[-1] if fds else None)


# ---------------------------------------------------------------------------------------------
# Shared memory


def pow2ceil(value: int) -> int:
    """QEMU's ``pow2ceil``: the smallest power of two >= value (1 for 0)."""
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


def _shm_name_path(name: str) -> str:
    bare = name.lstrip("/")
    if not bare or "/" in bare:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return os.path.join(SHM_DIR, bare)


def shm_open(name: str) -> int:
    """``shm_open(name, O_CREAT|O_RDWR, S_IRWXU)`` (S:296-299); an old object is reused."""
    flags = os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(_shm_name_path(name), flags, stat.S_IRWXU)


def shm_unlink(name: str) -> None:
    """``shm_unlink(name)``; a missing object is not an error."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_shm_name_path(name))


def shm_file(directory: str) -> tuple[int, str]:
    """A file ``<dir>/ivshmem.XXXXXX``, unlinked at once (S:300-307); returns (fd, path)."""
    fd, path = tempfile.mkstemp(prefix="ivshmem.", dir=directory)
    os.unlink(path)
    return fd, path


def shm_memfd(name: str = "ivshmem") -> int:
    """An anonymous memfd (close-on-exec); not something the contrib server can do."""
    return os.memfd_create(name, os.MFD_CLOEXEC)


def size_shm(fd: int, size: int) -> int:
    """Mirror of ``ivshmem_server_ftruncate`` (S:230-252): round up to a power of two; keep an
    object that already has that size; else ftruncate, doubling after each failure while the
    size is at most 1 GiB.  Returns the size; raises ``OSError`` when nothing worked.

    Unlike S:230 (``unsigned shmsize``) sizes of 4 GiB and more are not truncated mod 2^32.
    """
    size = pow2ceil(size)
    if os.fstat(fd).st_size == size:
        return size
    error: OSError = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    while size <= MAX_HUGEPAGE_SIZE:
        try:
            os.ftruncate(fd, size)
            return size
        except OSError as err:
            error = err
        size *= 2
    raise error


def map_shm(fd: int, size: int | None = None) -> mmap.mmap:
    """Map a shared-memory fd read-write and shared; ``size`` defaults to its ``st_size``."""
    length = os.fstat(fd).st_size if size is None else size
    return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


# ---------------------------------------------------------------------------------------------
# Eventfds


def new_eventfd(nonblocking: bool = True) -> int:
    """A fresh eventfd, close-on-exec, non-blocking like ``event_notifier_init``."""
    flags = os.EFD_CLOEXEC | (os.EFD_NONBLOCK if nonblocking else 0)
    return os.eventfd(0, flags)


def kick(fd: int) -> None:
    """Ring a doorbell: write the 8-byte native-endian 1 (C:357-362)."""
    written = os.write(fd, KICK.pack(1))
    if written != KICK.size:
        raise OSError(errno.EIO, f"could not write to {fd}: short write of {written} bytes")


def read_kick(fd: int) -> int:
    """Read one 8-byte counter (C:293-325); 0 when a non-blocking fd has nothing."""
    try:
        data = os.read(fd, KICK.size)
    except BlockingIOError:
        return 0
    if len(data) != KICK.size:
        raise OSError(errno.EINVAL, f"invalid read size = {len(data)}")
    value: int = KICK.unpack(data)[0]
    return value


def eventfd_field(fd: int, name: str, pid: int | str = "self") -> int | None:
    """A field of an eventfd's ``/proc/PID/fdinfo`` (``eventfd-count`` in hex,
    ``eventfd-id``), read without touching the counter; ``None`` if absent."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith(name + ":"):
                    text = line.split()[1]
                    return int(text, 16) if name == "eventfd-count" else int(text)
    except OSError:
        return None
    return None


def eventfd_count(fd: int) -> int:
    """An eventfd's counter, without consuming it (0 if ``fd`` is not an eventfd)."""
    return eventfd_field(fd, "eventfd-count") or 0


def fd_kind(fd: int) -> str:
    """What an fd is, from ``/proc/self/fd``: ``eventfd``, ``memfd``, ``socket``, ``pipe``..."""
    return fd_kind_of(os.readlink(f"/proc/self/fd/{fd}"))


def fd_kind_of(target: str) -> str:
    """The kind of a ``/proc/PID/fd`` link target: ``eventfd``, ``memfd``, ``socket``,
    ``pipe``, another anonymous inode's name (``signalfd``, ``kvm-vm``), else ``file``."""
    if target.startswith("/memfd:"):
        return "memfd"
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return target[len("anon_inode:"):].strip("[]")
    return "file"

"""The socket chardev a device reads the server through (``chardev/char-socket.c`` and
``chardev/char-fe.c`` of the seed's QEMU): the part of the reading that is not the device's.

A chardev declared with ``-chardev`` (or ``chardev-add``) belongs to the QEMU process and
outlives the device on it: unplug only detaches it (``hw/core/qdev-properties-system.c``
``release_chr`` calls ``char-fe.c:qemu_chr_fe_deinit`` with ``del`` false).  What it holds
stays for the next device realized on it, in the endpoint's record:

* ``Endpoint.chr_read``: the bytes of the channel's first message already read out of the
  socket, by a reader that may be gone; the next reader goes on from there, mid-message.
* ``Endpoint.chr_fd``: the descriptor the chardev received and nobody took yet
  (``read_msgfds``), or -1.

On a unix stream socket a message's descriptors arrive with the first of its bytes that a
``recvmsg`` returns (the kernel detaches them from the message then), so the channel's first
message, once partly read, carries none.  A device's ``msg_buf`` (``Device.msg_buf``) holds
what it was handed of its current 8 bytes: after a torn message they straddle two messages.
"""

from __future__ import annotations

from ivshmem_model.model.proc import Proc, WouldBlock

MSG_SIZE = 8  # sizeof(int64_t): every server message (seed 655-676, msg_buf)
_UINT64 = (1 << 64) - 1


def available(proc: Proc) -> int:
    """The bytes waiting in the socket: the queued messages less what was read of the first."""
    return MSG_SIZE * len(proc.world.channel(proc.endpoint)) - proc.chr_read


def tcp_chr_recv(proc: Proc, size: int) -> bytes:
    """``char-socket.c:tcp_chr_recv``: ``size`` bytes off the socket (the caller checked they
    are there).  A read that brings descriptors closes those the chardev still holds and keeps
    the new ones ("close and clean read_msgfds")."""
    world, e = proc.world, proc.endpoint
    out = bytearray()
    while len(out) < size:
        value, d = world.channel(e)[0]
        if d >= 0:  # the first byte read of this message: its descriptor comes with it
            world.give(d, e)
            if proc.chr_fd >= 0:
                world.close_fd(proc.chr_fd)
            proc.chr_fd = d
            world.replace_head(e, (value, -1))
        take = min(size - len(out), MSG_SIZE - proc.chr_read)
        raw = (value & _UINT64).to_bytes(MSG_SIZE, "little")
        out += raw[proc.chr_read:proc.chr_read + take]
        proc.chr_read += take
        if proc.chr_read == MSG_SIZE:
            world.pop_message(e)
            proc.chr_read = 0
    return bytes(out)


def tcp_chr_read(proc: Proc, max_size: int, size: int = 0) -> bytes:
    """``char-socket.c:tcp_chr_read``: what the main loop reads for the frontend when the
    socket is readable, at most ``max_size`` (``tcp_chr_read_poll``: the frontend's
    ``fd_can_read``).  ``size`` (``deliver`` with ``bytes``) is how much the server's write
    brought so far, fewer than ``max_size``; 0 for all of it.  Not enabled (``WouldBlock``)
    when the socket holds fewer bytes than that."""
    if size >= max_size:
        raise WouldBlock  # that is the whole of what the frontend wants: a plain deliver
    want = size or max_size
    if available(proc) < want:
        raise WouldBlock
    return tcp_chr_recv(proc, want)


def qemu_chr_fe_read_all(proc: Proc, size: int) -> bytes | None:
    """``char-fe.c:qemu_chr_fe_read_all`` through ``char-socket.c:tcp_chr_sync_read``: a
    blocking read of ``size`` bytes.  ``WouldBlock`` while a live server has not sent them;
    ``None`` at the end of the stream: what was left is read, the chardev disconnects
    (``tcp_chr_disconnect``, whose ``tcp_chr_free_connection`` closes the descriptors it
    holds) and every later read returns 0."""
    left = available(proc)
    if left >= size:
        return tcp_chr_recv(proc, size)
    if proc.world.server_up:
        raise WouldBlock
    if left:
        tcp_chr_recv(proc, left)
    if proc.chr_fd >= 0:
        proc.world.close_fd(proc.chr_fd)
        proc.chr_fd = -1
    return None


def qemu_chr_fe_get_msgfd(proc: Proc) -> int:
    """``char-fe.c:qemu_chr_fe_get_msgfd`` → ``char-socket.c:tcp_get_msgfds``: the held
    descriptor, now the caller's, or -1."""
    d, proc.chr_fd = proc.chr_fd, -1
    return d


def le64(data: bytes) -> int:
    """The int64 a little-endian message's 8 bytes make (``le64_to_cpu`` of ``msg_buf``)."""
    return int.from_bytes(data, "little", signed=True)

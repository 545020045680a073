"""A software ivshmem-doorbell device: the model's device driven by real messages and real fds.

A conformance harness, not a VMM.  The device's *behaviour* is the model's: the device keeps a
one-endpoint :class:`~model.state.SystemState` with the ``scripted`` server policy and advances
it with :func:`model.system.step`.  Its *inputs and outputs* are real:

* every message that arrives on the real server socket (:mod:`model.executor.wire`) is fed to
  the model as ``server_send(0, value, fd)``, ``fd`` being ``None``, ``"eventfd"`` or
  ``"shm:SIZE"`` as ``fstat`` and ``/proc/self/fd`` tell, so the model's channel is the queue of
  received, not yet handled messages;
* the model's descriptor numbers (``peers[i].eventfds`` slots, ``bar2_fd``, messages in the
  channel) map to the real fds received (:attr:`SoftwareDevice.fds`); when the model closes a
  descriptor, the real fd is closed;
* BAR2 is the real shared memory, mapped once the model has set ``bar2_fd``;
* a doorbell write (``ring``, or ``mmio_write`` at DOORBELL) writes the real eventfd of
  ``(peer, vector)``, decoded as ``ivshmem_io_write`` (and the exact-match ioeventfd) does
  (facts §3.2), from the peers table of the model's device;
* before each step the model's eventfd counters are set from the real ones (readable or not),
  so ``handle_irq`` is enabled exactly when the real own eventfd is readable; after it, every
  real counter the model read (``handle_irq``, a PBA read, KVM's irqfd) is read for real;
* end of stream on the socket is the server going away: ``server_exit`` in the model.

Actions address endpoint 0 of the device's own model; callers pass any endpoint number.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import socket
import stat
import time
from dataclasses import replace

from ivshmem_model.model.actions import (
    Action,
    Config,
    Connect,
    Disconnect,
    HostConfig,
    MmioWrite,
    Realize,
    Ring,
    ServerConfig,
    ServerExit,
    ServerSend,
)
from ivshmem_model.model.executor import wire
from ivshmem_model.model.proc import World
from ivshmem_model.model.state import Device, FileObject, SystemState
from ivshmem_model.model.system import Observation, initial_state, step
from ivshmem_model.model.variants import SEED, Variant

DOORBELL = 12  # BAR0 offset (facts §3.2)
DEFAULT_TIMEOUT = 2.0

RealMessage = tuple[int, str | None]  # (value, fd kind as given to ``server_send``)


def fd_kind(fd: int) -> str:
    """``"eventfd"``, ``"shm:SIZE"`` for a regular file or memfd, else ``"other:<target>"``."""
    if wire.fd_kind(fd) == "eventfd":
        return "eventfd"
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode):
        return f"shm:{info.st_size}"
    return "other:" + os.readlink(f"/proc/self/fd/{fd}")


def readable(fd: int) -> bool:
    """Whether ``fd`` is readable now (an eventfd with a non-zero counter), without reading."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(mask & select.POLLIN for _fd, mask in poller.poll(0))


def device_config(system: Config) -> Config:
    """The device's own model: one endpoint, scripted server, the system's host facts."""
    return Config(
        endpoints=1,
        server=ServerConfig(policy="scripted", vectors=system.server.vectors,
                            shm_size=system.server.shm_size, messages=()),
        host=HostConfig(kvm_msi_irqfd=system.host.kvm_msi_irqfd,
                        ioeventfd=system.host.ioeventfd),
    )


def _at_zero(action: Action) -> Action:
    if getattr(action, "endpoint", 0) == 0:
        return action
    return replace(action, endpoint=0)  # type: ignore[call-arg]


class SoftwareDevice:
    """One QEMU process with one ivshmem device, as the model says, on real fds."""

    def __init__(self, config: Config, variant: Variant = SEED,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.state: SystemState = initial_state(device_config(config), variant)
        self.timeout = timeout
        self.fds: dict[int, int] = {}  # model descriptor -> real fd
        self.sock: socket.socket | None = None
        self.eof = False  # the server closed the connection
        self.bar2: mmap.mmap | None = None
        self.unmodelled: list[RealMessage] = []  # real messages the model refused
        self.obs: list[Observation] = []  # the model's observations of the last step

    # -- the model ---------------------------------------------------------------------------

    @property
    def device(self) -> Device | None:
        return self.state.endpoints[0].device

    def _step(self, action: Action) -> list[Observation] | None:
        outcome = step(self.state, _at_zero(action))
        if outcome is None:
            return None
        self.state, self.obs = outcome
        self._reconcile()
        return self.obs

    def _reconcile(self) -> None:
        """Close the real fds whose descriptors the model closed; map or unmap BAR2."""
        table = self.state.fds
        for d in sorted(self.fds):
            entry = table[d] if d < len(table) else None
            if entry is None or not entry.open:
                os.close(self.fds.pop(d))
        device = self.device
        mapped = device is not None and device.bar2_fd in self.fds
        if mapped and self.bar2 is None:
            assert device is not None
            self.bar2 = wire.map_shm(self.fds[device.bar2_fd], device.bar2_size)
        elif not mapped and self.bar2 is not None:
            self.bar2.close()
            self.bar2 = None

    def _sync_counters(self) -> None:
        """Set the model's eventfd counters from the real ones (other processes write them)."""
        objects = list(self.state.objects)
        changed = False
        for d, real in self.fds.items():
            entry = self.state.fds[d]
            obj = objects[entry.obj] if entry is not None else None
            if entry is None or obj is None or obj.kind != "eventfd":
                continue
            count = 1 if readable(real) else 0
            if obj.count != count:
                objects[entry.obj] = FileObject(obj.kind, count, obj.size)
                changed = True
        if changed:
            self.state = replace(self.state, objects=tuple(objects))

    def real_fd(self, d: int) -> int | None:
        """The real fd behind model descriptor ``d``."""
        return self.fds.get(d)

    # -- the connection ------------------------------------------------------------------------

    def connect(self, path: str) -> bool:
        """``-chardev socket,path=...``: connect; False when the model says it cannot."""
        if self._step(Connect(0)) is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                sock.connect(path)
                break
            except OSError as err:
                if err.errno not in (errno.ECONNREFUSED, errno.EAGAIN, errno.ENOENT) or (
                    time.monotonic() > deadline
                ):
                    sock.close()
                    raise
                time.sleep(0.005)
        self.sock = sock
        return True

    def receive(self, expect: int = 0, quiet: float = 0.0) -> list[RealMessage]:
        """Read the messages that arrived: wait (up to the timeout) for ``expect`` of them, then
        up to ``quiet`` seconds for more.  Each goes to the model as ``server_send``."""
        got: list[RealMessage] = []
        deadline = time.monotonic() + self.timeout
        while self.sock is not None and not self.eof:
            wait = max(0.0, deadline - time.monotonic()) if len(got) < expect else quiet
            ready, _w, _x = select.select([self.sock], [], [], wait)
            if not ready:
                break
            self.sock.settimeout(self.timeout)
            try:
                message = wire.recv_msg(self.sock)
            except (OSError, wire.WireError):
                self.eof = True
                self.server_gone()
                break
            got.append(self._feed(message))
        return got

    def _feed(self, message: wire.Message) -> RealMessage:
        kind = None if message.fd is None else fd_kind(message.fd)
        if kind is not None and kind.startswith("other:"):
            assert message.fd is not None
            os.close(message.fd)
            self.unmodelled.append((message.value, kind))
            return message.value, kind
        if self._step(ServerSend(0, message.value, kind)) is None:
            if self.state.endpoints[0].fate is None:
                if message.fd is not None:
                    os.close(message.fd)
                self.unmodelled.append((message.value, kind))
                return message.value, kind
            self._enqueue(message.value, kind)  # a dead process's socket still fills up
        if message.fd is not None:
            _value, d = self.state.channels[0][-1]
            self.fds[d] = message.fd
        return message.value, kind

    def _enqueue(self, value: int, kind: str | None) -> None:
        """Queue a message in the model's channel without ``server_send`` (which a process
        with a fate refuses): the system model keeps filling such a process's socket."""
        world = World(self.state.fds, self.state.objects, self.state.channels, True)
        obj = None
        if kind is not None:
            shm = kind.startswith("shm:")
            obj = world.new_object(FileObject("shm" if shm else kind, 0,
                                              int(kind[4:]) if shm else 0))
        world.send(0, value, obj)
        fds, objects, channels = world.frozen()
        self.state = replace(self.state, fds=fds, objects=objects, channels=channels)

    def close(self) -> list[Observation] | None:
        """The process goes away: the kernel closes its socket and fds (``disconnect``)."""
        obs = self._step(Disconnect(0))
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.release()
        return obs

    def release(self) -> None:
        """Close every real resource, whatever the model says (teardown)."""
        if self.bar2 is not None:
            self.bar2.close()
            self.bar2 = None
        for real in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(real)
        self.fds.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- device actions ------------------------------------------------------------------------

    def realize(self, action: Realize) -> list[Observation] | None:
        return self.act(action)

    def act(self, action: Action) -> list[Observation] | None:
        """Any device action (``realize``, ``deliver``, ``mmio_*``, ``ring``, ``msix_*``,
        ``pba_read``, ``handle_irq``, ``reset``, ``unplug``, ``migrate``) with its real
        effects; ``None`` when the model says it is not enabled."""
        self._sync_counters()
        target: int | None = None
        if isinstance(action, Ring):
            target = self.doorbell_target((action.peer << 16) | action.vector, DOORBELL, 4)
        elif isinstance(action, MmioWrite):
            target = self.doorbell_target(action.value, action.offset, action.size)
        obs = self._step(action)
        if obs is None:
            return None
        if target is not None:
            wire.kick(target)
        self._drain_read()
        return obs

    def _drain_read(self) -> None:
        """Read the real counters the model read in this step: ``handle_irq``
        (``ivshmem_vector_notify``), a PBA read (``ivshmem_vector_poll``), KVM's irqfd consuming
        a pending count when it is attached.  The counters were synced before the step, so a
        model counter at 0 beside a readable real one was read by the model."""
        for d, real in self.fds.items():
            entry = self.state.fds[d]
            obj = self.state.objects[entry.obj] if entry is not None else None
            if obj is not None and obj.kind == "eventfd" and obj.count == 0 and readable(real):
                wire.read_kick(real)

    def server_gone(self) -> None:
        """The server closed the connection (or exited): the model's server is down."""
        if self.state.server.up:
            self._step(ServerExit())

    def doorbell_target(self, value: int, offset: int, size: int) -> int | None:
        """The real eventfd a BAR0 write rings (facts §3.2): an exact 4-byte ioeventfd match
        first; else, at DOORBELL, ``dest = bits 16-31`` below ``nb_peers``, ``vector = bits
        0-7`` below that peer's ``nb_eventfds``."""
        device = self.device
        if device is None or offset & 0xFC != DOORBELL or offset % size or size == 8:
            return None
        if self.state.config.host.ioeventfd and size == 4 and offset == DOORBELL:
            for datamatch, d in device.ioeventfds:
                if datamatch == value:
                    return self.fds.get(d)
        dest, vector = (value >> 16) & 0xFFFF, value & 0xFF
        if dest >= device.nb_peers:
            return None
        peer = dict(device.peers).get(dest)
        if peer is None or vector >= peer.nb_eventfds or vector >= len(peer.eventfds):
            return None
        return self.fds.get(peer.eventfds[vector])

    # -- inspection ----------------------------------------------------------------------------

    def held(self) -> int:
        """Real fds this process holds: received fds, the socket, BAR2's mapping (a dup)."""
        return len(self.fds) + (self.sock is not None) + (self.bar2 is not None)

    def channel(self) -> list[tuple[int, str | None]]:
        """The received, unhandled messages: (value, real fd kind)."""
        return [
            (value, None if d < 0 else fd_kind(self.fds[d]))
            for value, d in self.state.channels[0]
        ]

"""The ivshmem device: one function per seed function, same name, seed lines cited.

``../shared/seed/ivshmem.c.txt`` is the seed (QEMU ``hw/misc/ivshmem.c`` right after
``b266f1d11233``); "seed N" is its line N.  Each function keeps the seed's order of checks and
QEMU's own error texts.  Where the C code asserts, :class:`~model.proc.Abort` is raised; where it
reads or writes a NULL, freed or too-short heap block, :class:`~model.proc.Crash`.  Variant flags
(``s.proc.variant``) switch behaviour only where a commit changed it, citing that commit.

``IVShmemState`` here is mutable and lives for one step; :func:`thaw` and :meth:`freeze` convert
from and to the frozen :class:`~model.state.Device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ivshmem_model.model import chardev, msix, pci
from ivshmem_model.model.actions import SIZED_FD_KINDS
from ivshmem_model.model.msix import (
    PCIDevice,
    msix_enabled,
    msix_get_message,
    msix_init_exclusive_bar,
    msix_is_masked,
    msix_notify,
    msix_set_pending,
    msix_set_vector_notifiers,
    msix_uninit_exclusive_bar,
    msix_unset_vector_notifiers,
    msix_vector_use,
)
from ivshmem_model.model.pci import PCI_BASE_ADDRESS_MEM_PREFETCH, PCI_BASE_ADDRESS_MEM_TYPE_64
from ivshmem_model.model.proc import Abort, Crash, Exit, Hang, Proc
from ivshmem_model.model.state import (
    DEFAULT_MSI_VECTOR,
    DEFAULT_PEER,
    FREED,
    IVSHMEM_IOEVENTFD,
    IVSHMEM_MSI,
    LIVE,
    NULL,
    ZEROED,
    Device,
    MemBackend,
    MSIVector,
    Peer,
    sparse_get,
)
from ivshmem_model.model.variants import Variant

IVSHMEM_MAX_PEERS = 0xFFFF  # seed 42
NULL_PEER = Peer(block=NULL)
IVSHMEM_PROTOCOL_VERSION = 0
SIZE_MAX = -1  # legacy_size "whatever the server sends" (seed 1158)
MiB = 1024 * 1024
PAGE_SIZE = 4096
EINVAL = 22


class Reg(IntEnum):
    """``enum ivshmem_registers`` (seed 125-130)."""

    INTRMASK = 0
    INTRSTATUS = 4
    IVPOSITION = 8
    DOORBELL = 12


class Errp:
    """``Error **errp``: the first error set wins, as ``error_setg`` asserts."""

    __slots__ = ("msg",)

    def __init__(self) -> None:
        self.msg: str | None = None

    def set(self, msg: str) -> None:
        if self.msg is None:
            self.msg = msg

    def __bool__(self) -> bool:
        return self.msg is not None


def _freeze_sparse(
    current: dict[int, Any] | None, original: tuple[tuple[int, Any], ...], default: Any
) -> tuple[tuple[int, Any], ...]:
    """A sparse array as a sorted tuple, default values left out; the very ``original`` when
    it was never thawed or is written back as it was."""
    if current is None:
        return original
    frozen = tuple(sorted(p for p in current.items() if p[1] != default))
    return original if frozen == original else frozen


def _stored(thawed: dict[int, Any] | None, frozen: tuple[tuple[int, Any], ...],
            index: int) -> Any:
    """Slot ``index`` of a sparse array, ``None`` if not stored: from the thawed dict once
    there is one, else from the frozen tuple (which reading does not thaw)."""
    return sparse_get(frozen, index, None) if thawed is None else thawed.get(index)


class IVShmemState(PCIDevice):
    """Mutable mirror of ``IVShmemState`` (seed 83-122)."""

    __slots__ = (
        "_frozen", "_msi_vectors", "_peers", "backend", "bar2", "bar2_64bit", "bar2_fd",
        "bar2_size", "chardev", "chardev_null", "endpoint", "features", "hostmem",
        "hostmem_data", "interrupt_pin", "intrmask", "intrstatus", "ioeventfds", "irq_level",
        "legacy_size", "master", "memdev", "migration_blocker", "msg_buf", "msg_buffered_bytes",
        "msi_vectors_block", "nb_peers", "peers_block", "ram_unregistered", "realizing",
        "setup_stage", "type", "vectors", "vm_id",
    )

    def __init__(self, proc: Proc, d: Device) -> None:
        super().__init__(proc, d.msix, d.pci)
        self._frozen = d
        self.endpoint = proc.endpoint
        self.type = d.type
        self.features = d.features
        self.vectors = d.vectors
        self.vm_id = d.vm_id
        self.master = d.master
        self.intrmask = d.intrmask
        self.intrstatus = d.intrstatus
        self.irq_level = d.irq_level
        self.interrupt_pin = d.interrupt_pin
        self.chardev = d.chardev
        self.hostmem = d.hostmem
        self.legacy_size = d.legacy_size
        self.peers_block = d.peers_block
        self.nb_peers = d.nb_peers
        # the sparse arrays are thawed when first written through ``peers``/``msi_vectors``
        # (``stored_peer``/``stored_msi_vector`` read without): most steps write neither
        self._peers: dict[int, Peer] | None = None
        self.msi_vectors_block = d.msi_vectors_block
        self._msi_vectors: dict[int, MSIVector] | None = None
        self.bar2 = d.bar2
        self.bar2_fd = d.bar2_fd
        self.bar2_size = d.bar2_size
        self.bar2_64bit = d.bar2_64bit
        self.hostmem_data = d.hostmem_data
        self.msg_buffered_bytes = d.msg_buffered_bytes
        self.msg_buf = d.msg_buf
        self.migration_blocker = d.migration_blocker
        self.ioeventfds = list(d.ioeventfds)
        self.setup_stage = d.setup_stage
        self.memdev = d.memdev
        self.backend: MemBackend | None = None  # realize only: the memdev named, as it is
        self.realizing = False  # BAR0 is mapped only once realize is over
        # unplug only: ivshmem_exit cleared the id of BAR2's RAM block (vmstate_unregister_ram)
        self.ram_unregistered = False
        self.chardev_null = False  # chardev_backend "null" (realize only: it never completes)
        if d.msix.notifiers:
            self.msix_vector_use_notifier = ivshmem_vector_unmask
            self.msix_vector_release_notifier = ivshmem_vector_mask
        if d.msix.poll_notifier:
            self.msix_vector_poll_notifier = ivshmem_vector_poll

    def freeze(self) -> Device:
        """The frozen device; the very object thawed when nothing changed (cheap to hash)."""
        d = self._frozen
        ioeventfds = tuple(sorted(self.ioeventfds))
        msix = self.freeze_msix(d.msix)
        same = msix is d.msix and ioeventfds == d.ioeventfds and self._scalars_equal(d)
        if same and self._peers is None and self._msi_vectors is None:
            return d  # compared field by field: no record built for a step that changed nothing
        device = Device(
            type=self.type,
            features=self.features,
            vectors=self.vectors,
            vm_id=self.vm_id,
            master=self.master,
            intrmask=self.intrmask,
            intrstatus=self.intrstatus,
            irq_level=self.irq_level,
            interrupt_pin=self.interrupt_pin,
            chardev=self.chardev,
            hostmem=self.hostmem,
            legacy_size=self.legacy_size,
            peers_block=self.peers_block,
            nb_peers=self.nb_peers,
            peers=_freeze_sparse(self._peers, d.peers, self.default_peer()),
            msi_vectors_block=self.msi_vectors_block,
            msi_vectors=_freeze_sparse(self._msi_vectors, d.msi_vectors, DEFAULT_MSI_VECTOR),
            bar2=self.bar2,
            bar2_fd=self.bar2_fd,
            bar2_size=self.bar2_size,
            msg_buffered_bytes=self.msg_buffered_bytes,
            msg_buf=self.msg_buf,
            migration_blocker=self.migration_blocker,
            ioeventfds=d.ioeventfds if ioeventfds == d.ioeventfds else ioeventfds,
            msix=msix,
            pci=self.pci,
            bar2_64bit=self.bar2_64bit,
            hostmem_data=self.hostmem_data,
            setup_stage=self.setup_stage,
            memdev=self.memdev,
        )
        if same and device.peers == d.peers and device.msi_vectors == d.msi_vectors:
            return d  # the arrays were written back as they were
        return device

    @property
    def peers(self) -> dict[int, Peer]:
        """``s->peers`` as a sparse array to write (``Device.peers`` thawed)."""
        if self._peers is None:
            self._peers = dict(self._frozen.peers)
        return self._peers

    @peers.setter
    def peers(self, value: dict[int, Peer]) -> None:
        self._peers = value

    @property
    def msi_vectors(self) -> dict[int, MSIVector]:
        """``s->msi_vectors`` as a sparse array to write (``Device.msi_vectors`` thawed)."""
        if self._msi_vectors is None:
            self._msi_vectors = dict(self._frozen.msi_vectors)
        return self._msi_vectors

    @msi_vectors.setter
    def msi_vectors(self, value: dict[int, MSIVector]) -> None:
        self._msi_vectors = value

    def stored_peer(self, posn: int) -> Peer | None:
        """``peers[posn]`` if stored (not a default), read without thawing the array: a
        doorbell reads one slot and writes none."""
        stored: Peer | None = _stored(self._peers, self._frozen.peers, posn)
        return stored

    def stored_msi_vector(self, vector: int) -> MSIVector | None:
        """``msi_vectors[vector]`` if stored, read as ``stored_peer`` reads."""
        stored: MSIVector | None = _stored(self._msi_vectors, self._frozen.msi_vectors, vector)
        return stored

    def _scalars_equal(self, d: Device) -> bool:
        """Whether every compared field of ``d`` but the arrays, MSI-X and the ioeventfds
        (which ``freeze`` compares on its own) is as this device has it (``pci``: the very
        record, or an equal one).  A field added to ``Device`` is added here too
        (``tests/test_state.py`` checks that every one is read)."""
        return (self.type == d.type and self.features == d.features
                and self.vectors == d.vectors and self.vm_id == d.vm_id
                and self.master == d.master and self.intrmask == d.intrmask
                and self.intrstatus == d.intrstatus and self.irq_level == d.irq_level
                and self.interrupt_pin == d.interrupt_pin and self.chardev == d.chardev
                and self.hostmem == d.hostmem and self.legacy_size == d.legacy_size
                and self.peers_block == d.peers_block and self.nb_peers == d.nb_peers
                and self.msi_vectors_block == d.msi_vectors_block and self.bar2 == d.bar2
                and self.bar2_fd == d.bar2_fd and self.bar2_size == d.bar2_size
                and self.msg_buffered_bytes == d.msg_buffered_bytes
                and self.msg_buf == d.msg_buf and self.migration_blocker == d.migration_blocker
                and (self.pci is d.pci or self.pci == d.pci) and self.bar2_64bit == d.bar2_64bit
                and self.hostmem_data == d.hostmem_data and self.setup_stage == d.setup_stage
                and self.memdev == d.memdev)

    def default_peer(self) -> Peer:
        """What ``resize_peers`` puts in a new slot: ``g_new0`` of 0 elements is NULL."""
        return DEFAULT_PEER if self.vectors else NULL_PEER


def ivshmem_has_feature(s: IVShmemState, feature: int) -> bool:
    """Seed 132-135."""
    return bool(s.features & (1 << feature))


def ivshmem_is_master(s: IVShmemState) -> bool:
    """Seed 137-141."""
    if s.master == "auto":
        raise Abort("ivshmem_is_master: Assertion `s->master != ON_OFF_AUTO_AUTO' failed.", 139)
    return s.master == "on"


# ---------------------------------------------------------------------------------------------
# Heap accesses: the lifetime and bounds of every block the seed indexes.


def peer_at(s: IVShmemState, posn: int, line: int) -> Peer:
    """``s->peers[posn]``: the peers array must be live and ``posn < nb_peers``."""
    if s.peers_block == NULL:
        raise Crash("null_deref", "s->peers is NULL", line)
    if s.peers_block == FREED:
        raise Crash("use_after_free", "s->peers was freed", line)
    if not 0 <= posn < s.nb_peers:
        raise Crash("out_of_bounds", f"s->peers[{posn}] of {s.nb_peers}", line)
    return s.stored_peer(posn) or s.default_peer()


def eventfd_slot(s: IVShmemState, posn: int, vector: int, line: int) -> int:
    """Read ``s->peers[posn].eventfds[vector]``: the descriptor it holds, or ``ZEROED``."""
    peer = peer_at(s, posn, line)
    _check_eventfds_block(peer, posn, line)
    if not 0 <= vector < s.vectors:
        raise Crash(
            "out_of_bounds", f"peers[{posn}].eventfds[{vector}] of {s.vectors}", line
        )
    return peer.eventfds[vector] if vector < len(peer.eventfds) else ZEROED


def _check_eventfds_block(peer: Peer, posn: int, line: int) -> None:
    if peer.block == NULL:
        raise Crash("null_deref", f"peers[{posn}].eventfds is NULL", line)
    if peer.block == FREED:
        raise Crash("use_after_free", f"peers[{posn}].eventfds was freed", line)


def msi_vector(s: IVShmemState, vector: int, line: int) -> MSIVector:
    """``s->msi_vectors[vector]``: allocated in ``ivshmem_setup_interrupts`` (seed 779)."""
    if s.msi_vectors_block == NULL:
        raise Crash("null_deref", "s->msi_vectors is NULL", line)
    if s.msi_vectors_block == FREED:
        raise Crash("use_after_free", "s->msi_vectors was freed", line)
    if not 0 <= vector < s.vectors:
        raise Crash("out_of_bounds", f"msi_vectors[{vector}] of {s.vectors}", line)
    return s.stored_msi_vector(vector) or DEFAULT_MSI_VECTOR


def g_free_block(state: str, what: str, line: int) -> str:
    """``g_free``: NULL is fine, a second free is a crash."""
    if state == FREED:
        raise Crash("double_free", f"{what} freed twice", line)
    return FREED if state == LIVE else NULL


# ---------------------------------------------------------------------------------------------
# BAR0 registers and INTx (seed 143-288)


def ivshmem_update_irq(s: IVShmemState) -> None:
    """Seed 143-173: only the legacy ``ivshmem,msi=off`` drives INTx."""
    uses_msi = ivshmem_has_feature(s, IVSHMEM_MSI) and not s.proc.variant.before_2d1d422d1145
    if uses_msi or not s.interrupt_pin:
        return
    isr = s.intrstatus & s.intrmask
    pci_set_irq(s, 1 if isr else 0)


def pci_set_irq(s: IVShmemState, level: int) -> None:
    if level != s.irq_level:
        s.irq_level = level
        s.proc.obs.append({"intx": level})


def ivshmem_IntrMask_write(s: IVShmemState, val: int) -> None:
    """Seed 175-181."""
    s.intrmask = val & 0xFFFFFFFF
    ivshmem_update_irq(s)


def ivshmem_IntrMask_read(s: IVShmemState) -> int:
    """Seed 183-189."""
    return s.intrmask


def ivshmem_IntrStatus_write(s: IVShmemState, val: int) -> None:
    """Seed 191-197: stores the value (not OR)."""
    s.intrstatus = val & 0xFFFFFFFF
    ivshmem_update_irq(s)


def ivshmem_IntrStatus_read(s: IVShmemState) -> int:
    """Seed 199-207: reading ISR clears all interrupts."""
    ret = s.intrstatus
    s.intrstatus = 0
    ivshmem_update_irq(s)
    return ret


def ivshmem_io_write(s: IVShmemState, addr: int, val: int) -> None:
    """Seed 209-249: one 4-byte access as the memory core hands it over."""
    dest = (val >> 16) & 0xFFFF
    vector = val & 0xFF
    addr &= 0xFC
    if addr == Reg.INTRMASK:
        ivshmem_IntrMask_write(s, val)
    elif addr == Reg.INTRSTATUS:
        ivshmem_IntrStatus_write(s, val)
    elif addr == Reg.DOORBELL:
        # check that dest VM ID is reasonable
        if dest >= s.nb_peers:
            return
        # check doorbell range
        if vector < peer_at(s, dest, 238).nb_eventfds:
            d = eventfd_slot(s, dest, vector, 240)
            s.proc.event_notifier_set(d, 240)
            if dest == s.vm_id:
                own_eventfd_ready(s, d)


def own_eventfd_ready(s: IVShmemState, d: int) -> bool:
    """The device's own eventfd ``d`` is readable: who consumes it, at once.  KVM's irqfd
    (the kernel injects the route's MSI, if the route exists) or the main loop's fd handler
    (``ivshmem_vector_notify``).  A doorbell a device rings to itself is consumed in the same
    step (QEMU's main loop runs the handler before the guest's next access); one from another
    process waits for the trace's ``handle_irq``.  False when nothing consumes it."""
    if d == ZEROED or not s.proc.world.is_open(d) or not s.proc.world.readable(d):
        return False
    obj = s.proc.world.fds[d]
    assert obj is not None
    for virq, other in s.proc.irqfds:
        entry = s.proc.world.fds[other] if 0 <= other < len(s.proc.world.fds) else None
        if entry is not None and entry.open and entry.obj == obj.obj:
            s.proc.world.drain(d)
            if virq in s.proc.kvm_routes:
                s.proc.obs.append({"msi": virq})
            return True
    for fd, vector in s.proc.fd_handlers:
        if fd == d:
            ivshmem_vector_notify(s, vector)
            return True
    return False


def ivshmem_io_read(s: IVShmemState, addr: int) -> int:
    """Seed 251-278: the switch sees the address as given (no 0xfc mask)."""
    if addr == Reg.INTRMASK:
        return ivshmem_IntrMask_read(s)
    if addr == Reg.INTRSTATUS:
        return ivshmem_IntrStatus_read(s)
    if addr == Reg.IVPOSITION:
        return s.vm_id & 0xFFFFFFFF
    return 0


def memory_region_dispatch_write(
    s: IVShmemState, addr: int, value: int, size: int, ioeventfd_host: bool
) -> None:
    """``memory_region_dispatch_write`` for BAR0 (``impl`` sizes 4..4, seed 280-288).

    Ioeventfds match first, exactly (a 4-byte write of the datamatch at DOORBELL).  An access
    not aligned to its size is invalid and dropped; a narrower one is widened to 4 bytes at the
    same address; an 8-byte one is split into two 4-byte accesses.
    """
    if addr % size:
        return
    value &= (1 << (8 * size)) - 1  # a CPU access of `size` bytes carries no more bits
    if ioeventfd_host and size == 4 and addr == Reg.DOORBELL:
        for datamatch, d in s.ioeventfds:
            if datamatch == value:
                s.proc.event_notifier_set(d, "memory.c memory_region_dispatch_write_eventfds")
                if datamatch >> 16 == s.vm_id:
                    own_eventfd_ready(s, d)
                return
    if size == 8:
        ivshmem_io_write(s, addr, value & 0xFFFFFFFF)
        ivshmem_io_write(s, addr + 4, value >> 32)
    else:
        ivshmem_io_write(s, addr, value)


def memory_region_dispatch_read(s: IVShmemState, addr: int, size: int) -> int:
    """Reads widened to 4 bytes at the given address, or split for 8; unaligned ones read 0."""
    if addr % size:
        return 0
    if size == 8:
        return ivshmem_io_read(s, addr) | ivshmem_io_read(s, addr + 4) << 32
    return ivshmem_io_read(s, addr) & ((1 << (8 * size)) - 1)


# ---------------------------------------------------------------------------------------------
# MSI-X vectors (seed 290-398)


def ivshmem_vector_notify(s: IVShmemState, vector: int) -> None:
    """Seed 290-310: the fd handler of an own eventfd (non-irqfd delivery)."""
    if not msi_vector(s, vector, 293).pdev:
        raise Crash("null_deref", "IVSHMEM_COMMON(entry->pdev) with pdev NULL", 294)
    n = eventfd_slot(s, s.vm_id, vector, 296)
    if not s.proc.event_notifier_test_and_clear(n, 298):
        return
    if ivshmem_has_feature(s, IVSHMEM_MSI):
        if msix_enabled(s):
            msix_notify(s, vector)
    else:
        ivshmem_IntrStatus_write(s, 1)


def ivshmem_vector_unmask(dev: PCIDevice, vector: int) -> int:
    """Seed 312-340: the MSI-X use notifier (irqfd mode)."""
    assert isinstance(dev, IVShmemState)
    s = dev
    peer_at(s, s.vm_id, 316)
    v = msi_vector(s, vector, 321)
    variant = s.proc.variant
    if not v.pdev and not variant.before_e6a354be6ea0:
        s.proc.error_report(f"ivshmem: vector {vector} route does not exist")
        return 0 if variant.unmask_without_route_ok else -EINVAL
    if v.unmasked and not variant.before_089fd8037619:
        raise Abort("ivshmem_vector_unmask: Assertion `!v->unmasked' failed.", 325)
    if not v.pdev:
        # before e6a354be6ea0: kvm_irqchip_update_msi_route on a route that does not exist
        # fails, and kvm_irqchip_commit_routes asserts (seed 327-331).
        raise Abort("kvm_irqchip_commit_routes: Assertion `ret == 0' failed.", 331)
    # kvm_irqchip_update_msi_route + kvm_irqchip_commit_routes (seed 327-331) always succeed
    # for a route that exists.
    ret = s.proc.kvm_add_irqfd(eventfd_slot(s, s.vm_id, vector, 333), v.virq)
    if ret < 0:
        return ret
    if not variant.before_089fd8037619:
        s.msi_vectors[vector] = MSIVector(v.pdev, v.virq, True)
    return 0


def ivshmem_vector_mask(dev: PCIDevice, vector: int) -> None:
    """Seed 342-362: the MSI-X release notifier (irqfd mode)."""
    assert isinstance(dev, IVShmemState)
    s = dev
    peer_at(s, s.vm_id, 345)
    v = msi_vector(s, vector, 350)
    variant = s.proc.variant
    if not v.pdev and not variant.before_e6a354be6ea0:
        s.proc.error_report(f"ivshmem: vector {vector} route does not exist")
        return
    if not v.unmasked and not variant.before_089fd8037619:
        raise Abort("ivshmem_vector_mask: Assertion `v->unmasked' failed.", 354)
    ret = s.proc.kvm_remove_irqfd(eventfd_slot(s, s.vm_id, vector, 356), v.virq)
    if ret < 0:
        s.proc.error_report("remove_irqfd_notifier_gsi failed")
        return
    if not variant.before_089fd8037619:
        s.msi_vectors[vector] = MSIVector(v.pdev, v.virq, False)


def ivshmem_vector_poll(dev: PCIDevice, vector_start: int, vector_end: int) -> None:
    """Seed 364-386: the MSI-X poll notifier; masked vectors' events become pending bits."""
    assert isinstance(dev, IVShmemState)
    s = dev
    vector_end = min(vector_end, s.vectors)
    if s.proc.variant.vector_poll_connected_only:
        vector_end = min(vector_end, peer_at(s, s.vm_id, 376).nb_eventfds)
    for vector in range(vector_start, vector_end):
        peer_at(s, s.vm_id, 376)
        if not msix_is_masked(s, vector):
            continue
        if s.proc.event_notifier_test_and_clear(eventfd_slot(s, s.vm_id, vector, 382), 382):
            msix_set_pending(s, vector)


def watch_vector_notifier(s: IVShmemState, n: int, vector: int) -> None:
    """Seed 388-398: non-irqfd delivery through an fd handler on the own eventfd."""
    if msi_vector(s, vector, 393).pdev:
        raise Abort(
            "watch_vector_notifier: Assertion `!s->msi_vectors[vector].pdev' failed.", 393
        )
    s.msi_vectors[vector] = MSIVector(True, -1, False)
    s.proc.set_fd_handler(n, vector)
    if n != ZEROED and s.proc.world.is_open(n) and s.proc.world.always_readable(n):
        # A hostile server's /dev/null or file as an eventfd: poll() says readable at once and
        # forever, so the main loop runs the handler now (and then spins, to no effect).
        ivshmem_vector_notify(s, vector)


def stale_fd_handler_poll(proc: Proc, device: Device | None) -> None:
    """QEMU's main loop polling a handler that ``ivshmem_exit`` left behind (seed 1001-1006
    close the eventfd, 1012 frees ``msi_vectors``, the handler's opaque; nothing calls
    ``qemu_set_fd_handler(fd, NULL, ...)``).

    ``qemu_set_fd_handler`` (util/main-loop.c) → ``aio_set_fd_handler`` (util/aio-posix.c)
    adds the handler's ``GPollFD`` to the main loop's sources by *number*; every iteration
    polls it and ``aio_dispatch_handler`` runs the handler when ``G_IO_IN`` is set.  While the
    number is closed poll answers ``POLLNVAL``, which no handler takes (the loop only spins).
    Once the process's next descriptor gets that number (``open`` and SCM_RIGHTS give the
    lowest free) and is readable, a memfd or file at once, an eventfd when signalled,
    ``ivshmem_vector_notify`` runs with the freed ``&s->msi_vectors[vector]``: ``entry->pdev``
    is read from freed memory (seed 293), and QEMU dies (SIGSEGV on 7.2.22 and 10.0.13).  A
    handler whose device lives on (its eventfd closed by a peer's leave) is not this case:
    the model keeps that descriptor's identity (``properties/conform.py``, ABSTRACTIONS)."""
    own: set[int] = set()
    if device is not None:
        for _, peer in device.peers:
            own.update(peer.eventfds)
    for d, vector in proc.fd_handlers:
        if d == ZEROED or d in own or proc.world.is_open(d):
            continue
        n = proc.number_of(d)
        what = proc.world.readable_at(proc.endpoint, n)
        if what is not None:
            raise Crash("use_after_free",
                        f"ivshmem_vector_notify on msi_vectors[{vector}] freed at unplug: the "
                        f"closed eventfd's number is now a readable {what}", 293)


def ivshmem_add_eventfd(s: IVShmemState, posn: int, i: int) -> None:
    """Seed 400-408; KVM sees the ioeventfd once BAR0 is mapped (after realize)."""
    s.ioeventfds.append(((posn << 16) | i, eventfd_slot(s, posn, i, 407)))
    if not s.realizing and pci.bar_address(s.freeze(), 0) is not None:
        kvm_ioeventfds_commit(s)


def kvm_ioeventfds_commit(s: IVShmemState) -> None:
    """The memory core hands BAR0's ioeventfds to KVM while BAR0 is mapped (memory.c
    ``address_space_update_ioeventfds``): KVM_IOEVENTFD takes only an eventfd, and on
    anything else (a hostile server's pipe, file...) ``kvm_mem_ioeventfd_add`` prints the
    error and aborts.  Under TCG the ioeventfd is matched in software and nothing fails."""
    if not s.proc.kvm_msi_irqfd:
        return
    for _, d in s.ioeventfds:
        if d != ZEROED and s.proc.world.is_open(d) and s.proc.world.obj_of(d).kind != "eventfd":
            raise Abort("kvm_mem_ioeventfd_add: error adding ioeventfd: Invalid argument (22)",
                        "kvm-all.c kvm_mem_ioeventfd_add")


def ivshmem_del_eventfd(s: IVShmemState, posn: int, i: int) -> None:
    """Seed 410-418; ``memory_region_del_eventfd`` asserts the ioeventfd exists."""
    entry = ((posn << 16) | i, eventfd_slot(s, posn, i, 417))
    if entry not in s.ioeventfds:
        raise Abort("memory_region_del_eventfd: Assertion `i != mr->ioeventfd_nb' failed.", 412)
    s.ioeventfds.remove(entry)


# ---------------------------------------------------------------------------------------------
# Peers and interrupts (seed 420-509)


def close_peer_eventfds(s: IVShmemState, posn: int) -> None:
    """Seed 420-441: frees ``peers[posn].eventfds`` but leaves the pointer behind."""
    if not (posn >= 0 and posn < s.nb_peers):
        raise Abort(
            "close_peer_eventfds: Assertion `posn >= 0 && posn < s->nb_peers' failed.", 424
        )
    peer = peer_at(s, posn, 425)
    n = peer.nb_eventfds
    if ivshmem_has_feature(s, IVSHMEM_IOEVENTFD):
        for i in range(n):
            ivshmem_del_eventfd(s, posn, i)
    for i in range(n):
        d = eventfd_slot(s, posn, i, 436)
        if s.proc.variant.close_removes_fd_handler:
            s.proc.remove_fd_handler(d)
        s.proc.event_notifier_cleanup(d, 436)
    if s.proc.variant.keep_peer_eventfds_array:
        s.peers[posn] = Peer(0, (), peer.block)
        return
    s.peers[posn] = Peer(0, peer.eventfds, g_free_block(peer.block, f"peers[{posn}].eventfds",
                                                          439))


def resize_peers(s: IVShmemState, nb_peers: int) -> None:
    """Seed 443-458: new slots get ``vectors`` zeroed notifiers each."""
    if not nb_peers > s.nb_peers:
        raise Abort("resize_peers: Assertion `nb_peers > old_nb_peers' failed.", 448)
    s.peers_block = LIVE  # g_realloc
    s.nb_peers = nb_peers


def ivshmem_add_kvm_msi_virq(s: IVShmemState, vector: int, errp: Errp) -> None:
    """Seed 460-477."""
    if msi_vector(s, vector, 467).pdev:
        raise Abort(
            "ivshmem_add_kvm_msi_virq: Assertion `!s->msi_vectors[vector].pdev' failed.", 467
        )
    # kvm_irqchip_add_msi_route -> pci_get_msi_message -> msix_get_message
    if not msix_enabled(s):
        raise Abort("pci_get_msi_message: unknown interrupt type", "pci.c pci_get_msi_message")
    msix_get_message(s, vector)
    virq = s.proc.kvm_add_msi_route(vector)
    s.msi_vectors[vector] = MSIVector(True, virq, msi_vector(s, vector, 475).unmasked)


def setup_interrupt(s: IVShmemState, vector: int, errp: Errp) -> None:
    """Seed 479-509: how an own eventfd is wired to the guest."""
    peer_at(s, s.vm_id, 481)
    with_irqfd = s.proc.kvm_msi_irqfd and ivshmem_has_feature(s, IVSHMEM_MSI)
    if not with_irqfd:
        watch_vector_notifier(s, eventfd_slot(s, s.vm_id, vector, 491), vector)
    elif msix_enabled(s):
        if s.proc.variant.setup_interrupt_balanced and s.msix_vector_use_notifier is None:
            return  # irqfd setup failed at enable time: nothing to balance against
        err = Errp()
        ivshmem_add_kvm_msi_virq(s, vector, err)
        if err:
            errp.set(err.msg or "")
            return
        if not msix_is_masked(s, vector):
            n = eventfd_slot(s, s.vm_id, vector, 501)
            ret = s.proc.kvm_add_irqfd(n, msi_vector(s, vector, 502).virq)
            # TODO handle error (seed 503)
            if ret == 0 and s.proc.variant.setup_interrupt_balanced:
                v = s.msi_vectors[vector]
                s.msi_vectors[vector] = MSIVector(v.pdev, v.virq, True)
    # else: delayed until MSI-X is enabled, in write_config (seed 506)


# ---------------------------------------------------------------------------------------------
# Server messages (seed 511-653)


def process_msg_shmem(s: IVShmemState, fd: int, errp: Errp) -> None:
    """Seed 511-552."""
    if s.proc.variant.shm_message_needs_fd and fd < 0:
        errp.set("server didn't provide fd with shared memory message")
        return
    if s.bar2:
        errp.set("server sent unexpected shared memory message")
        s.proc.close(fd, 519)
        return
    if fd < 0 or not s.proc.world.is_open(fd):
        errp.set("can't determine size of shared memory sent by server: Bad file descriptor")
        s.proc.close(fd, 526)
        return
    obj = s.proc.world.obj_of(fd)
    size = obj.size if obj.kind in SIZED_FD_KINDS else 0  # fstat's st_size
    # Legacy cruft
    if s.legacy_size != SIZE_MAX:
        if size < s.legacy_size:
            errp.set(f"server sent only {size} bytes of shared memory")
            s.proc.close(fd, 537)
            return
        size = s.legacy_size
    # mmap the region and map into the BAR2 (memory_region_init_ram_from_fd, seed 544-549);
    # on failure the fd is not closed.
    error = qemu_ram_alloc_from_fd_error(size, obj.size if obj.kind in SIZED_FD_KINDS else 0,
                                         s.proc.variant)
    if error is None and obj.kind == "memfd-ro":
        # file_ram_alloc maps the fd shared and writable: EACCES on a read-only open file
        error = "unable to map backing store for guest RAM: Permission denied"
    if error:
        errp.set(error)
        return
    if s.proc.variant.bar2_size_checked and not is_power_of_2(size):
        errp.set(f"server sent shared memory of {size} bytes, not a power of 2")
        s.proc.close(fd, 544)
        return
    s.bar2 = "server"
    s.bar2_fd = fd
    s.bar2_size = size


def qemu_ram_alloc_from_fd_error(size: int, file_size: int, variant: Variant,
                                 region: str = "ivshmem.bar2") -> str | None:
    """The size checks of ``qemu_ram_alloc_from_fd`` / ``file_ram_alloc`` (exec.c, later
    physmem.c); ``region`` is the memory region's name, which QEMU 10.0's text carries."""
    aligned = -(-size // PAGE_SIZE) * PAGE_SIZE
    if 0 < file_size < aligned:
        if variant.ram_fd_size_error_with_offset:
            return (f"{region} backing store size {file_size:#x} is too small for 'size' "
                    f"option {aligned:#x} plus 'offset' option 0x0")
        return (
            f"backing store size {file_size:#x} does not match 'size' option {aligned:#x}"
        )
    if aligned < PAGE_SIZE:
        return (
            f"memory size {aligned:#x} must be equal to or larger than page size {PAGE_SIZE:#x}"
        )
    return None


def process_msg_disconnect(s: IVShmemState, posn: int, errp: Errp) -> None:
    """Seed 554-563."""
    if s.proc.variant.before_9db51b4d64de:
        # no 'invalid peer' check; cleanup only with ioeventfd=on
        if ivshmem_has_feature(s, IVSHMEM_IOEVENTFD):
            close_peer_eventfds(s, posn)
        return
    if posn >= s.nb_peers or posn == s.vm_id:
        errp.set(f"invalid peer {posn}")
        return
    close_peer_eventfds(s, posn)


def process_msg_connect(s: IVShmemState, posn: int, fd: int, errp: Errp) -> None:
    """Seed 565-595: the N-th connect message for a peer carries the fd of vector N-1."""
    peer = peer_at(s, posn, 575)
    if peer.nb_eventfds >= s.vectors and not s.proc.variant.before_1ee57de444ac:
        errp.set(f"Too many eventfd received, device has {s.vectors} vectors")
        s.proc.close(fd, 578)
        return
    vector = peer.nb_eventfds
    _check_eventfds_block(peer, posn, 584)
    if vector >= s.vectors:
        raise Crash("out_of_bounds", f"peers[{posn}].eventfds[{vector}] of {s.vectors}", 584)
    slots = peer.eventfds[:vector] + (ZEROED,) * max(0, vector - len(peer.eventfds))
    s.peers[posn] = Peer(vector + 1, (*slots, fd, *peer.eventfds[vector + 1:]), peer.block)
    if posn == s.vm_id:
        setup_interrupt(s, vector, errp)
        # TODO do we need to handle the error? (seed 589)
    if ivshmem_has_feature(s, IVSHMEM_IOEVENTFD):
        ivshmem_add_eventfd(s, posn, vector)


def process_msg(s: IVShmemState, msg: int, fd: int, errp: Errp) -> None:
    """Seed 597-621."""
    if msg < -1 or msg > IVSHMEM_MAX_PEERS:
        errp.set(f"server sent invalid message {msg}")
        if fd >= 0 or not s.proc.variant.shm_message_needs_fd:
            s.proc.close(fd, 603)
        return
    if msg == -1:
        process_msg_shmem(s, fd, errp)
        return
    if msg >= s.nb_peers:
        resize_peers(s, msg + 1)
    if fd >= 0:
        process_msg_connect(s, msg, fd, errp)
    else:
        process_msg_disconnect(s, msg, errp)


def ivshmem_can_receive(s: IVShmemState) -> int:
    """Seed 623-629: how many bytes the chardev may hand ``ivshmem_read``: what fills
    ``msg_buf``."""
    if not s.msg_buffered_bytes < 8:
        raise Abort("ivshmem_can_receive: Assertion `s->msg_buffered_bytes < "
                    "sizeof(s->msg_buf)' failed.", 627)
    return 8 - s.msg_buffered_bytes


def ivshmem_read(s: IVShmemState, buf: bytes) -> None:
    """Seed 631-653: the chardev hands over ``buf`` (at most what ``ivshmem_can_receive``
    allowed); once ``msg_buf`` holds 8 bytes they are a message, and the descriptor the
    chardev holds (``qemu_chr_fe_get_msgfd``, 647) comes with it."""
    size = len(buf)
    if not (size >= 0 and s.msg_buffered_bytes + size <= 8):
        raise Abort("ivshmem_read: Assertion `size >= 0 && s->msg_buffered_bytes + size <= "
                    "sizeof(s->msg_buf)' failed.", 638)
    s.msg_buf |= int.from_bytes(buf, "little") << 8 * s.msg_buffered_bytes
    s.msg_buffered_bytes += size
    if s.msg_buffered_bytes < 8:
        return
    msg = chardev.le64(s.msg_buf.to_bytes(8, "little"))
    s.msg_buf = 0
    s.msg_buffered_bytes = 0
    fd = chardev.qemu_chr_fe_get_msgfd(s.proc)
    if s.setup_stage and ivshmem_read_setup(s, msg, fd):
        return
    err = Errp()
    process_msg(s, msg, fd, err)
    if err.msg is not None:
        s.proc.error_report(err.msg)


# ---------------------------------------------------------------------------------------------
# Before 3a55fc0f2431 and 1309cf448a6d (2.6.0): the asynchronous setup of QEMU 2.5
# (hw/misc/ivshmem.c of 2.5: pci_ivshmem_realize, ivshmem_check_version, ivshmem_read)

INCOMPATIBLE_VERSION = ("incompatible version, you are connecting to a ivshmem-server using a "
                        "different protocol please check your setup")


def ivshmem_async_setup(s: IVShmemState, errp: Errp) -> None:
    """2.5's realize with a server: interrupts first, room for 16 peers, no ID yet (vm_id -1),
    BAR2 registered as an empty container of the device's size (the shared memory joins it
    when the server sends it), the chardev handed to ivshmem_check_version; realize returns
    without reading anything."""
    err = Errp()
    if ivshmem_setup_interrupts(s, err) < 0:
        errp.set("failed to initialize interrupts")
        return
    resize_peers(s, 16)
    s.vm_id = -1
    s.bar2_size = s.legacy_size
    s.setup_stage = "version"


def ivshmem_read_setup(s: IVShmemState, msg: int, fd: int) -> bool:
    """What 2.5 did with a message before the seed's ``process_msg`` sees it; True when it
    took the message.  The first message is the version (2.5 ivshmem_check_version: on a
    mismatch the chardev is deleted, the fd that came with it left open); then the first
    message without fd and a position >= 0 while vm_id is -1 is the device's ID (2.5
    ivshmem_read, after growing peers[] to hold it)."""
    if s.setup_stage == "version":
        if fd != -1 or msg != IVSHMEM_PROTOCOL_VERSION:
            s.proc.error_report(INCOMPATIBLE_VERSION)
            # qemu_chr_delete: the device stops reading (the model keeps the socket itself)
            s.chardev = False
            s.setup_stage = ""
            return True
        s.setup_stage = "messages"
        return True
    if fd == -1 and 0 <= msg <= IVSHMEM_MAX_PEERS and s.vm_id == -1:
        if msg >= s.nb_peers:
            resize_peers(s, msg + 1)
        s.vm_id = msg
        return True
    return False


INT64_MIN = -(2**63)


def ivshmem_recv_msg(s: IVShmemState, errp: Errp) -> tuple[int, int]:
    """Seed 655-676: a blocking read of one message from the chardev.  A null chardev has no
    synchronous read: ``qemu_chr_fe_read_all`` returns 0 at once, as on a closed socket."""
    data = None if s.chardev_null else chardev.qemu_chr_fe_read_all(s.proc, 8)
    if data is None:
        if s.proc.variant.recv_msg_eof_is_error:
            errp.set("read from server failed: Connection reset by peer")
            return INT64_MIN, -1
        # qemu_chr_fe_read_all returns 0 on a closed socket; the loop never ends.
        where = "a null chardev" if s.chardev_null else "a closed socket"
        raise Hang(f"ivshmem_recv_msg: read returns 0 forever on {where}", 672)
    msg = chardev.le64(data)
    fd = chardev.qemu_chr_fe_get_msgfd(s.proc)
    if s.proc.big_endian and s.proc.variant.before_51af0ec9fa72:
        msg = bswap64(msg)  # returned as read: no le64_to_cpu (seed 675)
    return msg, fd


def bswap64(value: int) -> int:
    """An int64 with its 8 bytes reversed: a little-endian message read as big-endian."""
    return int.from_bytes(value.to_bytes(8, "little", signed=True), "big", signed=True)


def ivshmem_recv_setup(s: IVShmemState, errp: Errp) -> None:
    """Seed 678-746: version, then ID, then anything until the shared memory arrives."""
    err = Errp()
    msg, fd = ivshmem_recv_msg(s, err)
    if err:
        errp.set(err.msg or "")
        return
    if msg != IVSHMEM_PROTOCOL_VERSION:
        errp.set(f"server sent version {msg}, expecting {IVSHMEM_PROTOCOL_VERSION}")
        if fd != -1 and s.proc.variant.recv_setup_closes_fd:
            s.proc.close(fd, 690)
        return
    if fd != -1:
        errp.set("server sent invalid version message")
        if s.proc.variant.recv_setup_closes_fd:
            s.proc.close(fd, 695)
        return
    if s.proc.variant.before_a3feb08639e7:
        recv_setup_any_order(s, errp)
        return
    msg, fd = ivshmem_recv_msg(s, err)
    if err:
        errp.set(err.msg or "")
        return
    if fd != -1 or msg < 0 or msg > IVSHMEM_MAX_PEERS:
        errp.set("server sent invalid ID message")
        if fd != -1 and s.proc.variant.recv_setup_closes_fd:
            s.proc.close(fd, 718)
        return
    s.vm_id = msg
    if s.proc.variant.resize_peers_for_own_id and s.vm_id >= s.nb_peers:
        resize_peers(s, s.vm_id + 1)
    recv_until_shm(s, errp)


def recv_until_shm(s: IVShmemState, errp: Errp, id_in_any_order: bool = False) -> None:
    """Seed 723-745: receive more messages until the shared memory.  With
    ``id_in_any_order`` (before a3feb08639e7), the first message without fd and with a
    position >= 0 while the ID is unknown is the ID, as 2.5's ivshmem_read told it apart."""
    err = Errp()
    while True:
        msg, fd = ivshmem_recv_msg(s, err)
        if err:
            errp.set(err.msg or "")
            return
        if id_in_any_order and fd == -1 and 0 <= msg <= IVSHMEM_MAX_PEERS and s.vm_id == -1:
            s.vm_id = msg
            continue
        process_msg(s, msg, fd, err)
        if err:
            errp.set(err.msg or "")
            return
        if msg == -1:
            break
    if not s.bar2:
        raise Abort("ivshmem_recv_setup: Assertion `s->ivshmem_bar2' failed.", 745)


def recv_setup_any_order(s: IVShmemState, errp: Errp) -> None:
    """Before a3feb08639e7 (2.6.0), after the version: messages in any order until the shared
    memory, the ID among them.  An own eventfd that comes before the ID is filed as another
    peer's: no interrupt is set up for it ("broke when an interrupt setup message arrived
    before it", seed 706-711)."""
    s.vm_id = -1
    recv_until_shm(s, errp, id_in_any_order=True)
    if not errp and s.vm_id == -1:
        errp.set("server sent no ID message")


# ---------------------------------------------------------------------------------------------
# Reset, interrupts setup, irqfd (seed 748-878)


def ivshmem_msix_vector_use(s: IVShmemState) -> None:
    """Seed 751-759: every vector is 'used', at init and after each reset."""
    for i in range(s.vectors):
        msix_vector_use(s, i)


def ivshmem_reset(s: IVShmemState) -> None:
    """Seed 763-774."""
    if not s.proc.variant.before_a40227911c4c:
        ivshmem_disable_irqfd(s)
    if not s.proc.variant.before_972ad21553fd:
        s.intrstatus = 0
        s.intrmask = 0
    if ivshmem_has_feature(s, IVSHMEM_MSI):
        ivshmem_msix_vector_use(s)


def pci_do_device_reset(s: IVShmemState) -> None:
    """The PCI core's part of a reset, after the device's own: INTx low, MSI-X reset."""
    pci_set_irq(s, 0)
    msix.msix_reset(s)


def ivshmem_setup_interrupts(s: IVShmemState, errp: Errp) -> int:
    """Seed 776-791; ``g_malloc0(0)`` is NULL, so ``vectors=0`` leaves msi_vectors NULL."""
    if s.proc.variant.before_47213eb11047 and not ivshmem_has_feature(s, IVSHMEM_MSI):
        pass  # allocated with the MSI-X table only: msi=off leaves it NULL
    elif not s.proc.variant.msi_vectors_before_recv_setup:
        s.msi_vectors_block = LIVE if s.vectors else NULL
    if ivshmem_has_feature(s, IVSHMEM_MSI):
        error = msix_init_exclusive_bar(s, s.vectors)
        if error:
            errp.set(error)
            return -1
        ivshmem_msix_vector_use(s)
    return 0


def ivshmem_remove_kvm_msi_virq(s: IVShmemState, vector: int) -> None:
    """Seed 793-805."""
    v = msi_vector(s, vector, 797)
    if not v.pdev:
        return
    s.proc.kvm_release_virq(v.virq)
    s.msi_vectors[vector] = MSIVector(False, v.virq, v.unmasked)


def ivshmem_enable_irqfd(s: IVShmemState) -> None:
    """Seed 807-835."""
    i = 0
    while i < peer_at(s, s.vm_id, 812).nb_eventfds:
        err = Errp()
        ivshmem_add_kvm_msi_virq(s, i, err)
        if err:
            s.proc.error_report(err.msg or "")
            break
        i += 1
    else:
        if msix_set_vector_notifiers(s, ivshmem_vector_unmask, ivshmem_vector_mask,
                                     ivshmem_vector_poll):
            s.proc.error_report("ivshmem: msix_set_vector_notifiers failed")
        else:
            return
    if s.proc.variant.before_0b88dd942073:
        return  # no rollback
    # undo:
    i -= 1
    while i >= 0:
        ivshmem_remove_kvm_msi_virq(s, i)
        i -= 1


def ivshmem_disable_irqfd(s: IVShmemState) -> None:
    """Seed 837-860."""
    if s.msix_vector_use_notifier is None and not s.proc.variant.before_0b88dd942073:
        return
    msix_unset_vector_notifiers(s)
    i = 0
    while i < peer_at(s, s.vm_id, 848).nb_eventfds:
        # MSI-X is already disabled here so msix_unset_vector_notifiers() didn't call our
        # release notifier.  Do it now to keep our masks and unmasks balanced. (seed 849-853)
        if msi_vector(s, i, 854).unmasked and not s.proc.variant.before_089fd8037619:
            ivshmem_vector_mask(s, i)
        ivshmem_remove_kvm_msi_virq(s, i)
        i += 1


def ivshmem_write_config(
    s: IVShmemState, enable: bool | None = None, maskall: bool | None = None
) -> None:
    """Seed 862-878: a config write to the MSI-X control word."""
    was_enabled = msix_enabled(s)
    # pci_default_write_config -> msix_write_config
    if enable is not None:
        s.msix_enable = enable
    if maskall is not None:
        s.msix_maskall = maskall
    msix.msix_write_config(s)
    is_enabled = msix_enabled(s)
    if s.proc.kvm_msi_irqfd:
        if not was_enabled and is_enabled:
            ivshmem_enable_irqfd(s)
        elif was_enabled and not is_enabled:
            ivshmem_disable_irqfd(s)


# ---------------------------------------------------------------------------------------------
# Realize, exit, migration (seed 880-1035)


MIGRATION_BLOCKER_TEXT = "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"


def ivshmem_common_realize(s: IVShmemState, errp: Errp) -> None:
    """Seed 880-968."""
    # IRQFD requires MSI
    if ivshmem_has_feature(s, IVSHMEM_IOEVENTFD) and not ivshmem_has_feature(s, IVSHMEM_MSI):
        errp.set("ioeventfd/irqfd requires MSI")
        return
    if s.proc.variant.before_d855e2756554 and s.master == "off":
        s.migration_blocker = True  # 2.5: a peer's blocker first, before anything can fail
    if s.hostmem:
        s.bar2 = "hostmem"
    else:
        if not s.chardev:  # plain/doorbell checked it before 6dc64780c2a8 (seed 1098, 1166)
            raise Abort("ivshmem_common_realize: Assertion `chr' failed.", 917)
        if s.proc.variant.before_3a55fc0f2431 and s.legacy_size != SIZE_MAX:
            err = Errp()
            ivshmem_async_setup(s, err)
            if err:
                errp.set(err.msg or "")
                return
            ivshmem_common_realize_end(s)
            return
        # we allocate enough space for 16 peers and grow as needed (seed 922-923)
        resize_peers(s, 16)
        if s.proc.variant.msi_vectors_before_recv_setup:
            s.msi_vectors_block = LIVE if s.vectors else NULL
        # Receive setup messages from server synchronously. (seed 925-930)
        err = Errp()
        ivshmem_recv_setup(s, err)
        if err:
            errp.set(err.msg or "")
            return
        if s.master == "on" and s.vm_id != 0 and not s.proc.variant.before_62a830b688a9:
            errp.set("master must connect to the server before any peers")
            return
        err = Errp()
        if ivshmem_setup_interrupts(s, err) < 0:
            errp.set(f"Failed to initialize interrupts: {err.msg}")
            return
    ivshmem_common_realize_end(s)


def ivshmem_common_realize_end(s: IVShmemState) -> None:
    """Seed 951-967: master=auto resolved, the peer-mode migration blocker, BAR2."""
    if s.master == "auto":
        s.master = "on" if s.vm_id == 0 else "off"
    if not ivshmem_is_master(s):
        s.migration_blocker = True
    # vmstate_register_ram, then the BAR (seed 966-967).  A memdev whose RAM block a device
    # that was unplugged registered still has its id (ivshmem_exit unregisters only while
    # BAR2 is mapped, seed 980-995): qemu_ram_set_idstr (physmem.c, 7.2 1745-1750) asserts.
    if s.backend is not None and s.backend.idstr:
        raise Abort("qemu_ram_set_idstr: Assertion `!new_block->idstr[0]' failed.",
                    "physmem.c qemu_ram_set_idstr")
    pci_register_bar(s, s.bar2_size)


def pci_register_bar(s: IVShmemState, size: int) -> None:
    """The size check of ``pci_register_bar`` (pci.c): a BAR's size is a power of 2.  A server
    may send a page-aligned shared memory of any size, and a memdev may have any size."""
    if is_power_of_2(size):
        return
    if s.proc.variant.bar_size_asserts:
        raise Abort("pci_register_bar: Assertion `is_power_of_2(size)' failed.",
                    "pci.c pci_register_bar")
    bar_type = PCI_BASE_ADDRESS_MEM_PREFETCH | (PCI_BASE_ADDRESS_MEM_TYPE_64 if s.bar2_64bit
                                                else 0)
    raise Exit(f"ERROR: PCI region size must be pow2 type={bar_type:#x}, size={size:#x}",
               "pci.c pci_register_bar")


def pci_qdev_unrealize(s: IVShmemState) -> None:
    """The PCI core's unrealize (hw/pci/pci.c ``pci_qdev_unrealize``: 7.2 lines 1210-1226; the
    seed era's has the same order): ``pci_unregister_io_regions`` takes every BAR out of the
    address space *before* the device's ``exit`` runs, so ``memory_region_is_mapped(bar2)``
    (seed 980) is false there.  Confirmed on QEMU 7.2.22: unplug prints no munmap error."""
    ivshmem_exit(s, bar2_mapped=False)


def ivshmem_exit(s: IVShmemState, bar2_mapped: bool) -> None:
    """Seed 970-1013, then the RAM block's own reclaim when the device is finalized."""
    if s.proc.variant.exit_disables_irqfd:
        ivshmem_disable_irqfd(s)
    s.migration_blocker = False
    if bar2_mapped and s.bar2 and not s.hostmem \
            and not s.proc.variant.exit_leaves_fd_to_ramblock:
        # munmap(addr, memory_region_size(...) == -1): a length of 0 (seed 985)
        s.proc.error_report("Failed to munmap shared memory Invalid argument")
        s.proc.close(s.bar2_fd, 991)
    if bar2_mapped or s.proc.variant.exit_unregisters_ram:
        # vmstate_unregister_ram (seed 994, physmem.c qemu_ram_unset_idstr).  Only a memdev's
        # RAM block outlives the device and can be named again (model.system._unplug).
        s.ram_unregistered = True
    if s.peers_block != NULL:
        for i in range(s.nb_peers):
            close_peer_eventfds(s, i)
            if s.proc.variant.keep_peer_eventfds_array:
                peer = s.peers.get(i) or s.default_peer()
                s.peers[i] = Peer(0, (), g_free_block(peer.block, f"peers[{i}].eventfds", 1005))
        s.peers_block = g_free_block(s.peers_block, "s->peers", 1005)
    if ivshmem_has_feature(s, IVSHMEM_MSI):
        msix_uninit_exclusive_bar(s)
    s.msi_vectors_block = g_free_block(s.msi_vectors_block, "s->msi_vectors", 1012)
    if s.bar2 == "server":
        # reclaim_ramblock (exec.c) closes the RAM block's fd: the one closed at seed 991.
        s.proc.close(s.bar2_fd, "exec.c reclaim_ramblock")
    s.bar2 = ""


def ivshmem_pre_load(s: IVShmemState) -> int:
    """Seed 1015-1025."""
    if not ivshmem_is_master(s):
        s.proc.error_report("'peer' devices are not migratable")
        return -EINVAL
    return 0


def ivshmem_post_load(s: IVShmemState) -> int:
    """Seed 1027-1035."""
    if ivshmem_has_feature(s, IVSHMEM_MSI):
        ivshmem_msix_vector_use(s)
    return 0


def ivshmem_migrate(s: IVShmemState) -> None:
    """Save on the source, load into a fresh destination device (seed 1015-1035, 1129-1142).

    Abstraction: the destination process was realized against the same server with the same
    id and eventfds (the model does not re-run setup), so what differs is exactly what a fresh
    process lacks: KVM routes and irqfds, and the vector notifiers, which only
    ``ivshmem_write_config`` installs and a vmstate load never calls.
    """
    saved = s.freeze_msix()
    intrstatus, intrmask = s.intrstatus, s.intrmask
    # The destination after realize: fresh KVM state, MSI-X disabled, notifiers unset.
    s.proc.kvm_routes.clear()
    s.proc.irqfds.clear()
    s.msix_vector_use_notifier = None
    s.msix_vector_release_notifier = None
    s.msix_vector_poll_notifier = None
    if s.proc.kvm_msi_irqfd:
        s.msi_vectors = {}  # setup_interrupt was delayed until MSI-X enable (seed 506)
    s.msix_enable = False
    s.msix_maskall = False
    s.msix_function_masked = True
    if ivshmem_pre_load(s) < 0:
        return
    # VMSTATE_PCI_DEVICE loads config space (the MSI-X control word) without write_config.
    s.msix_enable, s.msix_maskall = saved.enable, saved.maskall
    msix.msix_load(s, saved)
    s.intrstatus, s.intrmask = intrstatus, intrmask
    ivshmem_post_load(s)


# ---------------------------------------------------------------------------------------------
# Device types and their properties (seed 1080-1339)


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A device type: its property defaults (QEMU's names) and instance_init."""

    name: str
    defaults: tuple[tuple[str, object], ...]
    features: int  # set by instance_init (doorbell: MSI)
    legacy_size: int


DEVICE_TYPES: dict[str, DeviceType] = {
    # seed 1080-1085, 1087-1092
    "ivshmem-plain": DeviceType(
        "ivshmem-plain",
        (("master", "off"), ("memdev_size", None), ("memdev_backend", "memfd"),
         ("memdev_share", True), ("memdev", None)),
        0, 0,
    ),
    # seed 1144-1151, 1153-1160
    "ivshmem-doorbell": DeviceType(
        "ivshmem-doorbell",
        (("chardev", False), ("chardev_backend", "socket"), ("vectors", 1),
         ("ioeventfd", True), ("master", "off")),
        1 << IVSHMEM_MSI, SIZE_MAX,
    ),
    # seed 1256-1267
    "ivshmem": DeviceType(
        "ivshmem",
        (("chardev", False), ("chardev_backend", "socket"), ("size", None), ("vectors", 1),
         ("ioeventfd", False),
         ("msi", True), ("shm", None), ("role", None), ("use64", 1)),
        0, 0,
    ),
}


def qemu_strtosz_MiB(text: str) -> int | None:
    """``qemu_strtosz_MiB``: a number with an optional B/K/M/G/T/P/E suffix, MiB by default."""
    units = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50,
             "E": 1 << 60}
    body = text.strip()
    unit = MiB
    if body and body[-1].upper() in units:
        unit = units[body[-1].upper()]
        body = body[:-1]
    try:
        number = float(body)
    except ValueError:
        return None
    if number < 0:
        return None
    value = int(number * unit)
    if value >= 2**64:
        return None
    return value


def is_power_of_2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def realize_device(
    proc: Proc, device_type: str, props: dict[str, object], memdev: str = "m0-1",
    backend: MemBackend | None = None,
) -> tuple[IVShmemState | None, str | None]:
    """``-device TYPE,props``: property parsing, instance_init, then the type's realize.
    ``memdev`` is the id of the backend ``memdev_size`` creates; ``backend`` the existing one
    the ``memdev`` property names (``None`` if the process has none of that id).

    Returns the realized device, or ``None`` and QEMU's error text.
    """
    if device_type == "ivshmem" and proc.variant.no_legacy_device:
        return None, "'ivshmem' is not a valid device model name"
    dtype = DEVICE_TYPES[device_type]
    known = dict(dtype.defaults)
    for key in props:
        if key not in known:
            return None, f"Property '{device_type}.{key}' not found"
    values = {**known, **props}
    named = values.get("memdev")
    if named is not None and backend is None:
        # the link property's setter finds no object of that id (qom/object.c
        # object_resolve_link)
        return None, f"Device '{named}' not found"
    memdev_error = memory_backend_complete(values, proc.variant, memdev)
    if memdev_error is not None:
        return None, memdev_error
    features = dtype.features
    if device_type != "ivshmem-plain" and values["ioeventfd"]:
        features |= 1 << IVSHMEM_IOEVENTFD
    if device_type == "ivshmem" and values["msi"]:
        features |= 1 << IVSHMEM_MSI
    memdev_size = values.get("memdev_size")
    device = Device(
        type=device_type,
        features=features,
        vectors=_as_int(values.get("vectors")),
        master=str(values.get("master", "off")),
        chardev=bool(values.get("chardev", False)),
        hostmem=memdev_size is not None or backend is not None,
        # seed 906-908; inverted before b2b79a696052
        bar2_64bit=(device_type != "ivshmem" or bool(values.get("use64")))
        != proc.variant.before_b2b79a696052,
        bar2_size=backend.size if backend is not None else _as_int(memdev_size),
        legacy_size=dtype.legacy_size,
        hostmem_data=backend.data if backend is not None else (),
        memdev=backend.name if backend is not None else memdev if memdev_size is not None
        else "",
    )
    s = IVShmemState(proc, device)
    s.backend = backend
    s.realizing = True
    s.chardev_null = values.get("chardev_backend") == "null" and device.chardev
    errp = Errp()
    if device_type == "ivshmem-plain":
        ivshmem_plain_realize(s, errp)
    elif device_type == "ivshmem-doorbell":
        ivshmem_doorbell_realize(s, errp)
    else:
        ivshmem_realize(s, values, errp)
    s.realizing = False
    if errp:
        device_finalize(s)
        return None, errp.msg
    kvm_ioeventfds_commit(s)  # the guest maps BAR0
    return s, None


def device_finalize(s: IVShmemState) -> None:
    """A device whose realize failed is unparented and finalized (qdev ``device_add`` /
    ``qdev_device_add``).  The server's shared memory became a RAM region owned by the device
    (seed 544-549): it goes with it, and the RAM block closes the fd when it is reclaimed
    (physmem.c ``reclaim_ramblock``).  Nothing else is undone: the peers' eventfds stay open.
    Seen on QEMU 7.2.22: no descriptor is left after 'master must connect ...' on hot-plug."""
    if s.bar2 == "server" and s.proc.world.is_open(s.bar2_fd):
        s.proc.close(s.bar2_fd, "physmem.c reclaim_ramblock")
    if s.migration_blocker:  # registered, and no error path removes it (before d855e2756554)
        s.proc.blockers_left += 1


def memdev_created(device_type: str, props: dict[str, object], variant: Variant,
                   name: str) -> tuple[str, ...]:
    """The memory backend whose descriptor a realize leaves in the process: ``(backend,)`` or
    ``()``.  A memfd backend that fails keeps its memfd all the same:
    ``memfd_backend_memory_alloc`` (backends/hostmem-memfd.c 47-60, QEMU 7.2) does not close
    it when ``memory_region_init_ram_from_fd`` fails (seen on 7.2.22: one memfd more)."""
    if device_type != "ivshmem-plain" or "memdev_size" not in props:
        return ()
    values = {**dict(DEVICE_TYPES[device_type].defaults), **props}
    backend = str(values["memdev_backend"])
    if backend != "memfd" and memory_backend_complete(values, variant, name) is not None:
        return ()  # the object is finalized with its RAM block, which closes the file
    if backend == "ram" and values.get("memdev_share") and variant.shared_ram_is_memfd:
        return ("memfd",)  # shared anonymous RAM is a memfd since 10.0
    return (backend,)


def backend_created(device_type: str, props: dict[str, object], variant: Variant,
                    name: str) -> MemBackend | None:
    """The memory backend object ``memdev_size`` asked for, if its creation succeeded (a
    failed ``-object``/``object-add`` leaves no object of that id)."""
    if device_type != "ivshmem-plain" or "memdev_size" not in props:
        return None
    values = {**dict(DEVICE_TYPES[device_type].defaults), **props}
    if memory_backend_complete(values, variant, name) is not None:
        return None
    return MemBackend(name, _as_int(values["memdev_size"]))


def memdev_name(endpoint: int, created: int) -> str:
    """The id of the next memory backend of an endpoint's process (the QEMU backend uses the
    same ids): QEMU 10.0's errors name the region after it."""
    return f"m{endpoint}-{created + 1}"


def memory_backend_complete(values: dict[str, object], variant: Variant,
                            name: str) -> str | None:
    """Creating the memdev (``-object memory-backend-*``, before the device): a memfd backend
    maps its memfd through ``qemu_ram_alloc_from_fd``, which wants the file as large as the
    page-aligned size (physmem.c 7.2); the ram and file backends round the size up."""
    size = values.get("memdev_size")
    backend = values.get("memdev_backend")
    if not isinstance(size, int):
        return None
    if backend == "file" and variant.file_backend_whole_pages and size % PAGE_SIZE:
        return "backend 'memory-backend-file' memory size must be multiple of 4 KiB"
    if backend != "memfd":
        return None
    return qemu_ram_alloc_from_fd_error(size, size, variant, name)


def _as_int(value: object) -> int:
    return value if isinstance(value, int) else 0


def ivshmem_plain_realize(s: IVShmemState, errp: Errp) -> None:
    """Seed 1094-1109: a memdev another device of the process maps is busy (1101-1105); one
    that ``memdev_size`` just created is not."""
    if not s.hostmem and not s.proc.variant.before_6dc64780c2a8:
        errp.set("You must specify a 'memdev'")
        return
    if s.backend is not None and s.backend.mapped:
        errp.set(f"can't use already busy memdev: {s.backend.name}")
        return
    if s.proc.variant.bar2_size_checked and not is_power_of_2(s.bar2_size):
        errp.set(f"memdev size {s.bar2_size} is not a power of 2")
        return
    ivshmem_common_realize(s, errp)


def ivshmem_doorbell_realize(s: IVShmemState, errp: Errp) -> None:
    """Seed 1162-1172."""
    if not s.chardev and not s.proc.variant.before_6dc64780c2a8:
        errp.set("You must specify a 'chardev'")
        return
    ivshmem_common_realize(s, errp)


def ivshmem_realize(s: IVShmemState, values: dict[str, object], errp: Errp) -> None:
    """Seed 1286-1339: the legacy device."""
    s.proc.error_report(
        "ivshmem is deprecated, please use ivshmem-plain or ivshmem-doorbell instead"
    )
    shmobj = values.get("shm")
    if int(s.chardev) + int(shmobj is not None) != 1:
        errp.set("You must specify either 'shm' or 'chardev'")
        return
    sizearg = values.get("size")
    if sizearg is None:
        s.legacy_size = 4 * MiB
    else:
        size = qemu_strtosz_MiB(str(sizearg))
        if size is None or not is_power_of_2(size):
            errp.set(f"Invalid size {sizearg}")
            return
        s.legacy_size = size
    # check that role is reasonable
    role = values.get("role")
    if role is not None:
        if role == "peer":
            s.master = "off"
        elif role == "master":
            s.master = "on"
        else:
            errp.set("'role' must be 'peer' or 'master'")
            return
    else:
        s.master = "auto"
    if shmobj is not None:
        desugar_shm(s)
    s.interrupt_pin = 1
    ivshmem_common_realize(s, errp)


def desugar_shm(s: IVShmemState) -> None:
    """Seed 1269-1284: ``shm=NAME`` becomes a memory-backend-file on /dev/shm/NAME."""
    s.hostmem = True
    s.bar2_size = s.legacy_size

"""The frozen, hashable state (design §2).

A state is a tree of immutable slotted records (``Record``) and tuples: the explorer stores
millions of them, Hypothesis compares them, replay rebuilds them.  Field names are QEMU's
(``nb_eventfds``, ``msi_vectors``, ``msg_buffered_bytes``) so a reader can hold the seed beside
the model.

Heap blocks the seed allocates (``peers``, each ``peers[i].eventfds``, ``msi_vectors``, the MSI-X
table) carry a lifetime: ``NULL`` (never allocated), ``LIVE`` or ``FREED``.  Sparse arrays are
tuples of ``(index, value)`` pairs, sorted, default values left out: a device with ``vectors``
= 65537 costs as little as one with 1, and two equal arrays have one representation.

File descriptors: ``fds[d]`` is one descriptor, a process's handle on the object ``objects[o]``
(an eventfd or a shared-memory file).  Device fields hold descriptor numbers, as C holds ints.
A descriptor is reused only once nothing refers to it, so a stale number in device state keeps
meaning "that closed descriptor" and its use is caught.  Beside that identity each descriptor
has the POSIX number its process gave it (``Fd.number``, lowest free), which is what QEMU's main
loop watches: a handler left on a closed descriptor watches whatever takes its number next.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final, TypeVar

# Imported when run, not only for mypy: the mypyc build resolves field types at import.
from ivshmem_model.model.actions import Config
from ivshmem_model.model.variants import Variant


class Record:
    """The base of every state record.  Each record is a dataclass (for ``fields``,
    ``replace``, ``repr``) whose ``__init__`` and compared-fields tuple (``_compared``) are
    written out in its body, so that the mypyc build compiles them: a dataclass-generated
    ``__init__``, ``__eq__`` or ``__hash__`` stays interpreted there, and took a quarter of the
    compiled explorer's time (a ``Device`` built from keywords cost 21k instructions, native
    about 0.5k).  Fields are ``Final``: mypy rejects any assignment but the constructor's, and
    the compiled attributes cannot be set at all (the caches ``_hash``, ``_free`` and the
    uncompared ``config``/``variant`` are plain).  ``tests/test_state.py`` holds each
    ``__init__`` and ``_compared`` to the dataclass's fields.  Every ``__init__`` calls this
    one, which starts the hash cache (``_hash``: a slot, not a field, or mypy would have every
    field after it take a default).

    Pickled as its class, its constructor's arguments and its caches (``_hash``, ``_free``:
    Ray's partitions use the hash a state carries)."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = 0  # not yet computed (``__hash__``)

    def _compared(self) -> tuple[Any, ...]:
        """The compared fields, in order: what ``==`` and ``hash`` read."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Record) and type(other) is type(self)
            and self._compared() == other._compared())

    def __hash__(self) -> int:
        """Computed once and kept in ``_hash``: states are hashed by the explorer's seen set
        again and again, and an unchanged record is shared by consecutive states (a new
        device's hash reads every peer, vector and MSI-X record it holds)."""
        if not self._hash:
            self._hash = hash(self._compared()) or 1
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        inits, others = _layout(type(self))  # Ray pickles every record of every state it moves
        values = tuple(getattr(self, name) for name in inits)
        caches = (*((name, getattr(self, name)) for name in others), ("_hash", self._hash))
        return (_rebuilt, (type(self), values, caches))


# Each record class's ``__init__`` fields and its other fields (caches), by name, in order.
_LAYOUTS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _layout(cls: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of ``cls``'s ``__init__`` fields and of its other fields, read once per class
    (``__reduce__``, ``replace``)."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = _LAYOUTS[cls] = (tuple(f.name for f in fields(cls) if f.init),
                                  tuple(f.name for f in fields(cls) if not f.init))
    return layout


RecordT = TypeVar("RecordT", bound=Record)


def _rebuilt(cls: Any, values: tuple[Any, ...], caches: tuple[tuple[str, Any], ...]) -> Any:
    record = cls(*values)
    for name, value in caches:
        object.__setattr__(record, name, value)
    return record


def _cache_slot() -> Any:
    """A cache kept beside the fields: not constructed, compared or shown."""
    return field(default=0, init=False, repr=False, compare=False)


# Heap-block lifetimes.
NULL = "null"
LIVE = "live"
FREED = "freed"

# A descriptor owned by nobody yet: in a socket buffer on its way to an endpoint.
IN_FLIGHT = -1
# The descriptor number of a zeroed EventNotifier (g_new0): fd 0, the process's stdin.
ZEROED = -1

# Feature bits (seed 43-44).
IVSHMEM_IOEVENTFD = 0
IVSHMEM_MSI = 1


# Every record: ``@dataclass(slots=True, init=False, eq=False)``, ``Final`` fields, and its own
# ``__init__`` and ``_compared`` (see ``Record``).  A default lives in the ``__init__``.


@dataclass(slots=True, init=False, eq=False)
class Fate(Record):
    """How an endpoint's process ended: ``aborted`` (a C assert), ``crashed`` (a bad memory
    access: ``null_deref``, ``use_after_free``, ``double_free``, ``out_of_bounds``) or
    ``failed`` (realize error or exit(1), with QEMU's text)."""

    kind: Final[str]
    reason: Final[str]
    line: Final[int]  # the seed line; 0 when the failing code is elsewhere
    where: Final[str]  # that other place, e.g. "msix.c msix_fire_vector_notifier"

    def __init__(self, kind: str, reason: str, line: int = 0, where: str = "") -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.kind = kind
        self.reason = reason
        self.line = line
        self.where = where

    def _compared(self) -> tuple[Any, ...]:
        return (self.kind, self.reason, self.line, self.where)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fate": self.kind, "reason": self.reason}
        if self.line:
            out["line"] = self.line
        if self.where:
            out["where"] = self.where
        return out


@dataclass(slots=True, init=False, eq=False)
class Fault(Record):
    """A violation that does not end the process (a write to a closed descriptor, a read of
    stdin through a zeroed notifier, a close of a closed descriptor).  Sticky: kept in the
    endpoint so that state properties can judge it."""

    kind: Final[str]
    detail: Final[str]
    line: Final[int]  # the seed line; 0 when elsewhere (see ``where``)
    where: Final[str]

    def __init__(self, kind: str, detail: str, line: int, where: str = "") -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.kind = kind
        self.detail = detail
        self.line = line
        self.where = where

    def _compared(self) -> tuple[Any, ...]:
        return (self.kind, self.detail, self.line, self.where)


@dataclass(slots=True, init=False, eq=False)
class FileObject(Record):
    """A kernel object: an eventfd (``count`` = its counter, saturated at 1) or shared memory
    (``size`` bytes; ``data`` its non-zero bytes as sorted ``(offset, byte)`` pairs)."""

    kind: Final[str]
    count: Final[int]
    size: Final[int]
    data: Final[tuple[tuple[int, int], ...]]

    def __init__(self, kind: str, count: int = 0, size: int = 0,
                 data: tuple[tuple[int, int], ...] = ()) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.kind = kind
        self.count = count
        self.size = size
        self.data = data

    def _compared(self) -> tuple[Any, ...]:
        return (self.kind, self.count, self.size, self.data)


@dataclass(slots=True, init=False, eq=False)
class Fd(Record):
    """One descriptor: ``owner`` is an endpoint (its process) or ``IN_FLIGHT``."""

    obj: Final[int]
    owner: Final[int]
    open: Final[bool]
    # The POSIX number in the owner's process, counted from the first the model knows of
    # (QEMU's own descriptors are opened at launch, below): the lowest free one when the
    # descriptor came; -1 in flight.  A closed descriptor keeps it, so a main-loop handler
    # left on it watches whatever descriptor takes the number next (model.proc.World.number).
    number: Final[int]

    def __init__(self, obj: int, owner: int, open: bool = True, number: int = -1) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.obj = obj
        self.owner = owner
        self.open = open
        self.number = number

    def _compared(self) -> tuple[Any, ...]:
        return (self.obj, self.owner, self.open, self.number)


@dataclass(slots=True, init=False, eq=False)
class Peer(Record):
    """``Peer`` (seed 72-75): ``eventfds`` lists the descriptors stored in slots 0, 1, ...;
    slots beyond the tuple are zeroed (``g_new0``); ``block`` is the array's lifetime."""

    nb_eventfds: Final[int]
    eventfds: Final[tuple[int, ...]]
    block: Final[str]

    def __init__(self, nb_eventfds: int = 0, eventfds: tuple[int, ...] = (),
                 block: str = LIVE) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.nb_eventfds = nb_eventfds
        self.eventfds = eventfds
        self.block = block

    def _compared(self) -> tuple[Any, ...]:
        return (self.nb_eventfds, self.eventfds, self.block)


DEFAULT_PEER = Peer()


@dataclass(slots=True, init=False, eq=False)
class MSIVector(Record):
    """``MSIVector`` (seed 77-81); ``virq`` is the KVM route, named by the vector it serves."""

    pdev: Final[bool]
    virq: Final[int]
    unmasked: Final[bool]

    def __init__(self, pdev: bool = False, virq: int = -1, unmasked: bool = False) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.pdev = pdev
        self.virq = virq
        self.unmasked = unmasked

    def _compared(self) -> tuple[Any, ...]:
        return (self.pdev, self.virq, self.unmasked)


DEFAULT_MSI_VECTOR = MSIVector()


@dataclass(slots=True, init=False, eq=False)
class Msix(Record):
    """The PCI core's MSI-X state (``hw/pci/msix.c``): bit masks indexed by vector."""

    present: Final[bool]
    entries_nr: Final[int]
    table: Final[str]  # lifetime of msix_table/msix_pba/msix_entry_used
    enable: Final[bool]  # MSI-X Enable bit of the control word
    maskall: Final[bool]  # Function Mask bit
    function_masked: Final[bool]  # dev->msix_function_masked, stored as the C code stores it
    masked: Final[int]  # per-entry Mask bit of the vector-control word
    pending: Final[int]  # the PBA
    used: Final[int]  # msix_entry_used[v] != 0
    notifiers: Final[bool]  # use/release notifiers installed
    poll_notifier: Final[bool]

    def __init__(self, present: bool = False, entries_nr: int = 0, table: str = NULL,
                 enable: bool = False, maskall: bool = False, function_masked: bool = True,
                 masked: int = 0, pending: int = 0, used: int = 0, notifiers: bool = False,
                 poll_notifier: bool = False) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.present = present
        self.entries_nr = entries_nr
        self.table = table
        self.enable = enable
        self.maskall = maskall
        self.function_masked = function_masked
        self.masked = masked
        self.pending = pending
        self.used = used
        self.notifiers = notifiers
        self.poll_notifier = poll_notifier

    def _compared(self) -> tuple[Any, ...]:
        return (self.present, self.entries_nr, self.table, self.enable, self.maskall,
                self.function_masked, self.masked, self.pending, self.used, self.notifiers,
                self.poll_notifier)


DEFAULT_MSIX = Msix()

# Where the guest driver places the BARs (the QEMU backend programs the same addresses).
BAR0_ADDR = 0xFEBF_0000  # registers, 256 B
BAR1_ADDR = 0xFEB0_0000  # MSI-X table and PBA
BAR2_ADDR = 0x8000_0000  # shared memory
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4


@dataclass(slots=True, init=False, eq=False)
class PciConfig(Record):
    """The guest-writable part of the device's PCI configuration space (``hw/pci/pci.c``):
    the command register and the BAR registers as last written (``bars[i]`` is offset
    ``0x10 + 4*i``), and the interrupt line.  The defaults are what the guest driver writes
    after realize and after every reset: BARs at the addresses above, memory decoding and bus
    mastering on."""

    command: Final[int]
    bars: Final[tuple[int, int, int, int]]
    interrupt_line: Final[int]

    def __init__(self, command: int = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
                 bars: tuple[int, int, int, int] = (BAR0_ADDR, BAR1_ADDR, BAR2_ADDR, 0),
                 interrupt_line: int = 0) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.command = command
        self.bars = bars
        self.interrupt_line = interrupt_line

    def _compared(self) -> tuple[Any, ...]:
        return (self.command, self.bars, self.interrupt_line)


DEFAULT_PCI = PciConfig()


@dataclass(slots=True, init=False, eq=False)
class Device(Record):
    """``IVShmemState`` (seed 83-122), the part the model needs."""

    type: Final[str]
    features: Final[int]
    vectors: Final[int]
    vm_id: Final[int]
    master: Final[str]
    intrmask: Final[int]
    intrstatus: Final[int]
    irq_level: Final[int]  # INTx line as last set by pci_set_irq
    interrupt_pin: Final[int]
    chardev: Final[bool]
    hostmem: Final[bool]
    legacy_size: Final[int]  # SIZE_MAX is -1
    peers_block: Final[str]
    nb_peers: Final[int]
    peers: Final[tuple[tuple[int, Peer], ...]]
    msi_vectors_block: Final[str]
    msi_vectors: Final[tuple[tuple[int, MSIVector], ...]]
    bar2: Final[str]  # what s->ivshmem_bar2 points to: "", "hostmem" or "server"
    bar2_fd: Final[int]  # descriptor mapped as BAR2 (server mode)
    bar2_size: Final[int]
    msg_buffered_bytes: Final[int]
    # msg_buf's bytes so far, as an unsigned little-endian number (0 when none): they may
    # belong to messages already gone from the socket (model.chardev)
    msg_buf: Final[int]
    migration_blocker: Final[bool]
    ioeventfds: Final[tuple[tuple[int, int], ...]]  # (datamatch, descriptor), sorted
    msix: Final[Msix]
    pci: Final[PciConfig]
    bar2_64bit: Final[bool]  # PCI_BASE_ADDRESS_MEM_TYPE_64 (seed 906-908)
    hostmem_data: Final[tuple[tuple[int, int], ...]]  # the memdev's non-zero bytes
    # Before 3a55fc0f2431, setup went on after realize: "version" (the next message goes to
    # ivshmem_check_version), then "messages" (ivshmem_read); "" once synchronous (the seed).
    setup_stage: Final[str]
    memdev: Final[str]  # the id of the memory backend it maps (``memdev``), "" for none

    def __init__(
        self, type: str, features: int, vectors: int, vm_id: int = 0, master: str = "off",
        intrmask: int = 0, intrstatus: int = 0, irq_level: int = 0, interrupt_pin: int = 0,
        chardev: bool = False, hostmem: bool = False, legacy_size: int = -1,
        peers_block: str = NULL, nb_peers: int = 0, peers: tuple[tuple[int, Peer], ...] = (),
        msi_vectors_block: str = NULL, msi_vectors: tuple[tuple[int, MSIVector], ...] = (),
        bar2: str = "", bar2_fd: int = -1, bar2_size: int = 0, msg_buffered_bytes: int = 0,
        msg_buf: int = 0, migration_blocker: bool = False,
        ioeventfds: tuple[tuple[int, int], ...] = (), msix: Msix = DEFAULT_MSIX,
        pci: PciConfig = DEFAULT_PCI, bar2_64bit: bool = True,
        hostmem_data: tuple[tuple[int, int], ...] = (), setup_stage: str = "", memdev: str = "",
    ) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.type = type
        self.features = features
        self.vectors = vectors
        self.vm_id = vm_id
        self.master = master
        self.intrmask = intrmask
        self.intrstatus = intrstatus
        self.irq_level = irq_level
        self.interrupt_pin = interrupt_pin
        self.chardev = chardev
        self.hostmem = hostmem
        self.legacy_size = legacy_size
        self.peers_block = peers_block
        self.nb_peers = nb_peers
        self.peers = peers
        self.msi_vectors_block = msi_vectors_block
        self.msi_vectors = msi_vectors
        self.bar2 = bar2
        self.bar2_fd = bar2_fd
        self.bar2_size = bar2_size
        self.msg_buffered_bytes = msg_buffered_bytes
        self.msg_buf = msg_buf
        self.migration_blocker = migration_blocker
        self.ioeventfds = ioeventfds
        self.msix = msix
        self.pci = pci
        self.bar2_64bit = bar2_64bit
        self.hostmem_data = hostmem_data
        self.setup_stage = setup_stage
        self.memdev = memdev

    def _compared(self) -> tuple[Any, ...]:
        return (self.type, self.features, self.vectors, self.vm_id, self.master, self.intrmask,
                self.intrstatus, self.irq_level, self.interrupt_pin, self.chardev, self.hostmem,
                self.legacy_size, self.peers_block, self.nb_peers, self.peers,
                self.msi_vectors_block, self.msi_vectors, self.bar2, self.bar2_fd,
                self.bar2_size, self.msg_buffered_bytes, self.msg_buf, self.migration_blocker,
                self.ioeventfds, self.msix, self.pci, self.bar2_64bit, self.hostmem_data,
                self.setup_stage, self.memdev)



@dataclass(slots=True, init=False, eq=False)
class ClientPeer(Record):
    """A peer as the contrib client records it: its id and the descriptors of its vectors."""

    id: Final[int]
    vectors: Final[tuple[int, ...]]

    def __init__(self, id: int, vectors: tuple[int, ...]) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.id = id
        self.vectors = vectors

    def _compared(self) -> tuple[Any, ...]:
        return (self.id, self.vectors)


@dataclass(slots=True, init=False, eq=False)
class Client(Record):
    """The contrib client's view (``ivshmem-client``): setup progress, own id, shm, peers."""

    stage: Final[int]  # 0: expects version, 1: expects id, 2: expects shm, 3: running
    id: Final[int]
    shm_fd: Final[int]
    local: Final[tuple[int, ...]]  # own vectors
    peers: Final[tuple[ClientPeer, ...]]

    def __init__(self, stage: int = 0, id: int = -1, shm_fd: int = -1,
                 local: tuple[int, ...] = (), peers: tuple[ClientPeer, ...] = ()) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.stage = stage
        self.id = id
        self.shm_fd = shm_fd
        self.local = local
        self.peers = peers

    def _compared(self) -> tuple[Any, ...]:
        return (self.stage, self.id, self.shm_fd, self.local, self.peers)


@dataclass(slots=True, init=False, eq=False)
class MemBackend(Record):
    """A memory backend object (``-object memory-backend-*,id=NAME``, backends/hostmem.c) as a
    device sees it: its size; ``mapped``, ``host_memory_backend_is_mapped`` (a device maps it:
    set by realize, seed 914, cleared by ``ivshmem_exit``, seed 997-999); ``idstr``, whether
    its RAM block has an id (``vmstate_register_ram``, seed 966, physmem.c
    ``qemu_ram_set_idstr``; ``ivshmem_exit`` unsets it only while BAR2 is mapped, seed
    980-995, which it never is at unplug, or always under ``exit_unregisters_ram``);
    ``data``, its bytes while no device maps it (while one does they are
    ``Device.hostmem_data``)."""

    name: Final[str]
    size: Final[int]
    mapped: Final[bool]
    idstr: Final[bool]
    data: Final[tuple[tuple[int, int], ...]]

    def __init__(self, name: str, size: int, mapped: bool = False, idstr: bool = False,
                 data: tuple[tuple[int, int], ...] = ()) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.name = name
        self.size = size
        self.mapped = mapped
        self.idstr = idstr
        self.data = data

    def _compared(self) -> tuple[Any, ...]:
        return (self.name, self.size, self.mapped, self.idstr, self.data)


@dataclass(slots=True, init=False, eq=False)
class Endpoint(Record):
    """One process: a QEMU (``role`` "qemu", maybe with a device) or a plain client."""

    connected: Final[bool]
    role: Final[str]  # "", "qemu" or "client"
    fate: Final[Fate | None]
    device: Final[Device | None]
    unplugged: Final[bool]
    client: Final[Client | None]
    kvm_routes: Final[tuple[int, ...]]  # multiset of virqs (one per route added)
    irqfds: Final[tuple[tuple[int, int], ...]]  # (virq, descriptor)
    fd_handlers: Final[tuple[tuple[int, int], ...]]  # (descriptor, vector): qemu_set_fd_handler
    faults: Final[tuple[Fault, ...]]
    launched: Final[bool]  # a QEMU process runs (it realized a device, or tried a hot-plug)
    memdevs: Final[tuple[str, ...]]  # memory backends created in it (memdev_backend), in order
    # migration blockers that devices which failed to realize left registered (before
    # d855e2756554); the live device's own is Device.migration_blocker
    stale_blockers: Final[int]
    # The socket chardev, which outlives the device (model.chardev): bytes of the channel's
    # first message already read, and the descriptor received and not yet taken (-1: none).
    chr_read: Final[int]
    chr_fd: Final[int]
    # the memory backend objects its realizes created, which a later realize in the same
    # process may name (``memdev``)
    backends: Final[tuple[MemBackend, ...]]
    # the POSIX numbers of the memory backends' own descriptors (memdevs that hold one: a
    # memfd or a file), which stay open for the life of the process
    memdev_fds: Final[tuple[int, ...]]

    def __init__(
        self, connected: bool = False, role: str = "", fate: Fate | None = None,
        device: Device | None = None, unplugged: bool = False, client: Client | None = None,
        kvm_routes: tuple[int, ...] = (), irqfds: tuple[tuple[int, int], ...] = (),
        fd_handlers: tuple[tuple[int, int], ...] = (), faults: tuple[Fault, ...] = (),
        launched: bool = False, memdevs: tuple[str, ...] = (), stale_blockers: int = 0,
        chr_read: int = 0, chr_fd: int = -1, backends: tuple[MemBackend, ...] = (),
        memdev_fds: tuple[int, ...] = (),
    ) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.connected = connected
        self.role = role
        self.fate = fate
        self.device = device
        self.unplugged = unplugged
        self.client = client
        self.kvm_routes = kvm_routes
        self.irqfds = irqfds
        self.fd_handlers = fd_handlers
        self.faults = faults
        self.launched = launched
        self.memdevs = memdevs
        self.stale_blockers = stale_blockers
        self.chr_read = chr_read
        self.chr_fd = chr_fd
        self.backends = backends
        self.memdev_fds = memdev_fds

    def _compared(self) -> tuple[Any, ...]:
        return (self.connected, self.role, self.fate, self.device, self.unplugged, self.client,
                self.kvm_routes, self.irqfds, self.fd_handlers, self.faults, self.launched,
                self.memdevs, self.stale_blockers, self.chr_read, self.chr_fd, self.backends,
                self.memdev_fds)



@dataclass(slots=True, init=False, eq=False)
class ServerPeer(Record):
    """A peer of the contrib server: its endpoint, id and the objects of its eventfds."""

    endpoint: Final[int]
    id: Final[int]
    eventfds: Final[tuple[int, ...]]

    def __init__(self, endpoint: int, id: int, eventfds: tuple[int, ...]) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.endpoint = endpoint
        self.id = id
        self.eventfds = eventfds

    def _compared(self) -> tuple[Any, ...]:
        return (self.endpoint, self.id, self.eventfds)


@dataclass(slots=True, init=False, eq=False)
class Server(Record):
    up: Final[bool]
    cur_id: Final[int]
    shm_obj: Final[int]
    peers: Final[tuple[ServerPeer, ...]]
    # Why the server shut itself down (the contrib server's debug text, S:165-186 through
    # S:414-419 and M:172-175); "" while it runs and after a ``server_exit``.
    failure: Final[str]

    def __init__(self, up: bool = True, cur_id: int = 0, shm_obj: int = -1,
                 peers: tuple[ServerPeer, ...] = (), failure: str = "") -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.up = up
        self.cur_id = cur_id
        self.shm_obj = shm_obj
        self.peers = peers
        self.failure = failure

    def _compared(self) -> tuple[Any, ...]:
        return (self.up, self.cur_id, self.shm_obj, self.peers, self.failure)



Message = tuple[int, int]  # (value, descriptor or -1)


@dataclass(slots=True, init=False, eq=False)
class SystemState(Record):
    server: Final[Server]
    endpoints: Final[tuple[Endpoint, ...]]
    channels: Final[tuple[tuple[Message, ...], ...]]
    fds: Final[tuple[Fd | None, ...]]
    objects: Final[tuple[FileObject | None, ...]]
    # Not compared: the same in every state of a search (not Final: a dataclass field that
    # sets ``compare`` cannot be, for mypy; nothing assigns them but ``__init__``).
    config: Config = field(compare=False, repr=False)
    variant: Variant = field(compare=False, repr=False)
    # Free-slot hints of ``fds`` and ``objects`` (model.proc.World): every slot below is taken.
    _free: tuple[int, int] = field(default=(0, 0), init=False, repr=False, compare=False)

    def __init__(self, server: Server, endpoints: tuple[Endpoint, ...],
                 channels: tuple[tuple[Message, ...], ...], fds: tuple[Fd | None, ...],
                 objects: tuple[FileObject | None, ...], config: Config,
                 variant: Variant) -> None:
        Record.__init__(self)  # (not super(): slots=True makes a new class)
        self.server = server
        self.endpoints = endpoints
        self.channels = channels
        self.fds = fds
        self.objects = objects
        self.config = config
        self.variant = variant
        self._free = (0, 0)

    def _compared(self) -> tuple[Any, ...]:
        return (self.server, self.endpoints, self.channels, self.fds, self.objects)



def replace(record: RecordT, **changes: Any) -> RecordT:
    """``dataclasses.replace`` for the state records, about five times cheaper on the build
    (the model replaces a record every few steps): the names of a class's ``__init__`` fields
    are read once, the record is built from its positional arguments.  mypy does not check
    ``changes`` against the fields, as it does for ``dataclasses.replace``; an unknown name
    is a ``TypeError`` here and a wrong type one in the build's ``__init__``."""
    cls: Any = type(record)
    names = _layout(cls)[0]
    args = []
    used = 0
    for name in names:
        if name in changes:
            args.append(changes[name])
            used += 1
        else:
            args.append(getattr(record, name))
    if used != len(changes):
        raise TypeError(f"{cls.__name__} has no field {sorted(set(changes) - set(names))}")
    replaced: RecordT = cls(*args)
    return replaced


def sparse_get(pairs: tuple[tuple[int, Any], ...], index: int, default: Any) -> Any:
    for key, value in pairs:
        if key == index:
            return value
    return default

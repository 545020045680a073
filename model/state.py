"""The frozen, hashable state (design §2).

A state is a tree of frozen slotted dataclasses and tuples: the explorer stores millions of them,
Hypothesis compares them, replay rebuilds them.  Field names are QEMU's (``nb_eventfds``,
``msi_vectors``, ``msg_buffered_bytes``) so a reader can hold the seed beside the model.

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

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

# Imported when run, not only for mypy: the mypyc build resolves field types at import.
from ivshmem_model.model.actions import Config
from ivshmem_model.model.variants import Variant


def _cached_hash(record: Any, compared: Callable[[Any], tuple[Any, ...]]) -> int:
    """The hash of ``record``, computed once and kept in its ``_hash`` (0: not yet): states
    are hashed by the explorer's seen set again and again, and an unchanged endpoint or
    device is shared by consecutive states.  ``compared`` gets the compared fields as one
    tuple (``_compared``).  Each cached record's ``__hash__``, in its class body, reads
    ``_hash`` first and calls this only once (a decorator assigning ``__hash__`` would not
    compile with mypyc; the dataclass keeps an explicit one)."""
    h: int = hash(compared(record)) or 1
    object.__setattr__(record, "_hash", h)
    return h


def _compared(cls: Any) -> Callable[[Any], tuple[Any, ...]]:
    """The compared fields of the dataclass ``cls`` as one tuple (``attrgetter`` of two or
    more names returns a tuple)."""
    names = tuple(f.name for f in fields(cls) if f.compare)
    assert len(names) > 1, cls
    return operator.attrgetter(*names)


def _hash_slot() -> Any:
    return field(default=0, init=False, repr=False, compare=False)


class Record:
    """The base of every state record: pickled as its class, its constructor's arguments and
    its caches (``_hash``, ``_free``: Ray's partitions use the hash a state carries), which a
    native class of the mypyc build needs (it has neither the dataclass's ``__setstate__``
    nor a field that can be set but through ``object.__setattr__``)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        record: Any = self
        values: list[Any] = []
        caches: list[tuple[str, Any]] = []
        for f in fields(record):  # one pass: Ray pickles every record of every state it moves
            if f.init:
                values.append(getattr(self, f.name))
            else:
                caches.append((f.name, getattr(self, f.name)))
        return (_rebuilt, (type(self), tuple(values), tuple(caches)))


def _rebuilt(cls: Any, values: tuple[Any, ...], caches: tuple[tuple[str, Any], ...]) -> Any:
    record = cls(*values)
    for name, value in caches:
        object.__setattr__(record, name, value)
    return record


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


@dataclass(frozen=True, slots=True)
class Fate(Record):
    """How an endpoint's process ended: ``aborted`` (a C assert), ``crashed`` (a bad memory
    access: ``null_deref``, ``use_after_free``, ``double_free``, ``out_of_bounds``) or
    ``failed`` (realize error or exit(1), with QEMU's text)."""

    kind: str
    reason: str
    line: int = 0  # the seed line; 0 when the failing code is elsewhere
    where: str = ""  # that other place, e.g. "msix.c msix_fire_vector_notifier"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fate": self.kind, "reason": self.reason}
        if self.line:
            out["line"] = self.line
        if self.where:
            out["where"] = self.where
        return out


@dataclass(frozen=True, slots=True)
class Fault(Record):
    """A violation that does not end the process (a write to a closed descriptor, a read of
    stdin through a zeroed notifier, a close of a closed descriptor).  Sticky: kept in the
    endpoint so that state properties can judge it."""

    kind: str
    detail: str
    line: int  # the seed line; 0 when elsewhere (see ``where``)
    where: str = ""


@dataclass(frozen=True, slots=True)
class FileObject(Record):
    """A kernel object: an eventfd (``count`` = its counter, saturated at 1) or shared memory
    (``size`` bytes; ``data`` its non-zero bytes as sorted ``(offset, byte)`` pairs)."""

    kind: str
    count: int = 0
    size: int = 0
    data: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Fd(Record):
    """One descriptor: ``owner`` is an endpoint (its process) or ``IN_FLIGHT``."""

    obj: int
    owner: int
    open: bool = True
    # The POSIX number in the owner's process, counted from the first the model knows of
    # (QEMU's own descriptors are opened at launch, below): the lowest free one when the
    # descriptor came; -1 in flight.  A closed descriptor keeps it, so a main-loop handler
    # left on it watches whatever descriptor takes the number next (model.proc.World.number).
    number: int = -1


@dataclass(frozen=True, slots=True)
class Peer(Record):
    """``Peer`` (seed 72-75): ``eventfds`` lists the descriptors stored in slots 0, 1, ...;
    slots beyond the tuple are zeroed (``g_new0``); ``block`` is the array's lifetime."""

    nb_eventfds: int = 0
    eventfds: tuple[int, ...] = ()
    block: str = LIVE


DEFAULT_PEER = Peer()


@dataclass(frozen=True, slots=True)
class MSIVector(Record):
    """``MSIVector`` (seed 77-81); ``virq`` is the KVM route, named by the vector it serves."""

    pdev: bool = False
    virq: int = -1
    unmasked: bool = False


DEFAULT_MSI_VECTOR = MSIVector()


@dataclass(frozen=True, slots=True)
class Msix(Record):
    """The PCI core's MSI-X state (``hw/pci/msix.c``): bit masks indexed by vector."""

    present: bool = False
    entries_nr: int = 0
    table: str = NULL  # lifetime of msix_table/msix_pba/msix_entry_used
    enable: bool = False  # MSI-X Enable bit of the control word
    maskall: bool = False  # Function Mask bit
    function_masked: bool = True  # dev->msix_function_masked, stored as the C code stores it
    masked: int = 0  # per-entry Mask bit of the vector-control word
    pending: int = 0  # the PBA
    used: int = 0  # msix_entry_used[v] != 0
    notifiers: bool = False  # use/release notifiers installed
    poll_notifier: bool = False


# Where the guest driver places the BARs (the QEMU backend programs the same addresses).
BAR0_ADDR = 0xFEBF_0000  # registers, 256 B
BAR1_ADDR = 0xFEB0_0000  # MSI-X table and PBA
BAR2_ADDR = 0x8000_0000  # shared memory
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4


@dataclass(frozen=True, slots=True)
class PciConfig(Record):
    """The guest-writable part of the device's PCI configuration space (``hw/pci/pci.c``):
    the command register and the BAR registers as last written (``bars[i]`` is offset
    ``0x10 + 4*i``), and the interrupt line.  The defaults are what the guest driver writes
    after realize and after every reset: BARs at the addresses above, memory decoding and bus
    mastering on."""

    command: int = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
    bars: tuple[int, int, int, int] = (BAR0_ADDR, BAR1_ADDR, BAR2_ADDR, 0)
    interrupt_line: int = 0


DEFAULT_PCI = PciConfig()


@dataclass(frozen=True, slots=True)
class Device(Record):
    """``IVShmemState`` (seed 83-122), the part the model needs."""

    type: str
    features: int
    vectors: int
    vm_id: int = 0
    master: str = "off"
    intrmask: int = 0
    intrstatus: int = 0
    irq_level: int = 0  # INTx line as last set by pci_set_irq
    interrupt_pin: int = 0
    chardev: bool = False
    hostmem: bool = False
    legacy_size: int = -1  # SIZE_MAX is -1
    peers_block: str = NULL
    nb_peers: int = 0
    peers: tuple[tuple[int, Peer], ...] = ()
    msi_vectors_block: str = NULL
    msi_vectors: tuple[tuple[int, MSIVector], ...] = ()
    bar2: str = ""  # what s->ivshmem_bar2 points to: "", "hostmem" or "server"
    bar2_fd: int = -1  # descriptor mapped as BAR2 (server mode)
    bar2_size: int = 0
    msg_buffered_bytes: int = 0
    # msg_buf's bytes so far, as an unsigned little-endian number (0 when none): they may
    # belong to messages already gone from the socket (model.chardev)
    msg_buf: int = 0
    migration_blocker: bool = False
    ioeventfds: tuple[tuple[int, int], ...] = ()  # (datamatch, descriptor), sorted
    msix: Msix = Msix()
    pci: PciConfig = DEFAULT_PCI
    bar2_64bit: bool = True  # PCI_BASE_ADDRESS_MEM_TYPE_64 (seed 906-908)
    hostmem_data: tuple[tuple[int, int], ...] = ()  # the memdev's non-zero bytes
    # Before 3a55fc0f2431, setup went on after realize: "version" (the next message goes to
    # ivshmem_check_version), then "messages" (ivshmem_read); "" once synchronous (the seed).
    setup_stage: str = ""
    memdev: str = ""  # the id of the memory backend it maps (``memdev``), "" for none
    _hash: int = _hash_slot()

    def __hash__(self) -> int:
        return self._hash or _cached_hash(self, _DEVICE_COMPARED)


@dataclass(frozen=True, slots=True)
class ClientPeer(Record):
    """A peer as the contrib client records it: its id and the descriptors of its vectors."""

    id: int
    vectors: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Client(Record):
    """The contrib client's view (``ivshmem-client``): setup progress, own id, shm, peers."""

    stage: int = 0  # 0: expects version, 1: expects id, 2: expects shm, 3: running
    id: int = -1
    shm_fd: int = -1
    local: tuple[int, ...] = ()  # own vectors
    peers: tuple[ClientPeer, ...] = ()


@dataclass(frozen=True, slots=True)
class MemBackend(Record):
    """A memory backend object (``-object memory-backend-*,id=NAME``, backends/hostmem.c) as a
    device sees it: its size; ``mapped``, ``host_memory_backend_is_mapped`` (a device maps it:
    set by realize, seed 914, cleared by ``ivshmem_exit``, seed 997-999); ``idstr``, whether
    its RAM block has an id (``vmstate_register_ram``, seed 966, physmem.c
    ``qemu_ram_set_idstr``; ``ivshmem_exit`` unsets it only while BAR2 is mapped, seed
    980-995, which it never is at unplug, or always under ``exit_unregisters_ram``);
    ``data``, its bytes while no device maps it (while one does they are
    ``Device.hostmem_data``)."""

    name: str
    size: int
    mapped: bool = False
    idstr: bool = False
    data: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint(Record):
    """One process: a QEMU (``role`` "qemu", maybe with a device) or a plain client."""

    connected: bool = False
    role: str = ""  # "", "qemu" or "client"
    fate: Fate | None = None
    device: Device | None = None
    unplugged: bool = False
    client: Client | None = None
    kvm_routes: tuple[int, ...] = ()  # multiset of virqs (one per route added)
    irqfds: tuple[tuple[int, int], ...] = ()  # (virq, descriptor)
    fd_handlers: tuple[tuple[int, int], ...] = ()  # (descriptor, vector): qemu_set_fd_handler
    faults: tuple[Fault, ...] = ()
    launched: bool = False  # a QEMU process runs (it realized a device, or tried a hot-plug)
    memdevs: tuple[str, ...] = ()  # memory backends created in it (memdev_backend), in order
    # migration blockers that devices which failed to realize left registered (before
    # d855e2756554); the live device's own is Device.migration_blocker
    stale_blockers: int = 0
    # The socket chardev, which outlives the device (model.chardev): bytes of the channel's
    # first message already read, and the descriptor received and not yet taken (-1: none).
    chr_read: int = 0
    chr_fd: int = -1
    # the memory backend objects its realizes created, which a later realize in the same
    # process may name (``memdev``)
    backends: tuple[MemBackend, ...] = ()
    # the POSIX numbers of the memory backends' own descriptors (memdevs that hold one: a
    # memfd or a file), which stay open for the life of the process
    memdev_fds: tuple[int, ...] = ()
    _hash: int = _hash_slot()

    def __hash__(self) -> int:
        return self._hash or _cached_hash(self, _ENDPOINT_COMPARED)


@dataclass(frozen=True, slots=True)
class ServerPeer(Record):
    """A peer of the contrib server: its endpoint, id and the objects of its eventfds."""

    endpoint: int
    id: int
    eventfds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Server(Record):
    up: bool = True
    cur_id: int = 0
    shm_obj: int = -1
    peers: tuple[ServerPeer, ...] = ()
    # Why the server shut itself down (the contrib server's debug text, S:165-186 through
    # S:414-419 and M:172-175); "" while it runs and after a ``server_exit``.
    failure: str = ""
    _hash: int = _hash_slot()

    def __hash__(self) -> int:
        return self._hash or _cached_hash(self, _SERVER_COMPARED)


Message = tuple[int, int]  # (value, descriptor or -1)


@dataclass(frozen=True, slots=True)
class SystemState(Record):
    server: Server
    endpoints: tuple[Endpoint, ...]
    channels: tuple[tuple[Message, ...], ...]
    fds: tuple[Fd | None, ...]
    objects: tuple[FileObject | None, ...]
    config: Config = field(compare=False, hash=False, repr=False)
    variant: Variant = field(compare=False, hash=False, repr=False)
    _hash: int = _hash_slot()
    # Free-slot hints of ``fds`` and ``objects`` (model.proc.World): every slot below is taken.
    _free: tuple[int, int] = field(default=(0, 0), init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        return self._hash or _cached_hash(self, _SYSTEMSTATE_COMPARED)


_DEVICE_COMPARED = _compared(Device)
_ENDPOINT_COMPARED = _compared(Endpoint)
_SERVER_COMPARED = _compared(Server)
_SYSTEMSTATE_COMPARED = _compared(SystemState)


def sparse_get(pairs: tuple[tuple[int, Any], ...], index: int, default: Any) -> Any:
    for key, value in pairs:
        if key == index:
            return value
    return default


def _plain_init(cls: Any) -> None:
    """Give the frozen record ``cls`` the ``__init__`` of a plain dataclass with its fields,
    and drop the frozen ``__setattr__``/``__delattr__``.  A frozen dataclass sets each field
    through ``object.__setattr__``, eight times slower than the slot store a plain one makes,
    and the explorer builds about three records per transition.  The records stay frozen
    where it is checked: mypy sees ``frozen=True`` and rejects any assignment to a field;
    only the run-time guard goes (the caches ``_hash`` and ``_free`` were always
    written past it)."""
    twin: Any = make_dataclass(cls.__name__, [
        (f.name, f.type, field(default=f.default, default_factory=f.default_factory,
                               init=f.init, repr=f.repr, compare=f.compare))
        for f in fields(cls)], slots=True)
    try:
        cls.__init__ = twin.__init__
    except TypeError:
        return  # a native class (the mypyc build): its type cannot be changed, nor need be
    del cls.__setattr__
    del cls.__delattr__


def _plain_inits(namespace: dict[str, Any]) -> None:
    """``_plain_init`` for every frozen dataclass defined in this module."""
    for record in list(namespace.values()):
        params = vars(record).get("__dataclass_params__") if isinstance(record, type) else None
        if params is not None and params.frozen and record.__module__ == __name__:
            _plain_init(record)


_plain_inits(globals())

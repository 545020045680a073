"""The mutable working view of one process during one step.

``step`` thaws the few parts of the frozen state a transition touches into these objects, runs
the seed's functions on them (C code mutates, so its mirror does too), and freezes the result.
Nothing here outlives a step.

C's failure modes are Python exceptions *inside* a step only: :class:`Abort` for a failing
``assert``, :class:`Crash` for a bad memory access, :class:`WouldBlock` when a synchronous read
finds the channel empty.  ``step`` turns the first two into fates (state) and the third into a
disabled action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ivshmem_model.model.state import (
    IN_FLIGHT,
    ZEROED,
    Fault,
    Fd,
    FileObject,
    Message,
)
from ivshmem_model.model.variants import Variant


class Abort(Exception):  # noqa: N818 - named after the C behaviour it mirrors
    """A C ``assert`` failed (``abort()``)."""

    def __init__(self, reason: str, line: int | str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


class Crash(Exception):  # noqa: N818
    """A read or write through a NULL, freed or too-short heap block, or a second free."""

    def __init__(self, kind: str, reason: str, line: int | str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.line = line


class WouldBlock(Exception):  # noqa: N818
    """A synchronous read found the channel empty: the action is not enabled (yet)."""


class Exit(Exception):  # noqa: N818
    """The C code calls ``exit(1)``: the process ends with an error, even after a hot-plug."""

    def __init__(self, reason: str, line: int | str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


class Hang(Exception):  # noqa: N818
    """A synchronous read loops forever on a closed connection."""

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def line_number(line: int | str) -> int:
    return line if isinstance(line, int) else 0


def line_where(line: int | str) -> str:
    return line if isinstance(line, str) else ""


def location(line: int | str) -> dict[str, int | str]:
    """``{"line": N}`` for a seed line, ``{"where": "file function"}`` for other code."""
    return {"line": line} if isinstance(line, int) else {"where": line}


# How kernel objects answer reads (``FileObject.count`` is "a read returns bytes now").
READ_ONCE_KINDS = frozenset({"eventfd", "shm", "file", "memfd-ro"})
ALWAYS_READABLE_KINDS = frozenset({"devnull", "shm", "file", "memfd-ro"})

Fds = tuple[Fd | None, ...]
Objects = tuple[FileObject | None, ...]
Channels = tuple[tuple[Message, ...], ...]


T = TypeVar("T")


def _lowest_free(table: Sequence[object | None], hint: int) -> int:
    """The first ``None`` slot of ``table`` at or after ``hint`` (every slot below ``hint``
    is taken), or ``len(table)``."""
    for index in range(hint, len(table)):
        if table[index] is None:
            return index
    return len(table)


def _put(table: list[T], index: int, item: T) -> None:
    """``table[index] = item``, growing the table by one when ``index`` is its length."""
    if index == len(table):
        table.append(item)
    else:
        table[index] = item


class World:
    """The system-wide tables a step may change: descriptors, objects, channels.

    Copy-on-write: a table is copied the first time a step writes it, and handed back as the
    very same tuple when it was only read, so unchanged parts of consecutive states stay
    shared (cheap to hash, cheap to compare).

    ``free_fd`` and ``free_object`` are free-slot hints: every slot below them is taken, so
    the search for the lowest free slot starts there (0 is always a correct hint).  They
    travel with the tables in the state (``SystemState._free``), so a long trace with
    thousands of descriptors in flight allocates in constant time instead of rescanning.
    """

    __slots__ = ("_channels", "_fds", "_objects", "closed_any", "free_fd", "free_object",
                 "held", "process", "server_up")

    def __init__(
        self,
        fds: tuple[Fd | None, ...],
        objects: tuple[FileObject | None, ...],
        channels: tuple[tuple[Message, ...], ...],
        server_up: bool,
        free_fd: int = 0,
        free_object: int = 0,
    ) -> None:
        self._fds: Sequence[Fd | None] = fds
        self._objects: Sequence[FileObject | None] = objects
        self._channels: Sequence[Sequence[Message]] = channels
        self.server_up = server_up
        self.closed_any = False  # a descriptor was closed: garbage may exist
        self.free_fd = free_fd
        self.free_object = free_object
        # Per-process POSIX numbering (``Fd.number``), when the caller knows the processes:
        # the endpoints of an endpoint's process, and the numbers its memory backends hold.
        self.process: Callable[[int], tuple[int, ...]] | None = None
        self.held: Callable[[int], Iterable[int]] | None = None

    # -- tables ----------------------------------------------------------------------------------

    @property
    def fds(self) -> Sequence[Fd | None]:
        return self._fds

    @property
    def objects(self) -> Sequence[FileObject | None]:
        return self._objects

    def _w_fds(self) -> list[Fd | None]:
        if isinstance(self._fds, tuple):
            self._fds = list(self._fds)
        return self._fds  # type: ignore[return-value]

    def _w_objects(self) -> list[FileObject | None]:
        if isinstance(self._objects, tuple):
            self._objects = list(self._objects)
        return self._objects  # type: ignore[return-value]

    def _w_channel(self, endpoint: int) -> list[Message]:
        if isinstance(self._channels, tuple):
            self._channels = list(self._channels)
        channels: list[Sequence[Message]] = self._channels  # type: ignore[assignment]
        channel = channels[endpoint]
        if isinstance(channel, tuple):
            channel = list(channel)
            channels[endpoint] = channel
        return channel  # type: ignore[return-value]

    def channel(self, endpoint: int) -> Sequence[Message]:
        return self._channels[endpoint]

    def pop_message(self, endpoint: int) -> Message:
        return self._w_channel(endpoint).pop(0)

    def replace_head(self, endpoint: int, message: Message) -> None:
        """The first queued message becomes ``message`` (a partly read one, its descriptor
        gone to the reader: ``model.chardev``)."""
        self._w_channel(endpoint)[0] = message

    def clear_channel(self, endpoint: int) -> None:
        self._w_channel(endpoint).clear()

    def frozen(self) -> tuple[Fds, Objects, Channels]:
        fds = self._fds if isinstance(self._fds, tuple) else tuple(self._fds)
        objects = self._objects if isinstance(self._objects, tuple) else tuple(self._objects)
        channels = self._channels if isinstance(self._channels, tuple) else tuple(
            c if isinstance(c, tuple) else tuple(c) for c in self._channels
        )
        return fds, objects, channels

    # -- objects and descriptors ---------------------------------------------------------------

    def new_object(self, obj: FileObject) -> int:
        """The lowest free object slot gets ``obj``."""
        objects = self._w_objects()
        index = _lowest_free(objects, self.free_object)
        _put(objects, index, obj)
        self.free_object = index + 1
        return index

    def new_fd(self, obj: int, owner: int) -> int:
        """The lowest free descriptor number, as POSIX ``open`` and SCM_RIGHTS give."""
        fds = self._w_fds()
        index = _lowest_free(fds, self.free_fd)
        _put(fds, index, Fd(obj, owner, True, self.number(owner)))
        self.free_fd = index + 1
        return index

    # -- POSIX numbers (open(2), SCM_RIGHTS: the lowest number free in the process) ---------

    def number(self, owner: int) -> int:
        """The number a descriptor arriving in ``owner``'s process gets now, or -1 in flight
        (and when the processes are not known)."""
        if owner < 0 or self.process is None:
            return -1
        group = self.process(owner)
        taken = {entry.number for entry in self._fds
                 if entry is not None and entry.open and entry.owner in group}
        if self.held is not None:
            for m in group:
                taken.update(self.held(m))
        n = 0
        while n in taken:
            n += 1
        return n

    def at_number(self, owner: int, n: int) -> int | None:
        """The open descriptor of ``owner``'s process numbered ``n``, if any."""
        if n < 0 or self.process is None:
            return None
        group = self.process(owner)
        for d, entry in enumerate(self._fds):
            if entry is not None and entry.open and entry.number == n and entry.owner in group:
                return d
        return None

    def readable_at(self, owner: int, n: int) -> str | None:
        """What ``poll`` finds readable at number ``n`` of ``owner``'s process: the kind of
        the descriptor there ("memory backend" for a backend's own memfd or file, readable
        like any regular file), or None when nothing readable holds the number."""
        d = self.at_number(owner, n)
        if d is not None:
            return self.obj_of(d).kind if self.readable(d) or self.always_readable(d) else None
        if n >= 0 and self.held is not None and self.process is not None and any(
                n in self.held(m) for m in self.process(owner)):
            return "memory backend"
        return None

    def obj_of(self, d: int) -> FileObject:
        entry = self._fds[d]
        assert entry is not None
        obj = self._objects[entry.obj]
        assert obj is not None
        return obj

    def is_open(self, d: int) -> bool:
        entry = self._fds[d] if 0 <= d < len(self._fds) else None
        return entry is not None and entry.open

    def signal(self, d: int) -> None:
        """``write(d, 8 bytes)``: an eventfd's counter goes up.  Other kinds (a hostile server's
        fds) take the write without effect on what the model tracks: /dev/null discards it, a
        pipe's read end and a read-only memfd refuse it (EBADF, which QEMU ignores), a file
        grows at its offset but no one maps an object that was sent as an eventfd."""
        obj = self.obj_of(d)
        entry = self._fds[d]
        assert entry is not None
        if obj.kind == "eventfd" and obj.count == 0:
            self._w_objects()[entry.obj] = FileObject(obj.kind, 1, obj.size, obj.data)

    def drain(self, d: int) -> bool:
        """``read`` until nothing is left (``event_notifier_test_and_clear``): True if any byte
        came.  A file-like object yields its bytes once (the offset then sits at the end); an
        empty pipe answers EAGAIN (the device made every peer fd non-blocking, seed 585)."""
        entry = self._fds[d]
        assert entry is not None
        obj = self.obj_of(d)
        if obj.kind not in READ_ONCE_KINDS or obj.count == 0:
            return False
        self._w_objects()[entry.obj] = FileObject(obj.kind, 0, obj.size, obj.data)
        return True

    def readable(self, d: int) -> bool:
        """A read would return bytes now (an eventfd's counter, a file's unread bytes)."""
        return self.obj_of(d).count > 0

    def always_readable(self, d: int) -> bool:
        """``poll`` says readable whatever was written: /dev/null and file-like objects."""
        return self.obj_of(d).kind in ALWAYS_READABLE_KINDS

    def set_data(self, d: int, data: tuple[tuple[int, int], ...]) -> None:
        """Store ``data`` as the bytes of the object behind descriptor ``d`` (open or not: a
        mapping outlives its descriptor)."""
        entry = self._fds[d]
        assert entry is not None
        obj = self._objects[entry.obj]
        assert obj is not None
        self._w_objects()[entry.obj] = FileObject(obj.kind, obj.count, obj.size, data)

    def close_fd(self, d: int) -> None:
        entry = self._fds[d]
        assert entry is not None
        self._w_fds()[d] = Fd(entry.obj, entry.owner, False, entry.number)
        self.closed_any = True

    def give(self, d: int, owner: int) -> None:
        """A descriptor in flight arrives in ``owner``'s process (SCM_RIGHTS)."""
        entry = self._fds[d]
        assert entry is not None and entry.owner == IN_FLIGHT
        self._w_fds()[d] = Fd(entry.obj, owner, entry.open, self.number(owner))

    def send(self, endpoint: int, value: int, obj: int | None) -> Message:
        """Queue one message; an fd travels as a fresh in-flight descriptor of ``obj``."""
        d = -1 if obj is None else self.new_fd(obj, IN_FLIGHT)
        message = (value, d)
        self._w_channel(endpoint).append(message)
        return message


class Proc:
    """One endpoint's process during a step: its host facts, faults and observations."""

    __slots__ = (
        "big_endian",
        "blockers_left",
        "chr_fd",
        "chr_read",
        "endpoint",
        "faults",
        "fd_handlers",
        "irqfds",
        "kvm_msi_irqfd",
        "kvm_routes",
        "obs",
        "variant",
        "world",
    )

    def __init__(
        self,
        world: World,
        endpoint: int,
        variant: Variant,
        kvm_msi_irqfd: bool,
        kvm_routes: tuple[int, ...] = (),
        irqfds: tuple[tuple[int, int], ...] = (),
        fd_handlers: tuple[tuple[int, int], ...] = (),
        faults: tuple[Fault, ...] = (),
        big_endian: bool = False,
        chr_read: int = 0,
        chr_fd: int = -1,
    ) -> None:
        self.world = world
        self.endpoint = endpoint
        # the process's socket chardev, which outlives its device (model.chardev)
        self.chr_read = chr_read
        self.chr_fd = chr_fd
        self.big_endian = big_endian
        self.blockers_left = 0  # migration blockers a failed realize left behind (this step)
        self.variant = variant
        self.kvm_msi_irqfd = kvm_msi_irqfd
        self.kvm_routes = list(kvm_routes)
        self.irqfds = list(irqfds)
        self.fd_handlers = list(fd_handlers)
        self.faults = list(faults)
        self.obs: list[dict[str, Any]] = []

    # -- reporting -----------------------------------------------------------------------------

    def error_report(self, text: str) -> None:
        self.obs.append({"error": text})

    def fault(self, kind: str, detail: str, line: int | str) -> None:
        fault = Fault(kind, detail, line_number(line), line_where(line))
        if fault not in self.faults:
            self.faults.append(fault)
        self.obs.append({"fault": kind, "detail": detail, **location(line)})

    # -- EventNotifier (util/event_notifier-posix.c at the seed) -------------------------------

    def event_notifier_set(self, d: int, line: int | str) -> None:
        if d == ZEROED:
            self.fault("fd_misuse", "event_notifier_set on a zeroed notifier writes fd 0", line)
        elif not self.world.is_open(d):
            self.fault("fd_misuse", f"event_notifier_set on closed descriptor {d}", line)
        else:
            self.world.signal(d)

    def event_notifier_test_and_clear(self, d: int, line: int | str) -> bool:
        if d == ZEROED:
            if self.variant.event_notifier_initialized:
                return False
            self.fault("fd_misuse", "event_notifier_test_and_clear reads fd 0 (stdin)", line)
            return False
        if not self.world.is_open(d):
            self.fault("fd_misuse", f"event_notifier_test_and_clear on closed descriptor {d}",
                       line)
            return False
        return self.world.drain(d)

    def event_notifier_cleanup(self, d: int, line: int | str) -> None:
        if d == ZEROED:
            if not self.variant.event_notifier_initialized:
                self.fault("fd_misuse", "event_notifier_cleanup closes fd 0 (stdin)", line)
            return
        self.close(d, line)

    def close(self, d: int, line: int | str) -> None:
        """``close(fd)``: -1 is EBADF and harmless; a closed descriptor is a double close."""
        if d < 0:
            return
        if not self.world.is_open(d):
            self.fault("fd_misuse", f"close of already closed descriptor {d}", line)
            return
        self.world.close_fd(d)

    # -- KVM (accel/kvm/kvm-all.c at the seed) -------------------------------------------------

    def kvm_add_msi_route(self, vector: int) -> int:
        self.kvm_routes.append(vector)
        self.kvm_routes.sort()
        return vector

    def kvm_release_virq(self, virq: int) -> None:
        if virq in self.kvm_routes:
            self.kvm_routes.remove(virq)

    def kvm_add_irqfd(self, d: int, virq: int) -> int:
        """KVM_IRQFD assign: -EBADF for a closed fd, -EINVAL for one that is not an eventfd,
        -EBUSY if already attached."""
        if d == ZEROED or not self.world.is_open(d):
            return -9
        if self.world.obj_of(d).kind != "eventfd":
            return -22
        obj = self.world.fds[d]
        assert obj is not None
        for _, other in self.irqfds:
            entry = self.world.fds[other]
            if entry is not None and entry.obj == obj.obj:
                return -16
        self.irqfds.append((virq, d))
        self.irqfds.sort()
        return 0

    def kvm_remove_irqfd(self, d: int, virq: int) -> int:
        """KVM_IRQFD deassign: -EBADF for a bad fd; otherwise 0, attached or not."""
        if d == ZEROED or not self.world.is_open(d):
            return -9
        if (virq, d) in self.irqfds:
            self.irqfds.remove((virq, d))
        return 0

    # -- the main loop's fd handlers (qemu_set_fd_handler) --------------------------------------

    def _same_number(self, d: int) -> list[tuple[int, int]]:
        """The handlers on ``d`` or on a closed descriptor that had ``d``'s number: the main
        loop keys its handlers by number (aio-posix.c ``aio_set_fd_handler`` finds the node
        of that fd and replaces it)."""
        n = self.number_of(d)
        return [h for h in self.fd_handlers if h[0] == d or (n >= 0 and self.number_of(h[0]) == n)]

    def number_of(self, d: int) -> int:
        """The POSIX number of descriptor ``d`` (closed or not), -1 if none is known."""
        entry = self.world.fds[d] if 0 <= d < len(self.world.fds) else None
        return -1 if entry is None else entry.number

    def remove_fd_handler(self, d: int) -> None:
        """``qemu_set_fd_handler(d, NULL, NULL, NULL)``."""
        gone = self._same_number(d)
        self.fd_handlers = [h for h in self.fd_handlers if h not in gone]

    def set_fd_handler(self, d: int, vector: int) -> None:
        gone = self._same_number(d)
        self.fd_handlers = [h for h in self.fd_handlers if h not in gone]
        self.fd_handlers.append((d, vector))
        self.fd_handlers.sort()

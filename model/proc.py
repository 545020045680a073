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

from collections.abc import Sequence
from typing import Any

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


class World:
    """The system-wide tables a step may change: descriptors, objects, channels.

    Copy-on-write: a table is copied the first time a step writes it, and handed back as the
    very same tuple when it was only read, so unchanged parts of consecutive states stay
    shared (cheap to hash, cheap to compare).
    """

    __slots__ = ("_channels", "_fds", "_objects", "closed_any", "server_up")

    def __init__(
        self,
        fds: tuple[Fd | None, ...],
        objects: tuple[FileObject | None, ...],
        channels: tuple[tuple[Message, ...], ...],
        server_up: bool,
    ) -> None:
        self._fds: Sequence[Fd | None] = fds
        self._objects: Sequence[FileObject | None] = objects
        self._channels: Sequence[Sequence[Message]] = channels
        self.server_up = server_up
        self.closed_any = False  # a descriptor was closed: garbage may exist

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
        objects = self._w_objects()
        for index, slot in enumerate(objects):
            if slot is None:
                objects[index] = obj
                return index
        objects.append(obj)
        return len(objects) - 1

    def new_fd(self, obj: int, owner: int) -> int:
        fds = self._w_fds()
        fd = Fd(obj, owner)
        for index, slot in enumerate(fds):
            if slot is None:
                fds[index] = fd
                return index
        fds.append(fd)
        return len(fds) - 1

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
        self._w_fds()[d] = Fd(entry.obj, entry.owner, False)
        self.closed_any = True

    def give(self, d: int, owner: int) -> None:
        """A descriptor in flight arrives in ``owner``'s process (SCM_RIGHTS)."""
        entry = self._fds[d]
        assert entry is not None and entry.owner == IN_FLIGHT
        self._w_fds()[d] = Fd(entry.obj, owner, entry.open)

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
    ) -> None:
        self.world = world
        self.endpoint = endpoint
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

    def remove_fd_handler(self, d: int) -> None:
        """``qemu_set_fd_handler(d, NULL, NULL, NULL)``."""
        self.fd_handlers = [h for h in self.fd_handlers if h[0] != d]

    def set_fd_handler(self, d: int, vector: int) -> None:
        self.fd_handlers = [h for h in self.fd_handlers if h[0] != d]
        self.fd_handlers.append((d, vector))
        self.fd_handlers.sort()

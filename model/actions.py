"""The action vocabulary (design §3) and the trace and counterexample files (design §6).

One frozen dataclass per vocabulary row; its default repr is valid Python, so a Hypothesis
printout or a counterexample program reads the same as the JSON.  Every checker and backend
consumes these classes; nothing else defines what an action is.

Validation here is about the *file*: types, field names, value ranges that JSON can get wrong.
What QEMU itself rejects (a property the device type does not have, a bad size string, too many
vectors) is device behaviour and lives in ``model/device.py`` with QEMU's own texts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from ivshmem_model.model.jsonfile import JsonInputError, read_json

TRACE_FORMAT = "ivshmem-trace/1"
COUNTEREXAMPLE_FORMAT = "ivshmem-counterexample/1"
CONFORMANCE_FORMAT = "ivshmem-conformance/1"

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

DEVICE_TYPES = ("ivshmem", "ivshmem-plain", "ivshmem-doorbell")
MASTER_VALUES = ("on", "off", "auto")
# memory-backend-memfd / -ram / -file, the object ``memdev`` names (``memdev_backend``)
MEMORY_BACKENDS = ("memfd", "ram", "file")
# the chardev ``chardev: true`` names (``chardev_backend``): the socket to the server, or null
CHARDEV_BACKENDS = ("socket", "null")
ACCESS_SIZES = (1, 2, 4, 8)


class TraceError(ValueError):
    """Bad input: a malformed trace, action or configuration.

    ``where`` names the place (``file.json: steps[3].vector``) so a user can find it.
    """

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def within(self, outer: str) -> TraceError:
        """The same error, located inside ``outer`` (an enclosing field or a file)."""
        if not self.where:
            return TraceError(self.message, outer)
        joiner = "" if self.where.startswith("[") else "."
        if outer.endswith(".json"):
            joiner = ": "
        return TraceError(self.message, f"{outer}{joiner}{self.where}")


# ---------------------------------------------------------------------------------------------
# Field checks

SHOWN_CHARS = 80  # an error message shows at most this much of the offending value


def shown_value(value: Any) -> str:
    """``value`` as JSON for an error message: a long list or object (a whole file's worth,
    when the top level is wrong) is cut to its beginning."""
    cut = isinstance(value, list | Mapping) and len(value) > 8
    if isinstance(value, list) and cut:
        value = value[:8]
    elif isinstance(value, Mapping) and cut:
        value = dict(list(value.items())[:8])
    text = json.dumps(value)
    if cut:
        text = f"{text[:-1]}, …{text[-1]}"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"



def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceError(f"expected an integer, got {shown_value(value)}", name)
    if not low <= value <= high:
        raise TraceError(f"{value} is out of range [{low}, {high}]", name)
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TraceError(f"expected true or false, got {shown_value(value)}", name)
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TraceError(f"expected a string, got {shown_value(value)}", name)
    return value


def _endpoint(value: Any) -> int:
    return _int(value, "endpoint", 0, 1023)


# ---------------------------------------------------------------------------------------------
# Device properties


PropValue = bool | int | str

# The JSON type each known property takes.  Which device type *has* which property is QEMU's
# business (model/device.py); here only the value's form is checked.
_PROP_KINDS: dict[str, str] = {
    "chardev": "bool",
    "vectors": "uint32",
    "ioeventfd": "bool",
    "master": "master",
    "memdev_size": "size",
    "memdev_backend": "backend",
    "chardev_backend": "chardev",
    "memdev_share": "bool",
    "size": "str",
    "msi": "bool",
    "shm": "str",
    "role": "str",
    "use64": "uint32",
    "memdev": "str",
}


_PROP_CHOICES: dict[str, tuple[str, ...]] = {
    "master": MASTER_VALUES, "chardev": CHARDEV_BACKENDS, "backend": MEMORY_BACKENDS,
}


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    text = _str(value, where)
    if text not in allowed:
        raise TraceError(f"expected one of {', '.join(allowed)}, got {shown_value(value)}", where)
    return text


def _props(value: Any) -> tuple[tuple[str, PropValue], ...]:
    if not isinstance(value, Mapping):
        raise TraceError(f"expected an object, got {shown_value(value)}", "props")
    items: list[tuple[str, PropValue]] = []
    for key in sorted(value):
        raw = value[key]
        where = f"props.{key}"
        kind = _PROP_KINDS.get(key)
        if kind is None:
            # Unknown to every device type: QEMU would say "Property 'T.key' not found"; the
            # device does that, so keep it if its form is a plain scalar.
            if isinstance(raw, bool | int | str):
                items.append((key, raw))
                continue
            raise TraceError(f"expected a scalar, got {shown_value(raw)}", where)
        if kind == "bool":
            items.append((key, _bool(raw, where)))
        elif kind == "uint32":
            items.append((key, _int(raw, where, 0, UINT32_MAX)))
        elif kind == "size":
            items.append((key, _int(raw, where, 1, UINT64_MAX)))
        elif kind in _PROP_CHOICES:
            items.append((key, _choice(raw, where, _PROP_CHOICES[kind])))
        else:
            items.append((key, _str(raw, where)))
    return tuple(items)


# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True)
class Action:
    """Base of every action; ``name`` is the JSON ``action`` value."""

    name: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "props":
                value = dict(value)
            if (f.name == "offset" and isinstance(self, PbaRead) and value == 0) or (
                    f.name in ("hotplug", "extra_fds", "bytes") and not value):
                continue  # optional field: keep traces written before it byte-identical
            if f.name == "extra_fds":
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True)
class Connect(Action):
    name: ClassVar[str] = "connect"
    endpoint: int


@dataclass(frozen=True, slots=True)
class Disconnect(Action):
    name: ClassVar[str] = "disconnect"
    endpoint: int


FdKind = Literal["eventfd", "shm"] | None

# What a server may attach to a message (``server_send.fd``, ``extra_fds``): an eventfd; a
# shared-memory object (``shm``); or, from a hostile or broken server, a pipe's read end
# (``pipe``: nobody writes the other end), ``/dev/null`` (``devnull``), a regular file (``file``)
# or a memfd opened read-only (``memfd-ro``).  The sized kinds take ``:BYTES`` (default: the
# configuration's ``shm_size``).
FD_KINDS = ("eventfd", "shm", "pipe", "devnull", "file", "memfd-ro")
SIZED_FD_KINDS = ("shm", "file", "memfd-ro")


def fd_kind_size(text: str) -> tuple[str, int | None]:
    """``"shm:4096"`` -> ``("shm", 4096)``; ``"eventfd"`` -> ``("eventfd", None)``."""
    kind, _colon, size = text.partition(":")
    return kind, int(size) if size else None


@dataclass(frozen=True, slots=True)
class ServerSend(Action):
    """Any server, honest or hostile, writes one message; ``fd`` objects are made fresh.

    ``fd`` is ``None`` or one of :data:`FD_KINDS` (``"shm:BYTES"`` and the like for an explicit
    size).  ``extra_fds`` (an extension, default none) attaches more descriptors to the same
    message; QEMU's chardev keeps the first one it received and closes the others
    (``tcp_get_msgfds``), so with ``fd`` null the first extra is the message's fd.
    """

    name: ClassVar[str] = "server_send"
    endpoint: int
    value: int
    fd: str | None = None
    extra_fds: tuple[str, ...] = ()

    @property
    def shm_bytes(self) -> int | None:
        """The explicit size of ``KIND:BYTES``; ``None`` for the other forms."""
        return fd_kind_size(self.fd)[1] if self.fd is not None else None

    @property
    def attached(self) -> tuple[str, ...]:
        """Every descriptor the message carries, in order (``fd`` first)."""
        return ((self.fd,) if self.fd is not None else ()) + self.extra_fds


@dataclass(frozen=True, slots=True)
class ServerExit(Action):
    name: ClassVar[str] = "server_exit"


@dataclass(frozen=True, slots=True)
class Abandon(Action):
    """An extension: the endpoint's process connects to the contrib server and closes its
    socket before the server accepts it (the server was busy).  The server's accept then
    finds the client gone (EPIPE on the version message)."""

    name: ClassVar[str] = "abandon"
    endpoint: int


@dataclass(frozen=True, slots=True)
class Garbage(Action):
    """An extension: a plain client writes bytes to its socket; the contrib server takes
    anything it reads from a client for a disconnection."""

    name: ClassVar[str] = "garbage"
    endpoint: int


@dataclass(frozen=True, slots=True)
class Realize(Action):
    """``-device TYPE,props`` on QEMU's command line, or with ``hotplug`` (an extension)
    ``device_add`` into a running QEMU: then a failed realize leaves QEMU running."""

    name: ClassVar[str] = "realize"
    endpoint: int
    device: str
    props: tuple[tuple[str, PropValue], ...] = ()
    hotplug: bool = False

    def prop(self, key: str, default: PropValue | None = None) -> PropValue | None:
        for k, v in self.props:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class Deliver(Action):
    """The device reads the next message off its socket.  An extension: with ``bytes``
    (1-7), only that many bytes of it have arrived (the server wrote the message in two
    parts; its descriptors came with the first); a later ``deliver`` brings the rest."""

    name: ClassVar[str] = "deliver"
    endpoint: int
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class MmioRead(Action):
    name: ClassVar[str] = "mmio_read"
    endpoint: int
    offset: int
    size: int = 4


@dataclass(frozen=True, slots=True)
class MmioWrite(Action):
    name: ClassVar[str] = "mmio_write"
    endpoint: int
    offset: int
    value: int
    size: int = 4


@dataclass(frozen=True, slots=True)
class Ring(Action):
    """Shorthand for a 4-byte DOORBELL write of ``(peer << 16) | vector``."""

    name: ClassVar[str] = "ring"
    endpoint: int
    peer: int
    vector: int


@dataclass(frozen=True, slots=True)
class MsixEnable(Action):
    name: ClassVar[str] = "msix_enable"
    endpoint: int
    enabled: bool


@dataclass(frozen=True, slots=True)
class MsixFunctionMask(Action):
    name: ClassVar[str] = "msix_function_mask"
    endpoint: int
    masked: bool


@dataclass(frozen=True, slots=True)
class MsixMask(Action):
    name: ClassVar[str] = "msix_mask"
    endpoint: int
    vector: int
    masked: bool


@dataclass(frozen=True, slots=True)
class PbaRead(Action):
    """A 4-byte read of the pending-bit array; ``offset`` (bytes, optional) is an extension."""

    name: ClassVar[str] = "pba_read"
    endpoint: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class HandleIrq(Action):
    name: ClassVar[str] = "handle_irq"
    endpoint: int
    vector: int


@dataclass(frozen=True, slots=True)
class ClientNotify(Action):
    name: ClassVar[str] = "client_notify"
    endpoint: int
    peer: int
    vector: int


@dataclass(frozen=True, slots=True)
class Reset(Action):
    name: ClassVar[str] = "reset"
    endpoint: int


@dataclass(frozen=True, slots=True)
class Unplug(Action):
    name: ClassVar[str] = "unplug"
    endpoint: int


@dataclass(frozen=True, slots=True)
class Migrate(Action):
    name: ClassVar[str] = "migrate"
    endpoint: int


@dataclass(frozen=True, slots=True)
class ShmRead(Action):
    """An extension: a guest load from BAR2, the shared memory (``offset`` aligned to
    ``size``)."""

    name: ClassVar[str] = "shm_read"
    endpoint: int
    offset: int
    size: int = 4


@dataclass(frozen=True, slots=True)
class ShmWrite(Action):
    """An extension: a guest store to BAR2; other peers mapping the same memory see it."""

    name: ClassVar[str] = "shm_write"
    endpoint: int
    offset: int
    value: int
    size: int = 4


@dataclass(frozen=True, slots=True)
class FdCount(Action):
    """An extension: the descriptors the endpoint's process holds for the device and its
    peers, by kind as ``/proc/PID/fd`` names them (``eventfd``, ``memfd``, ``file``,
    ``pipe``) -> ``{"fds": {kind: count}}``.  On QEMU: counted beyond a QEMU with no device."""

    name: ClassVar[str] = "fd_count"
    endpoint: int


@dataclass(frozen=True, slots=True)
class EventfdPoll(Action):
    """An extension: is a doorbell pending on the eventfd the endpoint's device holds for
    ``(peer, vector)`` (its counter non-zero) -> ``{"signalled": bool}``.  Enabled where the
    device holds an open eventfd there."""

    name: ClassVar[str] = "eventfd_poll"
    endpoint: int
    peer: int
    vector: int


CONFIG_REGISTERS = (
    "id", "command", "status", "class", "bar0", "bar1", "bar2", "bar3", "subsystem",
    "interrupt_line", "interrupt_pin", "msix_control",
)


@dataclass(frozen=True, slots=True)
class ConfigRead(Action):
    """An extension: a guest read of a PCI configuration register, by name (``model/pci.py``
    says where each is and how wide)."""

    name: ClassVar[str] = "config_read"
    endpoint: int
    register: str


@dataclass(frozen=True, slots=True)
class ConfigWrite(Action):
    """An extension: a guest write of a PCI configuration register: ``command`` (memory
    decoding 0x2, bus mastering 0x4), a BAR (0xFFFFFFFF sizes it), ``msix_control``..."""

    name: ClassVar[str] = "config_write"
    endpoint: int
    register: str
    value: int


ACTION_TYPES: dict[str, type[Action]] = {
    cls.name: cls
    for cls in (
        Connect, Disconnect, ServerSend, ServerExit, Realize, Deliver, MmioRead, MmioWrite,
        Ring, MsixEnable, MsixFunctionMask, MsixMask, PbaRead, HandleIrq, ClientNotify, Reset,
        Unplug, Migrate, ShmRead, ShmWrite, ConfigRead, ConfigWrite, FdCount, EventfdPoll,
        Abandon, Garbage,
    )
}


def _fd_kind(value: Any, where: str = "fd") -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        kind, colon, digits = value.partition(":")
        if kind in FD_KINDS and not colon:
            return value
        if kind in SIZED_FD_KINDS and digits.isdigit() and int(digits) <= UINT64_MAX:
            return value
    kinds = ", ".join(f'"{k}"' for k in FD_KINDS)
    raise TraceError(f"expected null, one of {kinds} or \"KIND:BYTES\" for "
                     f"{', '.join(SIZED_FD_KINDS)}, got {shown_value(value)}", where)


def _extra_fds(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TraceError(f"expected a list of fd kinds, got {shown_value(value)}", "extra_fds")
    if len(value) > 15:
        raise TraceError("at most 15 extra descriptors (SCM_RIGHTS carries 16 here)",
                         "extra_fds")
    out = []
    for index, item in enumerate(value):
        kind = _fd_kind(item, f"extra_fds[{index}]")
        if kind is None:
            raise TraceError("expected an fd kind, got null", f"extra_fds[{index}]")
        out.append(kind)
    return tuple(out)


def _access_size(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in ACCESS_SIZES:
        raise TraceError(f"expected 1, 2, 4 or 8, got {shown_value(value)}", key)
    return int(value)


def _check_field(cls: type[Action], key: str, value: Any) -> Any:
    """Validate one field of one action type; the rules of design §3."""
    if key == "endpoint":
        return _endpoint(value)
    if cls is ServerSend:
        if key == "value":
            return _int(value, key, INT64_MIN, INT64_MAX)
        if key == "extra_fds":
            return _extra_fds(value)
        return _fd_kind(value)
    if cls is Realize:
        if key == "hotplug":
            return _bool(value, key)
        if key == "device":
            text = _str(value, key)
            if text not in DEVICE_TYPES:
                raise TraceError(
                    f"unknown device {shown_value(text)}; expected one of "
                    f"{', '.join(DEVICE_TYPES)}",
                    key,
                )
            return text
        return _props(value)
    if cls is Deliver:
        return _int(value, key, 0, 7)
    if cls in (MmioRead, MmioWrite):
        if key == "offset":
            return _int(value, key, 0, 255)
        if key == "size":
            return _access_size(value, key)
        return _int(value, key, 0, UINT64_MAX)
    if cls in (ShmRead, ShmWrite):
        if key == "offset":
            return _int(value, key, 0, UINT64_MAX)
        if key == "size":
            return _access_size(value, key)
        return _int(value, key, 0, UINT64_MAX)
    if cls in (ConfigRead, ConfigWrite):
        if key == "register":
            text = _str(value, key)
            if text not in CONFIG_REGISTERS:
                raise TraceError(f"unknown register {shown_value(text)}; expected one of "
                                 f"{', '.join(CONFIG_REGISTERS)}", key)
            return text
        return _int(value, key, 0, UINT32_MAX)
    if cls is PbaRead:
        offset = _int(value, key, 0, 4092)
        if offset % 4:
            raise TraceError(f"expected a multiple of 4, got {offset}", key)
        return offset
    if key in ("enabled", "masked"):
        return _bool(value, key)
    if key == "peer" or (key == "vector" and cls in (Ring, EventfdPoll)):
        return _int(value, key, 0, 0xFFFF)
    if key == "vector":
        return _int(value, key, 0, UINT32_MAX)
    raise TraceError("unknown field", key)  # pragma: no cover - every field is listed above


def action_from_json(obj: Any) -> Action:
    """Parse one action object; raises :class:`TraceError` naming the field."""
    if not isinstance(obj, Mapping):
        raise TraceError(f"expected an object, got {shown_value(obj)}")
    name = obj.get("action")
    if name is None:
        raise TraceError('missing field "action"', "action")
    cls = ACTION_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(ACTION_TYPES))
        raise TraceError(f"unknown action {shown_value(name)}; known actions: {known}", "action")
    declared = {f.name: f for f in fields(cls)}
    for key in obj:
        if key != "action" and key not in declared:
            raise TraceError(f'unknown field for action "{name}"', key)
    kwargs: dict[str, Any] = {}
    for key, f in declared.items():
        if key in obj:
            kwargs[key] = _check_field(cls, key, obj[key])
        elif f.default is f.default_factory:  # MISSING for both: a required field
            raise TraceError(f'missing field for action "{name}"', key)
    action = cls(**kwargs)
    if isinstance(action, MmioWrite | ShmWrite) and action.value >> (8 * action.size):
        raise TraceError(f"{action.value} does not fit in {action.size} byte(s)", "value")
    if isinstance(action, Realize) and action.prop("memdev") is not None \
            and action.prop("memdev_size") is not None:
        raise TraceError("memdev names a memory backend the process has; memdev_size creates "
                         "one: give one of them", "props.memdev")
    if isinstance(action, ShmRead | ShmWrite) and action.offset % action.size:
        raise TraceError(f"offset {action.offset} is not a multiple of the size {action.size}",
                         "offset")
    return action


# ---------------------------------------------------------------------------------------------
# Configuration


DeviceChoice = tuple[str, tuple[tuple[str, PropValue], ...]]
MessageChoice = tuple[int, str | None]

DEFAULT_MESSAGES: tuple[MessageChoice, ...] = (
    (0, None), (1, None), (16, None), (0, "eventfd"), (1, "eventfd"), (-1, "shm"),
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``policy`` is ``contrib`` (the contrib server's behaviour) or ``scripted`` (only what
    ``server_send`` steps say).  ``messages`` is the menu of ``server_send`` (value, fd) pairs
    the checkers draw from with the scripted policy (an extension of design §6).
    ``socket_capacity`` (an extension) is how many unread messages a client's socket holds
    before the contrib server's sends fail and are lost (``model.server.SocketLimits``);
    ``None``, the default, is unbounded."""

    policy: str = "contrib"
    vectors: int = 1
    shm_size: int = 4 * 1024 * 1024
    messages: tuple[MessageChoice, ...] = DEFAULT_MESSAGES
    socket_capacity: int | None = None


@dataclass(frozen=True, slots=True)
class HostConfig:
    kvm_msi_irqfd: bool = False
    ioeventfd: bool = True
    big_endian: bool = False  # an extension: a big-endian host (the QEMU backend has none)


@dataclass(frozen=True, slots=True)
class Config:
    """A configuration (design §6), with two optional extensions: ``clients`` lists the
    endpoints that are plain ``ivshmem-client`` processes, and ``realize`` the devices the
    checkers may realize (default: ``ivshmem-doorbell`` on the socket with the server's
    vector count)."""

    endpoints: int = 2
    server: ServerConfig = field(default_factory=ServerConfig)
    host: HostConfig = field(default_factory=HostConfig)
    clients: tuple[int, ...] = ()
    realize: tuple[DeviceChoice, ...] = ()
    hotplug: bool = False  # an extension: the checkers' realize is device_add (QEMU runs on)
    # an extension: the checkers' menus hold what a client may do to the contrib server
    # beyond the protocol (abandon, garbage)
    hostile_clients: bool = False
    # an extension: groups of endpoints that are one QEMU process (each a device with its own
    # chardev connection), sorted; an endpoint in no group is a process of its own
    processes: tuple[tuple[int, ...], ...] = ()

    def process_of(self, e: int) -> tuple[int, ...]:
        """The endpoints in endpoint ``e``'s process, ``e`` among them, in order."""
        for group in self.processes:
            if e in group:
                return group
        return (e,)

    def realize_menu(self) -> tuple[DeviceChoice, ...]:
        if self.realize:
            return self.realize
        vectors = max(1, self.server.vectors)
        return (("ivshmem-doorbell", (("chardev", True), ("vectors", vectors))),)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoints": self.endpoints,
            "server": {
                "policy": self.server.policy,
                "vectors": self.server.vectors,
                "shm_size": self.server.shm_size,
            },
            "host": {"kvm_msi_irqfd": self.host.kvm_msi_irqfd, "ioeventfd": self.host.ioeventfd},
        }
        if self.host.big_endian:
            out["host"]["big_endian"] = True
        if self.server.messages != DEFAULT_MESSAGES:
            out["server"]["messages"] = [list(m) for m in self.server.messages]
        if self.server.socket_capacity is not None:
            out["server"]["socket_capacity"] = self.server.socket_capacity
        if self.clients:
            out["clients"] = list(self.clients)
        if self.realize:
            out["realize"] = [{"device": d, "props": dict(p)} for d, p in self.realize]
        if self.hotplug:
            out["hotplug"] = True
        if self.hostile_clients:
            out["hostile_clients"] = True
        if self.processes:
            out["processes"] = [list(group) for group in self.processes]
        return out


def _only(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise TraceError("unknown field", f"{where}.{key}" if where else key)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TraceError(f"expected an object, got {shown_value(value)}", where)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise TraceError(f"expected a list, got {shown_value(value)}", where)
    return value


def _messages(value: Any) -> tuple[MessageChoice, ...]:
    out: list[MessageChoice] = []
    for index, item in enumerate(_list(value, "server.messages")):
        where = f"server.messages[{index}]"
        if not isinstance(item, list) or len(item) != 2:
            raise TraceError(f"expected [value, fd], got {shown_value(item)}", where)
        try:
            out.append((_int(item[0], "value", INT64_MIN, INT64_MAX), _fd_kind(item[1])))
        except TraceError as err:
            raise err.within(where) from None
    return tuple(out)


def _device_choices(value: Any) -> tuple[DeviceChoice, ...]:
    out: list[DeviceChoice] = []
    for index, item in enumerate(_list(value, "realize")):
        where = f"realize[{index}]"
        obj = _object(item, where)
        _only(obj, ("device", "props"), where)
        try:
            device = _check_field(Realize, "device", obj.get("device"))
            props = _check_field(Realize, "props", obj.get("props", {}))
        except TraceError as err:
            raise err.within(where) from None
        out.append((device, props))
    return tuple(out)


def _processes(value: Any, endpoints: int, clients: tuple[int, ...]
               ) -> tuple[tuple[int, ...], ...]:
    """``processes``: disjoint groups of two or more QEMU endpoints, each one process."""
    seen: dict[int, int] = {}
    out: list[tuple[int, ...]] = []
    for index, item in enumerate(_list(value, "processes")):
        where = f"processes[{index}]"
        members = _list(item, where)
        if len(members) < 2:
            raise TraceError("a process groups two or more endpoints (an endpoint in no group "
                             "is a process of its own)", where)
        group: list[int] = []
        for position, raw in enumerate(members):
            member = _int(raw, f"{where}[{position}]", 0, endpoints - 1)
            if member in seen:
                raise TraceError(f"endpoint {member} is already in processes[{seen[member]}]",
                                 f"{where}[{position}]")
            if member in clients:
                raise TraceError(f"endpoint {member} is a plain client (clients), not a QEMU",
                                 f"{where}[{position}]")
            seen[member] = index
            group.append(member)
        out.append(tuple(sorted(group)))
    return tuple(sorted(out))


def config_from_json(obj: Any) -> Config:
    obj = _object(obj, "config")
    _only(obj, ("endpoints", "server", "host", "clients", "realize", "hotplug",
                "hostile_clients", "processes"), "config")
    server = _object(obj.get("server", {}), "config.server")
    _only(server, ("policy", "vectors", "shm_size", "messages", "socket_capacity"),
          "config.server")
    host = _object(obj.get("host", {}), "config.host")
    _only(host, ("kvm_msi_irqfd", "ioeventfd", "big_endian"), "config.host")
    policy = server.get("policy", "contrib")
    if policy not in ("contrib", "scripted"):
        raise TraceError(
            f'expected "contrib" or "scripted", got {shown_value(policy)}', "config.server.policy"
        )
    try:
        endpoints = _int(obj.get("endpoints", 2), "endpoints", 1, 64)
        clients = tuple(
            _int(c, f"clients[{i}]", 0, endpoints - 1)
            for i, c in enumerate(_list(obj.get("clients", []), "clients"))
        )
        return Config(
            endpoints=endpoints,
            server=ServerConfig(
                policy=policy,
                vectors=_int(server.get("vectors", 1), "server.vectors", 0, 64),
                shm_size=_int(server.get("shm_size", 4 * 1024 * 1024), "server.shm_size", 0,
                              UINT64_MAX),
                messages=_messages(server["messages"]) if "messages" in server
                else DEFAULT_MESSAGES,
                socket_capacity=_int(server["socket_capacity"], "server.socket_capacity", 3,
                                     1 << 20) if "socket_capacity" in server else None,
            ),
            host=HostConfig(
                kvm_msi_irqfd=_bool(host.get("kvm_msi_irqfd", False), "host.kvm_msi_irqfd"),
                ioeventfd=_bool(host.get("ioeventfd", True), "host.ioeventfd"),
                big_endian=_bool(host.get("big_endian", False), "host.big_endian"),
            ),
            clients=tuple(sorted(set(clients))),
            hotplug=_bool(obj.get("hotplug", False), "hotplug"),
            hostile_clients=_bool(obj.get("hostile_clients", False), "hostile_clients"),
            realize=_device_choices(obj["realize"]) if "realize" in obj else (),
            processes=_processes(obj["processes"], endpoints, clients)
            if "processes" in obj else (),
        )
    except TraceError as err:
        raise err.within("config") from None


# ---------------------------------------------------------------------------------------------
# Traces and counterexamples


@dataclass(frozen=True, slots=True)
class Trace:
    config: Config
    steps: tuple[Action, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TRACE_FORMAT,
            "config": self.config.to_json(),
            "steps": [a.to_json() for a in self.steps],
        }


def _check_endpoints(config: Config, steps: tuple[Action, ...]) -> None:
    for index, action in enumerate(steps):
        endpoint = getattr(action, "endpoint", None)
        if endpoint is not None and endpoint >= config.endpoints:
            raise TraceError(
                f"endpoint {endpoint} is out of range: the configuration has "
                f"{config.endpoints} endpoint(s)",
                f"steps[{index}].endpoint",
            )


def trace_from_json(obj: Any, *, require_format: bool = True) -> Trace:
    obj = _object(obj, "")
    if require_format and obj.get("format") != TRACE_FORMAT:
        raise TraceError(
            f"expected {shown_value(TRACE_FORMAT)}, got {shown_value(obj.get('format'))}", "format"
        )
    _only(obj, ("format", "config", "steps"), "")
    config = config_from_json(obj.get("config", {}))
    raw_steps = obj.get("steps")
    if not isinstance(raw_steps, list):
        raise TraceError(f"expected a list, got {shown_value(raw_steps)}", "steps")
    steps: list[Action] = []
    for index, raw in enumerate(raw_steps):
        try:
            steps.append(action_from_json(raw))
        except TraceError as err:
            raise err.within(f"steps[{index}]") from None
    trace = Trace(config, tuple(steps))
    _check_endpoints(config, trace.steps)
    return trace


Expectation = str | dict[str, Any]


@dataclass(frozen=True, slots=True)
class Counterexample:
    """A trace plus what it shows (design §6).

    ``expect`` maps a variant name to ``"holds"`` or ``{"violates": property, "step": i}``.
    """

    name: str
    property: str
    summary: str
    origin: str
    trace: Trace
    expect: tuple[tuple[str, Expectation], ...]
    extra: tuple[tuple[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        trace = self.trace.to_json()
        del trace["format"]
        out: dict[str, Any] = {
            "format": COUNTEREXAMPLE_FORMAT,
            "name": self.name,
            "property": self.property,
            "summary": self.summary,
            "origin": self.origin,
            "trace": trace,
            "expect": dict(self.expect),
        }
        out.update(dict(self.extra))
        return out


_CX_FIELDS = ("format", "name", "property", "summary", "origin", "trace", "expect")


def _expectation(value: Any, where: str) -> Expectation:
    if value == "holds":
        return "holds"
    if isinstance(value, Mapping) and set(value) <= {"violates", "step", "line"}:
        _str(value.get("violates"), f"{where}.violates")
        _int(value.get("step"), f"{where}.step", 0, 10**9)
        if "line" in value:
            _int(value["line"], f"{where}.line", 0, 10**9)
        return dict(value)
    raise TraceError(
        'expected "holds" or {"violates": PROPERTY, "step": N}, got ' + shown_value(value), where
    )


def counterexample_from_json(obj: Any) -> Counterexample:
    obj = _object(obj, "")
    if obj.get("format") != COUNTEREXAMPLE_FORMAT:
        raise TraceError(
            f"expected {shown_value(COUNTEREXAMPLE_FORMAT)}, got {shown_value(obj.get('format'))}",
            "format",
        )
    for key in ("name", "property", "summary", "origin"):
        _str(obj.get(key), key)
    trace = trace_from_json(_object(obj.get("trace"), "trace"), require_format=False)
    expect_obj = _object(obj.get("expect"), "expect")
    if not expect_obj:
        raise TraceError("expected at least one variant", "expect")
    from ivshmem_model.model.variants import VARIANTS  # here: model.variants imports this module

    for key in expect_obj:
        if key not in VARIANTS:
            raise TraceError(f"unknown variant {shown_value(key)}; known variants: "
                             f"{', '.join(VARIANTS)}", f"expect.{key}")
    expect = tuple(
        (str(k), _expectation(v, f"expect.{k}")) for k, v in sorted(expect_obj.items())
    )
    extra = tuple((k, v) for k, v in obj.items() if k not in _CX_FIELDS)
    return Counterexample(
        name=obj["name"], property=obj["property"], summary=obj["summary"],
        origin=obj["origin"], trace=trace, expect=expect, extra=extra,
    )


def load_json_file(path: str) -> Any:
    """Read a JSON file through the bounded reader (``model/jsonfile.py``: size, nesting,
    integer length, duplicate keys, UTF-8); anything it refuses is a :class:`TraceError`
    naming the file."""
    try:
        return read_json(path)
    except JsonInputError as err:
        raise TraceError(str(err), path) from None


def load_trace(path: str) -> Trace:
    """A trace file; a counterexample or conformance-case file is accepted too (its trace is
    used)."""
    obj = load_json_file(path)
    try:
        if isinstance(obj, Mapping) and obj.get("format") == COUNTEREXAMPLE_FORMAT:
            return counterexample_from_json(obj).trace
        if isinstance(obj, Mapping) and obj.get("format") == CONFORMANCE_FORMAT:
            return trace_from_json(_object(obj.get("trace"), "trace"), require_format=False)
        return trace_from_json(obj)
    except TraceError as err:
        raise TraceError(err.message, f"{path}: {err.where}" if err.where else path) from None


def load_counterexample(path: str) -> Counterexample:
    obj = load_json_file(path)
    try:
        return counterexample_from_json(obj)
    except TraceError as err:
        raise TraceError(err.message, f"{path}: {err.where}" if err.where else path) from None

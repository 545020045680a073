"""The property registry (design §5.1): one name, one plain-words meaning, one check.

Safety properties (``always``) take a state and return ``None`` or a message naming what is
wrong.  ``sometimes`` properties take a transition (the observations of one step) and say
whether it is a witness; a checker that explores the whole space reports them unreached when
no transition is a witness, so a model that can do nothing fails.

The checks read the state only; they never call ``step``.  Names are stable: counterexample
files and the command line use them.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivshmem_model.model.state import IN_FLIGHT, IVSHMEM_MSI, Endpoint, SystemState
from ivshmem_model.model.system import referenced_descriptors

Observation = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Property:
    name: str
    expectation: str  # "always" or "sometimes"
    doc: str
    check: Callable[[SystemState], str | None] | None = None
    witness: Callable[[list[Observation]], bool] | None = None
    # The check reads only ``state.endpoints`` and ``state.config``: :class:`Judge` reuses its
    # verdict for states with the same endpoint records (tests/test_properties.py holds every
    # such check to it on reachable states).
    local: bool = False


def _running(state: SystemState) -> Iterator[tuple[int, Endpoint]]:
    for e, ep in enumerate(state.endpoints):
        if ep.fate is None:
            yield e, ep


def _at(line: int, where: str) -> str:
    return f"seed {line}" if line else where or "an unknown place"


def _crash_of(state: SystemState, kinds: tuple[str, ...]) -> str | None:
    for e, ep in enumerate(state.endpoints):
        fate = ep.fate
        if fate is not None and fate.kind == "crashed" and fate.reason.split(":", 1)[0] in kinds:
            return f"endpoint {e} crashed at {_at(fate.line, fate.where)}: {fate.reason}"
    return None


def vector_bounds(state: SystemState) -> str | None:
    """Every index into ``msi_vectors``, the MSI-X table, the PBA, the ``peers`` array and the
    peers' eventfd arrays is below its allocation.  An out-of-range index reads or writes
    memory that belongs to something else."""
    return _crash_of(state, ("out_of_bounds",))


def memory_safety(state: SystemState) -> str | None:
    """No read or write through a NULL or freed pointer, and no block freed twice."""
    return _crash_of(state, ("null_deref", "use_after_free", "double_free"))


def no_abort(state: SystemState) -> str | None:
    """No C ``assert`` fails: QEMU never aborts, whatever the server sends or the guest does."""
    for e, ep in enumerate(state.endpoints):
        if ep.fate is not None and ep.fate.kind == "aborted":
            return f"endpoint {e} aborted at {_at(ep.fate.line, ep.fate.where)}: {ep.fate.reason}"
    return None


def no_hang(state: SystemState) -> str | None:
    """No QEMU spins forever (a synchronous read on a closed connection)."""
    for e, ep in enumerate(state.endpoints):
        if ep.fate is not None and ep.fate.kind == "hung":
            return f"endpoint {e} hangs at seed {ep.fate.line}: {ep.fate.reason}"
    return None


def _irqfd_mode(state: SystemState, ep: Endpoint) -> bool:
    device = ep.device
    return (
        device is not None
        and state.config.host.kvm_msi_irqfd
        and bool(device.features & (1 << IVSHMEM_MSI))
    )


def mask_balance(state: SystemState) -> str | None:
    """With KVM irqfds, a vector's ``unmasked`` flag holds exactly when an irqfd is attached
    for it; unmask and mask notifiers alternate (a second unmask or a stray mask would trip
    an assert, which ``no_abort`` reports).  Without a device, no irqfd is left attached."""
    for e, ep in _running(state):
        attached = sorted(virq for virq, _ in ep.irqfds)
        if len(set(attached)) != len(attached):
            return f"endpoint {e}: more than one irqfd on a route: {attached}"
        device = ep.device
        flagged = sorted(v for v, mv in device.msi_vectors if mv.unmasked) if device else []
        if attached != flagged:
            return (
                f"endpoint {e}: irqfds attached for vectors {attached} but unmasked "
                f"flags set for {flagged}"
            )
    return None


def route_balance(state: SystemState) -> str | None:
    """A KVM MSI route exists exactly when the vector's ``pdev`` is set (irqfd mode), none is
    left once MSI-X is disabled, the device reset or unplugged, and no irqfd stays attached to
    a route that was released (it would inject nothing, or whatever reuses the route)."""
    for e, ep in _running(state):
        device = ep.device
        routes = list(ep.kvm_routes)
        stray = sorted({virq for virq, _ in ep.irqfds} - set(routes))
        if stray:
            return f"endpoint {e}: irqfds attached to released routes {stray}"
        if device is None or not _irqfd_mode(state, ep):
            if routes:
                where = "after unplug" if device is None else "without irqfd"
                return f"endpoint {e}: KVM routes {routes} left {where}"
            continue
        if len(set(routes)) != len(routes):
            return f"endpoint {e}: a vector has more than one KVM route: {routes}"
        with_pdev = sorted(v for v, mv in device.msi_vectors if mv.pdev)
        if routes != with_pdev:
            return f"endpoint {e}: KVM routes {routes} but pdev set for vectors {with_pdev}"
        if routes and not (device.msix.present and device.msix.enable):
            return f"endpoint {e}: KVM routes {routes} left while MSI-X is disabled"
    return None


def fd_conservation(state: SystemState) -> str | None:
    """Every descriptor a live process holds is referenced by its state (no leak), no
    process closes, reads or writes a descriptor it does not hold (no double close, no use of
    a stale descriptor, no use of fd 0 through a zeroed notifier), and no main-loop handler is
    left on a descriptor the process closed (its number is reused by the next open)."""
    for e, ep in _running(state):
        for fault in ep.faults:
            if fault.kind == "fd_misuse":
                return f"endpoint {e} at {_at(fault.line, fault.where)}: {fault.detail}"
        for d, vector in ep.fd_handlers:
            entry = state.fds[d] if 0 <= d < len(state.fds) else None
            if entry is None or not entry.open:
                # the main loop still watches a closed number: the next descriptor the
                # process opens gets it, and the handler runs with its freed opaque
                return (f"endpoint {e}: the fd handler of vector {vector} is left on closed "
                        f"descriptor {d}")
    refs = referenced_descriptors(state)
    for d, entry in enumerate(state.fds):
        if entry is None or not entry.open or d in refs or entry.owner == IN_FLIGHT:
            continue
        owner = state.endpoints[entry.owner]
        if owner.fate is None and (owner.connected or owner.device is not None):
            return f"endpoint {entry.owner} leaks descriptor {d}"
    return None


def _server_ids(state: SystemState) -> dict[int, int]:
    return {p.endpoint: p.id for p in state.server.peers}


def peer_view(state: SystemState) -> str | None:
    """Once a device (or a plain client) has read every message queued for it, it knows the
    same peers as the contrib server: ``min(N, vectors)`` eventfds for each connected peer
    (itself included), none for any other id."""
    if state.config.server.policy != "contrib":
        return None
    ids = _server_ids(state)
    n = state.config.server.vectors
    for e, ep in _running(state):
        client = ep.client
        if client is not None and client.stage == 3 and not state.channels[e] and e in ids:
            seen = {p.id: len(p.vectors) for p in client.peers}
            if client.local:
                seen[client.id] = len(client.local)
            want = {pid: n for pid in ids.values()} if n else {}
            if seen != want:
                return f"client {e} knows peers {seen}, the server has {want}"
        device = ep.device
        if device is None or not device.chardev or state.channels[e] or e not in ids:
            continue
        expected = {pid: min(n, device.vectors) for pid in ids.values()}
        known = {posn: p.nb_eventfds for posn, p in device.peers if p.nb_eventfds}
        expected = {pid: count for pid, count in expected.items() if count}
        if known != expected:
            return f"endpoint {e} knows peers {known}, the server has {expected}"
    return None


def serves_on(state: SystemState) -> str | None:
    """The contrib server keeps serving whatever one client does: it goes down only when a
    ``server_exit`` stops it, never on its own because of something a client did (the
    failures it reports and stops on are recorded in the state, ``Server.failure``)."""
    if state.config.server.policy != "contrib" or not state.server.failure:
        return None
    return f"the server shut itself down: {state.server.failure}"


def id_unique(state: SystemState) -> str | None:
    """No two live devices on one server have the same ID."""
    seen: dict[int, int] = {}
    for e, ep in _running(state):
        device = ep.device
        if device is None or not device.chardev:
            continue
        if device.vm_id in seen:
            return f"endpoints {seen[device.vm_id]} and {e} both have id {device.vm_id}"
        seen[device.vm_id] = e
    return None


def ivposition(state: SystemState) -> str | None:
    """IVPOSITION reads the ID the server assigned to this endpoint."""
    if state.config.server.policy != "contrib":
        return None
    ids = _server_ids(state)
    for e, ep in _running(state):
        device = ep.device
        if device is None or not device.chardev or e not in ids:
            continue
        if device.vm_id != ids[e]:
            return f"endpoint {e} reads IVPOSITION {device.vm_id}, the server assigned {ids[e]}"
    return None


def intx_rule(state: SystemState) -> str | None:
    """Only a device without MSI that has an interrupt pin drives INTx, and its line is high
    exactly when ``intrstatus & intrmask`` is non-zero."""
    for e, ep in _running(state):
        device = ep.device
        if device is None:
            continue
        uses_intx = device.interrupt_pin and not device.features & (1 << IVSHMEM_MSI)
        want = 1 if uses_intx and device.intrstatus & device.intrmask else 0
        if device.irq_level != want:
            return f"endpoint {e}: INTx level {device.irq_level}, expected {want}"
    return None


def master_unique(state: SystemState) -> str | None:
    """At most one live device on a server is the migration master."""
    masters = [
        e for e, ep in _running(state)
        if ep.device is not None and ep.device.chardev and ep.device.master == "on"
    ]
    if len(masters) > 1:
        return f"endpoints {masters} are all masters"
    return None


def msi_rule(state: SystemState) -> str | None:
    """A device sends an MSI only while its guest has MSI-X enabled: a disabled function
    raises no interrupt, whatever is pending."""
    for e, ep in _running(state):
        for fault in ep.faults:
            if fault.kind == "msi_misuse":
                return f"endpoint {e} at {_at(fault.line, fault.where)}: {fault.detail}"
    return None


def bar2_width(state: SystemState) -> str | None:
    """ivshmem-plain and ivshmem-doorbell have a 64-bit BAR2 (their instance_init sets
    not_legacy_32bit, seed 1091 and 1159, and realize makes BAR2 64-bit from it, 906-908): a
    guest may place the shared memory above 4 GiB."""
    for e, ep in _running(state):
        device = ep.device
        if device is not None and device.type != "ivshmem" and not device.bar2_64bit:
            return f"endpoint {e}: {device.type} has a 32-bit BAR2"
    return None


def own_vectors_watched(state: SystemState) -> str | None:
    """Without KVM irqfds, every eventfd a realized device holds for one of its own vectors
    has the main loop watching it (seed 388-398): a doorbell rung to that vector reaches the
    guest."""
    if state.config.host.kvm_msi_irqfd:
        return None
    for e, ep in _running(state):
        device = ep.device
        if device is None or not device.chardev or device.vm_id < 0:
            continue
        own = dict(device.peers).get(device.vm_id)
        watched = {d for d, _ in ep.fd_handlers}
        for vector, d in enumerate(own.eventfds[:own.nb_eventfds] if own else ()):
            if d >= 0 and d not in watched:
                return f"endpoint {e}: own vector {vector} (descriptor {d}) is not watched"
    return None


def migration_blockers(state: SystemState) -> str | None:
    """A QEMU's migration is blocked only by its live peer-mode device: a device that failed
    to realize leaves no migration blocker behind."""
    for e, ep in _running(state):
        if ep.stale_blockers:
            return (f"endpoint {e}: {ep.stale_blockers} migration blocker(s) of a device that "
                    "failed to realize")
    return None


MALFORMED = ("server sent invalid", "server sent version")


def protocol_agreement(state: SystemState) -> str | None:
    """With the contrib server, no device fails its setup on a message it finds malformed
    ("server sent invalid ID message", "server sent version ..."): the server and the device
    speak one protocol, on any host."""
    if state.config.server.policy != "contrib":
        return None
    for e, ep in enumerate(state.endpoints):
        fate = ep.fate
        if fate is not None and fate.kind == "failed" and fate.reason.startswith(MALFORMED):
            return f"endpoint {e} refused the contrib server's setup: {fate.reason}"
    return None


def _has(kind: str) -> Callable[[list[Observation]], bool]:
    return lambda obs: any(kind in o for o in obs)


def _doc(check: Callable[[SystemState], str | None]) -> str:
    """A check's docstring: the property's meaning in plain words.  The mypyc build drops
    docstrings (scripts/build-mypyc.sh compiles this module); there they are read from this
    module's source, which the build's package path always reaches."""
    if check.__doc__:
        return check.__doc__
    return _source_docs()[check.__name__]


@functools.cache
def _source_docs() -> dict[str, str]:
    package = sys.modules[__name__.rpartition(".")[0]]
    for folder in package.__path__:
        source = Path(folder) / "invariants.py"
        if source.is_file():
            tree = ast.parse(source.read_text(encoding="utf-8"))
            return {node.name: ast.get_docstring(node, clean=False) or ""
                    for node in tree.body if isinstance(node, ast.FunctionDef)}
    raise FileNotFoundError(f"the source of {__name__}, for its properties' meanings")


PROPERTIES: tuple[Property, ...] = (
    Property("vector_bounds", "always", _doc(vector_bounds), check=vector_bounds,
             local=True),
    Property("mask_balance", "always", _doc(mask_balance), check=mask_balance, local=True),
    Property("route_balance", "always", _doc(route_balance), check=route_balance,
             local=True),
    Property("memory_safety", "always", _doc(memory_safety), check=memory_safety,
             local=True),
    Property("no_abort", "always", _doc(no_abort), check=no_abort, local=True),
    Property("fd_conservation", "always", _doc(fd_conservation), check=fd_conservation),
    Property("peer_view", "always", _doc(peer_view), check=peer_view),
    Property("id_unique", "always", _doc(id_unique), check=id_unique, local=True),
    Property("ivposition", "always", _doc(ivposition), check=ivposition),
    Property("intx_rule", "always", _doc(intx_rule), check=intx_rule, local=True),
    Property("master_unique", "always", _doc(master_unique), check=master_unique,
             local=True),
    Property("no_hang", "always", _doc(no_hang), check=no_hang, local=True),
    Property("msi_rule", "always", _doc(msi_rule), check=msi_rule, local=True),
    Property("bar2_width", "always", _doc(bar2_width), check=bar2_width, local=True),
    Property("protocol_agreement", "always", _doc(protocol_agreement),
             check=protocol_agreement, local=True),
    Property("migration_blockers", "always", _doc(migration_blockers),
             check=migration_blockers, local=True),
    Property("serves_on", "always", _doc(serves_on), check=serves_on),
    Property("own_vectors_watched", "always", _doc(own_vectors_watched),
             check=own_vectors_watched, local=True),
    Property(
        "doorbell_reaches_msi", "sometimes",
        "Some step delivers an MSI to a guest: the model can ring a doorbell end to end.",
        witness=_has("msi"),
    ),
    Property(
        "intx_raised", "sometimes",
        "Some step raises a legacy device's INTx line: the msi=off path works end to end.",
        witness=lambda obs: {"intx": 1} in obs,
    ),
    Property(
        "client_notified", "sometimes",
        "Some step fires a plain client's own vector: a doorbell reaches an ivshmem-client.",
        witness=_has("irq"),
    ),
)

SAFETY: tuple[Property, ...] = tuple(p for p in PROPERTIES if p.expectation == "always")
BY_NAME: dict[str, Property] = {p.name: p for p in PROPERTIES}
_LOCAL: tuple[Property, ...] = tuple(p for p in SAFETY if p.local)
_GLOBAL: tuple[Property, ...] = tuple(p for p in SAFETY if not p.local)
_ORDER: dict[str, int] = {p.name: i for i, p in enumerate(SAFETY)}


_SITE = re.compile(r" at (seed \d+|[\w.]+\.c [\w]+):")


def site_of(message: str) -> str:
    """Where a violation happened, as its message names it ("seed 439", "msix.c msix_notify"),
    or "" for properties about the state as a whole.  Two findings of one property at two
    sites are two bugs."""
    match = _SITE.search(message)
    return match.group(1) if match else ""


def _violated(props: Sequence[Property], state: SystemState) -> list[tuple[str, str]]:
    """The properties of ``props`` that ``state`` violates, in order, as ``(name, message)``."""
    out = []
    for prop in props:
        assert prop.check is not None
        message = prop.check(state)
        if message is not None:
            out.append((prop.name, message))
    return out


def violations(state: SystemState) -> list[tuple[str, str]]:
    """Every safety property ``state`` violates, as ``(name, message)``."""
    return _violated(SAFETY, state)


class Judge:
    """``violations`` for a search that judges many states of one configuration: the
    verdicts of the ``local`` properties are kept per tuple of endpoint records, so a state
    whose step changed no endpoint (a server's send, a delivery that only queues) has only
    the others checked.  The same list, in the same order, as ``violations``."""

    LIMIT = 64  # verdicts kept, the oldest dropped first

    def __init__(self) -> None:
        self._config: object = None
        self._memo: dict[tuple[Endpoint, ...], dict[str, str]] = {}

    def __call__(self, state: SystemState) -> list[tuple[str, str]]:
        if state.config is not self._config:
            self._memo.clear()
            self._config = state.config
        local = self._memo.get(state.endpoints)
        if local is None:
            if len(self._memo) >= self.LIMIT:
                del self._memo[next(iter(self._memo))]
            local = dict(_violated(_LOCAL, state))
            self._memo[state.endpoints] = local
        out = _violated(_GLOBAL, state)
        if local:
            out.extend(local.items())
            out.sort(key=lambda found: _ORDER[found[0]])
        return out

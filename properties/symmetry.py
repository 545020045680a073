"""Symmetry reduction over endpoint numbering (design §5.3): ``representative(state)``.

The explorer may store one state per *orbit*: states that differ only in which endpoint index
plays which part behave the same, so exploring one of them is enough (Stateright's
``Representative``, style.md §1).  ``representative`` permutes endpoints among those that are
interchangeable into a canonical order.

Why this is sound
-----------------
Let ``π`` be a permutation of endpoint indices that maps every endpoint to one of the same
role (``qemu`` or ``client``, from ``config.clients``); ``π(s)`` moves ``endpoints[e]`` and
``channels[e]`` to index ``π(e)``, rewrites every descriptor's ``owner`` and every contrib
server peer's ``endpoint`` through ``π``, and leaves everything else alone.  Then:

1. **The initial state is fixed by π**: every endpoint of a role starts as
   ``Endpoint(role=...)`` with an empty channel, and the server has no peers.
2. **Actions commute with π**: ``step(π(s), π(a)) == π(step(s, a))``, where ``π(a)`` rewrites
   only the action's ``endpoint`` field.  The model never compares endpoint indices with
   anything but endpoint indices: the contrib server assigns IDs by connection order, so an
   ID is data (``vm_id``, ``cur_id``, ``ServerPeer.id``, messages' values), not an index.
   ``Ring.peer`` and ``ClientNotify.peer`` are IDs too; ``candidates`` lets them range over
   ``range(config.endpoints)`` for every endpoint alike.  The realize menu is one per
   configuration, not per endpoint.  The server's peer list stays in connection order
   (only the ``endpoint`` fields are rewritten), so broadcasts keep their order.
   Descriptor and object numbers are allocated by the order of events, not by which endpoint
   an event concerns, so symmetric paths allocate the same numbers.
3. **Enabled actions commute with π**: ``candidates`` yields, for each endpoint, the same
   menu; an action is enabled in ``s`` exactly when ``π(a)`` is enabled in ``π(s)`` (by 2).
4. **Properties are symmetric**: every check loops over all endpoints (``_running``) or over
   descriptors and judges each the same way; a message names the first violating endpoint,
   but its site (``site_of``: the seed line or C function) does not depend on the index.

So the reachable states of ``π(s)`` are the images under π of those of ``s``, with the same
(property, site) violations at the same depths: breadth-first search over representatives
finds exactly the violated (property, site) pairs, at the same shortest lengths.

Paths stay concrete: the explorer expands the concrete state it reached and stores the
concrete action it applied, keyed by representative, so a stored path is a sequence of
concrete actions from the concrete initial state.  Every path is replayed through ``step``
before it is reported (``properties/explore.py``).

The order is canonical: endpoints of one role are sorted by a key computed from their own
parts (endpoint record, channel, place in the server's peer list, the descriptors they own);
two endpoints with equal parts are interchangeable and their order does not matter.  The key
holds the record's Python ``hash`` (cached on the frozen record, stable within a process and
its forked children) and the other parts themselves; a rare hash tie between unequal records
with equal other parts is broken by ``repr``.

Descriptor and object renumbering: not done.  Descriptor numbers appear in fault texts
(``close of already closed descriptor 3``) and the model reuses the lowest free slot, so a
renumbering would have to rewrite texts and free slots to keep ``step`` equivariant.  Symmetric
paths already allocate equal numbers (point 2); how many states differ only in numbering has
not been measured yet.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
from collections.abc import Callable
from typing import Any

from ivshmem_model.model.state import IN_FLIGHT, Fd, Server, ServerPeer, SystemState


def endpoint_classes(state: SystemState) -> tuple[tuple[int, ...], ...]:
    """The index sets whose endpoints may be permuted among themselves (same role).  An
    endpoint that shares its process with others (``config.processes``) is not exchanged
    with anything: it stays where it is."""
    grouped = {e for group in state.config.processes for e in group}
    if not grouped:
        return _classes(len(state.endpoints), state.config.clients)
    return tuple(kept for c in _classes(len(state.endpoints), state.config.clients)
                 if len(kept := tuple(e for e in c if e not in grouped)) > 1)


@functools.lru_cache(maxsize=64)
def _classes(n: int, clients: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    qemus = tuple(e for e in range(n) if e not in clients)
    return tuple(c for c in (qemus, clients) if len(c) > 1)


def canonical_order(state: SystemState) -> list[int]:
    """``order[i]`` is the old index of the endpoint that goes to index ``i``."""
    endpoints = state.endpoints
    order = list(range(len(endpoints)))
    classes = endpoint_classes(state)
    if not classes:
        return order
    # The key below starts with the record's hash: where those differ within every class
    # they alone decide the order, and the rest of the key need not be built.
    for members in classes:
        hashes = {hash(endpoints[e]) for e in members}
        if len(hashes) < len(members):
            return _order_by_keys(state, classes, order)
        for slot, e in zip(members, sorted(members, key=lambda e: hash(endpoints[e])),
                           strict=True):
            order[slot] = e
    return order


def _order_by_keys(state: SystemState, classes: tuple[tuple[int, ...], ...],
                   order: list[int]) -> list[int]:
    """``canonical_order`` with the whole key."""
    endpoints = state.endpoints
    owned: list[list[tuple[int, int, bool]]] = [[] for _ in endpoints]
    for d, entry in enumerate(state.fds):
        if entry is not None and entry.owner != IN_FLIGHT:
            owned[entry.owner].append((d, entry.obj, entry.open))
    slots: dict[int, tuple[int, int, tuple[int, ...]] | tuple[()]] = {}
    for i, p in enumerate(state.server.peers):
        slots.setdefault(p.endpoint, (i, p.id, p.eventfds))
    channels = state.channels
    for members in classes:
        # An endpoint's key: its record's hash (cached), its channel, its place in the server's
        # peer list, the descriptors it owns; compared as tuples, hashed only for the record.
        keys = {e: (hash(endpoints[e]), channels[e], slots.get(e, ()), owned[e])
                for e in members}
        ranked = sorted(members, key=keys.__getitem__)
        for a, b in itertools.pairwise(ranked):
            if keys[a] == keys[b] and endpoints[a] != endpoints[b]:
                ranked = sorted(members, key=lambda e: (keys[e], repr(endpoints[e])))
                break
        for slot, e in zip(members, ranked, strict=True):
            order[slot] = e
    return order


def _builder(cls: type[Any], *changed: str) -> Callable[..., Any]:
    """``build(record, *values)``: a new ``cls`` record with ``values`` for the fields
    ``changed`` and every other field copied from ``record`` (one C-level getter, no
    ``dataclasses.replace``; a field added to ``cls`` later is copied too)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    get = operator.attrgetter(*names)
    where = [names.index(name) for name in changed]

    def build(record: Any, *values: Any) -> Any:
        args = list(get(record))
        for i, value in zip(where, values, strict=True):
            args[i] = value
        return cls(*args)

    return build


_fd_owned_by = _builder(Fd, "owner")
_peer_of = _builder(ServerPeer, "endpoint")
_server_with = _builder(Server, "peers")
_state_with = _builder(SystemState, "server", "endpoints", "channels", "fds")


def permute(state: SystemState, order: list[int]) -> SystemState:
    """The state with endpoint ``order[i]`` moved to index ``i`` (records built directly: the
    fields every record keeps are passed on, only owners and endpoint indices change)."""
    new_index = [0] * len(order)
    for i, old in enumerate(order):
        new_index[old] = i
    fds = tuple(
        entry if entry is None or entry.owner == IN_FLIGHT or new_index[entry.owner] ==
        entry.owner else _fd_owned_by(entry, new_index[entry.owner])
        for entry in state.fds
    )
    server = state.server
    if server.peers:
        server = _server_with(server, tuple(
            _peer_of(p, new_index[p.endpoint]) for p in server.peers))
    endpoints, channels = state.endpoints, state.channels
    permuted: SystemState = _state_with(
        state, server, tuple(endpoints[old] for old in order),
        tuple(channels[old] for old in order), fds)
    return permuted


def representative(state: SystemState) -> SystemState:
    """The canonical member of ``state``'s orbit under permutations of interchangeable
    endpoints (the state itself when it already is canonical)."""
    order = canonical_order(state)
    for i, old in enumerate(order):
        if i != old:
            return permute(state, order)
    return state

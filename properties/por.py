"""Partial-order reduction by sleep sets (``ExploreOptions(por=True)``, ``explore --por``).

Two actions of different endpoints often commute: endpoint 0 enables MSI-X, endpoint 1 reads
IVPOSITION; either order ends in the same state.  Breadth-first search still tries both
orders.  A *sleep set* (Godefroid, 1996, ch. 5) remembers, per stored state, the actions
whose successor another explored path already covers, and the explorer does not ``step``
them there.  Sleep sets never drop a state: the search visits every state the full search
visits, each at the same depth, so every (property, site) violation is found with the same
shortest length, and every ``sometimes`` witness too.  What they save is ``step`` calls
(transitions); states are not fewer (persistent or ample sets would cut states, and need
the cycle proviso; not done).

Footprints
----------
A state has these *components*: ``E[i]`` (the record ``endpoints[i]``) with its part ``N[i]``
(the descriptor numbers the record names, which is what the garbage collector reads of it),
``C[i]`` (the channel ``channels[i]``), ``S`` (the server), ``F[d]`` (descriptor ``d``'s
record), ``O[o]`` (object ``o``) and ``A`` (which slots of the two tables are free).  For a
transition ``x --a--> y`` the explorer computes

* ``Δ(a, x)``: the components ``y`` does not share with ``x``, compared by identity (the model
  passes an unchanged part on as the very object, ``model/system.py Work.commit``; a part
  rebuilt equal counts as changed, which only makes the reduction smaller).  Taking a free
  slot is a change of ``A`` alone (the slot was nobody's), freeing one is ``A`` and the slot.
* ``R(a, x)``: the components ``a`` may read or write at ``x``.  For an action of endpoint
  ``e``: ``E[e]``, ``N[e]``, the descriptors ``E[e]`` names or ``e`` owns and their objects;
  with ``A`` when it took a slot (allocation reads which slots are free); and, for the actions
  that read the channel (:data:`CHANNEL`), ``C[e]``, ``S`` and the descriptors the channel's
  messages carry.  For :data:`GLOBAL` actions and for any step that may have run the garbage
  collector, also everything the collector reads: every ``N[i]`` and ``C[i]``, ``S``, ``A``
  and every descriptor and object.

Why ``R`` is right (read from ``model/``; writes are checked on every transition, reads by
``tests/test_por.py``, which steps both orders of every pair called independent on the
reachable states of four configurations): a handler reads ``state.endpoints[a.endpoint]``
only; device, MSI-X and PCI code reach the rest of the system through their ``Proc``'s
``World`` by the descriptor numbers their records hold or the messages of their own channel
carry (``-1``, none, is tested before any table access), and read the channel and whether the
server is up only in ``ivshmem_recv_msg``, which realize calls; ``deliver``, ``server_send``
and ``realize`` are the channel's readers and writers.  The :data:`GLOBAL` actions act for the
server or for every process (``connect`` broadcasts to every channel, ``disconnect`` closes
a process's descriptors, ``server_exit`` all the server's, ``unplug`` collects garbage
always).  ``collect_garbage`` runs in ``Work.commit`` when a descriptor was closed or the
server replaced; a close writes a new ``Fd`` record (``World.close_fd``) and collection
removes records, so a step that may have collected is one whose server is not the very same
object, or whose descriptor table holds, at some index, a record that is new and closed, or
none where there was one (:func:`may_collect`).  A write outside ``R`` raises
:class:`FootprintError`: the model grew a path this table does not know, and the explorer
stops rather than reduce unsoundly.

Independence
------------
``a`` and ``b`` (both enabled at ``x``) are independent at ``x`` when
``Δ(a, x) ∩ R(b, x) = ∅`` and ``Δ(b, x) ∩ R(a, x) = ∅``.  Then ``b`` reads at ``step(x, a)``
exactly what it reads at ``x`` (``a`` changed none of it), so it is enabled there, makes the
same changes and the same observations, and symmetrically for ``a``; the changes are disjoint
(``Δ ⊆ R``), and every component neither reads is passed on unchanged, so
``step(step(x, a), b) == step(step(x, b), a)``: a diamond, with equal observations on its
parallel edges.  Independence is thus computed at each state from what the transitions did,
not assumed from the endpoints' numbers: a doorbell and the ``handle_irq`` of the endpoint it
rings share an eventfd object and are dependent; two actions of one endpoint can be
independent (a register read and a message the server queues).

The reduction
-------------
Every stored state ``x`` carries a sleep set ``Z(x)``: actions, each with the ``(R, Δ)`` it has
at ``x``.  Expanding ``x``, the explorer skips the actions in ``Z(x)`` and steps the others in
``candidates`` order ``a1, a2, ...``; the successor by ``ai`` is offered the sleep set
``{b ∈ Z(x) ∪ {a1 .. a(i-1)} : b independent of ai at x}``, each ``b`` with its ``(R, Δ)``
unchanged (``b``'s inputs did not change, so neither does what it does).  A state first reached
at level ``d + 1`` keeps the *intersection* of the sets offered by all its in-edges from level
``d``; offers from deeper states are ignored.  Breadth-first order makes the intersection
complete: every in-edge from level ``d`` is explored before level ``d + 1`` is expanded.

Why no state is lost
--------------------
Let ``x`` be expanded at level ``d`` (its distance) with sleep set ``Z``, and ``w`` a sequence
of actions from ``x`` to ``v`` whose intermediate states all lie at their own distances
(``d + 1``, ``d + 2``, ...; true of every shortest path's suffix).  Let ``F(w)`` be the actions
of ``w`` that can be moved to its front by swapping diamonds.  Claim: if ``F(w) ∩ Z = ∅``,
the search reaches ``v`` at level ``d + |w|``.  Induction on ``|w|``: let ``a`` be the first
action of ``F(w)`` in ``candidates`` order; it is enabled at ``x`` and not asleep, so it is
stepped, and ``w ≡ a·w'`` with ``x' = step(x, a)`` at distance ``d + 1``, stored at level
``d + 1`` with ``Z(x') ⊆`` the set offered by this edge.  If some ``b`` were in
``Z(x') ∩ F(w')``, then ``b`` is independent of ``a`` at ``x`` (a diamond), so ``b ∈ F(w)``;
``b ∈ Z`` contradicts the hypothesis and ``b`` stepped before ``a`` contradicts the choice of
``a``.  So the claim holds at ``x'`` for ``w'``.  At the initial state ``Z = ∅``: every
state ``v`` at distance ``n`` is reached at level ``n``.  A ``sometimes`` witness on a skipped
edge ``y --b-->`` is seen on the edge where ``b`` was stepped with the same inputs, at a state
no deeper than ``y``, so the shortest witness length is kept too.

With symmetry
-------------
The search expands the concrete state first found per orbit, and sleep sets name concrete
actions of that state.  An in-edge that reaches the orbit through *another* concrete state
offers the empty set (no renaming of actions is attempted): smaller sets are always sound,
and the claim above then holds for the stored member, whose orbit-mates' paths are its own
renamed (``properties/symmetry.py`` point 2).

Limits: one process (``workers=1``); not with ``graph`` (skipped edges would be missing).
Costs: one component comparison per transition and a set intersection per re-reached state.
Measured (``benchmarks/explore_rate.py``, depth 8 with symmetry): 1.19x fewer steps on
contrib-kvm and contrib-tcg, 1.03-1.06x on the others with a QEMU-only menu, none on the
scripted ones (every action there writes or reads the one channel); the bookkeeping costs
about what the skipped steps save.  Most sleep sets die at the intersection: a state is
usually also reached through a ``connect``, ``disconnect``, ``server_exit`` or an allocating
step, whose footprint is everything.  Persistent (ample) sets, with the cycle proviso, would
cut states; not done.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from ivshmem_model.model.actions import (
    Action,
    Connect,
    Deliver,
    Disconnect,
    Realize,
    ServerExit,
    ServerSend,
    Unplug,
)
from ivshmem_model.model.state import Endpoint, SystemState
from ivshmem_model.model.system import endpoint_descriptors

# Actions that act for the server or for every process (broadcasts to every channel, closes
# every descriptor of a process, or runs the garbage collector whatever happens).
GLOBAL: frozenset[type[Action]] = frozenset({Connect, Disconnect, ServerExit, Unplug})
# Actions that read their endpoint's channel or whether the server is up: ``deliver``,
# ``server_send`` and ``realize`` (whose setup reads messages: ``ivshmem_recv_msg``).
CHANNEL: frozenset[type[Action]] = frozenset({Deliver, Realize, ServerSend})

Sleep = dict[Action, tuple[int, int]]  # asleep action -> (R, Δ) masks
# The empty sleep set, one for every state that has none (most): a dict per frontier state
# would cost 64 bytes.  Never written: ``offered`` and ``intersect`` build new ones.
NO_SLEEP: Sleep = {}


class FootprintError(Exception):
    """A transition changed a component outside the footprint this module assigns it."""


@functools.lru_cache(maxsize=1 << 14)
def _names(ep: Endpoint) -> frozenset[int]:
    """The descriptor numbers endpoint record ``ep`` names (records are shared by states)."""
    return frozenset(endpoint_descriptors(ep, set()))


class Footprints:
    """Component masks for states of ``n`` endpoints.  Bits ``i``, ``n + i``, ``2n + i``:
    ``E[i]``, ``C[i]``, ``N[i]`` (the descriptor numbers ``E[i]`` names: a part of ``E[i]``
    that the garbage collector reads); ``3n``: ``S``; ``3n + 1``: ``A`` (which table slots are
    free); from ``3n + 2`` on, ``F[d]`` and ``O[o]`` interleaved (``F[d]`` at ``3n + 2 + 2d``,
    ``O[o]`` one above)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.server = 1 << 3 * n
        self.alloc = 1 << 3 * n + 1
        self.base = 3 * n + 2
        self.channels = sum(1 << n + i for i in range(n))
        self.names = sum(1 << 2 * n + i for i in range(n))

    def delta(self, x: SystemState, y: SystemState) -> int:
        """The components of ``y`` that are not the very objects of ``x``."""
        if y is x:
            return 0
        mask = 0
        if y.server is not x.server:
            mask |= self.server
        if y.fds is not x.fds:
            mask |= self._table_delta(x.fds, y.fds, self.base)
        if y.objects is not x.objects:
            mask |= self._table_delta(x.objects, y.objects, self.base + 1)
        n = self.n
        if y.endpoints is not x.endpoints:
            for i, (before, after) in enumerate(zip(x.endpoints, y.endpoints, strict=True)):
                if before is not after:
                    mask |= 1 << i
                    if _names(before) != _names(after):
                        mask |= 1 << 2 * n + i
        if y.channels is not x.channels:
            for i, (queued, left) in enumerate(zip(x.channels, y.channels, strict=True)):
                if queued is not left:
                    mask |= 1 << n + i
        return mask

    def _table_delta(self, old: tuple[Any, ...], new: tuple[Any, ...], first: int) -> int:
        """Bits of the entries of a table that changed.  A free slot belongs to ``A``: taking
        one (an entry where there was none, or past the end) is a change of ``A`` alone;
        freeing one, or a shorter table, is ``A`` and the entry's bit."""
        mask = self.alloc if len(old) != len(new) else 0
        for i in range(max(len(old), len(new))):
            before = old[i] if i < len(old) else None
            after = new[i] if i < len(new) else None
            if before is not after:
                if before is None:
                    mask |= self.alloc
                else:
                    mask |= 1 << first + 2 * i
                    if after is None:
                        mask |= self.alloc
        return mask

    def _descriptors(self, fds: tuple[Any, ...], names: Iterable[int]) -> int:
        """The bits of descriptors ``names`` and of the objects behind them."""
        mask = 0
        base = self.base
        for d in names:
            if 0 <= d < len(fds):
                mask |= 1 << base + 2 * d
                entry = fds[d]
                if entry is not None:
                    mask |= 1 << base + 1 + 2 * entry.obj
        return mask

    def reads(self, x: SystemState, e: int) -> tuple[int, int]:
        """What an action of endpoint ``e`` may read or write at ``x`` (no garbage
        collection, no allocation): ``E[e]``, ``N[e]``, the descriptors its record names or
        it owns and the objects behind them; and, for the actions that read the channel
        (:data:`CHANNEL`), also ``C[e]``, ``S`` and what the channel's messages carry."""
        fds = x.fds
        owned = [d for d, entry in enumerate(fds) if entry is not None and entry.owner == e]
        record = (1 << e | 1 << 2 * self.n + e | self._descriptors(fds, _names(x.endpoints[e]))
                  | self._descriptors(fds, owned))
        channel = 1 << self.n + e | self.server | self._descriptors(
            fds, [d for _, d in x.channels[e]])
        return record, record | channel

    def collector(self, x: SystemState) -> int:
        """What ``collect_garbage`` reads or writes at ``x``: every ``N[i]`` and channel, the
        server, ``A`` and every descriptor and object."""
        tables = max(len(x.fds), len(x.objects))
        return (self.names | self.channels | self.server | self.alloc
                | (1 << self.base + 2 * tables) - (1 << self.base))

    def of(self, x: SystemState, action: Action, y: SystemState,
           cache: dict[int, tuple[int, int]]) -> tuple[int, int]:
        """``(R, Δ)`` of the transition ``x --action--> y``; checks ``Δ ⊆ R``.  ``cache`` holds
        ``reads(x, e)`` per endpoint for this ``x``."""
        changed = self.delta(x, y)
        endpoint: int | None = getattr(action, "endpoint", None)
        kind = type(action)
        # an action of a process of several endpoints (config.processes) reads and writes
        # all of theirs: its fate, system_reset, disconnect, launched, fd_count, memdevs
        group = x.config.process_of(endpoint) if endpoint is not None else ()
        if endpoint is None or kind in GLOBAL:
            reads = self.collector(x)
            for m in group:
                reads |= 1 << m | 1 << 2 * self.n + m
        else:
            reads = changed & self.alloc
            for m in group:
                masks = cache.get(m)
                if masks is None:
                    masks = cache[m] = self.reads(x, m)
                reads |= masks[1] if kind in CHANNEL else masks[0]
            if may_collect(x, y):
                reads |= self.collector(x)
        if changed & ~reads:
            raise FootprintError(
                f"{action} changed components {changed & ~reads:#x} outside its footprint "
                f"{reads:#x} (properties/por.py)")
        return reads, changed


def may_collect(x: SystemState, y: SystemState) -> bool:
    """Whether the step ``x -> y`` may have run ``collect_garbage``: the server was replaced,
    or some descriptor record is new and closed, or gone."""
    if y.server is not x.server:
        return True
    old, new = x.fds, y.fds
    if new is old:
        return False
    if len(new) < len(old):
        return True
    for d, entry in enumerate(new):
        if d < len(old) and entry is old[d]:
            continue
        if entry is None or not entry.open:
            return True
    return False


def offered(asleep: Sleep, stepped: list[tuple[Action, int, int]], reads: int,
            changed: int) -> Sleep:
    """The sleep set offered to the successor by an action with footprint ``(reads,
    changed)``: the asleep and the already stepped actions independent of it."""
    out: Sleep = {}
    for b, (rb, db) in asleep.items():
        if not (changed & rb or db & reads):
            out[b] = (rb, db)
    for b, rb, db in stepped:
        if not (changed & rb or db & reads):
            out[b] = (rb, db)
    return out or NO_SLEEP


def intersect(kept: Sleep, offer: Sleep) -> Sleep:
    """The actions asleep on both in-edges (their masks agree: the same state, same inputs)."""
    if not kept:
        return kept
    return {b: masks for b, masks in kept.items() if b in offer} or NO_SLEEP

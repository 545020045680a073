"""Explicit-state exploration: breadth-first over ``successors``, every state judged.

Stateright's loop (style.md §1): a queue, a seen set, parent links, the registry checked on
each new state, the first (hence shortest) path kept per violated property and site.  Options
live in one frozen :class:`ExploreOptions`, like ``CheckerBuilder``: depth and state bounds, a
time limit, symmetry reduction (``properties/symmetry.py``), sleep sets
(``properties/por.py``), partitions on Ray (``properties/distributed.py``) with checkpoints,
seed coverage (``properties/coverage.py``) and the explored graph.

The search goes level by level.  The seen set holds 64-bit fingerprints of the stored states
(their cached ``hash``; ``fingerprints=False`` keeps the states themselves); per state the
search keeps its parent's number and the position of its action in ``candidates(parent)``
(12 bytes), and only the current and the next level's concrete states.  States of the last
level (the depth bound) are judged and counted but not kept.  A step that changes nothing
returns the very state (``model/system.py Work.commit``) and is skipped before any
canonicalization or lookup.  New states are judged by ``properties.invariants.Judge``, which
reuses the verdicts of the properties that read only endpoint records when a step changed
none (the same findings as ``violations``); a witness is looked for until one is found.

Paths are actions only.  The frontier holds the *concrete* states reached; the stored state
is keyed by representative and its parent link names the concrete action applied to the
concrete parent, so a path, rebuilt by replaying those positions from the initial state, is
valid for the concrete model even under symmetry.  Every path is replayed through ``step``
before it is reported; a path that does not end in its violation (or witness) is dropped and
counted in ``unconfirmed``.

Known limits: bounded by depth, states and time, so "no violation" means none within the bounds
(``complete`` says whether a bound cut the search).  Two states with one fingerprint are taken
as one (probability about n**2 / 2**65 for n states; but Python hashes ``-1`` and ``-2``
alike, so two states that differ only by a -1 against a -2, say in a scripted message's
value, always collide: ``fingerprints=False`` where that can matter).
With ``workers > 1`` (or a Ray address, or a checkpoint folder) the search runs on Ray and
gives the same states, transitions and paths; its bounds are checked once per level, and
coverage, the graph and sleep sets are one-process options.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from array import array
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ivshmem_model.model.actions import Action, Config, Trace
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import candidates, initial_state, step
from ivshmem_model.model.variants import Variant
from ivshmem_model.properties.invariants import PROPERTIES, Judge, Property, site_of, violations
from ivshmem_model.properties.por import NO_SLEEP, Footprints, Sleep, intersect, offered
from ivshmem_model.properties.symmetry import representative
from ivshmem_model.properties.trace import run_trace


@dataclass(frozen=True, slots=True)
class ExploreOptions:
    max_depth: int = 10
    max_states: int = 100_000
    time_limit: float = 60.0
    symmetry: bool = False  # store one state per orbit of interchangeable endpoints
    workers: int = 1  # >1: partitions on Ray (properties/distributed.py)
    ray: str | None = None  # a Ray cluster's address; None: a local Ray when workers > 1
    checkpoint: str | None = None  # a folder: save each completed level (Ray)
    resume: bool = False  # continue from the checkpoint folder's last level
    coverage: bool = False  # record seed coverage (slow; one process)
    graph: bool = False  # keep the explored graph as a networkx.DiGraph (one process)
    # The seen set holds 64-bit fingerprints (``hash`` of the stored state) instead of states:
    # a state whose fingerprint equals a seen one's is taken as seen (probability of any such
    # collision about n**2 / 2**65 for n states; -1 and -2 hash alike: see the module's
    # limits).  False: exact, whole states kept.
    fingerprints: bool = True
    # Sleep sets (properties/por.py): the same states and findings, fewer ``step`` calls.
    por: bool = False
    # Keep the next level as serials only and rebuild each state from its parent when it is
    # expanded (one more ``step`` per state): the frontier then holds two levels' worth of
    # states less.  The same states, transitions and findings (Frontier).
    low_memory: bool = False


@dataclass(frozen=True, slots=True)
class Finding:
    property: str
    message: str
    path: tuple[Action, ...]


@dataclass
class ExploreResult:
    states: int = 0
    transitions: int = 0
    depth: int = 0
    complete: bool = True  # the bounds did not cut the search
    seconds: float = 0.0
    # The first (shortest) finding per property and site: one per distinct bug.
    found: dict[tuple[str, str], Finding] = field(default_factory=dict)
    witnesses: dict[str, tuple[Action, ...]] = field(default_factory=dict)
    unconfirmed: int = 0  # paths dropped because their replay did not confirm them
    slept: int = 0  # candidate actions not stepped because they were asleep (por)
    coverage: Any = None  # properties.coverage.Coverage when requested
    graph: Any = None  # networkx.DiGraph when requested: node ids, attrs state/depth/action
    levels: list[Any] = field(default_factory=list)  # distributed: per-level costs (Level)

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds else 0.0


Key = Hashable
Parents = dict[Key, tuple[Key, Action] | None]
SOMETIMES = tuple(p for p in PROPERTIES if p.witness is not None)
NO_PARENT = -1


def rebuild_path(parents: Parents, key: Key) -> tuple[Action, ...]:
    """The actions from the root to ``key``, following the parent links."""
    actions: list[Action] = []
    link = parents[key]
    while link is not None:
        key, action = link
        actions.append(action)
        link = parents[key]
    return tuple(reversed(actions))


def fingerprint(key: Key) -> int:
    """A stored state's 64-bit fingerprint: its hash, cached on its records.  For a state, the
    very int object the state keeps (``SystemState._hash``): while the state is in the
    frontier the seen set's entry costs no int of its own (36 bytes)."""
    h = hash(key)
    kept: int = getattr(key, "_hash", h)  # equal to h once hashed
    return kept


def replay_position(state: SystemState, position: int) -> tuple[Action, SystemState]:
    """The ``position``-th action of ``candidates(state)`` and the state it leads to: a step
    the search recorded, so enabled (``step`` is deterministic)."""
    action = next(itertools.islice(candidates(state), position, None))
    stepped = step(state, action)
    assert stepped is not None, "a recorded step no longer replays"
    return action, stepped[0]


class Frontier:
    """The states of one depth, in three parallel sequences: the concrete states, their
    serials and their sleep sets (a tuple and an int object per state would cost ~95 bytes;
    these cost 24).  A state is let go once expanded (:meth:`release`)."""

    __slots__ = ("serials", "sleeps", "states")

    def __init__(self) -> None:
        self.states: list[SystemState | None] = []
        self.serials = array("q")
        self.sleeps: list[Sleep] = []

    def append(self, state: SystemState | None, serial: int, sleep: Sleep) -> None:
        """``state`` ``None``: rebuilt when expanded (``ExploreOptions.low_memory``)."""
        self.states.append(state)
        self.serials.append(serial)
        self.sleeps.append(sleep)

    def __len__(self) -> int:
        return len(self.states)

    def release(self, index: int) -> None:
        """Drop the state at ``index`` (expanded: the search does not look at it again)."""
        self.states[index] = None

    def meet(self, index: int | None, reached: SystemState, offer: Sleep) -> None:
        """Another in-edge from the level before reached the state at ``index``: keep only
        the actions asleep on both (none if it reached another concrete state of the orbit).
        ``None``: a state of an earlier level (a longer path, not offered)."""
        if index is None:
            return
        state = self.states[index]
        assert state is not None  # sleep sets are not kept with low_memory
        if reached is not state and reached != state:
            offer = NO_SLEEP
        self.sleeps[index] = intersect(self.sleeps[index], offer)


def _witnessed(obs: list[dict[str, Any]], among: tuple[Property, ...] = SOMETIMES) -> list[str]:
    if not obs:
        return []
    return [p.name for p in among if p.witness is not None and p.witness(obs)]


class _Search:
    """The bookkeeping shared by the one-process and the two-process loops.

    The one-process loop numbers the states it stores (``serial``, in the order found) and
    keeps, per state, its parent's number and the position of the action in
    ``candidates(parent)``: two arrays, 12 bytes per state.  A path is rebuilt by replaying
    those positions from the initial state, which reproduces the very concrete states the
    search expanded (``step`` is deterministic)."""

    def __init__(self, config: Config, variant: Variant, options: ExploreOptions) -> None:
        self.config, self.variant, self.options = config, variant, options
        self.result = ExploreResult()
        self.parent = array("q")  # serial -> the parent's serial (NO_PARENT for the root)
        self.via = array("I")  # serial -> position of the action in candidates(parent)
        self.started = time.perf_counter()

    def add(self, parent: int, position: int) -> int:
        """Store a new state reached from ``parent`` by its ``position``-th candidate."""
        self.parent.append(parent)
        self.via.append(position)
        return len(self.parent) - 1

    def path(self, serial: int) -> tuple[Action, ...]:
        """The actions from the initial state to state ``serial``."""
        positions: list[int] = []
        while self.parent[serial] != NO_PARENT:
            positions.append(self.via[serial])
            serial = self.parent[serial]
        state = initial_state(self.config, self.variant)
        actions: list[Action] = []
        for position in reversed(positions):
            action, state = replay_position(state, position)
            actions.append(action)
        return tuple(actions)

    def out_of_budget(self) -> bool:
        return self.result.states >= self.options.max_states or (
            time.perf_counter() - self.started > self.options.time_limit
        )

    def judge(self, serial: int, found: list[tuple[str, str]]) -> None:
        for name, message in found:
            site = (name, site_of(message))
            if site not in self.result.found:
                self.result.found[site] = Finding(name, message, self.path(serial))

    def witness(self, serial: int, action: Action, names: list[str]) -> None:
        for name in names:
            if name not in self.result.witnesses:
                self.result.witnesses[name] = (*self.path(serial), action)

    def finish(self) -> ExploreResult:
        """Replay every path through ``step``; keep only those that end as reported."""
        result = self.result
        for site, finding in list(result.found.items()):
            run = run_trace(Trace(self.config, finding.path), self.variant)
            ok = run.disabled_step is None and run.final is not None and site in {
                (name, site_of(message)) for name, message in violations(run.final)
            }
            if not ok:
                del result.found[site]
                result.unconfirmed += 1
        for name, path in list(result.witnesses.items()):
            run = run_trace(Trace(self.config, path), self.variant)
            if run.disabled_step is not None or name not in _witnessed(
                    run.steps[-1].observations):
                del result.witnesses[name]
                result.unconfirmed += 1
        result.seconds = time.perf_counter() - self.started
        return result


def compiled() -> bool:
    """Whether ``model.system`` runs compiled by mypyc (``scripts/build-mypyc.sh``)."""
    return not hasattr(step, "__code__")


def explore(
    config: Config,
    variant: Variant,
    options: ExploreOptions = ExploreOptions(),
    progress: Callable[[ExploreResult, int], None] | None = None,
) -> ExploreResult:
    """Breadth-first search from the initial state of ``config`` under ``variant``."""
    if options.por and (options.graph or options.workers > 1 or options.ray
                        or options.checkpoint):
        raise ValueError("por is a one-process option without graph (properties/por.py)")
    if options.low_memory and (options.por or options.workers > 1 or options.ray
                               or options.checkpoint):
        raise ValueError("low_memory is a one-process option without por")
    if options.coverage and compiled():
        raise ValueError("coverage traces the interpreted model: run without the mypyc build")
    if options.coverage or options.graph:
        options = replace(options, workers=1, ray=None, checkpoint=None)
    if options.workers > 1 or options.ray or options.checkpoint:
        from ivshmem_model.properties.distributed import explore_distributed

        return explore_distributed(config, variant, options, progress)
    with levels_frozen() as freezing:
        if options.coverage:
            from ivshmem_model.properties.coverage import Recorder

            with Recorder() as recorder:
                search = _explore_one(config, variant, options, progress, recorder.actions,
                                      freezing)
            search.result.coverage = recorder.result()
            return search.finish()
        return _explore_one(config, variant, options, progress, None, freezing).finish()


@contextlib.contextmanager
def levels_frozen() -> Iterator[bool]:
    """Whether the search may move what each level leaves alive into the cyclic collector's
    permanent generation (``gc.freeze``), and everything back at the end.  States are trees
    of records and tuples, freed by reference counting; yet each full collection walks every
    live one again: 15-20% of a one-minute search, its frontier at 10**5 states.  Young
    garbage, cycles included, is still collected.  Not when the caller froze objects itself
    (``gc.unfreeze`` would release its own too)."""
    freezing = not gc.get_freeze_count()
    try:
        yield freezing
    finally:
        if freezing:
            gc.unfreeze()


def _explore_one(
    config: Config, variant: Variant, options: ExploreOptions,
    progress: Callable[[ExploreResult, int], None] | None, enabled_names: set[str] | None,
    freezing: bool = False,
) -> _Search:
    """Level by level: ``frontier`` holds the concrete states of one depth with their serials
    and sleep sets.  The seen set holds fingerprints (or, with ``fingerprints=False``, the
    states themselves)."""
    search = _Search(config, variant, options)
    result = search.result
    canon = representative if options.symmetry else None
    exact = not options.fingerprints
    init = initial_state(config, variant)
    key0 = canon(init) if canon else init
    seen: set[Key] = {key0 if exact else fingerprint(key0)}
    root = search.add(NO_PARENT, 0)
    footprints = Footprints(len(init.endpoints)) if options.por else None
    reads = changed = 0
    graph: Any = None
    ids: dict[Key, int] = {key0: 0}
    if options.graph:
        import networkx as nx

        graph = result.graph = nx.DiGraph()
        graph.add_node(0, state=init, depth=0)
    result.states = 1
    judged = Judge()  # violations(), reusing verdicts on unchanged endpoint records
    unwitnessed = SOMETIMES  # only the first witness of each is kept: stop asking once found
    search.judge(root, judged(init))
    frontier = Frontier()
    frontier.append(init, root, NO_SLEEP)
    rebuild = _Rebuilder(search) if options.low_memory else None
    depth = 0
    while frontier:
        if freezing:
            gc.freeze()  # the levels so far: out of the collector's way (levels_frozen)
        result.depth = depth
        if depth >= options.max_depth:
            result.complete = False
            break
        following = Frontier()
        pending: dict[Key, int] = {}  # por: where in ``following`` a state of this level is
        # The states of the last level are judged and counted, never expanded: not kept.
        last = depth + 1 >= options.max_depth
        beyond = 0
        sleeping = None if last else footprints
        for done, (state, serial, asleep) in enumerate(
                zip(frontier.states, frontier.serials, frontier.sleeps, strict=True)):
            frontier.release(done)
            if rebuild is not None:
                state = rebuild(state, serial)
            assert state is not None
            if progress is not None and result.states % 2048 == 0:
                progress(result, len(frontier) - done + len(following))
            key = (canon(state) if canon else state) if graph is not None else None
            stepped_here: list[tuple[Action, int, int]] = []
            reads_here: dict[int, tuple[int, int]] = {}
            for position, action in enumerate(candidates(state)):
                if asleep and action in asleep:
                    result.slept += 1
                    continue
                stepped = step(state, action)
                if stepped is None:
                    continue
                nxt, obs = stepped
                result.transitions += 1
                if enabled_names is not None:
                    enabled_names.add(action.name)
                if obs and unwitnessed:
                    names = _witnessed(obs, unwitnessed)
                    if names:
                        search.witness(serial, action, names)
                        unwitnessed = tuple(p for p in unwitnessed if p.name not in names)
                if sleeping is not None:
                    reads, changed = sleeping.of(state, action, nxt, reads_here)
                if nxt is state:  # a step that changed nothing: a self-loop, already seen
                    if graph is not None:
                        graph.add_edge(ids[key], ids[key], action=action)
                    if sleeping is not None:
                        stepped_here.append((action, reads, changed))
                    continue
                nkey = canon(nxt) if canon else nxt
                mark = nkey if exact else fingerprint(nkey)
                new = mark not in seen
                if graph is not None:
                    if new:
                        ids[nkey] = len(ids)
                        graph.add_node(ids[nkey], state=nxt, depth=depth + 1)
                    graph.add_edge(ids[key], ids[nkey], action=action)
                offer: Sleep = NO_SLEEP
                if sleeping is not None:
                    offer = offered(asleep, stepped_here, reads, changed)
                    stepped_here.append((action, reads, changed))
                    if not new:
                        following.meet(pending.get(mark), nxt, offer)
                if not new:
                    continue
                seen.add(mark)
                nserial = search.add(serial, position)
                result.states += 1
                search.judge(nserial, judged(nxt))
                if last:
                    beyond += 1
                    continue
                if sleeping is not None:
                    pending[mark] = len(following)
                following.append(None if rebuild is not None else nxt, nserial, offer)
            if search.out_of_budget():
                result.complete = False
                return search
        if last:
            if beyond:
                result.depth = depth + 1
                result.complete = False
            break
        frontier = following
        if rebuild is not None:
            rebuild.next_level()
        depth += 1
    return search


class _Rebuilder:
    """``ExploreOptions.low_memory``: a level is kept as serials only, and each state is
    rebuilt when expanded, by stepping its parent (kept from the level before) with the
    action at its recorded position in ``candidates`` (``step`` is deterministic: the very
    state the search found).  Serials are given level by level in frontier order, so the
    parents of a level are one run of serials, kept in a list, and they are met in order: a
    parent is let go once a later one is used."""

    def __init__(self, search: _Search) -> None:
        self.search = search
        self.parents: list[SystemState | None] = []  # the level before, by serial - first
        self.first = 0
        self.released = 0  # parents below this index are let go
        self.expanded: list[SystemState | None] = []  # this level's, kept as the next parents
        self.expanded_first = -1

    def __call__(self, state: SystemState | None, serial: int) -> SystemState:
        if state is None:
            index = self.search.parent[serial] - self.first
            while self.released < index:
                self.parents[self.released] = None
                self.released += 1
            parent = self.parents[index]
            assert parent is not None
            _, state = replay_position(parent, self.search.via[serial])
        if not self.expanded:
            self.expanded_first = serial
        self.expanded.append(state)
        return state

    def next_level(self) -> None:
        """The level just expanded becomes the parents; the one before is let go."""
        self.parents, self.first = self.expanded, self.expanded_first
        self.released = 0
        self.expanded = []



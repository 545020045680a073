"""Explicit-state exploration: breadth-first over ``successors``, every state judged.

Stateright's loop (style.md §1): a queue, a seen set that doubles as the parent map, the
registry checked on each new state, the first (hence shortest) path kept per violated
property and site.  Options live in one frozen :class:`ExploreOptions`, like ``CheckerBuilder``:
depth and state bounds, a time limit, symmetry reduction (``properties/symmetry.py``), two
worker processes, seed coverage (``properties/coverage.py``) and the explored graph.

Paths are actions only.  The queue holds the *concrete* states reached; the parent map is keyed
by representative and stores the concrete action applied to the concrete parent, so a path is
valid for the concrete model even under symmetry.  Every path is replayed through ``step``
before it is reported; a path that does not end in its violation (or witness) is dropped and
counted in ``unconfirmed``.

Known limits: bounded by depth, states and time, so "no violation" means none within the bounds
(``complete`` says whether a bound cut the search).  With ``workers > 1`` states are
deduplicated by their 64-bit hash (a collision would merge two states; paths are still
replayed), bounds are checked once per level, and coverage and the graph are not recorded
(those options fall back to one process).
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from model.actions import Action, Config, Trace
from model.state import SystemState
from model.system import initial_state, successors
from model.variants import Variant
from properties.invariants import PROPERTIES, site_of, violations
from properties.symmetry import representative
from properties.trace import run_trace


@dataclass(frozen=True, slots=True)
class ExploreOptions:
    max_depth: int = 10
    max_states: int = 100_000
    time_limit: float = 60.0
    symmetry: bool = False  # store one state per orbit of interchangeable endpoints
    workers: int = 1  # >1: level-synchronous BFS in forked worker processes
    coverage: bool = False  # record seed coverage (slow; one process)
    graph: bool = False  # keep the explored graph as a networkx.DiGraph (one process)


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
    coverage: Any = None  # properties.coverage.Coverage when requested
    graph: Any = None  # networkx.DiGraph when requested: node ids, attrs state/depth/action

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds else 0.0


Key = Hashable
Parents = dict[Key, tuple[Key, Action] | None]
SOMETIMES = tuple(p for p in PROPERTIES if p.witness is not None)


def rebuild_path(parents: Parents, key: Key) -> tuple[Action, ...]:
    """The actions from the root to ``key``, following the parent links."""
    actions: list[Action] = []
    link = parents[key]
    while link is not None:
        key, action = link
        actions.append(action)
        link = parents[key]
    return tuple(reversed(actions))


def _witnessed(obs: list[dict[str, Any]]) -> list[str]:
    return [p.name for p in SOMETIMES if p.witness is not None and p.witness(obs)]


class _Search:
    """The bookkeeping shared by the one-process and the two-process loops."""

    def __init__(self, config: Config, variant: Variant, options: ExploreOptions) -> None:
        self.config, self.variant, self.options = config, variant, options
        self.result = ExploreResult()
        self.parents: Parents = {}
        self.started = time.perf_counter()

    def out_of_budget(self) -> bool:
        return self.result.states >= self.options.max_states or (
            time.perf_counter() - self.started > self.options.time_limit
        )

    def judge(self, key: Key, found: list[tuple[str, str]]) -> None:
        for name, message in found:
            site = (name, site_of(message))
            if site not in self.result.found:
                self.result.found[site] = Finding(name, message, rebuild_path(self.parents, key))

    def witness(self, key: Key, action: Action, names: list[str]) -> None:
        for name in names:
            if name not in self.result.witnesses:
                self.result.witnesses[name] = (*rebuild_path(self.parents, key), action)

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


def explore(
    config: Config,
    variant: Variant,
    options: ExploreOptions = ExploreOptions(),
    progress: Callable[[ExploreResult, int], None] | None = None,
) -> ExploreResult:
    """Breadth-first search from the initial state of ``config`` under ``variant``."""
    if options.workers > 1 and not (options.coverage or options.graph):
        return _explore_parallel(config, variant, options, progress)
    if options.coverage:
        from properties.coverage import Recorder

        with Recorder() as recorder:
            search = _explore_one(config, variant, options, progress, recorder.actions)
        search.result.coverage = recorder.result()
        return search.finish()
    return _explore_one(config, variant, options, progress, None).finish()


def _explore_one(
    config: Config, variant: Variant, options: ExploreOptions,
    progress: Callable[[ExploreResult, int], None] | None, enabled_names: set[str] | None,
) -> _Search:
    search = _Search(config, variant, options)
    result, parents = search.result, search.parents
    canon = representative if options.symmetry else None
    init = initial_state(config, variant)
    key0 = canon(init) if canon else init
    parents[key0] = None
    graph: Any = None
    ids: dict[Key, int] = {key0: 0}
    if options.graph:
        import networkx as nx

        graph = result.graph = nx.DiGraph()
        graph.add_node(0, state=init, depth=0)
    queue: deque[tuple[SystemState, Key, int]] = deque([(init, key0, 0)])
    result.states = 1
    search.judge(key0, violations(init))
    while queue:
        state, key, depth = queue.popleft()
        result.depth = max(result.depth, depth)
        if depth >= options.max_depth:
            result.complete = False
            continue
        if progress is not None and result.states % 2048 == 0:
            progress(result, len(queue))
        for action, nxt, obs in successors(state):
            result.transitions += 1
            if enabled_names is not None:
                enabled_names.add(action.name)
            names = _witnessed(obs)
            if names:
                search.witness(key, action, names)
            nkey = canon(nxt) if canon else nxt
            new = nkey not in parents
            if graph is not None:
                if new:
                    ids[nkey] = len(ids)
                    graph.add_node(ids[nkey], state=nxt, depth=depth + 1)
                graph.add_edge(ids[key], ids[nkey], action=action)
            if not new:
                continue
            parents[nkey] = (key, action)
            result.states += 1
            search.judge(nkey, violations(nxt))
            queue.append((nxt, nkey, depth + 1))
        if search.out_of_budget():
            result.complete = False
            break
    return search


# ---------------------------------------------------------------------------------------------
# Two processes: level-synchronous BFS.  Each worker keeps the states it produced; the parent
# owns the seen set (by hash), decides which successors are new, assigns parents in a fixed
# order (so paths are shortest) and moves states between workers to balance the next level.


def _worker(conn: Connection, options: ExploreOptions, pending: list[SystemState]) -> None:
    frontier: list[SystemState] = []
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        if message[0] == "accept":
            _, accepted, give = message
            frontier = [pending[i] for i in accepted]
            pending = []
            conn.send(frontier[len(frontier) - give:] if give else [])
            frontier = frontier[:len(frontier) - give]
            continue
        _, incoming, expand = message  # "expand"
        frontier.extend(incoming)
        judged = [(i, found) for i, s in enumerate(frontier) if (found := violations(s))]
        out: list[tuple[int, Action, int, list[str]]] = []
        if expand:
            for i, state in enumerate(frontier):
                for action, nxt, obs in successors(state):
                    key = representative(nxt) if options.symmetry else nxt
                    out.append((i, action, hash(key), _witnessed(obs)))
                    pending.append(nxt)
        conn.send((judged, out))


def _explore_parallel(
    config: Config, variant: Variant, options: ExploreOptions,
    progress: Callable[[ExploreResult, int], None] | None,
) -> ExploreResult:
    search = _Search(config, variant, options)
    result, parents = search.result, search.parents
    init = initial_state(config, variant)
    key0 = hash(representative(init) if options.symmetry else init)
    parents[key0] = None
    result.states = 1
    n = options.workers
    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe() for _ in range(n)]
    procs = [context.Process(target=_worker, args=(child, options, [init] if w == 0 else []),
                             daemon=True)
             for w, (_, child) in enumerate(pipes)]
    for proc in procs:
        proc.start()
    conns = [parent for parent, _ in pipes]
    # accepted[w]: indices into worker w's pending list, and their keys
    accepted: list[list[int]] = [[0]] + [[] for _ in range(n - 1)]
    keys: list[list[Key]] = [[] for _ in range(n)]
    keys[0].append(key0)
    depth = 0
    try:
        while any(accepted):
            result.depth = depth
            # balance: the richest workers give states to the poorest
            counts = [len(a) for a in accepted]
            target = -(-sum(counts) // n)
            gives = [max(0, c - target) for c in counts]
            for w, conn in enumerate(conns):
                conn.send(("accept", accepted[w], gives[w]))
            moved: list[SystemState] = []
            moved_keys: list[Key] = []
            for w, conn in enumerate(conns):
                moved.extend(conn.recv())
                if gives[w]:
                    moved_keys.extend(keys[w][-gives[w]:])
                    keys[w] = keys[w][:-gives[w]]
            expand = depth < options.max_depth
            for w, conn in enumerate(conns):
                take = max(0, target - len(keys[w]))
                conn.send(("expand", moved[:take], expand))
                keys[w].extend(moved_keys[:take])
                moved, moved_keys = moved[take:], moved_keys[take:]
            replies = [conn.recv() for conn in conns]
            if not expand and any(keys):
                result.complete = False
            for w, (judged, _) in enumerate(replies):
                for i, found in judged:
                    search.judge(keys[w][i], found)
            accepted = [[] for _ in range(n)]
            new_keys: list[list[Key]] = [[] for _ in range(n)]
            full = False
            for w, (_, out) in enumerate(replies):
                for index, (i, action, key, names) in enumerate(out):
                    result.transitions += 1
                    if names:
                        search.witness(keys[w][i], action, names)
                    if key in parents or full:
                        continue
                    parents[key] = (keys[w][i], action)
                    result.states += 1
                    accepted[w].append(index)
                    new_keys[w].append(key)
                    full = result.states >= options.max_states
            keys = new_keys
            if progress is not None:
                progress(result, sum(len(a) for a in accepted))
            if any(accepted) and (full or search.out_of_budget()):
                result.complete = False
                for w, conn in enumerate(conns):  # judge the last level, expand nothing
                    conn.send(("accept", accepted[w], 0))
                    conn.recv()
                    conn.send(("expand", [], False))
                    for i, found in conn.recv()[0]:
                        search.judge(keys[w][i], found)
                result.depth = depth + 1
                break
            depth += 1
    finally:
        for conn in conns:
            conn.send(("stop",))
        for proc in procs:
            proc.join()
    return search.finish()

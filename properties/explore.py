"""Explicit-state exploration: breadth-first over ``successors``, every state judged.

Stateright's loop (style.md §1): a queue, a seen set that doubles as the parent map, the
registry checked on each new state, the first (hence shortest) path kept per violated
property and site.  Options live in one frozen :class:`ExploreOptions`, like ``CheckerBuilder``:
depth and state bounds, a time limit, symmetry reduction (``properties/symmetry.py``),
partitions on Ray (``properties/distributed.py``) with checkpoints, seed coverage
(``properties/coverage.py``) and the explored graph.

Paths are actions only.  The queue holds the *concrete* states reached; the parent map is keyed
by representative and stores the concrete action applied to the concrete parent, so a path is
valid for the concrete model even under symmetry.  Every path is replayed through ``step``
before it is reported; a path that does not end in its violation (or witness) is dropped and
counted in ``unconfirmed``.

Known limits: bounded by depth, states and time, so "no violation" means none within the bounds
(``complete`` says whether a bound cut the search).  With ``workers > 1`` (or a Ray address,
or a checkpoint folder) the search runs on Ray and gives the same states, transitions and paths;
its bounds are checked once per level, and coverage and the graph are one-process options.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
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
    workers: int = 1  # >1: partitions on Ray (properties/distributed.py)
    ray: str | None = None  # a Ray cluster's address; None: a local Ray when workers > 1
    checkpoint: str | None = None  # a folder: save each completed level (Ray)
    resume: bool = False  # continue from the checkpoint folder's last level
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
    levels: list[Any] = field(default_factory=list)  # distributed: per-level costs (Level)

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
    if options.coverage or options.graph:
        options = replace(options, workers=1, ray=None, checkpoint=None)
    if options.workers > 1 or options.ray or options.checkpoint:
        from properties.distributed import explore_distributed

        return explore_distributed(config, variant, options, progress)
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

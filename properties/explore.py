"""Explicit-state exploration: breadth-first over ``successors``, every state judged.

Stateright's loop (style.md §1): a queue, a seen set that doubles as the parent map, the
registry checked on each new state, the first (hence shortest) path kept per violated
property.  Paths are rebuilt from the parent map and are actions only; callers replay them
through ``step`` to confirm.

Known limits: bounded by depth and by state count, so "no violation" means none within the
bounds (the result says whether the bound cut the search); no symmetry reduction yet.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from model.actions import Action, Config
from model.state import SystemState
from model.system import initial_state, successors
from model.variants import Variant
from properties.invariants import PROPERTIES, site_of, violations


@dataclass(frozen=True, slots=True)
class ExploreOptions:
    max_depth: int = 10
    max_states: int = 100_000
    time_limit: float = 60.0


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

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds else 0.0


Parents = dict[SystemState, tuple[SystemState, Action] | None]


def _path(parents: Parents, state: SystemState) -> tuple[Action, ...]:
    actions: list[Action] = []
    link = parents[state]
    while link is not None:
        state, action = link
        actions.append(action)
        link = parents[state]
    return tuple(reversed(actions))


def explore(
    config: Config,
    variant: Variant,
    options: ExploreOptions = ExploreOptions(),
    progress: Callable[[ExploreResult, int], None] | None = None,
) -> ExploreResult:
    """Breadth-first search from the initial state of ``config`` under ``variant``."""
    started = time.perf_counter()
    result = ExploreResult()
    init = initial_state(config, variant)
    parents: Parents = {init: None}
    queue: deque[tuple[SystemState, int]] = deque([(init, 0)])
    sometimes = [p for p in PROPERTIES if p.witness is not None]
    result.states = 1
    for name, message in violations(init):
        result.found[(name, site_of(message))] = Finding(name, message, ())
    while queue:
        state, depth = queue.popleft()
        result.depth = max(result.depth, depth)
        if depth >= options.max_depth:
            result.complete = False
            continue
        if progress is not None and result.states % 2048 == 0:
            progress(result, len(queue))
        for action, nxt, obs in successors(state):
            result.transitions += 1
            for prop in sometimes:
                if prop.name not in result.witnesses and prop.witness and prop.witness(obs):
                    result.witnesses[prop.name] = (*_path(parents, state), action)
            if nxt in parents:
                continue
            parents[nxt] = (state, action)
            result.states += 1
            for name, message in violations(nxt):
                key = (name, site_of(message))
                if key not in result.found:
                    result.found[key] = Finding(name, message, _path(parents, nxt))
            queue.append((nxt, depth + 1))
        if result.states >= options.max_states or (
            time.perf_counter() - started > options.time_limit
        ):
            result.complete = False
            break
    result.seconds = time.perf_counter() - started
    return result

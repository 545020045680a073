"""Swarm verification (SPIN's swarm, Holzmann et al.): many small, diverse, bounded searches
instead of one big one, each a Ray task; what they find is pooled by (property, site).

A search is a :class:`Search`: a kind, a configuration, a variant, a seed, a depth limit and a
time budget.  The kinds differ in where they look:

* ``walk``: random walks from the initial state, each a uniformly drawn enabled action per
  step, up to the depth limit, again and again until the budget is spent;
* ``dfs``: depth-first search with the successors of every state in a seeded random order,
  bounded by depth (a state is revisited only when reached by a shorter path);
* ``hypothesis``: the stateful machine (``properties/stateful.py``) with seeded settings: the
  number of examples, the steps per example and the guest's free rules drawn per search.

Every search judges every state it reaches with the registry and reports the first path per
(property, site), with the seconds it took.  :func:`plan` draws searches from one seed, so a
campaign is reproducible; the driver (``ivshmem_model/campaign_cli.py``) keeps the CPUs busy,
pools the findings, keeps the earliest and the shortest per (property, site), and minimizes the
shortest into a counterexample file (``properties.corpus.minimize_counterexample``).

Known limits: a swarm proves nothing (no search is exhaustive); the budgets are wall-clock, so
two runs of one campaign find the same things only as far as the machines are equally fast.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ivshmem_model.model.actions import Action, Config
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, successors
from ivshmem_model.model.variants import Variant
from ivshmem_model.properties.invariants import site_of, violations

KINDS = ("walk", "dfs", "hypothesis")
Site = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Search:
    kind: str
    config_name: str
    config: Config
    variant: Variant
    seed: int
    depth: int
    seconds: float

    def describe(self) -> str:
        return (f"{self.kind} seed {self.seed} depth {self.depth} on {self.config_name} "
                f"under {self.variant.name}")


@dataclass(frozen=True, slots=True)
class Hit:
    property: str
    site: str
    message: str
    steps: tuple[Action, ...]
    seconds: float  # since the search started


@dataclass
class Report:
    search: Search
    started: float  # wall clock (time.time) when the search started
    seconds: float = 0.0
    states: int = 0  # states judged
    hits: dict[Site, Hit] = field(default_factory=dict)

    def judge(self, state: SystemState, steps: list[Action], began: float) -> None:
        self.states += 1
        for name, message in violations(state):
            site = (name, site_of(message))
            if site not in self.hits:
                self.hits[site] = Hit(name, site[1], message, tuple(steps),
                                      time.perf_counter() - began)


def plan(configs: list[tuple[str, Config, int]], variants: list[Variant], seed: int,
         count: int, seconds: float) -> list[Search]:
    """``count`` searches drawn from ``seed``: kinds, configurations and variants in turn, depth
    limits around each configuration's own (``(name, config, depth)``), seeds at random."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        name, config, depth = configs[i // len(KINDS) % len(configs)]
        kind = KINDS[i % len(KINDS)]
        limit = rng.randint(max(3, depth - 3), depth + 4) if kind == "dfs" else \
            rng.randint(depth, 3 * depth)
        out.append(Search(kind, name, config, variants[i // (len(KINDS) * len(configs))
                                                        % len(variants)],
                          rng.randrange(2**32), limit, seconds))
    return out


def run_search(search: Search) -> Report:
    """Run one search to its budget; the first path per (property, site) it reached."""
    report = Report(search, time.time())
    began = time.perf_counter()
    {"walk": _walk, "dfs": _dfs, "hypothesis": _hypothesis}[search.kind](search, report, began)
    report.seconds = time.perf_counter() - began
    return report


def _walk(search: Search, report: Report, began: float) -> None:
    rng = random.Random(search.seed)
    init = initial_state(search.config, search.variant)
    report.judge(init, [], began)
    while time.perf_counter() - began < search.seconds:
        state, steps = init, []
        for _ in range(search.depth):
            options = successors(state)
            if not options:
                break
            action, state, _ = rng.choice(options)
            steps.append(action)
            report.judge(state, steps, began)


def _dfs(search: Search, report: Report, began: float) -> None:
    rng = random.Random(search.seed)
    init = initial_state(search.config, search.variant)
    report.judge(init, [], began)
    depth_of: dict[SystemState, int] = {init: 0}
    stack: list[tuple[SystemState, list[Action]]] = [(init, [])]
    while stack and time.perf_counter() - began < search.seconds:
        state, steps = stack.pop()
        if len(steps) >= search.depth:
            continue
        options = successors(state)
        rng.shuffle(options)
        for action, nxt, _ in options:
            if depth_of.get(nxt, search.depth + 1) <= len(steps) + 1:
                continue
            depth_of[nxt] = len(steps) + 1
            report.judge(nxt, [*steps, action], began)
            stack.append((nxt, [*steps, action]))


def _hypothesis(search: Search, report: Report, began: float) -> None:
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as seeded
    from hypothesis.stateful import run_state_machine_as_test

    from ivshmem_model.properties.stateful import last_failure, machine_for

    rng = random.Random(search.seed)
    machine = machine_for(search.config, search.variant, guest=rng.random() < 0.5)
    chosen = settings(max_examples=rng.choice([25, 50, 100, 200]),
                      stateful_step_count=search.depth, deadline=None, database=None,
                      phases=(Phase.generate,), suppress_health_check=list(HealthCheck))
    report.states = chosen.max_examples
    try:
        run_state_machine_as_test(  # type: ignore[no-untyped-call,unused-ignore]
            seeded(search.seed)(machine), settings=chosen)
    except AssertionError:
        failure = last_failure(machine)
        if failure is not None:
            report.hits[(failure.property, site_of(failure.message))] = Hit(
                failure.property, site_of(failure.message), failure.message, failure.steps,
                time.perf_counter() - began)


def campaign(searches: list[Search], workers: int, address: str | None, seconds: float,
             on_report: Callable[[Report, float], None]) -> int:
    """Run ``searches`` as Ray tasks, ``workers`` at a time, starting none after ``seconds``;
    ``on_report(report, campaign_start)`` as each ends.  Returns the number run."""
    from ivshmem_model.properties.raysession import ray_session

    with ray_session(address, workers) as ray:
        task = ray.remote(num_cpus=1)(run_search)
        queue, ran = list(searches), 0
        running: dict[Any, Search] = {}
        start = time.time()
        while queue or running:
            while queue and len(running) < workers and time.time() - start < seconds:
                search = queue.pop(0)
                running[task.remote(search)] = search
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                del running[ref]
                ran += 1
                on_report(ray.get(ref), start)
    return ran

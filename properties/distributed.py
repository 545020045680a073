"""Distributed exploration on Ray: the explorer's breadth-first search, partitioned by fingerprint.

Distributed TLC's scheme.  Each of N partitions (a Ray actor) owns the states whose fingerprint
falls to it, holds their seen set and the part of the current level it owns.  A level is two
rounds: every partition *expands* its frontier and sends each successor to the successor's
owner (one pickled batch per destination, moved by Ray's object store, not by the driver); then
every partition *absorbs* what it received, keeps the states it has not seen, and judges them.
The driver only starts rounds, adds up counters and keeps the best finding per property and site.

Same answer as one process.  A state carries its *index path*: the positions, in
``successors(parent)``'s fixed order, of the actions that reached it.  The one-process queue
visits a level in the lexicographic order of those paths and keeps, for a state reached twice,
the first path; so every partition keeps the lexicographically least path per state, and the
driver the least path per property and site (and per witness).  States, transitions, depth and
every path equal the one-process explorer's (``tests/test_distributed.py`` pins it).

Fingerprints.  A state's owner is chosen by its ``hash`` (:func:`fingerprint`), which its
records cache and carry when pickled (``model/state.py``).  The seen sets hold those 64-bit
fingerprints, as the one-process explorer's do (``ExploreOptions.fingerprints``; False keeps
whole states, exact), and a batch carries each successor's fingerprint beside the concrete state
and its path, so under symmetry the representative is computed by the sender and never moved.
So every process must hash alike, which Python does not by default:
strings hash by a per-process seed, and on Python 3.11 ``hash(None)`` is ``None``'s address,
which address randomization moves (``symmetry.representative`` orders endpoints by ``hash``
too).  Ray starts the workers with ``PYTHONHASHSEED`` fixed under ``setarch -R``
(``properties.raysession.worker_environment``), and the partitions' hashes are compared before
a search: a cluster whose nodes differ is refused with that message.  The driver never hashes
a state it sends.  (A digest of ``repr``, independent of all this, cost as much as ``step`` itself.)

Checkpoints.  With a checkpoint folder, each partition writes its seen set and frontier after
every completed level, then the driver writes ``checkpoint.json`` (counters, findings, paths);
a stopped run resumes from the last level whose ``checkpoint.json`` was written, with any
number of partitions and new bounds.  On a cluster the folder must be shared by every node.

Known limits: the state and time bounds are checked between levels (one process checks after
each state), so a bounded run may finish the level past the bound; coverage and the graph are
one-process options.  Every node of a cluster needs this package installed, same version.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivshmem_model.model.actions import Action, Config, config_from_json
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, successors
from ivshmem_model.model.variants import SEED, Variant
from ivshmem_model.properties.explore import (
    ExploreOptions,
    ExploreResult,
    Finding,
    Key,
    _Search,
    _witnessed,
    fingerprint,
)
from ivshmem_model.properties.invariants import site_of, violations
from ivshmem_model.properties.raysession import ACTORS, HASH_SEED, DistributedError, ray_session
from ivshmem_model.properties.symmetry import representative

__all__ = ["DistributedError", "explore_distributed", "owner", "ray_session"]

CHECKPOINT_FORMAT = "ivshmem-explore-checkpoint/2"  # /2: seen sets of fingerprints
IndexPath = tuple[int, ...]
Site = tuple[str, str]


# What a seen set holds for a state: its fingerprint, or the stored state itself (exact mode).
Mark = Hashable


def owner_of(fingerprint_: int, partitions: int) -> int:
    """The partition that owns the states of this fingerprint: mixed, modulo the partitions."""
    return ((fingerprint_ & 0xFFFFFFFFFFFFFFFF) * 0x9E3779B97F4A7C15 >> 17) % partitions


def owner(key: Key, partitions: int) -> int:
    """The partition that owns ``key`` (a stored state)."""
    return owner_of(fingerprint(key), partitions)


def _better(old: IndexPath | None, path: IndexPath) -> bool:
    """Whether ``path`` comes before ``old`` in the one-process queue's order."""
    return old is None or path < old


@dataclass
class LevelStats:
    """What one partition reports after a round."""
    transitions: int = 0
    new: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    found: dict[Site, tuple[IndexPath, str]] = field(default_factory=dict)
    witnesses: dict[str, IndexPath] = field(default_factory=dict)


class Partition:
    """One Ray actor: the states it owns (its seen set) and its part of the frontier."""

    def __init__(self, index: int, partitions: int, niceness: int) -> None:
        self.index, self.partitions = index, partitions
        self.reset(Config(), SEED, False)
        # Ray starts workers at niceness 15; a partition is the search itself, not background
        # work, so it runs at the driver's (where it may: lowering niceness needs privilege).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)

    def reset(self, config: Config, variant: Variant, symmetry: bool,
              exact: bool = False) -> None:
        """Forget everything: a new search (actors are kept between searches)."""
        self.config, self.variant, self.symmetry, self.exact = config, variant, symmetry, exact
        self.seen: set[Mark] = set()
        self.frontier: list[tuple[SystemState, IndexPath]] = []
        self.local: dict[Mark, tuple[SystemState, IndexPath]] = {}

    def probe(self) -> tuple[int, int]:
        """Hashes that differ between processes unless they are started alike."""
        return hash(None), hash("ivshmem")

    def seen_bytes(self) -> int:
        """Memory of the seen set: the hash table and, with fingerprints, the int objects
        (what ``docs/scaling.md`` counts per state; exact marks are shared with the model's
        records and not counted)."""
        table = sys.getsizeof(self.seen)
        return table if self.exact else table + sum(sys.getsizeof(m) for m in self.seen)

    def mark(self, state: SystemState) -> Mark:
        """What the seen set holds for a concrete state: its representative's fingerprint,
        or the representative itself in exact mode."""
        key = representative(state) if self.symmetry else state
        return key if self.exact else fingerprint(key)

    def owner(self, mark: Mark) -> int:
        """The mark's partition: its hash is the state's fingerprint in exact mode, and a
        fingerprint's own hash (an int's) otherwise; every process computes it alike."""
        return owner_of(hash(mark), self.partitions)

    def start(self) -> LevelStats:
        """Level 0: the owner of the initial state takes it and judges it."""
        init = initial_state(self.config, self.variant)
        stats = LevelStats()
        mark = self.mark(init)
        if self.owner(mark) == self.index:
            self._take({mark: (init, ())}, stats)
        return stats

    def expand(self) -> list[Any]:
        """Every successor of the frontier, batched per owner: N pickled batches, then stats."""
        began = time.perf_counter()
        stats = LevelStats()
        batches: list[dict[Mark, tuple[SystemState, IndexPath]]] = [
            {} for _ in range(self.partitions)]
        for state, path in self.frontier:
            for i, (_, nxt, obs) in enumerate(successors(state)):
                stats.transitions += 1
                npath = (*path, i)
                for name in _witnessed(obs):
                    if _better(stats.witnesses.get(name), npath):
                        stats.witnesses[name] = npath
                if nxt is state:  # a step that changed nothing: the state is seen
                    continue
                mark = self.mark(nxt)
                dest = self.owner(mark)
                if dest == self.index and mark in self.seen:
                    continue
                batch = batches[dest]
                old = batch.get(mark)
                if _better(old and old[1], npath):
                    batch[mark] = (nxt, npath)
        self.frontier = []
        self.local = batches[self.index]  # what stays here is not pickled
        out: list[Any] = []
        for dest, batch in enumerate(batches):
            # A fingerprint is 8 bytes; an exact mark under symmetry is a second state, without
            # symmetry it is the state itself, which pickle's memo sends once.
            data = b"" if dest == self.index else pickle.dumps(
                [(m, s, p) for m, (s, p) in batch.items()], protocol=5)
            stats.bytes_out += len(data)
            out.append(data)
        stats.seconds = time.perf_counter() - began
        return [*out, stats]

    def absorb(self, *batches: bytes) -> LevelStats:
        """Keep the unseen states among those sent here (least path first), and judge them."""
        began = time.perf_counter()
        fresh, self.local = self.local, {}
        for data in batches:
            for mark, state, path in pickle.loads(data) if data else ():
                old = fresh.get(mark)
                if mark not in self.seen and _better(old and old[1], path):
                    fresh[mark] = (state, path)
        stats = LevelStats()
        self._take(fresh, stats)
        stats.seconds = time.perf_counter() - began
        return stats

    def _take(self, fresh: dict[Mark, tuple[SystemState, IndexPath]],
              stats: LevelStats) -> None:
        self.seen.update(fresh)
        self.frontier = list(fresh.values())
        stats.new = len(self.frontier)
        for state, path in self.frontier:
            for name, message in violations(state):
                site = (name, site_of(message))
                known = stats.found.get(site)
                if _better(known and known[0], path):
                    stats.found[site] = (path, message)

    def save(self, folder: str, level: int) -> None:
        final = Path(folder) / f"level-{level}-part-{self.index}.pkl"
        tmp = final.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps((self.seen, self.frontier), protocol=5))
        tmp.replace(final)

    def load(self, folder: str, level: int, parts: int) -> int:
        """Take this partition's share of every part written at ``level``."""
        for i in range(parts):
            seen, frontier = pickle.loads(
                (Path(folder) / f"level-{level}-part-{i}.pkl").read_bytes())
            self.seen.update(m for m in seen if self.owner(m) == self.index)
            self.frontier.extend((s, p) for s, p in frontier
                                 if self.owner(self.mark(s)) == self.index)
        return len(self.frontier)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass(frozen=True)
class Level:
    """What one level cost (``ExploreResult.levels``; figures in ``docs/scaling.md``)."""
    level: int
    new: int  # states first reached at this level
    transitions: int  # successors computed to reach it
    seconds: float  # wall clock, both rounds
    bytes: int  # pickled successor batches moved between partitions
    busy: list[float]  # per partition: seconds expanding and absorbing


def _meta(config: Config, variant: Variant, options: ExploreOptions) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "config": config.to_json(), "variant": variant.name,
            "symmetry": options.symmetry, "fingerprints": options.fingerprints}


def read_checkpoint(folder: str, config: Config, variant: Variant,
                    options: ExploreOptions) -> dict[str, Any] | None:
    """The last completed level saved in ``folder``, or None if there is none yet."""
    path = Path(folder) / "checkpoint.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        mine = _meta(config, variant, options)
        mismatch = [k for k in mine if saved.get(k) != mine[k]]
    except (OSError, ValueError, AttributeError) as err:
        raise DistributedError(f"{path}: unreadable checkpoint ({err})") from None
    if mismatch:
        raise DistributedError(
            f"{path} is the checkpoint of another run (differs in: {', '.join(mismatch)})")
    config_from_json(saved["config"])
    return dict(saved)


def explore_distributed(
    config: Config, variant: Variant, options: ExploreOptions,
    progress: Callable[[ExploreResult, int], None] | None = None,
) -> ExploreResult:
    """The breadth-first search of ``properties.explore.explore`` over ``options.workers``
    Ray actors (at ``options.ray``, or on a local Ray started here)."""
    search = _Search(config, variant, options)
    result = search.result
    n = options.workers
    folder = options.checkpoint
    saved = read_checkpoint(folder, config, variant, options) if folder else None
    if saved is not None and not options.resume:
        raise DistributedError(f"{folder} holds a checkpoint (level {saved['level']}): resume "
                               "it, or give another folder")
    if options.resume and saved is None:
        raise DistributedError(f"nothing to resume: no checkpoint.json in {folder}")
    found: dict[Site, tuple[IndexPath, str]] = {}
    witnesses: dict[str, IndexPath] = {}
    spent = 0.0
    with ray_session(options.ray, n) as ray:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < n:
            raise DistributedError(f"{n} partitions need {n} CPUs; the Ray cluster has {cpus:g}")
        parts = _partitions(ray, n)
        if len(set(ray.get([p.probe.remote() for p in parts]))) != 1:
            raise DistributedError(
                "the Ray workers hash differently; on a cluster start every node's workers "
                f"with PYTHONHASHSEED={HASH_SEED} and without address randomization "
                "(setarch -R), see properties/distributed.py")
        ray.get([p.reset.remote(config, variant, options.symmetry, not options.fingerprints)
                 for p in parts])
        if saved is not None:
            level = saved["level"]
            sizes = ray.get([p.load.remote(folder, level, saved["parts"]) for p in parts])
            result.states, result.transitions = saved["states"], saved["transitions"]
            found = {(s["property"], s["site"]): (tuple(s["path"]), s["message"])
                     for s in saved["found"]}
            witnesses = {k: tuple(v) for k, v in saved["witnesses"].items()}
            spent = saved["seconds"]
        else:
            level = 0
            starts = ray.get([p.start.remote() for p in parts])
            sizes = [s.new for s in starts]
            result.states = sum(sizes)
            _merge_found(found, starts)
            if folder:
                _checkpoint(ray, parts, folder, level, config, variant, options, result,
                            found, witnesses, spent + time.perf_counter() - search.started)
        while sum(sizes):
            result.depth = level
            if level >= options.max_depth or search.out_of_budget():
                result.complete = False
                break
            began = time.perf_counter()
            expanded = [p.expand.options(num_returns=n + 1).remote() for p in parts]
            absorbed = [parts[j].absorb.remote(*[refs[j] for refs in expanded])
                        for j in range(n)]
            out_stats = ray.get([refs[n] for refs in expanded])
            in_stats = ray.get(absorbed)
            level += 1
            sizes = [s.new for s in in_stats]
            result.states += sum(sizes)
            result.transitions += sum(s.transitions for s in out_stats)
            _merge_found(found, in_stats)
            for s in out_stats:
                for name, path in s.witnesses.items():
                    old = witnesses.get(name)
                    if old is None or (len(path), path) < (len(old), old):
                        witnesses[name] = path
            if folder:
                _checkpoint(ray, parts, folder, level, config, variant, options, result,
                            found, witnesses, spent + time.perf_counter() - search.started)
            result.levels.append(Level(
                level, sum(sizes), sum(s.transitions for s in out_stats),
                time.perf_counter() - began, sum(s.bytes_out for s in out_stats),
                [a.seconds + b.seconds for a, b in zip(out_stats, in_stats, strict=True)]))
            if progress is not None:
                progress(result, sum(sizes))
    for (name, site), (path, message) in sorted(found.items(),
                                                key=lambda kv: (len(kv[1][0]), kv[1][0])):
        result.found[(name, site)] = Finding(name, message, actions_of(config, variant, path))
    for name, path in witnesses.items():
        result.witnesses[name] = actions_of(config, variant, path)
    search.started -= spent
    return search.finish()


def _partitions(ray: Any, n: int) -> list[Any]:
    """N partition actors, kept for the next search in the same Ray session (an actor takes
    about half a second to start)."""
    context = ray.get_runtime_context()
    session = (context.gcs_address, context.get_job_id(), n)
    if session not in ACTORS:
        ACTORS.clear()
        actor = ray.remote(num_cpus=1)(Partition)
        ACTORS[session] = [actor.remote(i, n, os.getpriority(os.PRIO_PROCESS, 0))
                          for i in range(n)]
    return ACTORS[session]


def _merge_found(found: dict[Site, tuple[IndexPath, str]], stats: list[LevelStats]) -> None:
    """Keep the least path per site; earlier levels came first, so only ties in length move."""
    for s in stats:
        for site, (path, message) in s.found.items():
            old = found.get(site)
            if old is None or (len(path), path) < (len(old[0]), old[0]):
                found[site] = (path, message)


def _checkpoint(ray: Any, parts: list[Any], folder: str, level: int, config: Config,
                variant: Variant, options: ExploreOptions, result: ExploreResult,
                found: dict[Site, tuple[IndexPath, str]], witnesses: dict[str, IndexPath],
                seconds: float) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    ray.get([p.save.remote(folder, level) for p in parts])
    meta = {**_meta(config, variant, options), "level": level, "parts": len(parts),
            "states": result.states, "transitions": result.transitions, "seconds": seconds,
            "found": [{"property": name, "site": site, "path": list(path), "message": message}
                      for (name, site), (path, message) in found.items()],
            "witnesses": {k: list(v) for k, v in witnesses.items()}}
    tmp = Path(folder) / "checkpoint.json.tmp"
    tmp.write_text(json.dumps(meta) + "\n")
    tmp.replace(Path(folder) / "checkpoint.json")
    for old in Path(folder).glob("level-*-part-*.pkl"):
        if not old.name.startswith(f"level-{level}-"):
            old.unlink()


def actions_of(config: Config, variant: Variant, path: IndexPath) -> tuple[Action, ...]:
    """The actions an index path stands for, replayed through ``successors``."""
    state = initial_state(config, variant)
    actions: list[Action] = []
    for i in path:
        action, state, _ = successors(state)[i]
        actions.append(action)
    return tuple(actions)

"""``ivshmem-model swarm`` and ``ivshmem-model fuzz``: campaigns beyond one process.

``swarm`` runs many diverse bounded searches as Ray tasks (``properties/swarm.py``) and
``fuzz`` runs HypoFuzz on the stateful machine (``properties/fuzz.py``).  Both report each
(property, site) when it is first found, keep the shortest trace per (property, site) and write
it, minimized, as a counterexample file; ``--json`` gives the timeline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivshmem_model.graph_cli import variant_help
from ivshmem_model.model.actions import Action, Config, TraceError
from ivshmem_model.model.variants import VARIANTS, variant_option

EXIT_OK, EXIT_BAD_INPUT = 0, 2


@dataclass
class Found:
    """The first sighting and the shortest trace of one (property, site)."""
    property: str
    site: str
    message: str
    config_name: str
    config: Config
    variant: str
    steps: tuple[Action, ...]
    seconds: float  # since the campaign started
    by: str


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, flush=True)


def write_findings(found: dict[tuple[str, str, str], Found], out: str, origin: str,
                   minimize: bool = True) -> list[dict[str, Any]]:
    """Minimize each finding's shortest trace into a counterexample file in ``out``."""
    from ivshmem_model.properties.corpus import (
        make_counterexample,
        minimize_counterexample,
        slug,
        write_counterexample,
    )

    rows = []
    for (variant, prop, site), f in sorted(found.items(), key=lambda kv: kv[1].seconds):
        name = "-".join(slug(part) for part in (origin, f.config_name, variant, prop, site)
                        if part)
        cx = make_counterexample(name, prop, f.message, f.config, f.steps,
                                 f"ivshmem-model {origin}: {f.by}, after {f.seconds:.1f} s")
        if minimize:  # ValueError: another variant's outcome shifted; keep the trace as found
            with contextlib.suppress(ValueError):
                cx = minimize_counterexample(cx)
        path = write_counterexample(Path(out), cx)
        rows.append({"variant": variant, "property": prop, "site": site,
                     "seconds": round(f.seconds, 2), "by": f.by, "config": f.config_name,
                     "steps_found": len(f.steps), "steps": len(cx.trace.steps),
                     "file": str(path), "message": f.message})
    return rows


def _configs(args: argparse.Namespace) -> list[Any]:
    from ivshmem_model.properties.configs import embedded_configs, load_config_file

    return [load_config_file(f) for f in args.config] if args.config else embedded_configs()


def _positive(value: float, flag: str) -> None:
    if not value > 0:
        raise TraceError(f"expected a positive number, got {value:g}", flag)


# ---------------------------------------------------------------------------------------------
# swarm


def cmd_swarm(args: argparse.Namespace) -> int:
    from ivshmem_model.properties.raysession import DistributedError
    from ivshmem_model.properties.swarm import Report, campaign, plan

    variants = [variant_option(v) for v in (args.variant or ["seed"])]
    for value, flag in ((args.searches, "--searches"), (args.budget, "--budget"),
                        (args.seconds, "--seconds"), (args.workers, "--workers")):
        _positive(value, flag)
    named = _configs(args)
    searches = plan([(n.name, n.config, n.depth) for n in named], variants, args.seed,
                    args.searches, args.budget)
    found: dict[tuple[str, str, str], Found] = {}
    timeline: list[dict[str, Any]] = []
    states = 0

    def on_report(report: Report, start: float) -> None:
        nonlocal states
        states += report.states
        search = report.search
        for (prop, site), hit in sorted(report.hits.items(), key=lambda kv: kv[1].seconds):
            at = report.started - start + hit.seconds
            key = (search.variant.name, prop, site)
            old = found.get(key)
            if old is None:
                timeline.append({"seconds": round(at, 2), "variant": key[0], "property": prop,
                                 "site": site, "by": search.describe(),
                                 "steps": len(hit.steps)})
                _say(args, f"{at:7.1f} s  {prop} at {site or '(the state)'} under "
                           f"{key[0]}: {len(hit.steps)} steps ({search.describe()})")
            if old is None or len(hit.steps) < len(old.steps):
                found[key] = Found(prop, site, hit.message, search.config_name, search.config,
                                   search.variant.name, hit.steps,
                                   old.seconds if old else at, search.describe())

    began = time.perf_counter()
    try:
        ran = campaign(searches, args.workers, args.ray, args.seconds, on_report)
    except DistributedError as err:
        raise TraceError(str(err), "--ray" if args.ray else "--workers") from None
    seconds = time.perf_counter() - began
    _say(args, f"{ran} searches, {states} states judged, {len(found)} distinct (property, "
               f"site) in {seconds:.1f} s; minimizing into {args.out}/")
    rows = write_findings(found, args.out, "swarm")
    if args.json:
        print(json.dumps({"searches": ran, "states": states, "seconds": round(seconds, 2),
                          "timeline": timeline, "findings": rows}, indent=2))
    else:
        for row in rows:
            print(f"{row['seconds']:7.1f} s  {row['property']} at {row['site'] or '-'} "
                  f"[{row['variant']}]: {row['steps_found']} -> {row['steps']} steps, "
                  f"{row['file']}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# fuzz

TARGETS_FILE = Path(__file__).parent / "properties" / "fuzz_targets.py"


def fuzz_command(workers: int, port: int | None) -> list[str]:
    """The HypoFuzz command line ``fuzz`` runs (also the documented way to run it by hand)."""
    dashboard = ["--port", str(port)] if port is not None else ["--no-dashboard"]
    return [sys.executable, "-c", "from hypothesis.extra.cli import main; main()", "fuzz",
            "-n", str(workers), *dashboard, "--",
            str(TARGETS_FILE), "-o", "addopts=", "-p", "no:cacheprovider", "-q"]


def cmd_fuzz(args: argparse.Namespace) -> int:
    from ivshmem_model.properties import fuzz

    variants = args.variant or list(VARIANTS)
    for name in variants:
        variant_option(name)
    for value, flag in ((args.seconds, "--seconds"), (args.workers, "--workers"),
                        (args.poll, "--poll")):
        _positive(value, flag)
    config_names = args.config
    try:
        db = fuzz.database(args.db)
    except ValueError as err:
        raise TraceError(str(err), "--db") from None
    unreachable = fuzz.reachable(db)
    if unreachable:
        raise TraceError(unreachable, "--db")
    try:
        targets = fuzz.targets(variants, config_names, db, args.split)
    except ValueError as err:
        raise TraceError(str(err), "--config") from None
    env = {**os.environ, fuzz.DB_ENV: args.db, fuzz.VARIANTS_ENV: ",".join(variants),
           fuzz.CONFIGS_ENV: ",".join(dict.fromkeys(t.config_name for t in targets)),
           fuzz.SPLIT_ENV: "1" if args.split else "0"}
    # The log goes beside a directory database, else (Redis) into the output folder.
    folder = Path(args.out if fuzz.is_url(args.db) else args.db)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "hypofuzz.log"
    shown = args.db if fuzz.is_url(args.db) else f"{args.db}/"
    _say(args, f"fuzzing {len(targets)} targets with HypoFuzz for {args.seconds:g} s, "
               f"database {shown}, log {log}" +
               (f", dashboard http://localhost:{args.port}/" if args.port is not None else ""))
    found: dict[tuple[str, str, str], Found] = {}
    timeline: list[dict[str, Any]] = []
    began = time.perf_counter()

    failed: set[str] = set()

    def poll() -> None:
        for target in targets:
            if target.name in failed:
                continue
            failure = fuzz.replay(target, db)
            if failure is None:
                continue
            failed.add(target.name)
            from ivshmem_model.properties.invariants import site_of

            at = time.perf_counter() - began
            site = site_of(failure.message)
            key = (target.variant, failure.property, site)
            timeline.append({"seconds": round(at, 2), "target": target.name,
                             "property": failure.property, "site": site,
                             "steps": len(failure.steps)})
            _say(args, f"{at:7.1f} s  {failure.property} at {site or '(the state)'} on "
                       f"{target.name}: {len(failure.steps)} steps")
            old = found.get(key)
            if old is None or len(failure.steps) < len(old.steps):
                found[key] = Found(failure.property, site, failure.message, target.config_name,
                                   target.config, target.variant, failure.steps,
                                   old.seconds if old else at, f"HypoFuzz on {target.name}")

    with log.open("w") as out:
        proc = subprocess.Popen(fuzz_command(args.workers, args.port), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # Until the time is up, or every target has failed (a target's replay shows one
            # failure: the database's first).
            while (time.perf_counter() - began < args.seconds and proc.poll() is None
                   and len(failed) < len(targets)):
                time.sleep(min(args.poll, max(0.0, args.seconds - (time.perf_counter() -
                                                                     began))))
                poll()
            early = proc.poll() is not None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    if early:
        tail = log.read_text().strip().splitlines()[-3:]
        raise TraceError(f"HypoFuzz stopped by itself (see {log}): " + " / ".join(tail), "fuzz")
    poll()
    rows = write_findings(found, args.out, "fuzz")
    if args.json:
        print(json.dumps({"targets": len(targets), "seconds": round(time.perf_counter() -
                                                                   began, 2),
                          "timeline": timeline, "findings": rows}, indent=2))
    else:
        print(f"{len(found)} distinct (property, site) found; files in {args.out}/")
        for row in rows:
            print(f"{row['seconds']:7.1f} s  {row['property']} at {row['site'] or '-'} "
                  f"[{row['variant']}]: {row['steps_found']} -> {row['steps']} steps, "
                  f"{row['file']}")
    return EXIT_OK


def add_subcommands(subparsers: Any) -> None:
    swarm = subparsers.add_parser(
        "swarm", help="many diverse bounded searches as Ray tasks; findings minimized to files")
    swarm.add_argument("--config", action="append", metavar="FILE",
                       help="a configuration file; repeatable (default: every embedded one)")
    swarm.add_argument("--variant", action="append", metavar="V",
                       help=variant_help() + "; repeatable")
    swarm.add_argument("--searches", type=int, default=60,
                       help="searches to run at most (default: %(default)s)")
    swarm.add_argument("--budget", type=float, default=5.0,
                       help="seconds per search (default: %(default)s)")
    swarm.add_argument("--seconds", type=float, default=120.0,
                       help="start no search after this many seconds (default: %(default)s)")
    swarm.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="searches at a time on a local Ray (default: the cores)")
    swarm.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="a Ray cluster's address instead of a local Ray")
    swarm.add_argument("--seed", type=int, default=0,
                       help="draws the searches (default: %(default)s)")
    swarm.add_argument("--out", default="swarm-out", metavar="DIR",
                       help="where counterexample files go (default: %(default)s)")
    swarm.add_argument("--json", action="store_true", help="machine-readable output")
    swarm.set_defaults(func=cmd_swarm)

    fuzz = subparsers.add_parser(
        "fuzz", help="HypoFuzz on the stateful machine of every variant; failures to files")
    fuzz.add_argument("--variant", action="append", metavar="V",
                      help="only this variant; repeatable (default: every variant)")
    fuzz.add_argument("--config", action="append", metavar="NAME",
                      help="only this embedded configuration (contrib-tcg, scripted-kvm, ...); "
                           "repeatable (default: every one)")
    fuzz.add_argument("--split", action="store_true",
                      help="one target per safety property too (HypoFuzz stops a target at "
                           "its first failure, so a target finds one bug)")
    fuzz.add_argument("--db", "--database", dest="db", default="fuzz-db",
                      metavar="DIR|redis://HOST:PORT",
                      help="the example database, shared by every run: a directory, or a "
                           "Redis server several machines share (default: %(default)s)")
    fuzz.add_argument("--seconds", type=float, default=300.0,
                      help="how long to fuzz (default: %(default)s)")
    fuzz.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="HypoFuzz processes (default: the cores)")
    fuzz.add_argument("--port", type=int, default=None,
                      help="serve HypoFuzz's dashboard on this port (default: none)")
    fuzz.add_argument("--poll", type=float, default=5.0,
                      help="seconds between looks at the database (default: %(default)s)")
    fuzz.add_argument("--out", default="fuzz-out", metavar="DIR",
                      help="where counterexample files go (default: %(default)s)")
    fuzz.add_argument("--json", action="store_true", help="machine-readable output")
    fuzz.set_defaults(func=cmd_fuzz)

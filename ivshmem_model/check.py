"""``check`` (the main job) and ``explore``: run the checkers, write counterexamples, report.

Every violation a checker finds is replayed through ``step`` under every variant before it is
written, so a counterexample file's expectations are what the model does, not what the checker
believed.
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ivshmem_model.model.actions import (
    Action,
    Config,
    TraceError,
    load_counterexample,
)
from ivshmem_model.model.variants import FIXED, VARIANTS, Variant, get_variant, variant_option
from ivshmem_model.properties.configs import NamedConfig, embedded_configs, load_config_file
from ivshmem_model.properties.corpus import make_counterexample, slug, write_counterexample
from ivshmem_model.properties.explore import ExploreOptions, ExploreResult, compiled, explore
from ivshmem_model.properties.invariants import PROPERTIES, SAFETY, site_of

# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# check


@dataclass
class Evidence:
    checker: str
    length: int
    file: str
    message: str


def count(n: int) -> str:
    """A count for people: 312, 4.5k, 124k, 1.2M."""
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1000:.1f}k"
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


# The checkers, as the table names them (short, so that the table fits 80 columns).
CHECKER_ABBREV = {"explore": "bfs", "hypothesis": "hyp", "z3": "z3"}


@dataclass
class Cell:
    explored: int = 0
    tested: int = 0
    proved: float | None = None  # seconds z3 took, when it proved the property
    violated: list[Evidence] = field(default_factory=list)

    def text(self) -> str:
        """At most 15 characters: the table's cell."""
        if self.violated:
            best = min(self.violated, key=lambda e: e.length)
            return f"VIOLATED {best.length} {CHECKER_ABBREV.get(best.checker, best.checker)}"
        if self.proved is not None:
            return "proved"
        return "ok" if self.explored or self.tested else "-"

    def detail(self) -> str:
        """The cell in words, with the evidence (``--json``)."""
        if self.violated:
            best = min(self.violated, key=lambda e: e.length)
            return f"VIOLATED {best.length} steps ({best.checker})"
        parts = [] if self.proved is None else [f"proved ({self.proved:.1f} s)"]
        if self.explored:
            parts.append(f"{count(self.explored)} states")
        if self.tested:
            parts.append(f"{self.tested} cases")
        return "ok: " + ", ".join(parts) if parts else "-"


# A `sometimes` property that a variant cannot reach, and the variant flag that says why.
UNREACHABLE_WITH = {"intx_raised": "no_legacy_device"}


def unreached_reason(prop: str, variant: Variant) -> str | None:
    """Why ``variant`` cannot reach ``prop``, in the variant flag's own words; ``None`` when
    nothing forbids it (it was just not reached within the bounds)."""
    flag_name = UNREACHABLE_WITH.get(prop)
    if flag_name is not None and getattr(variant, flag_name, False):
        why = next(f.metadata["why"] for f in fields(variant) if f.name == flag_name)
        return f"{prop} under {variant.name}: {why}"
    return None


def check_table(title: str, variants: list[Variant], cells: dict[tuple[str, str], Cell],
                witnesses: dict[str, dict[str, int]], out: str) -> tuple[Table, list[str]]:
    """The property × variant table and the legend printed under it."""
    table = Table(title=title)
    table.add_column("property", no_wrap=True)
    for variant in variants:
        table.add_column(variant.name, no_wrap=True)
    for prop in SAFETY:
        table.add_row(prop.name, *(cells[(prop.name, v.name)].text() for v in variants))
    table.add_section()
    notes: list[str] = []
    for prop in PROPERTIES:
        if prop.expectation != "sometimes":
            continue
        row = []
        for v in variants:
            steps = witnesses.get(prop.name, {}).get(v.name)
            if steps is not None:
                row.append(f"reached {steps}")
                continue
            reason = unreached_reason(prop.name, v)
            if reason is None:
                row.append("unreached")
                continue
            notes.append(reason)
            row.append(f"unreached ({len(notes)})")
        table.add_row(prop.name + "*", *row)
    table.add_section()
    table.add_row("states explored",
                  *(count(cells[(SAFETY[0].name, v.name)].explored) for v in variants))
    table.add_row("cases tested",
                  *(count(cells[(SAFETY[0].name, v.name)].tested) for v in variants))
    legend = [
        "VIOLATED N C  its shortest counterexample has N steps, found by C: bfs (breadth-",
        "              first exploration), hyp (Hypothesis) or z3 (bounded model",
        f"              checking); the files are in {out}/",
        "proved        z3 proved it for every vector count and peer id (induction)",
        "ok            no state explored and no case tested violates it (last rows)",
        "*             sometimes: some run must reach it; reached N: in N steps;",
        "              unreached: not within the states explored and the cases tested",
    ]
    for i, note in enumerate(notes, 1):
        legend += textwrap.wrap(note, 80, initial_indent=f"({i})".ljust(14),
                                subsequent_indent=" " * 14)
    return table, legend


def _hypothesis(config: Config, variant: Variant) -> tuple[int, Any]:
    from hypothesis import settings

    from ivshmem_model.properties.stateful import run_machine

    return settings.get_profile("check").max_examples, run_machine(config, variant, "check")


# The variants `check` runs by default; `--history` adds every before-<commit> variant.
MAIN_VARIANTS = ("seed", "qemu-7.2", "fixed")

# Per run: the explorer's state bound (its time budget is the configuration's "seconds").
# Two runs go in parallel (the machine has two cores).
EXPLORE_STATES = 80_000


def check_one(named: NamedConfig, variant_name: str, out: str, hypothesis: bool) -> dict[str, Any]:
    """One configuration under one variant: explore, then Hypothesis; counterexamples written.

    Runs in a worker process; returns plain data."""
    variant = get_variant(variant_name)
    result = explore(
        named.config, variant,
        ExploreOptions(max_depth=named.depth, max_states=EXPLORE_STATES,
                       time_limit=named.seconds, symmetry=True),
    )
    run: dict[str, Any] = {
        "config": named.name, "variant": variant.name,
        "explore": {"states": result.states, "transitions": result.transitions,
                    "depth": result.depth, "complete": result.complete,
                    "seconds": round(result.seconds, 2),
                    "states_per_second": round(result.states_per_second)},
        "witnesses": {k: len(p) for k, p in result.witnesses.items()},
        "violations": [],
    }
    found: list[tuple[str, str, str, tuple[Action, ...], str]] = [
        (f.property, f.message, "explore", f.path,
         f"ivshmem-model check: breadth-first exploration of {named.name} under "
         f"{variant.name} (shortest within depth {named.depth})")
        for f in result.found.values()
    ]
    if hypothesis:
        began = time.perf_counter()
        tested, failure = _hypothesis(named.config, variant)
        run["hypothesis"] = {"examples": tested,
                             "failure": failure.property if failure else None,
                             "seconds": round(time.perf_counter() - began, 2)}
        if failure is not None:
            found.append((failure.property, failure.message, "hypothesis", failure.steps,
                          f"ivshmem-model check: Hypothesis stateful test of {named.name} "
                          f"under {variant.name} (minimized by delta debugging)"))
    for prop, message, checker, steps, origin in found:
        suffix = "" if checker == "explore" else "-hypothesis"
        site = slug(site_of(message))
        name = f"{named.name}-{slug(variant.name)}-{slug(prop)}{'-' + site if site else ''}"
        cx = make_counterexample(name + suffix, prop, message, named.config, steps, origin)
        path = write_counterexample(Path(out), cx)
        run["violations"].append({"property": prop, "checker": checker, "length": len(steps),
                                  "file": str(path), "message": message})
    return run


# z3 in `check`: proofs for every variant, bounded model checking to this depth where a proof
# fails (depth 3 reaches every symbolic finding but the route leak that aborts at depth 5;
# `ivshmem-model prove --depth 8` goes further).
PROVE_DEPTH = 3


def prove_job(variants: list[str], out: str) -> list[dict[str, Any]]:
    """``ivshmem_model.prove_cli.prove_all`` for the symbolic variants among ``variants``."""
    from ivshmem_model.prove_cli import DEFAULT_VARIANTS, prove_all

    chosen = [v for v in variants if v in DEFAULT_VARIANTS]
    return prove_all(chosen, PROVE_DEPTH, Path(out)) if chosen else []


def run_check(args: argparse.Namespace) -> int:
    # Progress goes to stderr, with --json too (stdout carries the report alone).
    console = Console(stderr=True, log_path=False)
    configs = [load_config_file(p) for p in args.config] if args.config else embedded_configs()
    names = args.variant or [*MAIN_VARIANTS, *(
        [v for v in VARIANTS if v.startswith("before-")] if args.history else [])]
    variants = [get_variant(v) for v in names]
    started = time.perf_counter()
    jobs = [(named, variant.name) for named in configs for variant in variants]
    runs: list[dict[str, Any]] = []
    with console.status(f"checking {len(jobs)} configuration/variant pairs on 2 cores"), \
            ProcessPoolExecutor(max_workers=2) as pool:
        proofs = pool.submit(prove_job, [v.name for v in variants], args.out)
        futures = [pool.submit(check_one, named, v, args.out, not args.no_hypothesis)
                   for named, v in jobs]
        for future in futures:
            run = future.result()
            runs.append(run)
            found = ", ".join(sorted({v["property"] for v in run["violations"]})) or "none"
            console.log(f"{run['config']} / {run['variant']}: {run['explore']['states']} "
                        f"states in {run['explore']['seconds']:.1f}s; violations: {found}")
        proved = proofs.result()
        console.log(f"z3: {sum(r['status'] == 'proved' for r in proved)} proved, "
                    f"{sum(r['status'] == 'counterexample' for r in proved)} counterexamples")
    cells: dict[tuple[str, str], Cell] = {
        (p.name, v.name): Cell() for p in SAFETY for v in variants
    }
    for row in proved:
        if row["variant"] == "-":
            continue
        if row["status"] == "proved":
            cells[(row["property"], row["variant"])].proved = row["seconds"]
        elif row["status"] == "counterexample":
            prop = row.get("concrete_property") or row["property"]
            file = row.get("file")
            length = len(load_counterexample(file).trace.steps) if file else int(row["depth"])
            cells[(prop, row["variant"])].violated.append(
                Evidence("z3", length, str(file), str(row.get("detail"))))
    witnesses: dict[str, dict[str, int]] = {}
    for run in runs:
        for prop in SAFETY:
            cell = cells[(prop.name, run["variant"])]
            cell.explored += run["explore"]["states"]
            cell.tested += run.get("hypothesis", {}).get("examples", 0)
        for v in run["violations"]:
            cells[(v["property"], run["variant"])].violated.append(
                Evidence(v["checker"], v["length"], v["file"], v["message"]))
        for name, length in run["witnesses"].items():
            best = witnesses.setdefault(name, {}).get(run["variant"])
            if best is None or length < best:
                witnesses[name][run["variant"]] = length
    fixed_violations = [
        (p, e) for (p, v), cell in cells.items() if v == FIXED.name for e in cell.violated
    ]
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({
            "runs": runs,
            "table": {p.name: {v.name: cells[(p.name, v.name)].detail() for v in variants}
                      for p in SAFETY},
            "sometimes": {name: {v: f"reached ({n} steps)" for v, n in by_variant.items()}
                          for name, by_variant in witnesses.items()},
            "proofs": proved,
            "seconds": round(elapsed, 1),
        }, indent=2))
    else:
        table, legend = check_table(
            f"ivshmem-model check ({elapsed:.0f} s)", variants, cells, witnesses, args.out)
        Console().print(table)
        Console(highlight=False, soft_wrap=True).print("\n".join(legend))
        if fixed_violations:
            Console(stderr=True).print(
                f"[bold red]the fixed variant violates {len(fixed_violations)} "
                "property/ies: see the table")
    return 1 if fixed_violations else 0


def run_explore(args: argparse.Namespace) -> int:
    named = load_config_file(args.config) if args.config else embedded_configs()[0]
    variant = variant_option(args.variant)
    depth = args.depth if args.depth is not None else named.depth
    console = Console(stderr=True, quiet=bool(args.json))
    with console.status("exploring") as status:
        def progress(result: ExploreResult, frontier: int) -> None:
            rate = result.states / max(1e-9, time.perf_counter() - t0)
            status.update(f"{result.states} states ({rate:.0f}/s), frontier {frontier}, "
                          f"depth {result.depth}")

        t0 = time.perf_counter()
        if not 1 <= args.workers <= 512:
            raise TraceError(f"expected 1 to 512, got {args.workers}", "--workers")
        if args.resume and not args.checkpoint:
            raise TraceError("--resume needs --checkpoint DIR", "--resume")
        if args.por and (args.workers > 1 or args.ray or args.checkpoint):
            raise TraceError("--por runs in one process", "--por")
        if args.low_memory and (args.por or args.workers > 1 or args.ray or args.checkpoint):
            raise TraceError("--low-memory runs in one process, without --por", "--low-memory")
        if args.coverage and compiled():
            raise TraceError("seed coverage traces the interpreted model: run without the "
                             "mypyc build on PYTHONPATH", "--coverage")
        from ivshmem_model.properties.distributed import DistributedError

        try:
            result = explore(named.config, variant,
                             ExploreOptions(max_depth=depth, max_states=args.max_states,
                                            time_limit=600.0, symmetry=args.symmetry,
                                            workers=args.workers, coverage=args.coverage,
                                            ray=args.ray, checkpoint=args.checkpoint,
                                            resume=args.resume, por=args.por,
                                            low_memory=args.low_memory),
                             progress)
        except DistributedError as err:
            where = "--ray" if args.ray else "--checkpoint" if args.checkpoint else "--workers"
            raise TraceError(str(err), where) from None
    report = {
        "config": named.name, "variant": variant.name, "states": result.states,
        "transitions": result.transitions, "depth": result.depth,
        "complete": result.complete, "seconds": round(result.seconds, 3),
        "states_per_second": round(result.states_per_second),
        "violations": [{"property": f.property, "site": site_of(f.message), "message": f.message,
                        "steps": [a.to_json() for a in f.path]}
                       for f in result.found.values()],
        "witnesses": {k: len(p) for k, p in result.witnesses.items()},
        "unconfirmed": result.unconfirmed,
    }
    if args.por:
        report["slept"] = result.slept
    if result.coverage is not None:
        report["coverage"] = result.coverage.to_json()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"{named.name} under {variant.name}: {result.states} states, "
                        f"{result.transitions} transitions, depth {result.depth}"
                        f"{'' if result.complete else ' (bounded)'}, "
                        f"{result.states_per_second:.0f} states/s")
    table.add_column("property")
    table.add_column("result")
    for prop in PROPERTIES:
        findings = [f for f in result.found.values() if f.property == prop.name]
        if findings:
            table.add_row(prop.name, "\n".join(
                f"VIOLATED in {len(f.path)} steps: {f.message}" for f in findings))
        elif prop.expectation == "sometimes":
            hit = result.witnesses.get(prop.name)
            table.add_row(prop.name, f"reached in {len(hit)} steps" if hit else "unreached")
        else:
            table.add_row(prop.name, "holds" + ("" if result.complete else " (within bounds)"))
    Console().print(table)
    if result.coverage is not None:
        print(result.coverage.summary())
    return 0

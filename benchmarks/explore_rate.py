"""Explorer throughput, today's tree against a baseline revision, side by side in one run.

For every embedded configuration, at one depth: distinct states/s and transitions/s per
CPU second (``process_time``, which load from other processes disturbs less than wall time),
without and with symmetry, and bytes per stored state (``tracemalloc`` peak over the
states stored, with symmetry); for this tree also with the partial-order reduction
(``--por``: step calls saved), and for the mypyc build (``--compiled``,
``scripts/build-mypyc.sh``) if asked, against the baseline and against this tree interpreted
(``x now``).  The baseline is ``git archive REV`` unpacked in a temporary
folder (git's state is not touched); each measurement runs in a fresh interpreter whose
``PYTHONPATH`` is that tree, alternating baseline and this tree configuration by
configuration, so both see the same machine load.  Prints figures; not a pass/fail test.

    python benchmarks/explore_rate.py [--depth 6] [--repeat 3] [--baseline REV | --baseline none]
                                      [--configs contrib-tcg,...] [--compiled build/mypyc]
                                      [--profile] [--coverage]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILED = "contrib-tcg"  # the configuration --profile runs, chosen by name


def measure(config_name: str, depth: int, repeat: int = 1) -> dict[str, Any]:
    """Run in the tree on ``sys.path``: only options both trees know, plus those this tree's
    ``ExploreOptions`` has (``por``).  Each run ``repeat`` times, the fastest kept: a search
    of a fraction of a second moves by ±30% between identical runs on a shared machine."""
    from ivshmem_model.check import embedded_configs

    try:
        from ivshmem_model.model.variants import SEED
        from ivshmem_model.properties.explore import ExploreOptions, explore
    except ImportError:  # a revision from before the one namespace (abf1d95)
        from model.variants import SEED  # type: ignore[no-redef]
        from properties.explore import ExploreOptions, explore  # type: ignore[no-redef]

    named = {n.name: n for n in embedded_configs()}[config_name]
    known = {f.name for f in dataclasses.fields(ExploreOptions)}
    out: dict[str, Any] = {}
    runs: list[tuple[str, dict[str, Any]]] = [("plain", {}), ("symmetry", {"symmetry": True})]
    if "por" in known:
        runs.append(("symmetry+por", {"symmetry": True, "por": True}))
    explore(named.config, SEED, ExploreOptions(max_depth=2))  # warm up: first-call costs
    for label, extra in runs:
        options = ExploreOptions(max_depth=depth, max_states=10**7, time_limit=600, **extra)
        fastest = float("inf")
        for _ in range(repeat):
            cpu = time.process_time()
            r = explore(named.config, SEED, options)
            # CPU seconds: other work on the machine counts less
            fastest = min(fastest, time.process_time() - cpu)
        cpu = fastest
        out[label] = {"states": r.states, "transitions": r.transitions, "seconds": cpu,
                      "complete": r.complete,
                      "found": sorted(f"{p}@{s}:{len(f.path)}" for (p, s), f in r.found.items())}
    tracemalloc.start()
    r = explore(named.config, SEED, ExploreOptions(max_depth=depth, max_states=10**7,
                                                   time_limit=600, symmetry=True))
    out["bytes_per_state"] = tracemalloc.get_traced_memory()[1] / r.states
    tracemalloc.stop()
    return out


def run_in(tree: Path, config_name: str, depth: int, repeat: int) -> dict[str, Any]:
    """``measure`` in a fresh interpreter that imports ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            "from explore_rate import measure; "
            f"print(json.dumps(measure({config_name!r}, {depth}, {repeat})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True,
                          capture_output=True, text=True)
    return dict(json.loads(done.stdout.splitlines()[-1]))


def unpack(rev: str, folder: Path) -> Path:
    """The files of ``rev`` in ``folder`` (``git archive``: read-only for the repository)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def rate(run: dict[str, Any], what: str) -> float:
    return float(run[what]) / run["seconds"] if run["seconds"] else 0.0


def row(name: str, label: str, old: dict[str, Any] | None, new: dict[str, Any],
        fast: dict[str, Any] | None) -> str:
    """One line of the table: the baseline, this tree and (if built) the compiled tree."""
    n = new[label]
    o = old.get("symmetry" if label == "symmetry+por" else label) if old else None
    line = f"{name:14} {label:12} {n['states']:>8} {n['transitions']:>8} | "
    if o is not None and old is not None:
        line += (f"{rate(o, 'states') / 1e3:>9.1f} {rate(o, 'transitions') / 1e3:>6.1f} "
                 f"{old['bytes_per_state']:>5.0f} | ")
    else:
        line += f"{'-':>9} {'-':>6} {'-':>5} | "
    line += (f"{rate(n, 'states') / 1e3:>8.1f} {rate(n, 'transitions') / 1e3:>6.1f} "
             f"{new['bytes_per_state']:>5.0f} "
             + (f"{rate(n, 'states') / rate(o, 'states'):>5.2f}" if o else f"{'-':>5}"))
    if fast is not None and label in fast:
        f = fast[label]
        line += (f" | {rate(f, 'states') / 1e3:>10.1f} "
                 + (f"{rate(f, 'states') / rate(o, 'states'):>5.2f}" if o else f"{'-':>5}")
                 + f" {rate(f, 'states') / rate(n, 'states'):>6.2f}")
    if o is not None and (o["states"], o["found"]) != (n["states"], n["found"]):
        line += "  DIFFERENT STATES OR FINDINGS"
    if label == "symmetry+por":
        s = new["symmetry"]
        line += (f"  transitions x{s['transitions'] / max(1, n['transitions']):.2f} fewer, "
                 f"time x{s['seconds'] / max(1e-9, n['seconds']):.2f}")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each search, the fastest kept (default: 3)")
    parser.add_argument("--baseline", default="HEAD",
                        help="git revision to compare with, or 'none' (default: HEAD)")
    parser.add_argument("--configs", default="", help="comma-separated names (default: all)")
    parser.add_argument("--compiled", metavar="DIR", default=None,
                        help="also run the mypyc build in DIR (scripts/build-mypyc.sh)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--coverage", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from ivshmem_model.check import embedded_configs

    names = [n.name for n in embedded_configs()]
    if args.configs:
        names = [n for n in names if n in args.configs.split(",")]
    compiled = Path(args.compiled).resolve() if args.compiled else None
    with tempfile.TemporaryDirectory() as tmp:
        base = None if args.baseline == "none" else unpack(args.baseline, Path(tmp))
        print(f"depth {args.depth}; baseline {args.baseline}; rates per CPU second, in 1000/s, "
              f"fastest of {args.repeat}; B/st: bytes per stored state (with symmetry)")
        print(f"{'config':14} {'run':12} {'states':>8} {'trans':>8} | {'base st/s':>9} "
              f"{'tr/s':>6} {'B/st':>5} | {'now st/s':>8} {'tr/s':>6} {'B/st':>5} {'x':>5}"
              + (f" | {'mypyc st/s':>10} {'x':>5} {'x now':>6}" if compiled else ""))
        for name in names:
            began = time.perf_counter()
            old = run_in(base, name, args.depth, args.repeat) if base is not None else None
            new = run_in(ROOT, name, args.depth, args.repeat)
            fast = run_in(compiled, name, args.depth, args.repeat) if compiled else None
            for label in ("plain", "symmetry", "symmetry+por"):
                if label in new:
                    print(row(name, label, old, new, fast), flush=True)
            print(f"{'':14} ({time.perf_counter() - began:.0f} s)", flush=True)
    if args.coverage or args.profile:
        from ivshmem_model.model.variants import SEED
        from ivshmem_model.properties.explore import ExploreOptions, explore

        if args.coverage:
            for named in embedded_configs():
                r = explore(named.config, SEED, ExploreOptions(
                    max_depth=args.depth, max_states=10**6, time_limit=600, coverage=True))
                print(f"{named.name} depth {args.depth}: {r.coverage.summary()}")
        if args.profile:
            named = {n.name: n for n in embedded_configs()}[PROFILED]
            profiler = cProfile.Profile()
            profiler.enable()
            explore(named.config, SEED, ExploreOptions(max_depth=args.depth, max_states=10**6,
                                                       time_limit=600, symmetry=True))
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            print(out.getvalue())


if __name__ == "__main__":
    main()

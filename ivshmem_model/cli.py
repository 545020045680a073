"""``ivshmem-model``: the command line (design §7).

Exit codes: 0 when the command did its job (a property violated by ``run`` is an answer, not an
error), 1 when ``replay`` sees an expectation fail or ``check`` sees the ``fixed`` variant
violate a property, 2 on bad input.  Bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ivshmem_model.campaign_cli import add_subcommands as add_campaign_subcommands
from ivshmem_model.conform_cli import add_backend_options, replay_on_qemu, run_on_qemu
from ivshmem_model.conform_cli import add_subcommands as add_conform_subcommands
from ivshmem_model.corpus_cli import add_subcommands as add_corpus_subcommands
from ivshmem_model.dossier_cli import add_subcommands as add_dossier_subcommands
from ivshmem_model.executor_cli import add_subcommands as add_executor_subcommands
from ivshmem_model.graph_cli import add_subcommands as add_graph_subcommands
from ivshmem_model.graph_cli import variant_help
from ivshmem_model.model.actions import Action, Deliver, TraceError, load_counterexample, load_trace
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.variants import VARIANTS, variant_option
from ivshmem_model.properties.corpus import update_expectations
from ivshmem_model.properties.progress import Progress
from ivshmem_model.properties.trace import as_program, queued_messages, replay, run_trace
from ivshmem_model.prove_cli import add_subcommands as add_prove_subcommands

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what the shell reports for a command killed by it


class BadInputError(Exception):
    """A user error: printed as one line on stderr, exit 2."""


# ---------------------------------------------------------------------------------------------
# run


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "))


def _why_disabled(action: Action, state: SystemState | None) -> str:
    """A hint for the commonest stumble: a ``deliver`` with nothing left to deliver."""
    if state is None or not isinstance(action, Deliver) or queued_messages(state,
                                                                           action.endpoint):
        return ""
    return (f"nothing is queued for endpoint {action.endpoint}: realize reads the setup "
            "messages itself, see docs/trace-format.md")


LARGE_FILE = 8 * 1024 * 1024  # a file this large takes seconds to read: say so


def _announce_large(label: str, path: str | Path) -> None:
    """One line on stderr before reading a file large enough to take seconds."""
    with contextlib.suppress(OSError):
        size = os.stat(path).st_size
        if size >= LARGE_FILE:
            print(f"{label}: reading {size / 2**20:.1f} MiB (about {size // 5_000_000 + 1} s)",
                  file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    if args.backend == "qemu":
        return run_on_qemu(args)
    variant = variant_option(args.variant)
    _announce_large(f"run {args.trace}", args.trace)
    trace = load_trace(args.trace)
    progress = Progress(f"run {args.trace}", len(trace.steps))
    result = run_trace(trace, variant, progress)
    progress.finish(len(result.steps))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return EXIT_OK
    if args.program:
        print(as_program(trace.config, trace.steps, variant.name, result))
    print(f"variant {variant.name}: {len(trace.steps)} steps, "
          f"{trace.config.endpoints} endpoint(s), {trace.config.server.policy} server")
    for record in result.steps:
        print(f"[{record.index}] {_compact(record.action.to_json())}")
        if record.received:
            print("    received: " + ", ".join(
                str(m["value"]) + (f" ({m['fd']})" if m["fd"] else "")
                for m in record.received))
        if not record.enabled:
            print("    DISABLED: this action is not enabled in this state; the run stops here")
            hint = _why_disabled(record.action, result.final)
            if hint:
                print(f"    ({hint})")
            continue
        for obs in record.observations:
            print(f"    {_compact(obs)}")
        for v in result.violations:
            if v.step == record.index:
                print(f"    VIOLATES {v.property}: {v.message}")
    if result.violations:
        print("violated properties (first step, 0-based):")
        for v in result.violations:
            print(f"  {v.property} at step {v.step}: {v.message}")
    else:
        print("no property violated")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# replay


def _counterexample_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.json")))
        else:
            files.append(path)
    return files


def cmd_replay(args: argparse.Namespace) -> int:
    if args.variant is not None:
        variant_option(args.variant)
    files = _counterexample_files(args.paths)
    if not files:
        raise BadInputError(f"no counterexample files in {', '.join(args.paths)}")
    if args.backend == "qemu":
        return replay_on_qemu(args, files)
    worst = EXIT_OK
    report: list[dict[str, Any]] = []
    for path in files:
        try:
            _announce_large(f"replay {path.name}", path)
            cx = load_counterexample(str(path))
            if args.update and update_expectations(path):
                cx = load_counterexample(str(path))
                print(f"updated {path.name}", file=sys.stderr)
            outcomes = replay(cx, args.variant, label=f"replay {path.name}")
        except ValueError as err:  # TraceError, or update_expectations' refusal
            located = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
            print(f"ERROR {located}", file=sys.stderr)
            report.append({"file": str(path), "error": located})
            worst = EXIT_BAD_INPUT
            continue
        for outcome in outcomes:
            entry = {
                "file": str(path), "name": cx.name, "variant": outcome.variant,
                "expected": outcome.expected, "observed": outcome.observed, "ok": outcome.ok,
                "diverges_at": outcome.diverges_at,
            }
            report.append(entry)
            if not args.json:
                status = "ok  " if outcome.ok else "FAIL"
                line = f"{status} {path.name} [{outcome.variant}] expected {outcome.expected}"
                if not outcome.ok:
                    line += f"; observed {outcome.observed} (diverges at step "
                    line += f"{outcome.diverges_at})"
                print(line)
            if not outcome.ok and worst == EXIT_OK:
                worst = EXIT_FAILED
    checked = [r for r in report if "ok" in r]
    failed = sum(1 for r in checked if not r["ok"])
    bad = sum(1 for r in report if "error" in r)
    summary = {"files": len(files), "expectations": len(checked),
               "ok": len(checked) - failed, "failed": failed, "unreadable": bad}
    if args.json:
        print(json.dumps({"results": report, "summary": summary}, indent=2))
    else:
        print(f"{summary['files']} files, {summary['expectations']} expectations: "
              f"{summary['ok']} ok, {failed} failed" + (f", {bad} unreadable" if bad else ""))
    return worst


# ---------------------------------------------------------------------------------------------
# check and explore


def cmd_check(args: argparse.Namespace) -> int:
    from ivshmem_model.check import run_check

    return run_check(args)


def cmd_explore(args: argparse.Namespace) -> int:
    from ivshmem_model.check import run_explore

    return run_explore(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivshmem-model",
        description="A reference formal model of QEMU's ivshmem device, server and peers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="run every checker on the embedded configurations")
    check.add_argument("--config", action="append", metavar="FILE",
                       help="a configuration file (configs/*.json); repeatable")
    check.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                       help="only this variant; repeatable (default: seed, qemu-7.2, fixed)")
    check.add_argument("--out", default="check-out", metavar="DIR",
                       help="where counterexample files go (default: %(default)s)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--history", action="store_true",
                       help="also run every before-<commit> variant (historical fixes reverted)")
    check.add_argument("--no-hypothesis", action="store_true",
                       help="skip the Hypothesis stateful runs")
    check.set_defaults(func=cmd_check)

    explore = sub.add_parser("explore", help="breadth-first exploration of one configuration")
    explore.add_argument("--config", metavar="FILE", help="a configuration file")
    explore.add_argument("--variant", default="seed", metavar="V", help=variant_help())
    explore.add_argument("--depth", type=int, default=None, help="depth bound")
    explore.add_argument("--max-states", type=int, default=200_000, help="state bound")
    explore.add_argument("--symmetry", action="store_true",
                         help="one state per orbit of interchangeable endpoints")
    explore.add_argument("--workers", type=int, default=1,
                         help="partitions: more than 1 runs on Ray, started here unless --ray "
                              "(default: 1, one process, no Ray)")
    explore.add_argument("--ray", metavar="ADDRESS", default=None,
                         help="a Ray cluster's address (ray start --head prints it)")
    explore.add_argument("--checkpoint", metavar="DIR", default=None,
                         help="save every completed level in DIR (runs on Ray)")
    explore.add_argument("--resume", action="store_true",
                         help="continue the run saved in --checkpoint DIR from its last level")
    explore.add_argument("--por", action="store_true",
                         help="partial-order reduction by sleep sets: the same states and "
                              "findings, fewer steps (one process; properties/por.py)")
    explore.add_argument("--low-memory", action="store_true",
                         help="keep the next level as serials and rebuild each state from its "
                              "parent (one more step per state, the same result; one process, "
                              "not with --por)")
    explore.add_argument("--coverage", action="store_true",
                         help="report the seed functions and lines exercised (slow)")
    explore.add_argument("--json", action="store_true", help="machine-readable output")
    explore.set_defaults(func=cmd_explore)

    run = sub.add_parser("run", help="execute one trace and show each step")
    run.add_argument("trace", help="a trace (or counterexample) file")
    run.add_argument("--variant", default="seed", metavar="V", help=variant_help())
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.add_argument("--program", action="store_true",
                     help="also print the trace as a Python program")
    add_backend_options(run)
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("replay", help="check counterexample expectations")
    rep.add_argument("paths", nargs="+", metavar="FILE|DIR")
    rep.add_argument("--variant", default=None, metavar="V",
                     help="only this variant's expectation (default: every variant the file "
                          "names)")
    rep.add_argument("--json", action="store_true", help="machine-readable output")
    rep.add_argument("--update", action="store_true",
                     help="rewrite each file's expectations from what every variant does "
                          "now (with --backend qemu: record what QEMU did)")
    add_backend_options(rep)
    rep.set_defaults(func=cmd_replay)

    add_graph_subcommands(sub)
    add_prove_subcommands(sub)
    add_corpus_subcommands(sub)
    add_dossier_subcommands(sub)
    add_conform_subcommands(sub)
    add_executor_subcommands(sub)
    add_campaign_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (TraceError, BadInputError) as err:
        print(f"ivshmem-model {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ivshmem-model run ... | head`): stop quietly, as `cat` does.
        # Later writes, and the interpreter's final flush, go to /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())

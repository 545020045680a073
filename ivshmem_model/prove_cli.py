"""``ivshmem-model prove``: induction, bounded model checking and decode theorems.

Wire it in with ``add_subcommands(subparsers)``; the handler is ``args.func(args) -> int``
(0: every result as expected, i.e. ``fixed`` proved and every counterexample confirmed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import z3

from ivshmem_model.model.variants import get_variant, variant_option
from ivshmem_model.properties import symbolic, symbolic_decode

DEFAULT_VARIANTS = ("seed", "qemu-7.2", "fixed")


def add_subcommands(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "prove", help="z3: prove vector_bounds, mask_balance, route_balance; BMC elsewhere",
        description="Inductive proofs for all vector counts and peer ids; where a property "
        "fails, bounded model checking finds a trace, replays it through step and writes it.",
    )
    parser.add_argument("--variant", action="append", dest="variants", metavar="V",
                        help="seed, qemu-7.2 or fixed (repeatable; default: all three)")
    parser.add_argument("--depth", type=int, default=8, metavar="K",
                        help="bounded model checking depth (default 8)")
    parser.add_argument("--out", default="check-out", metavar="DIR",
                        help="where counterexamples are written (default check-out/)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run_prove)


Progress = Callable[[int, int, str, list[dict[str, Any]]], None]


def prove_all(variants: list[str], depth: int, out: Path | None,
              progress: Progress | None = None) -> list[dict[str, Any]]:
    """Each property under each variant (both kinds of violation where induction fails),
    then the decode theorems.  ``progress(done, total, task, rows)`` is called before each
    task (``rows`` empty) and after it (with the rows it produced)."""
    results: list[dict[str, Any]] = []
    total = len(variants) * len(symbolic.PROPERTIES) + 2
    done = 0

    def report(task: str, rows: list[dict[str, Any]]) -> None:
        if progress is not None:
            progress(done, total, task, rows)

    for name in variants:
        variant = get_variant(name)
        for prop in symbolic.PROPERTIES:
            report(f"{name} {prop}", [])
            first = len(results)
            proof = symbolic.prove(prop, variant)
            if proof.status == "proved":
                results.append(proof.to_json())
                done += 1
                report(f"{name} {prop}", results[first:])
                continue
            # vector_bounds is about fates only: there is no live state that violates it.
            modes = ("fate",) if prop == "vector_bounds" else ("fate", "state")
            for mode in modes:
                found = symbolic.bmc(prop, variant, depth, out, mode=mode)
                found.seconds += proof.seconds
                row = found.to_json()
                row["mode"] = mode
                results.append(row)
            done += 1
            report(f"{name} {prop}", results[first:])
    for label, prover in (("doorbell_decode", symbolic_decode.prove_doorbell_decode),
                          ("message_decode", symbolic_decode.prove_message_decode)):
        report(label, [])
        started = time.perf_counter()
        result = prover()
        results.append({
            "property": label, "variant": "-", "seconds": time.perf_counter() - started,
            "status": "proved" if result == z3.unsat else "unknown",
        })
        done += 1
        report(label, results[-1:])
    return results


def _line(row: dict[str, Any]) -> str:
    mode = f" [{row['mode']}]" if row.get("mode") else ""
    head = f"{row['variant']:9} {row['property'] + mode:26} {row['status']:15}"
    tail = f"{row['seconds']:6.2f}s"
    if row["status"] == "counterexample":
        tail += f"  depth {row['depth']} ({row['concrete_property']})"
        if row.get("file"):
            tail += f" -> {row['file']}"
    elif row.get("detail"):
        tail += f"  {row['detail']}"
    return f"{head} {tail}"


LEGEND = """\
proved          z3 showed the property holds in every reachable state, for every vector count
                and peer id (an inductive invariant: it holds initially and every action keeps it)
counterexample  bounded model checking found the shortest run that breaks it; replayed through
                step, it is written as a counterexample file
[fate]          the search for a run in which the process ends badly (a C assert aborts it,
                a bad memory access crashes it)
[state]         the search for a run in which the live process's bookkeeping breaks the
                property while nothing has failed yet (e.g. a KVM route left behind)
unknown         no violation within the depth bound (or z3 gave up): not a proof
unconfirmed     z3 found a run that step does not confirm: the encoding and the model differ"""


def run_prove(args: argparse.Namespace) -> int:
    from ivshmem_model.model.actions import TraceError

    variants = args.variants or list(DEFAULT_VARIANTS)
    for name in variants:
        variant_option(name)
    if not 1 <= args.depth <= 32:
        raise TraceError(f"expected a depth in [1, 32], got {args.depth}", "--depth")
    started = time.perf_counter()

    def progress(done: int, total: int, task: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            print(f"[{done + 1}/{total}, {time.perf_counter() - started:.0f} s] {task} ...",
                  file=sys.stderr, flush=True)
        elif not args.json:
            for row in rows:
                print(_line(row), flush=True)

    results = prove_all(variants, args.depth, Path(args.out), progress)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print()
        print(LEGEND)
    bad = [r for r in results if r["status"] == "unconfirmed"
           or (r["variant"] in ("fixed", "-") and r["status"] != "proved")]
    return 1 if bad else 0

"""Seconds per symbolic proof and per bounded-model-checking depth.

Times the inductive proofs of ``fixed`` (goal: at most 2 s each), the decode theorems, and one
satisfiability query per depth 1..8 of the unrolled seed transition relation (the cost of
looking one step deeper, whether or not a violation exists there).  Prints figures; not a
pass/fail test.

    python benchmarks/prove_time.py [--depth 8] [--variant seed]
"""

from __future__ import annotations

import argparse
import time

import z3

from ivshmem_model.model.variants import FIXED, get_variant
from ivshmem_model.properties import symbolic, symbolic_decode
from ivshmem_model.properties import symbolic_enc as enc
from ivshmem_model.properties.symbolic_enc import Flags


def time_proofs() -> None:
    for name in symbolic.PROPERTIES:
        outcome = symbolic.prove(name, FIXED)
        print(f"prove {name:14} fixed  {outcome.status:8} {outcome.seconds:6.2f}s")
    for label, prover in (("doorbell_decode", symbolic_decode.prove_doorbell_decode),
                          ("message_decode", symbolic_decode.prove_message_decode)):
        started = time.perf_counter()
        result = prover()
        print(f"prove {label:14} -      {result!s:8} {time.perf_counter() - started:6.2f}s")


def time_depths(variant_name: str, depth: int) -> None:
    fl = Flags.of(get_variant(variant_name))
    for k in range(1, depth + 1):
        for name in symbolic.PROPERTIES:
            started = time.perf_counter()
            solver = z3.Solver()
            solver.set("timeout", 120_000)
            with enc.finite_loops(symbolic.FINITE):
                u = symbolic.unroll(fl, solver, k, finite=symbolic.FINITE)
                solver.add(*symbolic._limit(u, symbolic.SMALL),
                           z3.Not(symbolic.prop(name, u.states[-1])))
            result = solver.check()
            print(f"bmc   {name:14} {variant_name} depth {k}: {result!s:7} "
                  f"{time.perf_counter() - started:6.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--variant", default="seed")
    args = parser.parse_args()
    time_proofs()
    time_depths(args.variant, args.depth)


if __name__ == "__main__":
    main()

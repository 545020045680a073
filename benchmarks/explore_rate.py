"""Explorer throughput: distinct states/s on one core, with and without symmetry,
states and transitions per embedded configuration at a fixed depth, bytes per stored state,
and (with ``--profile``) where the time goes.  Prints figures; not a pass/fail test.

    python benchmarks/explore_rate.py [--depth 6] [--profile] [--coverage]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tracemalloc

from ivshmem_model.check import embedded_configs
from model.variants import SEED
from properties.explore import ExploreOptions, explore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--coverage", action="store_true")
    args = parser.parse_args()
    print(f"{'config':14} {'sym':>3} {'cores':>5} {'states':>8} {'trans':>8} {'s':>7} "
          f"{'states/s':>9} {'trans/s':>8}")
    for named in embedded_configs():
        for symmetry in (False, True):
            for workers in (1,):  # more: benchmarks/distributed_rate.py (Ray)
                r = explore(named.config, SEED, ExploreOptions(
                    max_depth=args.depth, max_states=10**6, time_limit=600,
                    symmetry=symmetry, workers=workers))
                print(f"{named.name:14} {'yes' if symmetry else 'no':>3} {workers:>5} "
                      f"{r.states:>8} {r.transitions:>8} {r.seconds:>7.2f} "
                      f"{r.states_per_second:>9.0f} {r.transitions / r.seconds:>8.0f}",
                      flush=True)
    named = embedded_configs()[1]  # contrib-tcg
    for symmetry in (False, True):
        tracemalloc.start()
        r = explore(named.config, SEED, ExploreOptions(max_depth=args.depth, max_states=10**6,
                                                       time_limit=600, symmetry=symmetry))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"memory {named.name} symmetry={symmetry}: peak {peak / 1e6:.1f} MB for "
              f"{r.states} states = {peak / r.states:.0f} bytes per stored state "
              "(parent map, states, queue)")
    if args.coverage:
        for named in embedded_configs():
            r = explore(named.config, SEED, ExploreOptions(
                max_depth=args.depth, max_states=10**6, time_limit=600, coverage=True))
            print(f"{named.name} depth {args.depth}: {r.coverage.summary()}")
    if args.profile:
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

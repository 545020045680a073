"""The explorer on Ray (``properties/distributed.py``): states/s with one process and with 1, 2,
... partitions, the speed-up, the cost of a level beyond its work, and the bytes moved between
partitions per state: the figures ``docs/scaling.md`` projects from.  Not a pass/fail test.

    python benchmarks/distributed_rate.py [--config contrib-kvm] [--depth 8] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from ivshmem_model.model.variants import SEED
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.distributed import explore_distributed, ray_session
from ivshmem_model.properties.explore import ExploreOptions, explore
from ivshmem_model.properties.raysession import ACTORS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="contrib-kvm")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--symmetry", action="store_true")
    parser.add_argument("--exact", action="store_true", help="seen sets of whole states")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs")
    args = parser.parse_args()
    named = {n.name: n for n in embedded_configs()}[args.config]
    options = ExploreOptions(max_depth=args.depth, max_states=10**7, time_limit=10**5,
                             symmetry=args.symmetry, fingerprints=not args.exact)
    one = min((explore(named.config, SEED, options) for _ in range(args.repeat)),
              key=lambda r: r.seconds)
    print(f"{args.config} depth {args.depth}: {one.states} states, {one.transitions} "
          f"transitions")
    print(f"{'engine':22} {'s':>7} {'states/s':>9} {'speed-up':>8} {'level ovh ms':>12} "
          f"{'B/state':>8} {'B/trans':>8} {'busy %':>7} {'seen B/state':>12}")
    print(f"{'one process':22} {one.seconds:>7.2f} {one.states_per_second:>9.0f} {1:>8.2f}")
    with ray_session(None, max(args.workers)) as ray:
        explore(named.config, SEED, dataclasses.replace(options, workers=max(args.workers),
                                                        max_depth=2))  # start the actors
        for n in args.workers:
            runs = [explore_distributed(named.config, SEED,
                                        dataclasses.replace(options, workers=n))
                    for _ in range(args.repeat)]
            r = min(runs, key=lambda r: r.seconds)
            assert (r.states, r.transitions) == (one.states, one.transitions)
            wall = sum(level.seconds for level in r.levels)
            overhead = statistics.median(level.seconds - max(level.busy) for level in r.levels)
            moved = sum(level.bytes for level in r.levels)
            busy = sum(sum(level.busy) for level in r.levels) / (n * wall)
            (parts,) = ACTORS.values()
            seen = sum(ray.get([p.seen_bytes.remote() for p in parts])) / r.states
            del parts  # a handle kept would keep its actor, and its CPU, past the next search
            print(f"{'Ray, ' + str(n) + ' partition(s)':22} {r.seconds:>7.2f} "
                  f"{r.states_per_second:>9.0f} {one.seconds / r.seconds:>8.2f} "
                  f"{overhead * 1000:>12.1f} {moved / r.states:>8.0f} "
                  f"{moved / r.transitions:>8.0f} {100 * busy:>7.0f} {seen:>12.0f}", flush=True)


if __name__ == "__main__":
    main()

"""Time to each seed finding: a swarm (``ivshmem-model swarm``) and a HypoFuzz campaign
(``ivshmem-model fuzz``) from an empty database, matched by (property, site) against the seed
entries of the corpus (``counterexamples/*.json``).  Prints figures; not a pass/fail test.

    python benchmarks/campaign_times.py [--swarm 120] [--fuzz 300] [--workers 2] [--split]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from ivshmem_model.cli import main as cli
from ivshmem_model.properties.corpus import load_corpus, violation_site

CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"


def seed_findings() -> dict[tuple[str, str], str]:
    """(property, site) -> corpus name, for the entries the seed variant violates."""
    out = {}
    for _, cx in load_corpus(CORPUS):
        if dict(cx.expect).get("seed", "holds") != "holds":
            out[(cx.property, violation_site(cx))] = cx.name
    return out


def run(argv: list[str]) -> dict[str, Any]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli(argv)
    assert code == 0, argv
    result: dict[str, Any] = json.loads(buffer.getvalue())
    return result


def table(title: str, timeline: list[dict[str, Any]], known: dict[tuple[str, str], str]) -> None:
    first: dict[tuple[str, str], float] = {}
    for event in timeline:
        key = (event["property"], event["site"])
        first[key] = min(first.get(key, event["seconds"]), event["seconds"])
    print(f"\n{title}: {len(first)} distinct (property, site), "
          f"{sum(1 for k in known if k in first)} of the {len(known)} seed corpus entries")
    for key, name in sorted(known.items(), key=lambda kv: first.get(kv[0], 1e9)):
        when = f"{first[key]:7.1f} s" if key in first else "    not found"
        print(f"  {when}  {name}  ({key[0]} at {key[1] or '-'})")
    for key in sorted(set(first) - set(known), key=lambda k: first[k]):
        print(f"  {first[key]:7.1f} s  (not a seed corpus entry) {key[0]} at {key[1] or '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--swarm", type=float, default=120.0, help="seconds of swarm")
    parser.add_argument("--fuzz", type=float, default=300.0, help="seconds of HypoFuzz")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split", action="store_true", help="fuzz --split")
    args = parser.parse_args()
    known = seed_findings()
    with tempfile.TemporaryDirectory() as tmp:
        if args.swarm > 0:
            swarm = run(["swarm", "--variant", "seed", "--searches", "100000", "--budget", "10",
                         "--seconds", str(args.swarm), "--workers", str(args.workers),
                         "--out", f"{tmp}/swarm", "--json"])
            table(f"swarm, {swarm['searches']} searches in {swarm['seconds']:.0f} s",
                  swarm["timeline"], known)
        if args.fuzz > 0:
            fuzz = run(["fuzz", "--variant", "seed", "--seconds", str(args.fuzz), "--workers",
                        str(args.workers), "--db", f"{tmp}/db", "--out", f"{tmp}/fuzz",
                        "--json", *(["--split"] if args.split else [])])
            table(f"HypoFuzz, {fuzz['targets']} targets, {fuzz['seconds']:.0f} s",
                  fuzz["timeline"], known)


if __name__ == "__main__":
    main()

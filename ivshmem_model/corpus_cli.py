"""``ivshmem-model minimize``, ``corpus-readme`` and ``history``: the corpus subcommands.

``add_subcommands(subparsers)`` adds them to the main parser (``ivshmem_model/cli.py``).  Bad
input raises :class:`~model.actions.TraceError`, which the main program turns into exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ivshmem_model.model.actions import TraceError, load_counterexample
from ivshmem_model.properties.corpus import (
    counterexample_json,
    load_corpus,
    minimize_counterexample,
    readme_text,
    violation_site,
    write_readme,
)
from ivshmem_model.properties.history import HISTORY, corpus_entry, corpus_file, hunt, showing
from ivshmem_model.properties.trace import check_properties

EXIT_OK, EXIT_FAILED = 0, 1


def cmd_minimize(args: argparse.Namespace) -> int:
    cx = load_counterexample(args.file)
    try:
        check_properties(cx)
    except TraceError as err:
        raise TraceError(err.message, f"{args.file}: {err.where}") from None
    try:
        small = minimize_counterexample(cx)
    except ValueError as err:
        raise TraceError(str(err), args.file) from None
    text = counterexample_json(small)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    print(
        f"{cx.name}: {len(cx.trace.steps)} -> {len(small.trace.steps)} steps, "
        f"{small.property} at {violation_site(small) or 'the state as a whole'}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_corpus_readme(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise TraceError("not a directory", str(folder))
    if args.check:
        path = folder / "README.md"
        current = path.read_text() if path.exists() else ""
        if current != readme_text(folder):
            print(f"{path} is out of date: run ivshmem-model corpus-readme {folder}",
                  file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    changed = write_readme(folder)
    print(f"{folder / 'README.md'} {'written' if changed else 'up to date'}", file=sys.stderr)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    """Each modelled historical fix: the differential explorer finds its ``before-<commit>``
    variant unaided; the time and the shortest trace are printed (``--write``: corpus files
    for fixes that have none yet)."""
    fixes = [fix for fix in HISTORY if fix.search is not None]
    if args.commit:
        fixes = [fix for fix in fixes if fix.commit.startswith(args.commit)]
        if not fixes:
            raise TraceError(f"no modelled fix {args.commit!r} (see properties/history.py)",
                             "--commit")
    folder = Path(args.folder)
    corpus = [cx for _, cx in load_corpus(folder)]
    missed = 0
    print(f"{'fix':13} {'release':8} {'property':18} {'site':36} {'steps':>5} {'seconds':>7}")
    for fix in fixes:
        assert fix.search is not None
        finding, seconds = hunt(fix)
        if finding is None:
            missed += 1
            print(f"{fix.commit:13} {fix.release:8} NOT FOUND within depth {fix.search.depth}")
            continue
        print(f"{fix.commit:13} {fix.release:8} {finding.property:18} "
              f"{finding.site or '-':36} {len(finding.path):>5} {seconds:>7.2f}", flush=True)
        path = corpus_file(folder, fix)
        if args.write and not path.exists() and not showing(corpus, fix):
            path.write_text(counterexample_json(corpus_entry(fix, finding)))
            print(f"  wrote {path}", file=sys.stderr)
    return EXIT_FAILED if missed else EXIT_OK


def add_subcommands(subparsers: Any) -> None:
    """Add ``minimize``, ``corpus-readme`` and ``history`` to the main parser's subparsers."""
    mini = subparsers.add_parser(
        "minimize",
        help="shrink a counterexample: drop steps, simplify numbers, renumber endpoints",
        description="Delta debugging over the steps, then smaller vector/peer/value/offset "
                    "numbers, then endpoints numbered by first use; every variant keeps its "
                    "outcome (the same violation at the same site, or holds).  Expectations "
                    "are recomputed.",
    )
    mini.add_argument("file", metavar="FILE", help="a counterexample file")
    mini.add_argument("-o", "--out", metavar="OUT",
                      help="write the result here (default: standard output)")
    mini.set_defaults(func=cmd_minimize)

    readme = subparsers.add_parser(
        "corpus-readme", help="generate the corpus README (counterexamples/README.md)")
    readme.add_argument("folder", nargs="?", default="counterexamples", metavar="DIR",
                        help="the corpus folder (default: %(default)s)")
    readme.add_argument("--check", action="store_true",
                        help="only check that README.md is up to date (exit 1 if not)")
    readme.set_defaults(func=cmd_corpus_readme)

    history = subparsers.add_parser(
        "history", help="find every modelled historical fix with the differential explorer",
        description="For each fix in properties/history.py that has a before-<commit> "
                    "variant: explore that variant and report the shortest trace on which it "
                    "violates a property the variant with the fix holds, and how long the "
                    "search took.  Exit 1 if one is not found.")
    history.add_argument("--commit", metavar="HASH", help="only this fix (a hash prefix)")
    history.add_argument("--write", action="store_true",
                         help="add a minimized corpus file for each fix the corpus does "
                              "not show yet")
    history.add_argument("--folder", default="counterexamples", metavar="DIR",
                         help="the corpus folder (default: %(default)s)")
    history.set_defaults(func=cmd_history)

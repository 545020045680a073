"""``ivshmem-model minimize`` and ``ivshmem-model corpus-readme``: the corpus subcommands.

``add_subcommands(subparsers)`` adds them to the main parser (``ivshmem_model/cli.py``).  Bad
input raises :class:`~model.actions.TraceError`, which the main program turns into exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from model.actions import TraceError, load_counterexample
from properties.corpus import (
    counterexample_json,
    minimize_counterexample,
    readme_text,
    violation_site,
    write_readme,
)

EXIT_OK, EXIT_FAILED = 0, 1


def cmd_minimize(args: argparse.Namespace) -> int:
    cx = load_counterexample(args.file)
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


def add_subcommands(subparsers: Any) -> None:
    """Add ``minimize`` and ``corpus-readme`` to the main parser's subparsers."""
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

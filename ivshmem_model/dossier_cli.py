"""``ivshmem-model dossier``: the index of ``docs/findings/`` from its dossier pages.

A dossier page (``docs/findings/NAME.md``, reproducer ``NAME.py`` beside it) starts with a
header in an HTML comment, one ``key: value`` a line::

    <!-- dossier
    corpus: own-eventfd-before-shm-null-deref
    needs: -
    fixed: msi_vectors_before_recv_setup
    qemu-7.2: SIGSEGV
    qemu-10.0: SIGSEGV
    upstream: present, ivshmem-pci.c 356 at 0951d6dab127
    -->

``corpus`` names the counterexample (``counterexamples/NAME.json``); ``needs`` is ``kvm``,
``valgrind`` or ``-``; ``fixed`` the ``fixed`` variant's flags that remove the finding (each
one alone, added to ``qemu-7.2``); ``qemu-7.2`` and ``qemu-10.0`` what the reproducer shows
there, alternatives separated by `` | `` (``tests/test_findings.py`` runs it and checks that
its ``REPRODUCED:`` line says one of them); ``upstream`` where upstream's source stands.

The index (``README.md``) is generated from the headers and the first ``# `` heading of each
page, like ``corpus-readme``; ``--check`` only says whether it is current (exit 1 if not).
A page that is malformed or names a missing file, entry or flag is bad input (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ivshmem_model.model.actions import TraceError
from ivshmem_model.model.variants import FIXED

EXIT_OK, EXIT_FAILED = 0, 1
QEMUS = (("7.2", "QEMU 7.2.22"), ("10.0", "QEMU 10.0.13"))
NEEDS = ("-", "kvm", "valgrind")
KEYS = ("corpus", "needs", "fixed", "qemu-7.2", "qemu-10.0", "upstream")
HEADER_START, HEADER_END = "<!-- dossier", "-->"


@dataclass(frozen=True)
class Page:
    """One dossier page's header, title and file name."""

    name: str  # NAME of NAME.md and NAME.py
    title: str
    corpus: str
    needs: str
    fixed: tuple[str, ...]
    outcomes: dict[str, tuple[str, ...]]  # QEMU version -> what the reproducer may show
    upstream: str

    @property
    def anchor(self) -> str:
        return f"{self.name}.md"


def parse_page(path: Path) -> Page:
    """The header and title of the dossier page at ``path``."""
    text = path.read_text()
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER_START:
        raise TraceError(f"a dossier page starts with {HEADER_START!r}", str(path))
    header: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() == HEADER_END:
            break
        key, colon, value = line.partition(":")
        if not colon or key.strip() not in KEYS:
            raise TraceError(f"line {number}: expected one of {', '.join(KEYS)}",
                             str(path))
        header[key.strip()] = value.strip()
    else:
        raise TraceError(f"the header has no closing {HEADER_END!r}", str(path))
    missing = [key for key in KEYS if not header.get(key)]
    if missing:
        raise TraceError(f"the header lacks {', '.join(missing)}", str(path))
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), "")
    if not title:
        raise TraceError("no '# ' title", str(path))
    if header["needs"] not in NEEDS:
        raise TraceError(f"needs: one of {', '.join(NEEDS)}", str(path))
    return Page(
        name=path.stem, title=title, corpus=header["corpus"], needs=header["needs"],
        fixed=tuple(header["fixed"].split()),
        outcomes={version: tuple(o.strip() for o in header[f"qemu-{version}"].split(" | "))
                  for version, _label in QEMUS},
        upstream=header["upstream"],
    )


def read_pages(folder: Path, corpus: Path) -> list[Page]:
    """Every dossier page in ``folder``, checked against its reproducer, its corpus entry
    and the ``fixed`` variant's flags."""
    pages = [parse_page(p) for p in sorted(folder.glob("*.md")) if p.name != "README.md"]
    flags = {f.name for f in fields(FIXED)}
    for page in pages:
        where = str(folder / page.anchor)
        if not (folder / f"{page.name}.py").is_file():
            raise TraceError(f"no reproducer {page.name}.py beside it", where)
        if not (corpus / f"{page.corpus}.json").is_file():
            raise TraceError(f"no corpus entry {page.corpus}.json in {corpus}", where)
        for flag in page.fixed:
            if flag not in flags or not getattr(FIXED, flag):
                raise TraceError(f"{flag!r} is not a flag the fixed variant has on", where)
    scripts = {p.stem for p in folder.glob("*.py") if not p.name.startswith("_")}
    orphans = sorted(scripts - {page.name for page in pages})
    if orphans:
        raise TraceError(f"reproducers without a page: {', '.join(orphans)}", str(folder))
    return pages


def confirmed_on(corpus: Path, version: str) -> list[str]:
    """The corpus entries QEMU ``version`` confirmed, as recorded in the entries."""
    names = []
    for path in sorted(corpus.glob("*.json")):
        record: dict[str, Any] = json.loads(path.read_text()).get("qemu", {})
        if record.get(version, {}).get("verdict") == "confirmed":
            names.append(path.stem)
    return names


def _names(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names) or "none"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def index_text(folder: Path, corpus: Path) -> str:
    """``README.md`` of ``folder`` as generated from its pages."""
    pages = read_pages(folder, corpus)
    out = [
        "# Findings that today's QEMU still reproduces",
        "",
        "Generated by `ivshmem-model dossier` (`ivshmem_model/dossier_cli.py`) from the pages'",
        "headers; do not edit.  One page a finding: a standalone reproducer (Python standard",
        "library only, any `qemu-system-x86_64` given by path), the lines involved, why it",
        "happens, the `fixed` flag that removes it and what shows the fix holds, and where",
        "upstream stands.  `python3 docs/findings/NAME.py [QEMU]` exits 0 when the finding",
        "reproduces, 1 when it does not, 2 when it cannot run (no QEMU, no KVM, no valgrind);",
        "`_qtest.py` is the scaffolding they share.  `tests/test_findings.py` runs every",
        "reproducer against QEMU 7.2 and 10.0 and checks that it shows what its row says.",
        "",
        "| finding | " + " | ".join(label for _v, label in QEMUS)
        + " | needs | fixed by | upstream (`ivshmem-pci.c` at `0951d6dab127`) | corpus entry |",
        "|---|" + "---|" * len(QEMUS) + "---|---|---|---|",
    ]
    for page in pages:
        shown = [" or ".join(f"`{o}`" for o in page.outcomes[version])
                 for version, _label in QEMUS]
        fixes = ", ".join(f"`{flag}`" for flag in page.fixed)
        out.append(
            f"| [{_cell(page.title)}]({page.anchor}) | "
            + " | ".join(_cell(s) for s in shown)
            + f" | {page.needs} | {fixes} | {_cell(page.upstream)} | `{page.corpus}` |")
    confirmed = confirmed_on(corpus, "10.0")
    without = [name for name in confirmed if name not in {page.corpus for page in pages}]
    beyond = [page.corpus for page in pages if page.corpus not in confirmed]
    present = sum(page.upstream.startswith("present") for page in pages)
    out += [
        "",
        f"{len(pages)} findings, {present} of them present in upstream's source.  Corpus "
        "entries QEMU 10.0 confirmed (`replay --backend qemu --qemu 10.0`) without a page: "
        + _names(without) + ".  Pages whose entry the replay found only consistent (the "
        "reproducer shows what the replay cannot see): " + _names(beyond) + ".",
        "",
    ]
    return "\n".join(out)


def cmd_dossier(args: argparse.Namespace) -> int:
    folder, corpus = Path(args.folder), Path(args.corpus)
    for path in (folder, corpus):
        if not path.is_dir():
            raise TraceError("not a directory", str(path))
    text = index_text(folder, corpus)
    readme = folder / "README.md"
    current = readme.read_text() if readme.exists() else ""
    if args.check:
        if current != text:
            print(f"{readme} is out of date: run ivshmem-model dossier {folder}",
                  file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    if current != text:
        readme.write_text(text)
    print(f"{readme} {'written' if current != text else 'up to date'}", file=sys.stderr)
    return EXIT_OK


def add_subcommands(subparsers: Any) -> None:
    """Add ``dossier`` to the main parser's subparsers."""
    parser = subparsers.add_parser(
        "dossier", help="generate the index of the finding dossiers (docs/findings/README.md)")
    parser.add_argument("folder", nargs="?", default="docs/findings", metavar="DIR",
                        help="the dossier folder (default: %(default)s)")
    parser.add_argument("--corpus", default="counterexamples", metavar="DIR",
                        help="the corpus the pages name (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="only check that README.md is up to date (exit 1 if not)")
    parser.set_defaults(func=cmd_dossier)

"""docs/findings/: every reproducer shows on QEMU 7.2 and 10.0 what its page claims, every
page's ``fixed`` flags remove its corpus entry's violation, and the index is current."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ivshmem_model.cli import main
from ivshmem_model.dossier_cli import Page, index_text, read_pages
from ivshmem_model.model.actions import load_counterexample
from ivshmem_model.model.executor.qemu.machine import kvm_available, qemu_installed, resolve_qemu
from ivshmem_model.model.variants import FIXED, QEMU_7_2, Variant
from ivshmem_model.properties.trace import run_trace

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "docs" / "findings"
CORPUS = ROOT / "counterexamples"
PAGES = read_pages(FINDINGS, CORPUS)


def _verdict(stdout: str) -> str:
    lines = stdout.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_reproducer_shows_what_its_page_claims(page: Page, version: str) -> None:
    if not qemu_installed(version):
        pytest.skip(f"QEMU {version} is not installed: run bash scripts/install-qemu.sh")
    if page.needs == "kvm" and not kvm_available():
        pytest.skip("this finding needs /dev/kvm")
    if page.needs == "valgrind" and shutil.which("valgrind") is None:
        pytest.skip("this finding is shown under valgrind, which is not installed")
    done = subprocess.run([sys.executable, str(FINDINGS / f"{page.name}.py"),
                           resolve_qemu(version)],
                          capture_output=True, text=True, timeout=60, check=False)
    verdict = _verdict(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr  # 0: the finding reproduced
    assert verdict.startswith("REPRODUCED: ")
    assert any(claim in verdict for claim in page.outcomes[version]), (
        f"{verdict!r} shows none of {page.outcomes[version]}")


def test_a_reproducer_without_its_qemu_is_a_setup_error(tmp_path: Path) -> None:
    script = FINDINGS / f"{PAGES[0].name}.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "no-qemu")],
                          capture_output=True, text=True, timeout=30, check=False,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert _verdict(done.stdout).startswith("SETUP ERROR: ")


def _violates(page: Page, variant: Variant) -> bool:
    cx = load_counterexample(str(CORPUS / f"{page.corpus}.json"))
    return run_trace(cx.trace, variant).first(cx.property) is not None


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_flags_a_page_names_remove_its_finding(page: Page) -> None:
    """``qemu-7.2`` violates the entry's property; each named flag alone removes it; ``fixed``
    holds, and ``fixed`` without the named flags violates it again."""
    assert _violates(page, QEMU_7_2)
    for flag in page.fixed:
        one: dict[str, Any] = {flag: True}
        assert not _violates(page, replace(QEMU_7_2, **one)), flag
    assert not _violates(page, FIXED)
    none: dict[str, Any] = {flag: False for flag in page.fixed}
    assert _violates(page, replace(FIXED, **none))


def test_the_index_is_current() -> None:
    assert (FINDINGS / "README.md").read_text() == index_text(FINDINGS, CORPUS)
    assert main(["dossier", str(FINDINGS), "--corpus", str(CORPUS), "--check"]) == 0


def test_dossier_rewrites_a_stale_index_and_refuses_a_bad_page(tmp_path: Path) -> None:
    folder = tmp_path / "findings"
    shutil.copytree(FINDINGS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "README.md").write_text("stale\n")
    args = [str(folder), "--corpus", str(CORPUS)]
    assert main(["dossier", *args, "--check"]) == 1
    assert main(["dossier", *args]) == 0
    assert main(["dossier", *args, "--check"]) == 0
    assert (folder / "README.md").read_text() == (FINDINGS / "README.md").read_text()
    (folder / "orphan.py").write_text("")
    assert main(["dossier", *args]) == 2  # a reproducer without its page
    (folder / "orphan.py").unlink()
    page = folder / f"{PAGES[0].name}.md"
    page.write_text(page.read_text().replace("fixed: ", "fixed: no_such_flag "))
    assert main(["dossier", *args]) == 2

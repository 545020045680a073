"""Every finding in docs/findings/ reproduces on the QEMUs its page names, as claimed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.executor.qemu.machine import qemu_installed, resolve_qemu

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "docs" / "findings"
REPRODUCERS = sorted(FINDINGS.glob("*.py"))


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("script", REPRODUCERS, ids=[p.stem for p in REPRODUCERS])
def test_the_reproducer_crashes_qemu_as_its_page_says(script: Path, version: str) -> None:
    if not qemu_installed(version):
        pytest.skip(f"QEMU {version} is not installed: run bash scripts/install-qemu.sh")
    done = subprocess.run([sys.executable, str(script), resolve_qemu(version)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr  # 0: the crash happened
    assert "reproduced" in done.stdout


def test_every_reproducer_has_its_page() -> None:
    index = (FINDINGS / "README.md").read_text()
    assert REPRODUCERS
    for script in REPRODUCERS:
        assert script.name in index

"""QEMU 10.0 beside 7.2 (issue 11): naming a QEMU by version, the ``qemu-10.0`` variant, and
the corpus and conformance cases confirmed on Debian 13's QEMU 10.0.

Resolution and the variant are tested without any QEMU; what runs QEMU 10.0 skips, saying why,
when ``scripts/install-qemu.sh 10.0`` has not unpacked it.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import assert_reproduces_as_recorded

from ivshmem_model.conform_cli import model_variant
from ivshmem_model.model.actions import load_json_file, load_trace
from ivshmem_model.model.executor.qemu.backend import QemuBackend
from ivshmem_model.model.executor.qemu.clients import client_program
from ivshmem_model.model.executor.qemu.machine import (
    kvm_available,
    qemu_installed,
    qemu_version,
    resolve_qemu,
)
from ivshmem_model.model.variants import QEMU_7_2, QEMU_10_0, get_variant
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.conform import campaign, check_case
from ivshmem_model.properties.trace import run_trace

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "counterexamples"
CASES = sorted((CORPUS / "conformance").glob("*.json"))
INSTALL = ROOT / "scripts" / "install-qemu.sh"

needs_qemu10 = pytest.mark.skipif(not qemu_installed("10.0"),
                                  reason="QEMU 10.0 is not unpacked: run bash "
                                         "scripts/install-qemu.sh 10.0")


def _fake_qemu(folder: Path, banner: str) -> Path:
    """An executable that answers ``--version`` with ``banner``, where the cache keeps 10.0."""
    binary = folder / "qemu-10.0" / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text(f"#!/bin/sh\necho '{banner}'\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


# -- naming a QEMU, without QEMU ------------------------------------------------------------


def test_10_0_not_installed_says_how_to_install(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVSHMEM_QEMU_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape("install-qemu.sh 10.0")):
        resolve_qemu("10.0")
    with pytest.raises(FileNotFoundError, match=re.escape("install-qemu.sh")):
        QemuBackend("10.0")
    assert not qemu_installed("10.0")
    with pytest.raises(FileNotFoundError, match=re.escape("7.2, 10.0 or a path")):
        resolve_qemu(str(tmp_path / "no-such-qemu"))


def test_the_version_is_what_the_binary_says(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVSHMEM_QEMU_CACHE", str(tmp_path))
    binary = _fake_qemu(tmp_path, "QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds)")
    assert resolve_qemu("10.0") == str(binary)
    backend = QemuBackend("10.0")
    assert (backend.version, backend.name) == ("10.0", "qemu-10.0")
    other = _fake_qemu(tmp_path / "other", "QEMU emulator version 9.2.4")
    assert QemuBackend(str(other)).version == "9.2"
    junk = _fake_qemu(tmp_path / "junk", "not a QEMU")
    with pytest.raises(FileNotFoundError, match="does not name a QEMU version"):
        qemu_version(str(junk))


def test_the_model_variant_follows_the_qemu(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVSHMEM_QEMU_CACHE", str(tmp_path))
    ten = QemuBackend(str(_fake_qemu(tmp_path, "QEMU emulator version 10.0.2")))
    nine = QemuBackend(str(_fake_qemu(tmp_path / "nine", "QEMU emulator version 9.1.0")))
    assert model_variant(argparse.Namespace(variant=None), ten) == "qemu-10.0"
    assert model_variant(argparse.Namespace(variant=None), nine) == "qemu-7.2"
    assert model_variant(argparse.Namespace(variant="fixed"), ten) == "fixed"


def test_install_script_rejects_an_unknown_version() -> None:
    done = subprocess.run(["bash", str(INSTALL), "9.9"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2 and "usage" in done.stdout


# -- the qemu-10.0 variant --------------------------------------------------------------------


def test_qemu_10_0_is_7_2_plus_cited_flags() -> None:
    flags_72, flags_10 = QEMU_7_2.flags(), QEMU_10_0.flags()
    assert all(flags_10[name] for name, on in flags_72.items() if on)
    added = {d["flag"]: d for d in QEMU_10_0.describe() if not flags_72[d["flag"]]}
    assert added
    for name, meta in added.items():
        assert meta["commit"] and meta["lines"] and len(meta["why"]) > 40, name
        assert not name.startswith("before_")


MODEL_CASES = [pytest.param(p, id=p.stem) for p in CASES]


@pytest.mark.parametrize("path", MODEL_CASES)
def test_conformance_case_holds_on_the_model_for_10_0(path: Path) -> None:
    case = load_json_file(str(path))
    if "10.0" not in case.get("qemu", {}):
        pytest.skip("no QEMU 10.0 run recorded in this case")
    trace = load_trace(str(path))
    result = run_trace(trace, QEMU_10_0)
    assert check_case(case, "10.0", result.steps, trace.config.host.kvm_msi_irqfd) is None


def test_a_case_tells_7_2_from_10_0() -> None:
    """At least one case records a step on which the two QEMUs differ, and the two variants
    each match their own QEMU there."""
    differing = [p for p in CASES
                 if len({str(v) for v in load_json_file(str(p))["qemu"].values()}) > 1]
    assert differing
    for path in differing:
        case, trace = load_json_file(str(path)), load_trace(str(path))
        kvm = trace.config.host.kvm_msi_irqfd
        assert check_case(case, "7.2", run_trace(trace, QEMU_7_2).steps, kvm) is None
        assert check_case(case, "10.0", run_trace(trace, QEMU_10_0).steps, kvm) is None


# -- on QEMU 10.0 -----------------------------------------------------------------------------


def _recorded() -> list[Path]:
    return [p for p in sorted(CORPUS.glob("*.json"))
            if "10.0" in load_json_file(str(p)).get("qemu", {})]


@needs_qemu10
def test_install_is_cached() -> None:
    start = time.monotonic()
    done = subprocess.run(["bash", str(INSTALL), "10.0"], capture_output=True, text=True,
                          check=False, env=dict(os.environ))
    assert done.returncode == 0 and "cached" in done.stdout, done.stdout
    assert time.monotonic() - start < 5


@needs_qemu10
@pytest.mark.parametrize("path", _recorded(), ids=[p.stem for p in _recorded()])
def test_corpus_entry_reproduces_on_qemu_10_0_as_recorded(path: Path) -> None:
    assert_reproduces_as_recorded(path, "10.0")


@needs_qemu10
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_conformance_case_holds_on_qemu_10_0(path: Path) -> None:
    case = load_json_file(str(path))
    if "10.0" not in case.get("qemu", {}):
        pytest.skip("no QEMU 10.0 run recorded in this case")
    trace = load_trace(str(path))
    if trace.config.host.kvm_msi_irqfd and not kvm_available():
        pytest.skip("the KVM irqfd path needs /dev/kvm")
    if trace.config.clients and client_program() is None:
        pytest.skip("QEMU's C ivshmem-client is not built: run scripts/build-contrib.sh")
    run = QemuBackend("10.0").run(trace)
    assert check_case(case, "10.0", run.steps, trace.config.host.kvm_msi_irqfd) is None


@needs_qemu10
def test_generated_traces_agree_with_qemu_10_0() -> None:
    """A small campaign: random walks drawn by the qemu-10.0 model, run on both sides."""
    configs = [c.config for c in embedded_configs() if c.name in ("contrib-tcg", "scripted-tcg")]
    results = campaign(configs, count=5, length=10, seed=11, backend=QemuBackend("10.0"),
                       variant=get_variant("qemu-10.0").name)
    differ = [(t.to_json()["steps"], str(v)) for t, v in results if v.verdict == "differ"]
    assert not differ, differ[0]
    assert sum(v.verdict == "agree" for _, v in results) >= len(results) // 2

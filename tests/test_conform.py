"""Conformance with the real QEMU (design §10): the comparison rules, the corpus confirmed on
QEMU 7.2, the conformance cases held on both sides, and a bounded generated campaign.

The rules are tested without QEMU; everything that runs QEMU skips, saying why, when
``qemu-system-x86_64`` is not installed (``scripts/install-qemu.sh`` installs it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_reproduces_as_recorded
from hypothesis import given, settings
from hypothesis import strategies as st

from ivshmem_model.cli import main
from ivshmem_model.model.actions import (
    Connect,
    Realize,
    load_counterexample,
    load_json_file,
    load_trace,
)
from ivshmem_model.model.executor.qemu.backend import BackendRun, BackendStep, QemuBackend
from ivshmem_model.model.executor.qemu.clients import client_program
from ivshmem_model.model.executor.qemu.machine import classify_exit, kvm_available
from ivshmem_model.model.variants import get_variant
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.conform import (
    campaign,
    check_case,
    comparable,
    compare,
    conform,
    random_walk,
)
from ivshmem_model.properties.trace import RunResult, StepRecord, run_trace

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "counterexamples"
CASES = sorted((CORPUS / "conformance").glob("*.json"))
QEMU_72 = get_variant("qemu-7.2")

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed: run "
                                       "scripts/install-qemu.sh")


def _runs(model_obs: list[dict[str, object]], qemu_obs: list[dict[str, object]],
          qemu_enabled: bool = True) -> tuple[RunResult, BackendRun]:
    action = Connect(0)
    model = RunResult("qemu-7.2", [StepRecord(0, action, True, model_obs)])
    qemu = BackendRun("qemu-7.2", [BackendStep(0, action, qemu_enabled, qemu_obs)])
    return model, qemu


# -- the rules, without QEMU -----------------------------------------------------------------


def test_comparable_drops_what_qemu_cannot_show_and_keeps_the_rest() -> None:
    obs = [{"fd": "closed"}, {"fault": "fd_misuse", "detail": "x"}, {"msi": 0}, {"read": 3},
           {"send": {"to": 0, "value": 1, "fd": None}}]
    assert comparable(obs, kvm=True) == sorted(
        [json.dumps({"read": 3}), json.dumps({"send": {"fd": None, "to": 0, "value": 1}},
                                             sort_keys=True)])
    assert json.dumps({"msi": 0}) in comparable(obs, kvm=False)


def test_compare_names_the_first_differing_step_and_both_sides() -> None:
    model, qemu = _runs([{"read": 1}], [{"read": 2}])
    verdict = compare(model, qemu, kvm=False)
    assert (verdict.verdict, verdict.step, verdict.detail) == ("differ", 0, "observations")
    assert verdict.model == ['{"read": 1}'] and verdict.qemu == ['{"read": 2}']
    model, qemu = _runs([], [], qemu_enabled=False)
    assert compare(model, qemu, kvm=False).detail == "enabled"
    model, qemu = _runs([{"read": 1}], [{"read": 1}])
    assert compare(model, qemu, kvm=False).verdict == "agree"


def test_assertions_compare_by_text_crashes_by_kind() -> None:
    ours = {"fate": "aborted", "reason": "f: Assertion `x' failed.", "line": 3}
    model, qemu = _runs([ours], [{"fate": "aborted", "reason": "f: Assertion `y' failed."}])
    assert compare(model, qemu, kvm=False).verdict == "differ"
    model, qemu = _runs([{"fate": "crashed", "reason": "double_free: x", "line": 439}],
                        [{"fate": "crashed", "reason": "SIGSEGV"}])
    assert compare(model, qemu, kvm=False).verdict == "agree"


def test_undefined_behaviour_agrees_only_with_an_abnormal_end() -> None:
    ub = {"fate": "crashed", "reason": "out_of_bounds: peers[16]", "line": 812}
    model, qemu = _runs([ub], [{"fate": "aborted", "reason": "g: Assertion `z' failed."}])
    assert compare(model, qemu, kvm=False).verdict == "agree"
    model, qemu = _runs([ub], [])
    assert compare(model, qemu, kvm=False).verdict == "differ"


def test_exit_status_and_stderr_give_the_outcome() -> None:
    assert classify_exit(1, ["qemu-system-x86_64: -device ivshmem-doorbell,id=dev0: "
                             "server sent version 1, expecting 0"]).reason == \
        "server sent version 1, expecting 0"
    aborted = classify_exit(-6, ["qemu-system-x86_64: ../hw/pci/msix.c:1: msix_vector_use: "
                                 "Assertion `vector < n' failed."])
    assert (aborted.kind, aborted.reason) == ("aborted",
                                              "msix_vector_use: Assertion `vector < n' failed.")
    assert classify_exit(-11, []).kind == "crashed"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_conformance_case_holds_on_the_model(path: Path) -> None:
    case = load_json_file(str(path))
    trace = load_trace(str(path))
    result = run_trace(trace, QEMU_72)
    assert check_case(case, "7.2", result.steps, trace.config.host.kvm_msi_irqfd) is None


def test_hotplug_failure_leaves_the_process_running_in_the_model() -> None:
    config = load_trace(str(CASES[0])).config
    bad = Realize(0, "ivshmem-doorbell", (("chardev", True), ("vectors", 0)), hotplug=True)
    result = run_trace_steps(config, [Connect(0), bad])
    assert not any("fate" in o for o in result.steps[-1].observations)
    assert "hotplug" in bad.to_json() and "hotplug" not in Realize(0, "ivshmem-plain").to_json()


def run_trace_steps(config: object, steps: list[object]) -> RunResult:
    from ivshmem_model.model.actions import Trace

    return run_trace(Trace(config, tuple(steps)), QEMU_72)  # type: ignore[arg-type]


# -- on QEMU 7.2 -----------------------------------------------------------------------------


def _recorded() -> list[Path]:
    return [p for p in sorted(CORPUS.glob("*.json"))
            if "7.2" in load_json_file(str(p)).get("qemu", {})]


@needs_qemu
@pytest.mark.parametrize("path", _recorded(), ids=[p.stem for p in _recorded()])
def test_corpus_entry_reproduces_on_qemu_as_recorded(path: Path) -> None:
    assert_reproduces_as_recorded(path, "7.2")


def test_fd_count_shows_the_descriptor_a_failed_hotplug_keeps() -> None:
    """The model's fd_count includes a leaked descriptor (qemu-7.2), not a closed one."""
    from ivshmem_model.model.actions import FdCount, ServerSend
    from ivshmem_model.model.variants import get_variant

    path = CORPUS / "failed-hotplug-keeps-version-fd.json"
    cx = load_counterexample(str(path))
    steps = (*cx.trace.steps, FdCount(0))
    leaky = run_trace_steps(cx.trace.config, list(steps))
    assert leaky.steps[-1].observations == [{"fds": {"eventfd": 1}}]
    from ivshmem_model.model.actions import Trace

    fixed = run_trace(Trace(cx.trace.config, steps), get_variant("fixed"))
    assert fixed.steps[-1].observations == [{"fds": {}}]
    assert isinstance(cx.trace.steps[1], ServerSend)


@needs_qemu
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_conformance_case_holds_on_qemu(path: Path) -> None:
    case = load_json_file(str(path))
    trace = load_trace(str(path))
    if trace.config.clients and client_program() is None:
        pytest.skip("QEMU's C ivshmem-client is not built: run scripts/build-contrib.sh")
    run = QemuBackend().run(trace)
    assert check_case(case, "7.2", run.steps, trace.config.host.kvm_msi_irqfd) is None


CONFIGS = {c.name: c.config for c in embedded_configs()}


@needs_qemu
@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(rng=st.randoms(use_true_random=False),
       name=st.sampled_from(["contrib-tcg", "scripted-tcg"]))
def test_hypothesis_generated_traces_agree_with_qemu(rng: object, name: str) -> None:
    """Hypothesis draws the walk (enabled actions, hostile server messages, configuration and
    shared-memory accesses); a difference would be shrunk by Hypothesis to a shortest walk."""
    import random

    assert isinstance(rng, random.Random)
    trace = random_walk(CONFIGS[name], 14, rng)
    verdict = conform(trace, QemuBackend(), "qemu-7.2")
    assert verdict.verdict != "differ", f"{trace.to_json()['steps']}\n{verdict}"


@needs_qemu
def test_generated_traces_agree_with_qemu() -> None:
    """A bounded campaign: random walks over the model's enabled actions, run on both."""
    names = ["contrib-tcg", "scripted-tcg"] + (["contrib-kvm", "msix-reset-kvm"]
                                               if kvm_available() else [])
    configs = [c.config for c in embedded_configs() if c.name in names]
    results = campaign(configs, count=6, length=8, seed=7, backend=QemuBackend())
    differ = [(t.to_json()["steps"], str(v)) for t, v in results if v.verdict == "differ"]
    assert not differ, differ[0]
    assert sum(v.verdict == "agree" for _, v in results) >= len(results) // 2


@needs_qemu
def test_run_on_qemu_prints_json_with_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS / "realize-spins-on-closed-socket.json"
    assert main(["run", str(path), "--backend", "qemu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcomes"]["0"]["outcome"] == "hung"
    assert out["steps"][-1]["observations"][-1]["fate"] == "hung"


@needs_qemu
def test_conform_command_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", str(CORPUS / "unmask-without-route-aborts.json"),
                 str(CASES[0])]) == 0
    assert "2 agree, 0 differ" in capsys.readouterr().out


@needs_qemu
def test_conform_generate_runs_a_campaign(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    args = ["conform", "--generate", "2", "--length", "6", "--config", "scripted-tcg",
            "--out", str(tmp_path)]
    assert main(args) == 0
    assert "(2 generated traces, seed 0)" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["conform", "--generate", "0"], ["conform"],
                                  ["conform", "--generate", "1", "--config", "nope"]])
def test_conform_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("qemu-system-x86_64") is None and "--config" in args:
        pytest.skip("the configuration is checked after QEMU is found")
    assert main(args) == 2
    assert "ivshmem-model conform" in capsys.readouterr().err


def test_a_step_marked_undefined_takes_any_abnormal_end_and_nothing_else() -> None:
    """A use after free may SIGSEGV or trip an assertion from run to run: a case step marked
    ``undefined`` accepts either, but not a process that runs on or other observations."""
    from types import SimpleNamespace

    crashed = {"enabled": True, "observations": ['{"fate": "crashed"}'], "undefined": True}
    case = {"qemu": {"10.0": [crashed]}}

    def steps(*observations: dict[str, Any]) -> list[Any]:
        return [SimpleNamespace(enabled=True, observations=list(observations))]

    aborted = {"fate": "aborted", "reason": "object_dynamic_cast_assert: Assertion `x' failed."}
    assert check_case(case, "10.0", steps(aborted), kvm=False) is None
    assert check_case(case, "10.0", steps({"fate": "crashed", "reason": "SIGSEGV"}),
                      kvm=False) is None
    assert check_case(case, "10.0", steps(), kvm=False) is not None
    assert check_case(case, "10.0", steps(aborted, {"error": "x"}), kvm=False) is not None
    del crashed["undefined"]
    assert check_case(case, "10.0", steps(aborted), kvm=False) is not None

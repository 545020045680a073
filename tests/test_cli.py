"""The command line: run, replay, explore; exit codes; bad input is exit 2, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ivshmem_model.cli import main

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "counterexamples"

TRACE = {
    "format": "ivshmem-trace/1",
    "config": {"endpoints": 1, "server": {"policy": "scripted", "vectors": 1,
                                          "shm_size": 4194304},
               "host": {"kvm_msi_irqfd": False, "ioeventfd": True}},
    "steps": [
        {"action": "connect", "endpoint": 0},
        {"action": "server_send", "endpoint": 0, "value": 1, "fd": None},
        {"action": "realize", "endpoint": 0, "device": "ivshmem-doorbell",
         "props": {"chardev": True, "vectors": 1}},
    ],
}


def write(tmp_path: Path, obj: object, name: str = "t.trace.json") -> str:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_run_shows_qemus_error_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", write(tmp_path, TRACE)]) == 0
    out = capsys.readouterr().out
    assert '"error": "server sent version 1, expecting 0"' in out
    assert '"fate": "failed"' in out
    assert "no property violated" in out


def test_run_json_is_the_design_format(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CORPUS / "peer-eventfds-freed-twice.json")
    assert main(["run", path, "--json", "--variant", "seed"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"variant", "steps", "violations"}
    assert report["variant"] == "seed"
    assert set(report["steps"][0]) == {"index", "action", "enabled", "observations"}
    assert report["violations"][0]["property"] == "memory_safety"
    assert report["violations"][0]["step"] == len(report["steps"]) - 1
    assert set(report["violations"][0]) == {"property", "step", "message"}


def test_run_reports_a_disabled_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = {**TRACE, "steps": [{"action": "deliver", "endpoint": 0}]}
    assert main(["run", write(tmp_path, trace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"][0]["enabled"] is False


@pytest.mark.parametrize(
    ("content", "args", "fragment"),
    [
        ({**TRACE, "steps": [{"action": "warp", "endpoint": 0}]}, [], "steps[0].action"),
        ({**TRACE, "steps": [{"action": "connect"}]}, [], "steps[0].endpoint"),
        ({**TRACE, "steps": [{"action": "connect", "endpoint": "zero"}]}, [],
         "steps[0].endpoint: expected an integer"),
        ({**TRACE, "steps": [{"action": "connect", "endpoint": 3}]}, [],
         "steps[0].endpoint: endpoint 3 is out of range"),
        ("{ nope", [], "invalid JSON"),
        (TRACE, ["--variant", "qemu-9"], "unknown variant 'qemu-9'"),
    ],
)
def test_run_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               content: object, args: list[str], fragment: str) -> None:
    path = write(tmp_path, content)
    assert main(["run", path, *args]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err
    assert "Traceback" not in captured.err + captured.out
    if "variant" not in fragment:
        assert path in captured.err


def test_replay_corpus_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(CORPUS)]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_replay_disagreement_exits_1_and_names_the_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cx = json.loads((CORPUS / "peer-eventfds-freed-twice.json").read_text())
    cx["expect"]["seed"]["step"] = 2
    assert main(["replay", write(tmp_path, cx, "wrong.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL wrong.json [seed] expected violates memory_safety at step 2" in out
    assert "diverges at step 2" in out


def test_replay_malformed_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(CORPUS / "peer-eventfds-freed-twice.json", tmp_path / "good.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "ivshmem-counterexample/1"}))
    assert main(["replay", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "bad.json: name: expected a string" in captured.err
    assert "ok   good.json" in captured.out


def test_explore_json_reports_violations(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = {"config": TRACE["config"], "depth": 4}
    assert main(["explore", "--config", write(tmp_path, config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["states"] > 100
    assert {v["property"] for v in report["violations"]} >= {"no_hang"}

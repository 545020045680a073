"""The corpus tooling: README up to date, de-duplication, minimization, expectation updates."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ivshmem_model.corpus_cli import add_subcommands
from ivshmem_model.model.actions import MmioRead, Ring, Trace, load_counterexample
from ivshmem_model.properties.corpus import (
    duplicates,
    expectations,
    identity,
    is_minimal,
    keeper,
    minimize_counterexample,
    readme_text,
    renumber,
    simplify_values,
    update_expectations,
    violation_site,
)

CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"
TWO_PEERS = CORPUS / "peer-eventfds-freed-twice.json"
SCRIPTED = CORPUS / "before-1ee57de444ac-too-many-eventfds-written-past-array.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivshmem-model")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def _main(*argv: str) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_the_readme_is_up_to_date() -> None:
    assert (CORPUS / "README.md").read_text() == readme_text(CORPUS), \
        "run: ivshmem-model corpus-readme counterexamples"


def test_the_corpus_has_no_duplicates() -> None:
    corpus = [load_counterexample(str(p)) for p in sorted(CORPUS.glob("*.json"))]
    assert duplicates(corpus) == []


def test_renumbered_endpoints_are_the_same_counterexample() -> None:
    cx = load_counterexample(str(TWO_PEERS))
    assert {getattr(a, "endpoint", 0) for a in cx.trace.steps} == {0, 1}
    config, steps = renumber(cx.trace.config, cx.trace.steps, {0: 1, 1: 0})
    swapped = replace(cx, name="swapped", trace=Trace(config, steps))
    assert swapped.trace != cx.trace
    assert violation_site(swapped) == violation_site(cx) == "seed 439"
    assert identity(swapped) == identity(cx)
    other = load_counterexample(str(CORPUS / "unplug-leaves-kvm-routes.json"))
    assert duplicates([cx, swapped, other]) == [sorted([cx.name, "swapped"])]


def test_same_trace_other_property_is_not_a_duplicate() -> None:
    cx = load_counterexample(str(TWO_PEERS))
    assert duplicates([cx, replace(cx, name="other", property="no_abort")]) == []


def test_minimize_drops_steps_simplifies_and_renumbers() -> None:
    cx = load_counterexample(str(CORPUS / "before-62a830b688a9-two-masters.json"))
    config, steps = renumber(cx.trace.config, cx.trace.steps, {0: 1, 1: 0})
    padded = (steps[0], steps[1], MmioRead(1, 8), Ring(1, 1, 0), *steps[2:], MmioRead(0, 8))
    big = replace(cx, trace=Trace(config, padded),
                  expect=tuple(expectations(config, padded, cx.property).items()))
    small = minimize_counterexample(big)
    assert small.trace.steps == cx.trace.steps
    assert dict(small.expect) == dict(cx.expect)
    assert violation_site(small) == violation_site(cx)
    assert is_minimal(small) and not is_minimal(big)


def test_simplify_values_prefers_small_numbers() -> None:
    cx = load_counterexample(str(SCRIPTED))
    steps = (*cx.trace.steps, Ring(0, 0, 7))

    def keep(_config: object, candidate: tuple[object, ...]) -> bool:
        return all(getattr(a, "vector", 1) >= 1 for a in candidate)

    simpler = simplify_values(cx.trace.config, steps, keep)  # type: ignore[arg-type]
    assert simpler[-1] == Ring(0, 0, 1)


def test_a_counterexample_must_show_its_violation() -> None:
    cx = load_counterexample(str(SCRIPTED))
    with pytest.raises(ValueError, match="does not show"):
        keeper(replace(cx, trace=Trace(cx.trace.config, cx.trace.steps[:2])))


def test_minimize_cli_writes_a_file_that_replays(tmp_path: Path) -> None:
    out = tmp_path / "small.json"
    assert _main("minimize", str(TWO_PEERS), "-o", str(out)) == 0
    small = load_counterexample(str(out))
    assert small.property == "memory_safety"
    assert violation_site(small) == "seed 439"
    assert len(small.trace.steps) <= len(load_counterexample(str(TWO_PEERS)).trace.steps)


def test_update_expectations_rewrites_only_the_expectations(tmp_path: Path) -> None:
    path = tmp_path / SCRIPTED.name
    shutil.copy(SCRIPTED, path)
    assert update_expectations(path) is False
    obj = json.loads(path.read_text())
    obj["expect"] = {"seed": "holds"}
    path.write_text(json.dumps(obj, indent=2) + "\n")
    assert update_expectations(path) is True
    assert path.read_text() == SCRIPTED.read_text()


def test_corpus_readme_cli_check_and_write(tmp_path: Path) -> None:
    for name in (TWO_PEERS.name, SCRIPTED.name):
        shutil.copy(CORPUS / name, tmp_path / name)
    assert _main("corpus-readme", str(tmp_path), "--check") == 1
    assert _main("corpus-readme", str(tmp_path)) == 0
    assert _main("corpus-readme", str(tmp_path), "--check") == 0
    text = (tmp_path / "README.md").read_text()
    assert "| seed 584 | before-1ee57de444ac | explore (3.2 s) | 6 | yes |" in text

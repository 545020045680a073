"""Every counterexample in the corpus replays with the expectation it states."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivshmem_model.model.actions import load_counterexample
from ivshmem_model.properties.trace import replay

CORPUS = sorted((Path(__file__).resolve().parent.parent / "counterexamples").glob("*.json"))


def test_the_corpus_is_not_empty() -> None:
    assert len(CORPUS) >= 10


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_counterexample_replays(path: Path) -> None:
    cx = load_counterexample(str(path))
    assert cx.name == path.stem
    assert any(v != "holds" for _, v in cx.expect), "a counterexample must violate something"
    outcomes = replay(cx)
    assert outcomes
    for outcome in outcomes:
        assert outcome.ok, f"[{outcome.variant}] expected {outcome.expected}, observed " \
                           f"{outcome.observed} (diverges at step {outcome.diverges_at})"

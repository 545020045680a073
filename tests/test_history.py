"""The ``before-<commit>`` variants: the seed with one historical fix reverted (facts §6.2).

Each variant differs from the seed in exactly one flag, which cites its commit; each has a
counterexample in the corpus, found by a checker, that it violates and the seed passes.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from helpers import contrib, run

from model.actions import Connect, MmioWrite, Realize, load_counterexample
from model.device import Reg
from model.variants import (
    BEFORE,
    BEFORE_COMMITS,
    BEFORE_POST_SEED,
    FIXED,
    POST_SEED_FIXES,
    QEMU_7_2,
    SEED,
    Variant,
)
from properties.corpus import differential_search

CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"
FOUND = list(BEFORE_COMMITS)


def _before_flags(variant: Variant) -> list[str]:
    return [name for name, on in variant.flags().items() if on and name.startswith("before_")]


@pytest.mark.parametrize("variant", BEFORE, ids=[v.name for v in BEFORE])
def test_a_before_variant_is_the_seed_with_one_flag(variant: Variant) -> None:
    commit = variant.name.removeprefix("before-")
    assert len(commit) == 12 and int(commit, 16) >= 0
    on = [name for name, value in variant.flags().items() if value]
    assert on == [f"before_{commit}"]
    meta = next(f.metadata for f in fields(variant) if f.name == on[0])
    assert meta["commit"] == commit
    assert meta["lines"] and meta["why"]


def test_the_other_variants_revert_nothing() -> None:
    for variant in (SEED, QEMU_7_2, FIXED):
        assert _before_flags(variant) == []


@pytest.mark.parametrize("commit", FOUND)
def test_the_corpus_shows_each_reverted_fix(commit: str) -> None:
    files = sorted(CORPUS.glob(f"before-{commit}-*.json"))
    assert files, f"no counterexample for before-{commit}"
    for path in files:
        cx = load_counterexample(str(path))
        expect = dict(cx.expect)
        assert expect["seed"] == "holds"
        assert expect["fixed"] == "holds"
        assert expect[f"before-{commit}"] != "holds"
        assert "found_by" in dict(cx.extra)


@pytest.mark.parametrize(("config", "commit", "prop", "site", "depth"), [
    (contrib(irqfd=True), "0b88dd942073", "no_abort", "msix.c msix_unset_vector_notifiers", 3),
    (contrib(realize=(("ivshmem-doorbell", (("chardev", True), ("master", "on"),
                                            ("vectors", 1))),)),
     "62a830b688a9", "master_unique", "", 4),
])
def test_the_differential_explorer_finds_a_reverted_fix(
    config: object, commit: str, prop: str, site: str, depth: int
) -> None:
    variant = next(v for v in BEFORE if v.name == f"before-{commit}")
    found = differential_search(config, variant, SEED, max_depth=depth)  # type: ignore[arg-type]
    assert (prop, site) in {(f.property, f.site) for f in found}
    assert len(next(f for f in found if f.property == prop).path) == depth


def test_intx_with_msi_on_the_legacy_device() -> None:
    """Before 2d1d422d1145 the legacy device with msi=on (pin 1) drove INTx from its status
    and mask registers; the seed leaves INTx alone."""
    config = contrib(endpoints=1)
    steps = (
        Connect(0),
        Realize(0, "ivshmem", (("chardev", True), ("msi", True))),
        MmioWrite(0, int(Reg.INTRMASK), 1),
        MmioWrite(0, int(Reg.INTRSTATUS), 1),
    )
    variant = next(v for v in BEFORE if v.name == "before-2d1d422d1145")
    before = run(config, *steps, variant=variant)
    assert before.disabled_step is None
    hit = before.first("intx_rule")
    assert hit is not None and hit.step == 3
    assert run(config, *steps).first("intx_rule") is None


@pytest.mark.parametrize(("commit", "base", "flag"), POST_SEED_FIXES,
                         ids=[c for c, _, _ in POST_SEED_FIXES])
def test_a_post_seed_fix_is_reverted_from_the_release_that_has_it(
    commit: str, base: Variant, flag: str
) -> None:
    variant = next(v for v in BEFORE_POST_SEED if v.name == f"before-{commit}")
    assert getattr(base, flag) and not getattr(variant, flag)
    differing = [k for k, on in variant.flags().items() if on != base.flags()[k]]
    assert differing == [flag]
    meta = next(f.metadata for f in fields(variant) if f.name == flag)
    assert meta["commit"] == commit
    shown = [
        path.name for path in sorted(CORPUS.glob("*.json"))
        if (expect := dict(load_counterexample(str(path)).expect)).get(base.name) == "holds"
        and expect.get(f"before-{commit}", "holds") != "holds"
    ]
    assert shown, f"no counterexample shows before-{commit} against {base.name}"

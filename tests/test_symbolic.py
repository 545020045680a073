"""The z3 encoding: proofs for fixed, BMC for seed, decode theorems, agreement with step."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import z3

from ivshmem_model.model.actions import load_counterexample
from ivshmem_model.model.variants import FIXED, QEMU_7_2, SEED, Variant
from ivshmem_model.properties import symbolic, symbolic_decode
from ivshmem_model.properties import symbolic_enc as enc
from ivshmem_model.properties.explore import compiled
from ivshmem_model.properties.symbolic_agree import agreement
from ivshmem_model.properties.symbolic_enc import Flags, Sym
from ivshmem_model.properties.trace import replay, run_trace


@pytest.mark.parametrize("name", symbolic.PROPERTIES)
def test_fixed_proves_for_all_vector_counts_and_ids(name: str) -> None:
    outcome = symbolic.prove(name, FIXED)
    assert outcome.status == "proved", outcome.detail


@pytest.mark.parametrize("kind", enc.KINDS)
def test_fixed_invariant_is_not_vacuous(kind: str) -> None:
    """Every action is enabled in some state of the invariant (vectors below 4 shown)."""
    fl = Flags.of(FIXED)
    s = enc.fresh("s")
    with enc.finite_loops(4):
        en, _, side = enc.action(fl, s, kind, "t", z3.Int("p"), z3.Bool("b"))
        solver = z3.Solver()
        solver.add(symbolic.strengthened(fl, s), en, *side, s.V <= 4)
        assert solver.check() == z3.sat
        solver = z3.Solver()
        solver.add(enc.init(fl, s), symbolic.strengthened(fl, s), s.V == 4, s.vm_id == 65535)
        assert solver.check() == z3.sat


def test_seed_bmc_own_id_beyond_peers_array(tmp_path: Path) -> None:
    outcome = symbolic.bmc("vector_bounds", SEED, 3, tmp_path, mode="fate")
    assert outcome.status == "counterexample" and outcome.depth == 1
    assert outcome.steps == [{"kind": "enable", "p": outcome.steps[0]["p"], "b": True}]
    assert outcome.file is not None
    cx = load_counterexample(outcome.file)
    result = run_trace(cx.trace, SEED)
    hit = result.first("vector_bounds")
    assert hit is not None and "seed 812" in hit.message
    assert all(o.ok for o in replay(cx))
    assert run_trace(cx.trace, FIXED).first("vector_bounds") is None


def test_seed_bmc_unmask_without_route_aborts(tmp_path: Path) -> None:
    outcome = symbolic.bmc("mask_balance", SEED, 3, tmp_path, mode="fate")
    assert outcome.status == "counterexample" and outcome.depth == 2
    assert outcome.concrete_property == "no_abort"
    assert outcome.file is not None
    cx = load_counterexample(outcome.file)
    hit = run_trace(cx.trace, SEED).first("no_abort")
    assert hit is not None and "ret >= 0" in hit.message
    assert dict(cx.expect)["fixed"] == "holds"


@pytest.mark.skipif(compiled(), reason="the decoder watches model.device through mock.patch, "
                    "which compiled callers do not see (mypyc build)")
def test_doorbell_and_message_decode_theorems() -> None:
    assert symbolic_decode.prove_doorbell_decode() == z3.unsat
    assert symbolic_decode.prove_message_decode() == z3.unsat
    assert symbolic_decode.concrete_agreement(300, seed=3) == []


@pytest.mark.skipif(compiled(), reason="the decoder watches model.device through mock.patch, "
                    "which compiled callers do not see (mypyc build)")
def test_doorbell_decode_sub_word_write_acts_as_doorbell() -> None:
    # seed 214-217 behind the memory core: a 1-byte write at 13 widens to a DOORBELL write.
    assert symbolic_decode.observe_write(13, 0x01, 1, True, set(), 16) == [
        (symbolic_decode.DOORBELL, 0, 1)]


@pytest.mark.parametrize("variant", [SEED, QEMU_7_2, FIXED], ids=lambda v: v.name)
def test_agreement_with_step(variant: Variant) -> None:
    result = agreement(variant, samples=200, seed=2)
    assert result.samples >= 200 and result.enabled >= 100
    assert result.mismatches == []


def _no_notifiers_on_enable(fl: Flags, s: Sym, kind: str, tag: str, p: z3.ArithRef,
                            b: z3.BoolRef) -> enc.Step:
    en, post, side = enc.action(fl, s, kind, tag, p, b)
    if kind == "enable":
        post = replace(post, notif=s.notif)
    return en, post, side


def test_agreement_catches_a_planted_divergence() -> None:
    result = agreement(SEED, samples=40, seed=2, encoder=_no_notifiers_on_enable)
    assert result.mismatches
    assert "not a z3 successor" in result.mismatches[0]

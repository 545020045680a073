"""The explorer on small configurations: pinned counts (with and without symmetry), shortest
counterexamples replayed, a planted bug found, coverage reported (several workers, on Ray:
``test_distributed.py``)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import contrib, doorbell, play, scripted

from ivshmem_model.cli import main
from ivshmem_model.model.actions import (
    Connect,
    Deliver,
    MmioRead,
    MsixEnable,
    Realize,
    ShmRead,
    ShmWrite,
    Trace,
    Unplug,
)
from ivshmem_model.model.system import step
from ivshmem_model.model.variants import FIXED, QEMU_7_2, QEMU_10_0, SEED
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.explore import ExploreOptions, compiled, explore
from ivshmem_model.properties.invariants import site_of, violations
from ivshmem_model.properties.trace import run_trace


def test_explore_pins_the_state_count_of_a_small_configuration() -> None:
    result = explore(contrib(endpoints=1), SEED, ExploreOptions(max_depth=5))
    assert (result.states, result.transitions) == (RESULT_1_ENDPOINT_DEPTH_5)


def test_shortest_counterexamples_in_the_scripted_configuration() -> None:
    result = explore(scripted(), SEED, ExploreOptions(max_depth=5))
    lengths = {key: len(f.path) for key, f in result.found.items()}
    assert lengths[("no_hang", "seed 672")] == 3  # connect, server_exit, realize
    assert lengths[("memory_safety", "seed 393")] == 5


def test_fixed_is_clean_within_bounds() -> None:
    for config in (contrib(endpoints=1), scripted(), contrib(endpoints=1, irqfd=True)):
        assert explore(config, FIXED, ExploreOptions(max_depth=5)).found == {}



def test_the_memdev_replug_abort_is_found_unaided_and_fixed_lets_the_next_device_map_it(
) -> None:
    """``memdev-replug``: realize on a fresh backend, unplug, realize on that backend by name
    aborts in qemu_ram_set_idstr (exit left the RAM block's id), the shortest path; under
    ``fixed`` exit unregisters the id and the second device maps the backend's bytes."""
    named = {n.name: n for n in embedded_configs()}["memdev-replug"]
    options = ExploreOptions(max_depth=named.depth)
    for variant in (SEED, QEMU_7_2, QEMU_10_0):
        found = explore(named.config, variant, options).found
        lengths = {k: len(f.path) for k, f in found.items()}
        assert lengths[("no_abort", "physmem.c qemu_ram_set_idstr")] == 3, variant.name
    assert explore(named.config, FIXED, options).found == {}
    again = Realize(0, "ivshmem-plain", (("memdev", "m0-1"),))
    steps = (Realize(0, "ivshmem-plain", (("memdev_size", 4096),)), ShmWrite(0, 0, 7),
             Unplug(0), again, ShmRead(0, 0))
    fixed = run_trace(Trace(named.config, steps), FIXED)
    assert fixed.steps[4].observations == [{"read": 7}]
    assert fixed.final is not None and fixed.final.endpoints[0].backends[0].idstr
    violation = run_trace(Trace(named.config, steps), QEMU_7_2).first("no_abort")
    assert violation is not None and violation.step == 3

def test_the_model_can_ring_a_doorbell_end_to_end() -> None:
    result = explore(contrib(endpoints=2), FIXED, ExploreOptions(max_depth=7))
    assert "doorbell_reaches_msi" in result.witnesses


# A doorbell a device rings to itself is handled in the ring step (as QEMU's main loop does):
# fewer states than when it waited for handle_irq (60, 262).
RESULT_1_ENDPOINT_DEPTH_5 = (55, 249)


# --- symmetry, workers, replay, coverage (issue 4) -------------------------------------------

PLANTED = dataclasses.replace(FIXED, name="planted", keep_peer_eventfds_array=False)


def test_explore_pins_the_state_count_of_2_endpoints_with_and_without_symmetry() -> None:
    plain = explore(contrib(endpoints=2), SEED, ExploreOptions(max_depth=6))
    reduced = explore(contrib(endpoints=2), SEED, ExploreOptions(max_depth=6, symmetry=True))
    assert (plain.states, plain.transitions) == RESULT_2_ENDPOINTS_DEPTH_6
    assert (reduced.states, reduced.transitions) == RESULT_2_ENDPOINTS_DEPTH_6_SYMMETRY


def test_symmetry_changes_nothing_with_1_endpoint() -> None:
    plain = explore(contrib(endpoints=1), SEED, ExploreOptions(max_depth=5))
    reduced = explore(contrib(endpoints=1), SEED, ExploreOptions(max_depth=5, symmetry=True))
    assert (reduced.states, reduced.transitions) == (plain.states, plain.transitions)


def test_planted_double_free_is_found_in_8_steps_2_endpoints() -> None:
    for symmetry in (False, True):
        result = explore(contrib(endpoints=2), PLANTED,
                         ExploreOptions(max_depth=8, max_states=10**6, symmetry=symmetry))
        finding = result.found[("memory_safety", "seed 439")]
        assert len(finding.path) == 8
        run = run_trace(Trace(contrib(endpoints=2), finding.path), PLANTED)
        assert run.disabled_step is None and run.final is not None
        assert ("memory_safety", "seed 439") in {
            (name, site_of(message)) for name, message in violations(run.final)}
        assert result.unconfirmed == 0


def test_every_reported_path_replays_to_its_violation() -> None:
    result = explore(scripted(), SEED, ExploreOptions(max_depth=5))
    assert result.found and result.unconfirmed == 0
    for (name, site), finding in result.found.items():
        run = run_trace(Trace(scripted(), finding.path), SEED)
        assert run.final is not None
        assert (name, site) in {(n, site_of(m)) for n, m in violations(run.final)}


@pytest.mark.skipif(compiled(), reason="coverage traces the interpreted model (mypyc build)")
def test_coverage_reports_seed_functions_lines_and_never_enabled_actions() -> None:
    result = explore(contrib(endpoints=1), SEED, ExploreOptions(max_depth=5, coverage=True))
    report = result.coverage.to_json()
    assert 0 < report["functions_covered"] < report["functions_total"]
    assert 0 < report["seed_lines_covered"] < report["seed_lines_total"]
    assert "server_send" in report["actions_never_enabled"]  # contrib policy
    assert "connect" not in report["actions_never_enabled"]


@pytest.mark.skipif(not compiled(), reason="the mypyc build's refusal (scripts/test-compiled.sh)")
def test_the_compiled_build_refuses_coverage_with_a_clear_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", "--depth", "2", "--coverage"]) == 2
    assert "--coverage: seed coverage traces the interpreted model" in capsys.readouterr().err


RESULT_2_ENDPOINTS_DEPTH_6 = (831, 4001)  # a failed re-realize after unplug keeps QEMU
RESULT_2_ENDPOINTS_DEPTH_6_SYMMETRY = (419, 2005)


def test_fingerprints_give_the_states_transitions_and_paths_of_the_exact_seen_set() -> None:
    for symmetry in (False, True):
        exact = explore(contrib(endpoints=2), SEED, ExploreOptions(
            max_depth=6, symmetry=symmetry, fingerprints=False))
        hashed = explore(contrib(endpoints=2), SEED, ExploreOptions(
            max_depth=6, symmetry=symmetry))
        assert (hashed.states, hashed.transitions, hashed.depth) == (
            exact.states, exact.transitions, exact.depth)
        assert {k: f.path for k, f in hashed.found.items()} == {
            k: f.path for k, f in exact.found.items()}
        assert hashed.witnesses == exact.witnesses and hashed.found


def test_a_step_that_changes_nothing_returns_the_very_state() -> None:
    state = play(contrib(endpoints=1), Connect(0), doorbell(0), Deliver(0))
    read = step(state, MmioRead(0, 8, 4))  # IVPOSITION: a register read changes nothing
    assert read is not None and read[0] is state
    enabled = step(state, MsixEnable(0, True))
    assert enabled is not None and enabled[0] is not state and enabled[0] != state



def test_a_search_leaves_the_garbage_collector_as_it_found_it() -> None:
    """``explore`` freezes each level's survivors (``levels_frozen``) and unfreezes them at
    the end; a caller's own frozen objects stay frozen and nothing of theirs is released."""
    import gc

    config = {n.name: n for n in embedded_configs()}["contrib-tcg"].config
    assert gc.get_freeze_count() == 0
    explore(config, SEED, ExploreOptions(max_depth=5, symmetry=True))
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        explore(config, SEED, ExploreOptions(max_depth=5, symmetry=True))
        assert gc.get_freeze_count() == mine
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("symmetry", [False, True])
def test_low_memory_rebuilds_the_very_search(symmetry: bool) -> None:
    """Each state rebuilt from its parent: the same states, transitions, findings, shortest
    paths and witnesses as the search that keeps the states, on every embedded configuration."""
    for named in embedded_configs():
        kept = explore(named.config, SEED, ExploreOptions(max_depth=6, symmetry=symmetry))
        rebuilt = explore(named.config, SEED, ExploreOptions(max_depth=6, symmetry=symmetry,
                                                             low_memory=True))
        assert (rebuilt.states, rebuilt.transitions, rebuilt.depth, rebuilt.complete) == (
            kept.states, kept.transitions, kept.depth, kept.complete), named.name
        assert rebuilt.found == kept.found and rebuilt.witnesses == kept.witnesses, named.name


def test_low_memory_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    reports = []
    for extra in ([], ["--low-memory"]):
        assert main(["explore", "--depth", "5", "--json", *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    timing = {"seconds", "states_per_second"}
    kept, rebuilt = ({k: v for k, v in r.items() if k not in timing} for r in reports)
    assert kept == rebuilt and kept["violations"]
    assert main(["explore", "--low-memory", "--por"]) == 2
    assert "--low-memory runs in one process" in capsys.readouterr().err

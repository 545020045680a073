"""Partial-order reduction (``properties/por.py``): the same states and findings as the full
search on every embedded configuration, fewer steps, and an independence relation that holds
(both orders of every pair it calls independent end in the same state)."""

from __future__ import annotations

import json

import pytest
from helpers import contrib, independent_pairs_commute

from ivshmem_model.cli import main
from ivshmem_model.model.actions import Config
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, successors
from ivshmem_model.model.variants import SEED
from ivshmem_model.properties import por
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.explore import ExploreOptions, ExploreResult, explore

CONFIGS = {named.name: named for named in embedded_configs()}


def lengths(result: ExploreResult) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    return ({site: len(f.path) for site, f in result.found.items()},
            {name: len(path) for name, path in result.witnesses.items()})


@pytest.mark.parametrize("symmetry", [False, True], ids=["plain", "symmetry"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_por_finds_every_violation_at_the_same_length(name: str, symmetry: bool) -> None:
    named = CONFIGS[name]
    options = ExploreOptions(max_depth=min(named.depth, 5), max_states=10**6, time_limit=300,
                             symmetry=symmetry)
    full = explore(named.config, SEED, options)
    reduced = explore(named.config, SEED, ExploreOptions(
        max_depth=options.max_depth, max_states=10**6, time_limit=300, symmetry=symmetry,
        por=True))
    assert lengths(reduced) == lengths(full)
    assert reduced.unconfirmed == 0
    # Sleep sets skip steps, never states: the same states, at the same depths.
    assert (reduced.states, reduced.depth, reduced.complete) == (
        full.states, full.depth, full.complete)
    assert reduced.transitions + reduced.slept >= full.transitions >= reduced.transitions
    print(f"{name} depth {options.max_depth} symmetry={symmetry}: transitions "
          f"{full.transitions} -> {reduced.transitions} "
          f"(x{full.transitions / reduced.transitions:.2f})")


def test_por_skips_steps_where_endpoints_commute() -> None:
    full = explore(contrib(endpoints=2), SEED, ExploreOptions(max_depth=6))
    reduced = explore(contrib(endpoints=2), SEED, ExploreOptions(max_depth=6, por=True))
    assert reduced.slept > 0 and reduced.transitions < full.transitions
    assert set(reduced.found) == set(full.found)


def reachable(config: Config, depth: int, limit: int) -> list[SystemState]:
    init = initial_state(config, SEED)
    seen = {init}
    level = [init]
    for _ in range(depth):
        level = [y for x in level for _, y, _ in successors(x) if not (y in seen or seen.add(y))]
    return list(seen)[:limit]


@pytest.mark.parametrize("name", ["contrib-kvm", "legacy-intx", "contrib-tcg",
                                  "msix-reset-kvm"])
def test_actions_called_independent_commute(name: str) -> None:
    config = CONFIGS[name].config
    pairs = independent_pairs_commute(config, reachable(config, 4, 400))
    assert pairs > 20, pairs


def test_a_footprint_that_misses_a_write_stops_the_search(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(por, "CHANNEL", frozenset())  # server_send writes its channel
    with pytest.raises(por.FootprintError):
        explore(CONFIGS["scripted-tcg"].config, SEED, ExploreOptions(max_depth=3, por=True))


def test_por_is_a_one_process_option() -> None:
    with pytest.raises(ValueError, match="one-process"):
        explore(contrib(), SEED, ExploreOptions(por=True, workers=2))


def test_explore_por_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    reports = []
    for extra in ([], ["--por"]):
        assert main(["explore", "--depth", "5", "--symmetry", "--json", *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    full, reduced = reports
    assert reduced["states"] == full["states"] and reduced["slept"] > 0
    assert reduced["transitions"] < full["transitions"]
    assert [(v["property"], v["site"], len(v["steps"])) for v in reduced["violations"]] == [
        (v["property"], v["site"], len(v["steps"])) for v in full["violations"]]

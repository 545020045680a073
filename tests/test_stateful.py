"""The Hypothesis machine under the ``quick`` profile: the seed's bugs are found, fixed is clean."""

from __future__ import annotations

import pytest

from ivshmem_model.model.actions import Trace
from ivshmem_model.model.variants import FIXED, SEED
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.stateful import run_machine
from ivshmem_model.properties.trace import run_trace

CONFIGS = {c.name: c.config for c in embedded_configs()}


@pytest.mark.parametrize("name", ["contrib-kvm", "scripted-kvm"])
def test_hypothesis_finds_a_seed_violation(name: str) -> None:
    failure = run_machine(CONFIGS[name], SEED, "quick")
    assert failure is not None
    replayed = run_trace(Trace(CONFIGS[name], failure.steps), SEED)
    assert replayed.first(failure.property) is not None, "the minimized trace still fails"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fixed_satisfies_all_properties_under_hypothesis(name: str) -> None:
    assert run_machine(CONFIGS[name], FIXED, "quick") is None


@pytest.mark.parametrize("name", ["contrib-tcg", "scripted-kvm"])
def test_fixed_holds_with_the_guest_config_space_and_shared_memory(name: str) -> None:
    """Configuration writes (decoding, mastering, BAR sizing) and shared-memory accesses
    change no property's verdict on the fixed variant."""
    assert run_machine(CONFIGS[name], FIXED, "quick", guest=True) is None


def test_the_machine_draws_hostile_clients_where_the_configuration_has_them() -> None:
    """configs/contrib-failures-clients.json puts abandon and garbage on the menus: the
    machine has rules for them and Hypothesis finds the server shutting down (serves_on)."""
    from pathlib import Path

    from ivshmem_model.properties.configs import load_config_file
    from ivshmem_model.properties.stateful import machine_for

    path = Path(__file__).resolve().parent.parent / "configs" / "contrib-failures-clients.json"
    config = load_config_file(str(path)).config
    assert config.hostile_clients
    machine = machine_for(config, FIXED)
    assert hasattr(machine, "abandon") and hasattr(machine, "garbage")
    assert not hasattr(machine_for(CONFIGS["contrib-tcg"], FIXED), "abandon")
    failure = run_machine(config, FIXED, "quick")
    assert failure is not None and failure.property in ("serves_on", "peer_view")

"""Builders for the traces the tests share."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from ivshmem_model.model.actions import Action, Config, HostConfig, Realize, ServerConfig, Trace
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, step, successors
from ivshmem_model.model.variants import SEED, Variant
from ivshmem_model.properties import por
from ivshmem_model.properties.trace import RunResult, run_trace


def doorbell(endpoint: int, vectors: int = 1, **props: object) -> Realize:
    """``-device ivshmem-doorbell,chardev=...,vectors=N`` on the endpoint's socket."""
    merged = {"chardev": True, "vectors": vectors, **props}
    return Realize(endpoint, "ivshmem-doorbell", tuple(sorted(merged.items())))  # type: ignore[arg-type]


def contrib(endpoints: int = 2, vectors: int = 1, irqfd: bool = False, **extra: object) -> Config:
    return Config(endpoints=endpoints, server=ServerConfig(vectors=vectors),
                  host=HostConfig(kvm_msi_irqfd=irqfd), **extra)  # type: ignore[arg-type]


def scripted(endpoints: int = 1, irqfd: bool = False) -> Config:
    return Config(endpoints=endpoints, server=ServerConfig(policy="scripted"),
                  host=HostConfig(kvm_msi_irqfd=irqfd))


def run(config: Config, *steps: Action, variant: Variant = SEED) -> RunResult:
    return run_trace(Trace(config, tuple(steps)), variant)


def play(config: Config, *steps: Action, variant: Variant = SEED) -> SystemState:
    """The state after ``steps``; every step must be enabled."""
    state = initial_state(config, variant)
    for action in steps:
        outcome = step(state, action)
        assert outcome is not None, f"{action} is not enabled"
        state = outcome[0]
    return state


def observations(
    config: Config, *steps: Action, variant: Variant = SEED
) -> list[dict[str, object]]:
    """The observations of the last step."""
    result = run(config, *steps, variant=variant)
    assert result.disabled_step is None, f"step {result.disabled_step} is disabled"
    return result.steps[-1].observations


def assert_reproduces_as_recorded(path: object, version: str) -> None:
    """Confirm the corpus entry at ``path`` on QEMU ``version`` (its ``qemu-VERSION`` variant)
    and check that QEMU does what the file recorded: the verdict, and the fate or the
    descriptors held.  Skips where this machine cannot run it."""
    import shutil

    import pytest

    from ivshmem_model.model.actions import load_counterexample, load_json_file
    from ivshmem_model.model.executor.qemu.backend import QemuBackend
    from ivshmem_model.model.executor.qemu.machine import kvm_available
    from ivshmem_model.properties.conform import confirm

    recorded = load_json_file(str(path))["qemu"][version]
    cx = load_counterexample(str(path))
    if cx.trace.config.host.kvm_msi_irqfd and not kvm_available():
        pytest.skip("the KVM irqfd path needs /dev/kvm")
    if recorded.get("checker") == "valgrind memcheck" and shutil.which("valgrind") is None:
        pytest.skip("confirmed under valgrind, which is not installed")
    record = confirm(cx, QemuBackend(version), f"qemu-{version}")
    assert record["verdict"] == recorded["verdict"], record
    if "qemu" in recorded:
        key = "fate" if "fate" in recorded["qemu"] else "fds"  # a fate, or descriptors held
        assert record["qemu"][key] == recorded["qemu"][key]


def both_orders(x: SystemState, a: Action, b: Action) -> tuple[object, object]:
    """``a`` then ``b`` and ``b`` then ``a`` from ``x``: each order's end state with what
    ``a`` and ``b`` observed in it."""
    out = []
    for first, second in ((a, b), (b, a)):
        one = step(x, first)
        assert one is not None
        two = step(one[0], second)
        assert two is not None, f"{second} disabled after {first}"
        out.append((two[0], one[1], two[1]))
    (ab, obs_a, obs_ab), (ba, obs_b, obs_ba) = out
    return (ab, obs_a, obs_b), (ba, obs_ba, obs_ab)


def independent_pairs_commute(config: Config, states: Iterable[SystemState]) -> int:
    """In each of ``states``, every pair of actions the sleep sets call independent (neither
    writes what the other reads, ``por.Footprints``) commutes: both orders end in one state and
    each action observes the same in either.  Returns the number of pairs tried."""
    footprints = por.Footprints(config.endpoints)
    pairs = 0
    for x in states:
        cache: dict[int, tuple[int, int]] = {}
        moves = [(a, *footprints.of(x, a, y, cache)) for a, y, _ in successors(x)]
        for (a, ra, da), (b, rb, db) in itertools.combinations(moves, 2):
            if da & rb or db & ra:
                continue
            pairs += 1
            ab, ba = both_orders(x, a, b)
            assert ab == ba, f"{a} and {b} do not commute"
    return pairs

"""Lock-step conformance: contrib traces on the model and on real fds agree step by step, and a
planted fault is reported at its step (design §8)."""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import contrib, doorbell

from ivshmem_model.model.actions import (
    Action,
    ClientNotify,
    Config,
    Connect,
    Deliver,
    Disconnect,
    HandleIrq,
    MmioRead,
    MmioWrite,
    MsixEnable,
    PbaRead,
    Ring,
    ServerExit,
    ServerSend,
    Trace,
    load_counterexample,
)
from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.device import SoftwareDevice
from ivshmem_model.model.executor.lockstep import (
    LockstepReport,
    UnsupportedTraceError,
    run_lockstep,
)
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import StepResult, enabled, initial_state, step
from ivshmem_model.model.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def until_quiet(config: Config, steps: list[Action]) -> list[Action]:
    """``steps`` followed by ``deliver`` on every endpoint until no channel holds a message."""
    state = initial_state(config)
    for action in steps:
        outcome = step(state, action)
        assert outcome is not None, f"{action} is not enabled"
        state = outcome[0]
    out = list(steps)
    while any(state.channels):
        e = next(i for i, channel in enumerate(state.channels) if channel)
        outcome = step(state, Deliver(e))
        assert outcome is not None
        state = outcome[0]
        out.append(Deliver(e))
    return out


def agree(config: Config, steps: list[Action]) -> LockstepReport:
    report = run_lockstep(Trace(config, tuple(steps)))
    assert report.ok, report.summary()
    assert len(report.steps) == len(steps)
    assert all(record.enabled for record in report.steps)
    assert all(record.checks > 0 for record in report.steps)
    return report


def two_peers(vectors: int = 1) -> tuple[Config, list[Action]]:
    config = contrib(2, vectors=vectors)
    setup = [Connect(0), doorbell(0, vectors), Connect(1), doorbell(1, vectors)]
    return config, until_quiet(config, setup)


# ---------------------------------------------------------------------------------------------
# Agreement


def test_connect_realize_deliver_ring_handle_irq() -> None:
    config, steps = two_peers(vectors=2)
    steps += [
        MmioRead(0, 8, 4), MmioRead(1, 8, 4),  # IVPOSITION: 0 and 1
        # a self-ring: peer 1's handler runs at once and takes peer 0's ring to vector 0 too
        Ring(0, 1, 0), Ring(0, 1, 1), Ring(1, 0, 1), Ring(1, 1, 0),
        HandleIrq(1, 1), HandleIrq(0, 1),
        Ring(0, 1, 2), Ring(0, 7, 0),  # no such vector, no such peer: ignored
        MmioWrite(0, 12, (1 << 16) | 0x100, 4),  # vector & 0xff = 0: rings peer 1 vector 0
        HandleIrq(1, 0),
    ]
    report = agree(config, steps)
    reads = [r.observations for r in report.steps if r.action["action"] == "mmio_read"]
    assert reads == [[{"read": 0}], [{"read": 1}]]
    sends = [o for o in report.steps[2].observations if "send" in o]
    assert len(sends) == 3 + 2 + 2 * 2  # setup, to peer 0, peer 0's and own eventfds


def test_ring_before_the_peer_is_known_is_lost() -> None:
    config = contrib(2)
    steps = [Connect(0), doorbell(0), Deliver(0), Connect(1), doorbell(1),
             Ring(0, 1, 0),  # endpoint 0 has not handled peer 1's eventfd yet: ignored
             Deliver(0), Ring(0, 1, 0),
             Deliver(1), Deliver(1), HandleIrq(1, 0)]  # rung before 1 knew: kept
    agree(config, steps)


def test_disconnect_is_broadcast_and_handled() -> None:
    config = contrib(3, vectors=2)
    setup = [Connect(0), doorbell(0, 2), Connect(1), doorbell(1, 2), Connect(2), doorbell(2, 2)]
    steps = until_quiet(config, setup)
    steps = until_quiet(config, [*steps, Disconnect(1)])  # both others get "1 left"
    steps += [Ring(0, 1, 0), Ring(2, 0, 1), HandleIrq(0, 1)]  # ring to the gone peer: ignored
    steps = until_quiet(config, [*steps, Connect(1), doorbell(1, 2)])  # gets id 3
    steps += [MmioRead(1, 8, 4), Ring(1, 2, 0), HandleIrq(2, 0), ServerExit()]
    report = agree(config, steps)
    disconnect = next(r for r in report.steps if r.action["action"] == "disconnect")
    assert disconnect.observations == [
        {"send": {"to": 0, "value": 1, "fd": None}}, {"send": {"to": 2, "value": 1, "fd": None}},
    ]
    ivposition = [r.observations for r in report.steps if r.action["action"] == "mmio_read"]
    assert ivposition == [[{"read": 3}]]
    server_exit = report.steps[-1].observations
    assert [o["send"]["value"] for o in server_exit] == [0, 0, 2]  # 0 leaves, then 2, then 3


def test_msix_enabled_doorbell_sets_the_pending_bit() -> None:
    config, steps = two_peers()
    steps += [MsixEnable(1, True), PbaRead(1), Ring(0, 1, 0), HandleIrq(1, 0), PbaRead(1)]
    report = agree(config, steps)
    assert report.steps[-1].observations == [{"read": 1}]


def test_contrib_counterexamples_agree() -> None:
    for name in ("peer-eventfds-freed-twice", "unmask-without-route-aborts",
                 "msix-reenable-after-leaked-route-aborts"):
        cx = load_counterexample(str(ROOT / "counterexamples" / f"{name}.json"))
        report = run_lockstep(cx.trace)
        assert report.ok, f"{name}: {report.summary()}"


def test_nothing_leaks() -> None:
    before = len(os.listdir("/proc/self/fd"))
    leftovers = set(os.listdir(wire.SHM_DIR))
    config, steps = two_peers()
    agree(config, [*steps, Ring(0, 1, 0)])
    assert len(os.listdir("/proc/self/fd")) == before
    ours = f"ivshmem-lockstep-{os.getpid()}-"  # another test worker may have one open now
    assert {n for n in os.listdir(wire.SHM_DIR) if n.startswith(ours)} <= leftovers


# ---------------------------------------------------------------------------------------------
# The check can fail


def test_a_model_that_loses_doorbells_diverges_at_the_ring() -> None:
    config, steps = two_peers()
    ring_at = len(steps)
    steps += [Ring(0, 1, 0), HandleIrq(1, 0)]

    def lossy(state: SystemState, action: Action) -> StepResult | None:
        if isinstance(action, Ring):
            return state, []
        return step(state, action)

    report = run_lockstep(Trace(config, tuple(steps)), model_step=lossy)
    assert not report.ok
    assert report.first_divergent_step == ring_at
    assert report.divergence is not None
    assert report.divergence.check == "eventfd"
    assert (report.divergence.model, report.divergence.real) == (False, True)
    assert len(report.steps) == ring_at  # the steps before it agreed


def test_a_model_that_forgets_a_message_diverges_at_the_connect() -> None:
    config = contrib(2)
    steps = [Connect(0), doorbell(0), Deliver(0), Connect(1)]

    def forgetful(state: SystemState, action: Action) -> StepResult | None:
        outcome = step(state, action)
        if outcome is None or action != Connect(1):
            return outcome
        after, obs = outcome
        return after, [o for o in obs if o.get("send", {}).get("to") != 0]

    report = run_lockstep(Trace(config, tuple(steps)), model_step=forgetful)
    assert report.first_divergent_step == 3
    assert report.divergence is not None
    assert report.divergence.check == "sends"
    assert report.divergence.model == []
    assert report.divergence.real == [(1, "eventfd")]


class MiswiredDevice(SoftwareDevice):
    """Rings the next peer up: a device bug the model does not have."""

    def doorbell_target(self, value: int, offset: int, size: int) -> int | None:
        return super().doorbell_target(value + (1 << 16), offset, size)


def test_a_miswired_device_diverges_at_its_first_doorbell() -> None:
    config = contrib(3)
    setup = [Connect(0), doorbell(0), Connect(1), doorbell(1), Connect(2), doorbell(2)]
    steps = until_quiet(config, setup)
    ring_at = len(steps) + 1
    steps += [MmioRead(0, 8, 4), Ring(0, 1, 0)]
    report = run_lockstep(Trace(config, tuple(steps)), device_factory=MiswiredDevice)
    assert report.first_divergent_step == ring_at
    assert report.divergence is not None
    assert report.divergence.check == "eventfd"
    assert "readable" in report.divergence.detail


def test_a_step_only_one_side_takes_is_a_divergence() -> None:
    config = contrib(2)

    def eager(state: SystemState, action: Action) -> StepResult | None:
        if isinstance(action, Deliver) and not state.channels[action.endpoint]:
            return state, []  # the model claims an empty channel can be delivered
        return step(state, action)

    steps = until_quiet(config, [Connect(0), doorbell(0)])
    report = run_lockstep(Trace(config, (*steps, Deliver(0))), model_step=eager)
    assert report.first_divergent_step == len(steps)
    assert report.divergence is not None
    assert report.divergence.check == "enabled"
    assert (report.divergence.model, report.divergence.real) == (True, False)


def test_disabled_on_both_sides_agrees() -> None:
    config = contrib(2)
    report = run_lockstep(Trace(config, (Connect(0), Connect(0), Deliver(1))))
    assert report.ok
    assert [r.enabled for r in report.steps] == [True, False, False]


def test_unsupported_traces_are_refused() -> None:
    scripted = replace(contrib(1), server=replace(contrib(1).server, policy="scripted"))
    with pytest.raises(UnsupportedTraceError):
        run_lockstep(Trace(scripted, (Connect(0), ServerSend(0, 0))))
    with pytest.raises(UnsupportedTraceError):
        run_lockstep(Trace(contrib(2, clients=(1,)), (Connect(0),)))


def test_random_walks_agree() -> None:
    """Seeded random walks over the model's enabled actions, under every variant."""
    rng = random.Random(7)
    for walk in range(12):
        config = contrib(rng.choice([2, 3]), vectors=rng.choice([1, 2]),
                         irqfd=rng.choice([False, True]))
        variant = list(VARIANTS.values())[walk % len(VARIANTS)]
        state, steps = initial_state(config, variant), []
        for _ in range(25):
            menu = [a for a in enabled(state) if not isinstance(a, ServerSend | ClientNotify)]
            if not menu:
                break
            action = rng.choice(menu)
            outcome = step(state, action)
            assert outcome is not None
            state = outcome[0]
            steps.append(action)
        report = run_lockstep(Trace(config, tuple(steps)), variant)
        assert report.ok, f"walk {walk} ({variant.name}): {report.summary()}"

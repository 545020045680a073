"""Each property of the registry can fail, and says so in words; fixed states satisfy them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import contrib, doorbell, play, run, scripted

from ivshmem_model.model.actions import (
    Abandon,
    Config,
    Connect,
    Deliver,
    ServerExit,
    ServerSend,
    load_counterexample,
)
from ivshmem_model.model.state import Peer, SystemState
from ivshmem_model.model.variants import FIXED, SEED
from ivshmem_model.properties.invariants import BY_NAME, PROPERTIES, SAFETY, site_of, violations
from ivshmem_model.properties.trace import run_trace

CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"


def quiet_pair() -> SystemState:
    """Two doorbell devices on the contrib server that have read every message."""
    config = contrib()
    steps = (Connect(0), doorbell(0), Connect(1), doorbell(1), Deliver(0), Deliver(0),
             Deliver(1), Deliver(1))
    state = play(config, *steps)
    assert not any(state.channels)
    return state


def with_device(state: SystemState, e: int, **changes: object) -> SystemState:
    ep = state.endpoints[e]
    assert ep.device is not None
    endpoints = list(state.endpoints)
    endpoints[e] = replace(ep, device=replace(ep.device, **changes))  # type: ignore[arg-type]
    return replace(state, endpoints=tuple(endpoints))


def test_registry_names_are_the_design_contract() -> None:
    names = {p.name for p in PROPERTIES}
    assert {"vector_bounds", "mask_balance", "route_balance", "memory_safety", "no_abort",
            "fd_conservation", "peer_view", "id_unique", "ivposition", "intx_rule",
            "master_unique"} <= names
    for prop in PROPERTIES:
        assert len(prop.doc.split()) >= 8, f"{prop.name} needs a plain-words docstring"


def test_a_healthy_state_satisfies_every_property() -> None:
    assert violations(quiet_pair()) == []


@pytest.mark.parametrize(
    ("name", "corpus_file"),
    [
        ("vector_bounds", "own-id-beyond-peers-array"),
        ("mask_balance", "irqfd-attached-without-unmasked-flag"),
        ("route_balance", "unplug-leaves-kvm-routes"),
        ("memory_safety", "peer-eventfds-freed-twice"),
        ("no_abort", "unmask-without-route-aborts"),
        ("fd_conservation", "vector-poll-reads-stdin"),
        ("no_hang", "realize-spins-on-closed-socket"),
        ("msi_rule", "msi-while-msix-disabled-after-reset"),
    ],
)
def test_property_fails_on_a_seed_trace(name: str, corpus_file: str) -> None:
    cx = load_counterexample(str(CORPUS / f"{corpus_file}.json"))
    seed = run_trace(cx.trace, SEED)
    assert seed.first(name) is not None
    assert dict(cx.expect).get("fixed") == "holds"
    assert run_trace(cx.trace, FIXED).first(name) is None


def test_id_unique_and_master_unique_fail_with_a_hostile_server() -> None:
    config = Config(endpoints=2, server=scripted().server)
    steps = []
    for e in (0, 1):
        steps += [Connect(e), ServerSend(e, 0), ServerSend(e, 0), ServerSend(e, -1, "shm"),
                  doorbell(e, master="on")]
    result = run(config, *steps)
    assert result.first("id_unique") is not None
    assert result.first("master_unique") is not None
    assert "both have id 0" in result.first("id_unique").message  # type: ignore[union-attr]


def test_peer_view_fails_when_the_device_forgets_a_peer() -> None:
    state = quiet_pair()
    device = state.endpoints[0].device
    assert device is not None
    broken = with_device(state, 0, peers=tuple((p, v) for p, v in device.peers if p != 1))
    message = BY_NAME["peer_view"].check(broken)  # type: ignore[misc]
    assert message == "endpoint 0 knows peers {0: 1}, the server has {0: 1, 1: 1}"


def test_ivposition_fails_on_a_wrong_id() -> None:
    message = BY_NAME["ivposition"].check(with_device(quiet_pair(), 1, vm_id=7))  # type: ignore[misc]
    assert message == "endpoint 1 reads IVPOSITION 7, the server assigned 1"


def test_intx_rule_fails_when_a_doorbell_device_raises_intx() -> None:
    message = BY_NAME["intx_rule"].check(with_device(quiet_pair(), 0, irq_level=1))  # type: ignore[misc]
    assert message == "endpoint 0: INTx level 1, expected 0"


def test_bar2_width_fails_for_a_32_bit_doorbell_bar() -> None:
    message = BY_NAME["bar2_width"].check(with_device(quiet_pair(), 1, bar2_64bit=False))  # type: ignore[misc]
    assert message == "endpoint 1: ivshmem-doorbell has a 32-bit BAR2"
    assert BY_NAME["bar2_width"].check(quiet_pair()) is None  # type: ignore[misc]


def test_protocol_agreement_fails_when_a_device_refuses_the_contrib_setup() -> None:
    from ivshmem_model.model.state import Fate

    state = quiet_pair()
    endpoints = list(state.endpoints)
    endpoints[1] = replace(endpoints[1], fate=Fate("failed", "server sent invalid ID message"),
                           device=None)
    broken = replace(state, endpoints=tuple(endpoints))
    message = BY_NAME["protocol_agreement"].check(broken)  # type: ignore[misc]
    assert message == ("endpoint 1 refused the contrib server's setup: server sent invalid ID "
                       "message")
    assert BY_NAME["protocol_agreement"].check(state) is None  # type: ignore[misc]


def test_migration_blockers_fails_for_a_blocker_left_behind() -> None:
    state = quiet_pair()
    endpoints = list(state.endpoints)
    endpoints[0] = replace(endpoints[0], stale_blockers=1)
    message = BY_NAME["migration_blockers"].check(  # type: ignore[misc]
        replace(state, endpoints=tuple(endpoints)))
    assert message == "endpoint 0: 1 migration blocker(s) of a device that failed to realize"
    assert BY_NAME["migration_blockers"].check(state) is None  # type: ignore[misc]


def test_own_vectors_watched_fails_for_an_own_eventfd_nobody_watches() -> None:
    state = quiet_pair()
    endpoints = list(state.endpoints)
    endpoints[0] = replace(endpoints[0], fd_handlers=())
    message = BY_NAME["own_vectors_watched"].check(  # type: ignore[misc]
        replace(state, endpoints=tuple(endpoints)))
    assert message is not None and message.startswith("endpoint 0: own vector 0")
    assert BY_NAME["own_vectors_watched"].check(state) is None  # type: ignore[misc]


def test_fd_conservation_sees_a_leak() -> None:
    state = quiet_pair()
    device = state.endpoints[0].device
    assert device is not None
    forgotten = dict(device.peers)[1].eventfds[0]
    peers = tuple((p, Peer(0, (), v.block)) if p == 1 else (p, v) for p, v in device.peers)
    ioeventfds = tuple(i for i in device.ioeventfds if i[1] != forgotten)
    broken = with_device(state, 0, peers=peers, ioeventfds=ioeventfds)
    message = BY_NAME["fd_conservation"].check(broken)  # type: ignore[misc]
    assert message == f"endpoint 0 leaks descriptor {forgotten}"
    message = BY_NAME["fd_conservation"].check(with_device(state, 0, peers=peers))  # type: ignore[misc]
    assert message is None  # still referenced by its ioeventfd


def test_serves_on_fails_when_a_client_is_gone_before_it_is_accepted() -> None:
    """A process that connects and closes before the contrib server accepts it brings the
    server down (S:183-186, S:414-419, M:172-175); a server_exit is no violation."""
    check = BY_NAME["serves_on"].check
    assert check is not None
    message = check(play(contrib(), Connect(0), Abandon(1)))
    assert message == "the server shut itself down: cannot send initial info"
    assert check(play(contrib(), Connect(0), ServerExit())) is None
    assert check(quiet_pair()) is None


def test_site_of_names_the_seed_line() -> None:
    assert site_of("endpoint 0 crashed at seed 439: double_free: x") == "seed 439"
    assert site_of("endpoint 0 aborted at msix.c msix_notify: y") == "msix.c msix_notify"
    assert site_of("endpoint 0: KVM routes [0] left after unplug") == ""


def test_every_safety_property_has_a_failing_test_above() -> None:
    tested = {"vector_bounds", "mask_balance", "route_balance", "memory_safety", "no_abort",
              "fd_conservation", "no_hang", "id_unique", "master_unique", "peer_view",
              "ivposition", "intx_rule", "msi_rule", "bar2_width", "protocol_agreement",
              "migration_blockers", "own_vectors_watched", "serves_on"}
    assert {p.name for p in SAFETY} == tested

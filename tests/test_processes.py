"""Several endpoints in one QEMU process (``config.processes``, issue 10): the configuration
parser, the model's shared-process semantics (one fate, one disconnect, one system_reset, one
descriptor table, one set of memory backends, the second realize a device_add) and the QEMU
backend's per-device guest layout.  The QEMU side runs in the conformance cases
(``counterexamples/conformance/*-in-one-process*.json``, ``one-device-ends-its-process``,
``same-memdev-twice-in-one-process``, by ``tests/test_conform.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import independent_pairs_commute

from ivshmem_model.model.actions import (
    Action,
    Connect,
    Deliver,
    Disconnect,
    FdCount,
    MmioRead,
    MsixEnable,
    Realize,
    Reset,
    ShmRead,
    ShmWrite,
    Trace,
    TraceError,
    Unplug,
    config_from_json,
    trace_from_json,
)
from ivshmem_model.model.executor.qemu.backend import device_spec
from ivshmem_model.model.executor.qemu.machine import BAR_STRIDE, HOME, Function
from ivshmem_model.model.system import initial_state, step, successors
from ivshmem_model.model.variants import get_variant
from ivshmem_model.properties.explore import ExploreOptions, explore
from ivshmem_model.properties.symmetry import endpoint_classes
from ivshmem_model.properties.trace import RunResult, run_trace

SCRIPTED = {"server": {"policy": "scripted", "vectors": 1}}
CONTRIB = {"server": {"policy": "contrib", "vectors": 1}}


def plain(e: int, **props: Any) -> Realize:
    return Realize(e, "ivshmem-plain", tuple(sorted(props.items())))


def doorbell(e: int) -> Realize:
    return Realize(e, "ivshmem-doorbell", (("chardev", True), ("vectors", 1)))


def run(config: dict[str, Any], steps: list[Action], variant: str = "qemu-7.2") -> RunResult:
    return run_trace(Trace(config_from_json(config), tuple(steps)), get_variant(variant))


def one_process(**extra: Any) -> dict[str, Any]:
    return {"endpoints": 2, "processes": [[0, 1]], **extra}


# -- the configuration ------------------------------------------------------------------------


def test_processes_round_trip_and_default() -> None:
    config = config_from_json({"endpoints": 4, "processes": [[3, 1], [0, 2]]})
    assert config.processes == ((0, 2), (1, 3))  # members and groups sorted
    assert config.to_json()["processes"] == [[0, 2], [1, 3]]
    assert config_from_json(config.to_json()) == config
    assert config.process_of(3) == (1, 3)
    alone = config_from_json({"endpoints": 2})
    assert alone.processes == () and "processes" not in alone.to_json()
    assert alone.process_of(1) == (1,)


@pytest.mark.parametrize(("processes", "where", "text"), [
    ([[0, 1], [1, 2]], "config.processes[1][0]", "endpoint 1 is already in processes[0]"),
    ([[0, 0]], "config.processes[0][1]", "endpoint 0 is already in processes[0]"),
    ([[0, 3]], "config.processes[0][1]", "3 is out of range [0, 2]"),
    ([[0, 2]], "config.processes[0][1]", "endpoint 2 is a plain client"),
    ([[1]], "config.processes[0]", "two or more endpoints"),
    ([0, 1], "config.processes[0]", "expected a list"),
    ({"0": 1}, "config.processes", "expected a list"),
    ([[0, "1"]], "config.processes[0][1]", "expected an integer"),
])
def test_bad_processes_are_rejected(processes: Any, where: str, text: str) -> None:
    with pytest.raises(TraceError) as err:
        config_from_json({"endpoints": 3, "clients": [2], "processes": processes})
    assert err.value.where == where
    assert text in err.value.message


def test_memdev_and_memdev_size_are_exclusive() -> None:
    step = {"action": "realize", "endpoint": 0, "device": "ivshmem-plain",
            "props": {"memdev": "m0-1", "memdev_size": 4096}}
    with pytest.raises(TraceError) as err:
        trace_from_json({"format": "ivshmem-trace/1", "steps": [step]})
    assert err.value.where == "steps[0].props.memdev"


# -- the model ----------------------------------------------------------------------------------


def test_an_abort_in_one_device_ends_every_device_of_the_process() -> None:
    steps: list[Action] = [plain(0, memdev_size=4096),
                           plain(1, memdev_size=5000, memdev_backend="ram")]
    shared = run(one_process(**SCRIPTED), steps).final
    apart = run({"endpoints": 2, **SCRIPTED}, steps).final
    assert shared is not None and apart is not None
    fate = shared.endpoints[1].fate
    assert fate is not None and fate.kind == "aborted"
    assert shared.endpoints[0].fate == fate
    # with a process each, only the aborting one ends; endpoint 0 still reads its memory
    assert apart.endpoints[0].fate is None and apart.endpoints[1].fate is not None
    assert step(shared, ShmRead(0, 0)) is None and step(apart, ShmRead(0, 0)) is not None


def test_the_fate_is_reported_once() -> None:
    result = run(one_process(**SCRIPTED), [plain(0, memdev_size=4096), plain(1)])
    # a device_add that fails: QEMU runs on, nobody has a fate
    assert [o for o in result.steps[1].observations if "fate" in o] == []
    cmdline = run(one_process(**SCRIPTED), [plain(1)])
    assert [o["fate"] for o in cmdline.steps[0].observations if "fate" in o] == ["failed"]
    assert cmdline.final is not None
    assert all(ep.fate is not None for ep in cmdline.final.endpoints)


def test_disconnect_kills_the_whole_process() -> None:
    steps: list[Action] = [Connect(0), Connect(1), doorbell(0), doorbell(1), Disconnect(1)]
    final = run(one_process(**CONTRIB), steps).final
    assert final is not None
    assert final.endpoints[0].device is None and not final.endpoints[0].connected
    assert final.server.peers == ()  # the server freed both
    assert not any(fd is not None and fd.open and fd.owner in (0, 1) for fd in final.fds)
    apart = run({"endpoints": 2, **CONTRIB}, steps).final
    assert apart is not None and apart.endpoints[0].device is not None


def test_reset_resets_every_device_of_the_process() -> None:
    steps: list[Action] = [Connect(0), Connect(1), doorbell(0), doorbell(1),
                           MsixEnable(0, True), MsixEnable(1, True), Reset(1)]
    final = run(one_process(**CONTRIB), steps).final
    apart = run({"endpoints": 2, **CONTRIB}, steps).final
    assert final is not None and apart is not None
    for ep in final.endpoints:
        assert ep.device is not None and not ep.device.msix.enable
    assert apart.endpoints[0].device is not None and apart.endpoints[0].device.msix.enable


def test_fd_count_counts_the_process_and_a_later_realize_is_a_device_add() -> None:
    steps: list[Action] = [plain(0, memdev_size=4096),
                           plain(1, memdev_size=8192, memdev_backend="file"), FdCount(0),
                           FdCount(1)]
    result = run(one_process(**SCRIPTED), steps)
    counts = [o["fds"] for s in result.steps[2:] for o in s.observations]
    assert counts == [{"file": 1, "memfd": 1}] * 2
    # endpoint 1's first realize is into the running process: its failure leaves it running
    failed = run(one_process(**SCRIPTED), [plain(0, memdev_size=4096), plain(1), MmioRead(0, 8)])
    assert failed.steps[1].observations == [{"error": "You must specify a 'memdev'"}]
    assert failed.steps[2].enabled


def test_a_memdev_is_busy_while_a_device_maps_it() -> None:
    steps: list[Action] = [plain(0, memdev_size=4096), plain(1, memdev="m0-1"),
                           plain(1, memdev="m9-9")]
    result = run(one_process(**SCRIPTED), steps)
    assert result.steps[1].observations == [{"error": "can't use already busy memdev: m0-1"}]
    assert result.steps[2].observations == [{"error": "Device 'm9-9' not found"}]
    # another process's backend is not this process's
    apart = run({"endpoints": 2, **SCRIPTED}, steps)
    assert {"error": "Device 'm0-1' not found"} in apart.steps[1].observations


def test_reusing_an_unplugged_devices_memdev_aborts_in_qemu_ram_set_idstr() -> None:
    for config in (one_process(**SCRIPTED), {"endpoints": 1, **SCRIPTED}):
        e = config["endpoints"] - 1
        steps: list[Action] = [plain(0, memdev_size=4096), Unplug(0), plain(e, memdev="m0-1")]
        result = run(config, steps)
        fates = [o for o in result.steps[2].observations if "fate" in o]
        assert fates and fates[0]["reason"] == \
            "qemu_ram_set_idstr: Assertion `!new_block->idstr[0]' failed."


def test_an_unmapped_backend_keeps_its_bytes_for_the_next_device() -> None:
    # hot-plugged with a property plain does not have: the backend object is made, the device
    # is not, so the memdev is neither mapped nor named
    bad = Realize(0, "ivshmem-plain", (("memdev_size", 4096), ("vectors", 1)), hotplug=True)
    result = run(one_process(**SCRIPTED), [bad, plain(1, memdev="m0-1"), ShmWrite(1, 0, 5),
                                           ShmRead(1, 0)])
    assert result.steps[0].observations == [{"error": "Property 'ivshmem-plain.vectors' "
                                                      "not found"}]
    assert result.steps[3].observations == [{"read": 5}]
    assert result.final is not None
    backend = result.final.endpoints[0].backends[0]
    assert backend.name == "m0-1" and backend.mapped and backend.idstr


def test_a_process_of_one_endpoint_is_unchanged() -> None:
    """The default: each endpoint its own process, whatever the other does."""
    config = config_from_json({"endpoints": 2, **CONTRIB})
    state = initial_state(config, get_variant("qemu-7.2"))
    for action in (Connect(0), Connect(1), doorbell(0), doorbell(1), Deliver(0)):
        result = step(state, action)
        assert result is not None
        state = result[0]
    after = step(state, Disconnect(0))
    assert after is not None and after[0].endpoints[1].device is not None


# -- the QEMU backend's guest layout --------------------------------------------------------


def test_later_devices_have_their_own_slot_and_addresses() -> None:
    first, second = Function(0), Function(1)
    assert (first.slot, first.home) == (4, HOME)
    assert second.slot == 5
    assert second.home == tuple(h - s for h, s in zip(HOME, BAR_STRIDE, strict=True))
    # the model's addresses stand for the device's own, both ways; other values pass through
    assert second.placed(0, HOME[0]) == second.home[0]
    assert second.shown(0, second.home[0]) == HOME[0]
    assert second.shown(2, second.home[2] | 0xC) == HOME[2] | 0xC
    assert second.placed(0, 0xFFFF_FFFF) == 0xFFFF_FFFF and second.shown(0, 0) == 0
    assert first.placed(1, HOME[1]) == HOME[1]
    spec = device_spec(doorbell(1), "m1-1", "", 1)
    assert spec.options == {"id": "dev1", "addr": "5", "chardev": "c1", "vectors": "1"}
    named = device_spec(plain(1, memdev="m0-1"), "m1-1", "", 1)
    assert named.options["memdev"] == "m0-1" and named.objects == []



# -- the explorer's reductions --------------------------------------------------------------


def test_sleep_sets_and_symmetry_keep_a_shared_process_sound() -> None:
    """An action of a shared process reads and writes all its endpoints (por.Footprints), and
    grouped endpoints are not exchanged with others (symmetry.endpoint_classes): the reduced
    searches find what the full one finds, and independent pairs commute."""
    config = config_from_json({"endpoints": 3, **CONTRIB, "processes": [[0, 1]]})
    variant = get_variant("qemu-7.2")
    full = explore(config, variant, ExploreOptions(max_depth=5))
    for options in (ExploreOptions(max_depth=5, por=True),
                    ExploreOptions(max_depth=5, symmetry=True, por=True)):
        reduced = explore(config, variant, options)
        assert (reduced.states, set(reduced.found)) == (full.states, set(full.found))
    assert endpoint_classes(initial_state(config, variant)) == ()
    seen = {initial_state(config, variant)}
    level = list(seen)
    for _ in range(3):
        level = [y for x in level for _, y, _ in successors(x) if not (y in seen or seen.add(y))]
    pairs = independent_pairs_commute(config, list(seen)[:300])
    assert pairs > 20

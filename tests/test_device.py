"""Unit tests per seed function; each cites the seed lines it pins down."""

from __future__ import annotations

from helpers import contrib, doorbell, observations, play, run, scripted

from ivshmem_model.model.actions import (
    Config,
    Connect,
    Deliver,
    Disconnect,
    HandleIrq,
    Migrate,
    MmioRead,
    MmioWrite,
    MsixEnable,
    MsixFunctionMask,
    MsixMask,
    PbaRead,
    Realize,
    Reset,
    Ring,
    ServerExit,
    ServerSend,
    Unplug,
)
from ivshmem_model.model.device import qemu_ram_alloc_from_fd_error, qemu_strtosz_MiB
from ivshmem_model.model.state import FREED, LIVE, NULL
from ivshmem_model.model.variants import FIXED, QEMU_7_2, SEED

SETUP = (ServerSend(0, 0), ServerSend(0, 0), ServerSend(0, -1, "shm"))


def realize_error(config: Config, *steps: object) -> str:
    obs = observations(config, *steps)  # type: ignore[arg-type]
    errors = [o["error"] for o in obs if "error" in o]
    assert errors, obs
    return str(errors[-1])


# --- realize and properties (seed 880-968, 1094-1109, 1162-1172, 1286-1339) -----------------


def test_ivshmem_doorbell_realize_needs_chardev() -> None:
    assert realize_error(scripted(), Realize(0, "ivshmem-doorbell", ())) == (
        "You must specify a 'chardev'")


def test_ivshmem_plain_realize_needs_memdev() -> None:
    assert realize_error(scripted(), Realize(0, "ivshmem-plain", ())) == (
        "You must specify a 'memdev'")


def test_property_not_found_is_qemus_text() -> None:
    assert realize_error(scripted(), Realize(0, "ivshmem-doorbell", (("msi", False),))) == (
        "Property 'ivshmem-doorbell.msi' not found")


def test_ivshmem_realize_legacy_checks() -> None:
    assert realize_error(scripted(), Realize(0, "ivshmem", ())) == (
        "You must specify either 'shm' or 'chardev'")
    assert realize_error(scripted(), Realize(0, "ivshmem", (("shm", "x"), ("size", "3M")))) == (
        "Invalid size 3M")
    assert realize_error(scripted(), Realize(0, "ivshmem", (("role", "boss"), ("shm", "x")))) == (
        "'role' must be 'peer' or 'master'")
    assert realize_error(scripted(), Realize(0, "ivshmem", (("ioeventfd", True), ("msi", False),
                                                            ("shm", "x")))) == (
        "ioeventfd/irqfd requires MSI")


def test_legacy_device_is_gone_in_qemu_7_2() -> None:
    obs = observations(scripted(), Realize(0, "ivshmem", (("shm", "x"),)), variant=QEMU_7_2)
    assert {"error": "'ivshmem' is not a valid device model name"} in obs


def test_ivshmem_recv_setup_version_and_id_checks() -> None:
    c = scripted()
    assert realize_error(c, Connect(0), ServerSend(0, 1), doorbell(0)) == (
        "server sent version 1, expecting 0")
    assert realize_error(c, Connect(0), ServerSend(0, 0, "eventfd"), doorbell(0)) == (
        "server sent invalid version message")
    assert realize_error(c, Connect(0), ServerSend(0, 0), ServerSend(0, 70000), doorbell(0)) == (
        "server sent invalid ID message")
    assert realize_error(c, Connect(0), ServerSend(0, 0), ServerSend(0, -1, "shm"),
                         doorbell(0)) == "server sent invalid ID message"


def test_process_msg_shmem_without_fd() -> None:
    steps = (Connect(0), ServerSend(0, 0), ServerSend(0, 0), ServerSend(0, -1), doorbell(0))
    assert realize_error(scripted(), *steps) == (
        "can't determine size of shared memory sent by server: Bad file descriptor")
    obs = observations(scripted(), *steps, variant=FIXED)
    assert {"error": "server didn't provide fd with shared memory message"} in obs


def test_qemu_ram_alloc_from_fd_sizes_are_qemus_texts() -> None:
    from ivshmem_model.model.variants import QEMU_7_2, QEMU_10_0

    assert qemu_ram_alloc_from_fd_error(0, 0, QEMU_7_2) == (
        "memory size 0x0 must be equal to or larger than page size 0x1000")
    assert qemu_ram_alloc_from_fd_error(3000, 3000, QEMU_7_2) == (
        "backing store size 0xbb8 does not match 'size' option 0x1000")
    assert qemu_ram_alloc_from_fd_error(3000, 3000, QEMU_10_0) == (
        "ivshmem.bar2 backing store size 0xbb8 is too small for 'size' option 0x1000 plus "
        "'offset' option 0x0")
    assert qemu_ram_alloc_from_fd_error(4096, 4096, QEMU_7_2) is None


def test_master_must_have_id_0() -> None:
    steps = (Connect(0), ServerSend(0, 0), ServerSend(0, 1), ServerSend(0, -1, "shm"),
             doorbell(0, master="on"))
    assert realize_error(scripted(), *steps) == (
        "master must connect to the server before any peers")


def test_vectors_out_of_range_fail_msix_init() -> None:
    for vectors in (0, 2049):
        steps = (Connect(0), *SETUP, doorbell(0, vectors=vectors))
        assert realize_error(scripted(), *steps) == (
            "Failed to initialize interrupts: The number of MSI-X vectors is invalid")


def test_vectors_65537_truncated_to_one_entry_at_the_seed() -> None:
    state = play(scripted(), Connect(0), *SETUP, doorbell(0, vectors=65537))
    device = state.endpoints[0].device
    assert device is not None and device.msix.entries_nr == 1 and device.vectors == 65537
    obs = observations(scripted(), Connect(0), *SETUP, doorbell(0, vectors=65537),
                       variant=QEMU_7_2)
    assert obs[-1]["fate"] == "aborted"  # msix_vector_use asserts since 15377f6e79cc


def test_realize_blocks_until_shared_memory() -> None:
    result = run(scripted(), Connect(0), ServerSend(0, 0), ServerSend(0, 0), doorbell(0))
    assert result.disabled_step == 3


def test_realize_hangs_on_a_closed_socket() -> None:
    obs = observations(scripted(), Connect(0), ServerSend(0, 0), ServerExit(), doorbell(0))
    assert obs[-1]["fate"] == "hung" and obs[-1]["line"] == 672
    obs = observations(scripted(), Connect(0), ServerSend(0, 0), ServerExit(), doorbell(0),
                       variant=FIXED)
    assert {"error": "read from server failed: Connection reset by peer"} in obs


# --- server messages after realize (seed 511-653) ---------------------------------------------


def two_peers(irqfd: bool = False, vectors: int = 1) -> tuple[Config, tuple[object, ...]]:
    config = contrib(vectors=vectors, irqfd=irqfd)
    steps = (Connect(0), doorbell(0, vectors), Connect(1), doorbell(1, vectors))
    return config, steps


def test_process_msg_connect_counts_vectors() -> None:
    config, steps = two_peers(vectors=2)
    state = play(config, *steps, Deliver(0), Deliver(0), Deliver(0), Deliver(0))  # type: ignore[arg-type]
    device = state.endpoints[0].device
    assert device is not None
    assert {posn: p.nb_eventfds for posn, p in device.peers} == {0: 2, 1: 2}


def test_process_msg_connect_too_many_eventfds() -> None:
    config = contrib(vectors=2)
    obs = observations(config, Connect(0), doorbell(0, 1), Deliver(0), Deliver(0))
    assert {"error": "Too many eventfd received, device has 1 vectors"} in obs


def test_process_msg_invalid_message() -> None:
    steps = (Connect(0), *SETUP, doorbell(0), ServerSend(0, 65536), Deliver(0))
    assert {"error": "server sent invalid message 65536"} in observations(scripted(), *steps)
    steps = (Connect(0), *SETUP, doorbell(0), ServerSend(0, -1, "shm"), Deliver(0))
    assert {"error": "server sent unexpected shared memory message"} in observations(
        scripted(), *steps)


def test_process_msg_disconnect_own_id_is_invalid() -> None:
    steps = (Connect(0), *SETUP, doorbell(0), ServerSend(0, 0), Deliver(0))
    assert {"error": "invalid peer 0"} in observations(scripted(), *steps)


def test_resize_peers_grows_for_a_large_id() -> None:
    state = play(scripted(), Connect(0), *SETUP, doorbell(0), ServerSend(0, 40, "eventfd"),
                 Deliver(0))
    device = state.endpoints[0].device
    assert device is not None and device.nb_peers == 41 and device.peers_block == LIVE


def test_close_peer_eventfds_frees_the_array() -> None:
    config, steps = two_peers()
    state = play(config, *steps, Deliver(0), Deliver(0), Disconnect(1), Deliver(0))  # type: ignore[arg-type]
    device = state.endpoints[0].device
    assert device is not None
    peer1 = dict(device.peers)[1]
    assert peer1.nb_eventfds == 0 and peer1.block == FREED


def test_double_free_on_unplug_after_a_peer_left() -> None:
    config, steps = two_peers()
    obs = observations(config, *steps, Deliver(0), Deliver(0), Disconnect(1), Deliver(0),  # type: ignore[arg-type]
                       Unplug(0))
    assert obs[-1] == {"fate": "crashed", "reason": "double_free: peers[1].eventfds freed twice",
                       "line": 439}


def test_use_after_free_when_an_id_comes_back() -> None:
    steps = (Connect(0), *SETUP, doorbell(0), ServerSend(0, 1, "eventfd"), Deliver(0),
             ServerSend(0, 1), Deliver(0), ServerSend(0, 1, "eventfd"), Deliver(0))
    obs = observations(scripted(), *steps)
    assert obs[-1]["fate"] == "crashed" and obs[-1]["line"] == 584
    assert "use_after_free" in str(obs[-1]["reason"])
    assert not any("fate" in o for o in observations(scripted(), *steps, variant=FIXED))


def test_watch_vector_notifier_before_msi_vectors_exist() -> None:
    steps = (Connect(0), ServerSend(0, 0), ServerSend(0, 0), ServerSend(0, 0, "eventfd"),
             ServerSend(0, -1, "shm"), doorbell(0))
    obs = observations(scripted(), *steps)
    assert obs[-1]["line"] == 393 and "null_deref" in str(obs[-1]["reason"])


# --- BAR0 (seed 175-288) ----------------------------------------------------------------------


def test_ivshmem_io_read_ivposition_and_reserved() -> None:
    config, steps = two_peers()
    assert observations(config, *steps, MmioRead(1, 8, 4)) == [{"read": 1}]  # type: ignore[arg-type]
    assert observations(config, *steps, MmioRead(1, 16, 4)) == [{"read": 0}]  # type: ignore[arg-type]
    assert observations(config, *steps, MmioRead(1, 9, 1)) == [{"read": 0}]  # type: ignore[arg-type]


def test_ivshmem_IntrStatus_read_clears() -> None:
    config, steps = two_peers()
    obs = [observations(config, *steps, MmioWrite(0, 4, 5, 4), *([MmioRead(0, 4, 4)] * n))  # type: ignore[arg-type]
           for n in (1, 2)]
    assert obs == [[{"read": 5}], [{"read": 0}]]


def test_ivshmem_io_write_doorbell_reaches_the_peer() -> None:
    config, steps = two_peers()
    state = play(config, *steps, Deliver(0), Deliver(1), Deliver(1), Ring(1, 0, 0))  # type: ignore[arg-type]
    own = dict(state.endpoints[0].device.peers)[0].eventfds[0]  # type: ignore[union-attr]
    entry = state.fds[own]
    assert entry is not None and state.objects[entry.obj].count == 1  # type: ignore[union-attr]


def test_ivshmem_io_write_doorbell_invalid_peer() -> None:
    config, steps = two_peers()
    before = play(config, *steps)  # type: ignore[arg-type]
    after = play(config, *steps, Ring(1, 0, 0), Ring(1, 7, 0))  # type: ignore[arg-type]
    assert before == after  # peer 0 has no eventfd yet: the write is ignored


def test_subword_write_at_doorbell_is_widened() -> None:
    config, steps = two_peers()
    ring = play(config, *steps, Deliver(0), Deliver(1), Deliver(1), Ring(1, 0, 0))  # type: ignore[arg-type]
    byte = play(config, *steps, Deliver(0), Deliver(1), Deliver(1), MmioWrite(1, 13, 0, 1))  # type: ignore[arg-type]
    assert ring.objects == byte.objects


def test_intx_from_intrstatus_and_intrmask_on_legacy_msi_off() -> None:
    config = contrib(endpoints=1)
    legacy = Realize(0, "ivshmem", (("chardev", True), ("msi", False)))
    obs = observations(config, Connect(0), legacy, MmioWrite(0, 0, 1, 4), MmioWrite(0, 4, 1, 4))
    assert obs == [{"intx": 1}]
    assert observations(config, Connect(0), legacy, MmioWrite(0, 0, 1, 4),
                        MmioWrite(0, 4, 1, 4), MmioRead(0, 4, 4)) == [{"intx": 0}, {"read": 1}]


# --- MSI-X and irqfd (seed 290-398, 460-509, 807-878) -----------------------------------------


def test_ivshmem_vector_notify_sends_msi_when_unmasked() -> None:
    config, steps = two_peers()
    obs = observations(config, *steps, Deliver(0), MsixEnable(0, True), MsixMask(0, 0, False),  # type: ignore[arg-type]
                       Deliver(1), Deliver(1), Ring(1, 0, 0), HandleIrq(0, 0))
    assert obs == [{"msi": 0}]


def test_ivshmem_vector_notify_sets_pending_when_masked() -> None:
    config, steps = two_peers()
    base = (*steps, Deliver(0), MsixEnable(0, True), Deliver(1), Deliver(1), Ring(1, 0, 0),
            HandleIrq(0, 0))
    assert observations(config, *base, PbaRead(0)) == [{"read": 1}]  # type: ignore[arg-type]
    assert observations(config, *base, MsixMask(0, 0, False)) == [{"msi": 0}]  # type: ignore[arg-type]


def test_event_lost_while_msix_disabled() -> None:
    config, steps = two_peers()
    state = play(config, *steps, Deliver(0), Deliver(1), Deliver(1), Ring(1, 0, 0),  # type: ignore[arg-type]
                 HandleIrq(0, 0))
    device = state.endpoints[0].device
    assert device is not None and device.msix.pending == 0


def test_irqfd_enable_adds_routes_and_unmask_attaches() -> None:
    config, steps = two_peers(irqfd=True)
    state = play(config, *steps, Deliver(0), MsixEnable(0, True), MsixMask(0, 0, False))  # type: ignore[arg-type]
    ep = state.endpoints[0]
    assert ep.kvm_routes == (0,) and [v for v, _ in ep.irqfds] == [0]
    assert dict(ep.device.msi_vectors)[0].unmasked  # type: ignore[union-attr]
    off = play(config, *steps, Deliver(0), MsixEnable(0, True), MsixMask(0, 0, False),  # type: ignore[arg-type]
               MsixEnable(0, False))
    assert off.endpoints[0].kvm_routes == () and off.endpoints[0].irqfds == ()


def test_irqfd_delivery_through_kvm() -> None:
    config, steps = two_peers(irqfd=True)
    obs = observations(config, *steps, Deliver(0), MsixEnable(0, True), MsixMask(0, 0, False),  # type: ignore[arg-type]
                       Deliver(1), Deliver(1), Ring(1, 0, 0), HandleIrq(0, 0))
    assert obs == [{"msi": 0}]


def test_unmask_without_route_aborts_in_the_msix_core() -> None:
    config = contrib(endpoints=1, irqfd=True)
    obs = observations(config, Connect(0), doorbell(0, 2), Deliver(0), MsixEnable(0, True),
                       MsixMask(0, 1, False))
    assert {"error": "ivshmem: vector 1 route does not exist"} in obs
    assert obs[-1]["fate"] == "aborted"


def test_reset_disables_irqfd() -> None:
    config, steps = two_peers(irqfd=True)
    state = play(config, *steps, Deliver(0), MsixEnable(0, True), MsixMask(0, 0, False),  # type: ignore[arg-type]
                 Reset(0))
    ep = state.endpoints[0]
    assert ep.kvm_routes == () and ep.irqfds == () and ep.device is not None
    assert not ep.device.msix.enable and ep.device.msix.masked == 1


def test_function_mask_releases_and_restores() -> None:
    config, steps = two_peers(irqfd=True)
    masked = play(config, *steps, Deliver(0), MsixEnable(0, True), MsixMask(0, 0, False),  # type: ignore[arg-type]
                  MsixFunctionMask(0, True))
    assert masked.endpoints[0].irqfds == ()
    unmasked = play(config, *steps, Deliver(0), MsixEnable(0, True), MsixMask(0, 0, False),  # type: ignore[arg-type]
                    MsixFunctionMask(0, True), MsixFunctionMask(0, False))
    assert [v for v, _ in unmasked.endpoints[0].irqfds] == [0]


def test_unplug_leaves_routes_at_the_seed_but_not_when_fixed() -> None:
    config, steps = two_peers(irqfd=True)
    trail = (*steps, Deliver(0), MsixEnable(0, True), Unplug(0))
    assert play(config, *trail).endpoints[0].kvm_routes == (0,)  # type: ignore[arg-type]
    assert play(config, *trail, variant=FIXED).endpoints[0].kvm_routes == ()  # type: ignore[arg-type]


def test_ivshmem_exit_frees_everything() -> None:
    config, steps = two_peers()
    state = play(config, *steps, Unplug(1), variant=FIXED)  # type: ignore[arg-type]
    assert state.endpoints[1].device is None and state.endpoints[1].unplugged


def test_migration_blocker_for_peers() -> None:
    config, steps = two_peers()
    obs = observations(config, *steps, Migrate(1))  # type: ignore[arg-type]
    assert obs == [{"error": "Migration is disabled when using feature 'peer mode' in device "
                             "'ivshmem'"}]


def test_migrate_master_loses_irqfd_setup() -> None:
    config = contrib(endpoints=1, irqfd=True)
    steps = (Connect(0), doorbell(0, master="on"), Deliver(0), MsixEnable(0, True), Migrate(0))
    ep = play(config, *steps).endpoints[0]
    assert ep.device is not None and ep.device.msix.enable
    assert ep.kvm_routes == () and not ep.device.msix.notifiers


def test_qemu_strtosz_MiB() -> None:
    assert qemu_strtosz_MiB("4") == 4 << 20
    assert qemu_strtosz_MiB("1G") == 1 << 30
    assert qemu_strtosz_MiB("512K") == 512 << 10
    assert qemu_strtosz_MiB("x") is None


def test_plain_device_has_no_peers() -> None:
    state = play(scripted(), Realize(0, "ivshmem-plain", (("memdev_size", 1 << 20),)))
    device = state.endpoints[0].device
    assert device is not None and device.peers_block == NULL and device.bar2 == "hostmem"
    assert observations(scripted(), Realize(0, "ivshmem-plain", (("memdev_size", 1 << 20),)),
                        Ring(0, 8, 0)) == []
    assert SEED.name == "seed"


# ---------------------------------------------------------------------------------------------
# A message in two parts (deliver with bytes)


def test_a_message_in_parts_is_buffered_until_its_eighth_byte() -> None:
    from ivshmem_model.model.actions import Connect, Deliver

    config = contrib(endpoints=1, vectors=2)
    setup = (Connect(0), doorbell(0, vectors=2))
    state = play(config, *setup, Deliver(0, 3), Deliver(0, 4))
    device = state.endpoints[0].device
    assert device is not None and device.msg_buffered_bytes == 7
    assert 0 not in dict(device.peers)  # nothing filed yet (the slot is still the default)
    assert len(state.channels[0]) == 2  # its last byte waits in the channel
    state = play(config, *setup, Deliver(0, 3), Deliver(0, 4), Deliver(0))
    device = state.endpoints[0].device
    assert device is not None and device.msg_buffered_bytes == 0
    assert dict(device.peers)[0].nb_eventfds == 1
    assert len(state.channels[0]) == 1


def test_a_part_that_would_complete_the_message_is_not_enabled() -> None:
    from ivshmem_model.model.actions import Connect, Deliver

    config = contrib(endpoints=1)
    result = run(config, Connect(0), doorbell(0), Deliver(0, 5), Deliver(0, 3))
    assert result.disabled_step == 3
    assert run(config, Connect(0), doorbell(0), Deliver(0, 5), Deliver(0, 2)).disabled_step \
        is None


def test_deliver_bytes_in_json() -> None:
    from ivshmem_model.model.actions import Deliver, TraceError, action_from_json

    assert Deliver(0).to_json() == {"action": "deliver", "endpoint": 0}
    assert Deliver(0, 3).to_json() == {"action": "deliver", "endpoint": 0, "bytes": 3}
    assert action_from_json({"action": "deliver", "endpoint": 0, "bytes": 3}) == Deliver(0, 3)
    for bad in (8, -1, 2.0, True):
        try:
            action_from_json({"action": "deliver", "endpoint": 0, "bytes": bad})
        except TraceError as err:
            assert "bytes" in str(err.where)
        else:
            raise AssertionError(f"bytes={bad!r} accepted")

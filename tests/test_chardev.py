"""The socket chardev outlives the device (model/chardev.py): its place in the server's byte
stream and the descriptors it holds go to the next device realized in the process.  QEMU runs
the same traces in counterexamples/conformance/torn-message-*.json (tests/test_conform.py)."""

from __future__ import annotations

from helpers import doorbell, observations, play, run, scripted

from ivshmem_model.model.actions import (
    Connect,
    Deliver,
    Disconnect,
    MmioRead,
    ServerExit,
    ServerSend,
    Unplug,
)
from ivshmem_model.model.state import IN_FLIGHT, SystemState
from ivshmem_model.model.system import step
from ivshmem_model.model.variants import FIXED, QEMU_7_2

SETUP = (Connect(0), ServerSend(0, 0), ServerSend(0, 0), ServerSend(0, -1, "shm"), doorbell(0))
NEXT_SETUP = (ServerSend(0, 0), ServerSend(0, 0), ServerSend(0, -1, "shm"))


def _open(state: SystemState, d: int) -> bool:
    entry = state.fds[d]
    return entry is not None and entry.open


def test_a_whole_message_leaves_nothing_in_the_chardev() -> None:
    """The explorer's deliver reads 8 bytes and takes their descriptor: the chardev's
    fields keep their defaults, so its states are the ones they were."""
    state = play(scripted(), *SETUP, ServerSend(0, 1, "eventfd"), Deliver(0))
    ep = state.endpoints[0]
    assert (ep.chr_read, ep.chr_fd) == (0, -1)
    assert ep.device is not None and (ep.device.msg_buffered_bytes, ep.device.msg_buf) == (0, 0)


def test_first_bytes_bring_the_descriptor_into_the_chardev() -> None:
    """tcp_chr_recv: the kernel hands a message's descriptor with its first byte read; it
    waits in read_msgfds, the process's, until qemu_chr_fe_get_msgfd (seed 647)."""
    state = play(scripted(), *SETUP, ServerSend(0, 0x0A0B0C0D, "eventfd"), Deliver(0, 3))
    ep = state.endpoints[0]
    assert ep.chr_read == 3 and ep.chr_fd >= 0
    fd = state.fds[ep.chr_fd]
    assert fd is not None and fd.owner == 0 and fd.open
    assert state.channels[0] == ((0x0A0B0C0D, -1),)  # the rest, without its descriptor
    assert ep.device is not None and ep.device.msg_buf == 0x0B0C0D  # the 3 low bytes, LE


def test_unplug_leaves_the_stream_position_and_the_descriptor_to_the_chardev() -> None:
    state = play(scripted(), *SETUP, ServerSend(0, 1, "eventfd"), Deliver(0, 3), Unplug(0))
    ep = state.endpoints[0]
    assert ep.device is None and ep.chr_read == 3 and _open(state, ep.chr_fd)


def test_next_device_reads_mid_message_and_takes_the_held_descriptor() -> None:
    """5 bytes of the torn message and 3 of the version read 0, and the held eventfd comes
    with them: 'server sent invalid version message' (seed 692-697); the seed leaves that
    descriptor open (fd_conservation), the fixed variant closes it."""
    steps = (*SETUP, ServerSend(0, 1, "eventfd"), Deliver(0, 3), Unplug(0), *NEXT_SETUP,
             doorbell(0))
    result = run(scripted(), *steps, variant=QEMU_7_2)
    assert {"error": "server sent invalid version message"} in result.steps[-1].observations
    assert [v.property for v in result.violations] == ["fd_conservation"]
    assert result.final is not None and result.final.endpoints[0].chr_read == 3
    assert run(scripted(), *steps, variant=FIXED).violations == []


def test_a_read_that_brings_descriptors_closes_those_held() -> None:
    """tcp_chr_recv: "close and clean read_msgfds" when a read brings new ones."""
    before = play(scripted(), *SETUP, ServerSend(0, 1, "eventfd"), Deliver(0, 3), Unplug(0))
    held = before.endpoints[0].chr_fd
    outcome = step(before, ServerSend(0, 0, "eventfd"))
    assert outcome is not None
    outcome = step(outcome[0], doorbell(0))
    assert outcome is not None
    after, obs = outcome
    assert {"error": "server sent invalid version message"} in obs
    fd = after.fds[held] if held < len(after.fds) else None
    assert fd is None or not fd.open  # closed by the chardev (then collected)
    assert after.endpoints[0].chr_fd == -1  # the new one went to ivshmem_recv_setup


def test_realize_goes_through_in_step_with_a_shifted_stream() -> None:
    """Messages chosen so that the 8-byte reads from 3 bytes into the stream make a valid
    setup (0, 0, -1 with the shared memory); the device then stays 3 bytes out of step."""
    steps = (*SETUP, ServerSend(0, 1), Deliver(0, 3), Unplug(0), ServerSend(0, 0),
             ServerSend(0, -16777216), ServerSend(0, -1, "shm"), doorbell(0))
    state = play(scripted(), *steps)
    device = state.endpoints[0].device
    assert device is not None and device.vm_id == 0 and device.bar2 == "server"
    assert observations(scripted(), *steps, MmioRead(0, 8)) == [{"read": 0}]
    obs = observations(scripted(), *steps, ServerSend(0, 1, "eventfd"), Deliver(0))
    assert obs == [{"error": "server sent invalid message 2199023255551"}]


def test_a_plain_deliver_needs_what_fills_msg_buf() -> None:
    """After the shifted realize 5 bytes of -1 are queued: a deliver needs 8."""
    steps = (*SETUP, ServerSend(0, 1), Deliver(0, 3), Unplug(0), ServerSend(0, 0),
             ServerSend(0, -16777216), ServerSend(0, -1, "shm"), doorbell(0))
    state = play(scripted(), *steps)
    assert step(state, Deliver(0)) is None
    assert step(state, Deliver(0, 5)) is not None
    assert step(state, Deliver(0, 6)) is None  # only 5 bytes there


def test_end_of_stream_mid_message() -> None:
    """A server gone with 5 bytes left: realize reads them and then 0 forever (seed 672);
    the proposed fix fails it, and the chardev's disconnect closes what it held."""
    steps = (*SETUP, ServerSend(0, 1, "eventfd"), Deliver(0, 3), Unplug(0), ServerExit(),
             doorbell(0))
    state = play(scripted(), *steps, variant=QEMU_7_2)
    assert state.endpoints[0].fate is not None and state.endpoints[0].fate.kind == "hung"
    held = play(scripted(), *steps[:-2], variant=FIXED).endpoints[0].chr_fd
    state = play(scripted(), *steps, variant=FIXED)
    ep = state.endpoints[0]
    assert ep.fate is None and (ep.chr_read, ep.chr_fd) == (0, -1) and not state.channels[0]
    assert held >= 0
    fd = state.fds[held] if held < len(state.fds) else None
    assert fd is None or not fd.open  # tcp_chr_free_connection closed it


def test_the_process_going_closes_the_held_descriptor() -> None:
    state = play(scripted(), *SETUP, ServerSend(0, 1, "eventfd"), Deliver(0, 3))
    held = state.endpoints[0].chr_fd
    state = play(scripted(), *SETUP, ServerSend(0, 1, "eventfd"), Deliver(0, 3), Disconnect(0))
    assert (state.endpoints[0].chr_read, state.endpoints[0].chr_fd) == (0, -1)
    fd = state.fds[held] if held < len(state.fds) else None
    assert fd is None or not fd.open
    assert all(f is None or f.owner == IN_FLIGHT or not f.open for f in state.fds)

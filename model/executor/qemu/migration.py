"""``migrate`` on the QEMU backend: the source saves, a fresh QEMU started ``-incoming`` loads.

What the model says (``model.device.ivshmem_migrate``, seed 1015-1035): a device with a
migration blocker (not the master: "Migration is disabled when using feature 'peer mode' in
device 'ivshmem'", seed 903-909) refuses, and QMP ``migrate`` answers with that text; a
master is saved and loaded into a fresh destination realized against the same server with
the same ID and eventfds, where ``ivshmem_pre_load`` checks the role and
``ivshmem_post_load`` puts the MSI-X vectors to use.

How it runs here, for a master:

1. QMP ``migrate`` to ``exec:cat > FILE`` on the source; the step waits until
   ``query-migrate`` says ``completed``.
2. The source is killed; its channel keeps its connection to the server (the server sees no
   change, as in the model).
3. A QEMU of the same command line with ``-incoming defer`` realizes the same device.  Its
   chardev is set up by the backend with what the source was handed: version 0, the source's
   ID, the shared memory, then every peer's eventfds and its own, in the order the source
   filed them (the same kernel objects: ``Channel.delivered``, ``Channel.shm_copy``).  That
   is the model's abstraction written down in ``properties/conform.py`` ("a migration
   destination"): a real destination connects to the server itself and gets a new ID.
4. QMP ``migrate-incoming`` from the file; the step waits until it is ``completed`` or the
   process ends (a failed load exits, with QEMU's error text: the step's fate).

What cannot run is :class:`Unsupported`, with the reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.qemu.machine import STEP_TIMEOUT, Machine
from ivshmem_model.model.executor.qemu.qtest import QemuGone, QemuTimeout, Qmp, QmpError

if TYPE_CHECKING:
    from ivshmem_model.model.executor.qemu.backend import _Session

Observation = dict[str, Any]
DONE = ("completed", "failed", "cancelled")


class MigrationUnsupported(Exception):  # noqa: N818 - a verdict; backend.Unsupported's reason
    """The backend cannot run this migration; the text says why."""


def _wait_done(qmp: Qmp, machine: Machine, timeout: float) -> str:
    """``query-migrate``'s status once it is final, ``gone`` if the process ended,
    ``timeout`` else."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = qmp.execute("query-migrate") or {}
        except (QemuGone, QemuTimeout, QmpError):
            return "gone"
        status = str(info.get("status", ""))
        if status in DONE:
            return status if status != "failed" else f"failed: {info.get('error-desc', '')}"
        if machine.poll() is not None:
            return "gone"
        time.sleep(0.005)
    return "timeout"


def migrate(session: _Session, e: int) -> list[Observation] | None:
    found = session._device(e)
    if found is None:
        return None
    source, fn = found
    if source.qmp is None or fn.spec is None:
        return None
    path = f"{session.workdir}/migration.{session.started}"
    try:
        source.qmp.execute("migrate", uri=f"exec:cat > {path}")
    except QmpError as err:
        return [{"error": str(err)}]  # the blocker: QEMU's own text
    status = source.guard(_wait_done, source.qmp, source, STEP_TIMEOUT)
    if status != "completed":
        raise MigrationUnsupported(f"the source's migration ended {status}")
    group = session.groups[e]
    channel = session.channels[e]
    if len(group) > 1:
        raise MigrationUnsupported("a process of several devices migrates them all at once "
                                   "(config.processes); the model migrates one device")
    if channel.head_sent:
        raise MigrationUnsupported("the device holds part of a message (deliver with bytes): "
                                   "the destination's chardev would start mid-message")
    spec = fn.spec
    has_memdev = spec.options.get("memdev") is not None
    if session.memdevs[e] != int(has_memdev):
        raise MigrationUnsupported("the source holds memory backends of earlier devices, "
                                   "whose RAM blocks the destination lacks")
    chardev = spec.options.get("chardev", "").startswith("c")
    if chardev and (channel.own_id is None or channel.shm_copy is None):
        raise MigrationUnsupported("the source's setup gave no ID or shared memory to "
                                   "hand the destination")
    obs: list[Observation] = [{"msi": v} for v in source.take_msis()]
    source.kill()
    if channel.qemu is not None:
        channel.qemu.close()
        channel.qemu = None
    session.started += 1
    dest = Machine(session.workdir, f"q{session.started}", session.backend.binary,
                   session.kvm, session.backend.memcheck, len(group))
    dest.incoming = "defer"
    for m in group:
        session.machines[m] = dest
    dest.launch([session.channels[m].path for m in group], spec, fn.index)
    if chardev:
        _hand_setup(channel)
    dest.attach()
    if dest.qmp is None or not dest.alive:
        return obs  # the destination's fate (a failed realize) is the step's
    try:
        dest.qmp.execute("migrate-incoming", uri=f"exec:cat {path}")
    except QmpError as err:
        raise MigrationUnsupported(f"migrate-incoming: {err}") from None
    dest.guard(_wait_done, dest.qmp, dest, STEP_TIMEOUT)
    dest.sync()
    return obs


def _hand_setup(channel: Any) -> None:
    """The destination's chardev gets what the source was handed (module docstring, 3)."""
    if not channel.accept_qemu(5.0):
        return
    sock = channel.qemu
    own = channel.own_id
    messages: list[tuple[int, int | None]] = [(0, None), (own, None), (-1, channel.shm_copy)]
    for peer, fds in channel.delivered.items():
        if peer != own:
            messages += [(peer, fd) for fd in fds]
    messages += [(own, fd) for fd in channel.delivered.get(own, [])]
    for value, fd in messages:
        wire.send_msg(sock, value, fd)
    channel.wait_read()

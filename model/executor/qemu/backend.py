"""The QEMU backend: a trace in, per-step observations and per-endpoint outcomes out (design §10).

Each action maps onto one real effect (``../shared/qemu-qtest-notes.md`` has the method):

| action | on QEMU |
|---|---|
| ``connect`` | the endpoint's channel connects to the server (contrib: our executor server) |
| ``disconnect`` | the QEMU process is killed and its socket closed |
| ``server_send`` | a message with a fresh fd is queued in the channel (scripted policy) |
| ``server_exit`` | SIGTERM to the contrib server, or the scripted server closes every socket |
| ``realize`` | QEMU starts with ``-device``; its chardev gets the setup messages |
| ``deliver`` | one queued message goes to QEMU's chardev |
| ``mmio_read``/``mmio_write``/``ring`` | qtest accesses to BAR0 |
| ``msix_enable``/``msix_function_mask`` | a configuration write of the MSI-X control word |
| ``msix_mask`` | a write of the entry's vector-control word in BAR1 |
| ``pba_read`` | a qtest read of the PBA in BAR1 |
| ``handle_irq`` | the doorbells held for the endpoint's vector go into its eventfd |
| ``shm_read``/``shm_write`` | qtest accesses to BAR2 |
| ``config_read``/``config_write`` | configuration cycles (ports 0xCF8/0xCFC) to the register |
| ``eventfd_poll`` | our copy's counter (``/proc/self/fdinfo``) and the doorbells held for it |
| ``fd_count`` | ``/proc/PID/fd`` by kind, less a QEMU with no device |
| ``reset`` | QMP ``system_reset`` (then the guest programs the device again) |
| ``unplug`` | QMP ``device_del`` and the guest's ACPI eject |

What QEMU cannot show, or what this backend cannot do, is said, never guessed:
:class:`Unsupported` stops a run with the reason (plain-client endpoints, migration of a
master, ``host.ioeventfd`` off), and observations the model makes that no real process exposes
(``fd`` bookkeeping, ``fault``) are listed in ``properties/conform.py``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ivshmem_model.model.actions import (
    Action,
    ClientNotify,
    ConfigRead,
    ConfigWrite,
    Connect,
    Deliver,
    Disconnect,
    EventfdPoll,
    FdCount,
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
    ShmRead,
    ShmWrite,
    Trace,
    Unplug,
    fd_kind_size,
)
from ivshmem_model.model.device import memdev_name
from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.qemu.channel import Channel
from ivshmem_model.model.executor.qemu.machine import (
    DeviceSpec,
    Machine,
    Outcome,
    kvm_available,
    qemu_version,
    resolve_qemu,
)
from ivshmem_model.model.state import BAR0_ADDR, BAR1_ADDR, BAR2_ADDR

Observation = dict[str, Any]
DOORBELL = 12
COUNTED_FD_KINDS = ("eventfd", "memfd", "file", "pipe")  # what fd_count reports
FD_SETTLE = 3.0  # seconds at most for QEMU's deferred closes to happen
IRQ_WAIT = 0.3  # seconds for QEMU (or KVM) to consume an eventfd the backend wrote


class Unsupported(Exception):  # noqa: N818 - a verdict, not a bug
    """The trace asks for something this backend cannot run on QEMU; the text says what."""


@dataclass
class BackendStep:
    index: int
    action: Action
    enabled: bool
    observations: list[Observation]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "action": self.action.to_json(), "enabled": self.enabled,
                "observations": self.observations}


@dataclass
class BackendRun:
    """What QEMU did with a trace: the same shape as the model's ``run --json``, plus an
    outcome per endpoint and, when the run stopped early, why."""

    backend: str
    steps: list[BackendStep] = field(default_factory=list)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    unsupported: str | None = None
    stderr: dict[int, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.backend,
            "steps": [s.to_json() for s in self.steps],
            "outcomes": {str(e): o.to_json() for e, o in sorted(self.outcomes.items())},
        }
        if self.unsupported is not None:
            out["unsupported"] = self.unsupported
        return out


def device_spec(action: Realize, memdev_id: str, serial: str = "") -> DeviceSpec:
    """The model's ``realize`` props as QEMU's ``-device`` options (design §3 names); a memdev
    is a fresh memory backend object called ``memdev_id`` (a file one in a file of its own)."""
    options: dict[str, str] = {"id": "dev0", "addr": "4"}
    objects: list[str] = []
    size = action.prop("memdev_size")
    if size is not None:
        backend = action.prop("memdev_backend", "memfd")
        share = "on" if action.prop("memdev_share", True) else "off"
        extra = f",mem-path={memdev_id}.{serial}.mem" if backend == "file" else ""
        objects.append(f"memory-backend-{backend},id={memdev_id},size={size},share={share}"
                       f"{extra}")
        options["memdev"] = memdev_id
    for key, value in action.props:
        if key.startswith("memdev_") or key == "chardev_backend":
            continue
        if key == "chardev":
            if value is True:
                null = action.prop("chardev_backend") == "null"
                options["chardev"] = "n0" if null else "c0"
        elif isinstance(value, bool):
            options[key] = "on" if value else "off"
        else:
            options[key] = str(value)
    return DeviceSpec(action.device, options, objects)


class QemuBackend:
    """Runs traces on real QEMU processes, one per endpoint."""

    def __init__(self, binary: str | None = None, kvm: bool = False,
                 version: str | None = None, memcheck: bool = False) -> None:
        """``binary``: ``7.2``, ``10.0`` or a path (``resolve_qemu``); ``version`` is what the
        binary says it is unless given."""
        self.binary = resolve_qemu(binary)
        self.force_kvm = kvm
        self.version = version or qemu_version(self.binary)
        self.memcheck = memcheck
        self._baselines: dict[bool, dict[str, int]] = {}

    @property
    def name(self) -> str:
        return f"qemu-{self.version}"

    def baseline_fds(self, kvm: bool) -> dict[str, int]:
        """The descriptors of a QEMU started like the endpoints' but with no device, by kind
        (measured once per accelerator): what ``fd_count`` does not count."""
        if kvm not in self._baselines:
            with tempfile.TemporaryDirectory(prefix="ivshmem-qemu-") as workdir:
                machine = Machine(workdir, "base", self.binary, kvm, self.memcheck)
                try:
                    machine.launch(None, None)
                    machine.attach()
                    machine.sync()
                    self._baselines[kvm] = machine.fd_kinds()
                finally:
                    machine.kill()
        return self._baselines[kvm]

    def run(self, trace: Trace) -> BackendRun:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ivshmem-qemu-") as workdir:
            session = _Session(self, trace, workdir)
            try:
                session.run()
            finally:
                session.close()
        session.result.seconds = time.monotonic() - started
        return session.result


class _Session:
    """One trace on fresh processes, sockets and fds."""

    def __init__(self, backend: QemuBackend, trace: Trace, workdir: str) -> None:
        self.backend = backend
        self.trace = trace
        self.config = trace.config
        self.workdir = workdir
        self.result = BackendRun(backend.name)
        self.kvm = backend.force_kvm or self.config.host.kvm_msi_irqfd
        contrib = self.config.server.policy == "contrib"
        self.channels = [Channel(workdir, e, standins=contrib)
                         for e in range(self.config.endpoints)]
        self.machines: list[Machine | None] = [None] * self.config.endpoints
        self.server: Any = None
        self.server_up = True
        self.shm_name = ""
        self.started = 0  # QEMU processes started (their sockets need distinct names)
        self.pipe_ends: list[int] = []  # write ends of the pipes sent as fds
        # memory backends created per endpoint process (each realize has its own, named as
        # the model names them: model.device.memdev_name)
        self.memdevs = [0] * self.config.endpoints

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._check_supported()
        except Unsupported as why:
            self.result.unsupported = str(why)
            return
        if self.config.server.policy == "contrib":
            self._start_server()
        for index, action in enumerate(self.trace.steps):
            try:
                obs = self.step(action)
            except Unsupported as why:
                self.result.unsupported = f"step {index} ({action.name}): {why}"
                return
            self.result.steps.append(BackendStep(index, action, obs is not None, obs or []))
            if obs is None:
                return

    def _check_supported(self) -> None:
        if self.config.clients:
            raise Unsupported("plain ivshmem-client endpoints are not run on QEMU")
        if not self.config.host.ioeventfd:
            raise Unsupported("host.ioeventfd=false has no counterpart: QEMU "
                              "matches ioeventfds in software under TCG and in the kernel "
                              "under KVM")
        if self.kvm and not kvm_available():
            raise Unsupported("the KVM irqfd path needs /dev/kvm")
        if self.config.host.big_endian:
            raise Unsupported("host.big_endian: the QEMUs here run on a little-endian host")
        if self.config.server.socket_capacity is not None:
            raise Unsupported("server.socket_capacity: the kernel's socket buffers hold what "
                              "they hold (tests/test_contrib.py runs overflows on the C server)")

    def _start_server(self) -> None:
        from ivshmem_model.model.executor.lockstep import RealServer

        self.server = RealServer(self.workdir, self.config.server.vectors,
                                 self.config.server.shm_size)
        self.shm_name = self.server.shm_name

    def close(self) -> None:
        for e, machine in enumerate(self.machines):
            if machine is not None:
                if machine.alive:
                    machine.drain_stderr()
                    self.result.outcomes.setdefault(e, machine.outcome)
                machine.kill()
                self.result.stderr[e] = machine.stderr_lines
        for channel in self.channels:
            channel.close()
        for fd in self.pipe_ends:
            os.close(fd)
        if self.server is not None:
            self.server.stop()

    # -- one step --------------------------------------------------------------------------------

    def step(self, action: Action) -> list[Observation] | None:
        handler = getattr(self, "_" + action.name)
        running = {e for e, m in enumerate(self.machines)
                   if m is not None and m.outcome.kind == "running"}
        obs: list[Observation] | None = handler(action)
        if obs is None:
            return None
        obs.extend(self._pump_all())
        e = getattr(action, "endpoint", None)
        for other, machine in enumerate(self.machines):
            if machine is None:
                continue
            was_running = other in running or (other == e and isinstance(action, Realize))
            obs.extend(self._effects(other, machine, was_running))
        return obs

    def _effects(self, e: int, machine: Machine, was_running: bool) -> list[Observation]:
        """What endpoint ``e`` showed in this step: MSIs, error texts, its fate."""
        obs: list[Observation] = []
        if machine.alive:
            obs.extend({"msi": v} for v in machine.take_msis())
        errors = [text for text in map(_error_line, machine.new_stderr()) if text is not None]
        outcome = machine.poll() if machine.outcome.kind == "running" else machine.outcome
        if outcome is not None and outcome.kind in ("aborted", "crashed"):
            # the message that is the fate itself (abort()'s, glibc's heap check) is no error
            errors = [text for text in errors if text not in outcome.reason]
        obs.extend({"error": text} for text in errors)
        if was_running and outcome is not None and outcome.kind != "running":
            self.result.outcomes[e] = outcome
            if outcome.kind == "failed":
                if not any(o.get("error") == outcome.reason for o in obs):
                    obs.append({"error": outcome.reason})
            elif outcome.kind != "exited":
                obs.append({"fate": outcome.kind, "reason": outcome.reason})
            if outcome.kind == "failed":
                obs.append({"fate": "failed", "reason": outcome.reason})
        return obs

    def _pump_all(self) -> list[Observation]:
        obs: list[Observation] = []
        for e, channel in enumerate(self.channels):
            for value, kind in channel.pump():
                obs.append({"send": {"to": e, "value": value, "fd": kind}})
        return obs

    def _machine(self, e: int) -> Machine | None:
        """The endpoint's QEMU if it is running."""
        machine = self.machines[e]
        return machine if machine is not None and machine.alive else None

    def _dead(self, e: int) -> bool:
        machine = self.machines[e]
        return machine is not None and not machine.alive

    # -- server actions --------------------------------------------------------------------------

    def _connect(self, a: Connect) -> list[Observation] | None:
        channel = self.channels[a.endpoint]
        if channel.connected or not self.server_up:
            return None
        if self._dead(a.endpoint):
            return None
        if self.server is not None:
            channel.connect_upstream(self.server.path)
        else:
            channel.received = 0
        channel.connected = True
        return []

    def _disconnect(self, a: Disconnect) -> list[Observation] | None:
        machine = self.machines[a.endpoint]
        channel = self.channels[a.endpoint]
        if machine is None and not channel.connected:
            return None
        if machine is not None:
            if machine.alive:
                machine.kill()
            self.result.stderr[a.endpoint] = machine.stderr_lines
        held = self.server.fds() if self.server is not None and channel.upstream else None
        channel.close()
        if held is not None:
            # Wait until the server has seen the peer go (it closes the peer's socket and
            # eventfds), so the next step meets the server the model describes.
            deadline = time.monotonic() + 2.0
            while self.server.fds() >= held and time.monotonic() < deadline:
                time.sleep(0.002)
        # The process is gone; a later connect is a new process with a new socket.
        self.channels[a.endpoint] = Channel(self.workdir, f"{a.endpoint}.{id(channel)}",
                                            channel.use_standins)
        self.machines[a.endpoint] = None
        self.memdevs[a.endpoint] = 0
        return []

    def _server_send(self, a: ServerSend) -> list[Observation] | None:
        channel = self.channels[a.endpoint]
        if self.server is not None or not self.server_up:
            return None
        if not channel.connected or self._dead(a.endpoint):
            return None
        fds = [self._new_fd(text) for text in a.attached]
        kind = fd_kind_size(a.attached[0])[0] if fds else None
        channel.enqueue(a.value, fds[0] if fds else None, kind, tuple(fds[1:]))
        return [{"send": {"to": a.endpoint, "value": a.value, "fd": a.fd}}]

    def _new_fd(self, text: str) -> int:
        """A fresh descriptor of the kind ``server_send`` names (``model.actions.FD_KINDS``)."""
        kind, size = fd_kind_size(text)
        if size is None:
            size = self.config.server.shm_size
        if kind == "eventfd":
            return wire.new_eventfd()
        if kind == "pipe":
            read_end, write_end = os.pipe()
            self.pipe_ends.append(write_end)  # kept open, never written: reads block
            return read_end
        if kind == "devnull":
            return os.open(os.devnull, os.O_RDWR)
        if kind == "file":
            fd, path = tempfile.mkstemp(prefix="ivshmem-file-", dir=self.workdir)
            os.unlink(path)
        else:
            fd = wire.shm_memfd("ivshmem")
        os.ftruncate(fd, size)
        if kind == "memfd-ro":
            readonly = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
            os.close(fd)
            return readonly
        return fd

    def _abandon(self, _a: Action) -> list[Observation] | None:
        raise Unsupported("a client gone before it is accepted runs against the C server "
                          "(tests/test_contrib.py), not with QEMU")

    def _garbage(self, _a: Action) -> list[Observation] | None:
        raise Unsupported("plain ivshmem-client endpoints are not run on QEMU")

    def _server_exit(self, _a: ServerExit) -> list[Observation] | None:
        if not self.server_up:
            return None
        self.server_up = False
        if self.server is not None:
            self.server.terminate()
        else:
            for channel in self.channels:
                channel.server_closed = True
                if channel.qemu is not None and not channel.queue:
                    with contextlib.suppress(OSError):
                        channel.qemu.shutdown(2)
        return []

    # -- realize and messages --------------------------------------------------------------------

    def _realize(self, a: Realize) -> list[Observation] | None:
        e = a.endpoint
        channel = self.channels[e]
        running = self.machines[e]
        if self._dead(e) or (running is not None and running.device is not None):
            return None
        chardev = a.prop("chardev") is True and a.prop("chardev_backend", "socket") == "socket"
        if chardev and not channel.connected:
            return None
        spec = device_spec(a, memdev_name(e, self.memdevs[e]), f"{self.started}")
        if a.prop("memdev_size") is not None:
            self.memdevs[e] += 1
        hotplug = getattr(a, "hotplug", False)
        if running is None:
            self.started += 1
            machine = Machine(self.workdir, f"q{self.started}", self.backend.binary, self.kvm,
                              self.backend.memcheck)
            self.machines[e] = machine
            # The chardev is always there, so a doorbell can be hot-plugged into a process
            # that started with another device; it reaches our channel, which holds the
            # server's messages until the trace's realize or deliver.
            machine.launch(channel.path, None if hotplug else spec)
            if chardev:
                self._forward_setup(e, machine)
            machine.attach()
            if machine.outcome.kind == "blocked":
                return None  # realize waits for messages a live server has not sent
            if not hotplug:
                return []
        target = self.machines[e]
        assert target is not None
        if chardev and running is not None:
            self._forward_setup(e, target)
        error = target.device_add(spec)
        return [] if error is None else [{"error": error}]

    def _forward_setup(self, e: int, machine: Machine) -> None:
        channel = self.channels[e]
        if channel.accept_qemu(5.0):
            channel.forward(channel.setup_count())

    def _deliver(self, a: Deliver) -> list[Observation] | None:
        channel = self.channels[a.endpoint]
        machine = self._machine(a.endpoint)
        if not channel.queue or machine is None or channel.qemu is None:
            return None
        if a.bytes:
            if not channel.forward_part(a.bytes):
                return None  # the rest of the message, or more: a plain deliver
            channel.wait_read()
            machine.sync()
            return []
        channel.forward(1)
        channel.wait_read()
        machine.sync()
        return []

    # -- the guest -------------------------------------------------------------------------------

    def _device(self, e: int) -> Machine | None:
        machine = self._machine(e)
        return machine if machine is not None and machine.device is not None else None

    def _mmio_read(self, a: MmioRead) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None or machine.qtest is None:
            return None
        value = machine.guard(machine.qtest.read, BAR0_ADDR + a.offset, a.size)
        return [] if value is None else [{"read": value}]

    def _mmio_write(self, a: MmioWrite) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None or machine.qtest is None:
            return None
        machine.guard(machine.qtest.write, BAR0_ADDR + a.offset, a.value, a.size)
        machine.sync()
        return []

    def _ring(self, a: Ring) -> list[Observation] | None:
        return self._mmio_write(MmioWrite(a.endpoint, DOORBELL, a.peer << 16 | a.vector, 4))

    def _msix(self, e: int) -> Machine | None:
        machine = self._device(e)
        return machine if machine is not None and machine.msix_cap else None

    def _msix_enable(self, a: MsixEnable) -> list[Observation] | None:
        machine = self._msix(a.endpoint)
        if machine is None:
            return None
        machine.msix_control(enable=a.enabled)
        machine.sync()
        return []

    def _msix_function_mask(self, a: MsixFunctionMask) -> list[Observation] | None:
        machine = self._msix(a.endpoint)
        if machine is None:
            return None
        machine.msix_control(maskall=a.masked)
        machine.sync()
        return []

    def _msix_mask(self, a: MsixMask) -> list[Observation] | None:
        machine = self._msix(a.endpoint)
        if machine is None or machine.qtest is None or a.vector >= machine.msix_entries:
            return None
        machine.guard(machine.qtest.write, BAR1_ADDR + 16 * a.vector + 12, int(a.masked), 4)
        machine.sync()
        return []

    def _pba_read(self, a: PbaRead) -> list[Observation] | None:
        machine = self._msix(a.endpoint)
        if machine is None or machine.qtest is None:
            return None
        if a.offset >= -(-machine.msix_entries // 64) * 8:
            return None
        value = machine.guard(machine.qtest.read, BAR1_ADDR + machine.pba_offset + a.offset, 4)
        return [] if value is None else [{"read": value}]

    def _shm_read(self, a: ShmRead) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None or machine.qtest is None or a.offset + a.size > machine.bar2_size:
            return None
        value = machine.guard(machine.qtest.read, BAR2_ADDR + a.offset, a.size)
        return [] if value is None else [{"read": value}]

    def _shm_write(self, a: ShmWrite) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None or machine.qtest is None or a.offset + a.size > machine.bar2_size:
            return None
        machine.guard(machine.qtest.write, BAR2_ADDR + a.offset, a.value, a.size)
        return []

    def _config_read(self, a: ConfigRead) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None:
            return None
        value = machine.config_read(a.register)
        return None if value is None else [{"read": value}]

    def _config_write(self, a: ConfigWrite) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None or machine.register_offset(a.register) is None:
            return None
        machine.config_write(a.register, a.value)
        machine.sync()
        return []

    def _fd_count(self, a: FdCount) -> list[Observation] | None:
        machine = self._machine(a.endpoint)
        if machine is None:
            return None
        machine.sync()
        # QEMU closes some descriptors later, from its RCU thread (a RAM block's fd after
        # unplug): count once two readings 0.25 s apart agree.
        held, deadline = machine.fd_kinds(), time.monotonic() + FD_SETTLE
        while time.monotonic() < deadline:
            time.sleep(0.25)
            again = machine.fd_kinds()
            if again == held:
                break
            held = again
        base = self.backend.baseline_fds(self.kvm)
        counts = {kind: held.get(kind, 0) - base.get(kind, 0) for kind in COUNTED_FD_KINDS}
        return [{"fds": {kind: n for kind, n in sorted(counts.items()) if n}}]

    def _eventfd_poll(self, a: EventfdPoll) -> list[Observation] | None:
        """Our copy of the eventfd QEMU was handed for ``(peer, vector)``; pending if its
        counter is set, or a doorbell for it waits in a stand-in (it reaches the owner at
        the trace's ``handle_irq``)."""
        machine = self._device(a.endpoint)
        fds = self.channels[a.endpoint].delivered.get(a.peer, [])
        if machine is None or machine.proc is None or a.vector >= len(fds):
            return None
        ours = fds[a.vector]
        ident = wire.eventfd_field(ours, "eventfd-id")
        if ident is None or ident not in machine.eventfd_ids():
            return None  # not an eventfd, or QEMU closed it (a disconnect, a rejection)
        pending = wire.eventfd_count(ours) > 0 or any(
            channel.pending_rings(a.peer, a.vector) for channel in self.channels)
        return [{"signalled": pending}]

    def _handle_irq(self, a: HandleIrq) -> list[Observation] | None:
        e, v = a.endpoint, a.vector
        machine = self._machine(e)
        channel = self.channels[e]
        if machine is None or v >= len(channel.own_eventfds):
            return None
        rings = sum(other.take_rings(channel.own_id or 0, v)
                    for i, other in enumerate(self.channels) if i != e)
        own = channel.own_eventfds[v]
        if rings == 0 and wire.eventfd_count(own) == 0:
            return None
        if rings:
            os.write(own, rings.to_bytes(8, "little"))
        deadline = time.monotonic() + IRQ_WAIT
        while wire.eventfd_count(own) and time.monotonic() < deadline:
            time.sleep(0.002)
        machine.sync()
        if wire.eventfd_count(own):
            # nothing consumes it (KVM with MSI-X off or the vector masked: no irqfd and no
            # fd handler): the doorbell stays pending, as in the model, where the step is
            # not enabled
            return None
        return []

    def _client_notify(self, _a: ClientNotify) -> list[Observation] | None:
        raise Unsupported("plain clients are not run on QEMU")

    def _reset(self, a: Reset) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None:
            return None
        machine.system_reset()
        return []

    def _unplug(self, a: Unplug) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None:
            return None
        machine.device_del()
        return []

    def _migrate(self, a: Migrate) -> list[Observation] | None:
        machine = self._device(a.endpoint)
        if machine is None or machine.qmp is None:
            return None
        from ivshmem_model.model.executor.qemu.qtest import QmpError

        try:
            machine.qmp.execute("migrate", uri=f"exec:cat > {self.workdir}/migration")
        except QmpError as err:
            return [{"error": str(err)}]
        raise Unsupported("loading a migrated master into a fresh QEMU is not run yet")


def _error_line(line: str) -> str | None:
    """An error QEMU reported on stderr, as the model writes it; warnings are not errors."""
    from ivshmem_model.model.executor.qemu.machine import error_text

    text = error_text(line.strip())
    if not text or text.startswith("warning:") or "Assertion" in text:
        return None
    return text

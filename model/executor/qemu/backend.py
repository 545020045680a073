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
| ``reset`` | QMP ``system_reset`` (then the guest programs every device again) |
| ``unplug`` | QMP ``device_del`` and the guest's ACPI eject |

The endpoints of a ``config.processes`` group share one QEMU: endpoint k of the group is the
device in slot ``4 + k`` (``machine.Function``), with chardev ``c<k>`` on its own channel; a
later realize in the running process is a ``device_add``; ``disconnect`` kills the process
and with it every endpoint's connection; outcomes are the process's.

What QEMU cannot show, or what this backend cannot do, is said, never guessed:
:class:`Unsupported` stops a run with the reason (``host.ioeventfd`` off, ``abandon``, a
migration the destination cannot be given, plain clients without the built C client), and
observations the model makes that no real process exposes (``fd`` bookkeeping, ``fault``) are
listed in ``properties/conform.py``.

Plain-client endpoints (``config.clients``) are QEMU's C ``ivshmem-client`` on the endpoint's
channel (``clients.py``); ``migrate`` of a master loads the source's stream into a fresh QEMU
started ``-incoming`` (``migration.py``).
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
    Garbage,
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
from ivshmem_model.model.executor.qemu.clients import PlainClients
from ivshmem_model.model.executor.qemu.machine import (
    MAX_FUNCTIONS,
    SLOT,
    DeviceSpec,
    Function,
    Machine,
    Outcome,
    kvm_available,
    qemu_version,
    resolve_qemu,
)

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


def device_spec(action: Realize, memdev_id: str, serial: str = "", index: int = 0
                ) -> DeviceSpec:
    """The model's ``realize`` props as QEMU's ``-device`` options (design §3 names) for the
    process's device ``index``; a memdev is a fresh memory backend object called
    ``memdev_id`` (a file one in a file of its own), or the one ``memdev`` names."""
    options: dict[str, str] = {"id": f"dev{index}", "addr": str(SLOT + index)}
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
                options["chardev"] = f"n{index}" if null else f"c{index}"
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
                    machine.launch([], None)
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
        # the endpoints of each endpoint's process (config.processes): one Machine for them
        self.groups = [self.config.process_of(e) for e in range(self.config.endpoints)]
        self.server: Any = None
        self.server_up = True
        self.shm_name = ""
        self.started = 0  # QEMU processes started (their sockets need distinct names)
        self.pipe_ends: list[int] = []  # write ends of the pipes sent as fds
        # memory backends created per endpoint process (each realize has its own, named as
        # the model names them: model.device.memdev_name)
        self.memdevs = [0] * self.config.endpoints
        self.plain = PlainClients(self.config.clients)  # QEMU's C ivshmem-client (clients.py)

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
        why = self.plain.unavailable()
        if why is not None:
            raise Unsupported(why)
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
        if any(len(group) > MAX_FUNCTIONS for group in self.config.processes):
            raise Unsupported(f"a process of more than {MAX_FUNCTIONS} devices (config.processes)")

    def _start_server(self) -> None:
        from ivshmem_model.model.executor.lockstep import RealServer

        self.server = RealServer(self.workdir, self.config.server.vectors,
                                 self.config.server.shm_size)
        self.shm_name = self.server.shm_name

    def close(self) -> None:
        self.plain.close()
        alive = {id(m): m.alive for m in self.machines if m is not None}
        for e, machine in enumerate(self.machines):
            if machine is not None:
                if alive[id(machine)]:
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
        for client, seen in self.plain.effects():
            self.result.outcomes[client] = Outcome("failed", str(seen[0]["error"]))
            obs.extend(seen)
        e = getattr(action, "endpoint", None)
        seen_machines: set[int] = set()
        for other, machine in enumerate(self.machines):
            if machine is None or id(machine) in seen_machines:
                continue
            seen_machines.add(id(machine))  # a process shows its effects once
            members = [m for m in self.groups[other] if self.machines[m] is machine]
            was_running = any(m in running for m in members) or (
                e in members and isinstance(action, Realize))
            obs.extend(self._effects(members, machine, was_running))
        return obs

    def _effects(self, members: list[int], machine: Machine, was_running: bool
                 ) -> list[Observation]:
        """What the process of endpoints ``members`` showed in this step: MSIs, error
        texts, its fate (theirs)."""
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
            for e in members:
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
        return (machine is not None and not machine.alive) or self.plain.dead(e)

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
        if a.endpoint in self.plain.endpoints and not self.plain.start(a.endpoint, channel):
            raise Unsupported("QEMU's ivshmem-client did not connect")
        return []

    def _disconnect(self, a: Disconnect) -> list[Observation] | None:
        machine = self.machines[a.endpoint]
        group = self.groups[a.endpoint]  # the process's endpoints all go with it
        if machine is None and not any(self.channels[m].connected for m in group):
            return None
        self.plain.stop(a.endpoint)
        if machine is not None:
            if machine.alive:
                machine.kill()
            for m in group:
                self.result.stderr[m] = machine.stderr_lines
        for m in group:
            channel = self.channels[m]
            held = self.server.fds() if self.server is not None and channel.upstream else None
            channel.close()
            if held is not None:
                # Wait until the server has seen the peer go (it closes the peer's socket and
                # eventfds), so the next step meets the server the model describes.
                deadline = time.monotonic() + 2.0
                while self.server.fds() >= held and time.monotonic() < deadline:
                    time.sleep(0.002)
            # The process is gone; a later connect is a new process with a new socket.
            self.channels[m] = Channel(self.workdir, f"{m}.{id(channel)}",
                                       channel.use_standins)
            self.machines[m] = None
            self.memdevs[m] = 0
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

    def _garbage(self, a: Garbage) -> list[Observation] | None:
        """Bytes from a plain client on its connection: the server drops it (S:421-427)."""
        channel = self.channels[a.endpoint]
        if self.server is None or not self.server_up or a.endpoint not in self.plain.endpoints:
            return None
        if channel.upstream is None or self._dead(a.endpoint):
            return None
        held = self.server.fds()
        channel.upstream.sendall(b"\0")
        deadline = time.monotonic() + 2.0
        while self.server.fds() >= held and time.monotonic() < deadline:
            time.sleep(0.002)  # until the server has let the peer go
        return []

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
        group = self.groups[e]
        index = group.index(e)  # the endpoint's device slot in its process
        if e in self.plain.endpoints or self._dead(e) or (
                running is not None and running.functions[index].spec is not None):
            return None
        chardev = a.prop("chardev") is True and a.prop("chardev_backend", "socket") == "socket"
        if chardev and not channel.connected:
            return None
        spec = device_spec(a, memdev_name(e, self.memdevs[e]), f"{self.started}", index)
        if a.prop("memdev_size") is not None:
            self.memdevs[e] += 1
        hotplug = getattr(a, "hotplug", False)
        if running is None:
            self.started += 1
            machine = Machine(self.workdir, f"q{self.started}", self.backend.binary, self.kvm,
                              self.backend.memcheck, len(group))
            for m in group:
                self.machines[m] = machine
            # The chardevs are always there, so a doorbell can be hot-plugged into a process
            # that started with another device; each reaches its endpoint's channel, which
            # holds the server's messages until the trace's realize or deliver.
            machine.launch([self.channels[m].path for m in group], None if hotplug else spec,
                           index)
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
        error = target.device_add(target.functions[index], spec)
        if target.functions[index].misplaced:
            raise Unsupported("a process's later device has a BAR2 over 256 MiB "
                              "(machine.BAR_STRIDE)")
        return [] if error is None else [{"error": error}]

    def _forward_setup(self, e: int, machine: Machine) -> None:
        channel = self.channels[e]
        if channel.accept_qemu(5.0):
            channel.forward(channel.setup_bytes())
            channel.fill = 0  # a new device: its msg_buf is empty

    def _deliver(self, a: Deliver) -> list[Observation] | None:
        channel = self.channels[a.endpoint]
        if a.endpoint in self.plain.endpoints:
            return self.plain.deliver(a.endpoint, channel, a.bytes)
        machine = self._machine(a.endpoint)
        if not channel.queue or machine is None or channel.qemu is None:
            return None
        # ivshmem_can_receive: the device takes what fills its msg_buf (seed 623-629)
        want = wire.MSG.size - channel.fill
        if a.bytes >= want or not channel.forward(a.bytes or want):
            return None  # bytes that fill msg_buf are a plain deliver; or too few queued
        channel.fill = channel.fill + a.bytes if a.bytes else 0
        channel.wait_read()
        machine.sync()
        return []

    # -- the guest -------------------------------------------------------------------------------

    def _fn(self, e: int) -> Function:
        """Endpoint ``e``'s device slot in its process."""
        machine = self.machines[e]
        assert machine is not None
        return machine.functions[self.groups[e].index(e)]

    def _device(self, e: int) -> tuple[Machine, Function] | None:
        """The endpoint's QEMU and device, if it runs and has one."""
        machine = self._machine(e)
        if machine is None or machine.qtest is None:
            return None
        fn = self._fn(e)
        return (machine, fn) if fn.spec is not None else None

    def _mmio_read(self, a: MmioRead) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None:
            return None
        machine, fn = found
        assert machine.qtest is not None
        value = machine.guard(machine.qtest.read, fn.home[0] + a.offset, a.size)
        return [] if value is None else [{"read": value}]

    def _mmio_write(self, a: MmioWrite) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None:
            return None
        machine, fn = found
        assert machine.qtest is not None
        machine.guard(machine.qtest.write, fn.home[0] + a.offset, a.value, a.size)
        machine.sync()
        return []

    def _ring(self, a: Ring) -> list[Observation] | None:
        return self._mmio_write(MmioWrite(a.endpoint, DOORBELL, a.peer << 16 | a.vector, 4))

    def _msix(self, e: int) -> tuple[Machine, Function] | None:
        found = self._device(e)
        return found if found is not None and found[1].msix_cap else None

    def _msix_enable(self, a: MsixEnable) -> list[Observation] | None:
        found = self._msix(a.endpoint)
        if found is None:
            return None
        machine, fn = found
        machine.msix_control(fn, enable=a.enabled)
        machine.sync()
        return []

    def _msix_function_mask(self, a: MsixFunctionMask) -> list[Observation] | None:
        found = self._msix(a.endpoint)
        if found is None:
            return None
        machine, fn = found
        machine.msix_control(fn, maskall=a.masked)
        machine.sync()
        return []

    def _msix_mask(self, a: MsixMask) -> list[Observation] | None:
        found = self._msix(a.endpoint)
        if found is None or a.vector >= found[1].msix_entries:
            return None
        machine, fn = found
        assert machine.qtest is not None
        machine.guard(machine.qtest.write, fn.home[1] + 16 * a.vector + 12, int(a.masked), 4)
        machine.sync()
        return []

    def _pba_read(self, a: PbaRead) -> list[Observation] | None:
        found = self._msix(a.endpoint)
        if found is None:
            return None
        machine, fn = found
        assert machine.qtest is not None
        if a.offset >= -(-fn.msix_entries // 64) * 8:
            return None
        value = machine.guard(machine.qtest.read, fn.home[1] + fn.pba_offset + a.offset, 4)
        return [] if value is None else [{"read": value}]

    def _shm_read(self, a: ShmRead) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None or a.offset + a.size > found[1].bar2_size:
            return None
        machine, fn = found
        assert machine.qtest is not None
        value = machine.guard(machine.qtest.read, fn.home[2] + a.offset, a.size)
        return [] if value is None else [{"read": value}]

    def _shm_write(self, a: ShmWrite) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None or a.offset + a.size > found[1].bar2_size:
            return None
        machine, fn = found
        assert machine.qtest is not None
        machine.guard(machine.qtest.write, fn.home[2] + a.offset, a.value, a.size)
        return []

    def _config_read(self, a: ConfigRead) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None:
            return None
        machine, fn = found
        value = machine.config_read(fn, a.register)
        return None if value is None else [{"read": value}]

    def _config_write(self, a: ConfigWrite) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None or Machine.register_offset(found[1], a.register) is None:
            return None
        machine, fn = found
        machine.config_write(fn, a.register, a.value)
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
        found = self._device(a.endpoint)
        fds = self.channels[a.endpoint].delivered.get(a.peer, [])
        machine = found[0] if found is not None else None
        if machine is None or machine.proc is None or a.vector >= len(fds):
            return None
        ours = fds[a.vector]
        ident = wire.eventfd_field(ours, "eventfd-id")
        if ident is None or ident not in machine.eventfd_ids():
            return None  # not an eventfd, or QEMU closed it (a disconnect, a rejection)
        pending = wire.eventfd_count(ours) > 0 or any(
            channel.pending_rings(a.peer, a.vector) for channel in self.channels) \
            or self.plain.pending(self.channels, a.peer, a.vector)
        return [{"signalled": pending}]

    def _handle_irq(self, a: HandleIrq) -> list[Observation] | None:
        e, v = a.endpoint, a.vector
        if e in self.plain.endpoints:
            return self.plain.handle_irq(e, v, self.channels)
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

    def _client_notify(self, a: ClientNotify) -> list[Observation] | None:
        if a.endpoint not in self.plain.endpoints:
            return None
        return self.plain.notify(a.endpoint, a.peer, a.vector)

    def _reset(self, a: Reset) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None:
            return None
        found[0].system_reset()
        return []

    def _unplug(self, a: Unplug) -> list[Observation] | None:
        found = self._device(a.endpoint)
        if found is None:
            return None
        machine, fn = found
        machine.device_del(fn)
        return []

    def _migrate(self, a: Migrate) -> list[Observation] | None:
        from ivshmem_model.model.executor.qemu import migration

        try:
            return migration.migrate(self, a.endpoint)  # into a fresh QEMU (migration.py)
        except migration.MigrationUnsupported as why:
            raise Unsupported(str(why)) from None


def _error_line(line: str) -> str | None:
    """An error QEMU reported on stderr, as the model writes it; warnings are not errors."""
    from ivshmem_model.model.executor.qemu.machine import error_text

    text = error_text(line.strip())
    if not text or text.startswith("warning:") or "Assertion" in text:
        return None
    return text

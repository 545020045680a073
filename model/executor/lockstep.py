"""Lock-step conformance: a trace on the model and on real OS objects, compared step by step
(design §8).

The real side is our server (``python -m ivshmem_model server``, a subprocess on a temporary
socket, so its descriptors can be counted in ``/proc/PID/fd``) or QEMU 7.2's C
``ivshmem-server`` (``server_program``; built by ``scripts/build-contrib.sh``), and one
:class:`~model.executor.device.SoftwareDevice` per endpoint.  Each step runs on the model
(``model_step``, :func:`model.system.step` unless a test plants a fault) and on the real
side; then, in this order, the first disagreement is reported:

1. ``enabled``: both sides take the step, or both refuse it;
2. ``observations``: of device steps, the model's against the software device's (descriptor
   numbers in texts masked: the device's own model numbers its descriptors differently);
3. ``sends``: the messages each endpoint's socket received in this step (value, fd kind)
   against the model's ``send`` observations;
4. ``channel``: each endpoint's received, unhandled messages (value, fd kind and size from
   ``fstat``) against the model's channel;
5. ``device``: each device's state, descriptor numbers left out;
6. ``eventfd``: for every eventfd slot of every device, the real fd readable (counter > 0)
   against the model's object count;
7. ``fds``: descriptors each endpoint holds (model: open and owned, or in flight to it; real:
   the fds the software device holds), the harness's own ``/proc/self/fd`` count, and the
   server's ``/proc/PID/fd`` count against its peers' sockets and eventfds;
8. ``shm``: bytes written through one endpoint's BAR2 mapping read through every other, and
   the mapping's size against the model's ``bar2_size``.

Supported: the ``contrib`` policy with QEMU endpoints (no ``clients``); ``server_send`` and
``client_notify`` are refused with :class:`UnsupportedTraceError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivshmem_model.model.actions import (
    Action,
    ClientNotify,
    Connect,
    Disconnect,
    ServerExit,
    ServerSend,
    Trace,
)
from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.device import SoftwareDevice, readable
from ivshmem_model.model.server import contrib_shm_size
from ivshmem_model.model.state import Device, SystemState
from ivshmem_model.model.system import Observation, StepResult, initial_state, step
from ivshmem_model.model.variants import SEED, Variant

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 2.0  # seconds any real effect may take to show
QUIET = 0.02  # seconds without messages after a server-side step

StepFn = Callable[[SystemState, Action], StepResult | None]
DeviceFactory = Callable[..., SoftwareDevice]


class UnsupportedTraceError(ValueError):
    """The trace uses something the real side cannot run."""


@dataclass(frozen=True, slots=True)
class Divergence:
    step: int
    action: dict[str, Any]
    check: str  # enabled, observations, sends, channel, device, eventfd, fds, shm
    detail: str
    model: Any
    real: Any

    def __str__(self) -> str:
        return (f"step {self.step} {self.action}: {self.check}: {self.detail}: "
                f"model {self.model!r}, real {self.real!r}")


@dataclass(frozen=True, slots=True)
class StepRecord:
    index: int
    action: dict[str, Any]
    enabled: bool
    observations: list[Observation]
    checks: int  # comparisons made after this step


@dataclass(frozen=True, slots=True)
class LockstepReport:
    steps: tuple[StepRecord, ...]
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    @property
    def first_divergent_step(self) -> int | None:
        return None if self.divergence is None else self.divergence.step

    def summary(self) -> str:
        checks = sum(s.checks for s in self.steps)
        if self.divergence is None:
            return f"agree: {len(self.steps)} steps, {checks} comparisons"
        return f"diverge at {self.divergence}"


class _Diverged(Exception):  # noqa: N818 - control flow, carries the divergence
    def __init__(self, divergence: Divergence) -> None:
        super().__init__(str(divergence))
        self.divergence = divergence


# ---------------------------------------------------------------------------------------------
# The real server


class RealServer:
    """A contrib-style server as a subprocess on a socket in ``directory``: ours
    (``ivshmem-model server -F``) or, with ``program``, QEMU's C ``ivshmem-server`` (same
    flags, plus ``-v``; its buffered stdout goes to a file, read once it has exited)."""

    def __init__(self, directory: str, vectors: int, shm_size: int,
                 program: str | None = None) -> None:
        self.path = os.path.join(directory, "sock")
        self.shm_name = f"ivshmem-lockstep-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        flags = ["-F", "-S", self.path, "-M", self.shm_name, "-l", str(shm_size),
                 "-n", str(vectors)]
        self.program = program
        self.stdout_path = os.path.join(directory, "server.out")
        with open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [program, "-v", *flags] if program else
                [sys.executable, "-m", "ivshmem_model", "server", *flags],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=out if program else subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        self.base = 0
        self.exited = False
        self._err: str | None = None
        deadline = time.monotonic() + 10 * TIMEOUT
        while not self._serving():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {self._stderr()}")
            time.sleep(0.005)
        self.base = self.fds()  # shm, listening socket, stdio (ours: wake-up pair, epoll)

    def _serving(self) -> bool:
        """Listening on the path (``/proc/net/unix``) and, for ours, in its select loop (an
        epoll fd exists); the C server binds and listens before its loop (S:337-346)."""
        if not _listening(self.path):
            return False
        if self.program:
            return True
        try:
            targets = [os.readlink(f"/proc/{self.proc.pid}/fd/{n}")
                       for n in os.listdir(f"/proc/{self.proc.pid}/fd")]
        except OSError:
            return False
        return "anon_inode:[eventpoll]" in targets

    def output(self) -> tuple[str, str]:
        """Stdout (the C server's) and stderr, once the process has exited."""
        out = Path(self.stdout_path).read_text(errors="replace") if self.program else ""
        return out, self._stderr()

    def _stderr(self) -> str:
        if self.proc.stderr is None or self.proc.poll() is None:
            return ""
        if self._err is None:
            self._err = self.proc.stderr.read().decode(errors="replace").strip()
        return self._err

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def terminate(self) -> int | None:
        """SIGTERM (``ivshmem_server_close``); the exit code, ``None`` on timeout."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            return None
        self.exited = True
        return code

    def stop(self) -> None:
        """Teardown: terminate, kill if needed, remove the shm object."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        wire.shm_unlink(self.shm_name)


# ---------------------------------------------------------------------------------------------
# Model-side views


def _object_view(state: SystemState, d: int) -> tuple[str | None, int]:
    if d < 0:
        return None, 0
    entry = state.fds[d]
    obj = state.objects[entry.obj] if entry is not None else None
    return (None, 0) if obj is None else (obj.kind, obj.size)


def _kind(kind: str | None, size: int) -> str | None:
    """Channel entries as ``fd_kind`` prints them."""
    return f"shm:{size}" if kind == "shm" else kind


def _channel_view(state: SystemState, e: int) -> list[tuple[int, str | None]]:
    return [(value, _kind(*_object_view(state, d))) for value, d in state.channels[e]]


def _device_view(device: Device | None) -> Any:
    """The device's state without descriptor numbers."""
    if device is None:
        return None
    peers = tuple((posn, p.nb_eventfds, len(p.eventfds), p.block) for posn, p in device.peers)
    return {
        "vm_id": device.vm_id, "nb_peers": device.nb_peers, "peers": peers,
        "peers_block": device.peers_block, "bar2": device.bar2, "bar2_size": device.bar2_size,
        "intrmask": device.intrmask, "intrstatus": device.intrstatus,
        "ioeventfds": tuple(m for m, _d in device.ioeventfds), "msix": device.msix,
        "msi_vectors": device.msi_vectors, "master": device.master,
    }


def _numbers_out(obs: list[Observation]) -> list[Observation]:
    """Observations with descriptor numbers in texts masked: the device's own model numbers
    its descriptors differently."""
    return [{k: _DESCRIPTOR.sub(r"\1 #", v) if isinstance(v, str) else v for k, v in o.items()}
            for o in obs]


_DESCRIPTOR = re.compile(r"(descriptor|fd) -?\d+")


def _held(state: SystemState, e: int) -> int:
    """Descriptors endpoint ``e``'s process holds: open and owned, or in flight to it."""
    owned = sum(1 for f in state.fds if f is not None and f.open and f.owner == e)
    flying = sum(1 for _v, d in state.channels[e] if d >= 0)
    return owned + flying


def _eventfd_slots(device: Device) -> list[tuple[int, int, int]]:
    return [(posn, i, d) for posn, peer in device.peers for i, d in enumerate(peer.eventfds)]


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    trace: Trace
    model_step: StepFn
    server: RealServer
    devices: list[SoftwareDevice]
    harness_base: int
    index: int = 0
    action: Action | None = None
    checks: int = 0
    records: list[StepRecord] = field(default_factory=list)

    def fail(self, check: str, detail: str, model: Any, real: Any) -> None:
        assert self.action is not None
        raise _Diverged(Divergence(self.index, self.action.to_json(), check, detail, model,
                                   real))

    def same(self, check: str, detail: str, model: Any, real: Any) -> None:
        self.checks += 1
        if model != real:
            self.fail(check, detail, model, real)

    # -- the real side of one step -------------------------------------------------------------

    def real_step(self, action: Action) -> list[Observation] | None:
        e = getattr(action, "endpoint", 0)
        if isinstance(action, Connect):
            if self.server.exited:
                return None
            return [] if self.devices[e].connect(self.server.path) else None
        if isinstance(action, Disconnect):
            return self.devices[e].close()
        if isinstance(action, ServerExit):
            if self.server.exited:
                return None
            code = self.server.terminate()
            self.same("enabled", "server exit code", 0, code)
            return []
        return self.devices[e].act(action)

    # -- comparisons ---------------------------------------------------------------------------

    def compare(self, state: SystemState, obs: list[Observation],
                real_obs: list[Observation]) -> None:
        action = self.action
        server_side = isinstance(action, Connect | Disconnect | ServerExit)
        if not server_side:
            self.same("observations", "the device's observations",
                      _numbers_out([o for o in obs if "send" not in o]), _numbers_out(real_obs))
        for e, dev in enumerate(self.devices):
            expected = [(o["send"]["value"], o["send"]["fd"]) for o in obs
                        if "send" in o and o["send"]["to"] == e]
            got = dev.receive(len(expected), QUIET if server_side else 0.0)
            shm = contrib_shm_size(self.trace.config.server.shm_size)
            got_kinds = [(v, "shm" if k == f"shm:{shm}" else k) for v, k in got]
            self.same("sends", f"messages received by endpoint {e}", expected, got_kinds)
        if self.server.exited:
            for dev in self.devices:
                dev.server_gone()
        for e, dev in enumerate(self.devices):
            self.same("channel", f"endpoint {e}'s unhandled messages",
                      _channel_view(state, e), dev.channel())
            ep, real_ep = state.endpoints[e], dev.state.endpoints[0]
            self.same("device", f"endpoint {e}'s fate", ep.fate, real_ep.fate)
            self.same("device", f"endpoint {e}'s device", _device_view(ep.device),
                      _device_view(real_ep.device))
            self.compare_eventfds(state, e, dev)
        self.compare_fds(state)
        self.compare_shm(state)

    def compare_eventfds(self, state: SystemState, e: int, dev: SoftwareDevice) -> None:
        device, real_device = state.endpoints[e].device, dev.device
        if device is None or real_device is None:
            return
        real_slots = {(posn, i): d for posn, i, d in _eventfd_slots(real_device)}
        for posn, i, d in _eventfd_slots(device):
            entry = state.fds[d] if 0 <= d < len(state.fds) else None
            obj = state.objects[entry.obj] if entry is not None and entry.open else None
            model = obj is not None and obj.kind == "eventfd" and obj.count > 0
            real_d = real_slots.get((posn, i))
            real_fd = None if real_d is None else dev.real_fd(real_d)
            real = real_fd is not None and readable(real_fd)
            self.same("eventfd", f"endpoint {e} peer {posn} vector {i} readable", model, real)

    def compare_fds(self, state: SystemState) -> None:
        for e, dev in enumerate(self.devices):
            held = dev.held() - (dev.sock is not None) - (dev.bar2 is not None)
            self.same("fds", f"descriptors endpoint {e} holds", _held(state, e), held)
        expected = self.harness_base + sum(dev.held() for dev in self.devices)
        self.same("fds", "the harness's /proc/self/fd", expected, _fd_count())
        if self.server.exited:
            self.same("fds", "server up", state.server.up, False)
            return
        want = self.server.base + sum(1 + len(p.eventfds) for p in state.server.peers)
        deadline = time.monotonic() + TIMEOUT
        while self.server.fds() != want and time.monotonic() < deadline:
            time.sleep(0.005)
        self.same("fds", "the server's /proc/PID/fd", want, self.server.fds())

    def compare_shm(self, state: SystemState) -> None:
        mapped = [(e, dev) for e, dev in enumerate(self.devices) if dev.bar2 is not None]
        for e, dev in mapped:
            device = state.endpoints[e].device
            assert dev.bar2 is not None
            self.same("shm", f"endpoint {e}'s BAR2 size",
                      None if device is None else device.bar2_size, len(dev.bar2))
        for e, dev in mapped:
            assert dev.bar2 is not None
            token = f"step {self.index} via endpoint {e}".encode().ljust(64, b".")
            offset = (64 * e) % max(1, len(dev.bar2) - 64)
            dev.bar2[offset:offset + 64] = token
            for other, odev in mapped:
                assert odev.bar2 is not None
                seen = bytes(odev.bar2[offset:offset + 64]) == token
                model = self.same_object(state, e, other)
                self.same("shm", f"endpoint {e}'s write seen by endpoint {other}", model, seen)

    @staticmethod
    def same_object(state: SystemState, a: int, b: int) -> bool:
        da, db = state.endpoints[a].device, state.endpoints[b].device
        if da is None or db is None:
            return False
        fa, fb = state.fds[da.bar2_fd], state.fds[db.bar2_fd]
        return fa is not None and fb is not None and fa.obj == fb.obj


def _listening(path: str) -> bool:
    """A listening unix socket is bound to ``path`` (``__SO_ACCEPTCON`` in ``/proc/net/unix``)."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return os.path.exists(path)
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
            return True
    return False


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _check_supported(trace: Trace) -> None:
    if trace.config.server.policy != "contrib":
        raise UnsupportedTraceError("lock-step runs the contrib policy only")
    if trace.config.clients:
        raise UnsupportedTraceError("lock-step runs QEMU endpoints only (no 'clients')")
    if trace.config.processes:
        raise UnsupportedTraceError("lock-step runs one process per endpoint (no 'processes'); "
                                    "--backend qemu runs several devices in one QEMU")
    for index, action in enumerate(trace.steps):
        if isinstance(action, ServerSend | ClientNotify):
            raise UnsupportedTraceError(f"steps[{index}]: {action.name} is not supported")


def run_lockstep(
    trace: Trace,
    variant: Variant = SEED,
    *,
    model_step: StepFn = step,
    device_factory: DeviceFactory = SoftwareDevice,
    server_program: str | None = None,
) -> LockstepReport:
    """Run ``trace`` on the model and on real objects side by side; the report names the first
    divergent step.  ``model_step`` and ``device_factory`` exist so tests can plant faults;
    ``server_program`` runs QEMU's C ``ivshmem-server`` instead of ours."""
    _check_supported(trace)
    config = trace.config
    state = initial_state(config, variant)
    with tempfile.TemporaryDirectory(prefix="ivshmem-lockstep-") as directory:
        server = RealServer(directory, config.server.vectors, config.server.shm_size,
                            server_program)
        harness_base = _fd_count()  # after the server: its stderr pipe is ours
        devices = [device_factory(config, variant, TIMEOUT) for _ in range(config.endpoints)]
        run = _Run(trace, model_step, server, devices, harness_base)
        try:
            for index, action in enumerate(trace.steps):
                run.index, run.action, run.checks = index, action, 0
                outcome = model_step(state, action)
                real_obs = run.real_step(action)
                run.same("enabled", "the step is enabled", outcome is not None,
                         real_obs is not None)
                if outcome is None or real_obs is None:
                    run.records.append(StepRecord(index, action.to_json(), False, [], 1))
                    continue
                state, obs = outcome
                run.compare(state, obs, real_obs)
                run.records.append(StepRecord(index, action.to_json(), True, obs, run.checks))
        except _Diverged as diverged:
            return LockstepReport(tuple(run.records), diverged.divergence)
        finally:
            for dev in devices:
                dev.release()
            server.stop()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(server.path)
    return LockstepReport(tuple(run.records))

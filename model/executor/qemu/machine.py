"""One QEMU process with its ivshmem devices (one, or one per endpoint of a
``config.processes`` group), and the guest side that drives them.

How QEMU is started and watched follows ``../shared/qemu-qtest-notes.md``: ``-S`` so no guest
code runs (only the main loop), qtest for port and memory accesses, QMP for reset, hot-plug and
unplug, stderr for QEMU's own error and assertion texts, the exit status for the fate.  glibc's
``MALLOC_CHECK_``/``MALLOC_PERTURB_`` make heap misuse show as an abort more often.

The guest side is what a driver does, written down once: find 1af4:1110, place the BARs, turn
on memory decoding and bus mastering, point every MSI-X table entry at a slot of guest RAM
(address ``MSI_BASE + 4*v``, data ``v + 1``) so that an MSI is a DMA write the backend reads
back (``take_msis``).  After a reset the guest programs the device again, as a driver would.

A process's k-th device (:class:`Function`) sits in slot ``SLOT + k`` with its BARs and MSI
slots below the first's (``BAR_STRIDE``); the model knows one guest layout, so configuration
reads and writes of a later device's BAR registers show its addresses as the first device's
(``properties/conform.py``, ABSTRACTIONS: a process's later devices).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from ivshmem_model.model.executor.qemu.qtest import QemuGone, QemuTimeout, Qmp, QmpError, QTest
from ivshmem_model.model.executor.wire import eventfd_field, fd_kind_of
from ivshmem_model.model.pci import REGISTERS
from ivshmem_model.model.state import BAR0_ADDR, BAR1_ADDR, BAR2_ADDR

DEFAULT_QEMU = "qemu-system-x86_64"
START_TIMEOUT = 10.0
STEP_TIMEOUT = 3.0  # a command QEMU does not answer in this time means its main loop is stuck

SLOT = 4  # the device's PCI slot on bus 0 (``addr=4``)
VENDOR_DEVICE = 0x1110_1AF4
# BAR0 registers (256 B), BAR1 MSI-X (at most 64 KiB), BAR2 shared memory (64-bit
# prefetchable; sizes up to 1 GiB fit): the guest layout the model assumes (model/state.py).
HOME = (BAR0_ADDR, BAR1_ADDR, BAR2_ADDR)
MSI_BASE = 0x0020_0000  # guest RAM that MSIs are written to, 4 bytes per vector
MSI_SLOTS = 64  # vectors whose MSI-X entries the guest programs
PCI_COMMAND_MEMORY_MASTER = 0x0006
ACPI_PCI_EJECT_PORT = 0xAE08  # PIIX4 ACPI hot-plug: write 1 << slot to eject
# How far below the first device's BARs the k-th device's are placed (BAR0, BAR1, BAR2): a
# later device's BAR2 may be at most 256 MiB
BAR_STRIDE = (0x0100_0000, 0x0100_0000, 0x1000_0000)
MAX_FUNCTIONS = 4
NO_DRIVER = "ivshmem-model-no-such-device"  # a device_add that fails at once (drain_rcu)
RCU_DRAINS = 6
# valgrind's memcheck reports an invalid read or write (use after free, out of bounds) that
# glibc lets pass; the first one ends the process, so it is the step's outcome.
# Children are followed so that a wrapper script (QEMU 10.0's, below) is checked through to
# the QEMU it execs; the host's own programs QEMU may start (``exec:`` migration) are not.
MEMCHECK = ("valgrind", "--tool=memcheck", "--error-exitcode=99", "--exit-on-first-error=yes",
            "--undef-value-errors=no", "--trace-children=yes",
            "--trace-children-skip=/bin/*,/usr/bin/*", "-q")

# QEMUs known by version name (``--qemu 7.2|10.0``): 7.2 is Debian 12's package on PATH, 10.0
# is Debian 13's, unpacked by ``scripts/install-qemu.sh 10.0`` into the cache with a wrapper
# that runs it on its own libraries.
QEMU_VERSIONS = ("7.2", "10.0")
_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)")


def qemu_cache() -> str:
    """Where ``scripts/install-qemu.sh`` unpacks the QEMUs that are not the host's."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("IVSHMEM_QEMU_CACHE") or os.path.join(base, "ivshmem-model")


def resolve_qemu(name: str | None = None) -> str:
    """The executable for ``--qemu NAME``: ``7.2`` (or nothing) is ``qemu-system-x86_64`` on
    PATH, ``10.0`` the cached wrapper, anything else a path or a command on PATH.  A name
    that is not installed is a :class:`FileNotFoundError` that says how to install it."""
    if name == "10.0":
        wrapper = os.path.join(qemu_cache(), "qemu-10.0", "bin", DEFAULT_QEMU)
        if not os.access(wrapper, os.X_OK):
            raise FileNotFoundError(f"QEMU 10.0 is not installed ({wrapper} is missing): run "
                                    "bash scripts/install-qemu.sh 10.0")
        return wrapper
    found = shutil.which(DEFAULT_QEMU if name in (None, "7.2") else str(name))
    if found is None:
        what = f"QEMU 7.2 ({DEFAULT_QEMU})" if name in (None, "7.2") else repr(name)
        raise FileNotFoundError(f"{what} not found: run bash scripts/install-qemu.sh "
                                "(--qemu takes 7.2, 10.0 or a path)")
    if name == "7.2" and qemu_version(found) != "7.2":
        raise FileNotFoundError(f"{found} is QEMU {qemu_version(found)}, not 7.2: give --qemu "
                                "a path")
    return found


def qemu_installed(name: str) -> bool:
    """Whether ``resolve_qemu(name)`` finds a QEMU (for tests that skip without it)."""
    try:
        resolve_qemu(name)
    except FileNotFoundError:
        return False
    return True


_versions: dict[str, str] = {}


def qemu_version(binary: str) -> str:
    """``MAJOR.MINOR`` of the QEMU ``binary`` is, as it says itself (``--version``)."""
    if binary not in _versions:
        try:
            text = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                  timeout=START_TIMEOUT, check=False).stdout
        except (OSError, subprocess.SubprocessError) as err:
            raise FileNotFoundError(f"{binary} does not run: {err}") from None
        found = _VERSION.search(text)
        if found is None:
            raise FileNotFoundError(f"{binary} --version does not name a QEMU version: "
                                    f"{text.strip()[:80]!r}")
        _versions[binary] = f"{found.group(1)}.{found.group(2)}"
    return _versions[binary]


def kvm_available() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@dataclass
class Outcome:
    """What became of a QEMU process (design §10): ``running``, ``exited`` (status 0),
    ``failed`` (an error exit, with QEMU's text), ``aborted`` (assertion text), ``crashed``
    (signal or heap error), ``hung`` (its main loop stopped answering)."""

    kind: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.kind}
        if self.reason:
            out["reason"] = self.reason
        return out


_PREFIX = re.compile(r"^[\w./-]*qemu-system-\w+: ")
_OPTION = re.compile(r"^-(device|object|chardev) [^:]*: ")
_ASSERTION = re.compile(r"(\w+): Assertion `(.*)' failed\.")
_INVALID = re.compile(r"^==\d+== (Invalid (read|write) of size \d+)")
_HEAP = ("free(): ", "double free", "malloc(): ", "corrupted", "munmap_chunk", "realloc(): ")


def error_text(line: str) -> str:
    """QEMU's message without the program name and the option it came from."""
    return _OPTION.sub("", _PREFIX.sub("", line))


def classify_exit(status: int, stderr: list[str]) -> Outcome:
    """The outcome of a process that ended with ``status`` after printing ``stderr``."""
    for line in stderr:
        found = _ASSERTION.search(line)
        if found:
            return Outcome("aborted", f"{found.group(1)}: Assertion `{found.group(2)}' failed.")
    invalid = next((line for line in stderr if _INVALID.search(line)), None)
    if invalid is not None:
        return Outcome("crashed", "memcheck: " + _INVALID.sub(r"\1", invalid).strip())
    heap = next((line for line in stderr if any(h in line for h in _HEAP)), None)
    if heap is not None:
        return Outcome("crashed", f"heap: {heap.strip()}")
    if status < 0:
        name = signal.Signals(-status).name
        if name != "SIGABRT":
            return Outcome("crashed", name)
        # abort() after an error message (kvm_mem_ioeventfd_add...): that message says why
        said = [error_text(line) for line in stderr
                if line.strip() and "warning:" not in line and not line.startswith("==")]
        return Outcome("aborted", said[-1] if said else name)
    if status == 0:
        return Outcome("exited")
    errors = [error_text(line) for line in stderr if line.strip()]
    return Outcome("failed", errors[-1] if errors else f"exit status {status}")


@dataclass
class DeviceSpec:
    """``-device`` (or ``device_add``) arguments and the objects they need."""

    driver: str
    options: dict[str, str] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)  # -object specs, e.g. a memory backend


@dataclass
class Function:
    """The process's ``index``-th ivshmem device: where the guest finds it and what it found
    when it programmed it (``setup_guest``)."""

    index: int
    spec: DeviceSpec | None = None  # the realized device, None while there is none
    msix_cap: int = 0
    pba_offset: int = 0
    msix_entries: int = 0
    bar2_size: int = 0

    @property
    def slot(self) -> int:
        return SLOT + self.index

    @property
    def devfn(self) -> int:
        return self.slot << 3

    @property
    def id(self) -> str:
        return f"dev{self.index}"

    @property
    def home(self) -> tuple[int, int, int]:
        return (HOME[0] - self.index * BAR_STRIDE[0], HOME[1] - self.index * BAR_STRIDE[1],
                HOME[2] - self.index * BAR_STRIDE[2])

    @property
    def msi_base(self) -> int:
        return MSI_BASE + self.index * 4 * MSI_SLOTS

    @property
    def misplaced(self) -> bool:
        """A later device's BAR2 too large for its place below the first's."""
        return self.index > 0 and self.bar2_size > BAR_STRIDE[2]

    def shown(self, bar: int, value: int) -> int:
        """A BAR register's value as the model shows it: this device's home as the first's."""
        if bar < 3 and value & ~0xF == self.home[bar]:
            return HOME[bar] | value & 0xF
        return value

    def placed(self, bar: int, value: int) -> int:
        """A value the trace writes to a BAR register: the first device's home is this one's."""
        if bar < 3 and value & ~0xF == HOME[bar]:
            return self.home[bar] | value & 0xF
        return value


class Machine:
    """A QEMU process: start, drive through qtest/QMP, observe stderr and the fate."""

    def __init__(self, workdir: str, name: str, binary: str, kvm: bool = False,
                 memcheck: bool = False, devices: int = 1) -> None:
        self.workdir = workdir
        self.memcheck = memcheck
        self.name = name
        self.binary = binary
        self.kvm = kvm
        self.proc: subprocess.Popen[bytes] | None = None
        self.qtest: QTest | None = None
        self.qmp: Qmp | None = None
        self.stderr_lines: list[str] = []
        self._reported = 0  # stderr lines already handed out by new_stderr
        self._stderr_buffer = b""
        self.outcome = Outcome("running")
        self.functions = [Function(k) for k in range(devices)]
        self.hotplugged = False
        self._qmp_path = ""
        self.incoming: str | None = None  # -incoming: a migration destination (migration.py)

    @property
    def step_timeout(self) -> float:
        return STEP_TIMEOUT * (10 if self.memcheck else 1)

    # -- process -------------------------------------------------------------------------------

    def launch(self, chardev_paths: list[str], device: DeviceSpec | None,
               index: int = 0) -> None:
        """Start QEMU and take its qtest connection; with ``device`` it is realized from the
        command line as device ``index``.  QEMU connects its chardevs (``c<k>`` to the k-th
        path) and qtest before it realizes devices, so the caller can now hand the chardev its
        setup messages, then :meth:`attach`."""
        qtest_path = os.path.join(self.workdir, f"{self.name}.qtest")
        self._qmp_path = os.path.join(self.workdir, f"{self.name}.qmp")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(qtest_path)
        listener.listen(1)
        args = [
            *(MEMCHECK if self.memcheck else ()), self.binary, "-machine", "pc",
            "-accel", "kvm" if self.kvm else "tcg", "-m", "64M", "-display", "none",
            "-nodefaults", "-S", "-monitor", "none",
            "-serial", "none", "-qtest", f"unix:{qtest_path}", "-qtest-log", "/dev/null",
            "-qmp", f"unix:{self._qmp_path},server=on,wait=off",
        ]
        for k, path in enumerate(chardev_paths):
            args += ["-chardev", f"socket,path={path},id=c{k}"]
        for k in range(max(1, len(chardev_paths))):
            args += ["-chardev", f"null,id=n{k}"]  # for chardev_backend "null"
        if device is not None:
            for obj in device.objects:
                args += ["-object", obj]
            args += ["-device", device_argument(device)]
            self.functions[index].spec = device
        if self.incoming is not None:
            args += ["-incoming", self.incoming]
        env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, cwd=self.workdir,
        )
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        try:
            conn = self._accept(listener)
        finally:
            listener.close()
        if conn is not None:
            self.qtest = QTest(conn, self.step_timeout)

    def attach(self) -> None:
        """Connect QMP once the main loop runs (realize is over), then set the guest up."""
        if self.qtest is None or self.proc is None:
            return
        qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    qmp.connect(self._qmp_path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if self.poll() is not None or time.monotonic() > deadline:
                        raise QemuGone("no QMP socket") from None
                    time.sleep(0.01)
            self.qmp = Qmp(qmp, self.step_timeout)
            self.qtest.sync()
        except QemuTimeout:
            qmp.close()
            self._hung()
            return
        except (QemuGone, OSError):
            qmp.close()
            self.wait_exit(2.0)
            return
        self.setup_guest()

    def _accept(self, listener: socket.socket) -> socket.socket | None:
        assert self.proc is not None
        listener.settimeout(0.02)
        deadline = time.monotonic() + START_TIMEOUT * (6 if self.memcheck else 1)
        while time.monotonic() < deadline:
            try:
                conn, _addr = listener.accept()
                return conn
            except TimeoutError:
                if self.poll() is not None:
                    return None
        self._hung()
        return None

    def drain_stderr(self) -> list[str]:
        """Lines QEMU wrote to stderr since the last call."""
        if self.proc is None or self.proc.stderr is None or self.proc.stderr.closed:
            return []
        fd = self.proc.stderr.fileno()
        with contextlib.suppress(BlockingIOError, ValueError, OSError):
            while select.select([fd], [], [], 0)[0]:
                data = os.read(fd, 65536)
                if not data:
                    break
                self._stderr_buffer += data
        *lines, self._stderr_buffer = self._stderr_buffer.split(b"\n")
        if self.proc.poll() is not None and self._stderr_buffer:
            lines.append(self._stderr_buffer)
            self._stderr_buffer = b""
        text = [line.decode(errors="replace") for line in lines]
        self.stderr_lines.extend(text)
        return text

    def new_stderr(self) -> list[str]:
        """Lines QEMU wrote since the last call, however they were read."""
        self.drain_stderr()
        lines = self.stderr_lines[self._reported:]
        self._reported = len(self.stderr_lines)
        return lines

    def poll(self) -> Outcome | None:
        """The outcome if the process has ended (recorded once), else ``None``."""
        if self.proc is None:
            return None
        if self.outcome.kind not in ("running",):
            return self.outcome
        status = self.proc.poll()
        if status is None:
            return None
        self.drain_stderr()
        self.outcome = classify_exit(status, self.stderr_lines)
        return self.outcome

    def wait_exit(self, timeout: float) -> Outcome | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcome = self.poll()
            if outcome is not None:
                return outcome
            time.sleep(0.01)
        return None

    def _hung(self) -> None:
        """QEMU stopped answering: ``hung`` if it spins (it uses the CPU), ``blocked`` if it
        waits (in realize, for messages a live server has not sent: the model's disabled
        step).  Either way the process is killed."""
        spinning = self.cpu_busy()
        self.outcome = Outcome("hung", "QEMU's main loop stopped answering and uses the CPU") \
            if spinning else Outcome("blocked", "QEMU waits and its main loop does not answer")
        self.kill()

    def cpu_busy(self, interval: float = 0.3) -> bool:
        """Whether the process spins over ``interval`` seconds: runnable (state ``R``) in most
        samples, or using a good share of a CPU.  The state tells a spinning process from a
        waiting one even when other processes leave it little CPU (a loaded CI machine)."""
        if self.proc is None:
            return False
        samples = 10
        before = _cpu_ticks(self.proc.pid)
        runnable = 0
        for _ in range(samples):
            time.sleep(interval / samples)
            runnable += _run_state(self.proc.pid) == "R"
        after = _cpu_ticks(self.proc.pid)
        ticks = interval * os.sysconf("SC_CLK_TCK")
        using = before is not None and after is not None and after - before > ticks / 4
        return runnable > samples // 2 or using

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.outcome.kind == "running" and self.poll() is None

    def kill(self) -> None:
        for conn in (self.qtest, self.qmp):
            if conn is not None:
                conn.close()
        self.qtest = self.qmp = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.drain_stderr()
            self.proc.stderr.close()

    # -- guarded access: a dead or stuck QEMU becomes an outcome, not an exception --------------

    def guard(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)``; ``None`` when QEMU died (outcome recorded) or hung (killed)."""
        try:
            return fn(*args)
        except QemuTimeout:
            if self.poll() is None:
                self._hung()
            return None
        except QemuGone:
            self.wait_exit(2.0)
            if self.poll() is None:
                self._hung()
            return None

    def sync(self) -> bool:
        if self.qtest is None:
            return False
        return self.guard(self.qtest.sync) is not None or self.alive

    # -- guest side ------------------------------------------------------------------------------

    def setup_guest(self, only: Function | None = None) -> None:
        """What a driver does after realize or reset: BARs, decoding, mastering, MSI-X entries
        (of device ``only``, or of every device the process has)."""
        q = self.qtest
        if q is None:
            return
        for fn in self.functions if only is None else [only]:
            if fn.spec is not None:
                self.guard(self._setup_guest, q, fn)

    def _setup_guest(self, q: QTest, fn: Function) -> None:
        devfn, home = fn.devfn, fn.home
        if q.cfg_read(devfn, 0) != VENDOR_DEVICE:
            return
        # Decoding off while BAR2 is sized (all ones in, the size mask out; both halves when
        # it is 64-bit) and placed: a half-written 64-bit BAR must never be mapped (under KVM
        # a RAM BAR at 0xffffffff80000000 fails KVM_SET_USER_MEMORY_REGION and QEMU aborts).
        q.cfg_write(devfn, 0x04, 0, 2)
        q.cfg_write(devfn, 0x18, 0xFFFF_FFFF)
        q.cfg_write(devfn, 0x1C, 0xFFFF_FFFF)
        mask = q.cfg_read(devfn, 0x18) & ~0xF
        if q.cfg_read(devfn, 0x18) & 0x4:
            mask |= q.cfg_read(devfn, 0x1C) << 32
            fn.bar2_size = (~mask & (1 << 64) - 1) + 1 if mask else 0
        else:
            fn.bar2_size = (~mask & 0xFFFF_FFFF) + 1 if mask else 0
        q.cfg_write(devfn, 0x10, home[0])
        q.cfg_write(devfn, 0x14, home[1])
        q.cfg_write(devfn, 0x18, home[2])
        q.cfg_write(devfn, 0x1C, 0)
        q.cfg_write(devfn, 0x04, PCI_COMMAND_MEMORY_MASTER, 2)
        fn.msix_cap = self._find_capability(q, devfn, 0x11)
        if not fn.msix_cap:
            return
        control = q.cfg_read(devfn, fn.msix_cap + 2, 2)
        fn.msix_entries = (control & 0x7FF) + 1
        fn.pba_offset = q.cfg_read(devfn, fn.msix_cap + 8) & ~7
        for v in range(min(fn.msix_entries, MSI_SLOTS)):
            entry = home[1] + 16 * v
            q.write(entry, fn.msi_base + 4 * v, 4)
            q.write(entry + 4, 0, 4)
            q.write(entry + 8, v + 1, 4)
        q.write_bytes(fn.msi_base, bytes(4 * MSI_SLOTS))

    @staticmethod
    def register_offset(fn: Function, name: str) -> int | None:
        """Where configuration register ``name`` is (model/pci.py); ``None`` if absent."""
        reg = REGISTERS[name]
        if reg.offset is not None:
            return reg.offset
        return fn.msix_cap + 2 if fn.msix_cap else None

    def config_read(self, fn: Function, name: str) -> int | None:
        offset, q = self.register_offset(fn, name), self.qtest
        if offset is None or q is None:
            return None
        value: int | None = self.guard(q.cfg_read, fn.devfn, offset, REGISTERS[name].size)
        if value is not None and name.startswith("bar"):
            value = fn.shown(int(name[3:]), value)
        return value

    def config_write(self, fn: Function, name: str, value: int) -> None:
        offset, q = self.register_offset(fn, name), self.qtest
        if offset is not None and q is not None:
            size = REGISTERS[name].size
            if name.startswith("bar"):
                value = fn.placed(int(name[3:]), value)
            self.guard(q.cfg_write, fn.devfn, offset, value & (1 << 8 * size) - 1, size)

    @staticmethod
    def _find_capability(q: QTest, devfn: int, cap_id: int) -> int:
        cap = q.cfg_read(devfn, 0x34, 1) & 0xFC
        while cap:
            header = q.cfg_read(devfn, cap, 2)
            if header & 0xFF == cap_id:
                return cap
            cap = header >> 8 & 0xFC
        return 0

    def take_msis(self) -> list[int]:
        """Vectors whose MSI arrived since the last call, of every device (each slot cleared
        after reading)."""
        q = self.qtest
        fired: list[int] = []
        for fn in self.functions:
            if q is None or not fn.msix_cap:
                continue
            data = self.guard(q.read_bytes, fn.msi_base, 4 * MSI_SLOTS)
            if not data:
                continue
            mine = [v for v in range(MSI_SLOTS) if data[4 * v: 4 * v + 4] != bytes(4)]
            if mine:
                self.guard(q.write_bytes, fn.msi_base, bytes(4 * MSI_SLOTS))
            fired.extend(mine)
        return fired

    def msix_control(self, fn: Function, enable: bool | None = None,
                     maskall: bool | None = None) -> None:
        q = self.qtest
        if q is None or not fn.msix_cap:
            return

        def write(q: QTest) -> None:
            control = q.cfg_read(fn.devfn, fn.msix_cap + 2, 2)
            if enable is not None:
                control = control & ~0x8000 | (0x8000 if enable else 0)
            if maskall is not None:
                control = control & ~0x4000 | (0x4000 if maskall else 0)
            q.cfg_write(fn.devfn, fn.msix_cap + 2, control, 2)

        self.guard(write, q)

    # -- QMP: hot-plug, unplug, reset ------------------------------------------------------------

    def device_add(self, fn: Function, device: DeviceSpec) -> str | None:
        """Hot-plug as device ``fn``; QEMU's error text when realize fails (QEMU keeps
        running)."""
        qmp = self.qmp
        if qmp is None:
            return None

        def add() -> bool:
            for obj in device.objects:
                qmp.execute("object-add", **object_arguments(obj))
            qmp.execute("device_add", driver=device.driver,
                        **typed_options(qmp, device.driver, device.options))
            return True

        try:
            if not self.guard(add):
                return None  # QEMU died or stopped answering: its outcome says which
        except QmpError as err:
            return str(err)
        fn.spec = device
        self.hotplugged = True
        self.setup_guest(fn)
        return None

    def device_del(self, fn: Function) -> None:
        """``device_del`` and the guest's ACPI eject; waits for ``DEVICE_DELETED``."""
        qmp, q = self.qmp, self.qtest
        if qmp is None or q is None:
            return

        def unplug() -> bool:
            qmp.execute("device_del", id=fn.id)
            q.outl(ACPI_PCI_EJECT_PORT, 1 << fn.slot)
            if qmp.wait_event("DEVICE_DELETED", STEP_TIMEOUT) is None and self.poll() is None:
                q.sync()
            return True

        try:
            if not self.guard(unplug):
                return
        except QmpError:
            return
        fn.spec = None
        fn.msix_cap = 0
        self.drain_rcu()

    def drain_rcu(self) -> None:
        """Wait for the RCU callbacks an unplug queued: the device's RAM block is freed, and
        its fd closed, from QEMU's RCU thread 10-60 ms later (util/rcu.c
        ``call_rcu_thread``, physmem.c ``reclaim_ramblock``), after the flat views that held
        it are themselves reclaimed.  The model's unplug ends with that fd closed, so the step
        ends there too: otherwise the next descriptor QEMU opens gets a number that depends on
        the race (``model.device.stale_fd_handler_poll``).  A ``device_add`` that fails calls
        ``drain_call_rcu`` before it answers (softmmu/qdev-monitor.c ``qmp_device_add``); a
        driver that does not exist fails before anything is created.  Again until a drain
        closes nothing more, at least twice: a callback one drain runs (a flat view's) may
        queue the RAM block's."""
        qmp = self.qmp
        if qmp is None:
            return

        def drain() -> bool:
            with contextlib.suppress(QmpError):
                qmp.execute("device_add", driver=NO_DRIVER)
            return True

        held = self.fd_kinds()
        for attempt in range(RCU_DRAINS):
            if not self.guard(drain):
                return
            again = self.fd_kinds()
            if again == held and attempt:
                return
            held = again

    def system_reset(self) -> None:
        """``system_reset``: every device resets; the guest programs each again."""
        qmp = self.qmp
        if qmp is None:
            return

        def reset() -> bool:
            qmp.execute("system_reset")
            qmp.wait_event("RESET", STEP_TIMEOUT)
            return True

        if self.guard(reset):
            self.setup_guest()

    def eventfd_ids(self) -> set[int]:
        """The kernel ids of the eventfds the process holds (``eventfd-id`` in fdinfo)."""
        ids: set[int] = set()
        if self.proc is None or self.proc.poll() is not None:
            return ids
        with contextlib.suppress(OSError):
            for name in os.listdir(f"/proc/{self.proc.pid}/fdinfo"):
                ident = eventfd_field(int(name), "eventfd-id", self.proc.pid)
                if ident is not None:
                    ids.add(ident)
        return ids

    def fd_kinds(self) -> dict[str, int]:
        """Descriptors the process holds, counted by kind (``/proc/PID/fd``)."""
        counts: dict[str, int] = {}
        if self.proc is None or self.proc.poll() is not None:
            return counts
        base = f"/proc/{self.proc.pid}/fd"
        with contextlib.suppress(OSError):
            for name in os.listdir(base):
                with contextlib.suppress(OSError):
                    kind = fd_kind_of(os.readlink(f"{base}/{name}"))
                    counts[kind] = counts.get(kind, 0) + 1
        return counts


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks (``/proc/PID/stat`` fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def _run_state(pid: int) -> str:
    """The process's scheduler state (``/proc/PID/stat`` field 3): ``R`` runnable, ``S``..."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


# Properties whose text form QEMU parses itself (``addr=4`` is slot 4; the number 4 would be
# devfn 4), so they stay strings in ``device_add``.
_TEXT_PROPERTIES = ("addr", "id")


def typed_options(qmp: Qmp, driver: str, options: dict[str, str]) -> dict[str, Any]:
    """``-device`` options as ``device_add`` arguments of the property's own type.  QEMU 7.2
    turned QMP arguments into strings first and accepted ``"vectors": "1"``; QEMU 10.0
    device_add visits them as typed JSON ("Parameter 'vectors' expects uint64"), so a bool
    property takes true/false and an integer property a number, which 7.2 accepts too."""
    try:
        listed = qmp.execute("device-list-properties", typename=driver) or []
    except QmpError:  # no such type: device_add itself says so, in its own words
        listed = []
    kinds = {prop["name"]: str(prop.get("type", "")) for prop in listed}
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = kinds.get(key, "str")
        if key in _TEXT_PROPERTIES:
            out[key] = value
        elif kind == "bool" and value in ("on", "off"):
            out[key] = value == "on"
        elif kind.startswith(("uint", "int", "size")) and value.lstrip("-").isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return out


def device_argument(device: DeviceSpec) -> str:
    return ",".join([device.driver, *(f"{k}={v}" for k, v in device.options.items())])


def object_arguments(spec: str) -> dict[str, Any]:
    """``qom-type,key=value,...`` as ``object-add`` arguments."""
    qom_type, *pairs = spec.split(",")
    args: dict[str, Any] = {"qom-type": qom_type}
    for pair in pairs:
        key, _eq, value = pair.partition("=")
        args[key] = int(value) if key == "size" else (value == "on" if value in ("on", "off")
                                                        else value)
    return args

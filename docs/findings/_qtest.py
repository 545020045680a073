"""What every reproducer in this folder shares: a QEMU under qtest and QMP, a scripted ivshmem
server on a unix socket, the guest's PCI and MSI-X programming, and the verdict.

Standard library only; the reproducers import it from their own folder, so each one runs as
``python3 docs/findings/NAME.py [QEMU]`` from anywhere.  Exit status of a reproducer:
0 the finding reproduced, 1 it did not, 2 the reproducer could not run (no QEMU, no KVM, a
QEMU that did not start); its last line says which, starting ``REPRODUCED:``,
``NOT REPRODUCED:`` or ``SETUP ERROR:``.

How QEMU is driven (as ``model/executor/qemu/`` does): ``-S`` so no guest code runs and only
the main loop does; the guest is this script, through qtest (ports, memory); hot-plug and
unplug through QMP; the server's messages are 8-byte little-endian integers, an fd with
SCM_RIGHTS.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

REPRODUCED, NOT_REPRODUCED, SETUP_ERROR = 0, 1, 2
ANSWER = 3.0  # seconds: a QEMU that does not answer a command in this time is stuck

SLOT = 4  # device_add ... addr=4
DEVFN = SLOT << 3
BAR0, BAR1, BAR2 = 0xFEBF_0000, 0xFEB0_0000, 0x8000_0000  # registers, MSI-X, shared memory
MSI_ADDRESS = 0x0020_0000  # guest RAM an MSI is written to
ACPI_EJECT = 0xAE08  # PIIX4 hot-plug: write 1 << slot
TIOCOUTQ = 0x5411
FATAL_TO_STDERR = {"LIBC_FATAL_STDERR_": "1"}  # glibc's heap checks say why on stderr
VALGRIND = ("valgrind", "--tool=memcheck", "--error-exitcode=99", "--exit-on-first-error=yes",
            "--undef-value-errors=no", "--trace-children=yes",
            "--trace-children-skip=/bin/*,/usr/bin/*", "-q")


class SetupError(Exception):
    """The reproducer could not do its part (exit 2): nothing is said about the finding."""


class Gone(Exception):  # noqa: N818 - a condition
    """QEMU closed a connection or stopped answering."""


class NotReproduced(Exception):  # noqa: N818 - a verdict
    """QEMU did something else than the finding says, at a step before the last (exit 1)."""


def memfd(size: int) -> int:
    """Shared memory as a server hands it out: a memfd of ``size`` bytes."""
    fd = os.memfd_create("ivshmem")
    os.ftruncate(fd, size)
    return fd


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


class Qemu:
    """One ``qemu-system-x86_64 -machine pc -S`` with qtest, QMP and (``server``) a chardev
    ``c0`` connected to our unix socket, whose accepted end is :attr:`peer`."""

    def __init__(self, binary: str, *, kvm: bool = False, valgrind: bool = False) -> None:
        if shutil.which(binary) is None:
            raise SetupError(f"{binary}: no such QEMU")
        if kvm and not kvm_usable():
            raise SetupError("this finding needs KVM and /dev/kvm is not usable here")
        if valgrind and shutil.which("valgrind") is None:
            raise SetupError("this finding is shown by valgrind's memcheck: install valgrind")
        self.work = tempfile.mkdtemp(prefix="ivshmem-finding-")
        self.patience = 10.0 if valgrind else 1.0  # valgrind runs QEMU some ten times slower
        self.stderr: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._qmp: _Lines | None = None
        self.msix_cap = 0
        listener, chardev = self._listen("qtest"), self._listen("server")
        self._qmp_path = os.path.join(self.work, "qmp")
        args = [*(VALGRIND if valgrind else ()), binary, "-machine", "pc",
                "-accel", "kvm" if kvm else "tcg", "-m", "64M", "-display", "none",
                "-nodefaults", "-S", "-monitor", "none", "-serial", "none",
                "-qtest", f"unix:{self.work}/qtest", "-qtest-log", "/dev/null",
                "-qmp", f"unix:{self._qmp_path},server=on,wait=off",
                "-chardev", f"socket,path={self.work}/server,id=c0"]
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         env={**os.environ, **FATAL_TO_STDERR})
        except OSError as err:
            raise SetupError(f"cannot start {binary}: {err}") from None
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        self.qtest = _Lines(self._accept(listener), self.patience)
        self.peer: socket.socket | None = self._accept(chardev)

    # -- process ------------------------------------------------------------------------------

    def _listen(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(self.work, name))
        sock.listen(4)
        return sock

    def _accept(self, listener: socket.socket) -> socket.socket:
        listener.settimeout(0.05)
        deadline = time.monotonic() + 10 * self.patience
        try:
            while time.monotonic() < deadline:
                try:
                    return listener.accept()[0]
                except TimeoutError:
                    if self.proc.poll() is not None:
                        break
            raise SetupError("QEMU did not start: " + " | ".join(self.stderr[-3:]))
        finally:
            listener.close()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip("\n"))

    def wait(self, timeout: float) -> int | None:
        """QEMU's exit status once it has ended within ``timeout`` (negative: a signal)."""
        try:
            return self.proc.wait(timeout * self.patience)
        except subprocess.TimeoutExpired:
            return None

    def fate(self) -> str | None:
        """How QEMU ended (``None`` while it runs): the signal, and for an abort the
        assertion or heap check that called it."""
        status = self.wait(1.0)
        if status is None:
            return None
        self._stderr_reader.join(1.0)  # until it has read what QEMU wrote last
        text = "\n".join(self.stderr)
        invalid = re.search(r"(Invalid (read|write) of size \d+)\n==\d+==\s+at 0x\w+: (\w+)",
                            text)
        if invalid:
            return f"memcheck: {invalid.group(1)} in {invalid.group(3)}"
        if status >= 0:
            return f"exit status {status}"
        name = signal.Signals(-status).name
        assertion = re.search(r"(\w+): Assertion `(.*)' failed", text)
        if name == "SIGABRT" and assertion:
            return f"SIGABRT in {assertion.group(1)}: {assertion.group(2)}"
        heap = re.search(r"^(.*(free\(\)|malloc\(\)|double free|corrupted|munmap_chunk).*)$",
                         text, re.M)
        if heap:
            return f"{name} after {heap.group(1)}"
        return name

    def cpu_seconds(self) -> float:
        """User plus system time QEMU has used (``/proc/PID/stat``)."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run_state(self) -> str:
        """The scheduler's state of QEMU: ``R`` runnable, ``S`` sleeping, ..."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]

    def eventfd_ids(self) -> list[int]:
        """The kernel's ids of the eventfds QEMU holds (``eventfd-id`` in fdinfo)."""
        ids = []
        base = f"/proc/{self.proc.pid}/fdinfo"
        for name in os.listdir(base):
            try:
                with open(f"{base}/{name}") as info:
                    found = re.search(r"^eventfd-id:\s*(\d+)", info.read(), re.M)
            except OSError:
                continue
            if found:
                ids.append(int(found.group(1)))
        return sorted(ids)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for sock in (self.qtest.sock, self.peer, self._qmp.sock if self._qmp else None):
            if sock is not None:
                sock.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Qemu:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    @contextlib.contextmanager
    def until_gone(self) -> Iterator[None]:
        """Steps during which QEMU is expected to die: its going away ends them quietly."""
        with contextlib.suppress(Gone):
            yield

    def verdict(self, when: str, sign: str) -> tuple[bool, str]:
        """Whether QEMU died (``when``, e.g. "in realize") of a fate that says ``sign``."""
        fate = self.fate()
        if fate is None:
            return False, f"QEMU runs on {when}"
        return sign in fate, f"QEMU died {when}: {fate}"

    # -- the server ---------------------------------------------------------------------------

    def send(self, value: int, fd: int | None = None) -> None:
        """One server message: ``value`` as 8 bytes little-endian, ``fd`` with SCM_RIGHTS."""
        assert self.peer is not None
        data = struct.pack("<q", value)
        rights = [] if fd is None else [
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        self.peer.sendmsg([data], rights)

    def setup(self, own_id: int = 0, shm_size: int = 4 << 20) -> None:
        """What a server sends first: protocol version 0, the ID, the shared memory."""
        self.send(0)
        self.send(own_id)
        self.send(-1, memfd(shm_size))

    def processed(self) -> None:
        """Wait until QEMU has read every message sent, and its handlers have run."""
        assert self.peer is not None
        deadline = time.monotonic() + ANSWER * self.patience
        while True:
            queued = fcntl.ioctl(self.peer.fileno(), TIOCOUTQ, b"\0\0\0\0")
            if struct.unpack("i", queued)[0] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.sync()

    # -- qtest: the guest ---------------------------------------------------------------------

    def cmd(self, line: str) -> str:
        reply = self.qtest.ask(line.encode()).decode()
        if not reply.startswith("OK"):
            raise Gone(f"qtest {line!r}: {reply}")
        return reply[2:].strip()

    def sync(self) -> None:
        self.cmd("readb 0x0")

    def cfg_read(self, reg: int, size: int = 4) -> int:
        self.cmd(f"outl 0xcf8 {0x8000_0000 | DEVFN << 8 | reg & 0xFC:#x}")
        op = {1: "inb", 2: "inw", 4: "inl"}[size]
        return int(self.cmd(f"{op} {0xCFC + (reg & 3):#x}"), 16)

    def cfg_write(self, reg: int, value: int, size: int = 4) -> None:
        self.cmd(f"outl 0xcf8 {0x8000_0000 | DEVFN << 8 | reg & 0xFC:#x}")
        op = {1: "outb", 2: "outw", 4: "outl"}[size]
        self.cmd(f"{op} {0xCFC + (reg & 3):#x} {value:#x}")

    def program_device(self) -> int:
        """What a driver does: place the BARs, enable decoding and bus mastering, point
        every MSI-X entry at guest RAM.  Returns the MSI-X capability's offset (0: none)."""
        if self.cfg_read(0) != 0x1110_1AF4:
            raise SetupError("no ivshmem device at slot 4")
        for reg, base in ((0x10, BAR0), (0x14, BAR1), (0x18, BAR2), (0x1C, 0)):
            self.cfg_write(reg, base)
        self.cfg_write(0x04, 0x0006, 2)  # memory decoding, bus master
        cap = self.cfg_read(0x34, 1) & 0xFC
        while cap and self.cfg_read(cap, 1) != 0x11:
            cap = self.cfg_read(cap + 1, 1) & 0xFC
        if cap:
            for vector in range((self.cfg_read(cap + 2, 2) & 0x7FF) + 1):
                self.cmd(f"writel {BAR1 + 16 * vector:#x} {MSI_ADDRESS + 4 * vector:#x}")
                self.cmd(f"writel {BAR1 + 16 * vector + 8:#x} {vector + 1:#x}")
        self.msix_cap = cap
        return cap

    def msix_enable(self, on: bool) -> None:
        """The MSI-X Enable bit in the capability's message control."""
        control = self.cfg_read(self.msix_cap + 2, 2) & ~0x8000
        self.cfg_write(self.msix_cap + 2, control | (0x8000 if on else 0), 2)

    def msix_unmask(self, vector: int) -> None:
        """Clear the mask bit of ``vector``'s MSI-X table entry."""
        self.cmd(f"writel {BAR1 + 16 * vector + 12:#x} 0x0")

    # -- QMP ----------------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> dict[str, Any]:
        """The answer to ``command``: ``{"return": ...}`` or ``{"error": ...}``."""
        if self._qmp is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self._qmp_path)
            self._qmp = _Lines(sock, self.patience)
            self._qmp.line()  # the greeting
            self.qmp("qmp_capabilities")
        line = self._qmp.ask(json.dumps({"execute": command, "arguments": arguments}).encode())
        while True:
            reply: dict[str, Any] = json.loads(line)
            if "event" not in reply:
                return reply
            self._events.append(reply)
            line = self._qmp.line()

    def device_add(self, **properties: Any) -> str | None:
        """Hot-plug the device at slot 4 as ``dev0``; QEMU's error text if realize failed."""
        reply = self.qmp("device_add", id="dev0", addr=str(SLOT), **properties)
        return str(reply["error"]["desc"]) if "error" in reply else None

    def plug(self, vectors: int = 1) -> None:
        """Hot-plug ``ivshmem-doorbell`` on chardev ``c0``, which must realize."""
        error = self.device_add(driver="ivshmem-doorbell", chardev="c0", vectors=vectors)
        if error is not None:
            raise NotReproduced(f"device_add failed: {error}")

    def unplug(self) -> None:
        """``device_del`` and the guest's ACPI eject, then wait for ``DEVICE_DELETED``."""
        self.qmp("device_del", id="dev0")
        self.cmd(f"outl {ACPI_EJECT:#x} {1 << SLOT:#x}")
        deadline = time.monotonic() + ANSWER * self.patience
        while not any(e["event"] == "DEVICE_DELETED" for e in self._events):
            if time.monotonic() > deadline:
                raise SetupError("the device was not unplugged")
            self.qmp("query-status")


class _Lines:
    """A line-oriented connection to QEMU (qtest, QMP); :class:`Gone` when QEMU closes it or
    does not answer in time."""

    def __init__(self, sock: socket.socket, patience: float) -> None:
        self.sock = sock
        self.patience = patience
        self.buffer = b""

    def ask(self, data: bytes) -> bytes:
        """Send one line, return the next line QEMU sends."""
        try:
            self.sock.sendall(data + b"\n")
        except OSError as err:
            raise Gone(str(err)) from None
        return self.line()

    def line(self) -> bytes:
        deadline = time.monotonic() + ANSWER * self.patience
        while b"\n" not in self.buffer:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise Gone("QEMU does not answer") from None
            except OSError as err:
                raise Gone(str(err)) from None
            if not chunk:
                raise Gone("QEMU closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def main(reproduce: Callable[[str], tuple[bool, str]]) -> None:
    """Run ``reproduce(qemu_binary)``, which says whether the finding showed and what was
    seen; print the verdict and exit with its status."""
    if len(sys.argv) > 2 or sys.argv[1:] in (["-h"], ["--help"]):
        print(f"usage: {sys.argv[0]} [QEMU]   (default: qemu-system-x86_64 on PATH)")
        sys.exit(SETUP_ERROR)
    binary = sys.argv[1] if len(sys.argv) > 1 else "qemu-system-x86_64"
    try:
        shown, seen = reproduce(binary)
    except SetupError as err:
        print(f"SETUP ERROR: {err}")
        sys.exit(SETUP_ERROR)
    except Gone as err:  # QEMU died or stopped answering where the finding does not say so
        shown, seen = False, f"QEMU went away at an unexpected point: {err}"
    except NotReproduced as err:
        shown, seen = False, str(err)
    print(("REPRODUCED: " if shown else "NOT REPRODUCED: ") + seen)
    sys.exit(REPRODUCED if shown else NOT_REPRODUCED)

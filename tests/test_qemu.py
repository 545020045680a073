"""Debian's QEMU (``qemu-system-x86_64``, 7.2) on our server, driven over qtest.

Skipped, with the reason, when QEMU is not installed (``scripts/install-qemu.sh`` installs it).
The guest side is the qtest protocol (``system/qtest.c``): ``outl``/``inl`` on the PCI
configuration ports 0xcf8/0xcfc to find the ivshmem-doorbell (1af4:1110) and program its BARs,
``readl``/``writel``/``read``/``write`` on guest-physical addresses.  As in libqtest, the test
listens on a socket and QEMU connects to it (``-qtest unix:PATH``).  Debian's build has no
``qtest`` accelerator (``-accel qtest: invalid accelerator``), so the machine runs TCG, stopped
(``-S``): no guest code runs, only the main loop and qtest.  Facts §3.2, §3.3, §5.
"""

from __future__ import annotations

import mmap
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.client import Client
from ivshmem_model.model.executor.device import readable
from ivshmem_model.model.executor.lockstep import RealServer

QEMU = "qemu-system-x86_64"
TIMEOUT = 10.0
SHM_SIZE = 1 << 20
VECTORS = 2

BAR0 = 0xFEBF0000  # registers, 256 B
BAR1 = 0xFEBF1000  # MSI-X: table at 0, PBA at 2048, 4 KiB
BAR2 = 0xE0000000  # shared memory, 1 MiB, 64-bit prefetchable
INTRMASK, INTRSTATUS, IVPOSITION, DOORBELL = 0, 4, 8, 12
PBA = BAR1 + 2048

pytestmark = pytest.mark.skipif(
    shutil.which(QEMU) is None, reason=f"{QEMU} not installed: run scripts/install-qemu.sh"
)


class QTest:
    """One qtest connection: a command line out, an ``OK ...`` line back."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.buffer = b""

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        while True:
            while b"\n" not in self.buffer:
                data = self.sock.recv(4096)
                if not data:
                    raise ConnectionError(f"QEMU closed qtest during {line!r}")
                self.buffer += data
            reply, self.buffer = self.buffer.split(b"\n", 1)
            text = reply.decode()
            if text.startswith("IRQ"):
                continue  # asynchronous, only with irq_intercept
            if not text.startswith("OK"):
                raise AssertionError(f"{line!r}: {text}")
            return text[2:].strip()

    def value(self, line: str) -> int:
        return int(self.cmd(line), 16)

    # -- PCI configuration space (mechanism #1) ----------------------------------------------

    def cfg_read(self, devfn: int, reg: int) -> int:
        self.cmd(f"outl 0xcf8 {0x80000000 | devfn << 8 | reg:#x}")
        return self.value("inl 0xcfc")

    def cfg_write(self, devfn: int, reg: int, value: int) -> None:
        self.cmd(f"outl 0xcf8 {0x80000000 | devfn << 8 | reg:#x}")
        self.cmd(f"outl 0xcfc {value:#x}")

    def readl(self, addr: int) -> int:
        return self.value(f"readl {addr:#x}")

    def writel(self, addr: int, value: int) -> None:
        self.cmd(f"writel {addr:#x} {value:#x}")

    def read(self, addr: int, size: int) -> bytes:
        return bytes.fromhex(self.cmd(f"read {addr:#x} {size:#x}")[2:])

    def write(self, addr: int, data: bytes) -> None:
        self.cmd(f"write {addr:#x} {len(data):#x} 0x{data.hex()}")


@dataclass
class Guest:
    qtest: QTest
    devfn: int
    proc: subprocess.Popen[bytes]

    def msix_cap(self) -> int:
        cap = self.qtest.cfg_read(self.devfn, 0x34) & 0xFC
        while cap:
            header = self.qtest.cfg_read(self.devfn, cap)
            if header & 0xFF == 0x11:
                return cap
            cap = header >> 8 & 0xFC
        raise AssertionError("no MSI-X capability")

    def msix_enable(self) -> None:
        cap = self.msix_cap()
        control = self.qtest.cfg_read(self.devfn, cap) >> 16
        self.qtest.cfg_write(self.devfn, cap, (control | 0x8000) << 16 | 0x11)


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def find_ivshmem(qtest: QTest) -> int:
    for slot in range(32):
        if qtest.cfg_read(slot << 3, 0) == 0x1110_1AF4:
            return slot << 3
    raise AssertionError("no 1af4:1110 device on bus 0")


def boot(directory: str, server: RealServer) -> Guest:
    """QEMU with an ivshmem-doorbell on ``server``; BARs programmed, memory decoding on."""
    qtsock_path = os.path.join(directory, "qtest")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(qtsock_path)
    listener.listen(1)
    listener.settimeout(0.05)
    proc = subprocess.Popen(
        [QEMU, "-machine", "pc", "-accel", "tcg", "-display", "none", "-nodefaults", "-S",
         "-monitor", "none", "-serial", "none",
         "-chardev", f"socket,path={server.path},id=c0",
         "-device", f"ivshmem-doorbell,chardev=c0,vectors={VECTORS}",
         "-qtest", f"unix:{qtsock_path}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            try:
                conn, _addr = listener.accept()
                break
            except TimeoutError:
                if proc.poll() is None and time.monotonic() < deadline:
                    continue
            stop(proc)
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"QEMU did not connect to qtest: {err.strip()}")
    finally:
        listener.close()
    qtest = QTest(conn)
    devfn = find_ivshmem(qtest)
    qtest.cfg_write(devfn, 0x10, BAR0)
    qtest.cfg_write(devfn, 0x14, BAR1)
    qtest.cfg_write(devfn, 0x18, BAR2 & 0xFFFFFFFF)
    qtest.cfg_write(devfn, 0x1C, BAR2 >> 32)
    qtest.cfg_write(devfn, 0x04, 0x0006)  # memory space, bus master
    return Guest(qtest, devfn, proc)


@pytest.fixture
def setup() -> Iterator[tuple[RealServer, Guest]]:
    with tempfile.TemporaryDirectory(prefix="ivshmem-qemu-") as directory:
        server = RealServer(directory, VECTORS, SHM_SIZE)
        guest: Guest | None = None
        try:
            guest = boot(directory, server)
            yield server, guest
        finally:
            if guest is not None:
                guest.qtest.sock.close()
                stop(guest.proc)
                if guest.proc.stderr is not None:
                    guest.proc.stderr.close()
            server.stop()


def test_ivposition_is_the_first_id_and_the_bars_are_where_we_put_them(
    setup: tuple[RealServer, Guest],
) -> None:
    _server, guest = setup
    q = guest.qtest
    assert q.cfg_read(guest.devfn, 0x08) >> 8 == 0x050000  # class: memory controller, RAM
    assert q.cfg_read(guest.devfn, 0x08) & 0xFF == 1  # revision 1
    assert q.cfg_read(guest.devfn, 0x18) & 0xF == 0xC  # 64-bit prefetchable
    assert q.readl(BAR0 + IVPOSITION) == 0
    q.writel(BAR0 + INTRMASK, 0xFFFFFFFF)
    assert q.readl(BAR0 + INTRMASK) == 0xFFFFFFFF
    q.writel(BAR0 + INTRSTATUS, 1)
    assert [q.readl(BAR0 + INTRSTATUS), q.readl(BAR0 + INTRSTATUS)] == [1, 0]  # read clears


def test_shared_memory_is_seen_by_both_sides(setup: tuple[RealServer, Guest]) -> None:
    server, guest = setup
    fd = os.open(os.path.join(wire.SHM_DIR, server.shm_name), os.O_RDWR)
    try:
        with mmap.mmap(fd, SHM_SIZE) as shm:
            shm[4096:4096 + 16] = b"written by host!"
            assert guest.qtest.read(BAR2 + 4096, 16) == b"written by host!"
            guest.qtest.write(BAR2 + SHM_SIZE - 16, b"written by guest")
            assert shm[SHM_SIZE - 16:] == b"written by guest"
    finally:
        os.close(fd)


def test_doorbells_between_qemu_and_a_client(setup: tuple[RealServer, Guest]) -> None:
    server, guest = setup
    q = guest.qtest
    with Client(server.path, timeout=TIMEOUT) as client:
        client.connect()
        assert client.our_id == 1  # QEMU came first and got 0
        assert client.wait_until(
            lambda c: c.search_peer(0) is not None and len(c.local.vectors) == VECTORS
            and len(c.search_peer(0).vectors) == VECTORS,  # type: ignore[union-attr]
            TIMEOUT,
        )
        qemu_vectors = client.search_peer(0)
        assert qemu_vectors is not None

        # QEMU -> client: a DOORBELL write rings the client's vector 1.
        assert wait_for(lambda: _rings_client(q, client))

        # Client -> QEMU with MSI-X disabled: QEMU reads the eventfd and loses the event.
        client.notify(0, 0)
        assert wait_for(lambda: not readable(qemu_vectors.vectors[0]))
        guest.msix_enable()
        assert q.readl(PBA) == 0, "an event rung before MSI-X was enabled is lost"

        # With MSI-X enabled and the entries masked (reset state), events become pending bits.
        client.notify(0, 1)
        assert wait_for(lambda: q.readl(PBA) == 0b10)
        client.notify(0, 0)
        assert wait_for(lambda: q.readl(PBA) == 0b11)


def _rings_client(q: QTest, client: Client) -> bool:
    """Ring the client's vector 1 once QEMU knows the client; True when the event arrived.
    QEMU handles the client's eventfds asynchronously, so early doorbells are ignored."""
    q.writel(BAR0 + DOORBELL, 1 << 16 | 1)
    ready, _w, _x = select.select([client.local.vectors[1]], [], [], 0.05)
    if not ready:
        return False
    events = client.poll(0)
    return bool(events) and all(vector == 1 for vector, _count in events)

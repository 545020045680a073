"""The two control connections to a QEMU: qtest (``system/qtest.c``, one line per command,
``OK ...`` back) and QMP (JSON, with asynchronous events)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class QemuGone(Exception):  # noqa: N818 - a condition, not a bug
    """QEMU closed a control connection (it exited or crashed)."""


class QemuTimeout(Exception):  # noqa: N818
    """QEMU did not answer in time: its main loop is blocked or spinning."""


class _Lines:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuTimeout("no answer")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise QemuTimeout("no answer") from None
            except OSError as err:
                raise QemuGone(str(err)) from None
            if not data:
                raise QemuGone("connection closed")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


class QTest:
    """qtest: ``outl``/``inl`` for PCI configuration, ``readl``/``writel`` for memory."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.lines = _Lines(sock)
        self.timeout = timeout

    def close(self) -> None:
        self.lines.sock.close()

    def cmd(self, line: str, timeout: float | None = None) -> str:
        try:
            self.lines.sock.sendall(line.encode() + b"\n")
        except OSError as err:
            raise QemuGone(str(err)) from None
        while True:
            text = self.lines.line(self.timeout if timeout is None else timeout).decode()
            if text.startswith("IRQ"):
                continue  # asynchronous, only with irq_intercept
            if not text.startswith("OK"):
                raise QemuGone(f"qtest {line!r}: {text}")
            return text[2:].strip()

    def value(self, line: str) -> int:
        return int(self.cmd(line), 16)

    def sync(self, timeout: float | None = None) -> None:
        """One round trip: every handler QEMU's main loop had ready has run."""
        self.cmd("readb 0x0", timeout)  # a read of guest RAM: no side effect

    # -- guest memory and ports ----------------------------------------------------------------

    def read(self, addr: int, size: int) -> int:
        op = {1: "readb", 2: "readw", 4: "readl", 8: "readq"}[size]
        return self.value(f"{op} {addr:#x}")

    def write(self, addr: int, value: int, size: int) -> None:
        op = {1: "writeb", 2: "writew", 4: "writel", 8: "writeq"}[size]
        self.cmd(f"{op} {addr:#x} {value:#x}")

    def read_bytes(self, addr: int, size: int) -> bytes:
        return bytes.fromhex(self.cmd(f"read {addr:#x} {size:#x}")[2:])

    def write_bytes(self, addr: int, data: bytes) -> None:
        self.cmd(f"write {addr:#x} {len(data):#x} 0x{data.hex()}")

    def outl(self, port: int, value: int) -> None:
        self.cmd(f"outl {port:#x} {value:#x}")

    # -- PCI configuration space, mechanism #1 -------------------------------------------------

    def cfg_read(self, devfn: int, reg: int, size: int = 4) -> int:
        self.cmd(f"outl 0xcf8 {0x80000000 | devfn << 8 | reg & 0xFC:#x}")
        op = {1: "inb", 2: "inw", 4: "inl"}[size]
        return self.value(f"{op} {0xCFC + (reg & 3):#x}")

    def cfg_write(self, devfn: int, reg: int, value: int, size: int = 4) -> None:
        self.cmd(f"outl 0xcf8 {0x80000000 | devfn << 8 | reg & 0xFC:#x}")
        op = {1: "outb", 2: "outw", 4: "outl"}[size]
        self.cmd(f"{op} {0xCFC + (reg & 3):#x} {value:#x}")


class Qmp:
    """QMP: commands with ``{"return"}``/``{"error"}`` answers; events are kept in order."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.lines = _Lines(sock)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.lines.line(timeout)  # the greeting
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self.lines.sock.close()

    def _receive(self, timeout: float) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.lines.line(timeout))
        return reply

    def execute(self, command: str, *, wait: float | None = None, **arguments: Any) -> Any:
        """The command's ``return`` value; an ``error`` answer raises :class:`QmpError`."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self.lines.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as err:
            raise QemuGone(str(err)) from None
        while True:
            reply = self._receive(self.timeout if wait is None else wait)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QmpError(reply["error"].get("desc", str(reply["error"])))
            return reply.get("return")

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The first event ``name`` (kept or arriving within ``timeout``), removed from the list."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(index)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                reply = self._receive(left)
            except QemuTimeout:
                return None
            if "event" in reply:
                self.events.append(reply)


class QmpError(Exception):
    """QEMU answered a QMP command with an error; the text is QEMU's own."""

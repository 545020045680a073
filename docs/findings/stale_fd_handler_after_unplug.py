#!/usr/bin/env python3
"""Reproducer: ivshmem-doorbell leaves a main-loop fd handler on its own eventfd after unplug.

Standard library only.  Usage: ``python3 stale_fd_handler_after_unplug.py [QEMU]`` (default
``qemu-system-x86_64`` on PATH).  Exit status 0: QEMU crashed as described (the bug is there);
1: QEMU survived; 2: the reproducer could not run.

What it does, as a guest and a server would:
1. a scripted ivshmem server on a unix socket sends version 0, ID 0 and a 4 MiB memfd as the
   shared memory, so ``device_add ivshmem-doorbell`` realizes;
2. it then sends the device's own vector-0 eventfd; the device (no KVM, so no irqfd) puts a
   main-loop handler on it (``watch_vector_notifier``: ``qemu_set_fd_handler``);
3. ``device_del`` plus the guest's ACPI eject unplug the device: ``ivshmem_exit`` closes the
   eventfd and frees ``msi_vectors``, but nothing removes the handler;
4. ``object-add memory-backend-memfd`` (twice) opens memfds, one of which gets the closed
   number; a memfd is always readable, so the main loop calls the stale handler with its freed
   opaque: SIGSEGV (QEMU 7.2.22 and 10.0.13).
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time


def send(sock: socket.socket, value: int, fd: int | None = None) -> None:
    data = struct.pack("<q", value)
    if fd is None:
        sock.sendmsg([data])
    else:
        rights = array.array("i", [fd]).tobytes()
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])


def qmp(sock: socket.socket, reader: object, command: str, **arguments: object) -> dict:
    sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
    while True:
        reply = json.loads(reader.readline())  # type: ignore[attr-defined]
        if "return" in reply or "error" in reply:
            return dict(reply)


def main() -> int:
    qemu = sys.argv[1] if len(sys.argv) > 1 else "qemu-system-x86_64"
    work = tempfile.mkdtemp(prefix="ivshmem-repro-")
    chardev, qtest, qmp_path = (os.path.join(work, n) for n in ("server", "qtest", "qmp"))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(chardev)
    server.listen(1)
    qtest_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    qtest_listener.bind(qtest)
    qtest_listener.listen(1)
    try:
        proc = subprocess.Popen(
            [qemu, "-machine", "pc", "-accel", "tcg", "-m", "64M", "-display", "none",
             "-nodefaults", "-S", "-monitor", "none", "-serial", "none",
             "-qtest", f"unix:{qtest}", "-qtest-log", "/dev/null",
             "-qmp", f"unix:{qmp_path},server=on,wait=off",
             "-chardev", f"socket,path={chardev},id=c0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as err:
        print(f"cannot start {qemu}: {err}")
        return 2
    try:
        qt, _ = qtest_listener.accept()
        peer, _ = server.accept()
        shm = os.memfd_create("ivshmem")
        os.ftruncate(shm, 4 << 20)
        send(peer, 0)  # protocol version
        send(peer, 0)  # our ID
        send(peer, -1, shm)  # the shared memory: realize can finish
        for _ in range(100):
            if os.path.exists(qmp_path):
                break
            time.sleep(0.05)
        mon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mon.connect(qmp_path)
        reader = mon.makefile("r")
        reader.readline()  # greeting
        qmp(mon, reader, "qmp_capabilities")
        print("device_add:", qmp(mon, reader, "device_add", driver="ivshmem-doorbell",
                                 id="dev0", addr="4", chardev="c0", vectors=1))
        own = os.eventfd(0)
        send(peer, 0, own)  # our vector 0: the device watches it from the main loop
        time.sleep(0.3)
        qmp(mon, reader, "device_del", id="dev0")
        qt.sendall(b"outl 0xae08 0x10\n")  # the guest's ACPI eject of slot 4
        time.sleep(0.5)
        # Two memfds: whichever of the closed numbers (the eventfd's, and the shared memory's
        # once its RAM block is reclaimed) comes first, one of them takes the eventfd's.
        for name in ("m0", "m1"):
            print("object-add:", qmp(mon, reader, "object-add", **{
                "qom-type": "memory-backend-memfd", "id": name, "size": 65536,
                "share": True}))
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print("QEMU is still running: not reproduced")
            return 1
    except (OSError, ValueError) as err:
        if proc.poll() is None:
            print(f"the reproducer failed: {err}")
            return 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = proc.returncode
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status < 0:
        print(f"QEMU died of {signal.Signals(-status).name}: reproduced")
        return 0
    print(f"QEMU exited with status {status}: not reproduced\n{stderr}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

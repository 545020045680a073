#!/usr/bin/env python3
"""Reproducer: a server that closes the connection before its setup messages leaves realize
spinning for ever: QEMU hangs at 100 % CPU.

Usage: ``python3 realize_spins_on_closed_socket.py [QEMU]``.  Exit status 0: QEMU stopped
answering and kept using the CPU (the finding reproduced); 1: it did not; 2: the reproducer
could not run.

The server accepts QEMU's chardev connection and closes it without sending anything.
``device_add ivshmem-doorbell`` realizes the device, whose ``ivshmem_recv_msg`` loops until it
has 8 bytes: ``qemu_chr_fe_read_all`` returns 0 on the closed socket, every time.  The QMP
command never answers, and QEMU burns a CPU; the reproducer then kills it.
Page: realize_spins_on_closed_socket.md.
"""

from __future__ import annotations

import time

from _qtest import Gone, Qemu, main

WATCH = 1.0  # seconds QEMU is watched after the command went unanswered
SAMPLES = 10


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary) as qemu:
        assert qemu.peer is not None
        qemu.peer.close()  # the server goes away
        qemu.peer = None
        try:
            qemu.plug()
        except Gone:
            pass  # no answer (or QEMU died: its fate says)
        else:
            return False, "device_add answered: the device realized"
        fate = qemu.fate()
        if fate is not None:
            return False, f"QEMU died instead: {fate}"
        # Spinning, not waiting: runnable in most samples (the state tells even when other
        # processes leave QEMU little CPU), or using a good share of a CPU.
        before, runnable = qemu.cpu_seconds(), 0
        for _ in range(SAMPLES):
            time.sleep(WATCH / SAMPLES)
            runnable += qemu.run_state() == "R"
        used = qemu.cpu_seconds() - before
        shown = runnable > SAMPLES // 2 or used > WATCH / 4
        return shown, (f"device_add unanswered after 3 s; then QEMU was runnable in {runnable} "
                       f"of {SAMPLES} samples and used {used:.1f} s of CPU in {WATCH:.0f} s: "
                       + ("hang, spinning" if shown else "waiting, not spinning"))

if __name__ == "__main__":
    main(reproduce)

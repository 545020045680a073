#!/usr/bin/env python3
"""Reproducer: an own-vector eventfd sent before the shared memory crashes realize (SIGSEGV).

Usage: ``python3 own_eventfd_before_shm_null_deref.py [QEMU]``.  Exit status 0: QEMU crashed
(the finding reproduced); 1: it did not; 2: the reproducer could not run.

The server sends version 0, ID 0, then the device's own vector-0 eventfd (ID 0 with an fd)
and only then the shared memory.  ``device_add ivshmem-doorbell`` reads them in realize; the
eventfd reaches ``watch_vector_notifier`` (TCG: no irqfd) while ``s->msi_vectors`` is still
NULL, which it dereferences.  Page: own_eventfd_before_shm_null_deref.md.
"""

from __future__ import annotations

import os

from _qtest import Qemu, main, memfd


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary) as qemu:
        qemu.send(0)  # protocol version
        qemu.send(0)  # our ID
        qemu.send(0, os.eventfd(0))  # our vector 0, before the shared memory
        qemu.send(-1, memfd(4 << 20))
        with qemu.until_gone():
            qemu.plug()
        return qemu.verdict("in realize", "SIGSEGV")


if __name__ == "__main__":
    main(reproduce)

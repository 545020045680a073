#!/usr/bin/env python3
"""Reproducer: ivshmem-doorbell leaves a main-loop fd handler on its own eventfd after unplug.

Usage: ``python3 stale_fd_handler_after_unplug.py [QEMU]``.  Exit status 0: QEMU crashed as
described (the finding reproduced); 1: QEMU survived; 2: the reproducer could not run.

What it does, as a guest and a server would:
1. a scripted ivshmem server on a unix socket sends version 0, ID 0 and a 4 MiB memfd as the
   shared memory, so ``device_add ivshmem-doorbell`` realizes;
2. it then sends the device's own vector-0 eventfd; the device (no KVM, so no irqfd) puts a
   main-loop handler on it (``watch_vector_notifier``: ``qemu_set_fd_handler``);
3. ``device_del`` plus the guest's ACPI eject unplug the device: ``ivshmem_exit`` closes the
   eventfd and frees ``msi_vectors``, but nothing removes the handler;
4. ``object-add memory-backend-memfd`` (twice) opens memfds, one of which gets the closed
   number; a memfd is always readable, so the main loop calls the stale handler with its freed
   opaque: SIGSEGV.  Page: stale_fd_handler_after_unplug.md.
"""

from __future__ import annotations

import os

from _qtest import Qemu, main


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary) as qemu:
        qemu.setup()
        qemu.plug()
        qemu.send(0, os.eventfd(0))  # our vector 0: the device watches it
        qemu.processed()
        qemu.unplug()
        with qemu.until_gone():
            # Two memfds: whichever of the closed numbers (the eventfd's, and the shared
            # memory's once its RAM block is reclaimed) comes first, one takes the eventfd's.
            for name in ("m0", "m1"):
                qemu.qmp("object-add", **{"qom-type": "memory-backend-memfd", "id": name,
                                          "size": 65536, "share": True})
            qemu.sync()
        return qemu.verdict("when a memfd took the closed number", "SIGSEGV")


if __name__ == "__main__":
    main(reproduce)

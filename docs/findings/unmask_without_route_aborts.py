#!/usr/bin/env python3
"""Reproducer: under KVM, unmasking an MSI-X vector whose eventfd has not arrived aborts QEMU.

Usage: ``python3 unmask_without_route_aborts.py [QEMU]``.  Exit status 0: QEMU aborted in the
MSI-X core (the finding reproduced); 1: it did not; 2: the reproducer could not run (it needs
``/dev/kvm``).

The server sends version 0, ID 0 and the shared memory, and not (yet) the device's own
eventfd.  The guest enables MSI-X (``ivshmem_enable_irqfd`` adds no route: no eventfd) and
unmasks vector 0: ``ivshmem_vector_unmask`` finds no route and returns -EINVAL, and
``msix_fire_vector_notifier`` asserts ``ret >= 0``.  Page: unmask_without_route_aborts.md.
"""

from __future__ import annotations

from _qtest import Qemu, main


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary, kvm=True) as qemu:
        qemu.setup()
        qemu.plug()
        qemu.program_device()
        with qemu.until_gone():
            qemu.msix_enable(True)
            qemu.msix_unmask(0)
            qemu.sync()
        return qemu.verdict("on the unmask", "ret >= 0")


if __name__ == "__main__":
    main(reproduce)

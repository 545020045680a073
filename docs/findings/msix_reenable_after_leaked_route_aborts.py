#!/usr/bin/env python3
"""Reproducer: under KVM, a KVM route left by a failed MSI-X enable aborts the next enable.

Usage: ``python3 msix_reenable_after_leaked_route_aborts.py [QEMU]``.  Exit status 0: QEMU
aborted in ivshmem_add_kvm_msi_virq (the finding reproduced); 1: it did not; 2: the reproducer
could not run (it needs ``/dev/kvm``).

1. Realize with no own eventfd yet; the guest unmasks vector 0, then enables MSI-X: the
   unmask notifier finds no route, ``msix_set_vector_notifiers`` fails and rolls back (QEMU
   prints "msix_set_vector_notifiers failed"): no notifiers are installed.
2. The server sends the own vector-0 eventfd: ``setup_interrupt`` adds a KVM route and an
   irqfd for it (MSI-X is on, the vector unmasked).
3. The guest disables MSI-X: ``ivshmem_disable_irqfd`` returns early (no notifiers), the
   route stays; it enables MSI-X again: ``ivshmem_add_kvm_msi_virq`` asserts that vector 0
   has no route.  Page: msix_reenable_after_leaked_route_aborts.md.
"""

from __future__ import annotations

import os

from _qtest import Qemu, main


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary, kvm=True) as qemu:
        qemu.setup()
        qemu.plug()
        qemu.program_device()
        qemu.msix_unmask(0)
        qemu.msix_enable(True)
        qemu.send(0, os.eventfd(0))  # our vector 0
        qemu.processed()
        qemu.msix_enable(False)
        with qemu.until_gone():
            qemu.msix_enable(True)
            qemu.sync()
        return qemu.verdict("on the second enable", "ivshmem_add_kvm_msi_virq")


if __name__ == "__main__":
    main(reproduce)

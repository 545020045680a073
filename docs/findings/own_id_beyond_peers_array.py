#!/usr/bin/env python3
"""Reproducer: under KVM, an own ID of 16 with no own eventfd makes the MSI-X enable read
``s->peers[16]``, past the 16-entry array: QEMU aborts.

Usage: ``python3 own_id_beyond_peers_array.py [QEMU]``.  Exit status 0: QEMU died on the
enable (the finding reproduced); 1: it did not; 2: the reproducer could not run (it needs
``/dev/kvm``).

The server sends version 0, ID 16 and the shared memory and no eventfd (``ivshmem-server -n
0`` does so once IDs pass 15).  ``peers[]`` has 16 entries; nothing grows it for the own ID.
The guest enables MSI-X: ``ivshmem_enable_irqfd`` loops up to
``s->peers[s->vm_id].nb_eventfds``, a heap word past the array, and adds KVM routes for
vectors the device does not have until ``ivshmem_add_kvm_msi_virq``'s assertion fails on
memory past ``msi_vectors``.  Page: own_id_beyond_peers_array.md.
"""

from __future__ import annotations

from _qtest import Qemu, main


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary, kvm=True) as qemu:
        qemu.setup(own_id=16)
        qemu.plug()
        qemu.program_device()
        with qemu.until_gone():
            qemu.msix_enable(True)
            qemu.sync()
        return qemu.verdict("on the MSI-X enable", "SIG")


if __name__ == "__main__":
    main(reproduce)

#!/usr/bin/env python3
"""Reproducer: a 12 KiB shared memory from the server aborts QEMU in pci_register_bar.

Usage: ``python3 shm_size_not_power_of_2_aborts.py [QEMU]``.  Exit status 0: QEMU aborted on
the BAR size assertion (the finding reproduced); 1: it did not; 2: the reproducer could not
run.

The server sends version 0, ID 0 and a 12288-byte memfd: whole pages, so the RAM block takes
it, and the device registers it as BAR2 unchecked; a BAR's size must be a power of 2 and the
PCI core asserts it.  Page: shm_size_not_power_of_2_aborts.md.
"""

from __future__ import annotations

from _qtest import Qemu, main


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary) as qemu:
        qemu.setup(shm_size=12 << 10)
        with qemu.until_gone():
            qemu.plug()
        return qemu.verdict("in realize", "is_power_of_2")


if __name__ == "__main__":
    main(reproduce)

#!/usr/bin/env python3
"""Reproducer: a second ivshmem-plain on the memdev of an unplugged one aborts QEMU.

Usage: ``python3 memdev_replug_aborts.py [QEMU]``.  Exit status 0: QEMU aborted in
``qemu_ram_set_idstr`` (the finding reproduced); 1: it did not; 2: the reproducer could not
run.

What it does, as a management tool and a guest would:
1. ``object-add memory-backend-memfd`` (id ``m0``, 4 KiB) and ``device_add ivshmem-plain``
   on it: realize names the backend's RAM block (``vmstate_register_ram``);
2. the guest programs the device, so BAR2 is mapped, as a driver leaves it;
3. ``device_del`` plus the guest's ACPI eject: the PCI core unmaps the BARs, then
   ``ivshmem_exit`` skips ``vmstate_unregister_ram``, done only while BAR2 is mapped;
4. ``device_add ivshmem-plain`` on ``m0`` again: the backend is free (not mapped), but its RAM
   block still has its id, and ``qemu_ram_set_idstr`` asserts ``!new_block->idstr[0]``.
Page: memdev_replug_aborts.md.
"""

from __future__ import annotations

from _qtest import NotReproduced, Qemu, main


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary) as qemu:
        created = qemu.qmp("object-add", **{"qom-type": "memory-backend-memfd", "id": "m0",
                                            "size": 4096, "share": True})
        if "error" in created:
            raise NotReproduced(f"object-add failed: {created['error']['desc']}")
        error = qemu.device_add(driver="ivshmem-plain", memdev="m0")
        if error is not None:
            raise NotReproduced(f"the first device_add failed: {error}")
        qemu.program_device()
        qemu.unplug()
        with qemu.until_gone():
            error = qemu.device_add(driver="ivshmem-plain", memdev="m0")
            if error is not None:
                raise NotReproduced(f"the second device_add failed cleanly: {error}")
        return qemu.verdict("in the second realize", "qemu_ram_set_idstr: !new_block->idstr[0]")


if __name__ == "__main__":
    main(reproduce)

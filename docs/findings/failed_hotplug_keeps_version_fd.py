#!/usr/bin/env python3
"""Reproducer: a version message that carries an fd fails the hot-plug, and QEMU keeps the fd:
one descriptor leaked for every failed ``device_add``.

Usage: ``python3 failed_hotplug_keeps_version_fd.py [QEMU]``.  Exit status 0: QEMU holds every
eventfd it refused (the finding reproduced); 1: it does not; 2: the reproducer could not run.

Three times: the server sends version 0 with an eventfd attached; ``device_add
ivshmem-doorbell`` fails with "server sent invalid version message" (``ivshmem_recv_setup``)
and QEMU runs on.  The fd came in with the message (the chardev keeps it until the device
takes it) and nothing closes it.  The reproducer keeps its own end of each eventfd and looks
for the same kernel object (``eventfd-id`` in ``/proc/PID/fdinfo``) among QEMU's descriptors.
Page: failed_hotplug_keeps_version_fd.md.
"""

from __future__ import annotations

import os
import re

from _qtest import Qemu, SetupError, main

ATTEMPTS = 3


def eventfd_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        found = re.search(r"^eventfd-id:\s*(\d+)", info.read(), re.M)
    if found is None:
        raise SetupError("this kernel does not show eventfd-id in fdinfo")
    return int(found.group(1))


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary) as qemu:
        ours = []
        for _ in range(ATTEMPTS):
            fd = os.eventfd(0)
            ours.append(eventfd_id(fd))
            qemu.send(0, fd)  # the version, with an fd it must not have
            error = qemu.device_add(driver="ivshmem-doorbell", chardev="c0", vectors=1)
            if error is None:
                return False, "device_add succeeded"
            if "invalid version message" not in error:
                return False, f"device_add failed otherwise: {error}"
        held = [ident for ident in ours if ident in qemu.eventfd_ids()]
        fate = qemu.fate()
        if fate is not None:
            return False, f"QEMU died: {fate}"
        return len(held) == ATTEMPTS, (
            f"{ATTEMPTS} hot-plugs failed with 'server sent invalid version message'; QEMU "
            f"still holds {len(held)} of the {ATTEMPTS} eventfds: leak of one fd a failure")


if __name__ == "__main__":
    main(reproduce)

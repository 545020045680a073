#!/usr/bin/env python3
"""Reproducer: a peer's disconnect frees its eventfd array and keeps the pointer; unplugging
the device frees it again: QEMU crashes.

Usage: ``python3 peer_eventfds_freed_twice.py [QEMU]``.  Exit status 0: QEMU died (the finding
reproduced); 1: it did not; 2: the reproducer could not run.

As the contrib server does for a second client that comes and goes: after the device (ID 0)
has realized, peer 1's eventfd arrives (ID 1 with an fd), then peer 1's departure (ID 1, no
fd): ``close_peer_eventfds`` frees ``peers[1].eventfds`` and leaves the pointer.  The unplug
(``device_del`` and the guest's ACPI eject) runs ``ivshmem_exit``, which calls
``close_peer_eventfds`` for every peer and frees the same block a second time.
Page: peer_eventfds_freed_twice.md.
"""

from __future__ import annotations

import os

from _qtest import Qemu, main

# Each peer's eventfd array holds one 12-byte EventNotifier a vector.  With one vector it is
# a block of the busiest size and is handed out again before the second free (which then
# frees another object, and the crash varies); 64 vectors make a block of a size little else
# uses, so it is still in glibc's free list at the second free and glibc says "double free".
VECTORS = 64


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary) as qemu:
        qemu.setup()
        qemu.send(0, os.eventfd(0))  # our vector 0, as the contrib server sends it
        qemu.plug(vectors=VECTORS)
        qemu.send(1, os.eventfd(0))  # peer 1 connects
        qemu.send(1)  # and goes away
        qemu.processed()
        with qemu.until_gone():
            qemu.unplug()
            qemu.sync()
        return qemu.verdict("on the unplug", "SIG")


if __name__ == "__main__":
    main(reproduce)

#!/usr/bin/env python3
"""Reproducer: a peer ID announced gone and then connected again writes its eventfd into the
freed eventfd array (a use after free, shown by valgrind's memcheck).

Usage: ``python3 peer_id_reuse_use_after_free.py [QEMU]``.  Exit status 0: memcheck saw the
invalid write (the finding reproduced); 1: it did not; 2: the reproducer could not run (it
needs ``valgrind`` on PATH).

The server sends version 0, ID 0, then "peer 1 has gone" (ID 1, no fd) and "peer 1
connects" (ID 1 with an eventfd), as a server that reuses IDs at once does, then the shared
memory.  ``close_peer_eventfds`` frees ``peers[1].eventfds`` and keeps the pointer;
``process_msg_connect`` then stores the eventfd in it (``event_notifier_init_fd``).  glibc
does not notice the write by itself, so QEMU runs under memcheck, which stops it at the
first invalid access.  Page: peer_id_reuse_use_after_free.md.
"""

from __future__ import annotations

import os

from _qtest import Qemu, main, memfd


def reproduce(binary: str) -> tuple[bool, str]:
    with Qemu(binary, valgrind=True) as qemu:
        qemu.send(0)  # protocol version
        qemu.send(0)  # our ID
        qemu.send(1)  # peer 1 has gone: its eventfd array is freed
        qemu.send(1, os.eventfd(0))  # peer 1 connects again: its eventfd goes into that array
        qemu.send(-1, memfd(4 << 20))
        with qemu.until_gone():
            qemu.plug()
        return qemu.verdict("in realize", "memcheck: Invalid write")


if __name__ == "__main__":
    main(reproduce)

"""The PCI MSI-X core as the seed's QEMU had it.

Mirror of ``hw/pci/msix.c`` at commit ``ee640c625e19`` (unchanged in these functions up to the
seed), cited as ``msix.c <function>``.  The device calls into it; it calls back into the device
through the three vector notifiers the device installs (``ivshmem_vector_unmask``, ``_mask``,
``_poll``).  Vectors index bit masks (``masked``, ``pending``, ``used``) so any table size is
cheap; an index outside the table is a :class:`~model.proc.Crash` (``out_of_bounds``), as the C
code would read or write past ``msix_table`` / ``msix_pba``.
"""

from __future__ import annotations

from collections.abc import Callable

from ivshmem_model.model.proc import Abort, Crash, Proc
from ivshmem_model.model.state import (
    DEFAULT_PCI,
    FREED,
    LIVE,
    NULL,
    PCI_COMMAND_MASTER,
    Msix,
    PciConfig,
)

PCI_MSIX_FLAGS_QSIZE = 0x7FF

UseNotifier = Callable[["PCIDevice", int], int]
ReleaseNotifier = Callable[["PCIDevice", int], None]
PollNotifier = Callable[["PCIDevice", int, int], None]


class PCIDevice:
    """The MSI-X part of ``PCIDevice``, mutable for the length of a step."""

    __slots__ = (
        "msix_enable", "msix_entries_nr", "msix_entry_used", "msix_function_masked",
        "msix_maskall", "msix_masked", "msix_pba", "msix_present", "msix_table",
        "msix_vector_poll_notifier", "msix_vector_release_notifier", "msix_vector_use_notifier",
        "pci", "proc",
    )

    def __init__(self, proc: Proc, m: Msix, pci: PciConfig = DEFAULT_PCI) -> None:
        self.proc = proc
        self.pci = pci  # the configuration space's guest-written registers (model.pci)
        self.msix_present = m.present
        self.msix_entries_nr = m.entries_nr
        self.msix_table = m.table
        self.msix_enable = m.enable
        self.msix_maskall = m.maskall
        self.msix_function_masked = m.function_masked
        self.msix_masked = m.masked
        self.msix_pba = m.pending
        self.msix_entry_used = m.used
        self.msix_vector_use_notifier: UseNotifier | None = None
        self.msix_vector_release_notifier: ReleaseNotifier | None = None
        self.msix_vector_poll_notifier: PollNotifier | None = None

    def freeze_msix(self, original: Msix | None = None) -> Msix:
        if original is not None and original._compared() == (
                self.msix_present, self.msix_entries_nr, self.msix_table, self.msix_enable,
                self.msix_maskall, self.msix_function_masked, self.msix_masked, self.msix_pba,
                self.msix_entry_used, self.msix_vector_use_notifier is not None,
                self.msix_vector_poll_notifier is not None):
            return original  # compared first: no record built when nothing changed
        m = Msix(
            present=self.msix_present,
            entries_nr=self.msix_entries_nr,
            table=self.msix_table,
            enable=self.msix_enable,
            maskall=self.msix_maskall,
            function_masked=self.msix_function_masked,
            masked=self.msix_masked,
            pending=self.msix_pba,
            used=self.msix_entry_used,
            notifiers=self.msix_vector_use_notifier is not None,
            poll_notifier=self.msix_vector_poll_notifier is not None,
        )
        return original if original is not None and m == original else m


def _entry(dev: PCIDevice, vector: int, line: str) -> None:
    """Bounds and lifetime of ``msix_table + vector * PCI_MSIX_ENTRY_SIZE``."""
    if dev.msix_table == NULL:
        raise Crash("null_deref", "msix_table is NULL", line)
    if dev.msix_table == FREED:
        raise Crash("use_after_free", "msix_table was freed", line)
    if not 0 <= vector < dev.msix_entries_nr:
        raise Crash(
            "out_of_bounds",
            f"MSI-X table entry {vector} of {dev.msix_entries_nr}",
            line,
        )


def msix_get_message(dev: PCIDevice, vector: int) -> None:
    """Reads the table entry's address and data; the model keeps only the bounds check."""
    _entry(dev, vector, "msix.c msix_get_message")


def msix_is_pending(dev: PCIDevice, vector: int) -> bool:
    return bool(dev.msix_pba >> vector & 1)


def msix_set_pending(dev: PCIDevice, vector: int) -> None:
    _entry(dev, vector, "msix.c msix_set_pending")
    dev.msix_pba |= 1 << vector


def msix_clr_pending(dev: PCIDevice, vector: int) -> None:
    dev.msix_pba &= ~(1 << vector)


def msix_vector_masked(dev: PCIDevice, vector: int, fmask: bool) -> bool:
    _entry(dev, vector, "msix.c msix_vector_masked")
    return fmask or bool(dev.msix_masked >> vector & 1)


def msix_is_masked(dev: PCIDevice, vector: int) -> bool:
    return msix_vector_masked(dev, vector, dev.msix_function_masked)


def msix_fire_vector_notifier(dev: PCIDevice, vector: int, is_masked: bool) -> None:
    if dev.msix_vector_use_notifier is None:
        return
    if is_masked:
        assert dev.msix_vector_release_notifier is not None
        dev.msix_vector_release_notifier(dev, vector)
    else:
        msix_get_message(dev, vector)
        ret = dev.msix_vector_use_notifier(dev, vector)
        if ret < 0:
            raise Abort("msix_fire_vector_notifier: Assertion `ret >= 0' failed.",
                        "msix.c msix_fire_vector_notifier")


def msix_handle_mask_update(dev: PCIDevice, vector: int, was_masked: bool) -> None:
    is_masked = msix_is_masked(dev, vector)
    if is_masked == was_masked:
        return
    msix_fire_vector_notifier(dev, vector, is_masked)
    if not is_masked and msix_is_pending(dev, vector):
        msix_clr_pending(dev, vector)
        msix_notify(dev, vector)


def msix_update_function_masked(dev: PCIDevice) -> None:
    dev.msix_function_masked = not msix_enabled(dev) or dev.msix_maskall


def msix_write_config(dev: PCIDevice) -> None:
    """After ``pci_default_write_config`` stored the control byte (enable, maskall)."""
    if not msix_present(dev):
        return
    was_masked = dev.msix_function_masked
    msix_update_function_masked(dev)
    if not msix_enabled(dev):
        return
    if dev.msix_function_masked == was_masked:
        return
    for vector in range(dev.msix_entries_nr):
        msix_handle_mask_update(dev, vector, msix_vector_masked(dev, vector, was_masked))


def msix_table_mmio_write(dev: PCIDevice, vector: int, masked: bool) -> None:
    """A 4-byte write of the vector-control word: only its Mask bit matters here."""
    was_masked = msix_is_masked(dev, vector)
    if masked:
        dev.msix_masked |= 1 << vector
    else:
        dev.msix_masked &= ~(1 << vector)
    msix_handle_mask_update(dev, vector, was_masked)


def msix_pba_mmio_read(dev: PCIDevice, addr: int) -> int:
    """A 4-byte PBA read at byte offset ``addr``; polls first (seed-era range bug kept)."""
    size = 4
    if dev.msix_vector_poll_notifier is not None:
        vector_start = addr * 8
        if dev.proc.variant.msix_pba_poll_range:
            vector_end = min((addr + size) * 8, dev.msix_entries_nr)
        else:
            vector_end = min(addr + size * 8, dev.msix_entries_nr)
        dev.msix_vector_poll_notifier(dev, vector_start, vector_end)
    return (dev.msix_pba >> (addr * 8)) & 0xFFFFFFFF


def msix_mask_all(dev: PCIDevice, nentries: int) -> None:
    for vector in range(nentries):
        was_masked = msix_is_masked(dev, vector)
        dev.msix_masked |= 1 << vector
        msix_handle_mask_update(dev, vector, was_masked)


def msix_init_exclusive_bar(dev: PCIDevice, nentries: int) -> str | None:
    """``msix_init_exclusive_bar`` + ``msix_init``; returns QEMU's error text or ``None``.

    ``nentries`` is ``unsigned short`` at the seed: 65537 vectors become a 1-entry table.
    """
    if not dev.proc.variant.msix_nentries_uint32:
        nentries &= 0xFFFF
    if nentries < 1 or nentries > PCI_MSIX_FLAGS_QSIZE + 1:
        return "The number of MSI-X vectors is invalid"
    dev.msix_present = True
    dev.msix_entries_nr = nentries
    dev.msix_function_masked = True
    dev.msix_table = LIVE
    dev.msix_masked = 0
    dev.msix_pba = 0
    dev.msix_entry_used = 0
    msix_mask_all(dev, nentries)
    return None


def msix_uninit_exclusive_bar(dev: PCIDevice) -> None:
    if not msix_present(dev):
        return
    dev.msix_entry_used = 0
    dev.msix_pba = 0
    dev.msix_entries_nr = 0
    dev.msix_table = NULL  # g_free then set to NULL
    dev.msix_present = False


def msix_present(dev: PCIDevice) -> bool:
    return dev.msix_present


def msix_enabled(dev: PCIDevice) -> bool:
    return dev.msix_present and dev.msix_enable


def msix_notify(dev: PCIDevice, vector: int) -> None:
    if vector >= dev.msix_entries_nr and dev.proc.variant.msix_range_asserts:
        raise Abort("msix_notify: Assertion `vector < dev->msix_entries_nr' failed.",
                    "msix.c msix_notify")
    if vector >= dev.msix_entries_nr or not dev.msix_entry_used >> vector & 1:
        return
    if msix_is_masked(dev, vector):
        msix_set_pending(dev, vector)
        return
    msix_get_message(dev, vector)
    if not msix_enabled(dev):
        # Reachable through the stale msix_function_masked that msix_reset leaves behind.
        dev.proc.fault("msi_misuse", f"MSI for vector {vector} sent while MSI-X is disabled",
                       "msix.c msix_notify")
    # msi_send_message writes through the device's bus-master address space, which is off
    # while the command register's Master bit is clear (pci.c 1543-1545): the MSI is lost.
    if dev.pci.command & PCI_COMMAND_MASTER:
        dev.proc.obs.append({"msi": vector})


def msix_reset(dev: PCIDevice) -> None:
    """Clears enable and maskall but, like the seed-era code, not ``msix_function_masked``."""
    if not msix_present(dev):
        return
    dev.msix_pba = 0
    dev.msix_enable = False
    dev.msix_maskall = False
    dev.msix_masked = 0
    msix_mask_all(dev, dev.msix_entries_nr)


def msix_vector_use(dev: PCIDevice, vector: int) -> int:
    if vector >= dev.msix_entries_nr:
        if dev.proc.variant.msix_range_asserts:
            raise Abort("msix_vector_use: Assertion `vector < dev->msix_entries_nr' failed.",
                        "msix.c msix_vector_use")
        return -22
    dev.msix_entry_used |= 1 << vector
    return 0


def msix_set_notifier_for_vector(dev: PCIDevice, vector: int) -> int:
    if msix_is_masked(dev, vector):
        return 0
    msix_get_message(dev, vector)
    assert dev.msix_vector_use_notifier is not None
    return dev.msix_vector_use_notifier(dev, vector)


def msix_unset_notifier_for_vector(dev: PCIDevice, vector: int) -> None:
    if msix_is_masked(dev, vector):
        return
    assert dev.msix_vector_release_notifier is not None
    dev.msix_vector_release_notifier(dev, vector)


def _enabled_and_unmasked(dev: PCIDevice) -> bool:
    """``(control & (ENABLE | MASKALL)) == ENABLE``."""
    return dev.msix_enable and not dev.msix_maskall


def msix_set_vector_notifiers(
    dev: PCIDevice, use: UseNotifier, release: ReleaseNotifier, poll: PollNotifier
) -> int:
    dev.msix_vector_use_notifier = use
    dev.msix_vector_release_notifier = release
    dev.msix_vector_poll_notifier = poll
    vector = 0
    if _enabled_and_unmasked(dev):
        while vector < dev.msix_entries_nr:
            ret = msix_set_notifier_for_vector(dev, vector)
            if ret < 0:
                # undo:
                vector -= 1
                while vector >= 0:
                    msix_unset_notifier_for_vector(dev, vector)
                    vector -= 1
                dev.msix_vector_use_notifier = None
                dev.msix_vector_release_notifier = None
                if dev.proc.variant.msix_rollback_clears_poll:
                    dev.msix_vector_poll_notifier = None
                return ret
            vector += 1
    if dev.msix_vector_poll_notifier is not None:
        dev.msix_vector_poll_notifier(dev, 0, dev.msix_entries_nr)
    return 0


def msix_unset_vector_notifiers(dev: PCIDevice) -> None:
    if dev.msix_vector_use_notifier is None or dev.msix_vector_release_notifier is None:
        raise Abort(
            "msix_unset_vector_notifiers: Assertion `dev->msix_vector_use_notifier && "
            "dev->msix_vector_release_notifier' failed.",
            "msix.c msix_unset_vector_notifiers",
        )
    if _enabled_and_unmasked(dev):
        for vector in range(dev.msix_entries_nr):
            msix_unset_notifier_for_vector(dev, vector)
    dev.msix_vector_use_notifier = None
    dev.msix_vector_release_notifier = None
    dev.msix_vector_poll_notifier = None


def msix_load(dev: PCIDevice, saved: Msix) -> None:
    """``msix_load`` into a device whose config space (enable, maskall) was just loaded."""
    if not msix_present(dev):
        return
    dev.msix_pba = 0
    dev.msix_masked = saved.masked
    dev.msix_pba = saved.pending
    msix_update_function_masked(dev)
    for vector in range(dev.msix_entries_nr):
        msix_handle_mask_update(dev, vector, True)

"""Named behaviour differences (design §4).

A :class:`Variant` is a set of flags; every flag is off in ``seed``.  Each flag says which commit
(or which proposal of ours) it stands for and which seed lines it changes, so the model of the
seed itself stays a line-by-line mirror and every difference is a named, cited switch.

To add a flag: add a field with :func:`flag`, test it where the seed line is mirrored, and list
it in the variants that carry it.  The corpus issue adds ``before-<commit>`` variants the same
way, by flags that *revert* a fix present in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ivshmem_model.model.actions import TraceError


def flag(commit: str, lines: str, why: str) -> Any:
    """A variant flag, off by default, with its provenance."""
    return field(default=False, metadata={"commit": commit, "lines": lines, "why": why})


@dataclass(frozen=True, slots=True)
class Variant:
    name: str = "seed"

    # --- QEMU 7.2 (facts §8) -----------------------------------------------------------------
    no_legacy_device: bool = flag(
        "5a0e75f0a9ad", "1256-1358",
        "the legacy 'ivshmem' device (INTx, msi=off, shm=, size=, role=) was removed in 4.0",
    )
    msix_range_asserts: bool = flag(
        "15377f6e79cc", "msix.c msix_vector_use/msix_notify",
        "msix_vector_use, msix_vector_unuse, msix_notify and msix_set_mask assert that the "
        "vector is in range where the seed-era code returned silently",
    )
    msix_rollback_clears_poll: bool = flag(
        "2d37fe9e5e61", "msix.c msix_set_vector_notifiers",
        "a failed msix_set_vector_notifiers also clears the poll notifier",
    )
    msix_pba_poll_range: bool = flag(
        "42e2a7a0ab23", "msix.c msix_pba_mmio_read",
        "a PBA read at a non-zero offset polls the vectors it actually reads",
    )
    bar_size_asserts: bool = flag(
        "2c729dc8ceaa", "967 (pci.c pci_register_bar)",
        "a BAR whose size is not a power of 2 fails an assertion; the seed-era PCI core "
        "printed 'ERROR: PCI region size must be pow2' and called exit(1)",
    )
    event_notifier_initialized: bool = flag(
        "e34e47eb28c0", "382, 436",
        "EventNotifier gained an 'initialized' flag: test-and-clear and cleanup of a zeroed "
        "notifier no longer touch fd 0",
    )

    # --- QEMU 10.0 (Debian 13's 10.0.13 against Debian 12's 7.2.22, source and conformance) ------
    # Also on in qemu-10.0: msix_nentries_uint32 (ef44cc0a7624, backported to stable 10.0.7).
    # Differences no action of the vocabulary reaches are in properties/conform.py ABSTRACTIONS.
    ram_fd_size_error_with_offset: bool = flag(
        "4b870dc4d0c0", "544-549 (physmem.c qemu_ram_alloc_from_fd)",
        "a shared memory smaller than its page-aligned size fails realize with \"ivshmem.bar2 "
        "backing store size 0x.. is too small for 'size' option 0x.. plus 'offset' option 0x0\" "
        "where 7.2 said \"backing store size 0x.. does not match 'size' option 0x..\" (the offset "
        "from 'hostmem-file: add offset option', 8.1; the region's name from the cpr series in "
        "10.0); same check, same fate, another text",
    )
    file_backend_whole_pages: bool = flag(
        "5d9a9a617053", "1094-1109 (backends/hostmem.c host_memory_backend_memory_complete)",
        "a memory backend whose size is not a whole number of pages is refused: \"backend "
        "'memory-backend-file' memory size must be multiple of 4 KiB\" (9.1); on 10.0.13 a "
        "file backend of 5000 bytes fails so while a ram backend of the same size still "
        "reaches pci_register_bar (observed, not yet explained from the source)",
    )
    shared_ram_is_memfd: bool = flag(
        "10.0 cpr series, 'physmem: fd-based shared memory' (Steve Sistare; hash not pinned)",
        "1094-1109 (backends/hostmem-ram.c, physmem.c qemu_ram_alloc_internal)",
        "a memory-backend-ram with share=on is anonymous shared memory made from a memfd, so "
        "the process holds one descriptor more for it (seen on 10.0.13 by fd_count)",
    )
    exit_clears_chardev_handlers: bool = flag(
        "stable-10.0.12 'hw/misc/ivshmem: clear chardev handlers before freeing peers' "
        "(GitLab #3594)", "970-1013",
        "ivshmem_exit removes the chardev handlers first and clears peers/nb_peers and "
        "msi_vectors after freeing them; 7.2 leaves ivshmem_read installed until the chardev "
        "property is released at finalize, so a message in that window reads freed peers.  "
        "The model's unplug already ends the device's reads (the window is not modelled), so "
        "no step changes; the flag records which QEMU closes the window",
    )

    # --- later upstream fixes ----------------------------------------------------------------
    shm_message_needs_fd: bool = flag(
        "8ccd35f25cdf", "523-528, 603",
        "a shared-memory message without fd is rejected explicitly, and an invalid message "
        "closes its fd only if one came with it",
    )
    msix_nentries_uint32: bool = flag(
        "ef44cc0a7624", "782 (msix_init_exclusive_bar)",
        "msix_init took an 'unsigned short' nentries, so vectors >= 65536 were truncated",
    )

    # --- fixes before the seed, reverted one at a time (facts §6.2) ---------------------------
    before_a40227911c4c: bool = flag(
        "a40227911c4c", "767",
        "before 'Disable irqfd on device reset', ivshmem_reset did not call "
        "ivshmem_disable_irqfd: the KVM routes added by enable_irqfd survived a reset, and "
        "re-enabling MSI-X hit the assertion '!s->msi_vectors[vector].pdev' (467)",
    )
    before_089fd8037619: bool = flag(
        "089fd8037619", "325, 337, 354, 361, 849-856",
        "before 'Always remove irqfd notifiers' there was no per-vector 'unmasked' flag: "
        "unmask and mask did not assert or record it, and disable_irqfd did not mask the "
        "vectors still unmasked, so with MSI-X already disabled the irqfds stayed attached "
        "(a later enable fails with -EBUSY: 'msix_set_vector_notifiers failed')",
    )
    before_e6a354be6ea0: bool = flag(
        "e6a354be6ea0", "321-324, 350-353",
        "before 'Don't update non-existent MSI routes', mask and unmask did not check "
        "v->pdev: unmask of a vector the server sent no eventfd for updated a KVM route that "
        "does not exist, and kvm_irqchip_commit_routes asserted 'ret == 0'",
    )
    before_0b88dd942073: bool = flag(
        "0b88dd942073", "818, 827, 831-834, 842-844",
        "before 'Improve MSI irqfd error handling', enable_irqfd had no rollback (a failure "
        "left the routes it added) and disable_irqfd had no early return, so it called "
        "msix_unset_vector_notifiers when the notifiers were never set, which asserts",
    )
    before_9db51b4d64de: bool = flag(
        "9db51b4d64de", "558-562",
        "before 'Plug leaks on unplug, fix peer disconnect', a peer's disconnect was cleaned "
        "up only with ioeventfd=on (otherwise its fds and nb_eventfds stayed, so a recycled "
        "id's eventfds went to later vectors), and there was no 'invalid peer' check (the "
        "device's own id included)",
    )
    before_1ee57de444ac: bool = flag(
        "1ee57de444ac", "575-580",
        "before the 'Too many eventfd received' check, the N-th connect message for a peer "
        "was stored in eventfds[N-1] even when N exceeds the device's vectors: a write past "
        "the eventfds array (584)",
    )
    before_62a830b688a9: bool = flag(
        "62a830b688a9", "936-940",
        "before 'master must have ID 0', master=on was accepted for any ID, so two devices "
        "on one server could both be migration masters",
    )
    before_2d1d422d1145: bool = flag(
        "2d1d422d1145", "161",
        "before 'Leave INTx alone when using MSI-X', ivshmem_update_irq drove INTx from "
        "intrstatus & intrmask whenever the device had an interrupt pin, MSI or not "
        "(the legacy device with msi=on has pin 1)",
    )
    before_972ad21553fd: bool = flag(
        "972ad21553fd", "769-770",
        "before 'reset the mask on device reset', ivshmem_reset left intrstatus and "
        "intrmask as they were",
    )

    before_47213eb11047: bool = flag(
        "47213eb11047", "776-781, 393-394",
        "before the fix of irqfd's crash with msi=off (2.5.0), msi_vectors was allocated "
        "only for a device with MSI (with msix_init_exclusive_bar, as ivshmem_setup_msi "
        "allocated its eventfd table in 2.4); the legacy device with msi=off then used "
        "s->msi_vectors[vector] through NULL in watch_vector_notifier when its own eventfds "
        "arrived (393-394)",
    )
    before_6dc64780c2a8: bool = flag(
        "6dc64780c2a8", "1098-1100, 1166-1169, 916-917",
        "before 'plain/doorbell without memdev/chardev' was fixed (2.6.0), ivshmem-plain "
        "did not require a memdev nor ivshmem-doorbell a chardev: realize went on to the "
        "server path of ivshmem_common_realize with no chardev (on the seed: assert(chr), "
        "917)",
    )
    before_3a55fc0f2431: bool = flag(
        "3a55fc0f2431", "925-930, 678-746 (with 1309cf448a6d)",
        "before 'Receive shared memory synchronously in realize' (2.6.0), the legacy device "
        "took its setup after realize, as QEMU 2.5 did: realize set up interrupts, registered "
        "BAR2 empty and returned; the version, the ID and the shared memory came later "
        "through the chardev handlers, so the guest saw IVPosition -1 and no shared memory "
        "until they arrived.  A version mismatch deleted the chardev (the model stops the "
        "device reading; it does not close the socket).  The legacy device only: "
        "ivshmem-doorbell came after the synchronous setup",
    )
    before_51af0ec9fa72: bool = flag(
        "51af0ec9fa72", "675",
        "before 'ivshmem: fix ... byte order of setup messages' (2.11), ivshmem_recv_msg "
        "returned the message as read, without le64_to_cpu: on a big-endian host (config "
        "host.big_endian) every message of the synchronous setup came byte-swapped, so an "
        "ID >= 1 was 'server sent invalid ID message' (2.9's ivshmem_recv_msg)",
    )
    before_d855e2756554: bool = flag(
        "d855e2756554", "955-964",
        "before the fix of the migration blocker a failed realize left behind (2.6.0), the "
        "peer-mode blocker was registered first in realize, as 2.5 did, and no error path "
        "removed it: after a failed device_add of a master=off device the QEMU could not "
        "migrate any more",
    )
    before_a3feb08639e7: bool = flag(
        "a3feb08639e7", "706-721",
        "before the ID was required as the second message (2.6.0), the synchronous setup "
        "took the messages after the version in any order, the ID being the first without "
        "fd: an own eventfd that arrived before it was filed as another peer's and no "
        "interrupt was ever set up for it",
    )
    before_b2b79a696052: bool = flag(
        "b2b79a696052", "906-908",
        "before 'Fix 64 bit memory bar configuration' (2.8), the test read "
        "'if (!s->not_legacy_32bit)': ivshmem-plain, ivshmem-doorbell and the legacy "
        "default use64=1 got a 32-bit BAR2, use64=0 a 64-bit one (the inverted test "
        "survives in out-of-tree copies of the 2.6/2.7 device)",
    )

    # --- our corrections (the 'fixed' variant) -----------------------------------------------
    keep_peer_eventfds_array: bool = flag(
        "proposed", "439, 1001-1005",
        "close_peer_eventfds frees peers[posn].eventfds but keeps the pointer: a later connect "
        "with that id writes freed memory (584) and ivshmem_exit frees it again (439). Keep the "
        "array until ivshmem_exit",
    )
    msi_vectors_before_recv_setup: bool = flag(
        "proposed", "393, 779, 930",
        "msi_vectors is allocated after ivshmem_recv_setup, but the setup loop accepts the "
        "own-vector eventfds in any order and watch_vector_notifier dereferences it: allocate "
        "it first",
    )
    resize_peers_for_own_id: bool = flag(
        "proposed", "721, 812, 848, 376",
        "vm_id may be >= nb_peers when no own eventfd arrived (ID >= 16, server -n 0); "
        "s->peers[s->vm_id] then reads past the array: grow peers[] for the own id",
    )
    unmask_without_route_ok: bool = flag(
        "proposed", "321-324",
        "ivshmem_vector_unmask returns -EINVAL for a vector without route, and the MSI-X core "
        "asserts ret >= 0 on a table unmask: treat a route-less vector as nothing to do",
    )
    setup_interrupt_balanced: bool = flag(
        "proposed", "500-504",
        "setup_interrupt attaches an irqfd without setting v->unmasked, and does so even when "
        "the vector notifiers are not installed: do it only through the notifiers' bookkeeping",
    )
    exit_disables_irqfd: bool = flag(
        "proposed", "970-1013",
        "ivshmem_exit leaves KVM routes and irqfds behind when MSI-X is still enabled",
    )
    exit_leaves_fd_to_ramblock: bool = flag(
        "proposed", "985-991",
        "ivshmem_exit calls munmap with length 0 (the '== -1' is inside the call) and closes "
        "the BAR2 fd, which the RAM block closes again in reclaim_ramblock: leave both to the "
        "RAM block.  Unreachable while the PCI core unmaps BARs before exit "
        "(device.pci_qdev_unrealize); kept for a core that unmaps them after it",
    )
    recv_setup_closes_fd: bool = flag(
        "proposed", "689-697, 717-719",
        "a version or ID message that carries an fd fails realize without closing the fd: "
        "after a hot-plug (device_add) QEMU runs on holding it (QEMU 7.2.22: one more eventfd "
        "in /proc/PID/fd after the failed realize)",
    )
    bar2_size_checked: bool = flag(
        "proposed", "544-549, 967, 1094-1109",
        "a shared memory from the server, or a memdev, whose size is not a power of 2 becomes "
        "BAR2 unchecked and pci_register_bar ends the process (QEMU 7.2.22 aborts): reject it "
        "with an error first, closing the server's fd",
    )
    close_removes_fd_handler: bool = flag(
        "proposed", "396-397, 420-441",
        "watch_vector_notifier installs a main-loop handler on the own eventfd (seed 396) that "
        "nothing removes: close_peer_eventfds (on unplug) closes the fd under it, the next "
        "descriptor the process opens reuses the number, and the handler runs with its freed "
        "opaque.  QEMU 7.2.22 and 10.0.13 crash (SIGSEGV) when an ivshmem-plain with a memfd "
        "memdev is hot-plugged after such an unplug.  Remove the handler before closing",
    )
    exit_unregisters_ram: bool = flag(
        "proposed", "966, 980-995 (physmem.c qemu_ram_set_idstr)",
        "ivshmem_exit unregisters BAR2's RAM block id (vmstate_unregister_ram, 994) only while "
        "BAR2 is mapped (980), and on unplug the PCI core has unmapped it before exit: a "
        "memdev's RAM block, which outlives the device, keeps the id realize gave it (966), and "
        "the next device realized on that memdev aborts in qemu_ram_set_idstr (QEMU 7.2.22 and "
        "10.0.13: '!new_block->idstr[0]').  Unregister it unconditionally, as realize always "
        "registered it",
    )
    recv_msg_eof_is_error: bool = flag(
        "proposed", "660-672",
        "on a closed socket qemu_chr_fe_read_all returns 0 and ivshmem_recv_msg loops forever: "
        "realize spins when the server went away (e.g. a re-plug after server exit); fail "
        "with an error instead",
    )
    vector_poll_connected_only: bool = flag(
        "proposed", "373-385",
        "ivshmem_vector_poll test-and-clears every vector below s->vectors, including zeroed "
        "notifiers (fd 0, stdin) for vectors the server never connected",
    )

    def flags(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}

    def describe(self) -> list[dict[str, str]]:
        """The flags that are on, with their provenance."""
        return [
            {"flag": f.name, **{k: str(v) for k, v in f.metadata.items()}}
            for f in fields(self)
            if f.name != "name" and getattr(self, f.name)
        ]


SEED = Variant("seed")

QEMU_7_2 = Variant(
    "qemu-7.2",
    no_legacy_device=True,
    msix_range_asserts=True,
    msix_rollback_clears_poll=True,
    msix_pba_poll_range=True,
    event_notifier_initialized=True,
    bar_size_asserts=True,
)

QEMU_10_0 = replace(
    QEMU_7_2,
    name="qemu-10.0",
    msix_nentries_uint32=True,
    ram_fd_size_error_with_offset=True,
    file_backend_whole_pages=True,
    shared_ram_is_memfd=True,
    exit_clears_chardev_handlers=True,
)

FIXED = replace(
    QEMU_7_2,
    name="fixed",
    no_legacy_device=False,
    shm_message_needs_fd=True,
    msix_nentries_uint32=True,
    keep_peer_eventfds_array=True,
    msi_vectors_before_recv_setup=True,
    resize_peers_for_own_id=True,
    unmask_without_route_ok=True,
    setup_interrupt_balanced=True,
    exit_disables_irqfd=True,
    exit_leaves_fd_to_ramblock=True,
    vector_poll_connected_only=True,
    recv_msg_eof_is_error=True,
    recv_setup_closes_fd=True,
    bar2_size_checked=True,
    close_removes_fd_handler=True,
    exit_unregisters_ram=True,
)

BEFORE_COMMITS = (
    "a40227911c4c", "089fd8037619", "e6a354be6ea0", "0b88dd942073", "9db51b4d64de",
    "1ee57de444ac", "62a830b688a9", "2d1d422d1145", "972ad21553fd", "47213eb11047",
    "6dc64780c2a8", "b2b79a696052", "3a55fc0f2431", "51af0ec9fa72", "d855e2756554",
    "a3feb08639e7",
)
BEFORE: tuple[Variant, ...] = tuple(
    replace(SEED, name=f"before-{commit}", **{f"before_{commit}": True})
    for commit in BEFORE_COMMITS
)

# Fixes made after the seed (facts §6.1, §8): the variant that has the fix, with exactly that
# fix reverted.  Only the fixes some property can tell apart are here: 15377f6e79cc (range
# asserts), 42e2a7a0ab23 (PBA poll range) and 8ccd35f25cdf (shm message without fd) change
# behaviour that no property judges.
POST_SEED_FIXES = (
    ("e34e47eb28c0", QEMU_7_2, "event_notifier_initialized"),
    ("2d37fe9e5e61", QEMU_7_2, "msix_rollback_clears_poll"),
    ("ef44cc0a7624", FIXED, "msix_nentries_uint32"),
)
BEFORE_POST_SEED: tuple[Variant, ...] = tuple(
    replace(base, name=f"before-{commit}", **{flag: False})
    for commit, base, flag in POST_SEED_FIXES
)

VARIANTS: dict[str, Variant] = {
    v.name: v for v in (SEED, QEMU_7_2, QEMU_10_0, FIXED, *BEFORE, *BEFORE_POST_SEED)
}


def variant_option(name: str) -> Variant:
    """``get_variant`` for a command-line ``--variant``: an unknown name is bad input."""
    try:
        return get_variant(name)
    except KeyError as err:
        raise TraceError(str(err.args[0]), "--variant") from None


def get_variant(name: str) -> Variant:
    """The variant called ``name``; a ``KeyError`` lists the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(
            f"unknown variant {name!r}; known variants: {', '.join(VARIANTS)}"
        ) from None

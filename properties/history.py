"""The device's history as checks (facts §6.2, §6.1): each behaviour-changing fix, what broke
before it, and how the model tells the fix apart.

A fix the model can revert has a ``before-<commit>`` variant (``model.variants``) and a
:class:`Search`: the differential explorer (``properties.corpus.differential_search``) over
one configuration, which must find, unaided, a trace that violates a property under the
variant while the variant with the fix holds it.  :func:`hunt` runs that search and
:func:`corpus_entry` turns its finding into a minimized corpus file; ``ivshmem-model history``
runs every search and prints the time to find and the trace length (``--write`` adds the
missing corpus files).

A fix the model cannot tell apart says why in :attr:`Fix.unmodelled`: the behaviour lives below
the model's abstraction (bytes, host endianness), in the device's asynchronous past that the
model does not have yet, or the fix adds an assertion where the code before it returned early.
``counterexamples/README.md`` lists both kinds (``properties.corpus.readme_text``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ivshmem_model.model.actions import Config, Counterexample, HostConfig, ServerConfig, Trace
from ivshmem_model.model.variants import get_variant
from ivshmem_model.properties.corpus import (
    DiffFinding,
    differential_search,
    minimize_counterexample,
)
from ivshmem_model.properties.trace import expectations


@dataclass(frozen=True, slots=True)
class Search:
    """Where the differential explorer looks for a fix: a configuration (an embedded one by
    name, or one written here), a depth, and the variant that has the fix."""

    config: str | Config
    depth: int
    baseline: str = "seed"
    prop: str = ""  # the property the fix protects, when the search finds other differences

    def resolve(self) -> Config:
        if isinstance(self.config, Config):
            return self.config
        from ivshmem_model.properties.configs import embedded_configs

        return next(named.config for named in embedded_configs() if named.name == self.config)

    def config_name(self) -> str:
        return self.config if isinstance(self.config, str) else "written in properties/history.py"


@dataclass(frozen=True, slots=True)
class Fix:
    commit: str
    release: str
    broke: str  # what went wrong before the fix, in plain words
    search: Search | None = None  # None: not modelled (then ``unmodelled`` says why)
    slug: str = ""  # the corpus file is ``before-<commit>-<slug>.json``
    unmodelled: str = ""

    @property
    def variant(self) -> str:
        return f"before-{self.commit}"


def _one_device(device: str, props: tuple[tuple[str, object], ...] = ()) -> Config:
    return Config(endpoints=1, server=ServerConfig(vectors=1),
                  host=HostConfig(kvm_msi_irqfd=False),
                  realize=((device, props),))  # type: ignore[arg-type]


_ASYNC = ("before-3a55fc0f2431 has the asynchronous setup of 2.5 (realize returns, then "
          "ivshmem_check_version and ivshmem_read take the setup messages)")

_BIG_ENDIAN = Config(endpoints=2, server=ServerConfig(vectors=1),
                     host=HostConfig(kvm_msi_irqfd=False, big_endian=True))
# device_add of a peer whose MSI-X table cannot be made (0 vectors): realize fails late
_FAILED_HOTPLUG = Config(
    endpoints=1, server=ServerConfig(vectors=1), host=HostConfig(kvm_msi_irqfd=False),
    realize=(("ivshmem-doorbell", (("chardev", True), ("vectors", 0), ("master", "off"))),),
    hotplug=True)
# a scripted server that may send an own eventfd before the ID
_EVENTFD_BEFORE_ID = Config(
    endpoints=1, server=ServerConfig(
        policy="scripted", messages=((0, None), (0, "eventfd"), (-1, "shm"))),
    host=HostConfig(kvm_msi_irqfd=False))
_LEGACY_MSI = _one_device("ivshmem", (("chardev", True), ("msi", True), ("size", "4M")))
_VECTORS_65537 = Config(endpoints=1, server=ServerConfig(vectors=2),
                        host=HostConfig(kvm_msi_irqfd=True),
                        realize=(("ivshmem-doorbell", (("chardev", True), ("vectors", 65537))),))

HISTORY: tuple[Fix, ...] = (
    # --- modelled: a before-<commit> variant and the search that finds it ----------------
    Fix("1ee57de444ac", "2.5.0",
        "the N-th connect message for a peer was stored in eventfds[N-1] even past the "
        "device's vectors: a write past the array",
        Search("scripted-tcg", 6), "too-many-eventfds-written-past-array"),
    Fix("47213eb11047", "2.5.0",
        "the legacy device with msi=off had no msi_vectors array: its own eventfds crashed "
        "QEMU when they arrived",
        Search("legacy-intx", 4), "msi-off-without-msi-vectors"),
    Fix("972ad21553fd", "2.5.0", "a device reset kept the interrupt status and mask",
        Search("legacy-intx", 6), "reset-keeps-interrupt-status"),
    Fix("9db51b4d64de", "2.6.0",
        "without ioeventfd a peer's disconnect was not cleaned up: its eventfds stayed, so a "
        "recycled ID's eventfds went to later vectors",
        Search("legacy-intx", 7), "peer-disconnect-not-cleaned-without-ioeventfd"),
    Fix("62a830b688a9", "2.6.0", "master=on was accepted for any ID: two migration masters",
        Search("contrib-master", 4), "two-masters"),
    Fix("2d1d422d1145", "2.6.0",
        "with MSI-X in use, software could still raise INTx through the status and mask "
        "registers",
        Search(_LEGACY_MSI, 4), "intx-driven-with-msi"),
    Fix("6dc64780c2a8", "2.6.0",
        "ivshmem-plain without memdev and ivshmem-doorbell without chardev crashed QEMU in "
        "realize",
        Search(_one_device("ivshmem-plain"), 2), "plain-without-memdev-aborts"),
    Fix("3a55fc0f2431", "2.6.0",
        "shared memory arrived after realize: the guest saw IVPosition -1 and no shared "
        "memory until the server's messages came, and both changed under it",
        Search("legacy-intx", 2), "ivposition-before-setup"),
    Fix("a3feb08639e7", "2.6.0",
        "the setup took the ID in any order: an own eventfd that came before it was filed as "
        "another peer's, and its interrupts never reached the guest",
        Search(_EVENTFD_BEFORE_ID, 6, prop="own_vectors_watched"), "own-eventfd-before-id"),
    Fix("d855e2756554", "2.6.0",
        "a failed realize left its migration blocker registered: after a failed device_add "
        "the QEMU could not migrate",
        Search(_FAILED_HOTPLUG, 2), "failed-hotplug-leaves-migration-blocker"),
    Fix("b2b79a696052", "2.8.0",
        "use64 had the opposite sense: ivshmem-plain/-doorbell got a 32-bit BAR2",
        Search("contrib-tcg", 3), "bar2-32-bit"),
    Fix("51af0ec9fa72", "2.11.0",
        "on a big-endian host the setup messages were not byte-swapped: every device but "
        "the first refused its ID",
        Search(_BIG_ENDIAN, 3), "big-endian-host-refuses-its-id"),
    Fix("e6a354be6ea0", "2.12.0",
        "unmasking a vector the server sent no eventfd for updated a KVM route that does not "
        "exist: kvm_irqchip_commit_routes asserted",
        Search("contrib-kvm", 4), "unmask-route-less-vector-commit-aborts"),
    Fix("089fd8037619", "2.12.0",
        "irqfds stayed attached when MSI-X was disabled; re-enabling failed and asserted",
        Search("contrib-kvm", 5), "irqfd-attached-without-unmasked-record"),
    Fix("0b88dd942073", "2.12.0",
        "enable_irqfd had no rollback and disable_irqfd unset notifiers never set "
        "(an assertion)",
        Search("contrib-kvm", 3), "disable-irqfd-without-notifiers-aborts"),
    Fix("a40227911c4c", "2.12.0",
        "KVM routes survived a device reset; re-enabling MSI-X asserted",
        Search("contrib-kvm", 7), "reset-keeps-routes-reenable-aborts"),
    # after the seed, reverted from the release that has the fix (facts §6.1, §8)
    Fix("e34e47eb28c0", "4.0",
        "test-and-clear and cleanup of a zeroed EventNotifier touched fd 0 (stdin)",
        Search("contrib-kvm", 5, baseline="qemu-7.2"), "vector-poll-reads-stdin"),
    Fix("2d37fe9e5e61", "5.1",
        "a failed msix_set_vector_notifiers left the poll notifier set",
        Search("msix-reset-kvm", 9, baseline="qemu-7.2"), "msi-while-msix-disabled-after-reset"),
    Fix("ef44cc0a7624", "10.0.7",
        "msix_init took an unsigned short: vectors >= 65536 were truncated",
        Search(_VECTORS_65537, 2, baseline="fixed"), "msix-table-truncated-to-one-entry"),
    # --- not modelled, and why ---------------------------------------------------------------
    Fix("1309cf448a6d", "2.6.0",
        "(with 3a55fc0f2431) realize did not wait for the server's setup messages",
        unmodelled="the other half of one change, reverted together with 3a55fc0f2431 in "
        "before-3a55fc0f2431"),
    Fix("71c265816dd2", "2.6.0",
        "a version mismatch deleted the chardev under the device",
        unmodelled=_ASYNC + ", which deletes the chardev on a mismatch; what the fix kept is "
        "the socket, which the model does not close (see the flag's text)"),
    Fix("cd9953f720e1", "2.6.0",
        "invalid peer IDs were rejected late, in the asynchronous reader",
        unmodelled="2.5's reader dropped a position < -1 and refused one past "
        "IVSHMEM_MAX_PEERS when growing peers[], closing the fd: the same fate as the seed's "
        "early check (601-605) for every message, another error text"),
    Fix("3c27969b3e73", "2.6.0",
        "interrupts set up twice went unnoticed",
        unmodelled="the fix adds assertions (seed 393, 467) where the code before returned "
        "early: reverting it removes aborts the seed reaches "
        "(msix-reenable-after-leaked-route-aborts) and adds no violation of its own"),
    Fix("b7b1e9dd6d56", "2.10.0",
        "ivshmem_recv_msg added -EINTR to its byte count: the next read went to the 4 bytes "
        "before its buffer on the stack",
        unmodelled="only a signal interrupting the blocking read in realize returns -EINTR "
        "(2.9's loop did 'n += ret' for it); no action of the vocabulary, nor the qtest "
        "backend, can deliver one at that point"),
    Fix("15377f6e79cc", "after the seed",
        "msix_vector_use/unuse/notify/set_mask returned silently for a vector out of range",
        unmodelled="like 3c27969b3e73, the fix turns a silent return into an assertion "
        "(flag msix_range_asserts): reverting it removes aborts and adds no violation"),
    Fix("42e2a7a0ab23", "after the seed",
        "a PBA read at a non-zero offset polled vectors 0-31 instead of the ones it read",
        unmodelled="every configuration the checkers explore has fewer than 32 vectors, so "
        "a PBA read never starts past vector 0 (flag msix_pba_poll_range); a property "
        "'a PBA read shows every signalled masked vector it covers' needs a 33-vector "
        "configuration the explorer cannot afford yet"),
    Fix("8ccd35f25cdf", "after the seed",
        "a shared-memory message without fd was rejected by fstat(-1), and an invalid "
        "message closed fd -1",
        unmodelled="same fate, another error text (flag shm_message_needs_fd); close(-1) "
        "touches no descriptor"),
    Fix("363ba1c72fed", "2.2.0", "the position from the server was not validated",
        unmodelled="a 2014 fix to the FIFO-era reader, whose code the seed no longer has; "
        "the seed's own checks (601-605, 717-719) are the fix's descendants"),
    Fix("34bc07c5282a", "2.2.0", "out-of-bounds read/write on the peers array",
        unmodelled="a 2014 fix to the FIFO-era reader (see 363ba1c72fed)"),
    Fix("a2e9011b4164", "2.2.0", "ivshmem_read trusted its size argument",
        unmodelled="a 2014 fix to the FIFO-era reader (see 363ba1c72fed)"),
    Fix("3a31cff11203", "2.2.0", "an fd leak in the FIFO-era reader",
        unmodelled="a 2014 fix to the FIFO-era reader (see 363ba1c72fed)"),
)

BY_COMMIT: dict[str, Fix] = {fix.commit: fix for fix in HISTORY}


def hunt(fix: Fix) -> tuple[DiffFinding | None, float]:
    """The differential explorer's first finding for ``fix`` (the shortest violation, in
    BFS order), and the seconds the search took."""
    if fix.search is None:
        return None, 0.0
    began = time.perf_counter()
    found = differential_search(fix.search.resolve(), get_variant(fix.variant),
                                get_variant(fix.search.baseline), max_depth=fix.search.depth)
    seconds = time.perf_counter() - began
    if fix.search.prop:
        found = [f for f in found if f.property == fix.search.prop]
    if not found:
        return None, seconds
    return min(found, key=lambda f: (len(f.path), f.seconds)), seconds


def corpus_entry(fix: Fix, finding: DiffFinding) -> Counterexample:
    """``finding`` as a minimized corpus counterexample, with who found it and how fast."""
    assert fix.search is not None
    config = fix.search.resolve()
    raw = Counterexample(
        name=f"{fix.variant}-{fix.slug}",
        property=finding.property,
        summary=f"Without {fix.commit} ({fix.release}): {fix.broke}.",
        origin=(f"properties.history.hunt: properties.corpus.differential_search of "
                f"{fix.search.config_name()} under {fix.variant} against "
                f"{fix.search.baseline}, depth {fix.search.depth}; minimized by "
                "properties.corpus.minimize_counterexample"),
        trace=Trace(config, finding.path),
        expect=tuple(sorted(expectations(config, finding.path, finding.property).items())),
        extra=(("found_by", {"checker": "explore", "config": fix.search.config_name(),
                             "variant": fix.variant,
                             "seconds": round(finding.seconds, 2)}),),
    )
    return minimize_counterexample(raw)


def showing(corpus: Iterable[Counterexample], fix: Fix) -> list[Counterexample]:
    """The corpus entries on which ``fix``'s ``before-<commit>`` variant violates a property
    that the variant with the fix holds."""
    assert fix.search is not None
    return [cx for cx in corpus
            if (expect := dict(cx.expect)).get(fix.variant, "holds") != "holds"
            and expect.get(fix.search.baseline) == "holds"]


def corpus_file(folder: Path, fix: Fix) -> Path:
    return folder / f"{fix.variant}-{fix.slug}.json"

"""The ``before-<commit>`` variants: the seed with one historical fix reverted (facts §6.2).

Each variant differs from the seed in exactly one flag, which cites its commit; each has a
counterexample in the corpus, found by a checker, that it violates and the seed passes.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from helpers import contrib, run

from ivshmem_model.model.actions import Connect, MmioWrite, Realize, load_counterexample
from ivshmem_model.model.device import Reg
from ivshmem_model.model.variants import (
    BEFORE,
    BEFORE_COMMITS,
    BEFORE_POST_SEED,
    FIXED,
    POST_SEED_FIXES,
    QEMU_7_2,
    SEED,
    Variant,
)
from ivshmem_model.properties.corpus import differential_search

CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"
FOUND = list(BEFORE_COMMITS)


def _before_flags(variant: Variant) -> list[str]:
    return [name for name, on in variant.flags().items() if on and name.startswith("before_")]


@pytest.mark.parametrize("variant", BEFORE, ids=[v.name for v in BEFORE])
def test_a_before_variant_is_the_seed_with_one_flag(variant: Variant) -> None:
    commit = variant.name.removeprefix("before-")
    assert len(commit) == 12 and int(commit, 16) >= 0
    on = [name for name, value in variant.flags().items() if value]
    assert on == [f"before_{commit}"]
    meta = next(f.metadata for f in fields(variant) if f.name == on[0])
    assert meta["commit"] == commit
    assert meta["lines"] and meta["why"]


def test_the_other_variants_revert_nothing() -> None:
    for variant in (SEED, QEMU_7_2, FIXED):
        assert _before_flags(variant) == []


@pytest.mark.parametrize("commit", FOUND)
def test_the_corpus_shows_each_reverted_fix(commit: str) -> None:
    files = sorted(CORPUS.glob(f"before-{commit}-*.json"))
    assert files, f"no counterexample for before-{commit}"
    for path in files:
        cx = load_counterexample(str(path))
        expect = dict(cx.expect)
        assert expect["seed"] == "holds"
        assert expect["fixed"] == "holds"
        assert expect[f"before-{commit}"] != "holds"
        assert "found_by" in dict(cx.extra)


@pytest.mark.parametrize(("config", "commit", "prop", "site", "depth"), [
    (contrib(irqfd=True), "0b88dd942073", "no_abort", "msix.c msix_unset_vector_notifiers", 3),
    (contrib(realize=(("ivshmem-doorbell", (("chardev", True), ("master", "on"),
                                            ("vectors", 1))),)),
     "62a830b688a9", "master_unique", "", 4),
])
def test_the_differential_explorer_finds_a_reverted_fix(
    config: object, commit: str, prop: str, site: str, depth: int
) -> None:
    variant = next(v for v in BEFORE if v.name == f"before-{commit}")
    found = differential_search(config, variant, SEED, max_depth=depth)  # type: ignore[arg-type]
    assert (prop, site) in {(f.property, f.site) for f in found}
    assert len(next(f for f in found if f.property == prop).path) == depth


def test_intx_with_msi_on_the_legacy_device() -> None:
    """Before 2d1d422d1145 the legacy device with msi=on (pin 1) drove INTx from its status
    and mask registers; the seed leaves INTx alone."""
    config = contrib(endpoints=1)
    steps = (
        Connect(0),
        Realize(0, "ivshmem", (("chardev", True), ("msi", True))),
        MmioWrite(0, int(Reg.INTRMASK), 1),
        MmioWrite(0, int(Reg.INTRSTATUS), 1),
    )
    variant = next(v for v in BEFORE if v.name == "before-2d1d422d1145")
    before = run(config, *steps, variant=variant)
    assert before.disabled_step is None
    hit = before.first("intx_rule")
    assert hit is not None and hit.step == 3
    assert run(config, *steps).first("intx_rule") is None


@pytest.mark.parametrize(("commit", "base", "flag"), POST_SEED_FIXES,
                         ids=[c for c, _, _ in POST_SEED_FIXES])
def test_a_post_seed_fix_is_reverted_from_the_release_that_has_it(
    commit: str, base: Variant, flag: str
) -> None:
    variant = next(v for v in BEFORE_POST_SEED if v.name == f"before-{commit}")
    assert getattr(base, flag) and not getattr(variant, flag)
    differing = [k for k, on in variant.flags().items() if on != base.flags()[k]]
    assert differing == [flag]
    meta = next(f.metadata for f in fields(variant) if f.name == flag)
    assert meta["commit"] == commit
    shown = [
        path.name for path in sorted(CORPUS.glob("*.json"))
        if (expect := dict(load_counterexample(str(path)).expect)).get(base.name) == "holds"
        and expect.get(f"before-{commit}", "holds") != "holds"
    ]
    assert shown, f"no counterexample shows before-{commit} against {base.name}"


# ---------------------------------------------------------------------------------------------
# properties/history.py: every fix, modelled or said why not


def test_every_before_variant_has_its_fix_in_the_history() -> None:
    from ivshmem_model.properties.history import BY_COMMIT

    variants = {v.name for v in (*BEFORE, *BEFORE_POST_SEED)}
    modelled = {fix.variant for fix in BY_COMMIT.values() if fix.search is not None}
    assert variants == modelled
    for fix in BY_COMMIT.values():
        assert fix.broke and fix.release
        assert (fix.search is None) == bool(fix.unmodelled), fix.commit


@pytest.mark.parametrize("commit", [f.commit for f in __import__(
    "ivshmem_model.properties.history", fromlist=["HISTORY"]).HISTORY if f.search is not None])
def test_the_differential_explorer_finds_every_modelled_fix_unaided(commit: str) -> None:
    """The search the history names finds a violation under the before-variant that the
    variant with the fix holds, and the trace replays so on both."""
    from ivshmem_model.properties.corpus import outcome
    from ivshmem_model.properties.history import BY_COMMIT, hunt

    fix = BY_COMMIT[commit]
    assert fix.search is not None
    finding, _seconds = hunt(fix)
    assert finding is not None, f"{fix.variant} not found within depth {fix.search.depth}"
    config = fix.search.resolve()
    from ivshmem_model.model.variants import get_variant

    assert outcome(config, finding.path, get_variant(fix.variant), finding.property) \
        == finding.site
    assert outcome(config, finding.path, get_variant(fix.search.baseline),
                   finding.property) is None


def test_msi_off_without_msi_vectors_crashes_only_before_47213eb11047() -> None:
    from ivshmem_model.model.actions import Deliver

    config = contrib(endpoints=1)
    steps = (Connect(0), Realize(0, "ivshmem", (("chardev", True), ("msi", False))),
             Deliver(0))
    variant = next(v for v in BEFORE if v.name == "before-47213eb11047")
    hit = run(config, *steps, variant=variant).first("memory_safety")
    assert hit is not None and hit.step == 2 and "seed 393" in hit.message
    assert run(config, *steps).first("memory_safety") is None


@pytest.mark.parametrize("device", ["ivshmem-plain", "ivshmem-doorbell"])
def test_plain_and_doorbell_without_backend(device: str) -> None:
    """The seed refuses them with QEMU's error; before 6dc64780c2a8 realize reached the server
    path with no chardev (seed 917)."""
    config = contrib(endpoints=1)
    seed = run(config, Realize(0, device))
    assert seed.first("no_abort") is None
    errors = [o for o in seed.steps[0].observations if "error" in o]
    assert errors and "You must specify a" in str(errors[0])
    variant = next(v for v in BEFORE if v.name == "before-6dc64780c2a8")
    hit = run(config, Realize(0, device), variant=variant).first("no_abort")
    assert hit is not None and "Assertion `chr' failed" in hit.message


def test_bar2_type_bits_follow_use64_and_its_inversion() -> None:
    from ivshmem_model.model.actions import ConfigRead

    variant = next(v for v in BEFORE if v.name == "before-b2b79a696052")
    for device, props, want_64 in (("ivshmem-doorbell", (("chardev", True),), True),
                                   ("ivshmem", (("chardev", True), ("use64", 0)), False),
                                   ("ivshmem", (("chardev", True), ("use64", 1)), True)):
        steps = (Connect(0), Realize(0, device, props), ConfigRead(0, "bar2"))
        for v, expect_64 in ((SEED, want_64), (variant, not want_64)):
            result = run(contrib(endpoints=1), *steps, variant=v)
            assert result.disabled_step is None
            value = next(o["read"] for o in result.steps[-1].observations if "read" in o)
            assert bool(int(value) & 0x4) == expect_64, (device, props, v.name)


def test_before_3a55fc0f2431_the_setup_arrives_after_realize() -> None:
    """2.5's asynchronous setup: realize reads nothing, IVPosition reads -1 until the ID
    message is delivered, and the shared memory is mapped only when its message comes."""
    from ivshmem_model.model.actions import Deliver, MmioRead

    variant = next(v for v in BEFORE if v.name == "before-3a55fc0f2431")
    legacy = Realize(0, "ivshmem", (("chardev", True), ("msi", False)))
    steps = (Connect(0), legacy, MmioRead(0, int(Reg.IVPOSITION)), Deliver(0), Deliver(0),
             MmioRead(0, int(Reg.IVPOSITION)), Deliver(0))
    result = run(contrib(endpoints=1), *steps, variant=variant)
    assert result.disabled_step is None
    reads = [o["read"] for s in result.steps for o in s.observations if "read" in o]
    assert reads == [0xFFFFFFFF, 0]
    assert result.first("ivposition") is not None
    device = result.final.endpoints[0].device
    assert device is not None and device.bar2 == "server"
    # the seed reads the whole setup in realize: IVPosition is the ID from the first read on
    seed = run(contrib(endpoints=1), Connect(0), legacy, MmioRead(0, int(Reg.IVPOSITION)))
    assert [o["read"] for o in seed.steps[-1].observations if "read" in o] == [0]


def test_before_3a55fc0f2431_a_wrong_version_deletes_the_chardev() -> None:
    from ivshmem_model.model.actions import Config as TraceConfig
    from ivshmem_model.model.actions import Deliver, HostConfig, ServerConfig, ServerSend

    variant = next(v for v in BEFORE if v.name == "before-3a55fc0f2431")
    legacy = Realize(0, "ivshmem", (("chardev", True), ("msi", False)))
    config = TraceConfig(endpoints=1, server=ServerConfig(policy="scripted"),
                         host=HostConfig())
    result = run(config, Connect(0), legacy, ServerSend(0, 7), Deliver(0), ServerSend(0, 0),
                 Deliver(0), variant=variant)
    assert result.disabled_step == 5  # nothing reads the socket any more
    errors = [o["error"] for o in result.steps[3].observations if "error" in o]
    assert errors and errors[0].startswith("incompatible version")


def test_bswap64_reverses_the_bytes_of_an_int64() -> None:
    from ivshmem_model.model.device import bswap64

    assert bswap64(0) == 0 and bswap64(-1) == -1
    assert bswap64(1) == 1 << 56
    assert bswap64(bswap64(0x0123456789ABCDEF)) == 0x0123456789ABCDEF


def test_before_51af0ec9fa72_on_a_big_endian_host() -> None:
    """ID 0 reads the same either way; ID 1 byte-swapped is 2**56, past IVSHMEM_MAX_PEERS.
    On a little-endian host, or with the fix, nothing changes."""
    from dataclasses import replace

    from ivshmem_model.model.actions import HostConfig

    variant = next(v for v in BEFORE if v.name == "before-51af0ec9fa72")
    little = contrib()
    big = replace(little, host=HostConfig(big_endian=True))
    steps = (Connect(0), Connect(1), Realize(1, "ivshmem-doorbell", (("chardev", True),)))
    hit = run(big, *steps, variant=variant).first("protocol_agreement")
    assert hit is not None and "server sent invalid ID message" in hit.message
    assert run(big, *steps).first("protocol_agreement") is None
    assert run(little, *steps, variant=variant).first("protocol_agreement") is None
    assert big.to_json()["host"]["big_endian"] is True
    assert "big_endian" not in little.to_json()["host"]


def test_before_d855e2756554_a_failed_device_add_keeps_qemu_from_migrating() -> None:
    """A master=off doorbell whose MSI-X table cannot be made (0 vectors) fails to realize;
    before the fix its migration blocker stayed, and the next device cannot migrate."""
    variant = next(v for v in BEFORE if v.name == "before-d855e2756554")
    failing = Realize(0, "ivshmem-doorbell", (("chardev", True), ("vectors", 0),
                                              ("master", "off")), hotplug=True)
    before = run(contrib(endpoints=1), Connect(0), failing, variant=variant)
    hit = before.first("migration_blockers")
    assert hit is not None and hit.step == 1
    assert before.final.endpoints[0].stale_blockers == 1
    seed = run(contrib(endpoints=1), Connect(0), failing)
    assert seed.first("migration_blockers") is None
    assert seed.final.endpoints[0].stale_blockers == 0
    assert before.final.endpoints[0].fate is None  # device_add: QEMU runs on


def test_before_a3feb08639e7_an_own_eventfd_before_the_id_is_never_watched() -> None:
    """Version, then the device's own eventfd, then its ID: the seed refuses the second
    message as an ID; before the fix it was filed as peer 0's eventfd while the ID was still
    unknown, and nothing watches it once the ID says peer 0 is the device itself."""
    from ivshmem_model.model.actions import Config as TraceConfig
    from ivshmem_model.model.actions import HostConfig, ServerConfig, ServerSend

    variant = next(v for v in BEFORE if v.name == "before-a3feb08639e7")
    config = TraceConfig(endpoints=1, server=ServerConfig(policy="scripted"),
                         host=HostConfig())
    steps = (Connect(0), ServerSend(0, 0), ServerSend(0, 0, "eventfd"), ServerSend(0, 0),
             ServerSend(0, -1, "shm"), Realize(0, "ivshmem-doorbell", (("chardev", True),)))
    before = run(config, *steps, variant=variant)
    hit = before.first("own_vectors_watched")
    assert hit is not None and hit.step == 5
    seed = run(config, *steps)
    assert seed.first("own_vectors_watched") is None
    assert any("server sent invalid ID message" in str(o) for o in seed.steps[5].observations)
    # in order, the before-variant sets the interrupt up like the seed
    ordered = (Connect(0), ServerSend(0, 0), ServerSend(0, 0), ServerSend(0, -1, "shm"),
               ServerSend(0, 0, "eventfd"), Realize(0, "ivshmem-doorbell", (("chardev", True),)))
    assert run(config, *ordered, variant=variant).violations == \
        run(config, *ordered).violations

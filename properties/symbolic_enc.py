"""z3 terms for one ivshmem-doorbell device in irqfd mode: its state and its transitions.

The per-device slice of ``model/device.py`` + ``model/msix.py`` + ``model/proc.py`` that
touches vectors, masks, KVM routes and irqfds, with ``kvm_msi_irqfd`` on and the MSI feature
set (``ivshmem-doorbell``).  Arrays are indexed by vector (z3 ``Int``); every loop over
vectors is one ``Lambda`` (or one quantified "first failing vector"), never unrolled, so the
terms are the same for every vector count ``V`` and every peer id.

Abstractions (checked against ``step`` by :func:`properties.symbolic.agreement`):

* Only fates that end the process are kept, as one code; once ``fate != OK`` the rest of
  the state is left unconstrained (the concrete model keeps a half-updated device there).
* The device is the only endpoint; other peers are visible only through ``nb_peers``.
* ``unplug`` is final (re-plugging a device is not encoded); ``migrate`` is not encoded.
* Each own eventfd is a distinct kernel object, as the servers create them, so an irqfd is
  identified by its vector (``virq`` == vector in the model).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TypeAlias

import z3

from ivshmem_model.model.variants import Variant

# Fates, one code per property a fate violates.
OK = 0
ABORT_MASK = 1  # msix_fire_vector_notifier ret >= 0, unmask !v->unmasked, mask v->unmasked
ABORT_ROUTE = 2  # add_kvm_msi_virq !pdev (seed 467)
ABORT_OTHER = 3  # msix range asserts (qemu-7.2) and the like
CRASH_OOB = 4  # an index past its allocation: vector_bounds
CRASH_OTHER = 5  # NULL / freed / double free: memory_safety
FAIL = 9  # internal: a use notifier returned < 0 inside msix_set_vector_notifiers

MAX_PEERS = 0xFFFF
PCI_MSIX_MAX = 2048

IntExpr: TypeAlias = z3.ArithRef
BoolExpr: TypeAlias = z3.BoolRef
Arr: TypeAlias = z3.ArrayRef


@dataclass(frozen=True)
class Flags:
    """The variant flags that change this slice (see ``model/variants.py``)."""

    trunc: bool  # not msix_nentries_uint32
    range_asserts: bool
    rollback_clears_poll: bool
    pba_poll_range: bool
    own_id_resize: bool  # resize_peers_for_own_id
    unmask_ok: bool  # unmask_without_route_ok
    balanced: bool  # setup_interrupt_balanced
    exit_disables: bool
    poll_connected_only: bool

    @staticmethod
    def of(v: Variant) -> Flags:
        return Flags(
            trunc=not v.msix_nentries_uint32,
            range_asserts=v.msix_range_asserts,
            rollback_clears_poll=v.msix_rollback_clears_poll,
            pba_poll_range=v.msix_pba_poll_range,
            own_id_resize=v.resize_peers_for_own_id,
            unmask_ok=v.unmask_without_route_ok,
            balanced=v.setup_interrupt_balanced,
            exit_disables=v.exit_disables_irqfd,
            poll_connected_only=v.vector_poll_connected_only,
        )


@dataclass(frozen=True)
class Sym:
    """The symbolic device.  Array fields map a vector to its entry."""

    V: IntExpr  # the `vectors` property: msi_vectors[] and each eventfds[] have V entries
    N: IntExpr  # msix entries_nr (V, or V mod 65536 at the seed)
    vm_id: IntExpr
    nb_peers: IntExpr
    nb_ev: IntExpr  # peers[vm_id].nb_eventfds: own vector v is connected iff v < nb_ev
    enable: BoolExpr
    maskall: BoolExpr
    fmasked: BoolExpr  # msix_function_masked as stored
    notif: BoolExpr  # use/release notifiers installed
    poll: BoolExpr  # poll notifier installed
    plugged: BoolExpr
    fate: IntExpr
    mask: Arr  # table entry mask bit
    pend: Arr  # PBA
    used: Arr
    pdev: Arr  # msi_vectors[v].pdev
    unm: Arr  # msi_vectors[v].unmasked
    route: Arr  # number of KVM routes for v (Int)
    irqfd: Arr  # an irqfd attached for v
    sig: Arr  # own eventfd v has a count

    def ite(self, c: BoolExpr, other: Sym) -> Sym:
        """``self`` where ``c`` holds, else ``other``."""
        return Sym(**{
            f.name: z3.If(c, getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        })

    def values(self) -> list[z3.ExprRef]:
        return [getattr(self, f.name) for f in fields(self)]


ARRAYS = ("mask", "pend", "used", "pdev", "unm", "route", "irqfd", "sig")


def fresh(prefix: str) -> Sym:
    kw: dict[str, z3.ExprRef] = {}
    for f in fields(Sym):
        name = f"{prefix}.{f.name}"
        if f.name in ARRAYS:
            kw[f.name] = z3.Array(name, z3.IntSort(), z3.IntSort() if f.name == "route"
                                  else z3.BoolSort())
        elif f.name in ("enable", "maskall", "fmasked", "notif", "poll", "plugged"):
            kw[f.name] = z3.Bool(name)
        else:
            kw[f.name] = z3.Int(name)
    return Sym(**kw)


_counter = itertools.count()
_finite: list[int] = []


@contextmanager
def finite_loops(bound: int) -> Iterator[None]:
    """Within this block, "for every vector in [lo, hi)" is a conjunction over [0, bound):
    sound when every loop range lies inside it (bounded model checking adds ``N <= bound``
    and ``nb_ev <= bound``); ``V`` and the ids stay unbounded."""
    _finite.append(bound)
    try:
        yield
    finally:
        _finite.pop()


def for_all(lo: IntExpr, hi: IntExpr, body: Callable[[IntExpr], BoolExpr]) -> BoolExpr:
    """``body`` holds for every vector in [lo, hi)."""
    if _finite:
        return z3.And(z3.BoolVal(True), *[
            z3.Implies(z3.And(lo <= u, u < hi), body(z3.IntVal(u))) for u in range(_finite[-1])])
    u = z3.Int(f"u{next(_counter)}")
    return z3.ForAll([u], z3.Implies(z3.And(lo <= u, u < hi), body(u)))


class Ctx:
    """Side constraints of one transition (the aux "first failing vector" variables)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.side: list[BoolExpr] = []

    def first_bad(self, code: Callable[[IntExpr], IntExpr], lo: IntExpr, hi: IntExpr) -> IntExpr:
        """The code of the first vector in [lo, hi) whose code is non-zero, else 0."""
        n = next(_counter)
        f = z3.Int(f"{self.tag}.f{n}")
        found = z3.Bool(f"{self.tag}.found{n}")
        self.side.append(z3.If(
            found,
            z3.And(lo <= f, f < hi, code(f) != 0, for_all(lo, f, lambda u: code(u) == 0)),
            for_all(lo, hi, lambda u: code(u) == 0),
        ))
        return z3.If(found, code(f), 0)


def every_vector(body: Callable[[IntExpr], BoolExpr]) -> BoolExpr:
    """``body`` for every index (every index below the finite bound inside
    :func:`finite_loops`)."""
    if _finite:
        return z3.And(*[body(z3.IntVal(u)) for u in range(_finite[-1])])
    u = z3.Int(f"u{next(_counter)}")
    return z3.ForAll([u], body(u))


def lam(body: Callable[[IntExpr], z3.ExprRef]) -> Arr:
    v = z3.Int(f"v{next(_counter)}")
    return z3.Lambda([v], body(v))


def set_fate(s: Sym, code: IntExpr) -> Sym:
    """The first fate wins: a later stage never overwrites an earlier one."""
    return replace(s, fate=z3.If(z3.And(s.fate == OK, code != 0), code, s.fate))


def stage(s: Sym, body: Callable[[Sym], Sym]) -> Sym:
    """Run ``body`` only while the process is still alive."""
    return body(s).ite(s.fate == OK, s)


def masked(s: Sym, v: IntExpr) -> BoolExpr:
    """msix_is_masked: function masked or the entry's mask bit."""
    return z3.Or(s.fmasked, s.mask[v])


def peer_ok(s: Sym) -> BoolExpr:
    return s.vm_id < s.nb_peers


# ------------------------------------------------------------------------------------------
# Device notifiers (seed 312-386)


def unmask_code(fl: Flags, s: Sym, v: IntExpr) -> IntExpr:
    """ivshmem_vector_unmask's outcome: 0, FAIL (ret < 0) or a fate code."""
    return z3.If(z3.Not(peer_ok(s)), CRASH_OOB, z3.If(
        z3.Or(v < 0, v >= s.V), CRASH_OOB, z3.If(
            z3.Not(s.pdev[v]), 0 if fl.unmask_ok else FAIL, z3.If(
                s.unm[v], ABORT_MASK, z3.If(
                    z3.Or(v >= s.nb_ev, s.irqfd[v]), FAIL, 0)))))


def unmask_effect(s: Sym, v: IntExpr) -> tuple[BoolExpr, BoolExpr]:
    """(irqfd', unm') of vector v after a successful unmask."""
    attach = s.pdev[v]
    return z3.Or(s.irqfd[v], attach), z3.Or(s.unm[v], attach)


def mask_code(s: Sym, v: IntExpr) -> IntExpr:
    """ivshmem_vector_mask's outcome: 0 or a fate code (mask never fails otherwise)."""
    return z3.If(z3.Not(peer_ok(s)), CRASH_OOB, z3.If(
        z3.Or(v < 0, v >= s.V), CRASH_OOB, z3.If(
            z3.And(s.pdev[v], z3.Not(s.unm[v])), ABORT_MASK, 0)))


def mask_effect(s: Sym, v: IntExpr) -> tuple[BoolExpr, BoolExpr]:
    """(irqfd', unm') after ivshmem_vector_mask(v): a route-less vector is left alone."""
    return z3.And(s.irqfd[v], z3.Not(s.pdev[v])), z3.And(s.unm[v], z3.Not(s.pdev[v]))


def vector_poll(fl: Flags, s: Sym, ctx: Ctx, start: IntExpr, end: IntExpr) -> Sym:
    """ivshmem_vector_poll: masked vectors' pending events become PBA bits."""
    end = z3.If(end < s.V, end, s.V)
    if fl.poll_connected_only:
        s = set_fate(s, z3.If(peer_ok(s), 0, CRASH_OOB))
        end = z3.If(end < s.nb_ev, end, s.nb_ev)
    nonempty = start < end
    s = set_fate(s, z3.If(z3.And(nonempty, z3.Not(peer_ok(s))), CRASH_OOB, 0))
    s = set_fate(s, z3.If(z3.And(nonempty, end > s.N), CRASH_OOB, 0))

    def hit(v: IntExpr) -> BoolExpr:
        return z3.And(start <= v, v < end, v < s.nb_ev, masked(s, v), s.sig[v])

    pre = s
    return stage(s, lambda t: replace(
        t, pend=lam(lambda v: z3.Or(pre.pend[v], hit(v))),
        sig=lam(lambda v: z3.And(pre.sig[v], z3.Not(hit(v))))))


# ------------------------------------------------------------------------------------------
# MSI-X core loops


def mask_update_all(fl: Flags, s: Sym, ctx: Ctx, was_fm: BoolExpr) -> Sym:
    """msix_write_config's loop: msix_handle_mask_update for every entry."""
    pre = s

    def change(v: IntExpr) -> BoolExpr:
        was = z3.Or(was_fm, pre.mask[v])
        return z3.And(v >= 0, v < pre.N, was != masked(pre, v))

    def code(v: IntExpr) -> IntExpr:
        fire = z3.And(change(v), pre.notif)
        c = z3.If(masked(pre, v), mask_code(pre, v), unmask_code(fl, pre, v))
        return z3.If(fire, z3.If(c == FAIL, ABORT_MASK, c), 0)

    s = set_fate(s, ctx.first_bad(code, z3.IntVal(0), pre.N))

    def irq(v: IntExpr) -> BoolExpr:
        on = z3.If(masked(pre, v), mask_effect(pre, v)[0], unmask_effect(pre, v)[0])
        return z3.If(z3.And(change(v), pre.notif), on, pre.irqfd[v])

    def unm(v: IntExpr) -> BoolExpr:
        on = z3.If(masked(pre, v), mask_effect(pre, v)[1], unmask_effect(pre, v)[1])
        return z3.If(z3.And(change(v), pre.notif), on, pre.unm[v])

    def pend(v: IntExpr) -> BoolExpr:
        return z3.And(pre.pend[v], z3.Not(z3.And(change(v), z3.Not(masked(pre, v)))))

    return stage(s, lambda t: replace(t, irqfd=lam(irq), unm=lam(unm), pend=lam(pend)))


def enable_irqfd(fl: Flags, s: Sym, ctx: Ctx) -> Sym:
    """Seed 807-835 with msix_set_vector_notifiers and both rollbacks."""
    s = set_fate(s, z3.If(peer_ok(s), 0, CRASH_OOB))
    pre = s

    def add_code(i: IntExpr) -> IntExpr:
        return z3.If(i >= pre.V, CRASH_OOB, z3.If(
            pre.pdev[i], ABORT_ROUTE, z3.If(i >= pre.N, CRASH_OOB, 0)))

    s = set_fate(s, ctx.first_bad(add_code, z3.IntVal(0), pre.nb_ev))

    def conn(i: IntExpr) -> BoolExpr:
        return z3.And(i >= 0, i < pre.nb_ev)

    added = replace(
        s,
        route=lam(lambda i: pre.route[i] + z3.If(conn(i), 1, 0)),
        pdev=lam(lambda i: z3.Or(pre.pdev[i], conn(i))),
    )
    a = added
    run = z3.And(a.enable, z3.Not(a.maskall))

    def use_code(v: IntExpr) -> IntExpr:
        return z3.If(z3.And(run, v >= 0, v < a.N, z3.Not(masked(a, v))),
                     unmask_code(fl, a, v), 0)

    outcome = ctx.first_bad(use_code, z3.IntVal(0), a.N)
    ok = replace(
        a, notif=z3.BoolVal(True), poll=z3.BoolVal(True),
        irqfd=lam(lambda v: z3.If(z3.And(run, v >= 0, v < a.N, z3.Not(masked(a, v))),
                                  unmask_effect(a, v)[0], a.irqfd[v])),
        unm=lam(lambda v: z3.If(z3.And(run, v >= 0, v < a.N, z3.Not(masked(a, v))),
                                unmask_effect(a, v)[1], a.unm[v])),
    )
    ok = stage(ok, lambda t: vector_poll(fl, t, ctx, z3.IntVal(0), t.N))
    # rollback: msix_unset_notifier_for_vector undoes each earlier unmask exactly, then
    # enable_irqfd's undo releases every route it added.
    undone = replace(
        a, notif=z3.BoolVal(False), poll=z3.BoolVal(not fl.rollback_clears_poll),
        route=lam(lambda i: a.route[i] - z3.If(z3.And(conn(i), a.route[i] > 0), 1, 0)),
        pdev=lam(lambda i: z3.And(a.pdev[i], z3.Not(conn(i)))),
    )
    body = undone.ite(outcome == FAIL, ok)
    fate = z3.If(a.fate != OK, a.fate, z3.If(z3.Or(outcome == 0, outcome == FAIL), body.fate,
                                              outcome))
    return replace(body, fate=fate)


def disable_irqfd(fl: Flags, s: Sym, ctx: Ctx) -> Sym:
    """Seed 837-860 with msix_unset_vector_notifiers."""
    pre = s
    run = z3.And(pre.enable, z3.Not(pre.maskall))

    def rel(v: IntExpr) -> BoolExpr:
        return z3.And(run, v >= 0, v < pre.N, z3.Not(masked(pre, v)))

    s = set_fate(s, ctx.first_bad(lambda v: z3.If(rel(v), mask_code(pre, v), 0),
                                  z3.IntVal(0), pre.N))
    s1 = replace(
        s, notif=z3.BoolVal(False), poll=z3.BoolVal(False),
        irqfd=lam(lambda v: z3.If(rel(v), mask_effect(pre, v)[0], pre.irqfd[v])),
        unm=lam(lambda v: z3.If(rel(v), mask_effect(pre, v)[1], pre.unm[v])),
    )
    s1 = set_fate(s1, z3.If(peer_ok(s1), 0, CRASH_OOB))
    b = s1

    def conn(i: IntExpr) -> BoolExpr:
        return z3.And(i >= 0, i < b.nb_ev)

    def code(i: IntExpr) -> IntExpr:
        return z3.If(z3.And(conn(i), b.unm[i]), mask_code(b, i), 0)

    s2 = set_fate(s1, ctx.first_bad(code, z3.IntVal(0), b.nb_ev))
    s2 = stage(s2, lambda t: replace(
        t,
        irqfd=lam(lambda i: z3.If(z3.And(conn(i), b.unm[i]), mask_effect(b, i)[0], b.irqfd[i])),
        unm=lam(lambda i: z3.If(z3.And(conn(i), b.unm[i]), mask_effect(b, i)[1], b.unm[i])),
        route=lam(lambda i: b.route[i] - z3.If(z3.And(conn(i), b.pdev[i], b.route[i] > 0),
                                               1, 0)),
        pdev=lam(lambda i: z3.And(b.pdev[i], z3.Not(conn(i)))),
    ))
    return s2.ite(pre.notif, pre)


# ------------------------------------------------------------------------------------------
# Actions.  Each returns (enabled, post-state, side constraints).


Step = tuple[BoolExpr, Sym, list[BoolExpr]]


def alive(s: Sym) -> BoolExpr:
    return z3.And(s.fate == OK, s.plugged)


def write_config(fl: Flags, s: Sym, tag: str, enable: BoolExpr | None,
                 maskall: BoolExpr | None) -> Step:
    """ivshmem_write_config (seed 862-878) on the MSI-X control word."""
    ctx = Ctx(tag)
    was_en = s.enable
    t = replace(s, enable=s.enable if enable is None else enable,
                maskall=s.maskall if maskall is None else maskall)
    was_fm = t.fmasked
    t = replace(t, fmasked=z3.Or(z3.Not(t.enable), t.maskall))
    looped = mask_update_all(fl, t, ctx, was_fm)
    t = looped.ite(z3.And(t.enable, t.fmasked != was_fm), t)
    on = stage(t, lambda u: enable_irqfd(fl, u, ctx))
    off = stage(t, lambda u: disable_irqfd(fl, u, ctx))
    post = on.ite(z3.And(z3.Not(was_en), t.enable),
                  off.ite(z3.And(was_en, z3.Not(t.enable)), t))
    return alive(s), post, ctx.side


def msix_mask(fl: Flags, s: Sym, tag: str, v: IntExpr, m: BoolExpr) -> Step:
    """msix_table_mmio_write of one vector-control word."""
    ctx = Ctx(tag)
    was = masked(s, v)
    t = replace(s, mask=z3.Store(s.mask, v, m))
    now = masked(t, v)
    fire = z3.And(was != now, t.notif)
    code = z3.If(now, mask_code(t, v), unmask_code(fl, t, v))
    u = set_fate(t, z3.If(fire, z3.If(code == FAIL, ABORT_MASK, code), 0))
    irq = z3.If(now, mask_effect(t, v)[0], unmask_effect(t, v)[0])
    un = z3.If(now, mask_effect(t, v)[1], unmask_effect(t, v)[1])
    u = replace(u, irqfd=z3.Store(t.irqfd, v, z3.If(fire, irq, t.irqfd[v])),
                unm=z3.Store(t.unm, v, z3.If(fire, un, t.unm[v])),
                pend=z3.Store(t.pend, v, z3.And(t.pend[v], z3.Not(z3.And(was != now,
                                                                          z3.Not(now))))))
    return z3.And(alive(s), v >= 0, v < s.N), u, ctx.side


def own_connect(fl: Flags, s: Sym, tag: str) -> Step:
    """process_msg with posn == vm_id and an fd: process_msg_connect -> setup_interrupt."""
    ctx = Ctx(tag)
    t = replace(s, nb_peers=z3.If(s.nb_peers > s.vm_id, s.nb_peers, s.vm_id + 1))
    v = t.nb_ev
    c = replace(t, nb_ev=v + 1)
    go = z3.And(c.enable, c.notif) if fl.balanced else c.enable
    code = z3.If(v >= c.V, CRASH_OOB, z3.If(c.pdev[v], ABORT_ROUTE, z3.If(
        v >= c.N, CRASH_OOB, 0)))
    d = set_fate(c, code)
    attach = z3.Not(masked(c, v))
    d = replace(d, route=z3.Store(c.route, v, c.route[v] + 1), pdev=z3.Store(c.pdev, v, True),
                unm=z3.Store(c.unm, v, z3.Or(c.unm[v], attach) if fl.balanced else c.unm[v]),
                irqfd=z3.Store(c.irqfd, v, z3.Or(c.irqfd[v], attach)))
    post = d.ite(go, c).ite(v < s.V, t)
    return alive(s), post, ctx.side


def peer_grow(s: Sym, ident: IntExpr) -> Step:
    """A message for a fresh id >= nb_peers: resize_peers(id + 1)."""
    ok = z3.And(alive(s), ident >= s.nb_peers, ident <= MAX_PEERS)
    return ok, replace(s, nb_peers=ident + 1), []


def pba_read(fl: Flags, s: Sym, tag: str, off: IntExpr) -> Step:
    """msix_pba_mmio_read at byte ``off`` (polls first)."""
    ctx = Ctx(tag)
    start = off * 8
    raw = (off + 4) * 8 if fl.pba_poll_range else off + 32
    end = z3.If(raw < s.N, raw, s.N)
    polled = vector_poll(fl, s, ctx, start, end)
    ok = z3.And(alive(s), off >= 0, off % 4 == 0, off <= 4092, off * 8 < s.N + 63 - (s.N + 63) % 64)
    return ok, polled.ite(s.poll, s), ctx.side


def ring_self(s: Sym, v: IntExpr) -> Step:
    """A 4-byte DOORBELL write of (vm_id << 16) | v: the ioeventfd or the & 0xff path.  An
    attached irqfd consumes the count at once (model.device.own_eventfd_ready); otherwise it
    waits for an irqfd."""
    low = v % 256
    target = z3.If(v < s.nb_ev, v, z3.If(z3.And(peer_ok(s), low < s.nb_ev), low, -1))
    ok = z3.And(alive(s), v >= 0, v <= 0xFFFF)
    signalled = lam(lambda u: z3.Or(
        s.sig[u], z3.And(u == target, u >= 0, z3.Not(s.irqfd[u]))))
    return ok, replace(s, sig=signalled), []


def handle_irq(s: Sym, v: IntExpr) -> Step:
    """KVM's irqfd consumes the own eventfd's count."""
    ok = z3.And(alive(s), v >= 0, v < s.nb_ev, s.sig[v], s.irqfd[v])
    return ok, replace(s, sig=z3.Store(s.sig, v, False)), []


def reset(fl: Flags, s: Sym, tag: str) -> Step:
    """ivshmem_reset, then the PCI core's msix_reset."""
    ctx = Ctx(tag)
    t = disable_irqfd(fl, s, ctx)
    if fl.range_asserts:
        t = set_fate(t, z3.If(t.V > t.N, ABORT_OTHER, 0))
    n = t.N
    t = replace(
        t, used=lam(lambda v: z3.Or(t.used[v], z3.And(v >= 0, v < n))),
        pend=z3.K(z3.IntSort(), z3.BoolVal(False)), enable=z3.BoolVal(False),
        maskall=z3.BoolVal(False), mask=lam(lambda v: z3.And(v >= 0, v < n)),
    )
    return alive(s), t, ctx.side


def unplug(fl: Flags, s: Sym, tag: str) -> Step:
    """ivshmem_exit: the device goes; KVM routes and irqfds stay unless disabled first."""
    ctx = Ctx(tag)
    t = disable_irqfd(fl, s, ctx) if fl.exit_disables else s
    return alive(s), replace(t, plugged=z3.BoolVal(False)), ctx.side


def init(fl: Flags, s: Sym) -> BoolExpr:
    """The device right after realize (ivshmem-doorbell, chardev, kvm_msi_irqfd on).

    Own eventfds that arrived during setup (``nb_ev``) wait for MSI-X enable (seed 506).
    """
    n_of_v = s.V % 65536 if fl.trunc else s.V
    return z3.And(
        s.V >= 1, s.V <= 0xFFFFFFFF, n_of_v == s.N, s.N >= 1, s.N <= PCI_MSIX_MAX,
        s.vm_id >= 0, s.vm_id <= MAX_PEERS, s.nb_ev >= 0, s.nb_ev <= s.V,
        s.nb_peers == z3.If(z3.And(z3.Or(s.nb_ev > 0, fl.own_id_resize), s.vm_id >= 16),
                            s.vm_id + 1, 16),
        z3.Not(s.enable), z3.Not(s.maskall), s.fmasked, z3.Not(s.notif), z3.Not(s.poll),
        s.plugged,
        s.fate == (z3.If(s.V > s.N, ABORT_OTHER, OK) if fl.range_asserts else OK),
        every_vector(lambda v: z3.And(
            s.mask[v] == z3.And(v >= 0, v < s.N), s.used[v] == z3.And(v >= 0, v < s.N),
            z3.Not(s.pend[v]), z3.Not(s.pdev[v]), z3.Not(s.unm[v]), s.route[v] == 0,
            z3.Not(s.irqfd[v]), z3.Not(s.sig[v]))),
    )


# Action kinds for bounded model checking; params: v (vector / id / offset) and b.
KINDS = ("enable", "funcmask", "mask", "connect", "grow", "pba", "ring", "irq", "reset",
         "unplug")


def action(fl: Flags, s: Sym, kind: str, tag: str, p: IntExpr, b: BoolExpr) -> Step:
    if kind == "enable":
        return write_config(fl, s, tag, b, None)
    if kind == "funcmask":
        return write_config(fl, s, tag, None, b)
    if kind == "mask":
        return msix_mask(fl, s, tag, p, b)
    if kind == "connect":
        return own_connect(fl, s, tag)
    if kind == "grow":
        return peer_grow(s, p)
    if kind == "pba":
        return pba_read(fl, s, tag, p)
    if kind == "ring":
        return ring_self(s, p)
    if kind == "irq":
        return handle_irq(s, p)
    if kind == "reset":
        return reset(fl, s, tag)
    return unplug(fl, s, tag)

"""Symbolic proofs (design §5.4): induction for ``fixed``, bounded model checking elsewhere.

The encoding lives in :mod:`properties.symbolic_enc`; this module states the properties over
it, proves them, turns satisfying assignments into traces, and checks the encoding against
``step`` (:func:`agreement`).  Decode theorems are in :mod:`properties.symbolic_decode`.

Properties, on the device slice (all vectors, all ids):

* ``vector_bounds``: no index past its allocation (fate ``CRASH_OOB``).
* ``mask_balance``: ``unmasked[v] == irqfd[v]`` for every ``v`` (none left after unplug), and
  no notifier assert (``ABORT_MASK``: ``ret >= 0``, ``!v->unmasked``, ``v->unmasked``).
* ``route_balance``: ``route[v] == pdev[v]`` (0 or 1), no route while MSI-X is disabled or
  after unplug, and no ``assert(!pdev)`` in ``add_kvm_msi_virq`` (``ABORT_ROUTE``).

None is inductive as stated (a state with a stray irqfd on a masked vector satisfies
``mask_balance`` and breaks it on the next mask); :func:`strengthened` is the inductive
invariant used for ``fixed``: no fate at all, ``vm_id < nb_peers``, ``N == V``, notifiers
installed exactly while MSI-X is enabled, ``pdev[v]`` exactly for connected vectors while
enabled, one route per ``pdev``, ``unmasked[v]`` exactly for routed vectors not masked, and
``enable -> function_masked == maskall``.  Each property follows from it.

Known limits: one device, irqfd mode only; ``migrate`` and re-plugging are not encoded;
traces decode to a scripted server on one endpoint.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import z3

from ivshmem_model.model.actions import (
    Action,
    Config,
    Connect,
    Deliver,
    HandleIrq,
    HostConfig,
    MsixEnable,
    MsixFunctionMask,
    MsixMask,
    PbaRead,
    Realize,
    Reset,
    Ring,
    ServerConfig,
    ServerSend,
    Trace,
    Unplug,
)
from ivshmem_model.model.state import Endpoint, Fate, SystemState, sparse_get
from ivshmem_model.model.variants import Variant, get_variant
from ivshmem_model.properties import symbolic_enc as enc
from ivshmem_model.properties.symbolic_enc import Flags, Sym

PROPERTIES = ("vector_bounds", "mask_balance", "route_balance")
Encoder = Callable[[Flags, Sym, str, str, z3.ArithRef, z3.BoolRef], enc.Step]


def prop(name: str, s: Sym) -> z3.BoolRef:
    if name == "vector_bounds":
        return s.fate != enc.CRASH_OOB
    if name == "mask_balance":
        balanced = enc.every_vector(
            lambda v: z3.If(s.plugged, s.unm[v] == s.irqfd[v], z3.Not(s.irqfd[v])))
        return z3.And(s.fate != enc.ABORT_MASK, z3.Implies(s.fate == enc.OK, balanced))
    routes = enc.every_vector(lambda v: z3.If(
        s.plugged,
        z3.And(s.route[v] == z3.If(s.pdev[v], 1, 0), z3.Implies(z3.Not(s.enable),
                                                               s.route[v] == 0)),
        s.route[v] == 0))
    return z3.And(s.fate != enc.ABORT_ROUTE, z3.Implies(s.fate == enc.OK, routes))


def base(fl: Flags, s: Sym) -> z3.BoolRef:
    return z3.And(
        s.V >= 1, s.V <= 0xFFFFFFFF, s.N >= 1, s.N <= enc.PCI_MSIX_MAX,
        (s.V % 65536 if fl.trunc else s.V) == s.N,
        s.vm_id >= 0, s.vm_id <= enc.MAX_PEERS, s.nb_peers >= 16,
        s.nb_peers <= enc.MAX_PEERS + 1, s.nb_ev >= 0, s.nb_ev <= s.V,
    )


def strengthened(fl: Flags, s: Sym) -> z3.BoolRef:
    """The inductive invariant for ``fixed`` (see the module docstring)."""
    plugged = z3.And(
        s.vm_id < s.nb_peers, s.N == s.V, s.notif == s.enable, s.poll == s.enable,
        z3.Implies(s.enable, s.fmasked == s.maskall),
        enc.every_vector(lambda v: z3.And(
            s.pdev[v] == z3.And(v >= 0, v < s.nb_ev, s.enable),
            s.route[v] == z3.If(s.pdev[v], 1, 0),
            s.unm[v] == z3.And(s.pdev[v], z3.Not(s.maskall), z3.Not(s.mask[v])),
            s.irqfd[v] == s.unm[v])),
    )
    gone = enc.every_vector(lambda v: z3.And(s.route[v] == 0, z3.Not(s.irqfd[v])))
    return z3.And(base(fl, s), s.fate == enc.OK, z3.If(s.plugged, plugged, gone))


@dataclass
class Outcome:
    """One property under one variant: ``proved``, ``counterexample`` or ``unknown``."""

    property: str
    variant: str
    status: str
    seconds: float
    depth: int | None = None
    file: str | None = None
    concrete_property: str | None = None
    detail: str = ""
    steps: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _solver(timeout_ms: int) -> z3.Solver:
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    return solver


def _valid(hyps: list[z3.BoolRef], goal: z3.BoolRef, timeout_ms: int) -> z3.CheckSatResult:
    """``unsat`` means ``hyps -> goal`` is valid."""
    solver = _solver(timeout_ms)
    solver.add(*hyps, z3.Not(goal))
    return solver.check()


def _eq(a: Sym, b: Sym, finite: int | None = None) -> list[z3.BoolRef]:
    """Field-wise equality; with ``finite``, arrays are compared on [0, finite) only."""
    if finite is None:
        return [x == y for x, y in zip(a.values(), b.values(), strict=True)]
    out = []
    for f in fields(Sym):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in enc.ARRAYS:
            out += [x[i] == y[i] for i in range(finite)]
        else:
            out.append(x == y)
    return out


def prove(name: str, variant: Variant, timeout_ms: int = 20_000,
          encoder: Encoder | None = None) -> Outcome:
    """Init => J, J /\\ T => J' (per action kind), J => property."""
    started = time.perf_counter()
    fl = Flags.of(variant)
    act = encoder or enc.action
    s, t = enc.fresh("s"), enc.fresh("t")
    p, b = z3.Int("p"), z3.Bool("b")
    j, j2 = strengthened(fl, s), strengthened(fl, t)
    checks: list[tuple[str, list[z3.BoolRef], z3.BoolRef]] = [
        ("init", [enc.init(fl, s)], j), ("implies", [j], prop(name, s))]
    for kind in enc.KINDS:
        en, post, side = act(fl, s, kind, f"T.{kind}", p, b)
        checks.append((kind, [j, en, *side, *_eq(t, post)], j2))
    for label, hyps, goal in checks:
        result = _valid(hyps, goal, timeout_ms)
        if result != z3.unsat:
            status = "unknown" if result == z3.unknown else "not-inductive"
            return Outcome(name, variant.name, "unknown", time.perf_counter() - started,
                           detail=f"{label}: {status}")
    return Outcome(name, variant.name, "proved", time.perf_counter() - started)


# ------------------------------------------------------------------------------------------
# Bounded model checking and decoding


@dataclass
class Unrolling:
    states: list[Sym]
    kinds: list[z3.ArithRef]
    params: list[tuple[z3.ArithRef, z3.BoolRef]]


def unroll(fl: Flags, solver: z3.Solver, k: int, encoder: Encoder | None = None,
           finite: int | None = None) -> Unrolling:
    act = encoder or enc.action
    states = [enc.fresh("s0")]
    solver.add(enc.init(fl, states[0]))
    kinds, params = [], []
    for i in range(k):
        s, t = states[-1], enc.fresh(f"s{i + 1}")
        kind, p, b = z3.Int(f"kind{i}"), z3.Int(f"p{i}"), z3.Bool(f"b{i}")
        solver.add(kind >= 0, kind < len(enc.KINDS))
        for j, name in enumerate(enc.KINDS):
            en, post, side = act(fl, s, name, f"k{i}.{name}", p, b)
            solver.add(z3.Implies(kind == j, z3.And(en, *side, *_eq(t, post, finite))))
        states.append(t)
        kinds.append(kind)
        params.append((p, b))
    return Unrolling(states, kinds, params)


FINITE = 4  # vector loops in BMC range over [0, FINITE); V and ids are not bounded by it
SMALL = {"V": 4, "vm_id": 20, "p": 40}
WIDE = {"V": 1 << 17, "vm_id": enc.MAX_PEERS, "p": enc.MAX_PEERS}


def _limit(u: Unrolling, bounds: dict[str, int]) -> list[z3.BoolRef]:
    s0 = u.states[0]
    out = [bounds["V"] >= s0.V, s0.vm_id <= bounds["vm_id"]]
    out += [z3.And(s.N <= FINITE, s.nb_ev <= FINITE) for s in u.states]
    out += [z3.And(p >= 0, p <= bounds["p"]) for p, _ in u.params]
    return out


def _val(model: z3.ModelRef, e: z3.ExprRef) -> int:
    return int(model.eval(e, model_completion=True).as_long())


def _bool(model: z3.ModelRef, e: z3.ExprRef) -> bool:
    return bool(z3.is_true(model.eval(e, model_completion=True)))


def symbolic_steps(model: z3.ModelRef, u: Unrolling) -> list[tuple[str, int, bool]]:
    return [(enc.KINDS[_val(model, k)], _val(model, p), _bool(model, b))
            for k, (p, b) in zip(u.kinds, u.params, strict=True)]


def config_for(vectors: int) -> Config:
    return Config(
        endpoints=1, server=ServerConfig(policy="scripted", vectors=1),
        host=HostConfig(kvm_msi_irqfd=True, ioeventfd=True),
        realize=(("ivshmem-doorbell", (("chardev", True), ("vectors", vectors))),),
    )


def init_actions(vectors: int, vm_id: int, nb_ev: int) -> list[Action]:
    """Connect and realize against a scripted server: version, id, own eventfds, shm."""
    out: list[Action] = [Connect(0), ServerSend(0, 0, None), ServerSend(0, vm_id, None)]
    out += [ServerSend(0, vm_id, "eventfd") for _ in range(nb_ev)]
    out += [ServerSend(0, -1, "shm"),
            Realize(0, "ivshmem-doorbell", (("chardev", True), ("vectors", vectors)))]
    return out


def concrete_actions(kind: str, p: int, b: bool, vm_id: int) -> list[Action]:
    """One symbolic step as the vocabulary's actions."""
    table: dict[str, Callable[[], list[Action]]] = {
        "enable": lambda: [MsixEnable(0, b)],
        "funcmask": lambda: [MsixFunctionMask(0, b)],
        "mask": lambda: [MsixMask(0, p, b)],
        "connect": lambda: [ServerSend(0, vm_id, "eventfd"), Deliver(0)],
        "grow": lambda: [ServerSend(0, p, None if p == vm_id else "eventfd"), Deliver(0)],
        "pba": lambda: [PbaRead(0, p)],
        "ring": lambda: [Ring(0, vm_id, p)],
        "irq": lambda: [HandleIrq(0, p)],
        "reset": lambda: [Reset(0)],
        "unplug": lambda: [Unplug(0)],
    }
    return table[kind]()


def fate_property(code: int, name: str) -> str:
    """The registry property a symbolic violation shows up as in the concrete model."""
    if code == enc.CRASH_OOB:
        return "vector_bounds"
    if code in (enc.ABORT_MASK, enc.ABORT_ROUTE):
        return "no_abort"
    return name


def violated(name: str, s: Sym, mode: str) -> z3.BoolRef:
    """``any`` violation, one by a ``fate`` (abort, crash) or one in the ``state`` of a live
    process (bookkeeping that disagrees)."""
    bad = z3.Not(prop(name, s))
    if mode == "fate":
        return z3.And(bad, s.fate != enc.OK)
    if mode == "state":
        return z3.And(bad, s.fate == enc.OK)
    return bad


def bmc(name: str, variant: Variant, depth: int = 8, out_dir: Path | None = None,
        timeout_ms: int = 60_000, mode: str = "any") -> Outcome:
    """The shortest violation within ``depth`` steps, replayed through ``step`` to confirm."""
    from ivshmem_model.properties.corpus import make_counterexample, write_counterexample
    from ivshmem_model.properties.trace import run_trace

    started = time.perf_counter()
    fl = Flags.of(variant)
    for k in range(depth + 1):
        for bounds in (SMALL, WIDE):
            solver = _solver(timeout_ms)
            with enc.finite_loops(FINITE):
                u = unroll(fl, solver, k, finite=FINITE)
                solver.add(*_limit(u, bounds), violated(name, u.states[-1], mode))
            result = solver.check()
            if result == z3.unknown:
                return Outcome(name, variant.name, "unknown", time.perf_counter() - started,
                               depth=k, detail=solver.reason_unknown())
            if result != z3.sat:
                continue
            model = solver.model()
            s0 = u.states[0]
            vectors, vm_id, nb_ev = (_val(model, s0.V), _val(model, s0.vm_id),
                                     _val(model, s0.nb_ev))
            sym = symbolic_steps(model, u)
            steps = init_actions(vectors, vm_id, nb_ev)
            for kind, p, b in sym:
                steps += concrete_actions(kind, p, b, vm_id)
            concrete = fate_property(_val(model, u.states[-1].fate), name)
            config = config_for(vectors)
            run = run_trace(Trace(config, tuple(steps)), variant)
            hit = run.first(concrete)
            outcome = Outcome(
                name, variant.name, "counterexample", time.perf_counter() - started, depth=k,
                concrete_property=concrete,
                steps=[{"kind": kd, "p": p, "b": b} for kd, p, b in sym],
            )
            if hit is None or run.disabled_step is not None:
                outcome.status = "unconfirmed"
                outcome.detail = "replay through step does not violate " + concrete
                return outcome
            outcome.detail = hit.message
            if out_dir is not None:
                cx = make_counterexample(
                    f"symbolic-{variant.name}-{name.replace('_', '-')}-{mode}", concrete,
                    hit.message,
                    config, tuple(steps),
                    f"ivshmem-model prove: z3 bounded model checking of {name} under "
                    f"{variant.name} ({mode}, depth {k}: shortest), replayed through step",
                )
                outcome.file = str(write_counterexample(out_dir, cx))
            return outcome
    return Outcome(name, variant.name, "unknown", time.perf_counter() - started, depth=depth,
                   detail=f"no violation within {depth} steps")


def check(name: str, variant_name: str, depth: int = 8, out_dir: Path | None = None) -> Outcome:
    """Prove by induction; where that fails, look for a counterexample."""
    variant = get_variant(variant_name)
    proof = prove(name, variant)
    if proof.status == "proved":
        return proof
    found = bmc(name, variant, depth, out_dir)
    found.seconds += proof.seconds
    return found


# ------------------------------------------------------------------------------------------
# Concrete states as z3 terms, and the agreement check


def _set(indices: set[int] | list[int]) -> z3.ArrayRef:
    return enc.lam(lambda v: z3.Or(z3.BoolVal(False), *[v == i for i in sorted(indices)]))


def _bits(mask: int, limit: int) -> z3.ArrayRef:
    """The set bits of ``mask`` (below ``limit``) as maximal intervals."""
    runs, v, start = [], 0, -1
    while v <= limit:
        on = v < limit and bool(mask >> v & 1)
        if on and start < 0:
            start = v
        if not on and start >= 0:
            runs.append((start, v))
            start = -1
        v += 1
    return enc.lam(lambda x: z3.Or(z3.BoolVal(False),
                                   *[z3.And(lo <= x, x < hi) for lo, hi in runs]))


def fate_code(fate: Fate | None) -> int:
    if fate is None:
        return enc.OK
    if fate.kind == "aborted":
        if "ret >= 0" in fate.reason or "v->unmasked" in fate.reason:
            return enc.ABORT_MASK
        if "msi_vectors[vector].pdev" in fate.reason:
            return enc.ABORT_ROUTE
        return enc.ABORT_OTHER
    if fate.kind == "crashed" and fate.reason.startswith("out_of_bounds"):
        return enc.CRASH_OOB
    return enc.CRASH_OTHER


def concrete_sym(state: SystemState, last: Sym | None = None) -> Sym | None:
    """Endpoint 0's device as constants; ``None`` if the slice cannot describe it."""
    ep: Endpoint = state.endpoints[0]
    code = fate_code(ep.fate)
    routes = Counter(ep.kvm_routes)
    route = enc.lam(lambda v: z3.Sum(z3.IntVal(0), *[z3.If(v == r, c, 0)
                                                     for r, c in routes.items()]))
    irqfd = _set([virq for virq, _ in ep.irqfds])
    d = ep.device
    if d is None:
        if last is None or not (ep.unplugged or code != enc.OK):
            return None
        return Sym(**{**{f.name: getattr(last, f.name) for f in fields(Sym)},
                      "fate": z3.IntVal(code), "plugged": z3.BoolVal(False),
                      "route": route, "irqfd": irqfd})
    own = sparse_get(d.peers, d.vm_id, None)
    nb_ev = own.nb_eventfds if own is not None else 0
    sig = set()
    for v in range(nb_ev):
        assert own is not None
        fd = state.fds[own.eventfds[v]] if v < len(own.eventfds) else None
        obj = state.objects[fd.obj] if fd is not None else None
        if obj is not None and obj.count:
            sig.add(v)
    m = d.msix
    return Sym(
        V=z3.IntVal(d.vectors), N=z3.IntVal(m.entries_nr), vm_id=z3.IntVal(d.vm_id),
        nb_peers=z3.IntVal(d.nb_peers), nb_ev=z3.IntVal(nb_ev), enable=z3.BoolVal(m.enable),
        maskall=z3.BoolVal(m.maskall), fmasked=z3.BoolVal(m.function_masked),
        notif=z3.BoolVal(m.notifiers), poll=z3.BoolVal(m.poll_notifier),
        plugged=z3.BoolVal(True), fate=z3.IntVal(code),
        mask=_bits(m.masked, m.entries_nr), pend=_bits(m.pending, m.entries_nr),
        used=_bits(m.used, m.entries_nr),
        pdev=_set([v for v, mv in d.msi_vectors if mv.pdev]),
        unm=_set([v for v, mv in d.msi_vectors if mv.unmasked]),
        route=route, irqfd=irqfd, sig=_set(sig),
    )


def projection(a: Sym, b: Sym, fate: int, plugged: bool) -> z3.BoolRef:
    """What must agree: only the fate once the process is dead; KVM state after unplug."""
    v = z3.Int("agree.v")
    if fate != enc.OK:
        return a.fate == b.fate
    arrays = ("route", "irqfd") if not plugged else enc.ARRAYS
    scalars = ["fate", "plugged"] if not plugged else [
        f.name for f in fields(Sym) if f.name not in enc.ARRAYS]
    eqs = [getattr(a, n) == getattr(b, n) for n in scalars]
    eqs.append(z3.ForAll([v], z3.And(*[getattr(a, n)[v] == getattr(b, n)[v] for n in arrays])))
    return z3.And(*eqs)


_TRANSITIONS: dict[tuple[Flags, str, int], tuple[Sym, z3.ArithRef, z3.BoolRef, enc.Step]] = {}


def transition(fl: Flags, kind: str, encoder: Encoder | None = None
               ) -> tuple[Sym, z3.ArithRef, z3.BoolRef, enc.Step]:
    """T(s, p, b) over a symbolic pre-state, built once per variant, kind and encoder."""
    act = encoder or enc.action
    key = (fl, kind, id(act))
    if key not in _TRANSITIONS:
        s, p, b = enc.fresh(f"pre.{kind}"), z3.Int(f"pre.{kind}.p"), z3.Bool(f"pre.{kind}.b")
        _TRANSITIONS[key] = (s, p, b, act(fl, s, kind, f"agree.{kind}", p, b))
    return _TRANSITIONS[key]


def agree_one(fl: Flags, pre: Sym, kind: str, p: int, b: bool, post: Sym | None,
              post_fate: int, post_plugged: bool, encoder: Encoder | None = None) -> str | None:
    """``None`` if the transition relation allows exactly the concrete successor."""
    s, sp, sb, (en, sym_post, side) = transition(fl, kind, encoder)
    pairs = [(x, y) for x, y in zip(s.values(), pre.values(), strict=True)]
    pairs += [(sp, z3.IntVal(p)), (sb, z3.BoolVal(b))]

    def sub(e: z3.ExprRef) -> z3.ExprRef:
        return z3.simplify(z3.substitute(e, *pairs))

    en = sub(en)
    side = [sub(c) for c in side]
    sym_post = Sym(**{f.name: sub(getattr(sym_post, f.name)) for f in fields(Sym)})
    solver = _solver(10_000)
    solver.add(en, *side)
    if post is None:
        return None if solver.check() == z3.unsat else f"{kind}({p}, {b}) enabled only in z3"
    same = projection(sym_post, post, post_fate, post_plugged)
    solver.push()
    solver.add(same)
    if solver.check() != z3.sat:
        return f"{kind}({p}, {b}): step's successor is not a z3 successor"
    solver.pop()
    solver.add(z3.Not(same))
    if solver.check() != z3.unsat:
        return f"{kind}({p}, {b}): z3 allows a successor step does not produce"
    return None

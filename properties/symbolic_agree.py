"""The agreement check (design §5.4): the z3 transition relation against ``step``.

Random walks over reachable states of one ``ivshmem-doorbell`` device under KVM irqfd (a
scripted server on one endpoint, so ids >= 16 and any vector count are reachable).  For each
step the concrete pre-state is encoded as z3 constants, the transition relation is asserted,
and the concrete post-state must be a successor (satisfiable) and the only one (its negation
unsatisfiable); a disabled action must be disabled in z3 too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ivshmem_model.model.actions import Action
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, step
from ivshmem_model.model.variants import Variant
from ivshmem_model.properties import symbolic_enc as enc
from ivshmem_model.properties.symbolic import (
    Encoder,
    agree_one,
    concrete_actions,
    concrete_sym,
    config_for,
    fate_code,
    init_actions,
)
from ivshmem_model.properties.symbolic_enc import Flags


@dataclass
class Agreement:
    samples: int = 0
    enabled: int = 0
    mismatches: list[str] = field(default_factory=list)


def _run(state: SystemState, actions: list[Action]) -> SystemState | None:
    for a in actions:
        result = step(state, a)
        if result is None:
            return None
        state = result[0]
    return state


def _params(rng: random.Random, kind: str, state: SystemState) -> tuple[int, bool]:
    d = state.endpoints[0].device
    assert d is not None
    b = rng.random() < 0.5
    n = d.msix.entries_nr
    if kind == "mask":
        return rng.randrange(n + 1), b
    if kind == "grow":
        return min(enc.MAX_PEERS, d.nb_peers + rng.choice([0, 0, 1, 5])), b
    if kind == "pba":
        return rng.choice([0, 0, 4, 8]), b
    if kind in ("ring", "irq"):
        return rng.choice([0, 1, 2, 3, 256]), b
    return 0, b


def agreement(variant: Variant, samples: int = 200, seed: int = 1,
              encoder: Encoder | None = None, walk: int = 12) -> Agreement:
    """Check ``samples`` transitions of random walks; mismatches are listed, not raised."""
    rng = random.Random(seed)
    fl = Flags.of(variant)
    out = Agreement()
    weights = [4, 3, 4, 4, 1, 2, 2, 2, 2, 1]
    while out.samples < samples:
        vectors = rng.choice([1, 2, 3, 4] + ([65537] if fl.trunc and rng.random() < 0.1 else []))
        vm_id = rng.choice([0, 1, 5, 16, 17])
        nb_ev = rng.randint(0, min(vectors, 2))
        config = config_for(vectors)
        state = _run(initial_state(config, variant), init_actions(vectors, vm_id, nb_ev))
        if state is None or state.endpoints[0].device is None:
            continue
        history = [f"init(V={vectors}, vm_id={vm_id}, nb_ev={nb_ev})"]
        for i in range(walk):
            kind = rng.choices(enc.KINDS, weights)[0]
            if i == 0 and rng.random() < 0.5:
                kind = "enable"
            p, b = _params(rng, kind, state)
            pre = concrete_sym(state)
            assert pre is not None
            nxt = _run(state, concrete_actions(kind, p, b, vm_id))
            post = None if nxt is None else concrete_sym(nxt, pre)
            if nxt is not None and post is None:
                out.mismatches.append(f"{kind}: successor outside the slice")
                break
            ep = nxt.endpoints[0] if nxt is not None else None
            post_fate = fate_code(ep.fate) if ep is not None else 0
            problem = agree_one(fl, pre, kind, p, b, post, post_fate,
                                ep is not None and ep.device is not None, encoder)
            out.samples += 1
            out.enabled += nxt is not None
            if problem is not None:
                out.mismatches.append(f"{problem} after {', '.join(history)}")
            history.append(f"{kind}({p}, {b})")
            if nxt is None:
                continue
            state = nxt
            if ep is None or ep.fate is not None or ep.device is None:
                break
    return out

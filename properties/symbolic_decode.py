"""Decode theorems: BAR0 writes (seed 209-249 behind the memory core) and server messages
(seed 597-621).

Each decode exists twice as z3 terms: a *specification* written from the facts sheet (§3.1,
§3.2: bit fields with ``Extract``, ranges as unsigned comparisons) and a *transcription* of
``model/device.py`` (shifts and masks, the same if-chain).  The theorem is their equality for
all inputs; :func:`concrete_agreement` then runs the model's own functions on random inputs
and compares what they did with the specification.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias
from unittest import mock

import z3

from ivshmem_model.model import device as dev
from ivshmem_model.model.proc import Proc, World
from ivshmem_model.model.state import LIVE, Device, Peer
from ivshmem_model.model.variants import SEED

NONE, MASK, STATUS, DOORBELL = 0, 1, 2, 3
INVALID, SHM, CONNECT, DISCONNECT = 0, 1, 2, 3
BV: TypeAlias = z3.BitVecRef


def _u32(x: BV) -> BV:
    return z3.ZeroExt(32, z3.Extract(31, 0, x))


def io_write_spec(addr: BV, val: BV, nb_peers: BV) -> tuple[BV, BV, BV]:
    """(kind, a, b): INTRMASK/INTRSTATUS store the low 32 bits; DOORBELL: dest = bits 16-31,
    vector = bits 0-7, ignored when dest >= nb_peers; the register is addr & 0xfc."""
    reg = z3.Concat(z3.BitVecVal(0, 56), z3.Extract(7, 2, addr), z3.BitVecVal(0, 2))
    dest = z3.ZeroExt(48, z3.Extract(31, 16, val))
    vector = z3.ZeroExt(56, z3.Extract(7, 0, val))
    zero = z3.BitVecVal(0, 64)
    ring = z3.ULT(dest, nb_peers)
    return (
        z3.If(reg == 0, MASK, z3.If(reg == 4, STATUS, z3.If(z3.And(reg == 12, ring), DOORBELL,
                                                            NONE))),
        z3.If(z3.Or(reg == 0, reg == 4), _u32(val), z3.If(reg == 12, dest, zero)),
        z3.If(reg == 12, vector, zero),
    )


def io_write_transcribed(addr: BV, val: BV, nb_peers: BV) -> tuple[BV, BV, BV]:
    """``ivshmem_io_write`` as written in model/device.py."""
    dest = z3.LShR(val, 16) & 0xFFFF
    vector = val & 0xFF
    addr = addr & 0xFC
    zero = z3.BitVecVal(0, 64)
    kind = z3.If(addr == 0, MASK, z3.If(addr == 4, STATUS, z3.If(
        addr == 12, z3.If(z3.UGE(dest, nb_peers), NONE, DOORBELL), NONE)))
    a = z3.If(z3.Or(addr == 0, addr == 4), val & 0xFFFFFFFF, z3.If(addr == 12, dest, zero))
    return kind, a, z3.If(addr == 12, vector, zero)


def dispatch(addr: BV, val: BV, size: BV, host: z3.BoolRef, registered: z3.ArrayRef,
             nb_peers: BV, spec: bool) -> list[z3.ExprRef]:
    """memory_region_dispatch_write: (dropped, ioeventfd hit, first access, second access)."""
    io = io_write_spec if spec else io_write_transcribed
    if spec:
        dropped = z3.Or(*[z3.And(size == n, z3.Extract(k - 1, 0, addr) != 0) if k else
                          z3.BoolVal(False) for n, k in ((1, 0), (2, 1), (4, 2), (8, 3))])
    else:
        dropped = z3.URem(addr, size) != 0
    hit = z3.And(z3.Not(dropped), host, size == 4, addr == 12, registered[val])
    wide = size == 8
    first = io(addr, z3.If(wide, _u32(val), val), nb_peers)
    second = io(addr + 4, z3.LShR(val, 32), nb_peers)
    live = z3.And(z3.Not(dropped), z3.Not(hit))
    out: list[z3.ExprRef] = [dropped, hit]
    out += [z3.If(live, x, 0) for x in first]
    out += [z3.If(z3.And(live, wide), x, 0) for x in second]
    return out


def doorbell_inputs() -> tuple[BV, BV, BV, z3.BoolRef, z3.ArrayRef, BV, z3.BoolRef]:
    addr, val, size, nb_peers = (z3.BitVec(n, 64) for n in ("addr", "val", "size", "peers"))
    host = z3.Bool("host")
    registered = z3.Array("registered", z3.BitVecSort(64), z3.BoolSort())
    domain = z3.And(
        z3.ULE(addr, 255), z3.Or(size == 1, size == 2, size == 4, size == 8),
        z3.Or(size == 8, z3.ULT(val, z3.LShR(z3.BitVecVal(1 << 32, 64), 32 - 8 * size))),
        z3.UGE(nb_peers, 16), z3.ULE(nb_peers, 65536))
    return addr, val, size, host, registered, nb_peers, domain


def prove_doorbell_decode(timeout_ms: int = 30_000) -> z3.CheckSatResult:
    """``unsat``: the specification and the transcription agree on every write."""
    addr, val, size, host, reg, peers, domain = doorbell_inputs()
    a = dispatch(addr, val, size, host, reg, peers, True)
    b = dispatch(addr, val, size, host, reg, peers, False)
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    solver.add(domain, z3.Or(*[x != y for x, y in zip(a, b, strict=True)]))
    result: z3.CheckSatResult = solver.check()
    return result


def msg_spec(msg: BV, has_fd: z3.BoolRef) -> z3.ArithRef:
    """§3.1: invalid outside [-1, 65535]; -1 is shared memory; an id with fd connects."""
    valid = z3.ULE(msg + 1, 65536)
    return z3.If(z3.Not(valid), INVALID, z3.If(msg == -1, SHM, z3.If(has_fd, CONNECT,
                                                                      DISCONNECT)))


def msg_transcribed(msg: BV, has_fd: z3.BoolRef) -> z3.ArithRef:
    """``process_msg`` as written in model/device.py (signed comparisons)."""
    return z3.If(z3.Or(msg < -1, msg > dev.IVSHMEM_MAX_PEERS), INVALID, z3.If(
        msg == -1, SHM, z3.If(has_fd, CONNECT, DISCONNECT)))


def prove_message_decode() -> z3.CheckSatResult:
    msg, fd = z3.BitVec("msg", 64), z3.Bool("fd")
    solver = z3.Solver()
    solver.add(msg_spec(msg, fd) != msg_transcribed(msg, fd))
    result: z3.CheckSatResult = solver.check()
    return result


# ------------------------------------------------------------------------------------------
# The model's own functions on concrete inputs


def _device(nb_peers: int, ioeventfds: list[tuple[int, int]]) -> dev.IVShmemState:
    proc = Proc(World((), (), ((),), True), 0, SEED, True)
    d = Device(type="ivshmem-doorbell", features=3, vectors=256, nb_peers=nb_peers,
               peers_block=LIVE, msi_vectors_block=LIVE, ioeventfds=tuple(ioeventfds))
    return dev.IVShmemState(proc, d)


@contextmanager
def _recording(log: list[tuple[Any, ...]]) -> Iterator[None]:
    full = Peer(256, tuple(range(256)), LIVE)

    def slot(s: object, posn: int, v: int, line: int) -> int:
        log.append((DOORBELL, posn, v))
        return 0

    with mock.patch.object(dev, "ivshmem_IntrMask_write",
                           lambda s, v: log.append((MASK, v & 0xFFFFFFFF, 0))), \
         mock.patch.object(dev, "ivshmem_IntrStatus_write",
                           lambda s, v: log.append((STATUS, v & 0xFFFFFFFF, 0))), \
         mock.patch.object(dev, "peer_at", lambda s, posn, line: full), \
         mock.patch.object(dev, "eventfd_slot",
                           slot), \
         mock.patch.object(Proc, "event_notifier_set",
                           lambda self, d, line: log.append(("set", d))):
        yield


def observe_write(addr: int, val: int, size: int, host: bool, registered: set[int],
                  nb_peers: int) -> list[tuple[Any, ...]]:
    log: list[tuple[Any, ...]] = []
    s = _device(nb_peers, [(m, 1000 + i) for i, m in enumerate(sorted(registered))])
    with _recording(log):
        dev.memory_region_dispatch_write(s, addr, val, size, host)
    return [e for e in log if e[0] != "set" or e[1] >= 1000]


def expected_write(addr: int, val: int, size: int, host: bool, registered: set[int],
                   nb_peers: int) -> list[tuple[Any, ...]]:
    """The specification's outcome, evaluated by z3, in the form :func:`observe_write` logs."""
    reg = z3.Lambda([x := z3.BitVec("x", 64)],
                    z3.Or(z3.BoolVal(False), *[x == m for m in sorted(registered)]))
    terms = dispatch(z3.BitVecVal(addr, 64), z3.BitVecVal(val, 64), z3.BitVecVal(size, 64),
                     z3.BoolVal(host), reg, z3.BitVecVal(nb_peers, 64), True)
    vals = [z3.simplify(t) for t in terms]
    if z3.is_true(vals[0]):
        return []
    if z3.is_true(vals[1]):
        return [("set", 1000 + sorted(registered).index(val))]
    out: list[tuple[Any, ...]] = []
    for kind, a, b in (vals[2:5], vals[5:8]):
        k = kind.as_long()
        if k != NONE:
            out.append((k, a.as_long(), b.as_long()))
    return out


def classify(msg: int, fd: int) -> int:
    """What ``process_msg`` did with one message (its callees recorded, not run)."""
    calls: list[int] = []
    s = _device(16, [])
    errp = dev.Errp()
    with mock.patch.object(dev, "process_msg_shmem", lambda *a: calls.append(SHM)), \
         mock.patch.object(dev, "process_msg_connect", lambda *a: calls.append(CONNECT)), \
         mock.patch.object(dev, "process_msg_disconnect",
                           lambda *a: calls.append(DISCONNECT)), \
         mock.patch.object(dev, "resize_peers", lambda *a: None), \
         mock.patch.object(Proc, "close", lambda *a: None):
        dev.process_msg(s, msg, fd, errp)
    if errp.msg is not None and errp.msg.startswith("server sent invalid message"):
        calls.append(INVALID)
    assert len(calls) == 1, calls
    return calls[0]


def concrete_agreement(samples: int = 2000, seed: int = 1) -> list[str]:
    """Random writes and messages through the model's functions against the specification."""
    rng = random.Random(seed)
    bad: list[str] = []
    for _ in range(samples):
        size = rng.choice([1, 2, 4, 8])
        addr = rng.choice([0, 4, 8, 12, 13, 14, 16, 248, 252, rng.randrange(256)])
        val = rng.getrandbits(8 * size)
        if rng.random() < 0.3:
            val = (rng.randrange(65536) << 16) | rng.randrange(2048)
            val &= (1 << 8 * size) - 1
        registered = {val} if rng.random() < 0.3 else {rng.getrandbits(32)}
        nb_peers = rng.choice([16, 17, 65536, rng.randint(16, 65536)])
        host = rng.random() < 0.7
        args = (addr, val, size, host, registered, nb_peers)
        if observe_write(*args) != expected_write(*args):
            bad.append(f"write {args}: model {observe_write(*args)}, "
                       f"spec {expected_write(*args)}")
    edges = [-(2**63), -2, -1, 0, 1, 15, 16, 65535, 65536, 2**63 - 1]
    for msg in edges + [rng.randint(-(2**63), 2**63 - 1) for _ in range(samples // 4)]:
        for fd in (-1, 7):
            want = z3.simplify(msg_spec(z3.BitVecVal(msg, 64), z3.BoolVal(fd >= 0)))
            if classify(msg, fd) != want.as_long():
                bad.append(f"message {msg} fd {fd}: model {classify(msg, fd)}, spec {want}")
    return bad

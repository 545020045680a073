"""The state records' hand-written methods (``model.state.Record``) against their fields.

Each record writes out its ``__init__`` and its compared-fields tuple ``_compared`` so that the
mypyc build compiles them; ``IVShmemState.freeze`` compares the scalar fields one by one.  A
field added to a record and forgotten in one of those would construct, compare, hash or freeze
wrongly without any other test noticing at once: these tests read the dataclass's own fields
and hold every hand-written list to them."""

from __future__ import annotations

import inspect
import pickle
from dataclasses import fields, is_dataclass, replace
from typing import Any

import pytest
from helpers import doorbell, play, scripted

from ivshmem_model.model import device as dev
from ivshmem_model.model import state as st
from ivshmem_model.model.actions import Connect, ServerSend
from ivshmem_model.model.system import Work
from ivshmem_model.model.variants import SEED
from ivshmem_model.properties.explore import compiled

FATE = st.Fate("aborted", "assert", 139, "msix.c")
DEVICE = st.Device("ivshmem-doorbell", 3, 2, peers=((0, st.Peer(1, (5,))),),
                   msi_vectors=((1, st.MSIVector(True, 1, True)),), ioeventfds=((0, 5),))
CONFIG = scripted()

# One record of each class, every optional record-valued field filled (``different`` of None
# is not defined).
SAMPLES: dict[type[st.Record], st.Record] = {
    st.Fate: FATE,
    st.Fault: st.Fault("write_closed", "fd 3", 400, "x"),
    st.FileObject: st.FileObject("eventfd", 1, 0, ((0, 1),)),
    st.Fd: st.Fd(1, 0, True, 7),
    st.Peer: st.Peer(1, (3,), st.LIVE),
    st.MSIVector: st.MSIVector(True, 2, False),
    st.Msix: st.Msix(True, 2, st.LIVE, True, False, False, 1, 2, 3, True, False),
    st.PciConfig: st.PciConfig(),
    st.Device: DEVICE,
    st.ClientPeer: st.ClientPeer(1, (2, 3)),
    st.Client: st.Client(3, 1, 2, (4,), (st.ClientPeer(1, (2,)),)),
    st.MemBackend: st.MemBackend("m", 4096, True, False, ((1, 2),)),
    st.Endpoint: st.Endpoint(True, "qemu", FATE, DEVICE, False, st.Client(), (1,),
                             ((1, 5),), ((5, 0),), (st.Fault("a", "b", 1),), True, ("m",), 1,
                             2, 3, (st.MemBackend("m", 1),), (4,)),
    st.ServerPeer: st.ServerPeer(1, 2, (3,)),
    st.Server: st.Server(True, 2, 1, (st.ServerPeer(0, 1, (2,)),), ""),
    st.SystemState: st.SystemState(st.Server(), (st.Endpoint(),), ((),), (st.Fd(0, 0),),
                                   (st.FileObject("eventfd"),), CONFIG, SEED),
}


def different(value: Any) -> Any:
    """A value of the same kind that is not equal to ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return (*value[:-1], different(value[-1])) if value else (0,)  # the same length
    if is_dataclass(value):  # a record (or the configuration, the variant): its first field
        name = fields(value)[0].name
        return replace(value, **{name: different(getattr(value, name))})  # type: ignore[type-var]
    raise AssertionError(f"no different value for {value!r}")


def test_every_record_class_has_a_sample() -> None:
    records = {c for c in vars(st).values()
               if isinstance(c, type) and issubclass(c, st.Record) and c is not st.Record}
    assert records == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_compared_is_the_compared_fields_in_order(cls: type[st.Record]) -> None:
    record = SAMPLES[cls]
    assert record._compared() == tuple(
        getattr(record, f.name) for f in fields(record) if f.compare)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_init_takes_the_init_fields_in_order(cls: type[st.Record]) -> None:
    record = SAMPLES[cls]
    names = [f.name for f in fields(record) if f.init]  # type: ignore[arg-type]
    rebuilt = cls(*(getattr(record, name) for name in names))
    for f in fields(record):  # type: ignore[arg-type]
        if f.init:
            assert getattr(rebuilt, f.name) == getattr(record, f.name), f.name
    if not compiled():  # a native __init__ shows no signature
        assert list(inspect.signature(cls.__init__).parameters)[1:] == names


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_equality_and_hash_read_every_compared_field(cls: type[st.Record]) -> None:
    record = SAMPLES[cls]
    twin = pickle.loads(pickle.dumps(record))
    assert twin == record and hash(twin) == hash(record) and twin is not record
    for f in fields(record):  # type: ignore[arg-type]
        if not f.init:
            continue
        value = different(getattr(record, f.name))
        changed = replace(record, **{f.name: value})  # type: ignore[type-var]
        assert getattr(changed, f.name) == value, f"__init__ does not store {f.name}"
        if f.compare:
            assert changed != record and not changed.__eq__(record), f.name
            assert hash(changed) != hash(record), f.name  # fixed values: no chance collision
        else:
            assert changed == record and hash(changed) == hash(record), f.name


def test_records_of_different_classes_are_never_equal() -> None:
    assert st.ClientPeer(1, (2,)) != st.ServerPeer(1, 2, ()) and st.Peer() != st.MSIVector()
    assert st.Peer() == st.DEFAULT_PEER and st.Peer() != 0


@pytest.mark.skipif(not compiled(), reason="interpreted, the slots are plain: mypy guards them")
def test_compiled_fields_cannot_be_set() -> None:
    with pytest.raises(AttributeError):
        st.Peer().block = st.FREED  # type: ignore[misc]


def test_freeze_keeps_every_scalar_field_written() -> None:
    """``IVShmemState.freeze`` returns the very record it thawed when it finds nothing
    changed, comparing the scalar fields one by one: each one written must come out."""
    state = play(CONFIG, Connect(0), ServerSend(0, 0), ServerSend(0, 0),
                 ServerSend(0, -1, "shm"), doorbell(0, vectors=2))
    device = state.endpoints[0].device
    assert device is not None
    on_their_own = {"peers", "msi_vectors", "msix", "ioeventfds"}
    scalars = [f.name for f in fields(device) if f.compare and f.name not in on_their_own]
    assert len(scalars) == 26
    for name in scalars:
        s = dev.IVShmemState(Work(state).proc(0), device)
        assert s.freeze() is device
        setattr(s, name, different(getattr(device, name)))
        frozen = s.freeze()
        assert frozen != device and getattr(frozen, name) == getattr(s, name), name


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_replace_is_dataclasses_replace(cls: type[st.Record]) -> None:
    record = SAMPLES[cls]
    assert st.replace(record) == record and st.replace(record) is not record
    for f in fields(record):  # type: ignore[arg-type]
        if f.init:
            value = different(getattr(record, f.name))
            ours, theirs = st.replace(record, **{f.name: value}), replace(record, **{f.name: value})  # type: ignore[type-var]
            assert type(ours) is cls and ours == theirs and getattr(ours, f.name) == value
    with pytest.raises(TypeError, match="no field"):
        st.replace(record, no_such_field=1)

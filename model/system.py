"""The composed system: server, endpoints, channels, descriptors.  ``step`` and ``enabled``.

Theory of operation
-------------------
A :class:`~model.state.SystemState` is a frozen snapshot.  ``step(state, action)`` returns the
next snapshot and the observations the action produced, or ``None`` when the action is not
enabled in that state (``deliver`` on an empty channel, ``realize`` while the server has not
yet sent all setup messages, anything on a dead process).  ``enabled(state)`` lists, in a fixed
order, the actions a checker should try: the vocabulary instantiated with the configuration's
menus (device choices, scripted messages, small vector and peer numbers).

Rules that keep the model honest:

1. All transition logic lives in ``model/``: device functions in ``device.py``, the MSI-X core
   in ``msix.py``, servers and the client in ``server.py``.  This file only routes an action
   to them and assembles the result; it knows no seed semantics of its own.
2. ``step`` is pure: no I/O, no clock, no randomness.  Equal inputs give equal outputs.
3. A process that aborts, crashes, hangs or fails keeps its fate in the state; properties judge
   it.  Only ``disconnect`` (the process goes away) clears an endpoint, and the kernel then
   closes every descriptor the process held.
4. Descriptors are garbage-collected after each step once closed and referenced by nothing, so
   states do not grow without bound; an *open* descriptor nobody refers to is a leak and stays
   for ``fd_conservation`` to see.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

from ivshmem_model.model import chardev, pci
from ivshmem_model.model import device as dev
from ivshmem_model.model import server as srv
from ivshmem_model.model.actions import (
    SIZED_FD_KINDS,
    Abandon,
    Action,
    ClientNotify,
    Config,
    ConfigRead,
    ConfigWrite,
    Connect,
    Deliver,
    Disconnect,
    EventfdPoll,
    FdCount,
    Garbage,
    HandleIrq,
    Migrate,
    MmioRead,
    MmioWrite,
    MsixEnable,
    MsixFunctionMask,
    MsixMask,
    PbaRead,
    Realize,
    Reset,
    Ring,
    ServerExit,
    ServerSend,
    ShmRead,
    ShmWrite,
    Unplug,
    fd_kind_size,
)
from ivshmem_model.model.msix import msix_pba_mmio_read, msix_table_mmio_write
from ivshmem_model.model.proc import (
    Abort,
    Crash,
    Exit,
    Hang,
    Proc,
    World,
    WouldBlock,
    line_number,
    line_where,
)
from ivshmem_model.model.state import (
    Client,
    Device,
    Endpoint,
    Fate,
    FileObject,
    MemBackend,
    Server,
    SystemState,
    replace,
    sparse_get,
)
from ivshmem_model.model.variants import SEED, Variant

Observation = dict[str, Any]
StepResult = tuple[SystemState, list[Observation]]


def initial_state(config: Config, variant: Variant = SEED) -> SystemState:
    world = World((), (), tuple(() for _ in range(config.endpoints)), True)
    if config.server.policy == "contrib":
        server = srv.contrib_start(world, config.server.shm_size)
    else:
        server = Server(up=True)
    endpoints = tuple(
        Endpoint(role="client" if e in config.clients else "qemu")
        for e in range(config.endpoints)
    )
    fds, objects, channels = world.frozen()
    return SystemState(
        server=server,
        endpoints=endpoints,
        channels=channels,
        fds=fds,
        objects=objects,
        config=config,
        variant=variant,
    )


# ---------------------------------------------------------------------------------------------
# Assembling a step


class Work:
    """Everything one step may change, thawed; :meth:`commit` freezes it into a new state."""

    def __init__(self, state: SystemState) -> None:
        self.state = state
        self.world = World(state.fds, state.objects, state.channels, state.server.up,
                           *state._free)
        self.server = state.server
        self.endpoints = endpoints = list(state.endpoints)
        # descriptors arriving in a process take its lowest free number (Fd.number)
        self.world.process = state.config.process_of
        # the list, not ``self``: a closure over ``self`` would make every step a reference
        # cycle that only the cyclic garbage collector frees (measured: ~10% of a contrib step)
        self.world.held = lambda m: endpoints[m].memdev_fds
        self.obs: list[Observation] = []
        # whether commit collects closed descriptors nothing refers to (a caller that
        # changes the state further collects once, at its end)
        self.collect = True

    def proc(self, e: int) -> Proc:
        ep = self.endpoints[e]
        return Proc(
            self.world, e, self.state.variant, self.state.config.host.kvm_msi_irqfd,
            ep.kvm_routes, ep.irqfds, ep.fd_handlers, ep.faults,
            self.state.config.host.big_endian, ep.chr_read, ep.chr_fd,
        )

    def store_proc(
        self, e: int, proc: Proc, device: Device | None, fate: Fate | None = None,
        unplugged: bool | None = None,
    ) -> None:
        """Endpoint ``e`` after the step: its device, host facts and fate."""
        ep = self.endpoints[e]
        kvm_routes = tuple(proc.kvm_routes)
        irqfds = tuple(proc.irqfds)
        fd_handlers = tuple(proc.fd_handlers)
        faults = tuple(proc.faults)
        self.obs.extend(proc.obs)
        if (device is ep.device and (fate is None or fate == ep.fate)
                and (unplugged is None or unplugged == ep.unplugged)
                and kvm_routes == ep.kvm_routes and irqfds == ep.irqfds
                and fd_handlers == ep.fd_handlers and faults == ep.faults
                and proc.chr_read == ep.chr_read and proc.chr_fd == ep.chr_fd):
            # Nothing changed: keep the very record (hashed once, compared by identity).  This
            # test names every field the record below takes from the step: keep them in step.
            return
        self.endpoints[e] = Endpoint(
            connected=ep.connected,
            role=ep.role,
            fate=fate if fate is not None else ep.fate,
            device=device,
            unplugged=ep.unplugged if unplugged is None else unplugged,
            client=ep.client,
            kvm_routes=ep.kvm_routes if kvm_routes == ep.kvm_routes else kvm_routes,
            irqfds=ep.irqfds if irqfds == ep.irqfds else irqfds,
            fd_handlers=ep.fd_handlers if fd_handlers == ep.fd_handlers else fd_handlers,
            faults=ep.faults if faults == ep.faults else faults,
            launched=ep.launched,
            memdevs=ep.memdevs,
            stale_blockers=ep.stale_blockers,
            chr_read=proc.chr_read,
            chr_fd=proc.chr_fd,
            backends=ep.backends,
            memdev_fds=ep.memdev_fds,
        )

    def finish(
        self, e: int, proc: Proc, device: Device | None, fate: Fate | None = None,
        unplugged: bool | None = None,
    ) -> StepResult:
        """Store endpoint ``e`` (reporting its fate, if it ended) and commit the step."""
        if fate is not None:
            proc.obs.append(fate.to_json())
        self.store_proc(e, proc, device, fate, unplugged)
        if fate is not None:
            self.share_fate(e, fate)
        return self.commit()

    def share_fate(self, e: int, fate: Fate) -> None:
        """One process, one fate (``config.processes``): the abort, crash, exit(1) or hang of
        one device's code ends the QEMU process, so every device in it ends with it."""
        for other in self.state.config.process_of(e):
            if other != e and self.endpoints[other].fate is None:
                self.endpoints[other] = replace(self.endpoints[other], fate=fate)

    def exit_process(self, e: int) -> None:
        """The process is gone: the kernel closes its descriptors and its socket."""
        for d, entry in enumerate(self.world.fds):
            if entry is not None and entry.open and entry.owner == e:
                self.world.close_fd(d)
        for _, d in self.world.channel(e):
            if d >= 0:
                self.world.close_fd(d)
        self.world.clear_channel(e)
        self.endpoints[e] = Endpoint(role=self.endpoints[e].role)

    def commit(self) -> StepResult:
        fds, objects, channels = self.world.frozen()
        old = self.state
        same_endpoints = all(map(operator.is_, self.endpoints, old.endpoints))
        if (same_endpoints and fds is old.fds and objects is old.objects
                and channels is old.channels and self.server is old.server):
            return old, self.obs  # a step that changed nothing: the very state (a self-loop)
        state = SystemState(
            server=self.server,
            # the very tuple when no endpoint changed (properties.invariants.Judge keys on it)
            endpoints=old.endpoints if same_endpoints else tuple(self.endpoints),
            channels=channels,
            fds=fds,
            objects=objects,
            config=self.state.config,
            variant=self.state.variant,
        )
        free = old._free  # shared while unchanged: a tuple per state would cost 56 bytes
        if free[0] != self.world.free_fd or free[1] != self.world.free_object:
            free = (self.world.free_fd, self.world.free_object)
        state._free = free
        if self.collect and (self.world.closed_any or self.server is not self.state.server):
            state = collect_garbage(state)
        return state, self.obs


def endpoint_descriptors(ep: Endpoint, refs: set[int]) -> set[int]:
    """Add to ``refs`` every descriptor number endpoint ``ep``'s record refers to (``-1``,
    "none", included when present)."""
    refs.update(d for d, _ in ep.fd_handlers)
    refs.update(d for _, d in ep.irqfds)
    refs.add(ep.chr_fd)
    device = ep.device
    if device is not None:
        for _, peer in device.peers:
            refs.update(peer.eventfds)
        refs.update(d for _, d in device.ioeventfds)
        refs.add(device.bar2_fd)
    client = ep.client
    if client is not None:
        refs.add(client.shm_fd)
        refs.update(client.local)
        for cp in client.peers:
            refs.update(cp.vectors)
    return refs


def referenced_descriptors(state: SystemState) -> set[int]:
    """Every descriptor number something in the state refers to.  Not kept on the state: a
    set of a few numbers costs 200 bytes or more, and the frontier of a search holds millions
    of states (the garbage collector and ``fd_conservation`` each compute it, ~1 µs)."""
    refs: set[int] = set()
    for ep in state.endpoints:
        endpoint_descriptors(ep, refs)
    for channel in state.channels:
        refs.update(d for _, d in channel)
    refs.discard(-1)
    return refs


def collect_garbage(state: SystemState) -> SystemState:
    refs = referenced_descriptors(state)
    fds = list(state.fds)
    free_fd, free_object = state._free
    changed = False
    for d, entry in enumerate(fds):
        if entry is not None and not entry.open and d not in refs:
            fds[d] = None
            free_fd = min(free_fd, d)
            changed = True
    live_objects = {entry.obj for entry in fds if entry is not None}
    live_objects.add(state.server.shm_obj)
    for peer in state.server.peers:
        live_objects.update(peer.eventfds)
    objects = list(state.objects)
    for o, obj in enumerate(objects):
        if obj is not None and o not in live_objects:
            objects[o] = None
            free_object = min(free_object, o)
            changed = True
    if not changed:
        return state
    while fds and fds[-1] is None:
        fds.pop()
    while objects and objects[-1] is None:
        objects.pop()
    collected = SystemState(state.server, state.endpoints, state.channels, tuple(fds),
                            tuple(objects), state.config, state.variant)
    collected._free = (free_fd, free_object)
    return collected


def _fate_of(exc: Abort | Crash | Exit | Hang) -> Fate:
    if isinstance(exc, Exit):
        return Fate("failed", exc.reason, line_number(exc.line), line_where(exc.line))
    if isinstance(exc, Abort):
        return Fate("aborted", exc.reason, line_number(exc.line), line_where(exc.line))
    if isinstance(exc, Crash):
        return Fate("crashed", f"{exc.kind}: {exc.reason}", line_number(exc.line),
                    line_where(exc.line))
    return Fate("hung", exc.reason, exc.line)


def _alive(ep: Endpoint) -> bool:
    return ep.fate is None


def _device_ready(ep: Endpoint) -> bool:
    return ep.fate is None and ep.device is not None


def _run_device(
    state: SystemState, e: int, body: Callable[[dev.IVShmemState], None], collect: bool = True
) -> StepResult | None:
    """Thaw endpoint ``e``'s device, run ``body`` on it, freeze.  ``None`` if not enabled.
    ``collect``: collect garbage descriptors (``Work.collect``)."""
    ep = state.endpoints[e]
    if not _device_ready(ep):
        return None
    assert ep.device is not None
    work = Work(state)
    work.collect = collect
    proc = work.proc(e)
    s = dev.IVShmemState(proc, ep.device)
    try:
        body(s)
    except WouldBlock:
        return None
    except (Abort, Crash, Exit, Hang) as exc:
        return work.finish(e, proc, s.freeze(), _fate_of(exc))
    return work.finish(e, proc, s.freeze())


# ---------------------------------------------------------------------------------------------
# One handler per action


def _limits(state: SystemState, closed: frozenset[int] = frozenset()) -> srv.SocketLimits:
    """The kernel's rules for the contrib server's sends: the configured socket capacity
    (unbounded by default) and EPIPE to the endpoints in ``closed``."""
    capacity = state.config.server.socket_capacity
    if capacity is None and not closed:
        return srv.UNLIMITED
    return srv.SocketLimits(capacity, closed)


def _contrib_accept(work: Work, e: int, limits: srv.SocketLimits) -> None:
    """``ivshmem_server_handle_new_conn`` (S:131-222) for endpoint ``e``; a failure shuts the
    server down (:func:`_contrib_fails`)."""
    state = work.state
    outcome = srv.new_conn(work.server, work.world, e, state.config.server.vectors, work.obs,
                           limits)
    if isinstance(outcome, str):
        _contrib_fails(work, outcome, limits)
    else:
        work.server = outcome


def _contrib_fails(work: Work, failure: str, limits: srv.SocketLimits) -> None:
    """A failed accept ends the contrib server: ``ivshmem_server_handle_fds`` returns -1
    (S:414-419), ``ivshmem_server_poll_events`` leaves its loop (M:172-175) and ``main``
    closes the server (M:266-271, ``ivshmem_server_close`` S:364-383: every peer freed)."""
    work.obs.append({"error": failure})
    server = srv.server_close(work.server, work.world, work.obs, limits)
    work.server = replace(server, failure=failure)
    work.world.server_up = False


def _connect(state: SystemState, a: Connect) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    if ep.connected or not _alive(ep) or not state.server.up:
        return None
    work = Work(state)
    client = Client() if ep.role == "client" else None
    work.endpoints[a.endpoint] = replace(ep, connected=True, client=client)
    if state.config.server.policy == "contrib":
        _contrib_accept(work, a.endpoint, _limits(state))
    return work.commit()


def _abandon(state: SystemState, a: Abandon) -> StepResult | None:
    """A process connects and closes its socket before the contrib server accepts it.  The
    accept succeeds (S:140-147) and the version message fails with EPIPE (S:102-108, SIGPIPE
    ignored M:213-221): "cannot send initial info" (S:183-186), and the whole server goes
    down (:func:`_contrib_fails`).  The endpoint stays unconnected."""
    ep = state.endpoints[a.endpoint]
    if state.config.server.policy != "contrib" or not state.server.up:
        return None
    if ep.connected or not _alive(ep) or ep.device is not None:
        return None
    work = Work(state)
    _contrib_accept(work, a.endpoint, _limits(state, frozenset({a.endpoint})))
    return work.commit()


def _garbage(state: SystemState, a: Garbage) -> StepResult | None:
    """A plain client writes to its socket.  The contrib server reads nothing from clients:
    any readable peer socket is a disconnection (S:421-427), ``ivshmem_server_free_peer``
    (S:74-93) closes the socket and tells the others.  The client keeps what was queued
    for it; like a server that exited, the model lets it read that and sends nothing more."""
    ep = state.endpoints[a.endpoint]
    if state.config.server.policy != "contrib" or not state.server.up:
        return None
    if ep.role != "client" or not ep.connected or not _alive(ep):
        return None
    if all(p.endpoint != a.endpoint for p in state.server.peers):
        return None
    work = Work(state)
    work.server = srv.free_peer(work.server, work.world, a.endpoint, work.obs, _limits(state))
    return work.commit()


def _disconnect(state: SystemState, a: Disconnect) -> StepResult | None:
    """The process is killed: with ``config.processes``, every endpoint of it (each device's
    chardev socket closes with it).  The contrib server frees each peer in turn
    (S:421-427, S:74-93); its deletes to a socket of the same dead process meet EPIPE."""
    group = state.config.process_of(a.endpoint)
    if not any(ep.connected or ep.device is not None or ep.fate is not None or ep.unplugged
               for ep in (state.endpoints[e] for e in group)):
        return None
    work = Work(state)
    for e in group:
        work.exit_process(e)
    if state.config.server.policy == "contrib" and state.server.up:
        limits = _limits(state, frozenset(group) if len(group) > 1 else frozenset())
        for e in group:
            work.server = srv.free_peer(work.server, work.world, e, work.obs, limits)
    return work.commit()


def _server_send(state: SystemState, a: ServerSend) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    if state.config.server.policy != "scripted" or not state.server.up:
        return None
    if not ep.connected or not _alive(ep):
        return None
    work = Work(state)
    attached = a.attached
    size = state.config.server.shm_size
    if ep.role == "client":
        _client_send(work, a.endpoint, a.value, attached)
    else:
        # The chardev keeps the first descriptor and closes the others when the device takes
        # it (char-socket.c tcp_get_msgfds): only the first becomes an object, the others are
        # never seen (properties/conform.py ABSTRACTIONS: a message's second descriptor).
        obj = _new_fd_object(work, attached[0], size) if attached else None
        work.world.send(a.endpoint, a.value, obj)
    work.obs.append(srv.send_obs(a.endpoint, a.value, a.fd))
    return work.commit()


def _client_send(work: Work, e: int, value: int, attached: tuple[str, ...]) -> None:
    """A message with ``attached`` descriptors to a plain client, as
    ``ivshmem_client_read_one_msg`` will take it (C:26-72, :func:`srv.client_read_one_msg`):
    its control buffer holds :data:`srv.CLIENT_CMSG_ROOM` descriptors (C:33, the kernel
    closes the rest) and it keeps one only from a header of exactly one (C:60-69).  So with
    two or more the message carries none, and the first two are the client's with nothing
    referring to them: a leak.  The kernel installs them when the client reads; the model,
    whose message holds one descriptor, gives them at the send (the client's exit closes
    them all the same)."""
    size = work.state.config.server.shm_size
    objs = tuple(_new_fd_object(work, text, size) for text in attached[:srv.CLIENT_CMSG_ROOM])
    taken = srv.client_read_one_msg(objs)
    work.world.send(e, value, None if taken < 0 else taken)
    if taken < 0:
        for obj in objs:
            work.world.new_fd(obj, e)


def _new_fd_object(work: Work, text: str, default_size: int) -> int:
    """A fresh kernel object of the kind ``server_send`` names.  File-like objects start with
    bytes to read (``count`` 1) when they have any."""
    kind, size = fd_kind_size(text)
    if kind not in SIZED_FD_KINDS:
        return work.world.new_object(FileObject(kind))
    size = default_size if size is None else size
    return work.world.new_object(FileObject(kind, int(size > 0), size))


def _server_exit(state: SystemState, a: ServerExit) -> StepResult | None:
    if not state.server.up:
        return None
    work = Work(state)
    if state.config.server.policy == "contrib":
        work.server = srv.server_close(work.server, work.world, work.obs, _limits(state))
    else:
        work.server = replace(work.server, up=False)
    work.world.server_up = False
    return work.commit()


def _realize(state: SystemState, a: Realize) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    if ep.role != "qemu" or not _alive(ep) or ep.device is not None:
        return None
    chardev = a.prop("chardev") is True and a.prop("chardev_backend", "socket") == "socket"
    if chardev and not ep.connected:
        return None
    group = state.config.process_of(a.endpoint)
    launched = any(state.endpoints[m].launched for m in group)
    named = a.prop("memdev")
    owner, backend = _backend_named(state, group, named) if isinstance(named, str) \
        else (-1, None)
    work = Work(state)
    proc = work.proc(a.endpoint)
    try:
        memdev = dev.memdev_name(a.endpoint, len(ep.memdevs))
        s, error = dev.realize_device(proc, a.device, dict(a.props), memdev, backend)
    except WouldBlock:
        return None
    except (Abort, Crash, Exit, Hang) as exc:
        return work.finish(a.endpoint, proc, None, _fate_of(exc))
    made = dev.backend_created(a.device, dict(a.props), state.variant, memdev)
    created = dev.memdev_created(a.device, dict(a.props), state.variant, memdev)
    numbers = list(ep.memdev_fds)
    for kind in created:  # the backend's descriptor, opened by -object/object-add
        if kind in MEMDEV_FD_KIND:
            numbers.append(work.world.number(a.endpoint))
            work.endpoints[a.endpoint] = replace(work.endpoints[a.endpoint],
                                                 memdev_fds=tuple(numbers))
    work.endpoints[a.endpoint] = replace(
        work.endpoints[a.endpoint], launched=True,
        memdevs=ep.memdevs + created,
        stale_blockers=ep.stale_blockers + proc.blockers_left,
        backends=ep.backends + ((made,) if made is not None else ()))
    for m in group:  # one process: a later realize of any of its endpoints is a device_add
        if not work.endpoints[m].launched:
            work.endpoints[m] = replace(work.endpoints[m], launched=True)
    if s is not None and s.memdev:
        # realize mapped the memdev (seed 914) and named its RAM block (966)
        _set_backend(work, owner if backend is not None else a.endpoint, s.memdev,
                     lambda b: replace(b, mapped=True, idstr=True, data=()))
    if s is None:
        proc.obs.append({"error": error})
        if a.hotplug or ep.unplugged or launched:
            # device_add into a running QEMU (asked for, or the process already runs): the
            # error goes back to the monitor, QEMU runs on (qdev_device_add's caller; a
            # command-line -device failure exits instead).
            return work.finish(a.endpoint, proc, None)
        return work.finish(a.endpoint, proc, None, Fate("failed", error or ""))
    return work.finish(a.endpoint, proc, s.freeze(), unplugged=False)


def _backend_named(state: SystemState, group: tuple[int, ...], name: str
                   ) -> tuple[int, MemBackend | None]:
    """The memory backend of id ``name`` in the process of ``group``, and the endpoint whose
    record holds it: QEMU's objects are per process, whichever device's realize made them."""
    for m in group:
        for backend in state.endpoints[m].backends:
            if backend.name == name:
                return m, backend
    return -1, None


def _set_backend(work: Work, owner: int, name: str,
                 change: Callable[[MemBackend], MemBackend]) -> None:
    ep = work.endpoints[owner]
    work.endpoints[owner] = replace(ep, backends=tuple(
        change(b) if b.name == name else b for b in ep.backends))


def _deliver(state: SystemState, a: Deliver) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    channel = state.channels[a.endpoint]
    if not channel or not _alive(ep):
        return None
    if ep.role == "client":
        if a.bytes:
            return _client_read_short(state, a.endpoint)
        return _client_deliver(state, a.endpoint)
    if ep.device is None or not ep.device.chardev:
        return None

    def body(s: dev.IVShmemState) -> None:
        # the chardev hands ivshmem_read what ivshmem_can_receive allows, or the part of it
        # the server's write brought so far (deliver with bytes)
        dev.ivshmem_read(s, chardev.tcp_chr_read(s.proc, dev.ivshmem_can_receive(s), a.bytes))

    return _run_device(state, a.endpoint, body)


def _client_read_short(state: SystemState, e: int) -> StepResult | None:
    """Part of a message reaches a plain client: ``ivshmem_client_read_one_msg`` takes what
    one ``recvmsg`` returns, and fewer than 8 bytes fail it (C:46-51) with the stage's text
    (``srv.client_read_failed``).  The message stays in the channel, as with any process
    that failed."""
    ep = state.endpoints[e]
    if ep.client is None:
        return None
    work = Work(state)
    error = srv.client_read_failed(ep.client)
    fate = Fate("failed", error)
    work.obs.extend([{"error": error}, fate.to_json()])
    work.endpoints[e] = replace(ep, fate=fate)
    return work.commit()


def _client_deliver(state: SystemState, e: int) -> StepResult | None:
    ep = state.endpoints[e]
    if ep.client is None:
        return None
    work = Work(state)
    value, fd = work.world.pop_message(e)
    obj = None
    if fd >= 0:
        work.world.give(fd, e)
        obj = work.world.obj_of(fd)  # an own vector that is no eventfd fails the client
    client, error = srv.client_handle_msg(ep.client, value, fd, obj)
    if error is not None:
        fate = Fate("failed", error)
        work.obs.extend([{"error": error}, fate.to_json()])
        work.endpoints[e] = replace(ep, fate=fate)
    else:
        # ivshmem_client_free_peer closes the vectors of a peer that left (C:91-141).
        for d in srv.client_descriptors(ep.client) - srv.client_descriptors(client):
            work.world.close_fd(d)
        work.endpoints[e] = replace(ep, client=client)
    return work.commit()


def _bar_miss(state: SystemState, e: int, bar: int, read: bool) -> StepResult | None:
    """An access to BAR ``bar`` that does not reach it (``model.pci``): it meets unassigned
    memory, which reads 0 and drops writes.  ``None`` when the access does reach the BAR."""
    device = state.endpoints[e].device
    if device is None or pci.at_home(device, bar):
        return None
    work = Work(state)
    if read:
        work.obs.append({"read": 0})
    return work.commit()


def _bar_access(state: SystemState, e: int, bar: int, read: bool,
                body: Callable[[dev.IVShmemState], None]) -> StepResult | None:
    """A guest access to BAR ``bar`` of a live device: ``body`` runs the device's side when
    the access reaches the BAR, unassigned memory answers when it does not."""
    if not _device_ready(state.endpoints[e]):
        return None
    return _bar_miss(state, e, bar, read) or _run_device(state, e, body)


def _mmio_read(state: SystemState, a: MmioRead) -> StepResult | None:
    def body(s: dev.IVShmemState) -> None:
        s.proc.obs.append({"read": dev.memory_region_dispatch_read(s, a.offset, a.size)})

    return _bar_access(state, a.endpoint, 0, True, body)


def _mmio_write(state: SystemState, a: MmioWrite) -> StepResult | None:
    ioeventfd_host = state.config.host.ioeventfd

    def body(s: dev.IVShmemState) -> None:
        dev.memory_region_dispatch_write(s, a.offset, a.value, a.size, ioeventfd_host)

    return _bar_access(state, a.endpoint, 0, False, body)


def _ring(state: SystemState, a: Ring) -> StepResult | None:
    return _mmio_write(
        state, MmioWrite(a.endpoint, int(dev.Reg.DOORBELL), (a.peer << 16) | a.vector, 4)
    )


def _has_msix(state: SystemState, e: int) -> bool:
    device = state.endpoints[e].device
    return device is not None and device.msix.present


def _msix_enable(state: SystemState, a: MsixEnable) -> StepResult | None:
    if not _has_msix(state, a.endpoint):
        return None
    return _run_device(state, a.endpoint, lambda s: dev.ivshmem_write_config(s, enable=a.enabled))


def _msix_function_mask(state: SystemState, a: MsixFunctionMask) -> StepResult | None:
    if not _has_msix(state, a.endpoint):
        return None
    return _run_device(
        state, a.endpoint, lambda s: dev.ivshmem_write_config(s, maskall=a.masked)
    )


def _msix_mask(state: SystemState, a: MsixMask) -> StepResult | None:
    device = state.endpoints[a.endpoint].device
    if device is None or not device.msix.present or a.vector >= device.msix.entries_nr:
        return None
    return _bar_access(state, a.endpoint, 1, False,
                       lambda s: msix_table_mmio_write(s, a.vector, a.masked))


def _pba_read(state: SystemState, a: PbaRead) -> StepResult | None:
    device = state.endpoints[a.endpoint].device
    if device is None or not device.msix.present:
        return None
    if a.offset >= -(-device.msix.entries_nr // 64) * 8:
        return None  # outside the PBA region

    def body(s: dev.IVShmemState) -> None:
        s.proc.obs.append({"read": msix_pba_mmio_read(s, a.offset)})

    return _bar_access(state, a.endpoint, 1, True, body)


def _shm_access_ok(state: SystemState, e: int, offset: int, size: int) -> bool:
    device = state.endpoints[e].device
    return _device_ready(state.endpoints[e]) and device is not None and bool(device.bar2) \
        and offset + size <= device.bar2_size


def _shm_read(state: SystemState, a: ShmRead) -> StepResult | None:
    """A guest load from BAR2: RAM, no device code runs (the memory the server or the memdev
    gave, seed 544-549 / 913)."""
    if not _shm_access_ok(state, a.endpoint, a.offset, a.size):
        return None
    miss = _bar_miss(state, a.endpoint, 2, True)
    if miss is not None:
        return miss
    work = Work(state)
    work.obs.append({"read": pci.read_bytes(_shm_data(state, a.endpoint), a.offset, a.size)})
    return work.commit()


def _shm_write(state: SystemState, a: ShmWrite) -> StepResult | None:
    if not _shm_access_ok(state, a.endpoint, a.offset, a.size):
        return None
    miss = _bar_miss(state, a.endpoint, 2, False)
    if miss is not None:
        return miss
    ep = state.endpoints[a.endpoint]
    device = ep.device
    assert device is not None
    data = pci.write_bytes(_shm_data(state, a.endpoint), a.offset, a.size, a.value)
    work = Work(state)
    if device.hostmem:
        work.endpoints[a.endpoint] = replace(ep, device=replace(device, hostmem_data=data))
    else:
        work.world.set_data(device.bar2_fd, data)
    return work.commit()


def _shm_data(state: SystemState, e: int) -> tuple[tuple[int, int], ...]:
    """BAR2's bytes: the memdev's, or those of the object the server's fd refers to."""
    device = state.endpoints[e].device
    assert device is not None
    if device.hostmem:
        return device.hostmem_data
    entry = state.fds[device.bar2_fd]
    obj = state.objects[entry.obj] if entry is not None else None
    return obj.data if obj is not None else ()


def _config_read(state: SystemState, a: ConfigRead) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    if not _device_ready(ep) or ep.device is None:
        return None
    if a.register == "msix_control" and not ep.device.msix.present:
        return None  # no MSI-X capability to read
    work = Work(state)
    work.obs.append({"read": pci.config_read(ep.device, a.register)})
    return work.commit()


def _config_write(state: SystemState, a: ConfigWrite) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    device = ep.device
    if not _device_ready(ep) or device is None:
        return None
    if a.register == "msix_control":
        if not device.msix.present:
            return None
        return _run_device(state, a.endpoint, lambda s: dev.ivshmem_write_config(
            s, enable=bool(a.value & 0x8000), maskall=bool(a.value & 0x4000)))
    width = pci.REGISTERS[a.register].size
    new = pci.config_write(device, a.register, a.value & (1 << 8 * width) - 1)
    newly_mapped = pci.bar_address(device, 0) is None and \
        pci.bar_address(replace(device, pci=new), 0) is not None

    def body(s: dev.IVShmemState) -> None:
        s.pci = new
        if newly_mapped:
            dev.kvm_ioeventfds_commit(s)

    return _run_device(state, a.endpoint, body)


def _readable(state: SystemState, d: int) -> bool:
    entry = state.fds[d] if 0 <= d < len(state.fds) else None
    if entry is None or not entry.open:
        return False
    obj = state.objects[entry.obj]
    return obj is not None and obj.kind == "eventfd" and obj.count > 0


def _own_slot(ep: Endpoint, vector: int) -> int:
    device = ep.device
    if device is None:
        return -1
    for posn, peer in device.peers:
        if posn == device.vm_id and vector < len(peer.eventfds):
            return peer.eventfds[vector]
    return -1


def _handle_irq(state: SystemState, a: HandleIrq) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    if not _alive(ep):
        return None
    if ep.role == "client":
        client = ep.client
        if client is None or a.vector >= len(client.local):
            return None
        d = client.local[a.vector]
        if not _readable(state, d):
            return None
        work = Work(state)
        work.world.drain(d)
        work.obs.append({"irq": a.vector})
        return work.commit()
    d = _own_slot(ep, a.vector)
    if d < 0 or not _readable(state, d) or ep.device is None:
        return None

    def body(s: dev.IVShmemState) -> None:
        if not dev.own_eventfd_ready(s, d):
            raise WouldBlock  # nothing consumes it (KVM with MSI-X off, or the vector masked)

    return _run_device(state, a.endpoint, body)


def _client_notify(state: SystemState, a: ClientNotify) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    if ep.role != "client" or not _alive(ep) or ep.client is None:
        return None
    d = srv.client_vector_fd(ep.client, a.peer, a.vector)
    if d is None:
        return None
    work = Work(state)
    if work.world.is_open(d):
        work.world.signal(d)
    return work.commit()


def _run_process(
    state: SystemState, e: int, body: Callable[[dev.IVShmemState], None]
) -> StepResult | None:
    """Run ``body`` on every device of endpoint ``e``'s process (``config.processes``), in
    endpoint order, as a machine-wide command does; the first that ends the process ends
    the step.  ``None`` unless ``e`` has a live device."""
    if not _device_ready(state.endpoints[e]):
        return None
    work = Work(state)
    for m in state.config.process_of(e):
        device = work.endpoints[m].device
        if device is None:
            continue
        proc = work.proc(m)
        s = dev.IVShmemState(proc, device)
        try:
            body(s)
        except (Abort, Crash, Exit, Hang) as exc:
            return work.finish(m, proc, s.freeze(), _fate_of(exc))
        work.store_proc(m, proc, s.freeze())
    return work.commit()


def _reset(state: SystemState, a: Reset) -> StepResult | None:
    """``system_reset`` (QMP): every device of the process resets (qemu_devices_reset), then
    the guest programs each again."""
    def body(s: dev.IVShmemState) -> None:
        dev.ivshmem_reset(s)
        dev.pci_do_device_reset(s)
        was_mapped = pci.bar_address(s.freeze(), 0) is not None
        s.pci = pci.guest_reset()
        if not was_mapped:
            dev.kvm_ioeventfds_commit(s)  # the guest maps BAR0 again

    return _run_process(state, a.endpoint, body)


def _unplug(state: SystemState, a: Unplug) -> StepResult | None:
    unregistered = False

    def unrealize(s: dev.IVShmemState) -> None:
        nonlocal unregistered
        dev.pci_qdev_unrealize(s)
        unregistered = s.ram_unregistered

    # one garbage collection, at the end (the device's descriptors go with its record)
    result = _run_device(state, a.endpoint, unrealize, collect=False)
    if result is None:
        return None
    after, obs = result
    ep = after.endpoints[a.endpoint]
    if ep.fate is not None:
        return collect_garbage(after), obs
    endpoints = list(after.endpoints)
    endpoints[a.endpoint] = replace(ep, device=None, unplugged=True)
    device = state.endpoints[a.endpoint].device
    assert device is not None
    if device.memdev:
        # ivshmem_exit unmaps the memdev (seed 997-999); the backend keeps its bytes, and its
        # RAM block's id unless exit unregistered it (994: not on unplug, BAR2 is unmapped)
        for m in state.config.process_of(a.endpoint):
            owner = endpoints[m]
            if any(b.name == device.memdev for b in owner.backends):
                endpoints[m] = replace(owner, backends=tuple(
                    replace(b, mapped=False, data=device.hostmem_data,
                            idstr=b.idstr and not unregistered)
                    if b.name == device.memdev else b for b in owner.backends))
    return collect_garbage(replace(after, endpoints=tuple(endpoints))), obs


def _migrate(state: SystemState, a: Migrate) -> StepResult | None:
    ep = state.endpoints[a.endpoint]
    if not _device_ready(ep):
        return None
    # blockers are the process's (migrate_add_blocker): any of its devices' blocks it
    group = [state.endpoints[m] for m in state.config.process_of(a.endpoint)]
    if any(m.stale_blockers or (m.device is not None and m.device.migration_blocker)
           for m in group):
        work = Work(state)
        work.obs.append({"error": dev.MIGRATION_BLOCKER_TEXT})
        return work.commit()
    return _run_process(state, a.endpoint, dev.ivshmem_migrate)


# How /proc/PID/fd names each kind of object (``readlink``): what ``fd_count`` reports.  The
# scripted server's shared memory is a memfd, the contrib server's a POSIX shm file.
PROC_FD_KIND = {"eventfd": "eventfd", "pipe": "pipe", "devnull": "file", "file": "file",
                "memfd-ro": "memfd"}
MEMDEV_FD_KIND = {"memfd": "memfd", "file": "file"}  # a ram backend holds no descriptor


def _fd_count(state: SystemState, a: FdCount) -> StepResult | None:
    """The descriptors the process holds for the device and its peers, by kind: every open
    descriptor it owns, plus each memory backend's own (they outlive unplug).  A process of
    several endpoints (``config.processes``) has one descriptor table: the sum of theirs."""
    ep = state.endpoints[a.endpoint]
    if ep.role != "qemu" or not ep.launched or not _alive(ep):
        return None
    group = state.config.process_of(a.endpoint)
    counts: dict[str, int] = {}
    shm_kind = "file" if state.config.server.policy == "contrib" else "memfd"
    for entry in state.fds:
        if entry is not None and entry.open and entry.owner in group:
            obj = state.objects[entry.obj]
            assert obj is not None
            kind = shm_kind if obj.kind == "shm" else PROC_FD_KIND[obj.kind]
            counts[kind] = counts.get(kind, 0) + 1
    for backend in (b for m in group for b in state.endpoints[m].memdevs):
        if backend in MEMDEV_FD_KIND:
            kind = MEMDEV_FD_KIND[backend]
            counts[kind] = counts.get(kind, 0) + 1
    work = Work(state)
    work.obs.append({"fds": dict(sorted(counts.items()))})
    return work.commit()


def _eventfd_poll(state: SystemState, a: EventfdPoll) -> StepResult | None:
    """Whether a doorbell is pending on the eventfd in ``peers[peer].eventfds[vector]``: its
    counter, which the owner's handler (or KVM's irqfd) resets at ``handle_irq``."""
    ep = state.endpoints[a.endpoint]
    device = ep.device
    if not _device_ready(ep) or device is None or device.peers_block != "live":
        return None
    if not a.peer < device.nb_peers:
        return None
    peer = sparse_get(device.peers, a.peer, None)
    if peer is None or peer.block != "live" or a.vector >= min(peer.nb_eventfds,
                                                                len(peer.eventfds)):
        return None
    d = peer.eventfds[a.vector]
    entry = state.fds[d] if 0 <= d < len(state.fds) else None
    if entry is None or not entry.open:
        return None
    obj = state.objects[entry.obj]
    if obj is None or obj.kind != "eventfd":
        return None
    work = Work(state)
    work.obs.append({"signalled": obj.count > 0})
    return work.commit()


HANDLERS: dict[type[Action], Callable[[SystemState, Any], StepResult | None]] = {
    Connect: _connect,
    Disconnect: _disconnect,
    Abandon: _abandon,
    Garbage: _garbage,
    ServerSend: _server_send,
    ServerExit: _server_exit,
    Realize: _realize,
    Deliver: _deliver,
    MmioRead: _mmio_read,
    MmioWrite: _mmio_write,
    Ring: _ring,
    MsixEnable: _msix_enable,
    MsixFunctionMask: _msix_function_mask,
    MsixMask: _msix_mask,
    PbaRead: _pba_read,
    HandleIrq: _handle_irq,
    ClientNotify: _client_notify,
    Reset: _reset,
    Unplug: _unplug,
    Migrate: _migrate,
    ShmRead: _shm_read,
    ShmWrite: _shm_write,
    ConfigRead: _config_read,
    ConfigWrite: _config_write,
    FdCount: _fd_count,
    EventfdPoll: _eventfd_poll,
}


def step(state: SystemState, action: Action) -> StepResult | None:
    """The next state and the observations, or ``None`` if ``action`` is not enabled."""
    endpoint = getattr(action, "endpoint", 0)
    if not 0 <= endpoint < len(state.endpoints):
        return None
    result = HANDLERS[type(action)](state, action)
    if result is None:
        return None
    return _main_loop(result, endpoint)


def _closed(state: SystemState, d: int) -> bool:
    entry = state.fds[d] if 0 <= d < len(state.fds) else None
    return entry is not None and not entry.open


def _main_loop(result: StepResult, e: int) -> StepResult:
    """Endpoint ``e``'s process polls its fd handlers after the step, as QEMU's main loop does
    between two commands: a handler an unplugged device left behind runs if its number now
    belongs to a readable descriptor (``dev.stale_fd_handler_poll``)."""
    state, obs = result
    for m in state.config.process_of(e):
        ep = state.endpoints[m]
        if ep.fate is not None or not any(_closed(state, d) for d, _ in ep.fd_handlers):
            continue  # no handler on a closed descriptor: nothing stale to poll
        work = Work(state)
        proc = work.proc(m)
        try:
            dev.stale_fd_handler_poll(proc, ep.device)
        except Crash as exc:
            after, more = work.finish(m, proc, ep.device, _fate_of(exc))
            return after, obs + more
    return result


# ---------------------------------------------------------------------------------------------
# Enabled actions


# Action types no menu instantiates: the guest's configuration space and shared memory, whose
# values are unbounded and which change no seed state but the PCI core's.  Conformance
# campaigns and Hypothesis' free rules draw them; the explorer does not.  What a client may
# do to the contrib server beyond the protocol (abandon, garbage) is on the menus only of
# configurations that ask for it (``hostile_clients``).
OFF_MENU: frozenset[type[Action]] = frozenset(
    {ShmRead, ShmWrite, ConfigRead, ConfigWrite, FdCount, EventfdPoll, Abandon, Garbage})


# Candidate actions by constructor and arguments: every state offers mostly the same few, and an
# action (a frozen dataclass of model/actions.py, interpreted) costs more to build than to look
# up.  Bounded by the vocabularies of the configurations a process explores.
_INTERNED: dict[tuple[Any, ...], Action] = {}


def _interned(*key: Any) -> Action:
    """``key[0](*key[1:])``, built once."""
    action = _INTERNED.get(key)
    if action is None:
        action = _INTERNED[key] = key[0](*key[1:])
    return action


def candidates(state: SystemState) -> Iterator[Action]:
    """The vocabulary instantiated with the configuration's menus, in a fixed order."""
    config = state.config
    if state.server.up:
        yield _interned(ServerExit)
    hostile = config.hostile_clients and config.server.policy == "contrib"
    for e, ep in enumerate(state.endpoints):
        yield _interned(Connect, e)
        yield _interned(Disconnect, e)
        if hostile:
            yield _interned(Abandon, e)
            if ep.role == "client":
                yield _interned(Garbage, e)
        if config.server.policy == "scripted":
            for value, fd in config.server.messages:
                yield _interned(ServerSend, e, value, fd)
        if state.channels[e]:
            yield _interned(Deliver, e)
        if ep.role == "client":
            client = ep.client
            if client is not None:
                for vector in range(len(client.local)):
                    yield _interned(HandleIrq, e, vector)
                for peer in (*client.peers, None):
                    pid, count = (client.id, len(client.local)) if peer is None else (
                        peer.id, len(peer.vectors))
                    for vector in range(count):
                        yield _interned(ClientNotify, e, pid, vector)
            continue
        device = ep.device
        if device is None:
            for name, props in config.realize_menu():
                # built each time: interned, props (("msi", 1),) would stand for (("msi", True),)
                yield Realize(e, name, props, config.hotplug)
            continue
        yield _interned(MmioRead, e, int(dev.Reg.IVPOSITION), 4)
        if device.interrupt_pin:  # the legacy device: INTRMASK/INTRSTATUS may drive INTx
            yield _interned(MmioRead, e, int(dev.Reg.INTRSTATUS), 4)
            yield _interned(MmioWrite, e, int(dev.Reg.INTRMASK), 0xFFFFFFFF, 4)
            yield _interned(MmioWrite, e, int(dev.Reg.INTRSTATUS), 1, 4)
        for dest in range(config.endpoints):
            for vector in range(min(device.vectors, 2) + 1 if device.vectors else 1):
                yield _interned(Ring, e, dest, vector)
        if device.msix.present:
            yield _interned(MsixEnable, e, not device.msix.enable)
            yield _interned(MsixFunctionMask, e, not device.msix.maskall)
            for vector in range(min(device.msix.entries_nr, 4)):
                yield _interned(MsixMask, e, vector, not device.msix.masked >> vector & 1)
            yield _interned(PbaRead, e, 0)
        for vector in range(min(device.vectors, 4)):
            yield _interned(HandleIrq, e, vector)
        yield _interned(Reset, e)
        yield _interned(Unplug, e)
        yield _interned(Migrate, e)


def enabled(state: SystemState) -> list[Action]:
    """The candidate actions that are enabled in ``state``, in a fixed order."""
    return [a for a in candidates(state) if step(state, a) is not None]


def successors(state: SystemState) -> list[tuple[Action, SystemState, list[Observation]]]:
    """Each enabled action with its result (one ``step`` per candidate)."""
    out = []
    for action in candidates(state):
        result = step(state, action)
        if result is not None:
            out.append((action, result[0], result[1]))
    return out

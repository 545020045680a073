"""Servers and the contrib client, as pure functions over the working tables.

Contrib server: ``contrib/ivshmem-server/ivshmem-server.c`` of QEMU 7.2 (Debian
``7.2+dfsg-7+deb12u18``; the same lines as ``585fcd4b1107`` up to S:361), cited as ``S:<line>``,
and its ``main.c`` as ``M:<line>``.  Contrib client: ``contrib/ivshmem-client/ivshmem-client.c``
at ``ccd241b5a222``, cited as ``C:<line>``.  The scripted server has no policy of its own: it
sends what ``server_send`` steps say.

The contrib server ignores every send error after the initial messages (S:189-208, S:85), and
its sockets are non-blocking (S:149): a message to a client whose socket is full or whose end
is closed is lost.  :class:`SocketLimits` says which sends the kernel takes; the default takes
all (the system model's channels are unbounded).  :func:`select_round` is one turn of the
server's select loop over connections and closes that piled up while it was not scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ivshmem_model.model.proc import World
from ivshmem_model.model.state import Client, ClientPeer, FileObject, Server, ServerPeer, replace

IVSHMEM_SERVER_MAX_HUGEPAGE_SIZE = 1024 * 1024 * 1024  # S:26
IVSHMEM_CLIENT_MAX_VECTORS = 64  # client.h:30
# Descriptors the contrib client's control buffer, CMSG_SPACE(sizeof(int)) = 24 bytes on LP64
# (C:33), takes from one message: (24 - 16) / 4.  The kernel closes the rest (MSG_CTRUNC).
CLIENT_CMSG_ROOM = 2
G_MAXUINT16 = 0xFFFF


def pow2ceil(value: int) -> int:
    """QEMU's ``pow2ceil`` on uint64: 0 gives 1."""
    value &= 2**64 - 1
    if value == 0:
        return 1
    return 1 << (value - 1).bit_length()


def contrib_shm_size(requested: int) -> int:
    """``ivshmem_server_ftruncate`` (S:230-252): ``unsigned shmsize`` rounded up to a power of
    two.  A fresh object is ftruncated to that size on the first try."""
    return pow2ceil(requested & 0xFFFFFFFF)


def contrib_start(world: World, shm_size: int) -> Server:
    """``ivshmem_server_start`` (S:289-359): one shared-memory object for everyone."""
    shm = world.new_object(FileObject("shm", 0, contrib_shm_size(shm_size)))
    return Server(up=True, cur_id=0, shm_obj=shm, peers=())


def send_obs(endpoint: int, value: int, fd: str | None) -> dict[str, Any]:
    return {"send": {"to": endpoint, "value": value, "fd": fd}}


def dropped_obs(endpoint: int, value: int, fd: str | None) -> dict[str, Any]:
    return {"dropped": {"to": endpoint, "value": value, "fd": fd}}


@dataclass(frozen=True, slots=True)
class SocketLimits:
    """Which sends the kernel accepts: at most ``capacity`` unread messages per client socket
    (Linux counts bytes of socket buffers, so the number is measured per machine; ``None`` is
    unbounded) and nothing to a client whose end is ``closed`` (EPIPE; SIGPIPE is ignored,
    M:213-221)."""

    capacity: int | None = None
    closed: frozenset[int] = frozenset()

    def accepts(self, world: World, to: int) -> bool:
        if to in self.closed:
            return False
        return self.capacity is None or len(world.channel(to)) < self.capacity


UNLIMITED = SocketLimits()


def _send(world: World, limits: SocketLimits, to: int, value: int, obj: int | None,
          kind: str | None, obs: list[dict[str, Any]]) -> bool:
    """``ivshmem_server_send_one_msg`` (S:31-69): False when the kernel refuses it."""
    if not limits.accepts(world, to):
        obs.append(dropped_obs(to, value, kind))
        return False
    world.send(to, value, obj)
    obs.append(send_obs(to, value, kind))
    return True


def new_conn(
    server: Server, world: World, endpoint: int, n_vectors: int, obs: list[dict[str, Any]],
    limits: SocketLimits = UNLIMITED,
) -> Server | str:
    """``ivshmem_server_handle_new_conn`` (S:131-222): the server with the new peer appended,
    or the debug text of the failure, which makes the whole server shut down (S:414-419,
    M:172-175): no id left, or an initial message refused (a client gone before it was
    accepted: EPIPE)."""
    used = {p.id for p in server.peers}
    cur_id = server.cur_id
    for _ in range(G_MAXUINT16):  # S:159-164
        if cur_id not in used:
            break
        cur_id = (cur_id + 1) & 0xFFFF
    else:
        return "cannot allocate new client id"  # S:165-170
    peer_id = cur_id
    cur_id = (cur_id + 1) & 0xFFFF  # S:171
    eventfds = tuple(world.new_object(FileObject("eventfd")) for _ in range(n_vectors))
    initial = ((0, None, None), (peer_id, None, None), (-1, server.shm_obj, "shm"))  # S:97-127
    for value, obj, kind in initial:
        if not _send(world, limits, endpoint, value, obj, kind, obs):
            return "cannot send initial info"  # S:183-186
    for other in server.peers:  # S:189-194, errors ignored
        for obj in eventfds:
            _send(world, limits, other.endpoint, peer_id, obj, "eventfd", obs)
    for other in server.peers:  # S:197-202
        for obj in other.eventfds:
            _send(world, limits, endpoint, other.id, obj, "eventfd", obs)
    for obj in eventfds:  # S:205-208
        _send(world, limits, endpoint, peer_id, obj, "eventfd", obs)
    return replace(
        server,
        cur_id=cur_id,
        peers=(*server.peers, ServerPeer(endpoint, peer_id, eventfds)),
    )


def handle_new_conn(
    server: Server, world: World, endpoint: int, n_vectors: int, obs: list[dict[str, Any]],
    limits: SocketLimits = UNLIMITED,
) -> Server | None:
    """:func:`new_conn` with ``None`` for a failure."""
    outcome = new_conn(server, world, endpoint, n_vectors, obs, limits)
    return None if isinstance(outcome, str) else outcome


def free_peer(server: Server, world: World, endpoint: int, obs: list[dict[str, Any]],
              limits: SocketLimits = UNLIMITED) -> Server:
    """``ivshmem_server_free_peer`` (S:74-93): one delete message to every remaining peer."""
    gone = next((p for p in server.peers if p.endpoint == endpoint), None)
    if gone is None:
        return server
    remaining = tuple(p for p in server.peers if p.endpoint != endpoint)
    for other in remaining:  # S:84-86, errors ignored
        _send(world, limits, other.endpoint, gone.id, None, None, obs)
    return replace(server, peers=remaining)


def server_close(server: Server, world: World, obs: list[dict[str, Any]],
                 limits: SocketLimits = UNLIMITED) -> Server:
    """``ivshmem_server_close`` (S:364-383): frees every peer in order, then goes down."""
    for peer in server.peers:
        server = free_peer(server, world, peer.endpoint, obs, limits)
    return replace(server, up=False, shm_obj=-1, peers=())


@dataclass(frozen=True, slots=True)
class Pending:
    """What piled up while the server was not scheduled: connections not yet accepted (in
    arrival order) and client sockets with something to read (data or end of file)."""

    backlog: tuple[int, ...] = ()
    readable: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.backlog) or bool(self.readable)


def select_round(
    server: Server, world: World, n_vectors: int, pending: Pending, obs: list[dict[str, Any]],
    limits: SocketLimits = UNLIMITED,
) -> tuple[Server, Pending, str | None]:
    """One turn of ``ivshmem_server_poll_events`` (M:146-179) over ``pending``, whose sockets
    ``select`` reports all at once: ``ivshmem_server_handle_fds`` (S:409-430) accepts *one*
    connection, then frees every peer readable at the ``select`` (list order; the peer just
    accepted was not in the set).  A failed accept shuts the server down: the third item is
    the failure, and the server is already closed (M:266-271)."""
    readable = pending.readable
    backlog = pending.backlog
    if backlog:
        endpoint, backlog = backlog[0], backlog[1:]
        outcome = new_conn(server, world, endpoint, n_vectors, obs, limits)
        if isinstance(outcome, str):
            server = server_close(server, world, obs, limits)
            return server, Pending(), outcome
        before = server.peers
        server = outcome
    else:
        before = server.peers
    for peer in before:  # S:421-427
        if peer.endpoint in readable:
            server = free_peer(server, world, peer.endpoint, obs, limits)
            readable = readable - {peer.endpoint}
    return server, Pending(backlog, readable), None


# ---------------------------------------------------------------------------------------------
# The contrib client (C)


def client_read_one_msg(fds: tuple[int, ...]) -> int:
    """The descriptor ``ivshmem_client_read_one_msg`` (C:26-72) takes from a message that
    carries ``fds``: its control buffer has room for one ``int`` (C:33) and it keeps only a
    header of exactly ``CMSG_LEN(sizeof(int))`` (C:62-66).  The kernel hands all descriptors of
    one message over in one header (:data:`CLIENT_CMSG_ROOM` of them fit, the rest are cut),
    so a message with two or more reads as having none (-1), and the first two it brought stay
    open in the process with nothing referring to them."""
    return fds[0] if len(fds) == 1 else -1


def client_read_failed(client: Client) -> str:
    """The client's error text when reading a message fails: end of file or fewer than 8
    bytes (C:46-51; ``ret == 0`` is caught there, so C:52-55 never runs).  During setup it is
    ``ivshmem_client_connect``'s text for that message (C:210-232)."""
    return ("cannot read from server", "cannot read from server (2)",
            "cannot read from server (3)", "cannot read message")[client.stage]


def client_own_vector_eof(obj: FileObject) -> str | None:
    """The error text ``ivshmem_client_handle_event`` (C:293-324) ends with when ``obj`` is one
    of the client's own vectors, or ``None`` when ``select`` reports it readable only after a
    kick (an eventfd; a pipe, whose write end the server keeps).  The client selects on its
    own vectors (C:282-288) and reads 8 bytes each time one is readable: ``/dev/null`` at
    once, a file or shared memory after its ``size // 8`` words (each printed as a
    notification), reads short at end of file, and the read size fails the client (C:311-315,
    then main.c:165-167)."""
    if obj.kind in ("eventfd", "pipe"):
        return None
    size = 0 if obj.kind == "devnull" else obj.size
    return f"invalid read size = {size % 8}"


def client_handle_msg(client: Client, value: int, fd: int,
                      obj: FileObject | None = None) -> tuple[Client, str | None]:
    """One server message: ``ivshmem_client_connect`` (C:179-244) while setting up, then
    ``ivshmem_client_handle_server_msg`` (C:91-141).  Returns the new view and, when the
    client gives up, its error text.  ``fd`` is what :func:`client_read_one_msg` took;
    ``obj``, when given, is the object behind it, for :func:`client_own_vector_eof`: the
    client fails as soon as it selects on an own vector that reads short."""
    if client.stage == 0:
        if value != 0 or fd != -1:
            return client, "cannot read from server"
        return replace(client, stage=1), None
    if client.stage == 1:
        if value < 0 or fd != -1:
            return client, "cannot read from server (2)"
        return replace(client, stage=2, id=value), None
    if client.stage == 2:
        if value != -1 or fd < 0:
            return client, "cannot read from server (3)"
        return replace(client, stage=3, shm_fd=fd), None
    if fd == -1:
        known = any(p.id == value for p in client.peers)
        if value == client.id or not known:
            return client, f"receive delete for invalid peer {value}"
        return replace(client, peers=tuple(p for p in client.peers if p.id != value)), None
    if value == client.id:
        if len(client.local) >= IVSHMEM_CLIENT_MAX_VECTORS:
            return client, "Too many vectors received, failing"
        client = replace(client, local=(*client.local, fd))
        return client, None if obj is None else client_own_vector_eof(obj)
    peers = list(client.peers)
    for index, peer in enumerate(peers):
        if peer.id == value:
            if len(peer.vectors) >= IVSHMEM_CLIENT_MAX_VECTORS:
                return client, "Too many vectors received, failing"
            peers[index] = ClientPeer(peer.id, (*peer.vectors, fd))
            break
    else:
        peers.append(ClientPeer(value, (fd,)))
    return replace(client, peers=tuple(peers)), None


def client_descriptors(client: Client) -> set[int]:
    """Every descriptor the client's view holds."""
    held = {client.shm_fd, *client.local}
    for peer in client.peers:
        held.update(peer.vectors)
    held.discard(-1)
    return held


def client_search_peer(client: Client, peer: int) -> tuple[int, ...] | None:
    """The vectors of ``peer`` as ``ivshmem_client_search_peer`` finds it (C:405-419): the
    client itself first, then the list; ``None`` for an unknown id."""
    if peer == client.id:
        return client.local
    return next((p.vectors for p in client.peers if p.id == peer), None)


def command_int(typed: int) -> int:
    """The C ``int`` that ``sscanf(token, "int %d %d", ...)`` stores for the number ``typed``
    (main.c:84, 106): glibc reads a ``long`` (``strtol``, saturated at the int64 range) and
    keeps its low 32 bits.  So a peer whose id does not fit an ``int`` cannot be named."""
    low = max(-(2**63), min(2**63 - 1, typed)) & 0xFFFFFFFF
    return low - (1 << 32) if low & 0x80000000 else low


def client_vector_fd(client: Client, peer: int, vector: int) -> int | None:
    """The descriptor the command ``int <peer> <vector>`` writes (main.c:106-112, then
    C:346-369), or ``None``.  Both numbers are read as C ``int`` (:func:`command_int`); the
    vector is passed as ``unsigned``, so a negative one is out of range (C:352)."""
    if client.stage != 3:
        return None
    vectors = client_search_peer(client, command_int(peer)) or ()
    vector = command_int(vector)
    return vectors[vector] if 0 <= vector < len(vectors) else None


def client_broadcast_fds(client: Client) -> tuple[int, ...]:
    """The descriptors ``int all`` writes, in order: every vector of every peer, not the
    client's own (``ivshmem_client_notify_broadcast``, C:389-401)."""
    return tuple(d for p in client.peers for d in p.vectors)

"""Servers and the contrib client, as pure functions over the working tables.

Contrib server: ``contrib/ivshmem-server/ivshmem-server.c`` at ``585fcd4b1107`` (QEMU 3.1 era),
cited as ``S:<line>``.  Contrib client: ``contrib/ivshmem-client/ivshmem-client.c`` at
``ccd241b5a222``, cited as ``C:<line>``.  The scripted server has no policy of its own: it sends
what ``server_send`` steps say.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from model.proc import World
from model.state import Client, ClientPeer, FileObject, Server, ServerPeer

IVSHMEM_SERVER_MAX_HUGEPAGE_SIZE = 1024 * 1024 * 1024  # S:26
IVSHMEM_CLIENT_MAX_VECTORS = 64  # client.h:30
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


def handle_new_conn(
    server: Server, world: World, endpoint: int, n_vectors: int, obs: list[dict[str, Any]]
) -> Server | None:
    """``ivshmem_server_handle_new_conn`` (S:131-223); ``None`` when it fails (no id left),
    which makes the whole server shut down (S:404-425)."""
    used = {p.id for p in server.peers}
    cur_id = server.cur_id
    for _ in range(G_MAXUINT16):  # S:160-165
        if cur_id not in used:
            break
        cur_id = (cur_id + 1) & 0xFFFF
    else:
        return None  # "cannot allocate new client id" (S:166-171)
    peer_id = cur_id
    cur_id = (cur_id + 1) & 0xFFFF  # S:172
    eventfds = tuple(world.new_object(FileObject("eventfd")) for _ in range(n_vectors))

    def send(to: int, value: int, obj: int | None, kind: str | None) -> None:
        world.send(to, value, obj)
        obs.append(send_obs(to, value, kind))

    send(endpoint, 0, None, None)  # version (S:103)
    send(endpoint, peer_id, None, None)  # id (S:112)
    send(endpoint, -1, server.shm_obj, "shm")  # shm (S:120)
    for other in server.peers:  # S:190-195
        for obj in eventfds:
            send(other.endpoint, peer_id, obj, "eventfd")
    for other in server.peers:  # S:198-203
        for obj in other.eventfds:
            send(endpoint, other.id, obj, "eventfd")
    for obj in eventfds:  # S:206-209
        send(endpoint, peer_id, obj, "eventfd")
    return replace(
        server,
        cur_id=cur_id,
        peers=(*server.peers, ServerPeer(endpoint, peer_id, eventfds)),
    )


def free_peer(server: Server, world: World, endpoint: int, obs: list[dict[str, Any]]) -> Server:
    """``ivshmem_server_free_peer`` (S:74-94): one delete message to every remaining peer."""
    gone = next((p for p in server.peers if p.endpoint == endpoint), None)
    if gone is None:
        return server
    remaining = tuple(p for p in server.peers if p.endpoint != endpoint)
    for other in remaining:
        world.send(other.endpoint, gone.id, None)
        obs.append(send_obs(other.endpoint, gone.id, None))
    return replace(server, peers=remaining)


def server_close(server: Server, world: World, obs: list[dict[str, Any]]) -> Server:
    """``ivshmem_server_close`` (S:362-379): frees every peer in order, then goes down."""
    for peer in server.peers:
        server = free_peer(server, world, peer.endpoint, obs)
    return replace(server, up=False, shm_obj=-1, peers=())


# ---------------------------------------------------------------------------------------------
# The contrib client (C)


def client_handle_msg(client: Client, value: int, fd: int) -> tuple[Client, str | None]:
    """One server message: ``ivshmem_client_connect`` (C:179-244) while setting up, then
    ``ivshmem_client_handle_server_msg`` (C:91-141).  Returns the new view and, when the
    client gives up, its error text."""
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
        return replace(client, local=(*client.local, fd)), None
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


def client_vector_fd(client: Client, peer: int, vector: int) -> int | None:
    """The descriptor ``int <peer> <vector>`` writes (C:346-369), or ``None``."""
    if client.stage != 3:
        return None
    vectors = client.local if peer == client.id else next(
        (p.vectors for p in client.peers if p.id == peer), ()
    )
    return vectors[vector] if vector < len(vectors) else None

"""The executor on real fds: wire helpers, the server (as a subprocess), the client, the CLI.

Facts: ``shared/ivshmem-facts.md`` §2 and §4; contrib line numbers in
``notes/contrib-server-client.md``.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ivshmem_model.cli import main as executor_main
from ivshmem_model.executor_cli import OptionError, parse_size, parse_uint
from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.client import Client, ClientError

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 5.0


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def recv(sock: socket.socket, timeout: float = TIMEOUT) -> wire.Message:
    sock.settimeout(timeout)
    return wire.recv_msg(sock)


def assert_quiet(sock: socket.socket, wait: float = 0.1) -> None:
    ready, _w, _x = select.select([sock], [], [], wait)
    assert not ready, "unexpected further message"


def close_msgs(msgs: list[wire.Message]) -> None:
    for m in msgs:
        if m.fd is not None:
            os.close(m.fd)


def collect_events(client: Client, count: int) -> list[tuple[int, int]]:
    events: list[tuple[int, int]] = []
    deadline = time.monotonic() + TIMEOUT
    while len(events) < count and time.monotonic() < deadline:
        events += client.poll(0.05)
    return sorted(events)


def back_to(srv: Running, keeper: Client, baseline: int) -> bool:
    """Wait until the server holds ``baseline`` fds again, draining the keeper meanwhile."""

    def settled() -> bool:
        keeper.poll(0)
        return srv.fds() == baseline

    return wait_for(settled)


def listening(path: str) -> bool:
    """A listening unix socket is bound at ``path`` (without connecting: that takes an id)."""
    with open("/proc/net/unix", encoding="utf-8") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True
    return False


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def shape(msgs: list[wire.Message]) -> list[tuple[int, str | None]]:
    return [(m.value, None if m.fd is None else wire.fd_kind(m.fd)) for m in msgs]


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    path: str
    logs: Path  # <logs>.out and <logs>.err
    vectors: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        return fd_count(self.pid)

    def client(self) -> Client:
        """A connected client with its setup complete (own vectors come last, S:206-209)."""
        c = Client(self.path)
        c.connect()
        assert c.wait_until(lambda x: len(x.local.vectors) == self.vectors, TIMEOUT)
        return c

    def output(self) -> tuple[str, str]:
        return (Path(f"{self.logs}.out").read_text(), Path(f"{self.logs}.err").read_text())


def executor_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ivshmem_model", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short, so that the socket path fits in sun_path (108 bytes)
    path = Path(tempfile.mkdtemp(prefix="ivx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_server(workdir: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*flags: str, vectors: int = 2, size: str = "3000") -> Running:
        path = str(workdir / f"s{len(started)}.sock")
        shm = ("-m", str(workdir)) if "-M" not in flags else ()
        argv = executor_cmd("server", "-F", "-S", path, *shm, "-n", str(vectors), "-l", size,
                            *flags)
        logs = workdir / f"s{len(started)}"
        with open(f"{logs}.out", "wb") as out, open(f"{logs}.err", "wb") as err:
            proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=out, stderr=err)
        running = Running(proc, path, logs, vectors)
        started.append(running)

        def ready() -> bool:
            assert proc.poll() is None, running.output()
            return listening(path)

        assert wait_for(ready), "server did not start"
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.send_signal(signal.SIGTERM)
        code = running.proc.wait(TIMEOUT)
        _out, err = running.output()
        assert "Traceback" not in err, err
        assert code == 0, err


def setup_msgs(sock: socket.socket, peers: int, vectors: int = 2) -> list[wire.Message]:
    return [recv(sock) for _ in range(3 + vectors * (peers + 1))]


# ---------------------------------------------------------------------------------------------
# Message sequences (facts §2.2)


def test_handle_new_conn_first_client_sequence(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=2, size="3000")
    sock = raw_connect(srv.path)
    msgs = setup_msgs(sock, peers=0)
    try:
        assert shape(msgs) == [(0, None), (0, None), (-1, "file"), (0, "eventfd"),
                               (0, "eventfd")]
        assert msgs[2].fd is not None
        assert os.fstat(msgs[2].fd).st_size == 4096  # pow2ceil(3000)
        assert_quiet(sock)
    finally:
        close_msgs(msgs)
        sock.close()


def test_handle_new_conn_second_client_sequence(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=2, size="5000")
    a = raw_connect(srv.path)
    a_msgs = setup_msgs(a, peers=0)
    b = raw_connect(srv.path)
    b_msgs = setup_msgs(b, peers=1)
    a_more = [recv(a), recv(a)]
    try:
        assert shape(b_msgs) == [(0, None), (1, None), (-1, "file"),
                                 (0, "eventfd"), (0, "eventfd"), (1, "eventfd"), (1, "eventfd")]
        assert shape(a_more) == [(1, "eventfd"), (1, "eventfd")]
        assert_quiet(a)
        assert_quiet(b)
        # B's fd for (peer 0, vector 1) is A's own vector 1, and nothing else
        a_own = [m.fd for m in a_msgs[3:]]
        wire.kick(b_msgs[4].fd)  # type: ignore[arg-type]
        assert [wire.read_kick(fd) for fd in a_own] == [0, 1]  # type: ignore[arg-type]
        # A's fd for (peer 1, vector 0) is B's own vector 0
        wire.kick(a_more[0].fd)  # type: ignore[arg-type]
        b_own = [m.fd for m in b_msgs[5:]]
        assert [wire.read_kick(fd) for fd in b_own] == [1, 0]  # type: ignore[arg-type]
        # one shared memory, 8 KiB
        map_a = wire.map_shm(a_msgs[2].fd)  # type: ignore[arg-type]
        map_b = wire.map_shm(b_msgs[2].fd)  # type: ignore[arg-type]
        assert len(map_a) == len(map_b) == 8192
        map_a[100:105] = b"hello"
        assert map_b[100:105] == b"hello"
        map_a.close()
        map_b.close()
    finally:
        close_msgs(a_msgs + b_msgs + a_more)
        a.close()
        b.close()


def test_doorbell_a_notifies_b_vector_0(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=2)
    with srv.client() as a, srv.client() as b:
        assert a.wait_until(lambda c: c.search_peer(b.our_id) is not None, TIMEOUT)
        a.notify(b.our_id, 0)
        assert b.wait_event(TIMEOUT) == [(0, 1)]
        with pytest.raises(ClientError, match="invalid vector 2 on peer 1"):
            a.notify(b.our_id, 2)
        with pytest.raises(ClientError, match="cannot find peer_id = 9"):
            a.notify(9, 0)
        assert a.poll(0) == []
        b.notify_all_vectors(a.our_id)
        assert collect_events(a, 2) == [(0, 1), (1, 1)]


def test_free_peer_disconnect_broadcast(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=1)
    a = raw_connect(srv.path)
    msgs = setup_msgs(a, peers=0, vectors=1)
    b = raw_connect(srv.path)
    msgs += setup_msgs(b, peers=1, vectors=1)
    c = raw_connect(srv.path)
    msgs += setup_msgs(c, peers=2, vectors=1)
    msgs += [recv(a), recv(a), recv(b)]  # B's and C's connect to A, C's to B
    try:
        b.close()
        gone_a, gone_c = recv(a), recv(c)
        assert (gone_a.value, gone_a.fd) == (1, None)
        assert (gone_c.value, gone_c.fd) == (1, None)
        assert_quiet(a)
        assert_quiet(c)
    finally:
        close_msgs(msgs)
        a.close()
        c.close()


def test_client_handles_delete_peer(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=1)
    with srv.client() as a:
        b = srv.client()
        assert a.wait_until(lambda c: [p.id for p in c.peers] == [1], TIMEOUT)
        before = fd_count()
        b.close()
        assert a.wait_until(lambda c: c.peers == [], TIMEOUT)
        assert fd_count() < before  # B's fds and A's copy of B's eventfd are closed


def test_ids_not_reused_immediately(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=1)
    a, b = srv.client(), srv.client()
    assert (a.our_id, b.our_id) == (0, 1)
    a.close()
    c = srv.client()
    assert c.our_id == 2
    c.close()
    d = srv.client()
    assert d.our_id == 3
    assert b.wait_until(lambda x: [p.id for p in x.peers] == [3], TIMEOUT)
    b.close()
    d.close()


# ---------------------------------------------------------------------------------------------
# Robustness: fd conservation and hostile clients


def test_server_fd_count_stable_after_500_cycles(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=2)
    with srv.client() as keeper:
        baseline = srv.fds()
        for _ in range(500):
            with srv.client() as visitor:
                assert len(visitor.local.vectors) == 2
            keeper.poll(0)
        assert back_to(srv, keeper, baseline), (
            f"server holds {srv.fds()} fds, {baseline} before"
        )
        keeper.settle()
        assert keeper.peers == []


def _partial_message(path: str) -> None:
    sock = raw_connect(path)
    sock.send(b"\x01\x02\x03")
    sock.close()


def _partial_message_stays(path: str) -> None:
    sock = raw_connect(path)
    sock.send(b"\x01\x02\x03")
    try:
        assert wait_for(lambda: _eof_seen(sock))  # the server hangs up on it
    finally:
        sock.close()


def _eof_seen(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:  # the server closed it with our bytes unread
        return True
    return True


def _connect_and_vanish(path: str) -> None:
    for _ in range(50):
        raw_connect(path).close()


def _rapid_1000(path: str) -> None:
    for _ in range(1000):
        raw_connect(path).close()


def _burst_open_then_close(path: str) -> None:
    socks = [raw_connect(path) for _ in range(50)]
    for s in socks:
        s.close()


def _close_mid_setup(path: str) -> None:
    for count in range(1, 6):
        sock = raw_connect(path)
        close_msgs([recv(sock) for _ in range(count)])
        sock.close()


def _sends_data(path: str) -> None:
    sock = raw_connect(path)
    sock.send(b"x" * 100)
    sock.close()


def _never_reads(path: str) -> None:
    idle = raw_connect(path)  # never reads while 300 clients come and go
    for _ in range(300):
        sock = raw_connect(path)
        close_msgs(setup_msgs(sock, peers=2))
        sock.close()
    idle.close()


HOSTILE = {
    "partial-message": _partial_message,
    "partial-message-stays": _partial_message_stays,
    "connect-and-vanish": _connect_and_vanish,
    "1000-rapid-connects": _rapid_1000,
    "burst-of-50": _burst_open_then_close,
    "close-mid-setup": _close_mid_setup,
    "sends-data": _sends_data,
    "never-reads": _never_reads,
}


@pytest.mark.parametrize("behaviour", sorted(HOSTILE))
def test_server_survives_hostile_client(start_server: Callable[..., Running],
                                        behaviour: str) -> None:
    srv = start_server(vectors=2)
    with srv.client() as keeper:
        baseline = srv.fds()
        HOSTILE[behaviour](srv.path)
        assert srv.proc.poll() is None
        with srv.client() as fresh:
            assert len(fresh.local.vectors) == 2
            assert fresh.wait_until(lambda c: c.search_peer(0) is not None, TIMEOUT)
            fresh.notify(0, 1)
            assert keeper.wait_event(TIMEOUT) == [(1, 1)]
            assert keeper.wait_until(lambda c: c.search_peer(fresh.our_id) is not None,
                                     TIMEOUT)
            keeper.notify(fresh.our_id, 0)
            assert fresh.wait_event(TIMEOUT) == [(0, 1)]
        assert back_to(srv, keeper, baseline), (
            f"server holds {srv.fds()} fds, {baseline} before"
        )


# ---------------------------------------------------------------------------------------------
# Shutdown, daemon mode, flags


def test_sigterm_disconnects_and_unlinks(start_server: Callable[..., Running]) -> None:
    name = f"ivshmem-test-{uuid.uuid4().hex[:12]}"
    srv = start_server("-M", name, vectors=1, size="1M")
    assert os.stat(f"/dev/shm/{name}").st_size == 1 << 20
    a = raw_connect(srv.path)
    msgs = setup_msgs(a, peers=0, vectors=1)
    b = raw_connect(srv.path)
    msgs += setup_msgs(b, peers=1, vectors=1)
    msgs.append(recv(a))
    try:
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(TIMEOUT) == 0
        gone = recv(b)
        assert (gone.value, gone.fd) == (0, None)  # peers are freed in order (S:369-371)
        with pytest.raises(wire.WireError, match="lost connection"):
            recv(b)
        with pytest.raises(wire.WireError, match="lost connection"):
            recv(a)
        assert not os.path.exists(srv.path)
        assert not os.path.exists(f"/dev/shm/{name}")
        assert "server disconnected" in srv.output()[0]
    finally:
        close_msgs(msgs)
        a.close()
        b.close()
        wire.shm_unlink(name)


def test_daemon_mode_writes_pid_file(workdir: Path) -> None:
    path, pid_file = str(workdir / "d.sock"), workdir / "pid"
    argv = executor_cmd("server", "-S", path, "-m", str(workdir), "-p", str(pid_file))
    done = subprocess.run(argv, cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"))
    pid = int(pid_file.read_text())
    try:
        with Client(path) as c:
            c.connect()
            assert c.our_id == 0
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not os.path.exists(path))


@pytest.mark.parametrize(("flags", "code", "text"), [
    (["-n", "65"], 1, "too many requested vectors (max is 64)"),
    (["-v"], 1, "cannot use verbose in daemon mode"),
    (["-n", "abc"], 1, "cannot parse n_vectors"),
    (["-n", "-1"], 1, "cannot parse n_vectors"),
    (["-l", "12Q"], 1, "Parameter 'shm_size' expects a non-negative number below 2^64"),
    (["-l", "-1"], 1, "Value '-1' is too large for parameter 'shm_size'"),
    (["--bogus"], 2, "unrecognized arguments: --bogus"),
    (["-n"], 2, "expected one argument"),
])
def test_server_bad_flags(capsys: pytest.CaptureFixture[str], workdir: Path, flags: list[str],
                          code: int, text: str) -> None:
    try:
        result = executor_main(["server", "-S", str(workdir / "s.sock"), "-m", str(workdir),
                                *flags])
    except SystemExit as exit_:
        result = exit_.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert result == code
    assert text in err
    assert "Traceback" not in err


def test_server_refuses_existing_socket_path(workdir: Path) -> None:
    path = workdir / "taken.sock"
    path.write_text("")
    argv = executor_cmd("server", "-F", "-S", str(path), "-m", str(workdir))
    done = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 1
    assert f"cannot connect to {path}: Address already in use\ncannot bind" in done.stderr
    assert path.exists()  # not ours to remove


# ---------------------------------------------------------------------------------------------
# Client CLI


def test_client_cli_script(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=1)
    with srv.client() as keeper:
        done = subprocess.run(
            executor_cmd("client", "-S", srv.path, "-c", "dump", "-c", "int 0 0"),
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
            check=False)
        assert done.returncode == 0, done.stderr
        assert "our_id = 1\n  vector 0 is enabled" in done.stdout
        assert "peer_id = 0\n  vector 0 is enabled" in done.stdout
        assert keeper.wait_event(TIMEOUT) == [(0, 1)]
        done = subprocess.run(
            executor_cmd("client", "-S", srv.path, "-c", "int 9 0;frob"),
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
            check=False)
        assert done.returncode == 1
        assert done.stdout == "cannot find peer_id = 9\ninvalid command, type help\n"


def test_client_cli_interactive(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=2)
    with srv.client() as keeper:
        done = subprocess.run(
            executor_cmd("client", "-S", srv.path), input="help\ndump\nint 0 1\n",
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
            check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("dump: dump peers (including us)\n")
        assert "cmd> " in done.stdout
        assert "listen on server socket" in done.stdout
        assert "our_id = 1" in done.stdout
        assert keeper.wait_event(TIMEOUT) == [(1, 1)]


def test_client_cli_prints_notifications(start_server: Callable[..., Running]) -> None:
    srv = start_server(vectors=1)
    with srv.client() as keeper:
        proc = subprocess.Popen(executor_cmd("client", "-S", srv.path), cwd=ROOT,
                                env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert keeper.wait_until(lambda c: c.search_peer(1) is not None, TIMEOUT)
            keeper.notify(1, 0)
            line = b"receive notification from peer_id=1 vector=0\n"
            seen = b""
            deadline = time.monotonic() + TIMEOUT
            while line not in seen and time.monotonic() < deadline:
                if select.select([proc.stdout], [], [], 0.05)[0]:
                    seen += os.read(proc.stdout.fileno(), 4096)
            assert line in seen
        finally:
            proc.stdin.close()
            assert proc.wait(TIMEOUT) == 0
            proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# Client strictness (C:179-244) against a scripted server


def _scripted_server(path: str, script: list[tuple[int, str | None]] | bytes) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            if isinstance(script, bytes):
                conn.sendall(script)
                return
            for value, kind in script:
                fd = None if kind is None else (
                    wire.new_eventfd() if kind == "eventfd" else wire.shm_memfd())
                wire.send_msg(conn, value, fd)
                if fd is not None:
                    os.close(fd)
            conn.recv(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("script", "text"), [
    ([(1, None)], "cannot read from server"),
    ([(0, "eventfd")], "cannot read from server"),
    (b"\x00\x00\x00", "cannot read from server"),
    ([(0, None), (3, "eventfd")], "cannot read from server (2)"),
    ([(0, None), (-2, None)], "cannot read from server (2)"),
    ([(0, None), (3, None), (-1, None)], "cannot read from server (3)"),
    ([(0, None), (3, None), (5, "shm")], "cannot read from server (3)"),
])
def test_client_connect_strict(workdir: Path, script: list[tuple[int, str | None]] | bytes,
                               text: str) -> None:
    path = str(workdir / "fake.sock")
    before = fd_count()
    thread = _scripted_server(path, script)
    client = Client(path, timeout=TIMEOUT)
    with pytest.raises(ClientError) as info:
        client.connect()
    assert str(info.value) == text
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert fd_count() == before  # nothing leaked


def test_client_connect_refused(workdir: Path) -> None:
    path = str(workdir / "none.sock")
    with pytest.raises(ClientError, match=r"cannot connect to .*none.sock: No such file"):
        Client(path).connect()


# ---------------------------------------------------------------------------------------------
# Wire helpers


def test_recv_msg_partial_then_eof_is_an_error() -> None:
    a, b = socket.socketpair()
    fd = wire.new_eventfd()
    before = fd_count()
    wire.send_some(a, b"\x01\x02\x03", fd)
    a.close()
    with pytest.raises(wire.WireError, match="partial message: 3 of 8 bytes"):
        wire.recv_msg(b)
    assert fd_count() == before - 1  # the fd that came with the fragment is closed
    b.close()
    os.close(fd)


def test_recv_msg_reassembles_a_split_message() -> None:
    a, b = socket.socketpair()
    data = wire.MSG.pack(-1)
    fd = wire.shm_memfd()
    wire.send_some(a, data[:3], fd)
    wire.send_some(a, data[3:])
    msg = wire.recv_msg(b)
    assert msg.value == -1
    assert msg.fd is not None and wire.fd_kind(msg.fd) == "memfd"
    for x in (msg.fd, fd):
        os.close(x)
    a.close()
    b.close()


def test_recv_msg_is_little_endian() -> None:
    a, b = socket.socketpair()
    a.send(bytes([0x34, 0x12, 0, 0, 0, 0, 0, 0]))
    assert wire.recv_msg(b) == wire.Message(0x1234, None)
    a.close()
    b.close()


@pytest.mark.parametrize(("size", "expected"), [
    (0, 1), (1, 1), (3000, 4096), (4096, 4096), (4097, 8192), (4 << 20, 4 << 20),
])
def test_size_shm_rounds_up_to_power_of_two(size: int, expected: int) -> None:
    fd = wire.shm_memfd()
    try:
        assert wire.size_shm(fd, size) == expected
        assert os.fstat(fd).st_size == expected
    finally:
        os.close(fd)


def test_size_shm_above_1_gib_fails() -> None:
    fd = wire.shm_memfd()
    try:
        with pytest.raises(OSError) as info:
            wire.size_shm(fd, (1 << 30) + 1)
        assert info.value.errno == errno.EFBIG
    finally:
        os.close(fd)


def test_eventfd_kick_and_read() -> None:
    fd = wire.new_eventfd()
    try:
        assert wire.read_kick(fd) == 0
        wire.kick(fd)
        wire.kick(fd)
        assert wire.read_kick(fd) == 2
        assert wire.fd_kind(fd) == "eventfd"
    finally:
        os.close(fd)


@pytest.mark.parametrize(("text", "value"), [
    ("4194304", 4194304), ("1K", 1024), ("1k", 1024), ("1.5M", 1572864), ("2G", 2 << 30),
    ("0x10", 16), ("512B", 512),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "1.5", "2 K", "K", "12Q", "nan"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(OptionError, match="expects a non-negative number below 2"):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [
    ("1", 1), ("65", 65), ("0", 0), ("010", 8), ("0x40", 64), (" 7", 7), ("+3", 3),
])
def test_parse_uint(text: str, value: int) -> None:
    assert parse_uint(text) == value


@pytest.mark.parametrize("text", ["", "-1", "7a", "0x", "1e3"])
def test_parse_uint_rejects(text: str) -> None:
    with pytest.raises(OptionError, match="cannot parse n_vectors"):
        parse_uint(text)


@pytest.mark.parametrize(("after", "text"), [
    ([(7, None)], "receive delete for invalid peer 7"),
    ([(3, None)], "receive delete for invalid peer 3"),  # our own id
    ([(5, "eventfd")] * 65, "Too many vectors received, failing"),
])
def test_client_handle_server_msg_errors(workdir: Path, after: list[tuple[int, str | None]],
                                         text: str) -> None:
    path = str(workdir / "fake.sock")
    before = fd_count()
    thread = _scripted_server(path, [(0, None), (3, None), (-1, "shm"), *after])
    client = Client(path, timeout=TIMEOUT)
    client.connect()
    assert client.our_id == 3
    with pytest.raises(ClientError) as info:
        client.wait_until(lambda _c: False, TIMEOUT)
    assert str(info.value) == text
    client.close()
    thread.join(TIMEOUT)
    assert fd_count() == before

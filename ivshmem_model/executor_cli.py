"""``server`` and ``client`` subcommands with the contrib programs' flags and texts.

``server`` mirrors ``contrib/ivshmem-server/main.c`` (M:15-273): -S -M -m -l -n -F -p -v,
daemonizing unless -F.  ``client`` mirrors ``contrib/ivshmem-client/main.c`` (CM:25-240): the
``cmd> `` prompt with ``dump``, ``int <peer> <vector>``, ``int <peer> all``, ``int all``,
``help``; ``-c CMD`` (repeatable) runs commands without a prompt, for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from ivshmem_model.model.executor.client import Client, ClientError, Log, readable
from ivshmem_model.model.executor.server import (
    DEFAULT_SHM_NAME,
    DEFAULT_SHM_SIZE,
    DEFAULT_SOCKET_PATH,
    MAX_VECTORS,
    Server,
    ServerError,
    ServerOptions,
)

DEFAULT_PID_FILE = "/var/run/ivshmem-server.pid"  # M:17
CLIENT_HELP = (
    "dump: dump peers (including us)\n"
    "int <peer> <vector>: notify one vector on a peer\n"
    "int <peer> all: notify all vectors of a peer\n"
    "int all: notify all vectors of all peers (excepting us)\n"
)  # CM:70-73


class OptionError(Exception):
    """A bad option value; the text is what the contrib server prints (M:105-121)."""


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``server`` and ``client`` to a parent parser's subcommands."""
    srv = subparsers.add_parser(
        "server", help="run an ivshmem server (contrib ivshmem-server flags)",
        description="An ivshmem server speaking the real protocol, with the contrib "
        "ivshmem-server's flags.",
    )
    srv.add_argument("-v", dest="verbose", action="store_true", help="verbose mode")
    srv.add_argument("-F", dest="foreground", action="store_true",
                     help="foreground mode (default is to daemonize)")
    srv.add_argument("-p", dest="pid_file", metavar="<pid-file>", default=DEFAULT_PID_FILE,
                     help="path to the PID file (used in daemon mode only); "
                     f"default {DEFAULT_PID_FILE}")
    srv.add_argument("-S", dest="socket_path", metavar="<unix-socket-path>",
                     default=DEFAULT_SOCKET_PATH,
                     help=f"path to the unix socket to listen to; default {DEFAULT_SOCKET_PATH}")
    srv.add_argument("-M", dest="shm", metavar="<shm-name>", type=_posix_shm,
                     default=("posix", DEFAULT_SHM_NAME),
                     help=f"POSIX shared memory object to use; default {DEFAULT_SHM_NAME}")
    srv.add_argument("-m", dest="shm", metavar="<dir-name>", type=_dir_shm,
                     help="where to create shared memory")
    srv.add_argument("-l", dest="size", metavar="<size>", default=str(DEFAULT_SHM_SIZE),
                     help="size of shared memory in bytes; suffixes K, M and G can be used, "
                     f"e.g. 1K means 1024; default {DEFAULT_SHM_SIZE}")
    srv.add_argument("-n", dest="vectors", metavar="<nvectors>", default="1",
                     help="number of vectors; default 1")
    srv.set_defaults(func=run_server)

    cli = subparsers.add_parser(
        "client", help="run an ivshmem client (contrib ivshmem-client behaviour)",
        description="An ivshmem client; without -c it reads commands at a 'cmd> ' prompt.",
        epilog=CLIENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_argument("-v", dest="verbose", action="store_true", help="verbose mode")
    cli.add_argument("-S", dest="socket_path", metavar="<unix_sock_path>",
                     default=DEFAULT_SOCKET_PATH,
                     help=f"path to the unix socket to connect to; default={DEFAULT_SOCKET_PATH}")
    cli.add_argument("-c", dest="commands", metavar="CMD", action="append", default=[],
                     help="run CMD after connecting, then exit (repeatable; no prompt)")
    cli.set_defaults(func=run_client)


def _posix_shm(text: str) -> tuple[str, str]:
    return ("posix", text)


def _dir_shm(text: str) -> tuple[str, str]:
    return ("dir", text)


# ---------------------------------------------------------------------------------------------
# Option values


_NUMBER = re.compile(
    r"[ \t\n\r\f\v]*[+-]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
    r"|inf(?:inity)?|nan)",
    re.IGNORECASE,
)
_SUFFIXES = "BKMGTPE"
_SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)


def parse_size(text: str, name: str = "shm_size") -> int:
    """``parse_option_size`` over ``qemu_strtosz``: a number, maybe fractional, with an
    optional B/K/M/G/T/P/E suffix (any case, powers of 1024); ``OptionError`` otherwise."""
    invalid = OptionError(
        f"Parameter '{name}' expects a non-negative number below 2^64\n{_SIZE_HINT}"
    )
    match = _NUMBER.match(text)
    if match is None:
        raise invalid
    number = match.group(0).strip()
    value = float(int(number, 16)) if "x" in number.lower() else float(number)
    if value != value:  # NaN
        raise invalid
    rest = text[match.end():]
    multiplier = 1
    if rest and rest[0].upper() in _SUFFIXES:
        multiplier = 1024 ** _SUFFIXES.index(rest[0].upper())
        rest = rest[1:]
    fractional = math.isfinite(value) and value != math.floor(value)
    if rest or (multiplier == 1 and fractional):
        raise invalid
    if value < 0 or value * multiplier >= 0xFFFFFFFFFFFFFC00:
        raise OptionError(f"Value '{text}' is too large for parameter '{name}'")
    return int(value * multiplier)


_UINT = re.compile(r"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def parse_uint(text: str) -> int:
    """``parse_uint_full(text, &v, 0)``: decimal, 0x hex or 0 octal, nothing else."""
    match = _UINT.fullmatch(text.lstrip(" \t\n\r\f\v"))
    if match is None:
        raise OptionError("cannot parse n_vectors")
    digits = match.group(1)
    if digits[:2].lower() == "0x":
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    if value >= 2**64:
        raise OptionError("cannot parse n_vectors")
    return value


# ---------------------------------------------------------------------------------------------
# server


def _server_options(args: argparse.Namespace) -> ServerOptions:
    size = parse_size(args.size)
    vectors = parse_uint(args.vectors)
    if vectors > MAX_VECTORS:  # M:129-134 (compared before the cast to unsigned)
        raise OptionError(f"too many requested vectors (max is {MAX_VECTORS})")
    if args.verbose and not args.foreground:  # M:136-141
        raise OptionError("cannot use verbose in daemon mode")
    kind, path = args.shm
    return ServerOptions(socket_path=args.socket_path, shm_path=path, shm_kind=kind,
                         shm_size=size, vectors=vectors)


def run_server(args: argparse.Namespace) -> int:
    """The contrib server's ``main`` (M:187-273); returns the exit code."""
    prog = sys.argv[0] if sys.argv else "ivshmem-model"
    try:
        options = _server_options(args)
    except OptionError as err:
        print(f"{err}\nTry '{prog} server -h' for more information.", file=sys.stderr)
        return 1
    log = _printer(sys.stdout) if args.verbose else None
    server = Server(options, log)
    saved: list[tuple[int, object]] = []
    if threading.current_thread() is threading.main_thread():  # M:223-229
        for signum in (signal.SIGTERM, signal.SIGINT):
            saved.append((signum, signal.signal(signum, lambda _s, _f: server.stop())))
    try:
        server.start()
    except ServerError as err:
        print(f"{err}\ncannot bind", file=sys.stderr)
        _restore(saved)
        return 1
    try:
        if not args.foreground:
            _daemonize()
            try:
                with open(args.pid_file, "w", encoding="ascii") as handle:
                    handle.write(f"{os.getpid()}\n")
            except OSError as err:
                print(f"cannot write pid file: {err.strerror}", file=sys.stderr)
                return 1
        server.serve()
        print("server disconnected", flush=True)
        return 0
    finally:
        server.close()
        _restore(saved)


def _restore(saved: list[tuple[int, object]]) -> None:
    for signum, handler in saved:
        if handler is not None:  # None: the old handler was not installed from Python
            signal.signal(signum, handler)  # type: ignore[arg-type]


def _daemonize() -> None:
    """Double fork and ``setsid``; the original process exits 0 (``qemu_daemon(1, 1)``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)


def _printer(stream: TextIO) -> Callable[[str], None]:
    def log(text: str) -> None:
        print(text, file=stream, flush=True)

    return log


# ---------------------------------------------------------------------------------------------
# client


_INT_VECTOR = re.compile(r"int\s+([+-]?\d+)\s+([+-]?\d+)\s*")
_INT_ALL = re.compile(r"int\s+([+-]?\d+)\s+all\s*")


def run_command(client: Client, token: str, out: TextIO) -> bool:
    """One command, as ``ivshmem_client_handle_stdin_command`` (CM:77-128); False if it
    failed.  Unlike CM:117 (a bare ``sscanf``), ``int <peer> all`` must say ``all``."""
    if token == "?":
        out.write(CLIENT_HELP)  # CM:96-98 falls through to "invalid command"
    try:
        if token == "help":
            out.write(CLIENT_HELP)
        elif token == "dump":
            out.write(client.dump())
        elif token == "int all":
            client.notify_broadcast()
        elif (match := _INT_VECTOR.fullmatch(token)) is not None:
            return _notify(client, int(match.group(1)), out, int(match.group(2)))
        elif (match := _INT_ALL.fullmatch(token)) is not None:
            return _notify(client, int(match.group(1)), out, None)
        else:
            out.write("invalid command, type help\n")
            return False
    except ClientError as err:
        print(err, file=sys.stderr)
        return False
    return True


def _notify(client: Client, peer_id: int, out: TextIO, vector: int | None) -> bool:
    if client.search_peer(peer_id) is None:
        out.write(f"cannot find peer_id = {peer_id}\n")  # CM:107-110, on stdout
        return False
    if vector is None:
        client.notify_all_vectors(peer_id)
    else:
        client.notify(peer_id, vector)
    return True


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\n\r;]", text) if t]


def _print_events(client: Client, events: list[tuple[int, int]]) -> None:
    for vector, _count in events:  # CM:176-184 prints our own id
        print(f"receive notification from peer_id={client.our_id} vector={vector}", flush=True)


def run_client(args: argparse.Namespace) -> int:
    """The contrib client's ``main`` (CM:186-240), or a script run with ``-c``."""
    log = _printer(sys.stdout) if args.verbose else None
    try:
        if args.commands:
            return _run_script(args.socket_path, args.commands, log)
        return _run_interactive(args.socket_path, log)
    except KeyboardInterrupt:
        return 130


def _run_script(path: str, commands: list[str], log: Log | None) -> int:
    client = Client(path, log)
    try:
        client.connect()
    except ClientError as err:
        print(f"{err}\ncannot connect to server", file=sys.stderr)
        return 1
    ok = True
    try:
        client.settle()
        for command in commands:
            for token in _tokens(command):
                ok = run_command(client, token, sys.stdout) and ok
                _print_events(client, client.poll(0))
        sys.stdout.flush()
    except ClientError as err:
        print(f"{err}\ndisconnected from server", file=sys.stderr)
        ok = False
    finally:
        client.close()
    return 0 if ok else 1


def _run_interactive(path: str, log: Log | None) -> int:
    sys.stdout.write(CLIENT_HELP + "cmd> ")
    sys.stdout.flush()
    while True:
        client = Client(path, log)
        try:
            client.connect()
        except ClientError as err:
            if log is not None:
                print(err, flush=True)
            print("cannot connect to server, retry in 1 second", file=sys.stderr)
            time.sleep(1)
            continue
        assert client.sock is not None
        print(f"listen on server socket {client.sock.fileno()}", flush=True)
        with contextlib.suppress(ClientError):  # reported by the poll loop below
            client.settle()
        stdin_open = _serve_prompt(client)
        print("disconnected from server", flush=True)
        client.close()
        if not stdin_open:
            return 0


def _serve_prompt(client: Client) -> bool:
    """Commands from stdin and events from the server until either ends; False at EOF.
    Server messages are handled before stdin, so a command sees the peers already sent."""
    pending = ""
    while True:
        assert client.sock is not None
        sock_fd = client.sock.fileno()
        ready = readable([0, sock_fd, *client.local.vectors], None)
        if any(fd != 0 for fd in ready):
            try:
                _print_events(client, client.poll(0))
            except ClientError as err:
                print(f"{err}\nivshmem_client_handle_fds() failed", file=sys.stderr)
                return True
        if 0 in ready:
            data = os.read(0, 4096)
            if data:
                pending += data.decode(errors="replace")
                complete, _sep, pending = pending.rpartition("\n")
            else:
                complete, pending = pending, ""
            for token in _tokens(complete):
                run_command(client, token, sys.stdout)
            if not data:
                return False
            sys.stdout.write("cmd> ")
            sys.stdout.flush()

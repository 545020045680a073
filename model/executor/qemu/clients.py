"""Plain ``ivshmem-client`` endpoints (``config.clients``) on the QEMU backend.

Each is QEMU's own C ``ivshmem-client`` (``contrib/ivshmem-client``, built by
``scripts/build-contrib.sh``), one process per connection, started ``-v -S PATH`` on the
endpoint's :class:`~model.executor.qemu.channel.Channel`, exactly where a QEMU's chardev
connects: the server's messages wait in the channel until the trace's ``deliver``.

Why the C client and not the executor's (``model/executor/client.py``): the model's client
*is* the C program (``model/server.py``): a control buffer with room for one descriptor
(C:33, C:60-69), the ``int`` command's C ints (main.c:84, 106), an own vector that reads short
(C:293-324), and the C client's own debug lines as error texts.  The executor's client keeps
every descriptor and words its errors its own way; QEMU's program is the judge, as QEMU is for
devices.

What each client action does, and where its observation comes from (the real process only):

* ``connect``: the process starts and connects to the channel (it then waits in setup);
* ``deliver``: one message forwarded, then the client's lines (``our_id=``, ``listen on
  server socket``, a failure) and, once it is set up, a ``dump`` (its own vectors);
* ``client_notify``: ``int PEER VECTOR`` on stdin; disabled when it answers ``cannot find
  peer_id`` or ``invalid vector``, and during setup (it reads no stdin then, main.c:221);
* ``handle_irq``: the doorbells held for its vector go into its own eventfd; ``{"irq": v}``
  once it has printed ``receive notification ... vector=v``;
* ``garbage``: a byte on its connection to the server, which drops the peer (S:421-427);
* ``disconnect``: the process is killed.

After each of them the harness waits until the client sleeps in a call that waits for input
(``/proc/PID/syscall``) with all it printed read, so a step's effect is complete when the
next step begins.

The C client reads its own vectors as soon as they are readable (C:282-288): a notification it
printed is held here until the trace's ``handle_irq``, as doorbells between QEMUs wait in
stand-ins (``channel.py``).  A failure (a debug line of :data:`FAILURE`) is the step's
``error`` and ``failed`` fate, and the process is ended there: the C client would reconnect
(main.c:220-237), the model's fails for good (``properties/conform.py``, abstractions).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import termios
import time
from collections import Counter
from typing import Any

from ivshmem_model.model.executor import wire
from ivshmem_model.model.executor.contrib import contrib_programs
from ivshmem_model.model.executor.contrib_client import spawn_on_pty
from ivshmem_model.model.executor.qemu.channel import Channel

Observation = dict[str, Any]
START = 5.0  # seconds the process may take to start and connect
TIMEOUT = 1.0  # seconds a real effect may take to show
PROMPT = "cmd> "
# The debug lines that name a failure (C:48, 109, 132, 212-231, 312), as the model words it.
FAILURE = re.compile(r"^(cannot read from server(?: \(\d\))?|receive delete for invalid peer "
                     r"-?\d+|Too many vectors received, failing|cannot read message"
                     r"|invalid read size = -?\d+)")
# What main.c prints once a failure is over: reconnecting at once after setup (main.c:234),
# or sleeping before it retries during setup (main.c:222).
FAILURE_OVER = ("disconnected from server", "cannot connect to server, retry in 1 second")
NOTIFICATION = re.compile(r"receive notification from peer_id=-?\d+ vector=(\d+)$")
OWN_VECTOR = re.compile(r"^  vector (\d+) is enabled \(fd=(\d+)\)$")
# Calls the client sleeps in while it waits for input (x86-64): read, poll, select, nanosleep,
# recvfrom, recvmsg, clock_nanosleep, pselect6.
WAITING_CALLS = frozenset({0, 7, 23, 35, 45, 47, 230, 270})


def client_program() -> str | None:
    """The built C client, or ``None``."""
    found = contrib_programs()
    return None if isinstance(found, str) else found[1]


class PlainClient:
    """One C client process: stdin a pipe, stdout and stderr one pty (so the lines come
    line-buffered and in the order written), read without blocking whenever we look."""

    def __init__(self, program: str, channel: Channel) -> None:
        self.channel = channel
        self._text = ""
        self.scanned = 0  # text already split into lines by scan()
        self.held: Counter[int] = Counter()  # own vector -> notifications not yet handled
        self.ready = False  # setup over: "listen on server socket" printed
        self.failure: str | None = None  # the failure text, once its end was printed
        self._failing: list[str] = []
        self.own_fds: list[int] = []  # its own vectors' descriptors, from the last dump
        self.proc, self.master, self.stdin = spawn_on_pty(program, channel.path)
        os.set_blocking(self.master, False)

    def text(self, since: int = 0) -> str:
        """What it printed, from offset ``since``."""
        with contextlib.suppress(OSError):  # EAGAIN: nothing new; EIO: the process is gone
            while data := os.read(self.master, 65536):
                self._text += data.decode(errors="replace")
        return self._text[since:]

    @property
    def alive(self) -> bool:
        return self.failure is None and self.proc.poll() is None

    def blocked(self) -> bool:
        """Asleep in a call that waits for input (``/proc/PID/syscall``, x86-64 numbers)
        with all it printed read: it has handled whatever it had been given."""
        try:
            with open(f"/proc/{self.proc.pid}/syscall") as call:
                number = call.read().split(" ", 1)[0]
        except OSError:
            return True
        if not number.isdigit() or int(number) not in WAITING_CALLS:
            return False
        return fcntl.ioctl(self.master, termios.FIONREAD, b"\0\0\0\0") == b"\0\0\0\0"

    def settle(self, timeout: float = TIMEOUT) -> None:
        """Until it waits again (after a message, a command or a kick it has taken: the
        caller waits for that first), then take the lines it printed."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and not self.blocked() \
                and time.monotonic() < deadline:
            self.text()
            time.sleep(0.0005)
        self.scan()

    def scan(self) -> None:
        """Take the complete lines printed since the last scan: setup's end, notifications,
        a failure."""
        text = self.text(self.scanned)
        *lines, _rest = text.split("\n")
        self.scanned += sum(len(line) + 1 for line in lines)
        for line in lines:
            while line.startswith(PROMPT):  # the prompt has no newline of its own
                line = line[len(PROMPT):]
            if line.startswith("listen on server socket"):
                self.ready = True
            found = NOTIFICATION.search(line)
            if found:
                self.held[int(found.group(1))] += 1
            failed = FAILURE.match(line)
            if failed:
                self._failing.append(failed.group(1))
            if self._failing and any(end in line for end in FAILURE_OVER):
                # the stage's own text comes last ("cannot read message" first, C:48, 212)
                self.failure = self._failing[-1]

    def command(self, line: str) -> str | None:
        """A stdin command's output up to its prompt, once the client waits again; ``None``
        when no prompt came (it does not read stdin: it failed)."""
        start = len(self.text())
        try:
            os.write(self.stdin, line.encode() + b"\n")
        except OSError:
            return None
        deadline = time.monotonic() + TIMEOUT
        while PROMPT not in self.text(start):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.scan()
                return None
            time.sleep(0.0005)
        self.settle()
        return self.text(start)

    def dump(self) -> None:
        """Its own vectors as ``dump`` prints them (C:423-445: ours first)."""
        out = self.command("dump")
        if out is None:
            return
        own: list[int] = []
        for line in out.split("\n")[1:]:
            found = OWN_VECTOR.match(line)
            if found is None:
                break  # "peer_id = ..." or the prompt
            own.append(int(found.group(2)))
        self.own_fds = own

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for fd in (self.master, self.stdin):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.stdin = -1


class PlainClients:
    """The session's plain clients, by endpoint (``backend._Session`` routes their actions
    here)."""

    def __init__(self, endpoints: tuple[int, ...]) -> None:
        self.endpoints = frozenset(endpoints)
        self.procs: dict[int, PlainClient] = {}
        self.failed: set[int] = set()  # ended by a failure, until disconnect

    def unavailable(self) -> str | None:
        if self.endpoints and client_program() is None:
            found = contrib_programs()
            return (f"plain ivshmem-client endpoints run QEMU's C client: "
                    f"{found if isinstance(found, str) else 'not built'}")
        return None

    def dead(self, e: int) -> bool:
        return e in self.failed

    def _live(self, e: int) -> PlainClient | None:
        client = self.procs.get(e)
        return client if client is not None and client.alive else None

    def start(self, e: int, channel: Channel) -> bool:
        """The process for a ``connect``: it connects to the channel and waits in setup."""
        program = client_program()
        assert program is not None
        client = PlainClient(program, channel)
        self.procs[e] = client
        accepted = channel.accept_qemu(START)
        client.settle()
        return accepted

    def stop(self, e: int) -> None:
        client = self.procs.pop(e, None)
        if client is not None:
            client.kill()
        self.failed.discard(e)

    def close(self) -> None:
        for e in list(self.procs):
            self.stop(e)

    # -- actions -----------------------------------------------------------------------------

    def deliver(self, e: int, channel: Channel, size: int = 0) -> list[Observation] | None:
        """The next message, or its first ``size`` bytes (its descriptors with them)."""
        client = self._live(e)
        if client is None or not channel.queue or channel.qemu is None:
            return None
        want = wire.MSG.size - channel.head_sent  # the rest of the next message
        if size >= want or not channel.forward(size or want):
            return None  # bytes that complete it are a plain deliver, as for devices
        channel.wait_read()  # it has taken the message
        client.settle()
        if client.ready and client.alive:
            client.dump()  # its own vectors, for handle_irq
        return []

    def notify(self, e: int, peer: int, vector: int) -> list[Observation] | None:
        client = self._live(e)
        if client is None or not client.ready:
            return None  # stdin is not read during setup (main.c:221)
        out = client.command(f"int {peer} {vector}")
        if out is None or "cannot find peer_id" in out or "invalid vector" in out:
            return None
        return []

    def handle_irq(self, e: int, vector: int, channels: list[Channel]) -> list[Observation] | None:
        client = self._live(e)
        channel = channels[e]
        if client is None or not client.ready or vector >= len(client.own_fds):
            return None
        own = channel.own_eventfds[vector] if vector < len(channel.own_eventfds) else -1
        rings = sum(other.take_rings(channel.own_id or 0, vector)
                    for i, other in enumerate(channels) if i != e)
        if rings and own >= 0:
            os.write(own, rings.to_bytes(8, "little"))
            deadline = time.monotonic() + TIMEOUT
            while wire.eventfd_count(own) and time.monotonic() < deadline:
                time.sleep(0.0005)  # until the client has read it
            client.settle()
        client.scan()
        if not client.held[vector]:
            return None
        client.held[vector] = 0
        return [{"irq": vector}]

    def pending(self, channels: list[Channel], peer: int, vector: int) -> bool:
        """A notification a client with id ``peer`` printed for ``vector`` and the trace has
        not handled: its eventfd's counter in the model."""
        for e, client in self.procs.items():
            if client.alive and channels[e].own_id == peer:
                client.scan()
                if client.held[vector]:
                    return True
        return False

    def effects(self) -> list[tuple[int, list[Observation]]]:
        """Failures the clients printed in this step (each ends its process)."""
        out = []
        for e, client in list(self.procs.items()):
            if client.failure is None:
                client.scan()
            if client.failure is not None and e not in self.failed:
                self.failed.add(e)
                client.kill()
                out.append((e, [{"error": client.failure},
                                {"fate": "failed", "reason": client.failure}]))
        return out

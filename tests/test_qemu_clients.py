"""Plain ``ivshmem-client`` endpoints and migration on the QEMU backend (issue 10): QEMU's C
client beside real QEMUs (``model/executor/qemu/clients.py``), a master loaded into a fresh
QEMU (``migration.py``).  The conformance cases (``counterexamples/conformance/``) run in
``test_conform.py`` and ``test_qemu10.py``; these check what the cases cannot say: that the
client's observations come from the real process, the reasons for what is not run, and the
two abstractions the campaigns steer around.  Each QEMU start costs about half a second.
"""

from __future__ import annotations

import random
import shutil
import threading
from pathlib import Path

import pytest

from ivshmem_model.model.actions import (
    ClientNotify,
    Config,
    Connect,
    Deliver,
    HandleIrq,
    Migrate,
    Realize,
    Ring,
    ServerExit,
    ServerSend,
    Trace,
    config_from_json,
    load_trace,
)
from ivshmem_model.model.executor.qemu.backend import QemuBackend
from ivshmem_model.model.executor.qemu.clients import client_program
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.conform import (
    ABSTRACTIONS,
    Verdict,
    campaign,
    conform,
    random_walk,
)

CASES = Path(__file__).resolve().parents[1] / "counterexamples" / "conformance"
CONFIGS = {c.name: c.config for c in embedded_configs()}
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed: run "
                                       "scripts/install-qemu.sh")
needs_client = pytest.mark.skipif(client_program() is None,
                                  reason="QEMU's C ivshmem-client is not built: run "
                                         "scripts/build-contrib.sh")


def _scripted_client() -> Config:
    return config_from_json({"endpoints": 1, "clients": [0],
                             "server": {"policy": "scripted", "vectors": 1, "shm_size": 4096}})


SETUP = (ServerSend(0, 0, None), ServerSend(0, 4, None), ServerSend(0, -1, "shm"),
         ServerSend(0, 4, "eventfd"))


@needs_qemu
@needs_client
def test_a_client_that_is_not_running_observes_nothing() -> None:
    """The client's irq comes from its process: with the process gone, the same doorbell
    is not handled (the step is disabled), where the model would report it."""
    from ivshmem_model.model.executor.qemu import backend as backend_module

    steps = (Connect(0), *SETUP, *(Deliver(0),) * 4, ClientNotify(0, 4, 0), HandleIrq(0, 0))
    trace = Trace(_scripted_client(), steps)
    real = QemuBackend().run(trace)
    assert real.steps[-1].observations == [{"irq": 0}]

    class Killed(backend_module._Session):
        def _client_notify(self, a: ClientNotify) -> list[dict[str, object]] | None:
            out = super()._client_notify(a)
            self.plain.procs[a.endpoint].proc.kill()  # the process dies after ringing
            self.plain.procs[a.endpoint].proc.wait()
            return out

    original = backend_module._Session
    backend_module._Session = Killed  # type: ignore[misc]
    try:
        gone = QemuBackend().run(trace)
    finally:
        backend_module._Session = original  # type: ignore[misc]
    assert not gone.steps[-1].enabled


@needs_qemu
@needs_client
def test_the_client_refuses_what_it_does_not_hold() -> None:
    """``int`` to an unknown peer, a vector it lacks, or before its setup: all disabled, as
    the C client answers (main.c:106-112, C:352) and as the model says."""
    for tail in ((ClientNotify(0, 9, 0),), (ClientNotify(0, 4, 1),)):
        steps = (Connect(0), *SETUP, *(Deliver(0),) * 4, *tail)
        verdict = conform(Trace(_scripted_client(), steps), QemuBackend())
        assert verdict.verdict == "agree", verdict
        assert verdict.qemu_run is not None and not verdict.qemu_run.steps[-1].enabled
    early = Trace(_scripted_client(), (Connect(0), *SETUP, Deliver(0), ClientNotify(0, 4, 0)))
    run = QemuBackend().run(early)
    assert not run.steps[-1].enabled


def test_without_the_c_client_a_client_trace_is_unsupported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed: run scripts/install-qemu.sh")
    monkeypatch.setenv("IVSHMEM_CONTRIB_DIR", str(tmp_path))
    run = QemuBackend().run(Trace(_scripted_client(), (Connect(0),)))
    assert run.unsupported is not None and "ivshmem-client" in run.unsupported
    assert "build-contrib.sh" in run.unsupported


@needs_qemu
@needs_client
def test_a_client_reads_end_of_file_where_the_model_has_none() -> None:
    """The listed abstraction "a plain client's end of file", shown on the real client: the
    server goes while a message waits, and once the client has read it the socket ends:
    'cannot read message'.  The model's client reads on, so the two differ here."""
    assert any(name == "a plain client's end of file" for name, _why in ABSTRACTIONS)
    steps = (Connect(0), *SETUP, Deliver(0), Deliver(0), Deliver(0), ServerExit(), Deliver(0))
    verdict = conform(Trace(_scripted_client(), steps), QemuBackend())
    assert verdict.verdict == "differ" and verdict.step == len(steps) - 1, verdict
    assert '{"error": "cannot read message"}' in verdict.qemu


def test_campaigns_do_not_end_a_clients_stream() -> None:
    """Walks on a configuration with a plain client draw no server exit while it is
    connected (the abstraction above), and still draw the client's own actions."""
    rng = random.Random(3)
    names: set[str] = set()
    for _ in range(30):
        trace = random_walk(CONFIGS["legacy-intx"], 16, rng)
        connected = False
        for action in trace.steps:
            names.add(action.name)
            if action.name == "connect" and action.endpoint == 1:  # type: ignore[attr-defined]
                connected = True
            elif action.name == "disconnect" and action.endpoint == 1:  # type: ignore[attr-defined]
                connected = False
            assert not (connected and action.name == "server_exit")
            assert action.name != "garbage"
    assert {"client_notify", "handle_irq", "deliver"} <= names


@needs_qemu
@needs_client
def test_legacy_intx_walks_agree_with_qemu() -> None:
    """A bounded campaign on the configuration with a plain client: every walk runs (none
    is unsupported any more) and none differs."""
    results = campaign([CONFIGS["legacy-intx"]], count=3, length=12, seed=11,
                       backend=QemuBackend())
    assert [v.verdict for _t, v in results] == ["agree"] * 3, [str(v) for _t, v in results]


@needs_qemu
def test_migration_of_a_master_runs_and_a_peer_is_refused() -> None:
    """The master goes into a fresh QEMU (another process) and keeps its shared memory and
    doorbells; the peer answers with its blocker's text."""
    trace = load_trace(str(CASES / "migrate-a-master-into-a-fresh-qemu.json"))
    verdict = conform(trace, QemuBackend())
    assert verdict.verdict == "agree", verdict
    run = verdict.qemu_run
    assert run is not None
    refused = next(s for s in run.steps if s.action == Migrate(1))
    assert refused.observations == [
        {"error": "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"}]


@needs_qemu
def test_migration_with_part_of_a_message_is_unsupported_and_says_why() -> None:
    config = CONFIGS["contrib-master"]
    master = Realize(0, "ivshmem-doorbell", (("chardev", True), ("vectors", 1),
                                             ("master", "on")))
    steps = (Connect(0), master, Connect(1), Deliver(0, 3), Migrate(0), Ring(0, 0, 0))
    run = QemuBackend().run(Trace(config, steps))
    assert run.unsupported is not None and "part of a message" in run.unsupported
    assert len(run.steps) == 4  # the steps before the migration ran


SHORT_READS = [  # messages read whole before the part, then the C client's text (C:46-51, 210-232)
    (0, "cannot read from server"), (1, "cannot read from server (2)"),
    (2, "cannot read from server (3)"), (3, "cannot read message")]


@pytest.mark.parametrize(("whole", "text"), SHORT_READS)
def test_part_of_a_message_fails_a_plain_client(whole: int, text: str) -> None:
    """Model fix: a client's read takes what one recvmsg brings and fails short of 8 bytes
    with its stage's text; the model used to deliver the whole message (found by running
    deliver with bytes on the C client)."""
    from ivshmem_model.model.variants import get_variant
    from ivshmem_model.properties.trace import run_trace

    steps = (Connect(0), *SETUP, *(Deliver(0),) * whole, Deliver(0, 3), ClientNotify(0, 4, 0))
    result = run_trace(Trace(_scripted_client(), steps), get_variant("qemu-7.2"))
    assert result.steps[-2].observations == [{"error": text}, {"fate": "failed", "reason": text}]
    assert not result.steps[-1].enabled  # the client is gone


@needs_qemu
@needs_client
def test_part_of_a_message_fails_the_c_client_as_the_model_says() -> None:
    for whole, _text in SHORT_READS[::3]:
        steps = (Connect(0), *SETUP, *(Deliver(0),) * whole, Deliver(0, 5))
        verdict = conform(Trace(_scripted_client(), steps), QemuBackend())
        assert verdict.verdict == "agree", verdict


@needs_qemu
@needs_client
def test_a_client_ringing_itself_beside_a_device_is_handled() -> None:
    """The device was handed a stand-in for the client's vector 1 and refused it ("Too many
    eventfd received", seed 530-535) after QEMU's chardev had made it blocking (char-socket.c
    tcp_chr_recv; ivshmem makes the fds it keeps non-blocking again): handle_irq on the
    client must not read that stand-in while its counter is 0 (the backend used to wait
    there for ever)."""
    config = config_from_json({"endpoints": 2, "clients": [1],
                               "server": {"policy": "contrib", "vectors": 2}})
    device = Realize(0, "ivshmem-doorbell", (("chardev", True), ("vectors", 1)))
    steps = (Connect(0), device, Connect(1), *(Deliver(0),) * 4, *(Deliver(1),) * 7,
             ClientNotify(1, 1, 1), HandleIrq(1, 1))
    done: list[Verdict] = []
    worker = threading.Thread(target=lambda: done.append(conform(Trace(config, steps),
                                                                 QemuBackend())), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "the backend did not finish the trace within 60 s"
    verdict = done[0]
    assert verdict.verdict == "agree", verdict
    assert verdict.qemu_run is not None
    assert verdict.qemu_run.steps[-1].observations == [{"irq": 1}]

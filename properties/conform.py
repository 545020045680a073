"""Differential conformance: one trace on the model and on a real QEMU, compared step by step
(design §10).

The model is judged by QEMU: where the two differ, the first differing step is reported with
both sides' observations, and either the model changes or the difference is a deliberate
abstraction in :data:`ABSTRACTIONS` (one list, each with its reason).  Observations only one
side can make are removed before comparing, by the rules in :data:`UNOBSERVABLE`; nothing is
silently counted as agreement: a trace the backend cannot run is ``unsupported`` with the reason.

Comparison rules, per step:

1. ``enabled``: both take the step or both refuse it (QEMU refuses what it cannot do: deliver
   from an empty channel, realize while a live server has not sent enough, anything on a
   process that is gone).
2. undefined behaviour: where the model's step ends in it, QEMU crashing or aborting agrees
   (:data:`ABSTRACTIONS`);
3. observations, as multisets of JSON objects after :func:`comparable`: ``send``, ``read``,
   ``error``, ``msi`` (TCG only), ``fate``.  A fate compares by kind, and by text where QEMU
   prints one: the assertion for ``aborted``, the error for ``failed``.  ``crashed`` matches
   ``crashed`` whatever the signal: the model names the bad access, QEMU shows a signal.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Any

from ivshmem_model.model.actions import (
    CONFIG_REGISTERS,
    CONFORMANCE_FORMAT,
    MEMORY_BACKENDS,
    Action,
    Config,
    ConfigRead,
    ConfigWrite,
    Counterexample,
    Deliver,
    EventfdPoll,
    FdCount,
    Realize,
    ServerSend,
    ShmRead,
    ShmWrite,
    Trace,
)
from ivshmem_model.model.executor.qemu.backend import BackendRun, QemuBackend
from ivshmem_model.model.state import BAR0_ADDR, BAR1_ADDR, BAR2_ADDR, SystemState
from ivshmem_model.model.system import initial_state, step, successors
from ivshmem_model.model.variants import get_variant
from ivshmem_model.properties.minimize import ddmin
from ivshmem_model.properties.trace import RunResult, run_trace

Observation = dict[str, Any]

UNOBSERVABLE: dict[str, str] = {
    "fd": "descriptor bookkeeping inside QEMU (which fd closed when) is not visible from outside",
    "fault": "a misuse that does not end the process (a close of a closed fd) leaves no trace "
             "QEMU prints",
    "intx": "the legacy device's INTx line does not exist in QEMU 7.2",
    "dropped": "a message the server sends to a socket whose process is gone (a process of "
               "several endpoints ending) is refused by the kernel and ignored by the server: "
               "nothing outside shows it",
}

ABSTRACTIONS: tuple[tuple[str, str], ...] = (
    ("msi under KVM",
     "with KVM irqfds an MSI goes to the in-kernel APIC; qtest cannot see it, so MSIs are "
     "compared under TCG only"),
    ("fate reasons",
     "the model names the bad access (null_deref, double_free at a seed line); QEMU shows a "
     "signal or glibc's heap message: crashes compare by kind"),
    ("hang reason",
     "the model names the loop (seed 672); QEMU shows a process that stopped answering and "
     "uses the CPU"),
    ("a handler that runs forever",
     "a /dev/null or file sent as an eventfd is readable at every poll: QEMU's main loop runs "
     "the vector's handler again and again (a CPU spins, qtest still answers); the model runs "
     "it once, when it is installed, the only run that can have an effect"),
    ("message order across endpoints",
     "the sends of one step are compared as a multiset: the server's order per peer is the "
     "model's, the interleaving between sockets is the kernel's"),
    ("a plain client's end of file",
     "QEMU's C ivshmem-client reads end of file once the server has closed its socket (the "
     "server exited, or dropped it for the bytes it wrote: garbage) and it has read what was "
     "queued: 'cannot read message', then it reconnects (main.c:220-237).  The model's "
     "client has no end of file (it keeps what was queued and gets nothing more), so "
     "campaigns draw neither server_exit while a plain client is connected nor garbage"),
    ("a plain client's failure",
     "the C client closes everything and connects again after a failure (main.c:220-237); "
     "the model's client fails for good (fate failed) and the server keeps its peer, so the "
     "backend ends the process at the failure and keeps its connection to the server"),
    ("a migration destination",
     "the model loads a migrated master into a destination realized against the same server "
     "with the same ID and eventfds (model.device.ivshmem_migrate); a real destination's "
     "chardev connects to the server itself, gets a new ID, and the server announces it to "
     "every peer.  The backend hands the destination's chardev what the source was handed "
     "(version, ID, shared memory, every peer's eventfds and its own: the same kernel "
     "objects) and keeps the source's connection to the server (model/executor/qemu/"
     "migration.py)"),
    ("a message's second descriptor",
     "a message may carry several descriptors; the chardev keeps them all until the device "
     "takes the first, then closes the others (char-socket.c tcp_get_msgfds).  A message holds "
     "one descriptor in the model, the others closed as it is sent, so between the parts of "
     "such a message (deliver with bytes) an fd_count shows the others on QEMU only; campaigns "
     "seldom meet it (a hostile server_send with extra_fds, then deliver with bytes, then "
     "fd_count)"),
    ("BARs moved onto each other",
     "the guest's accesses go to where the driver placed each BAR (model/pci.py); a BAR the "
     "guest moves onto another BAR's address is not modelled, and campaigns move BARs only to "
     "their home, to 0 or to the sizing pattern"),
    ("RAM BAR above the host's address limit under KVM",
     "a 64-bit BAR2 placed beyond what KVM accepts (0xffffffff80000000 on QEMU 7.2.22) fails "
     "KVM_SET_USER_MEMORY_REGION and QEMU aborts; the model does not know the host's limit, "
     "so KVM campaigns leave the upper half of BAR2 alone"),
    ("QEMU 10.0 changes no action reaches",
     "between 7.2.22 and 10.0.13 the PCI core updates bus mastering and INTx disable on a "
     "1-byte write to COMMAND's upper byte (config_write writes whole registers), a config "
     "access wider than 4 bytes is ignored instead of asserting (ports 0xCF8/0xCFC are 4 "
     "bytes), pci_register_bar asserts a BAR is registered once (realize registers each once), "
     "a PBA write is logged with -d guest_errors only (no output otherwise), a memory backend "
     "must be a whole number of pages (memdev sizes here are powers of 2 of 4 KiB and more), "
     "and device_add checks argument types (the backend passes typed values to both)"),
    ("a process's later devices (config.processes)",
     "the guest places the k-th device of a process in slot 4+k with its BARs below the "
     "first's (machine.BAR_STRIDE, a later BAR2 at most 256 MiB); the model knows one guest "
     "layout, so the backend shows a later device's BAR registers at the first device's "
     "addresses, and a trace writes those addresses to place it at its own"),
    ("per-device host tables in a shared process",
     "a process of several devices has one descriptor table, one main loop and one KVM VM; "
     "the model keeps each device's descriptors, fd handlers, KVM routes and irqfds in its "
     "endpoint's record (fd_count sums the process's).  Nothing a property reads changes: "
     "descriptor numbers in device state are identities here, not POSIX numbers (the "
     "model numbers them system-wide; Fd.number is the POSIX number, counted per process "
     "over all its devices), routes are named by vector per device (QEMU allocates GSIs "
     "from one per-VM pool: the numbers differ, the count per device does not), and a "
     "device attaches irqfds only to its own vectors' eventfds, which the server made for "
     "it alone, so KVM's per-VM -EBUSY never meets another device's irqfd"),
    ("reset order in a shared process",
     "system_reset resets the process's devices in the tree's order (the last plugged first: "
     "qdev.c bus_add_child inserts at the head, bus.c bus_reset_child_foreach walks from it; "
     "every device's own reset before the PCI bus's); the model resets them in endpoint "
     "order, each completely: the order shows only when a reset ends the process, and the "
     "fate is then the process's either way"),
    ("a stale fd handler's number",
     "QEMU's main loop watches a handler's descriptor by number; the handler ivshmem_exit "
     "leaves (seed 1001-1012) runs with its freed opaque once the number belongs to a "
     "readable descriptor again.  The model gives each descriptor a process its POSIX number "
     "(Fd.number: the lowest free, counted from the first descriptor the model knows of, "
     "QEMU's own being opened at launch below it) and predicts that crash "
     "(model.device.stale_fd_handler_poll).  What it leaves out: while the number is closed "
     "QEMU's poll returns POLLNVAL at once and the main loop spins, which qtest does not "
     "see; a handler whose device lives on (its own eventfd closed by a peer's leave) "
     "reading the descriptor that took the number (the model keeps descriptor identities "
     "in device state, so that use is a fault instead); a doorbell from another process to "
     "a descriptor a stale handler watches, which the model sees at the owner's next step, "
     "QEMU at its handle_irq (the backend's stand-ins); and the RCU thread's delay: QEMU "
     "closes an unplugged device's RAM block fd 10-60 ms after device_del, the model at "
     "unplug, so the backend's unplug waits for it (machine.Machine.drain_rcu)"),
    ("undefined behaviour",
     "a read past an array or a write into freed memory is undefined behaviour: the model "
     "ends the process there (crashed: out_of_bounds / use_after_free); QEMU agrees when it "
     "then crashes or aborts, whatever the symptom; when it runs on, nothing outside a memory "
     "checker can confirm the access, and the step differs"),
)

UNDEFINED = ("out_of_bounds", "use_after_free")


def undefined_behaviour(observations: list[Observation]) -> bool:
    """Whether the model's step ends in undefined behaviour (see ABSTRACTIONS)."""
    return any(o.get("fate") == "crashed" and str(o.get("reason", "")).startswith(UNDEFINED)
               for o in observations)


def abnormal_end(observations: list[Observation]) -> bool:
    return any(o.get("fate") in ("crashed", "aborted") for o in observations)


def comparable(observations: list[Observation], kvm: bool) -> list[str]:
    """The observations both interpreters can make, as sorted canonical JSON strings."""
    out: list[str] = []
    for obs in observations:
        # every observation is compared but those listed as unobservable, and MSIs under KVM
        if obs.keys() & UNOBSERVABLE.keys() or ("msi" in obs and kvm):
            continue
        if "fate" in obs:
            obs = _fate_key(obs)
        out.append(json.dumps(obs, sort_keys=True))
    return sorted(out)


def _fate_key(obs: Observation) -> Observation:
    kind = obs["fate"]
    if kind in ("aborted", "failed"):
        return {"fate": kind, "reason": _assertion(obs.get("reason", ""))}
    return {"fate": kind}


def _assertion(text: str) -> str:
    """``function: Assertion `expr' failed.`` (both sides print it so; the model may add
    where it is)."""
    marker = text.find(": Assertion `")
    if marker < 0:
        return text
    start = text.rfind(" ", 0, marker) + 1
    return text[start:]


@dataclass
class Verdict:
    """``agree``, ``differ`` (at ``step``, with both sides) or ``unsupported`` (``detail``)."""

    verdict: str
    step: int | None = None
    detail: str = ""
    model: Any = None
    qemu: Any = None
    qemu_run: BackendRun | None = field(default=None, repr=False)
    model_run: RunResult | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict}
        if self.step is not None:
            out["step"] = self.step
        if self.detail:
            out["detail"] = self.detail
        if self.verdict == "differ":
            out["model"] = self.model
            out["qemu"] = self.qemu
        return out

    def __str__(self) -> str:
        if self.verdict == "agree":
            return "agree"
        if self.verdict == "unsupported":
            return f"not expressible on QEMU: {self.detail}"
        return (f"differ at step {self.step} ({self.detail}):\n  model: {self.model}\n"
                f"  qemu:  {self.qemu}")


def compare(model: RunResult, qemu: BackendRun, kvm: bool) -> Verdict:
    if qemu.unsupported is not None and not qemu.steps:
        return Verdict("unsupported", None, qemu.unsupported)
    for mine, theirs in zip(model.steps, qemu.steps, strict=False):
        if mine.enabled != theirs.enabled:
            return Verdict("differ", mine.index, "enabled", mine.enabled, theirs.enabled)
        if undefined_behaviour(mine.observations) and abnormal_end(theirs.observations):
            continue
        left = comparable(mine.observations, kvm)
        right = comparable(theirs.observations, kvm)
        if left != right:
            return Verdict("differ", mine.index, "observations", left, right)
    if qemu.unsupported is not None:
        return Verdict("unsupported", len(qemu.steps), qemu.unsupported)
    if len(model.steps) != len(qemu.steps):
        at = min(len(model.steps), len(qemu.steps))
        return Verdict("differ", at, "length", len(model.steps), len(qemu.steps))
    return Verdict("agree")


def conform(trace: Trace, backend: QemuBackend, variant: str = "qemu-7.2") -> Verdict:
    """Run ``trace`` on the model (``variant``) and on QEMU; the first difference."""
    model = run_trace(trace, get_variant(variant))
    qemu = backend.run(trace)
    verdict = compare(model, qemu, backend.force_kvm or trace.config.host.kvm_msi_irqfd)
    verdict.model_run, verdict.qemu_run = model, qemu
    return verdict


# ---------------------------------------------------------------------------------------------
# Confirming counterexamples


def violated_step(cx: Counterexample, variant: str) -> int | None:
    """The step at which ``variant`` violates the entry's property, if it is expected to."""
    expect = dict(cx.expect).get(variant)
    if isinstance(expect, dict):
        return int(expect["step"])
    return None


def confirm(cx: Counterexample, backend: QemuBackend, variant: str = "qemu-7.2"
            ) -> dict[str, Any]:
    """What QEMU does with a counterexample the ``variant`` violates:

    * ``confirmed``: QEMU shows the same fate at the same step (the crash, abort, hang or
      realize failure the model predicts);
    * ``consistent``: every observable step agrees, and the violation is of state QEMU does
      not expose (a KVM route left behind, an fd closed twice);
    * ``not reproduced``: QEMU differs, with the first difference;
    * ``unsupported``: the backend cannot run the trace, with the reason.
    """
    at = violated_step(cx, variant)
    verdict = conform(cx.trace, backend, variant)
    record: dict[str, Any] = {"verdict": "", "seconds": round(_seconds(verdict), 2)}
    if verdict.verdict == "unsupported":
        record.update(verdict="unsupported", detail=verdict.detail)
        return record
    qemu_run = verdict.qemu_run
    assert qemu_run is not None
    fate = _fate_at(qemu_run, at)
    if verdict.verdict == "agree":
        record["verdict"] = "confirmed" if fate is not None else "consistent"
        if fate is not None:
            record["qemu"] = fate
        elif cx.property == "fd_conservation" and at is not None:
            held = _descriptors_held(cx, at, backend, variant)
            if held is not None:
                record.update(verdict="confirmed", qemu=held)
        return record
    if at is not None and verdict.step == at and not backend.memcheck \
            and verdict.model_run is not None \
            and undefined_behaviour(verdict.model_run.steps[at].observations):
        # The access the model names left QEMU running: ask a memory checker.
        checked = confirm(cx, QemuBackend(backend.binary, backend.force_kvm, backend.version,
                                          memcheck=True), variant)
        checked["checker"] = "valgrind memcheck"
        return checked
    record.update(verdict="not reproduced", detail=str(verdict))
    return record


def _descriptors_held(cx: Counterexample, at: int, backend: QemuBackend,
                      variant: str) -> Observation | None:
    """A leak made visible: the trace up to the violation, then ``fd_count`` on every
    endpoint.  When QEMU holds the descriptors the model says it holds (the leaked one
    included), ``{"fds": [per endpoint]}``; else ``None``."""
    ends = tuple(FdCount(e) for e in range(cx.trace.config.endpoints))
    probe = Trace(cx.trace.config, cx.trace.steps[:at + 1] + ends)
    verdict = conform(probe, backend, variant)
    if verdict.verdict != "agree" or verdict.qemu_run is None:
        return None
    counts = [o["fds"] for s in verdict.qemu_run.steps[at + 1:] for o in s.observations
              if "fds" in o]
    return {"fds": counts} if counts else None


def _fate_at(run: BackendRun, at: int | None) -> Observation | None:
    if at is None or at >= len(run.steps):
        return None
    return next((o for o in run.steps[at].observations if "fate" in o), None)


def _seconds(verdict: Verdict) -> float:
    return verdict.qemu_run.seconds if verdict.qemu_run is not None else 0.0


# ---------------------------------------------------------------------------------------------
# Conformance cases (counterexamples/conformance/): a trace on which the model once differed
# from QEMU, with what QEMU showed at each step, so the model is held to it with or without
# a QEMU at hand.


def case_json(name: str, summary: str, origin: str, trace: Trace, run: BackendRun,
              kvm: bool) -> dict[str, Any]:
    """A conformance case recording ``run`` (QEMU's comparable observations per step)."""
    body = trace.to_json()
    del body["format"]
    return {
        "format": CONFORMANCE_FORMAT,
        "name": name,
        "summary": summary,
        "origin": origin,
        "trace": body,
        "qemu": {run.backend.removeprefix("qemu-"): [
            {"enabled": s.enabled, "observations": comparable(s.observations, kvm)}
            for s in run.steps
        ]},
    }


def check_case(case: dict[str, Any], version: str, steps: list[Any], kvm: bool) -> str | None:
    """``None`` when ``steps`` (a model's or QEMU's run) shows what the case recorded for
    QEMU ``version``, else the first difference."""
    recorded = case["qemu"][version]
    if len(steps) != len(recorded):
        return f"{len(steps)} steps, QEMU {version} took {len(recorded)}"
    for index, (mine, theirs) in enumerate(zip(steps, recorded, strict=True)):
        seen = {"enabled": mine.enabled, "observations": comparable(mine.observations, kvm)}
        if theirs.get("undefined"):
            # A step of undefined behaviour (ABSTRACTIONS): QEMU's symptom varies from run to
            # run (a use after free may SIGSEGV or trip a QOM cast assertion); any abnormal
            # end matches, the other observations exactly.
            seen, theirs = _any_abnormal_end(seen), _any_abnormal_end(theirs)
        if seen != theirs:
            return f"step {index}: {seen} where QEMU {version} showed {theirs}"
    return None


def _any_abnormal_end(step: dict[str, Any]) -> dict[str, Any]:
    """A recorded or seen step with a crash or an abort reduced to "ended abnormally"."""
    out = []
    for text in step["observations"]:
        fate = json.loads(text).get("fate")
        out.append('{"fate": "abnormal end"}' if fate in ("crashed", "aborted") else text)
    return {"enabled": step["enabled"], "observations": sorted(out)}


# ---------------------------------------------------------------------------------------------
# Generated traces


OFF_MENU_SHARE = 0.3  # how often a walk tries an action beyond the configuration's menus


def random_walk(config: Config, length: int, rng: random.Random,
                variant: str = "qemu-7.2") -> Trace:
    """A trace of up to ``length`` steps, each drawn among the model's enabled actions, and
    now and then beyond the menus (:func:`off_menu_action`) where that action is enabled."""
    state = initial_state(config, get_variant(variant))
    steps: list[Action] = []
    for _ in range(length):
        if rng.random() < OFF_MENU_SHARE:
            extra = off_menu_action(state, rng)
            result = step(state, extra) if extra is not None else None
            if extra is not None and result is not None:
                steps.append(extra)
                state = result[0]
                continue
        choices = [c for c in successors(state) if not _ends_a_clients_stream(state, c[0])]
        if not choices:
            break
        weights = [ENDING_WEIGHT if a.name in ENDINGS else 1.0 for a, _s, _o in choices]
        action, state, _obs = rng.choices(choices, weights)[0]
        steps.append(action)
    return Trace(config, tuple(steps))


def _ends_a_clients_stream(state: SystemState, action: Action) -> bool:
    """A server exit while a plain client is connected, or a client's garbage: its socket
    then ends (ABSTRACTIONS: a plain client's end of file)."""
    if action.name == "garbage":
        return True
    return action.name == "server_exit" and any(
        ep.role == "client" and ep.connected and ep.fate is None for ep in state.endpoints)


# Actions that end a process or the server: drawn less often, so that walks get far enough
# to exercise the device (with equal weights a third of the steps were these).
ENDINGS = frozenset({"disconnect", "server_exit"})
ENDING_WEIGHT = 0.15


HOSTILE_VALUES = (-2, -1, 0, 1, 2, 16, 65535, 65536, 2**31, -(2**63))
HOSTILE_FDS = (None, "eventfd", "shm", "shm:0", "shm:4096", "shm:8192", "shm:12288", "pipe",
               "devnull", "file", "file:8192", "memfd-ro")
GUEST_WRITES: dict[str, tuple[int, ...]] = {
    "command": (0x0, 0x2, 0x4, 0x6, 0x507),
    "bar0": (0xFFFF_FFFF, BAR0_ADDR, 0),
    "bar1": (0xFFFF_FFFF, BAR1_ADDR, 0),
    "bar2": (0xFFFF_FFFF, BAR2_ADDR, 0),
    "bar3": (0xFFFF_FFFF, 0),
    "interrupt_line": (0, 11, 0xFF),
    "msix_control": (0x0, 0x4000, 0x8000, 0xC000),
}


def off_menu_action(state: SystemState, rng: random.Random) -> Action | None:
    """A hostile server message (any value, any fd) or a guest access to configuration space
    or shared memory: what the explorer's menus leave out, drawn for conformance."""
    e = rng.randrange(len(state.endpoints))
    device = state.endpoints[e].device
    if state.endpoints[e].launched and rng.random() < 0.15:
        return FdCount(e)
    if state.config.server.policy == "scripted" and (device is None or rng.random() < 0.3):
        extra = tuple(rng.choice(HOSTILE_FDS[1:]) for _ in range(rng.choice((0, 0, 0, 1, 2))))
        return ServerSend(e, rng.choice(HOSTILE_VALUES), rng.choice(HOSTILE_FDS), extra)
    if device is None:
        if state.endpoints[e].role != "qemu" or rng.random() < 0.5:
            return None
        named = [b.name for m in state.config.process_of(e) for b in state.endpoints[m].backends]
        if state.config.processes and named and rng.random() < 0.3:
            # a memory backend of the process by name (only grouped walks draw this, so the
            # walks of a seed without groups stay what they were)
            return Realize(e, "ivshmem-plain", (("memdev", rng.choice(named)),))
        props = (("memdev_backend", rng.choice(MEMORY_BACKENDS)),
                 ("memdev_share", rng.random() < 0.5),
                 ("memdev_size", rng.choice((4096, 5000, 12288, 65536))))
        return Realize(e, "ivshmem-plain", props, hotplug=rng.random() < 0.5)
    kind = rng.randrange(6)
    if kind == 5:  # part of the next message: the server wrote it in two pieces
        return Deliver(e, rng.randrange(1, 8)) if state.channels[e] else None
    if kind == 4:
        return EventfdPoll(e, rng.choice((0, 1, 2, 3, 5)), rng.choice((0, 1)))
    if kind == 0:
        return ConfigRead(e, rng.choice(CONFIG_REGISTERS))
    if kind == 1:
        registers = sorted(GUEST_WRITES)
        if state.config.host.kvm_msi_irqfd:
            registers.remove("bar3")  # ABSTRACTIONS: the host's address limit under KVM
        register = rng.choice(registers)
        return ConfigWrite(e, register, rng.choice(GUEST_WRITES[register]))
    size = rng.choice((1, 2, 4, 8))
    offset = rng.choice((0, 8, 4096, max(0, device.bar2_size - 8))) // size * size
    if kind == 2:
        return ShmRead(e, offset, size)
    return ShmWrite(e, offset, rng.getrandbits(8 * size), size)


GROUP_SHARE = 0.25  # walks run again with endpoints 0 and 1 as one QEMU (config.processes)


def one_process(config: Config) -> Config | None:
    """``config`` with endpoints 0 and 1 in one process, when both are QEMUs and the
    configuration groups none."""
    if config.processes or config.endpoints < 2 or {0, 1} & set(config.clients):
        return None
    return replace(config, processes=((0, 1),))


def campaign(configs: list[Config], count: int, length: int, seed: int, backend: QemuBackend,
             variant: str = "qemu-7.2") -> list[tuple[Trace, Verdict]]:
    """``count`` random walks per configuration, each run on both sides; besides, about a
    quarter as many with endpoints 0 and 1 in one process, drawn from a generator of their
    own so that a seed's other walks are what they were before."""
    rng = random.Random(seed)
    grouped = random.Random(f"processes-{seed}")
    out = []
    for config in configs:
        together = one_process(config)
        for _ in range(count):
            trace = random_walk(config, length, rng, variant)
            out.append((trace, conform(trace, backend, variant)))
            if together is not None and grouped.random() < GROUP_SHARE:
                trace = random_walk(together, length, grouped, variant)
                out.append((trace, conform(trace, backend, variant)))
    return out


def shrink(trace: Trace, backend: QemuBackend, variant: str = "qemu-7.2") -> Trace:
    """A shortest-found prefix-and-subset of ``trace`` that still differs (delta debugging
    over steps; each probe is one QEMU run)."""

    def differs(config: Config, steps: tuple[Action, ...]) -> bool:
        return conform(Trace(config, steps), backend, variant).verdict == "differ"

    return Trace(trace.config, ddmin(trace.config, trace.steps, differs))

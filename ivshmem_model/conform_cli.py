"""The QEMU side of the command line: ``run``/``replay --backend qemu`` and ``conform``.

``conform`` runs traces on the model (variant ``qemu-<version>``) and on QEMU and prints the first
step where they differ; ``replay --backend qemu`` confirms counterexamples on QEMU and, with
``--update``, records what QEMU did in each file (its ``qemu`` field, by QEMU version).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ivshmem_model.model.actions import (
    CONFORMANCE_FORMAT,
    COUNTEREXAMPLE_FORMAT,
    TraceError,
    load_counterexample,
    load_json_file,
    load_trace,
)
from ivshmem_model.model.executor.qemu.backend import BackendRun, QemuBackend
from ivshmem_model.model.variants import VARIANTS
from ivshmem_model.properties.conform import comparable, confirm, conform, violated_step

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("model", "qemu"), default="model",
                        help="who runs the trace (default: %(default)s)")
    parser.add_argument("--qemu", default=None, metavar="7.2|10.0|PATH",
                        help="the QEMU to run: 7.2 (qemu-system-x86_64 on PATH, the default), "
                             "10.0 (unpacked by scripts/install-qemu.sh 10.0) or a path")
    parser.add_argument("--kvm", action="store_true",
                        help="run QEMU under KVM (the irqfd path); default TCG unless the "
                             "trace's host has kvm_msi_irqfd")
    parser.add_argument("--memcheck", action="store_true",
                        help="run QEMU under valgrind's memcheck (invalid accesses end it)")


def backend_from(args: argparse.Namespace) -> QemuBackend:
    try:
        return QemuBackend(args.qemu, kvm=args.kvm, memcheck=args.memcheck)
    except FileNotFoundError as err:
        raise TraceError(str(err)) from None


def model_variant(args: argparse.Namespace, backend: QemuBackend) -> str:
    """``--variant``, or the variant named after the QEMU that runs (``qemu-10.0`` on QEMU
    10.0), or ``qemu-7.2`` when the model has no variant for that version."""
    if args.variant:
        return str(args.variant)
    own = f"qemu-{backend.version}"
    return own if own in VARIANTS else "qemu-7.2"


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "))


def run_on_qemu(args: argparse.Namespace) -> int:
    trace = load_trace(args.trace)
    result = backend_from(args).run(trace)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return EXIT_OK
    print(f"{result.backend}: {len(trace.steps)} steps, {trace.config.endpoints} endpoint(s), "
          f"{trace.config.server.policy} server, {result.seconds:.2f} s")
    for record in result.steps:
        print(f"[{record.index}] {_compact(record.action.to_json())}")
        if not record.enabled:
            print("    DISABLED: QEMU cannot take this step here; the run stops")
        for obs in record.observations:
            print(f"    {_compact(obs)}")
    if result.unsupported is not None:
        print(f"not run on QEMU: {result.unsupported}")
    for endpoint, outcome in sorted(result.outcomes.items()):
        print(f"endpoint {endpoint}: {_compact(outcome.to_json())}")
    return EXIT_OK


def replay_on_qemu(args: argparse.Namespace, files: list[Path]) -> int:
    """Confirm every entry the variant violates; exit 1 if QEMU does not reproduce one."""
    backend = backend_from(args)
    variant = model_variant(args, backend)
    worst = EXIT_OK
    report = []
    for path in files:
        try:
            cx = load_counterexample(str(path))
        except TraceError as err:
            print(f"ERROR {err}", file=sys.stderr)
            worst = EXIT_BAD_INPUT
            continue
        if violated_step(cx, variant) is None:
            report.append({"file": str(path), "verdict": f"{variant} holds: nothing to confirm"})
            continue
        record = confirm(cx, backend, variant)
        report.append({"file": str(path), **record})
        if args.update:
            record_on_file(path, backend.version, record)
        if record["verdict"] == "not reproduced" and worst == EXIT_OK:
            worst = EXIT_FAILED
        if not args.json:
            detail = record.get("qemu") or record.get("detail") or ""
            print(f"{record['verdict']:<15} {path.name} ({record['seconds']} s) "
                  f"{_compact(detail) if isinstance(detail, dict) else detail}")
    if args.json:
        print(json.dumps({"results": report}, indent=2))
    return worst


def record_on_file(path: Path, version: str, record: dict[str, Any]) -> None:
    """Write ``record`` (without timings) into the file's ``qemu`` field under ``version``."""
    obj = load_json_file(str(path))
    if obj.get("format") != COUNTEREXAMPLE_FORMAT:
        return
    kept = {k: v for k, v in record.items() if k != "seconds"}
    obj.setdefault("qemu", {})[version] = kept
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def record_case(path: Path, version: str, run: BackendRun, kvm: bool) -> None:
    """Write what QEMU ``version`` showed at each step (the comparable observations) into a
    conformance case's ``qemu`` field; other files are left alone."""
    obj = load_json_file(str(path))
    if obj.get("format") != CONFORMANCE_FORMAT or run.unsupported is not None:
        return
    old = obj.get("qemu", {}).get(version) or []
    steps = [{"enabled": s.enabled, "observations": comparable(s.observations, kvm)}
             for s in run.steps]
    for index, step in enumerate(steps):  # a step marked undefined behaviour stays marked
        if index < len(old) and isinstance(old[index], dict) and old[index].get("undefined"):
            step["undefined"] = True
    obj.setdefault("qemu", {})[version] = steps
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def cmd_conform(args: argparse.Namespace) -> int:
    if args.generate is not None:
        return generated_campaign(args)
    if not args.paths:
        raise TraceError("give traces or directories, or --generate N", "conform")
    backend = backend_from(args)
    files: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    counts = {"agree": 0, "differ": 0, "unsupported": 0}
    report = []
    for path in files:
        try:
            trace = load_trace(str(path))
        except TraceError as err:
            print(f"ERROR {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        verdict = conform(trace, backend, model_variant(args, backend))
        counts[verdict.verdict] += 1
        if args.update and verdict.qemu_run is not None:
            record_case(path, backend.version, verdict.qemu_run,
                        backend.force_kvm or trace.config.host.kvm_msi_irqfd)
        report.append({"file": str(path), **verdict.to_json()})
        if not args.json:
            print(f"{verdict.verdict:<11} {path}" + ("" if verdict.verdict == "agree"
                                                     else f"\n  {verdict}"))
    if args.json:
        print(json.dumps({"counts": counts, "results": report}, indent=2))
    else:
        print(f"{counts['agree']} agree, {counts['differ']} differ, "
              f"{counts['unsupported']} not expressible on QEMU")
    return EXIT_FAILED if counts["differ"] else EXIT_OK


def generated_campaign(args: argparse.Namespace) -> int:
    """``conform --generate N``: N random walks per embedded configuration (enabled actions,
    hostile server messages, guest configuration and shared-memory accesses) on both sides;
    each difference is shrunk (delta debugging, one QEMU run per probe) and written as a trace
    under ``--out`` so it can be kept as a conformance case."""
    from ivshmem_model.properties.configs import embedded_configs
    from ivshmem_model.properties.conform import campaign, shrink

    if args.generate < 1 or args.length < 1:
        raise TraceError("--generate and --length take a whole number of at least 1",
                         "conform")
    backend = backend_from(args)
    chosen = [c for c in embedded_configs() if not args.config or c.name in args.config]
    if not chosen:
        raise TraceError(f"no embedded configuration named {', '.join(args.config)}", "--config")
    variant = model_variant(args, backend)
    results = campaign([c.config for c in chosen], args.generate, args.length, args.seed,
                       backend, variant)
    counts = {"agree": 0, "differ": 0, "unsupported": 0}
    out = Path(args.out)
    for index, (trace, verdict) in enumerate(results):
        counts[verdict.verdict] += 1
        if verdict.verdict == "differ":
            small = shrink(trace, backend, variant)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"differ-seed{args.seed}-{index}.json"
            path.write_text(json.dumps(small.to_json(), indent=2) + "\n", encoding="utf-8")
            print(f"differ      {path} ({len(small.steps)} steps)\n  {verdict}")
    print(f"{counts['agree']} agree, {counts['differ']} differ, "
          f"{counts['unsupported']} not expressible on QEMU "
          f"({len(results)} generated traces, seed {args.seed})")
    return EXIT_FAILED if counts["differ"] else EXIT_OK


def add_subcommands(sub: Any) -> None:
    conf = sub.add_parser("conform", help="run traces on the model and on QEMU and compare")
    conf.add_argument("paths", nargs="*", metavar="FILE|DIR",
                      help="traces or counterexamples (directories are searched)")
    conf.add_argument("--generate", type=int, default=None, metavar="N",
                      help="instead of files: N generated walks per embedded configuration")
    conf.add_argument("--length", type=int, default=16, metavar="STEPS",
                      help="steps per generated walk (default: %(default)s)")
    conf.add_argument("--seed", type=int, default=0, help="the campaign's seed (default: 0)")
    conf.add_argument("--config", action="append", metavar="NAME",
                      help="only this embedded configuration (repeatable)")
    conf.add_argument("--out", default="conform-out", metavar="DIR",
                      help="where shrunk differences are written (default: %(default)s)")
    conf.add_argument("--variant", default=None,
                      help="the model's variant (default: the one named after the QEMU that "
                           "runs, qemu-7.2 or qemu-10.0)")
    conf.add_argument("--json", action="store_true", help="machine-readable output")
    conf.add_argument("--update", action="store_true",
                      help="record what QEMU showed in each conformance case (its qemu field, "
                           "under the QEMU's version)")
    add_backend_options(conf)
    conf.set_defaults(func=cmd_conform)

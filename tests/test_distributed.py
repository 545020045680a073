"""The explorer on Ray (``properties/distributed.py``): the same states, transitions and paths as
one process on every embedded configuration, checkpoints that stop and resume, clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[distributed]'")

from helpers import contrib

from ivshmem_model.cli import main
from ivshmem_model.model.variants import FIXED, SEED
from ivshmem_model.properties.configs import embedded_configs
from ivshmem_model.properties.distributed import DistributedError, owner, ray_session
from ivshmem_model.properties.explore import ExploreOptions, ExploreResult, explore
from ivshmem_model.properties.raysession import worker_environment

# Depth per configuration: deep enough for every finding the configuration shows at depth 5
# or more, small enough for seconds (the scripted ones grow fastest).
DEPTH = {"scripted-kvm": 5, "scripted-tcg": 5}


@pytest.fixture(scope="module")
def ray() -> Iterator[Any]:
    with ray_session(None, 2) as session:
        yield session


def summary(result: ExploreResult) -> dict[str, Any]:
    return {"states": result.states, "transitions": result.transitions, "depth": result.depth,
            "complete": result.complete, "unconfirmed": result.unconfirmed,
            "found": {site: f.path for site, f in result.found.items()},
            "witnesses": result.witnesses}


@pytest.mark.parametrize(("symmetry", "fingerprints"), [(False, True), (True, True), (True, False)],
                         ids=["plain", "symmetry", "symmetry-exact"])
def test_two_partitions_equal_one_process_on_every_embedded_configuration(
        ray: Any, symmetry: bool, fingerprints: bool) -> None:
    findings = 0
    for named in embedded_configs():
        options = ExploreOptions(max_depth=min(named.depth, DEPTH.get(named.name, 6)),
                                 max_states=10**6, time_limit=300, symmetry=symmetry,
                                 fingerprints=fingerprints)
        one = explore(named.config, SEED, options)
        two = explore(named.config, SEED, dataclasses.replace(options, workers=2))
        assert summary(two) == summary(one), named.name
        assert len(two.levels) == two.depth
        findings += len(one.found)
    assert findings > 10  # the comparison covers shortest counterexamples, not only counts


def test_a_stopped_run_resumes_from_its_last_level_with_fewer_partitions(
        ray: Any, tmp_path: Path) -> None:
    config, folder = contrib(endpoints=2), str(tmp_path / "run")
    options = ExploreOptions(max_depth=7, max_states=10**6, workers=2, checkpoint=folder)

    def stop_at_level_4(result: ExploreResult, frontier: int) -> None:
        if len(result.levels) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explore(config, SEED, options, stop_at_level_4)
    saved = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert saved["level"] == 4 and saved["parts"] == 2
    # The seen sets hold 64-bit fingerprints, as one process's do, not states.
    seen, frontier = pickle.loads((tmp_path / "run" / "level-4-part-0.pkl").read_bytes())
    assert seen and all(isinstance(m, int) and -2**63 <= m < 2**63 for m in seen)
    assert frontier
    with pytest.raises(DistributedError, match="holds a checkpoint"):
        explore(config, SEED, options)
    with pytest.raises(DistributedError, match="another run"):
        explore(config, FIXED, dataclasses.replace(options, resume=True))
    with pytest.raises(DistributedError, match="need 3 CPUs"):
        explore(config, SEED, dataclasses.replace(options, workers=3, resume=True))
    resumed = explore(config, SEED, dataclasses.replace(options, workers=1, resume=True))
    one = explore(config, SEED, ExploreOptions(max_depth=7, max_states=10**6))
    assert summary(resumed) == summary(one)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["level"] == 7


def test_explore_command_with_workers_checkpoint_and_bad_input(
        ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(tmp_path / "cli")
    assert main(["explore", "--workers", "2", "--depth", "4", "--checkpoint", folder,
                 "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["explore", "--workers", "2", "--depth", "5", "--checkpoint", folder,
                 "--resume", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert main(["explore", "--depth", "5", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert first["depth"] == 4 and resumed["states"] == plain["states"] > first["states"]
    assert resumed["violations"] == plain["violations"]
    for argv, text in ((["--resume"], "--resume needs --checkpoint"),
                       (["--workers", "0"], "expected 1 to 512"),
                       (["--ray", "nonsense"], "expected HOST:PORT"),
                       (["--ray", "127.0.0.1:1"], "no Ray cluster answers"),
                       (["--checkpoint", folder], "holds a checkpoint")):
        assert main(["explore", "--depth", "2", *argv]) == 2
        assert text in capsys.readouterr().err


def test_workers_started_alike_hash_alike() -> None:
    """The premise of partitioning by ``hash``: two interpreters started as Ray starts the
    workers agree on ``hash(None)`` and on strings, which two plain interpreters do not."""
    env = worker_environment()
    command = env.get("py_executable", sys.executable).split()
    probe = [*command, "-c", "print(hash(None), hash('ivshmem'))"]
    alike = {subprocess.run(probe, capture_output=True, text=True, check=True,
                            env={**os.environ, **env["env_vars"]}).stdout for _ in range(2)}
    assert len(alike) == 1


def test_owner_spreads_states_over_partitions() -> None:
    keys = [("state", i, None) for i in range(4000)]
    for n in (2, 3, 8):
        counts = [0] * n
        for key in keys:
            counts[owner(key, n)] += 1
        assert min(counts) > 0.8 * len(keys) / n, counts

"""A Redis example database shared by several machines (``properties/fuzz.py``'s
:func:`database` on ``redis://HOST:PORT``): a failure saved through one database object replays
through another, ``ivshmem-model fuzz --database redis://...`` fuzzes into it, and bad URLs are
refused.  The server is a private ``redis-server`` (``scripts/install-redis.sh``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import run_state_machine_as_test
from redis_server import free_port, redis_server

from ivshmem_model.cli import main
from ivshmem_model.model.actions import load_counterexample
from ivshmem_model.properties.fuzz import database, fuzz_settings, reachable, replay, targets
from ivshmem_model.properties.trace import replay as replay_counterexample


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url


def test_a_failure_saved_on_one_machine_replays_on_another(redis_url: str,
                                                           tmp_path: Path) -> None:
    from hypothesis.extra.redis import RedisExampleDatabase

    here, there = database(redis_url), database(redis_url)  # two clients: two machines
    assert isinstance(here, RedisExampleDatabase) and isinstance(there, RedisExampleDatabase)
    assert here.redis is not there.redis
    assert reachable(here) is None and reachable(there) is None
    seed, fixed = targets(["seed", "fixed"], ["scripted-tcg"], here)
    assert replay(seed, there) is None and replay(fixed, there) is None  # nothing saved yet
    with pytest.raises(AssertionError):
        run_state_machine_as_test(  # type: ignore[no-untyped-call,unused-ignore]
            seed.machine, settings=settings(fuzz_settings(here), max_examples=500,
                                            stateful_step_count=10, phases=(Phase.generate,)))
    # The other machine builds its own targets (by name) on its own connection.
    failure = replay(targets(["seed"], ["scripted-tcg"], there)[0], there)
    assert failure is not None and failure.property == "no_hang"
    assert replay(targets(["fixed"], ["scripted-tcg"], there)[0], there) is None
    # It went through Redis: a directory database has nothing.
    elsewhere = DirectoryBasedExampleDatabase(str(tmp_path / "dir-db"))
    assert replay(targets(["seed"], ["scripted-tcg"], elsewhere)[0], elsewhere) is None


def test_the_database_environment_variable_names_redis_too(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hypothesis.extra.redis import RedisExampleDatabase

    monkeypatch.setenv("IVSHMEM_FUZZ_DB", redis_url)  # what fuzz_targets.py (HypoFuzz) reads
    db = database()
    assert isinstance(db, RedisExampleDatabase)
    db.save(b"key", b"value")
    assert list(database(redis_url).fetch(b"key")) == [b"value"]


def test_fuzz_command_fuzzes_into_redis(redis_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hypofuzz", reason="HypoFuzz is not installed: pip install -e "
                                           "'.[distributed]'")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["fuzz", "--variant", "seed", "--config", "scripted-tcg", "--database",
                 redis_url, "--seconds", "90", "--workers", "1", "--poll", "1",
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(f["property"], f["site"]) for f in report["findings"]] == [("no_hang", "seed 672")]
    assert (out / "hypofuzz.log").exists() and not (tmp_path / "fuzz-db").exists()
    for row in report["findings"]:
        outcomes = replay_counterexample(load_counterexample(row["file"]))
        assert outcomes and all(o.ok for o in outcomes)
    # What HypoFuzz saved is in Redis, for any other machine.
    there = database(redis_url)
    failure = replay(targets(["seed"], ["scripted-tcg"], there)[0], there)
    assert failure is not None and failure.property == "no_hang"


@pytest.mark.parametrize(("url", "says"), [
    ("redis://localhost:notaport", "the port is not a number"),
    ("redis://:6379", "no host"),
    ("redis://localhost:6379/abc", "the path must be a database number"),
    ("http://localhost:6379", "unsupported database URL"),
])
def test_bad_database_urls_exit_2(url: str, says: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuzz", "--database", url, "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert says in err and url in err
    with pytest.raises(ValueError, match=says):
        database(url)


def test_an_unreachable_redis_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("redis", reason="the redis package is not installed: pip install -e "
                                        "'.[distributed]'")
    port = free_port()  # nobody listens there
    assert main(["fuzz", "--db", f"redis://127.0.0.1:{port}", "--seconds", "1"]) == 2
    assert f"cannot reach Redis at 127.0.0.1:{port}" in capsys.readouterr().err

"""Fuzzing campaigns: the stateful machine (``properties/stateful.py``) under HypoFuzz.

One *target* per variant and configuration: ``machine_for(config, variant, guest=True)`` named
``Machine_<config>__<variant>`` (Hypothesis keys its example database by that name, so the
name must say both), whose ``TestCase`` carries :func:`fuzz_settings`.  ``fuzz_targets.py``
beside this file defines them as pytest tests, which is what HypoFuzz runs:

    IVSHMEM_FUZZ_DB=fuzz-db hypothesis fuzz -n 2 -- properties/fuzz_targets.py

(``ivshmem-model fuzz`` does that, watches the database and writes what fails as corpus
files).  The example database is a directory shared by every process and machine that fuzzes
or replays (``IVSHMEM_FUZZ_DB``, default ``fuzz-db``), or one Redis server they all reach
(``IVSHMEM_FUZZ_DB=redis://HOST:PORT``, :func:`database`); HypoFuzz saves a shrunk failure under the
key Hypothesis replays, so a failure found anywhere replays everywhere: :func:`replay` runs a
target's saved examples (Hypothesis' ``reuse`` phase, read-only) and returns the failure.
``IVSHMEM_FUZZ_VARIANTS`` and ``IVSHMEM_FUZZ_CONFIGS`` (comma-separated names) narrow the
targets; by default every variant on every embedded configuration.  ``IVSHMEM_FUZZ_SPLIT=1``
makes one target per safety property as well: HypoFuzz stops fuzzing a target at its first
failure, so a target that checks every property finds one bug per campaign.
"""

from __future__ import annotations

import os
import re
import unittest
from dataclasses import dataclass
from urllib.parse import urlsplit

from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    ReadOnlyDatabase,
)
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from ivshmem_model.model.actions import Config
from ivshmem_model.model.variants import VARIANTS, get_variant
from ivshmem_model.properties.invariants import SAFETY
from ivshmem_model.properties.stateful import Failure, last_failure, machine_for

DB_ENV, VARIANTS_ENV, CONFIGS_ENV, SPLIT_ENV = "IVSHMEM_FUZZ_DB", "IVSHMEM_FUZZ_VARIANTS", \
    "IVSHMEM_FUZZ_CONFIGS", "IVSHMEM_FUZZ_SPLIT"
DEFAULT_DB = "fuzz-db"
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
              HealthCheck.large_base_example]


@dataclass(frozen=True)
class Target:
    name: str  # <config>__<variant>
    config_name: str
    config: Config
    variant: str
    machine: type[RuleBasedStateMachine]


REDIS_SCHEMES = ("redis", "rediss")


def is_url(spec: str) -> bool:
    """Whether a database spec is a URL (``scheme://...``) rather than a directory."""
    return "://" in spec


def database(spec: str | None = None) -> ExampleDatabase:
    """The example database ``spec`` names (default: the environment's ``IVSHMEM_FUZZ_DB``,
    else ``fuzz-db``): a directory, or ``redis://HOST:PORT[/DB]`` (``rediss://`` with TLS) for
    one Redis shared by several machines (Hypothesis' ``RedisExampleDatabase``; the Redis
    server is Debian's ``redis-server``, ``scripts/install-redis.sh``).  A bad URL raises
    ``ValueError`` saying what is wrong; nothing is contacted here (see :func:`reachable`)."""
    spec = spec or os.environ.get(DB_ENV) or DEFAULT_DB
    if not is_url(spec):
        return DirectoryBasedExampleDatabase(spec)
    parts = urlsplit(spec)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"unsupported database URL {spec!r}: expected a directory or "
                         f"redis://HOST:PORT")
    try:
        parts.port  # noqa: B018 - urlsplit parses the port when asked
    except ValueError:
        raise ValueError(f"bad Redis URL {spec!r}: the port is not a number from 0 to "
                         f"65535") from None
    if not parts.hostname:
        raise ValueError(f"bad Redis URL {spec!r}: no host (expected redis://HOST:PORT)")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError(f"bad Redis URL {spec!r}: the path must be a database number")
    try:
        from hypothesis.extra.redis import RedisExampleDatabase
        from redis import Redis
    except ImportError:
        raise ValueError(f"a Redis database ({spec}) needs the redis package: pip install "
                         f"-e '.[distributed]'") from None
    return RedisExampleDatabase(Redis.from_url(spec, socket_connect_timeout=5))


def reachable(db: ExampleDatabase) -> str | None:
    """``None`` if ``db`` can be used now, else why not (a Redis server that does not answer)."""
    redis = getattr(db, "redis", None)
    if redis is None:
        return None
    from redis.exceptions import RedisError

    try:
        redis.ping()
    except RedisError as err:
        kwargs = redis.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"cannot reach Redis at {where}: {err}"
    return None


def fuzz_settings(db: ExampleDatabase) -> settings:
    """Long traces, no deadline, the shared database; HypoFuzz decides how many examples (and
    refuses a test that suppresses the nested-``@given`` check, and skips a derandomized one:
    under ``CI`` the default profile Hypothesis loads is derandomized)."""
    return settings(database=db, deadline=None, stateful_step_count=50, derandomize=False,
                    suppress_health_check=SUPPRESSED)


def _ident(text: str) -> str:
    return re.sub(r"\W+", "_", text)


def _names(env: str) -> list[str] | None:
    raw = os.environ.get(env, "").strip()
    return [n.strip() for n in raw.split(",") if n.strip()] or None


def targets(variants: list[str] | None = None, configs: list[str] | None = None,
            db: ExampleDatabase | None = None, split: bool | None = None) -> list[Target]:
    """The targets for these variant and embedded-configuration names (default: the
    environment's, else all); with ``split``, one per safety property too, checking only that
    property (HypoFuzz stops fuzzing a target at its first failure, so one target finds one
    bug).  An unknown name raises ``TraceError`` (via ``get_variant``) or ``ValueError``."""
    from ivshmem_model.properties.configs import embedded_configs

    variants = variants or _names(VARIANTS_ENV) or list(VARIANTS)
    known = {named.name: named for named in embedded_configs()}
    wanted = configs or _names(CONFIGS_ENV) or list(known)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown configuration {', '.join(unknown)}; the embedded ones are "
                         f"{', '.join(known)}")
    if split is None:
        split = os.environ.get(SPLIT_ENV, "") == "1"
    chosen = fuzz_settings(db or database())
    out = []
    for config_name in wanted:
        for variant in variants:
            for only in [p.name for p in SAFETY] if split else [None]:
                name = f"{config_name}__{variant}" + (f"__{only}" if only else "")
                machine = machine_for(known[config_name].config, get_variant(variant),
                                      guest=True)
                machine.__name__ = machine.__qualname__ = f"Machine_{_ident(name)}"
                for prop in SAFETY:
                    if only and prop.name != only:  # Hypothesis finds invariants by attribute
                        setattr(machine, f"invariant_{prop.name}", None)
                machine.TestCase.settings = chosen
                out.append(Target(name, config_name, known[config_name].config, variant,
                                  machine))
    return out


def replay(target: Target, db: ExampleDatabase) -> Failure | None:
    """The failure the database holds for ``target``, replayed (nothing generated, nothing
    written), or ``None``."""
    replaying = settings(database=ReadOnlyDatabase(db), deadline=None,
                         stateful_step_count=50, phases=(Phase.explicit, Phase.reuse),
                         suppress_health_check=SUPPRESSED)
    try:
        run_state_machine_as_test(  # type: ignore[no-untyped-call,unused-ignore]
            target.machine, settings=replaying)
    except unittest.SkipTest:  # nothing saved for this target
        return None
    except Exception:  # AssertionError, or a group of them when several failures are saved
        return last_failure(target.machine)
    return None

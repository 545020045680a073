"""Ray, started or joined, for the explorer's partitions and the swarm's searches.

``ray_session`` connects to a cluster or starts a local Ray whose workers hash alike
(:func:`worker_environment`; why that matters: ``properties/distributed.py``), and fails in
seconds with a clear :class:`DistributedError` where Ray is missing or not there.  Actors kept
between searches (``ACTORS``) are forgotten when the session ends.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import Any


class DistributedError(Exception):
    """Ray is missing or unreachable, or a checkpoint does not fit: a user error (exit 2)."""


ACTORS: dict[tuple[str, str, int], list[Any]] = {}

HASH_SEED = "0"


def worker_environment() -> dict[str, Any]:
    """Ray's runtime environment for workers that hash alike: a fixed string-hash seed, and no
    address randomization (``hash(None)`` is ``None``'s address on Python 3.11)."""
    env: dict[str, Any] = {"env_vars": {"PYTHONHASHSEED": HASH_SEED}}
    setarch = shutil.which("setarch")
    if setarch:
        env["py_executable"] = f"{setarch} -R {sys.executable}"
    return env


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes (Ray retries for long), on a cluster that is not there."""
    if address == "auto":
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        raise DistributedError(f"expected HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise DistributedError(f"no Ray cluster answers at {address}: {err}") from None


@contextlib.contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[Any]:
    """Ray, connected: to ``address`` (a cluster), or to a local instance of ``workers`` CPUs
    started here and stopped on exit.  Reuses a session already open in this process."""
    try:
        import ray
    except ImportError:
        raise DistributedError(
            "Ray is not installed: pip install 'ivshmem-model[distributed]'") from None
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    runtime_env = worker_environment()
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False,
                     logging_level=logging.ERROR)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env=runtime_env, _node_ip_address="127.0.0.1",
                     logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise DistributedError(f"cannot start or reach Ray at {address or 'local'}: {err}") \
            from None
    try:
        yield ray
    finally:
        ACTORS.clear()
        ray.shutdown()

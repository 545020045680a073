"""The configurations the checkers run on: the embedded defaults (``ivshmem_model/configs/*.json``,
shipped as package data) and configuration files given with ``--config``.

A configuration file is a ``config`` object (``docs/trace-format.md``), optionally wrapped with a
``name``, a ``description``, the ``depth`` the explorer goes to and its time budget in ``seconds``;
a trace or counterexample file also works (its ``config`` is used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ivshmem_model.model.actions import Config, TraceError, config_from_json, load_json_file


@dataclass(frozen=True, slots=True)
class NamedConfig:
    name: str
    description: str
    config: Config
    depth: int = 8
    seconds: float = 10.0  # the explorer's time budget in `check`


def named_config_from_json(obj: Any, fallback_name: str) -> NamedConfig:
    if not isinstance(obj, dict):
        raise TraceError("expected an object")
    body = obj.get("config", obj) if "config" in obj else obj
    if "steps" in obj or "format" in obj:
        body = obj.get("config", {})
    depth = obj.get("depth", 8)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 64:
        raise TraceError(f"expected an integer in [1, 64], got {json.dumps(depth)}", "depth")
    seconds = obj.get("seconds", 10.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 600:
        raise TraceError(f"expected a number of seconds in (0, 600], got {json.dumps(seconds)}",
                         "seconds")
    return NamedConfig(
        name=str(obj.get("name", fallback_name)),
        description=str(obj.get("description", "")),
        config=config_from_json(body),
        depth=depth,
        seconds=float(seconds),
    )


def embedded_configs() -> list[NamedConfig]:
    """The default configurations shipped in ``ivshmem_model/configs``."""
    folder = resources.files("ivshmem_model.configs")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            out.append(named_config_from_json(json.loads(entry.read_text()), entry.name[:-5]))
    return out


def load_config_file(path: str) -> NamedConfig:
    obj = load_json_file(path)
    try:
        return named_config_from_json(obj, Path(path).stem)
    except TraceError as err:
        raise err.within(path) from None

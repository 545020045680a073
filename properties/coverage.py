"""Seed coverage of an exploration: which mirrored seed functions and seed lines ran.

While the explorer runs with ``ExploreOptions(coverage=True)``, a ``sys.settrace`` hook
records every function of ``model/device.py`` and ``model/msix.py`` that is called (call
events only: no line tracing).  Each function of ``device.py`` cites its seed lines in its
docstring ("Seed 565-595", "(seed 1015-1035, 1129-1142)"); ``msix.py`` mirrors
``hw/pci/msix.c`` and is counted by function name.  The report gives functions covered /
total, seed lines covered (union of the cited ranges of the functions that ran) / total cited,
and the action types that were never enabled.

Known limits: a docstring that cites a line of *another* function ("allocated in
ivshmem_setup_interrupts (seed 779)") counts that line too; tracing slows the explorer about
twofold, so it is off by default and only the single-process explorer supports it.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import CodeType, FrameType, ModuleType
from typing import Any

from ivshmem_model.model import device, msix
from ivshmem_model.model.actions import ACTION_TYPES

MODULES: tuple[ModuleType, ...] = (device, msix)
_CITE = re.compile(r"[Ss]eed ((?:\d+(?:-\d+)?)(?:,\s*\d+(?:-\d+)?)*)")


def cited_lines(doc: str | None) -> frozenset[int]:
    """The seed lines a docstring cites: "Seed 565-595" and "(seed 1015-1035, 1129-1142)"."""
    lines: set[int] = set()
    for match in _CITE.finditer(doc or ""):
        for part in match.group(1).split(","):
            low, _, high = part.strip().partition("-")
            lines.update(range(int(low), int(high or low) + 1))
    return frozenset(lines)


def catalogue() -> dict[str, tuple[str, frozenset[int]]]:
    """Every function (and method) defined in the mirrored modules: qualified name ->
    (file, cited seed lines)."""
    out: dict[str, tuple[str, frozenset[int]]] = {}

    def add(module: ModuleType, obj: Any) -> None:
        code = getattr(obj, "__code__", None)
        if isinstance(code, CodeType) and code.co_filename == module.__file__:
            name = f"{module.__name__.rsplit('.', 1)[-1]}.{code.co_qualname}"
            out[name] = (module.__name__, cited_lines(obj.__doc__))

    for module in MODULES:
        for _, obj in inspect.getmembers(module):
            if inspect.isfunction(obj):
                add(module, obj)
            elif inspect.isclass(obj) and obj.__module__ == module.__name__:
                for _, member in inspect.getmembers(obj, inspect.isfunction):
                    add(module, member)
    return out


@dataclass
class Coverage:
    functions: dict[str, bool] = field(default_factory=dict)
    lines_covered: int = 0
    lines_total: int = 0
    actions_enabled: set[str] = field(default_factory=set)

    @property
    def actions_never_enabled(self) -> list[str]:
        return sorted(set(ACTION_TYPES) - self.actions_enabled)

    def to_json(self) -> dict[str, Any]:
        return {
            "functions_covered": sum(self.functions.values()),
            "functions_total": len(self.functions),
            "seed_lines_covered": self.lines_covered,
            "seed_lines_total": self.lines_total,
            "functions_not_covered": sorted(k for k, v in self.functions.items() if not v),
            "actions_never_enabled": self.actions_never_enabled,
        }

    def summary(self) -> str:
        covered = sum(self.functions.values())
        never = ", ".join(self.actions_never_enabled) or "none"
        return (f"seed coverage: {covered}/{len(self.functions)} functions, "
                f"{self.lines_covered}/{self.lines_total} cited seed lines; "
                f"actions never enabled: {never}")


class Recorder:
    """A context manager that records calls into the mirrored modules."""

    def __init__(self) -> None:
        self._files = {m.__file__ for m in MODULES}
        self._seen: set[CodeType] = set()
        self._previous: Any = None
        self.actions: set[str] = set()

    def _trace(self, frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code not in self._seen and code.co_filename in self._files:
            self._seen.add(code)

    def note_actions(self, names: Iterable[str]) -> None:
        self.actions.update(names)

    def __enter__(self) -> Recorder:
        self._previous = sys.gettrace()
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._previous)

    def result(self) -> Coverage:
        table = catalogue()
        ran = {
            f"{m.__name__.rsplit('.', 1)[-1]}.{code.co_qualname}"
            for code in self._seen for m in MODULES if code.co_filename == m.__file__
        }
        total: set[int] = set()
        covered: set[int] = set()
        for name, (_, lines) in table.items():
            total |= lines
            if name in ran:
                covered |= lines
        return Coverage(
            functions={name: name in ran for name in sorted(table)},
            lines_covered=len(covered),
            lines_total=len(total),
            actions_enabled=set(self.actions),
        )

"""The model is sans-I/O: outside model/executor/, model/ imports no OS, clock or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"os", "socket", "mmap", "select", "selectors", "time", "random", "subprocess",
             "threading", "asyncio", "signal"}
MODEL = Path(__file__).resolve().parent.parent / "model"
FILES = sorted(p for p in MODEL.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_model_module_does_no_io(path: Path) -> None:
    assert not imported_modules(path) & FORBIDDEN


def test_the_check_itself_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom time import sleep\n")
    assert imported_modules(bad) & FORBIDDEN == {"os", "time"}


CHECKERS = sorted((MODEL.parent / "properties").glob("*.py")) + FILES


@pytest.mark.parametrize("path", CHECKERS, ids=[f"{p.parent.name}/{p.name}" for p in CHECKERS])
def test_no_checker_imports_the_command_line_layer(path: Path) -> None:
    """The model and the checkers are a library; ``ivshmem_model/`` is the one front door on
    top of them (issue 14): nothing below imports from it."""
    tree = ast.parse(path.read_text())
    imported = {
        node.module for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    }
    library = ("ivshmem_model.model", "ivshmem_model.properties")
    assert not {m for m in imported
                if m.split(".")[0] == "ivshmem_model" and not m.startswith(library)}

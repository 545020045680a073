"""The HypoFuzz targets as pytest tests (``properties/fuzz.py`` says which and how to run them):
one ``Test<config>__<variant>`` per target, the stateful machine's ``TestCase``."""

from __future__ import annotations

from hypothesis import settings
from hypothesis.internal.conjecture.data import ConjectureResult

from ivshmem_model.properties.fuzz import _ident, database, fuzz_settings, targets

# HypoFuzz 25.11.1 copies ``slice_comments`` from a shrunk result, an attribute Hypothesis
# 6.170 no longer has (and no longer reads); without it every shrunk failure kills the worker.
if not hasattr(ConjectureResult, "slice_comments"):
    ConjectureResult.slice_comments = {}  # type: ignore[attr-defined]

# HypoFuzz keeps its corpus and failures in the default profile's database, not the test's.
settings.register_profile("ivshmem-fuzz", fuzz_settings(database()))
settings.load_profile("ivshmem-fuzz")

for _target in targets():
    globals()[f"Test_{_ident(_target.name)}"] = _target.machine.TestCase

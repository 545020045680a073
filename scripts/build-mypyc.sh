#!/usr/bin/env bash
# Opt-in: compile the model and the explorer's hot modules with mypyc, from the same Python
# source, into build/mypyc (or $1).  Nothing in the tree changes: the compiled copy is used
# only by a process whose PYTHONPATH starts with that folder, started outside the repository
# (`python -m` and pytest put the current folder first), e.g.
#
#     scripts/build-mypyc.sh
#     cd /tmp && PYTHONPATH=/path/to/repo/build/mypyc python /path/to/repo/benchmarks/...
#     cd /tmp && PYTHONPATH=/path/to/repo/build/mypyc python -m pytest -p no:cacheprovider \
#         -o addopts= /path/to/repo/tests/test_explore.py ...
#
# Without a C compiler or mypyc it says so and exits 0: the interpreted modules stay in use.
# The build folder holds the compiled modules and packages whose __path__ goes on to the
# source tree: every module not compiled is the repository's, as it is now.  The compiled
# ones are a snapshot: rebuild after editing them (the script records their sources' digest
# in build/mypyc/SOURCES.sha256; `--check` exits 1 when it is stale).
#
# Not compiled: model/actions.py (candidates() builds each action once, and compiled, the
# runtime dataclass takes the ClassVar ``name`` for a field and refuses the classes);
# model/variants.py (compiled: under 1% fewer instructions, and its frozen records no
# longer pickle); everything off the explorer's path.  Compiled functions lose their docstrings: the properties' meanings are then read
# from properties/invariants.py's source (invariants._doc).  Seed coverage
# (`explore --coverage`) traces Python frames, so it refuses to run on the compiled model.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULES=(
    model/state.py model/system.py model/device.py model/msix.py model/pci.py
    model/proc.py model/server.py model/chardev.py
    properties/symmetry.py properties/explore.py properties/por.py properties/invariants.py
)
digest() { (cd "$ROOT" && cat "${MODULES[@]}" | sha256sum | cut -d' ' -f1); }
if [ "${1:-}" = "--check" ]; then
    OUT=${2:-$ROOT/build/mypyc}
    [ -f "$OUT/SOURCES.sha256" ] && [ "$(cat "$OUT/SOURCES.sha256")" = "$(digest)" ] && exit 0
    echo "build-mypyc: $OUT is missing or stale; run scripts/build-mypyc.sh" >&2
    exit 1
fi
OUT=${1:-$ROOT/build/mypyc}
PYTHON=${PYTHON:-python3}
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    echo "build-mypyc: no C compiler; the interpreted modules stay in use" >&2
    exit 0
fi
if ! "$PYTHON" -c "import mypyc" >/dev/null 2>&1; then
    echo "build-mypyc: mypyc is not installed (it comes with mypy: pip install -e '.[dev]')" >&2
    exit 0
fi
rm -rf "$OUT"
# The sources as they are imported: ivshmem_model.model and ivshmem_model.properties.
mkdir -p "$OUT/src/ivshmem_model"
touch "$OUT/src/ivshmem_model/__init__.py"
cp -r "$ROOT/model" "$ROOT/properties" "$OUT/src/ivshmem_model/"
find "$OUT/src" -name __pycache__ -prune -exec rm -rf {} +
# mypy's settings for the build (the project's pyproject.toml would be read by setuptools too).
printf '[mypy]\npython_version = 3.11\n\n[mypy-networkx,networkx.*,z3,z3.*]\n%s\n' \
    'ignore_missing_imports = True' >"$OUT/src/mypy.ini"
sources=$(digest)
if ! (cd "$OUT/src" && "$PYTHON" -m mypyc "${MODULES[@]/#/ivshmem_model/}") >"$OUT/build.log" 2>&1; then
    echo "build-mypyc: mypyc failed (see $OUT/build.log); the interpreted modules stay in use" >&2
    rm -rf "$OUT/src"
    exit 0
fi
# The build folder holds the compiled modules only; each package's __path__ goes on to the
# source tree, so every module not compiled is the repository's own, as it is now.
for package in ivshmem_model ivshmem_model/model ivshmem_model/properties; do
    source_dir=$ROOT/${package#ivshmem_model/}
    [ "$package" = ivshmem_model ] && source_dir=$ROOT/ivshmem_model
    mkdir -p "$OUT/$package"
    printf '"""%s (scripts/build-mypyc.sh): compiled modules here, the rest in %s."""\n%s\n' \
        "The mypyc build of $package" "$source_dir" \
        "__path__.append($("$PYTHON" -c 'import sys; print(repr(sys.argv[1]))' "$source_dir"))" \
        >"$OUT/$package/__init__.py"
done
for module in "${MODULES[@]}"; do
    mv "$OUT/src/ivshmem_model/${module%.py}".cpython-*.so "$OUT/ivshmem_model/$(dirname "$module")/"
done
mv "$OUT"/src/*__mypyc.cpython-*.so "$OUT/"
rm -rf "$OUT/src"
echo "$sources" >"$OUT/SOURCES.sha256"
echo "build-mypyc: compiled ${#MODULES[@]} modules into $OUT; use PYTHONPATH=$OUT" \
    "from outside the repository"

#!/usr/bin/env bash
# The tests of the model and its checkers again, on the mypyc build (scripts/build-mypyc.sh):
# one Python source, two builds, the same verdicts.  Run from outside the repository so the
# build's modules come first on the path (pytest puts the current folder first otherwise).
# Left out: the tests of real processes (QEMU, the C server and client, the executor, the
# notebooks), whose modules are not compiled and whose time is the processes'.
#
#     scripts/test-compiled.sh [pytest options]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build/mypyc
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    echo "test-compiled: no C compiler, so no mypyc build: its tests skip" >&2
    exit 0
fi
bash "$ROOT/scripts/build-mypyc.sh" --check "$BUILD"  # built by this tree's sources, or fail
cd "${TMPDIR:-/tmp}"
export PYTHONPATH=$BUILD
python3 -c 'from ivshmem_model.properties.explore import compiled; assert compiled(), "not the build"'
tests=()
for test in "$ROOT"/tests/test_*.py; do
    case $(basename "$test") in
        test_qemu*.py | test_conform.py | test_contrib*.py | test_lockstep.py | test_executor.py \
            | test_dashboard.py | test_fuzz_redis.py | test_newcomer.py) ;;
        *) tests+=("$test") ;;
    esac
done
exec python3 -m pytest -q -p no:cacheprovider -o addopts= -n 2 --rootdir "$ROOT" "$@" "${tests[@]}"

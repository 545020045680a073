"""``python -m ivshmem_model ...``: the ``ivshmem-model`` command (its tests and the lock step
start the executor's server this way, with the interpreter they run under)."""

from __future__ import annotations

import sys

from ivshmem_model.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Graphviz's `dot`, for `ivshmem-model graph --format svg|png` (DOT output needs nothing).
# Idempotent; always exits 0 and says why when it cannot install.
if command -v dot >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "install-graphviz: needs apt-get as root; svg/png pictures are unavailable" >&2
    exit 0
fi
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends graphviz; } \
        >/tmp/install-graphviz.log 2>&1; then
    echo "install-graphviz: apt-get failed (see /tmp/install-graphviz.log)" >&2
fi
exit 0

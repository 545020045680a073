#!/usr/bin/env bash
# Debian's `chromium`, run headless by the test that loads HypoFuzz's dashboard
# (tests/test_dashboard.py).  Idempotent; always exits 0 and says why when it cannot install.
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "install-browser: needs apt-get as root; the dashboard test will skip" >&2
    exit 0
fi
if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium; } \
        >/tmp/install-browser.log 2>&1; then
    echo "install-browser: apt-get failed (see /tmp/install-browser.log)" >&2
fi
exit 0

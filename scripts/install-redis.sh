#!/usr/bin/env bash
# Debian's `redis-server`, for a Redis example database shared by several machines fuzzing
# (`ivshmem-model fuzz --db redis://HOST:PORT`) and for the test that starts a private one.
# The python side is the `redis` package, in the `distributed` and `dev` extras.
# Idempotent; always exits 0 and says why when it cannot install.
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "install-redis: needs apt-get as root; the Redis database test will skip" >&2
    exit 0
fi
# The package's own service is not wanted (runs and tests start their own): no postinst start.
if ! { apt-get update -qq &&
        RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends redis-server; } \
        >/tmp/install-redis.log 2>&1; then
    echo "install-redis: apt-get failed (see /tmp/install-redis.log)" >&2
fi
exit 0

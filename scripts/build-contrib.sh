#!/usr/bin/env bash
# Build QEMU 7.2's contrib ivshmem-server and ivshmem-client from Debian's source package,
# for the lock-step against the real C programs (model/executor/contrib.py, tests/test_contrib.py;
# the client: model/executor/contrib_client.py, tests/test_contrib_client.py).
#
#   bash scripts/build-contrib.sh            # prints where the two programs are
#   IVSHMEM_CONTRIB_DIR=DIR                  # the cache (default ~/.cache/ivshmem-model/contrib)
#   IVSHMEM_QEMU_SRC=DIR                     # an unpacked QEMU 7.2 source instead of apt-get source
#
# Steps: build dependencies (apt-get install), a deb-src entry if apt has none (Signed-By the
# Debian archive keyring), `apt-get source qemu` of a 1:7.2 version into the cache, configure
# with only the tools, ninja only the two targets, copy them to DIR/bin with a stamp naming the
# source version.  Cached: when DIR/bin holds both programs and the stamp, nothing runs.
# Always exits 0: when a step is impossible (no apt-get, not root, no network, no 7.2 source)
# it says why and the tests that need the programs skip with their own reason.
# Measured on a Debian 12 container, two cores: see the timing line it prints at the end.
set -u

cache="${IVSHMEM_CONTRIB_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ivshmem-model/contrib}"
bin="$cache/bin"
stamp="$bin/SOURCE"
say() { echo "build-contrib: $*"; }
skip() { say "skipping: $*"; exit 0; }

if [ -x "$bin/ivshmem-server" ] && [ -x "$bin/ivshmem-client" ] && [ -s "$stamp" ]; then
    say "cached in $bin ($(cat "$stamp"))"
    exit 0
fi
start=$(date +%s)
mkdir -p "$cache" || skip "cannot create $cache"

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        sudo="none"
    fi
fi
apt_ok() { command -v apt-get >/dev/null 2>&1 && [ "$sudo" != "none" ]; }

# -- build dependencies ---------------------------------------------------------------------
need=""
for tool in gcc:gcc ninja:ninja-build meson:meson pkg-config:pkg-config python3:python3 \
            xz:xz-utils dpkg-source:dpkg-dev; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need="$need ${tool#*:}"
done
pkg-config --exists 'glib-2.0 >= 2.56' 2>/dev/null || need="$need libglib2.0-dev"
pkg-config --exists zlib 2>/dev/null || need="$need zlib1g-dev"
export DEBIAN_FRONTEND=noninteractive
updated=no
if [ -n "$need" ]; then
    apt_ok || skip "missing$need and cannot apt-get install (no apt-get, or not root)"
    $sudo apt-get update -qq >/dev/null 2>&1 && updated=yes
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq --no-install-recommends $need >/dev/null \
        || skip "apt-get install$need failed"
fi

# -- the source -----------------------------------------------------------------------------
src="${IVSHMEM_QEMU_SRC:-}"
version="${src:+local source $src}"
if [ -z "$src" ]; then
    command -v apt-get >/dev/null 2>&1 || skip "no apt-get, so no Debian source package"
    pick_version() {
        apt-cache showsrc qemu 2>/dev/null | sed -n 's/^Version: //p' | grep '^1:7\.2' \
            | sort -V | tail -n 1
    }
    version=$(pick_version)
    if [ -z "$version" ] && apt_ok; then
        if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            # shellcheck disable=SC1091
            codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
            [ "$codename" = bookworm ] || skip "no deb-src entry and not Debian 12 (bookworm), whose qemu is 7.2"
            say "adding a deb-src entry for bookworm"
            printf '%s\n' "Types: deb-src" "URIs: http://deb.debian.org/debian" \
                "Suites: bookworm bookworm-updates" "Components: main" \
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" \
                "Types: deb-src" "URIs: http://deb.debian.org/debian-security" \
                "Suites: bookworm-security" "Components: main" \
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
                | $sudo tee /etc/apt/sources.list.d/ivshmem-model-deb-src.sources >/dev/null
            updated=no
        fi
        if [ "$updated" = no ]; then
            $sudo apt-get update -qq >/dev/null 2>&1 || skip "apt-get update failed (no network?)"
        fi
        version=$(pick_version)
    fi
    [ -n "$version" ] || skip "apt has no qemu 1:7.2 source package (deb-src entries?)"
    upstream=${version#*:}
    upstream=${upstream%-*}
    src="$cache/src/qemu-$upstream"
    if [ ! -x "$src/configure" ]; then
        rm -rf "$cache/src"
        mkdir -p "$cache/src"
        say "apt-get source qemu=$version"
        (cd "$cache/src" && apt-get source -qq "qemu=$version" >"$cache/source.log" 2>&1) \
            || skip "apt-get source qemu=$version failed (see $cache/source.log)"
        [ -x "$src/configure" ] || skip "apt-get source did not unpack $src"
    fi
fi
[ -f "$src/contrib/ivshmem-server/ivshmem-server.c" ] || skip "$src has no contrib/ivshmem-server"

# -- configure and build only the two programs -------------------------------------------------
build="$cache/build"
if [ ! -f "$build/build.ninja" ]; then
    rm -rf "$build"
    mkdir -p "$build"
    say "configure"
    (cd "$build" && "$src/configure" --disable-system --disable-user \
        --without-default-features --enable-tools --disable-docs --disable-werror \
        >"$cache/configure.log" 2>&1) || skip "configure failed (see $cache/configure.log)"
fi
say "ninja ivshmem-server ivshmem-client"
ninja -C "$build" contrib/ivshmem-server/ivshmem-server contrib/ivshmem-client/ivshmem-client \
    >"$cache/ninja.log" 2>&1 || skip "ninja failed (see $cache/ninja.log)"
mkdir -p "$bin"
cp "$build/contrib/ivshmem-server/ivshmem-server" "$build/contrib/ivshmem-client/ivshmem-client" \
    "$bin/" || skip "cannot copy the programs to $bin"
echo "$version" >"$stamp"
say "built $bin/ivshmem-server and $bin/ivshmem-client ($version) in $(( $(date +%s) - start )) s"
exit 0

#!/usr/bin/env bash
# Install the QEMUs the conformance tests run (tests/test_qemu.py, tests/test_conform*.py):
#
#   bash scripts/install-qemu.sh          # both
#   bash scripts/install-qemu.sh 7.2      # Debian 12's qemu-system-x86 (and valgrind), on the host
#   bash scripts/install-qemu.sh 10.0     # Debian 13's QEMU 10.0, beside it, in a private cache
#
# QEMU 7.2 is the host's own package (apt-get install).  QEMU 10.0 never touches the host's
# packages: apt-get, pointed at a private directory (its own trixie source list, an empty dpkg
# status, its own lists and archive cache), downloads qemu-system-x86 and everything it depends
# on (and libc6-dbg, whose loader symbols valgrind needs); dpkg-deb -x unpacks them into
# DIR/root; DIR/bin/qemu-system-x86_64 is a small wrapper that runs the unpacked binary through
# trixie's own dynamic loader with trixie's libraries, its own firmware (-L) and modules
# (QEMU_MODULE_DIR).  DIR is
# ${IVSHMEM_QEMU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ivshmem-model}/qemu-10.0; the backend's
# `--qemu 10.0` finds the wrapper there (model/executor/qemu/machine.py, resolve_qemu).
#
# Idempotent and cached: a second run only checks that the binaries answer `--version`.
# Always exits 0: when an install is impossible (not root, no apt-get, no network, no trixie
# key) it says why, and the tests that need that QEMU skip with their own reason.
# Measured on a Debian 12 container with a warm network: 7.2 13 s and 29 s in two runs
# (30 packages, 17 MB); 10.0 about 8 s cold (91 packages, 45 MB downloaded, 185 MB unpacked),
# under 0.1 s cached.  Each part prints its own time.
set -u

say() { echo "install-qemu: $*"; }

install_72() {
    # valgrind confirms use-after-free findings on QEMU (the backend's --memcheck).
    local packages="" sudo="" start
    command -v qemu-system-x86_64 >/dev/null 2>&1 || packages="$packages qemu-system-x86"
    command -v valgrind >/dev/null 2>&1 || packages="$packages valgrind"
    if [ -z "$packages" ]; then
        say "$(qemu-system-x86_64 --version | head -n 1) and valgrind are installed"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get here; install qemu-system-x86 by hand (the QEMU 7.2 tests skip)"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            say "not root and no password-less sudo; skipping 7.2 (the QEMU 7.2 tests skip)"
            return 0
        fi
    fi
    start=$(date +%s)
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get update; then
        say "apt-get update failed (no network?); the QEMU 7.2 tests skip"
        return 0
    fi
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
            $packages; then
        say "apt-get install$packages failed; the QEMU 7.2 tests skip"
        return 0
    fi
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        say "installed, but qemu-system-x86_64 is not on PATH; the QEMU 7.2 tests skip"
        return 0
    fi
    say "$(qemu-system-x86_64 --version | head -n 1) installed in $(( $(date +%s) - start )) s"
}

install_100() {
    local base="${IVSHMEM_QEMU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ivshmem-model}"
    local dir="$base/qemu-10.0"
    local wrapper="$dir/bin/qemu-system-x86_64" stamp="$dir/VERSION"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    local start version
    if [ -x "$wrapper" ] && [ -s "$stamp" ] && [ -d "$dir/root/usr/lib/x86_64-linux-gnu/.debug" ] \
            && "$wrapper" --version >/dev/null 2>&1; then
        say "$(cat "$stamp") cached in $dir"
        return 0
    fi
    skip() { say "skipping 10.0: $*; the QEMU 10.0 tests skip"; }
    start=$(date +%s)
    command -v apt-get >/dev/null 2>&1 || { skip "no apt-get here"; return 0; }
    command -v dpkg-deb >/dev/null 2>&1 || { skip "no dpkg-deb here"; return 0; }
    [ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] \
        || { skip "only amd64 hosts are supported"; return 0; }
    [ -r "$keyring" ] || { skip "no Debian archive keyring ($keyring)"; return 0; }
    mkdir -p "$dir" || { skip "cannot create $dir"; return 0; }
    # A private apt: its own sources, preferences, lists, archives and an empty dpkg status,
    # so it resolves qemu-system-x86's whole dependency closure from trixie alone.
    local apt="$dir/apt"
    rm -rf "$apt"
    mkdir -p "$apt/sources.list.d" "$apt/preferences.d" "$apt/lists/partial" \
             "$apt/archives/partial" || { skip "cannot create $apt"; return 0; }
    : > "$apt/status"
    cat > "$apt/sources.list.d/trixie.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: $keyring

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: $keyring
EOF
    local -a opts=(
        -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt/sources.list.d"
        -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$apt/preferences.d"
        -o "Dir::State=$apt" -o "Dir::State::Lists=$apt/lists"
        -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt" -o "Dir::Cache::Archives=$apt/archives"
        -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
        -o "APT::Architecture=amd64" -o "APT::Architectures=amd64"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)"
    )
    if ! apt-get "${opts[@]}" -qq update >"$dir/apt.log" 2>&1; then
        skip "apt-get update of trixie failed (no network? see $dir/apt.log)"
        return 0
    fi
    if ! apt-get "${opts[@]}" -qq -y --download-only --no-install-recommends \
            install qemu-system-x86 libc6-dbg >>"$dir/apt.log" 2>&1; then
        skip "apt-get could not download trixie's qemu-system-x86 (see $dir/apt.log)"
        return 0
    fi
    local root="$dir/root" fresh="$dir/root.new" deb count=0
    rm -rf "$fresh"
    mkdir -p "$fresh"
    for deb in "$apt"/archives/*.deb; do
        dpkg-deb -x "$deb" "$fresh" || { skip "dpkg-deb -x $deb failed"; return 0; }
        count=$((count + 1))
    done
    rm -rf "$root" "$apt/archives" "$apt/lists"
    mv "$fresh" "$root"
    local lib="$root/usr/lib/x86_64-linux-gnu"
    [ -x "$root/usr/bin/qemu-system-x86_64" ] && [ -e "$lib/ld-linux-x86-64.so.2" ] \
        || { skip "the unpacked packages lack qemu-system-x86_64 or the loader"; return 0; }
    # valgrind (the backend's --memcheck) needs the symbols of trixie's loader; it finds them
    # through the .gnu_debuglink name in the object's own directory's .debug/.
    mkdir -p "$lib/.debug"
    for deb in "$root"/usr/lib/debug/.build-id/*/*.debug; do
        [ -e "$deb" ] && ln -f "$deb" "$lib/.debug/"
    done
    mkdir -p "$dir/bin"
    cat > "$wrapper" <<EOF
#!/bin/sh
# QEMU 10.0 from Debian 13, unpacked by scripts/install-qemu.sh: trixie's loader and libraries,
# its own firmware and modules, none of the host's.
QEMU_MODULE_DIR='$lib/qemu' exec '$lib/ld-linux-x86-64.so.2' --library-path '$lib' \\
    --argv0 qemu-system-x86_64 '$root/usr/bin/qemu-system-x86_64' \\
    -L '$root/usr/share/qemu' -L '$root/usr/share/seabios' "\$@"
EOF
    chmod +x "$wrapper"
    version=$("$wrapper" --version 2>&1 | head -n 1)
    case "$version" in
        "QEMU emulator version 10.0"*) ;;
        *) rm -f "$stamp"; skip "the unpacked QEMU does not run: ${version:-no output}"; return 0 ;;
    esac
    echo "$version" > "$stamp"
    say "$version unpacked in $dir ($count packages, $(du -sh "$root" | cut -f1)) in" \
        "$(( $(date +%s) - start )) s"
}

case "${1:-all}" in
    7.2) install_72 ;;
    10.0) install_100 ;;
    all) install_72; install_100 ;;
    *) say "usage: install-qemu.sh [7.2|10.0|all]"; exit 2 ;;
esac
exit 0

"""Doorbell latency and shared-memory copy bandwidth: the executor's helpers vs C.

Two figures, each beside a small C reference compiled with gcc at run time:
* an eventfd ping-pong between two processes (``wire.kick`` / ``wire.read_kick``: the 8-byte
  native-endian 1 of facts §2.1) against the same loop with ``write``/``read`` in C;
* copying into a memfd mapping (``wire.shm_memfd`` + ``wire.size_shm`` + ``wire.map_shm``,
  mmap slice assignment) against ``memcpy`` into a memfd mapping in C.
It prints figures; it is not a pass/fail test.  Usage: python benchmarks/doorbell_latency.py
[--rounds N] [--mib M] [--reps R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ivshmem_model.model.executor import wire

C_SOURCE = r"""
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void ring(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) != sizeof one) { perror("write"); exit(1); }
}

static void wait_ring(int fd) {
    uint64_t value;
    if (read(fd, &value, sizeof value) != sizeof value) { perror("read"); exit(1); }
}

static int pingpong(long rounds) {
    int ping = eventfd(0, EFD_CLOEXEC), pong = eventfd(0, EFD_CLOEXEC);
    pid_t pid = fork();
    if (pid == 0) {
        for (long i = 0; i < rounds + 100; i++) { wait_ring(ping); ring(pong); }
        _exit(0);
    }
    for (int i = 0; i < 100; i++) { ring(ping); wait_ring(pong); }
    double start = now();
    for (long i = 0; i < rounds; i++) { ring(ping); wait_ring(pong); }
    double elapsed = now() - start;
    waitpid(pid, NULL, 0);
    printf("%.3f\n", elapsed / rounds * 1e6);
    return 0;
}

static int copy(size_t size, int reps) {
    int fd = memfd_create("ivshmem", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, size) < 0) { perror("memfd"); return 1; }
    unsigned char *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    unsigned char *src = malloc(size);
    if (map == MAP_FAILED || !src) { perror("mmap"); return 1; }
    memset(src, 0xa5, size);
    memcpy(map, src, size);
    double start = now();
    for (int i = 0; i < reps; i++) { src[0] = (unsigned char)i; memcpy(map, src, size); }
    double elapsed = now() - start;
    if (map[0] != (unsigned char)(reps - 1)) { fprintf(stderr, "copy check failed\n"); return 1; }
    printf("%.3f\n", (double)size * reps / elapsed / 1e9);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "pingpong")) return pingpong(atol(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "copy")) return copy(strtoull(argv[2], 0, 0), atoi(argv[3]));
    fprintf(stderr, "usage: %s pingpong ROUNDS | copy BYTES REPS\n", argv[0]);
    return 2;
}
"""


def python_pingpong(rounds: int) -> float:
    """Microseconds per round trip through two blocking eventfds and two processes."""
    ping, pong = wire.new_eventfd(nonblocking=False), wire.new_eventfd(nonblocking=False)
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(rounds + 100):
                wire.read_kick(ping)
                wire.kick(pong)
        finally:
            os._exit(0)
    for _ in range(100):
        wire.kick(ping)
        wire.read_kick(pong)
    start = time.perf_counter()
    for _ in range(rounds):
        wire.kick(ping)
        wire.read_kick(pong)
    elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    os.close(ping)
    os.close(pong)
    return elapsed / rounds * 1e6


def python_copy(size: int, reps: int) -> float:
    """GB/s copying a bytes object into a memfd mapping (mmap slice assignment)."""
    fd = wire.shm_memfd()
    try:
        wire.size_shm(fd, size)
        mapping = wire.map_shm(fd)
        source = b"\xa5" * size
        mapping[:] = source
        start = time.perf_counter()
        for _ in range(reps):
            mapping[:] = source
        elapsed = time.perf_counter() - start
        mapping.close()
    finally:
        os.close(fd)
    return size * reps / elapsed / 1e9


def build_reference(workdir: str) -> str | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    source = os.path.join(workdir, "doorbell.c")
    binary = os.path.join(workdir, "doorbell")
    Path(source).write_text(C_SOURCE, encoding="utf-8")
    subprocess.run([gcc, "-O2", "-o", binary, source], check=True)
    return binary


def run_reference(binary: str, *args: str) -> float:
    done = subprocess.run([binary, *args], check=True, capture_output=True, text=True)
    return float(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20000, help="ping-pong round trips")
    parser.add_argument("--mib", type=int, default=64, help="copy size in MiB (power of two)")
    parser.add_argument("--reps", type=int, default=20, help="copies to time")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024

    with tempfile.TemporaryDirectory(prefix="ivshmem-bench-") as workdir:
        binary = build_reference(workdir)
        py_rt = python_pingpong(args.rounds)
        py_bw = python_copy(size, args.reps)
        print(f"doorbell round trip (eventfd ping-pong, 2 processes, {args.rounds} rounds)")
        print(f"  python (model.executor.wire): {py_rt:8.2f} us")
        if binary is None:
            print("  C reference: skipped, gcc not found")
        else:
            c_rt = run_reference(binary, "pingpong", str(args.rounds))
            print(f"  C (gcc -O2, write/read):      {c_rt:8.2f} us")
            print(f"  ratio python / C:             {py_rt / c_rt:8.2f}x")
        print(f"shared-memory copy ({args.mib} MiB into a memfd mapping, {args.reps} reps)")
        print(f"  python (wire.map_shm, slice): {py_bw:8.2f} GB/s")
        if binary is not None:
            c_bw = run_reference(binary, "copy", str(size), str(args.reps))
            print(f"  C (gcc -O2, memcpy):          {c_bw:8.2f} GB/s")
            print(f"  ratio C / python:             {c_bw / py_bw:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

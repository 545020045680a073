"""HypoFuzz's dashboard, in a real headless browser: ``ivshmem-model fuzz --port P`` serves it,
Debian's ``chromium`` (``scripts/install-browser.sh``) loads it, runs its JavaScript, and the
rendered page names our target (the page as served names none)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from redis_server import free_port

TARGET = "properties/fuzz_targets.py::Test_scripted_tcg__fixed::runTest"


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium: bash scripts/install-browser.sh (Debian's chromium)")


def _served(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            text: str = reply.read().decode()
            return text
    except (urllib.error.URLError, OSError):
        return None


def _rendered(browser: str, url: str, profile: Path) -> str:
    done = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox",
                           f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                           "--dump-dom", url],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.stdout


def test_the_dashboard_renders_our_targets_in_a_headless_browser(tmp_path: Path) -> None:
    pytest.importorskip("hypofuzz", reason="HypoFuzz is not installed: pip install -e "
                                           "'.[distributed]'")
    browser = _browser()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = (tmp_path / "fuzz.out").open("w")
    # The fixed variant: nothing fails, so the target keeps running while the page loads.
    fuzzing = subprocess.Popen(
        [sys.executable, "-c", "from ivshmem_model.cli import main; raise SystemExit(main())",
         "fuzz", "--variant", "fixed", "--config", "scripted-tcg", "--db", str(tmp_path / "db"),
         "--seconds", "90", "--workers", "1", "--port", str(port), "--poll", "1",
         "--out", str(tmp_path / "out")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    began = time.monotonic()
    dom = ""
    try:
        page = None
        # generous bounds: a loaded machine (the suite's other workers) starts HypoFuzz slowly
        while page is None and time.monotonic() - began < 45 and fuzzing.poll() is None:
            time.sleep(0.5)
            page = _served(url)
        assert page is not None, (tmp_path / "fuzz.out").read_text()
        assert "<title>HypoFuzz</title>" in page and TARGET not in page  # JavaScript's job
        # the page lists the target first, its status once a worker has reported it
        while not (TARGET in dom and "Running" in dom) and time.monotonic() - began < 80:
            dom = _rendered(browser, url, tmp_path / "chromium")
            if not (TARGET in dom and "Running" in dom):
                time.sleep(1)
    finally:
        if fuzzing.poll() is None:
            os.killpg(fuzzing.pid, signal.SIGINT)  # the command stops HypoFuzz's processes
        try:
            fuzzing.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(fuzzing.pid, signal.SIGKILL)
            fuzzing.wait()
        log.close()
    assert TARGET in dom, dom[-2000:]
    assert "Running" in dom  # the target's status, as the workers reported it
    assert "Tests" in dom and "Coverage" in dom

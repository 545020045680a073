"""Progress lines for long runs (issue 15): nothing for a run that ends within a few seconds,
then one line on stderr every few seconds with the step, the rate and the time left.

``run_trace(trace, variant, progress=Progress("run x.json", len(trace.steps)))`` calls the
reporter every :data:`EVERY_STEPS` steps; ``finish(steps)`` prints a last line, if any was printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

EVERY_STEPS = 256  # run_trace reports every this many steps: the clock is read that often
QUIET_SECONDS = 3.0  # no line before this
INTERVAL_SECONDS = 5.0  # then one line every this


class Progress:
    """Reports ``done`` of ``total`` steps on ``stream`` once the run is slow enough to need
    it.  ``clock`` is for tests."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 quiet: float | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = INTERVAL_SECONDS if interval is None else interval
        self.clock = clock
        self.began = clock()
        self.next_line = self.began + (QUIET_SECONDS if quiet is None else quiet)
        self.lines = 0
        self.done = 0

    def __call__(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now < self.next_line:
            return
        self.next_line = now + self.interval
        elapsed = max(now - self.began, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        percent = 100 * done // max(self.total, 1)
        self._line(f"step {done:,} of {self.total:,} ({percent}%), {rate:,.0f} steps/s, "
                   f"about {_duration(left)} left")

    def finish(self, done: int | None = None) -> None:
        """A closing line with the total time, if the run was long enough to be reported."""
        if done is not None:
            self.done = done
        if not self.lines:
            return
        elapsed = max(self.clock() - self.began, 1e-9)
        self._line(f"{self.done:,} steps in {_duration(elapsed)} "
                   f"({self.done / elapsed:,.0f} steps/s)")

    def _line(self, text: str) -> None:
        self.lines += 1
        print(f"{self.label}: {text}", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

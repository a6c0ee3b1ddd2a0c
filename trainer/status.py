"""A one-line training status (step, elapsed, ETA) that redraws itself between log lines.

The trainer prints a metrics line every `metrics_interval` steps, because that is when it
syncs with the device; with a large interval or slow steps nothing moves for minutes.
This line fills the gap, tqdm-style (`step 37/100 [00:12<00:21, 3.05 step/s]`), using only
host-side clocks and the host's step counter, so it adds no device sync. It is drawn on
stderr and only on a terminal (DOLMINO_PROGRESS=1/0 forces it on/off, as for the data
tools); `clear()` wipes it before a log line is printed so the two never interleave.
The trainer does not import dolmino (layers), hence this small copy of the idea.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO


def _clock_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _terminal(stream: IO) -> bool:
    forced = os.environ.get("DOLMINO_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class StepStatus:
    """`update(step)` after each optimizer step, `clear()` before printing anything else."""

    def __init__(self, total_steps: int, start_step: int = 0, *, stream: IO | None = None,
                 enabled: bool | None = None, min_interval: float = 0.2, clock=time.monotonic):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _terminal(self.stream) if enabled is None else enabled
        self.total, self.start_step = total_steps, start_step
        self.min_interval, self.clock = min_interval, clock
        self.started = clock()
        self._last_draw = float("-inf")
        self._shown = False

    def text(self, step: int, now: float) -> str:
        elapsed = now - self.started
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        eta = _clock_text((self.total - step) / rate) if rate else "?"
        speed = (f"{rate:.2f} step/s" if rate >= 1 else f"{1 / rate:.2f} s/step") if rate else "? step/s"
        return f"step {step}/{self.total} [{_clock_text(elapsed)}<{eta}, {speed}]"

    def update(self, step: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now - self._last_draw < self.min_interval and step < self.total:
            return
        self._last_draw = now
        self.stream.write("\r" + self.text(step, now) + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

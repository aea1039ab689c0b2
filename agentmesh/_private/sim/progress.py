"""A one-line progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``[#####-----]  50/100 steps  12.3/s``, redrawn at most 10 times a second.

    Silent when ``stream`` (default: stderr) is not a terminal, so logs and pipes stay
    clean; ``enabled`` forces it on or off.
    """

    def __init__(
        self,
        total: int,
        unit: str = "steps",
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        width: int = 30,
    ) -> None:
        self.total = max(total, 0)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.done = 0
        self.note = ""
        self._started = time.perf_counter()
        self._drawn = 0.0

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more units done; ``note`` is shown after the rate."""
        self.done += n
        self.note = note or self.note
        now = time.perf_counter()
        if self.enabled and (now - self._drawn >= 0.1 or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(fraction * self.width)
        rate = self.done / max(now - self._started, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r[{bar}] {self.done:>{len(str(self.total))}}/{self.total} {self.unit}"
        line += f"  {rate:,.1f}/s  {self.note}"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        """End the line, if anything was drawn."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

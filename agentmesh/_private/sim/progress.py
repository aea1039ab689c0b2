"""A one-line progress bar on stderr, drawn only when stderr is a terminal.

With tqdm installed (the ``progress`` extra: ``pip install 'agentmesh[progress]'``)
tqdm draws it: elapsed and remaining time, rate, the note. Without it, a plain line
of ``#`` does.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["ProgressBar"]


def _tqdm_bar(total: int, unit: str, stream: TextIO, width: int) -> tqdm[Any] | None:
    """A tqdm bar, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total,
        unit=f" {unit}",
        file=stream,
        mininterval=0.1,
        bar_format=(
            f"{{l_bar}}{{bar:{width}}}| {{n_fmt}}/{{total_fmt}}{{unit}} "
            "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        ),
    )


class ProgressBar:
    """``[#####-----]  50/100 steps  12.3/s``, redrawn at most 10 times a second.

    Silent when ``stream`` (default: stderr) is not a terminal, so logs and pipes stay
    clean; ``enabled`` forces it on or off. When tqdm is installed and the bar is
    enabled, tqdm draws it (with elapsed and remaining time); otherwise the plain line
    above does.
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
        self._tqdm = _tqdm_bar(self.total, unit, self.stream, width) if self.enabled else None

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more units done; ``note`` is shown after the rate."""
        self.done += n
        self.note = note or self.note
        if self._tqdm is not None:
            if note:
                self._tqdm.set_postfix_str(note, refresh=False)
            self._tqdm.update(n)
            return
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
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

"""`TurnTimer`: how long agents' turns take, sampled, as one histogram per agent class.

A node has one only when metrics are on (`Node.turn_timer`, else None). The dispatcher
reads that attribute once per task it starts and the cell once per turn run in a task
of its own (concurrent and reentrant turns), so with metrics off a turn costs nothing
more. With them on, about one dispatcher slice in `SAMPLE_EVERY` is timed, at a random
interval (so agents served in a fixed round are not always missed or always timed).

A slice runs up to 32 turns of one serial agent back to back; a timed slice counts as
that many turns of its length divided by their number (exact for the common slice of
one turn, the mean of a busy agent's batch). A slice that suspends (a handler awaits)
is timed until it ends. A concurrent or reentrant turn is timed on its own. Only the
owning node's event loop touches a timer; the metrics layer copies it there.
"""

from __future__ import annotations

import bisect
import contextvars
import random
import time
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

from .cell import Batch

if TYPE_CHECKING:
    from .cell import Cell
    from .dispatch import Runnable, Suspended

__all__ = ["BUCKETS", "SAMPLE_EVERY", "Histogram", "TurnTimer"]

#: Upper bounds (seconds) of the histogram's buckets, from a quick handler to an LLM call.
BUCKETS = (
    0.00001,
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: One slice (or turn in a task of its own) in about this many is timed.
SAMPLE_EVERY = 16


class Histogram:
    """Timed turns of one agent class: ``counts[i]`` turns of at most ``BUCKETS[i]``
    seconds (and above the last bound, ``counts[-1]``), not cumulative; ``total`` their
    seconds."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def copy(self) -> Histogram:
        other = Histogram()
        other.counts = list(self.counts)
        other.total = self.total
        return other


class TurnTimer:
    """Samples turn durations into a `Histogram` per agent class (by qualified name)."""

    __slots__ = ("_left", "_random", "by_class", "every")

    def __init__(self, every: int = SAMPLE_EVERY) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.by_class: dict[str, Histogram] = {}
        # An RNG of its own: a simulation seeding `random` gets the same run with
        # metrics on as off.
        self._random = random.Random()
        self._left = self._next()

    def _next(self) -> int:
        """Slices until the next timed one: ``every`` on average, at least one."""
        return self._random.randrange(1, 2 * self.every) if self.every > 1 else 1

    def _due(self) -> bool:
        self._left -= 1
        if self._left > 0:
            return False
        self._left = self._next()
        return True

    def record(self, cls_name: str, seconds: float, turns: int) -> None:
        """``turns`` turns of ``cls_name`` took ``seconds`` together."""
        if turns <= 0:
            return
        histogram = self.by_class.get(cls_name)
        if histogram is None:
            histogram = self.by_class[cls_name] = Histogram()
        histogram.counts[bisect.bisect_left(BUCKETS, seconds / turns)] += turns
        histogram.total += seconds

    def run_slice(self, ctx: contextvars.Context, item: Runnable) -> Suspended | bool:
        """``item.run_slice`` in ``ctx``, as the dispatcher runs it, timing one slice of
        a serial agent now and then (concurrent agents' turns are timed by `timed`).
        A slice of a `Batch` counts under the class of its first agent (a batch's
        agents are most often of one class); a batched turn that waits is not timed."""
        if not self._due():
            return ctx.run(item.run_slice)
        if isinstance(item, Batch):
            first = item.next
            started = time.perf_counter()
            ran = ctx.run(item.run_slice)
            turns = item.next - first
            if turns and (ran is True or ran is False):
                cls_name = item.cells[first].methods.cls_name
                self.record(cls_name, time.perf_counter() - started, turns)
            return ran
        cell = cast("Cell", item)
        if cell.concurrency != 1:
            return ctx.run(cell.run_slice)
        handled = cell.handled
        started = time.perf_counter()
        ran = ctx.run(cell.run_slice)
        if ran is True or ran is False:
            self.record(
                cell.methods.cls_name, time.perf_counter() - started, cell.handled - handled
            )
            return ran
        coro, yielded = ran

        def done() -> None:
            turns = cell.handled - handled
            self.record(cell.methods.cls_name, time.perf_counter() - started, turns)

        return _Timed(coro, done), yielded

    def timed(self, cls_name: str, turn: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
        """``turn`` (a handler's coroutine, in a task of its own), timed now and then."""
        if not self._due():
            return turn
        return self._time(cls_name, turn)

    async def _time(self, cls_name: str, turn: Coroutine[Any, Any, Any]) -> Any:
        started = time.perf_counter()
        try:
            return await turn
        finally:
            self.record(cls_name, time.perf_counter() - started, 1)


class _Timed(Coroutine[Any, Any, Any]):
    """A slice's coroutine that suspended, driven on by the dispatcher (`resume`):
    calls ``done`` once it ends, however it ends."""

    __slots__ = ("_coro", "_done")

    def __init__(self, coro: Coroutine[Any, Any, Any], done: Callable[[], None]) -> None:
        self._coro = coro
        self._done = done

    def send(self, value: Any) -> Any:
        try:
            return self._coro.send(value)
        except BaseException:
            self._done()
            raise

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        try:
            return self._coro.throw(typ if val is None else val)
        except BaseException:
            self._done()
            raise

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()

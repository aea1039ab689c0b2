"""`Recent`: the latest items of a stream (crashes, finished spans), numbered, so a
reader that polls takes only those it has not seen."""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

__all__ = ["Recent"]

T = TypeVar("T")


class Recent(Generic[T]):
    """The latest ``size`` items added, numbered 1, 2, 3 ... in the order they came.

    Thread-safe: spans end in whichever thread ends them. Adding costs a lock and a
    `deque.append`; the oldest item goes when a new one comes to a full buffer.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a Recent buffer holds 1 item or more, not {size}")
        self._items: collections.deque[tuple[int, T]] = collections.deque(maxlen=size)
        self._last = 0
        self._lock = threading.Lock()

    def add(self, item: T) -> None:
        with self._lock:
            self._last += 1
            self._items.append((self._last, item))

    @property
    def last(self) -> int:
        """The number of the latest item added (0 before any)."""
        return self._last

    def after(self, seen: int, limit: int) -> tuple[int, list[T]]:
        """(the latest number, the items numbered after ``seen``, the newest ``limit`` of
        them, oldest first). A ``seen`` beyond the latest (a reader of another buffer,
        one that restarted) counts as 0: it gets what is kept."""
        with self._lock:
            last = self._last
            if seen > last:
                seen = 0
            fresh: list[T] = []
            for number, item in reversed(self._items):
                if number <= seen or len(fresh) >= limit:
                    break
                fresh.append(item)
        fresh.reverse()
        return last, fresh

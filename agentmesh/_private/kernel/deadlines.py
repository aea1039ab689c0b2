"""Expiry of asks that use the node's default timeout, with a single timer.

The timer lives on the loop of the first ask; `Node.ask` makes sure no ask from
another loop gets here.

Asks with the same timeout expire in the order they were sent, so an insertion-ordered
dict is a priority queue for them: adding, removing and finding the next to expire are
all O(1), and one timer serves them all. A per-ask ``loop.call_later`` costs several
microseconds on every ask; this costs a dict insert and delete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .errors import WrongLoop

__all__ = ["Deadlines"]

#: Called with a future that expired and what was added with it.
Expire = Callable[[asyncio.Future[Any], Any], None]


class Deadlines:
    """Futures that expire ``timeout`` seconds after they were added, unless removed:
    ``expire(fut, what)`` is called for each, ``what`` being what `add` was given."""

    __slots__ = ("_entries", "_expire", "_loop", "_timer", "timeout")

    def __init__(self, timeout: float, expire: Expire) -> None:
        self.timeout = timeout
        self._expire = expire
        self._entries: dict[asyncio.Future[Any], tuple[float, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, fut: asyncio.Future[Any], what: Any, now: float) -> float:
        """Expire ``fut`` at ``now + timeout`` unless `discard` comes first; return
        that deadline. ``what`` goes to the expire callback (who asked whom)."""
        deadline = now + self.timeout
        if self._timer is None:
            # Arming is rare (the first ask after a quiet spell), so the loop is checked
            # here: a timer armed on another loop would never fire on this one, and
            # no ask would ever expire again.
            loop = asyncio.get_running_loop()
            if self._loop is None:
                self._loop = loop
            elif loop is not self._loop:
                raise WrongLoop("ask deadlines are kept on the loop of the first ask only")
            self._timer = loop.call_at(deadline, self._fire)
        self._entries[fut] = (deadline, what)
        return deadline

    def discard(self, fut: asyncio.Future[Any]) -> None:
        self._entries.pop(fut, None)

    def _fire(self) -> None:
        assert self._loop is not None
        self._timer = None
        entries = self._entries
        now = self._loop.time()
        while entries:
            fut = next(iter(entries))
            deadline, what = entries[fut]
            if deadline > now:
                # The earliest left is still to come: sleep until then.
                self._timer = self._loop.call_at(deadline, self._fire)
                return
            del entries[fut]
            self._expire(fut, what)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._entries.clear()

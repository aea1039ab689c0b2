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
from typing import TYPE_CHECKING, Any

from .errors import WrongLoop

if TYPE_CHECKING:
    from .envelope import Envelope

__all__ = ["Deadlines"]

#: Called with the envelope of an ask that expired and what was added with it.
Expire = Callable[["Envelope", Any], None]


class Deadlines:
    """Asks that expire at their envelope's ``deadline`` (``timeout`` seconds after
    they were sent), unless removed first: ``expire(env, what)`` is called for each,
    ``what`` being what `add` was given.

    Keyed by the envelope, which holds the deadline and the reply: an ask adds no
    object of its own here (each would live as long as the ask, and thousands of
    asks in flight make the garbage collector walk the whole heap more often).
    """

    __slots__ = ("_expire", "_loop", "entries", "timeout", "timer")

    def __init__(self, timeout: float, expire: Expire) -> None:
        self.timeout = timeout
        self._expire = expire
        self.entries: dict[Envelope, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, env: Envelope, what: Any) -> None:
        """Expire ``env`` at its ``deadline`` (which must be `timeout` seconds from
        now, as for the asks before it) unless `discard` comes first. ``what`` goes
        to the expire callback (whom it asks)."""
        if self.timer is None:
            # Arming is rare (the first ask after a quiet spell), so the loop is checked
            # here: a timer armed on another loop would never fire on this one, and
            # no ask would ever expire again.
            loop = asyncio.get_running_loop()
            if self._loop is None:
                self._loop = loop
            elif loop is not self._loop:
                raise WrongLoop("ask deadlines are kept on the loop of the first ask only")
            self.timer = loop.call_at(env.deadline, self._fire)
        self.entries[env] = what

    def discard(self, env: Envelope) -> None:
        self.entries.pop(env, None)

    def _fire(self) -> None:
        assert self._loop is not None
        self.timer = None
        entries = self.entries
        now = self._loop.time()
        while entries:
            env = next(iter(entries))
            if env.deadline > now:
                # The earliest left is still to come: sleep until then.
                self.timer = self._loop.call_at(env.deadline, self._fire)
                return
            self._expire(env, entries.pop(env))

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.entries.clear()

"""A bounded FIFO mailbox with backpressure.

The queue itself is allocated only while the mailbox holds messages, so an idle agent
costs a few slots, not a deque's 600-byte first block.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Generic, TypeVar

from .errors import MailboxFull, refused

__all__ = ["DEFAULT_MAILBOX_SIZE", "SPARE_QUEUES", "Mailbox"]

#: Capacity of a mailbox when neither the class nor `spawn` says otherwise.
DEFAULT_MAILBOX_SIZE = 1000

#: Empty queues kept for the next mailbox that needs one (at most `_SPARE_MAX`,
#: about 2 MB). A deque's first block is just over pymalloc's 512-byte limit: making
#: and freeing one costs a system malloc and free, which an agent woken for one
#: message at a time would pay at every wake (twice the cost of reusing one).
SPARE_QUEUES: list[deque[Any]] = []
_SPARE_MAX = 4096

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A bounded FIFO queue; ``put`` waits for room, ``put_nowait`` raises `MailboxFull`.

    Waiting senders are served first come, first served, and a slot freed for a waiting
    sender is reserved for it, so a ``put_nowait`` can never overtake one. The fields
    are public because the cell's drain loop reads them directly (its hot path).
    """

    __slots__ = ("capacity", "items", "putters", "reserved")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox_size must be at least 1, got {capacity}")
        self.capacity = capacity
        self.items: deque[T] | None = None
        self.putters: deque[asyncio.Future[None]] | None = None
        self.reserved = 0

    def __len__(self) -> int:
        items = self.items
        return 0 if items is None else len(items)

    def __bool__(self) -> bool:
        items = self.items
        return bool(items)

    def has_room(self) -> bool:
        """True when a ``put_nowait`` would succeed now."""
        return not self.putters and len(self) + self.reserved < self.capacity

    def try_put(self, item: T) -> bool:
        """Append ``item`` if there is room now; return whether it was appended."""
        items = self.items
        if items is None:
            self.items = items = SPARE_QUEUES.pop() if SPARE_QUEUES else deque()
        elif self.putters or len(items) + self.reserved >= self.capacity:
            return False
        items.append(item)
        return True

    def put_nowait(self, item: T) -> None:
        """Append ``item`` or raise `MailboxFull`; never waits."""
        if not self.try_put(item):
            raise MailboxFull(f"mailbox full ({self.capacity} messages)")

    async def put(self, item: T) -> None:
        """Append ``item``, first waiting for room if the mailbox is full."""
        if self.try_put(item):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.putters is None:
            self.putters = deque()
        self.putters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # We were given a slot but will not use it: pass it on.
                self.reserved -= 1
                self.wake_putter()
            elif self.putters is not None and fut in self.putters:
                self.putters.remove(fut)
            raise
        self.reserved -= 1
        items = self.items
        if items is None:
            self.items = items = SPARE_QUEUES.pop() if SPARE_QUEUES else deque()
        items.append(item)

    def popleft(self) -> T:
        """Remove and return the oldest message, giving its slot to a waiting sender."""
        assert self.items is not None
        item = self.items.popleft()
        if self.putters:
            self.wake_putter()
        return item

    def wake_putter(self) -> None:
        """Give a freed slot to the longest-waiting sender, if any."""
        putters = self.putters
        while putters:
            fut = putters.popleft()
            if not fut.done():
                self.reserved += 1
                fut.set_result(None)
                return

    def release(self) -> None:
        """Drop the empty queue so an idle agent holds no buffer."""
        if not self.items and not self.putters and not self.reserved:
            self.items = None
            self.putters = None

    def recycle(self) -> None:
        """`release`, keeping the empty queue for another mailbox: only where no
        caller still holds ``items`` (the dispatcher, between two agents' turns)."""
        items = self.items
        if not items and not self.putters and not self.reserved:
            if items is not None and len(SPARE_QUEUES) < _SPARE_MAX:
                SPARE_QUEUES.append(items)
            self.items = None
            self.putters = None

    def drain(self) -> list[T]:
        """Remove and return every queued message."""
        items = list(self.items or ())
        if self.items is not None:
            self.items.clear()
        return items

    def fail_putters(self, reason: str) -> None:
        """Refuse every waiting sender with `AgentUnavailable`."""
        putters, self.putters = self.putters, None
        for fut in putters or ():
            if not fut.done():
                fut.set_exception(refused(reason))

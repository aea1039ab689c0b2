"""``@am.subscribe(pattern)``: mark an agent method as a topic handler."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .subscriptions import Overflow, check_overflow
from .topics import check_pattern

__all__ = ["MARK", "decorated_handlers", "subscribe"]

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute a decorated method carries: a list of (pattern, overflow).
MARK = "__am_subscriptions__"


def subscribe(pattern: str, *, overflow: Overflow = "backpressure") -> Callable[[F], F]:
    """Make an ``async def`` method of an agent receive messages published on topics
    matching ``pattern``, for the agent's whole life (restarts included).

    The handler's first parameter gets the payload, validated into its annotation
    (a pydantic model, a dataclass, ``int`` …; none or ``Any`` means as published);
    a parameter named ``topic`` gets the topic. Each message is a turn of the agent,
    queued in its mailbox in publish order. ``overflow`` says what a full mailbox
    does: ``"backpressure"`` (the publisher waits) or ``"drop"`` (to the dead
    letters). Stack the decorator to subscribe one method to several patterns.

    Example::

        class Trader(am.Agent):
            @am.subscribe("market.*.ticks")
            async def on_tick(self, tick: Tick, topic: str) -> None: ...
    """
    check_pattern(pattern)
    check_overflow(overflow)

    def mark(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@subscribe needs an async def method, got {func!r}")
        marks = [*getattr(func, MARK, ()), (pattern, overflow)]
        setattr(func, MARK, marks)
        return func

    return mark


def decorated_handlers(cls: type) -> list[tuple[str, str, Overflow]]:
    """(method name, pattern, overflow) for each ``@subscribe`` of ``cls``: found once
    per class and kept in its own ``__dict__`` (a spawn asks: a dict lookup)."""
    found: list[tuple[str, str, Overflow]] | None = cls.__dict__.get("_am_topic_handlers")
    if found is None:
        found = []
        for name in dir(cls):
            attr = inspect.getattr_static(cls, name, None)
            for pattern, overflow in getattr(attr, MARK, ()):
                found.append((name, pattern, overflow))
        type.__setattr__(cls, "_am_topic_handlers", found)
    return found

"""Timers of agents (`Agent.every`, `Agent.after`): ticks that arrive as messages.

A tick is a tell to the agent itself, queued in its mailbox like any message, so it
takes its turn. Timers belong to one instance of an agent: they end with it (a stop,
a crash, a restart), and a restarted instance arms its own in ``on_start``. A node
keeps its agents' timers by agent id, so an agent with none costs nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .envelope import NO_KWARGS, Envelope, chains
from .errors import AgentUnavailable

if TYPE_CHECKING:
    from .agent import Agent
    from .cell import Cell

__all__ = ["Timer", "bound_handler"]

#: The framework notice a tick travels as (`Agent._am_timer` receives it).
TICK = "!timer"


def bound_handler(agent: Agent, method: Any, what: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``method`` (an ``async def`` method of ``agent``, bound, or its name) as a bound
    method of ``agent``; TypeError otherwise."""
    if isinstance(method, str):
        found = getattr(agent, method, None)
        if found is None:
            raise TypeError(f"{what}: {type(agent).__qualname__} has no method {method!r}")
        method = found
    if getattr(method, "__self__", None) is not agent or not inspect.iscoroutinefunction(method):
        raise TypeError(
            f"{what} takes an 'async def' method of this agent (self.tick) or its name, "
            f"got {method!r}"
        )
    handler: Callable[..., Coroutine[Any, Any, Any]] = method
    return handler


class Timer:
    """A timer of an agent, from ``self.every(...)`` or ``self.after(...)``.

    ``cancel()`` ends it: no tick of it starts after that, not even one already
    queued. It also ends when the agent's instance ends (stop, crash, restart).
    ``skipped`` counts the ticks of an ``every`` timer dropped: the previous tick was
    still waiting in the mailbox (or the mailbox was full), or the event loop was
    held past the tick's time.
    """

    __slots__ = (
        "_args",
        "_cell",
        "_handle",
        "_instance",
        "_kwargs",
        "_method",
        "_queued",
        "_start",
        "_tick",
        "active",
        "period",
        "skipped",
    )

    def __init__(
        self,
        cell: Cell,
        instance: Agent,
        method: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delay: float,
        period: float | None,
    ) -> None:
        self._cell = cell
        self._instance = instance
        self._method = method
        self._args = args
        self._kwargs = kwargs or NO_KWARGS
        #: Seconds between ticks, or None for a one-shot timer (`Agent.after`).
        self.period = period
        #: False once cancelled, ended with its agent's instance, or (one-shot) run.
        self.active = True
        self.skipped = 0
        self._queued = False  # a tick of it waits in the mailbox
        loop = asyncio.get_running_loop()
        self._start = loop.time()
        self._tick = 0  # ticks due so far
        self._handle: asyncio.TimerHandle | None = loop.call_at(self._start + delay, self._fire)

    def cancel(self) -> None:
        """Stop the timer; a tick already queued will not run. Idempotent."""
        if not self.active:
            return
        self.active = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        timers = self._cell.node.timers.get(self._cell.id)
        if timers is not None:
            timers.discard(self)
            if not timers:
                del self._cell.node.timers[self._cell.id]

    def _fire(self) -> None:
        """The loop's callback at a tick's time: queue the tick, arm the next."""
        self._handle = None
        if not self.active:
            return
        cell = self._cell
        if self._queued:
            self.skipped += 1  # the previous tick has not started yet: drop this one
        else:
            env = Envelope(cell.id, TICK, (self,), NO_KWARGS, None, next(chains), cell.id)
            try:
                if cell.offer(env):
                    self._queued = True
                elif self.period is None:
                    cell.spawn_task(self._post(env))  # a one-shot waits for room
                else:
                    self.skipped += 1
            except AgentUnavailable:  # the agent no longer takes messages
                self.cancel()
                return
        if self.period is not None:
            # The next tick after now on the grid start + k * period: no drift, and
            # ticks a blocked loop missed are not made up in a burst.
            loop = asyncio.get_running_loop()
            period = self.period
            due = max(self._tick + 1, math.floor((loop.time() - self._start) / period))
            self.skipped += due - self._tick - 1
            self._tick = due
            self._handle = loop.call_at(self._start + (self._tick + 1) * period, self._fire)

    async def _post(self, env: Envelope) -> None:
        try:
            await self._cell.post(env)
            self._queued = True
        except AgentUnavailable:
            self.cancel()

    def begin(self, instance: Agent) -> Coroutine[Any, Any, Any] | None:
        """A tick's turn starts: the handler's coroutine, or None if the tick is void
        (the timer was cancelled, or belongs to an earlier instance)."""
        if not self.active or instance is not self._instance:
            return None
        self._queued = False
        if self.period is None:
            self.cancel()  # a one-shot timer has done its work
        return self._method(*self._args, **self._kwargs)

    def __repr__(self) -> str:
        what = f"every {self.period:g}s" if self.period is not None else "once"
        state = "active" if self.active else "ended"
        return f"<Timer {self._cell.label}.{self._method.__name__} {what} {state}>"


def end_timers(timers: set[Timer]) -> None:
    """Cancel every timer of an instance that ended."""
    for timer in list(timers):
        timer.cancel()

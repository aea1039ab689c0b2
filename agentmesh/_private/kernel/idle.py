"""Passivation: an agent stopped after a while without messages (virtual agents).

`IdleWatch` looks at the agent's count of handled messages every quarter of
``idle_after``; once it has not moved for ``idle_after`` seconds and the agent is
idle (nothing queued or running, no reminder armed), it sends the agent a
``!passivate`` notice. That notice takes its turn like any message, so it cannot
overtake one: in its turn (`Agent._am_passivate`) the agent, still idle, stops
itself, refusing messages from then on, and saves its ``snapshot()``. So it
passivates between ``idle_after`` and ``1.25 * idle_after`` seconds after its last
message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .envelope import NO_KWARGS, Envelope, chains
from .errors import AgentUnavailable

if TYPE_CHECKING:
    from .cell import Cell

__all__ = ["PASSIVATE", "IdleWatch"]

#: The framework notice that has an idle agent passivate (`Agent._am_passivate`).
PASSIVATE = "!passivate"


class IdleWatch:
    """Watches one agent for ``idle_after`` seconds without messages."""

    __slots__ = ("_cell", "_handle", "_idle_after", "_seen", "_since")

    def __init__(self, cell: Cell, idle_after: float) -> None:
        if not idle_after > 0:
            raise ValueError(f"idle_after must be positive seconds, got {idle_after}")
        self._cell = cell
        self._idle_after = idle_after
        loop = asyncio.get_running_loop()
        self._seen = cell.handled
        self._since = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_later(idle_after / 4, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        cell = self._cell
        loop = asyncio.get_running_loop()
        now = loop.time()
        if cell.handled != self._seen:
            self._seen, self._since = cell.handled, now
        elif now - self._since >= self._idle_after and self._idle(cell):
            env = Envelope(cell.id, PASSIVATE, (self._seen,), NO_KWARGS, None, next(chains), None)
            try:
                cell.offer(env)
            except AgentUnavailable:
                self._handle = None
                return
            self._since = now  # if it stays alive (it was not idle after all), wait again
        self._handle = loop.call_later(self._idle_after / 4, self._check)

    @staticmethod
    def _idle(cell: Cell) -> bool:
        if cell.mailbox or cell.busy() or cell.runner is not None or cell.queued:
            return False
        return not cell.node.reminders.armed(cell)

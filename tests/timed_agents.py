"""Agents with timers, reminders and virtual keys, importable by the daemons the tests
start (their classes travel by reference)."""

from __future__ import annotations

import os
from pathlib import Path

import agentmesh as am


class Ticking(am.Agent):
    """Two timers of the same period: ``tick`` (cancelled on request) and ``control``."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.ticks = 0
        self.controls = 0
        self.timer: am.Timer | None = None

    async def on_start(self) -> None:
        self.timer = self.every(self.period, self.tick)
        self.every(self.period, "control")

    async def tick(self) -> None:
        self.ticks += 1

    async def control(self) -> None:
        self.controls += 1

    async def counts(self) -> tuple[int, int]:
        return self.ticks, self.controls

    async def cancel_tick(self) -> bool:
        assert self.timer is not None
        self.timer.cancel()
        return self.timer.active


class Beating(am.Agent):
    """Registers a durable reminder once (``replace=False``) and reports each firing to
    a `Recorder` with an ask, so a firing is recorded before it counts as done."""

    def __init__(self, recorder: am.AgentRef, period: float) -> None:
        self.recorder = recorder
        self.period = period

    async def on_start(self) -> None:
        await self.remind("beat", due=0.0, period=self.period, missed="all", replace=False)

    async def on_reminder(self, reminder: am.Reminder) -> None:
        await self.recorder.log((reminder.id, reminder.number, self.node))

    async def fail(self) -> None:
        raise RuntimeError("crash on purpose")


class Tally(am.Agent):
    """A virtual agent: a total kept in its snapshot. Each instance built appends a
    line to the file named by ``$TALLY_LOG`` (if set), so tests count constructions
    across processes."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.total = 0
        log = os.environ.get("TALLY_LOG")
        if log:
            with Path(log).open("a") as out:
                out.write(f"{key} {self.node}\n")

    def snapshot(self) -> int:
        return self.total

    def restore(self, state: int) -> None:
        self.total = state

    async def add(self, n: int) -> int:
        self.total += n
        return self.total

    async def where(self) -> tuple[str, str]:
        return self.ref.id, self.node

"""Agent classes of tests/test_metrics.py (a module of their own: the daemons import it)."""

from __future__ import annotations

import asyncio

import agentmesh as am


class Worker(am.Agent):
    """Counts what it handles; a ``boom`` tell crashes it."""

    def __init__(self) -> None:
        self.seen = 0

    async def work(self, n: int) -> int:
        self.seen += 1
        return n

    async def note(self, n: int) -> None:
        self.seen += 1

    async def boom(self) -> None:
        raise RuntimeError("boom, on purpose")

    async def count(self) -> int:
        return self.seen


class Napper(am.Agent):
    """A handler that suspends (awaits), so its turn is not over in one step."""

    async def nap(self) -> None:
        await asyncio.sleep(0)


class Holder(am.Agent):
    """Holds its turn until the test opens the gate (in-process only: events by reference)."""

    async def hold(self, entered: asyncio.Event, gate: asyncio.Event) -> None:
        entered.set()
        await gate.wait()

    async def note(self, n: int) -> None:
        pass

    async def done(self) -> bool:
        return True


class Sink(am.Agent):
    """Takes tells and does nothing with them."""

    async def take(self, n: int) -> None:
        pass


class Flooder(am.Agent):
    """Tells ``count`` messages to ``sink`` in one turn, as fast as flow control lets it."""

    async def flood(self, sink: am.AgentRef, count: int) -> int:
        for i in range(count):
            await sink.take.tell(i)
        return count

"""Event-driven simulation on a virtual clock.

`run_virtual` runs a coroutine on an asyncio event loop whose clock is virtual: when
every task is blocked (nothing ready to run, no I/O), the loop does not wait for the
next timer, it jumps its clock to it. So ``await asyncio.sleep(dt)`` in an agent, a
`SimAgent.schedule`d event, an ask's timeout — everything timed — runs on simulated
time, as fast as the CPU allows; and since time moves only when all agents are idle,
and asyncio runs ready callbacks first in, first out, a run is a deterministic
function of its inputs: it replays exactly.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..kernel.agent import Agent

__all__ = ["SimAgent", "VirtualClockLoop", "now", "run_virtual", "sleep_until"]

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """A selector whose waits move the loop's virtual clock instead of blocking."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)  # wake-ups from other threads still get through
        if ready or timeout is None or timeout <= 0:
            if not ready and timeout is None:
                return super().select(None)  # no timer at all: only a thread can wake us
            return ready
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: `time` starts at ``start`` and moves only when
    the loop would otherwise sleep, straight to the next timer."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (the loop does this when idle)."""
        self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``main`` to completion on a `VirtualClockLoop` and return its result.

    Like `asyncio.run` (and `agentmesh.run`): a fresh loop, closed afterwards. Inside,
    ``asyncio.sleep``, timeouts and `now` use simulated seconds from ``start``; work
    between waits takes no simulated time. Keep the run free of threads and real I/O
    (a thread's callback lands whenever the thread finishes, which breaks replay).
    Event-driven runs are for one process: the embedded `Mesh`.
    """
    with asyncio.Runner(loop_factory=lambda: VirtualClockLoop(start)) as runner:
        return runner.run(main)


def now() -> float:
    """The running loop's clock: simulated seconds inside `run_virtual`."""
    return asyncio.get_running_loop().time()


async def sleep_until(when: float) -> None:
    """Wait until the loop's clock reads ``when`` (at once if it is past)."""
    await asyncio.sleep(max(0.0, when - now()))


class SimAgent(Agent):
    """An agent for event-driven simulations: `now`, `sleep` and `schedule`.

    They work on any loop — on `run_virtual`'s they are simulated time. ``sleep`` and
    ``schedule`` are plain methods (not messages others can call).

    Example::

        class Ticker(sim.SimAgent):
            async def on_start(self) -> None:
                self.schedule(1.0, "tick")

            async def tick(self) -> None:
                await self.publish("ticks", self.now)
                self.schedule(1.0, "tick")
    """

    @property
    def now(self) -> float:
        """The loop's clock, in (simulated) seconds."""
        return asyncio.get_running_loop().time()

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """``await self.sleep(dt)``: wait ``dt`` seconds, holding this agent's turn."""
        return asyncio.sleep(seconds)

    def schedule(self, delay: float, method: str, *args: Any) -> asyncio.TimerHandle:
        """Tell this agent ``method(*args)`` after ``delay`` seconds (an event: it
        takes its turn like any message). Returns a handle to ``cancel()`` it."""
        target = self.ref[method]
        return asyncio.get_running_loop().call_later(delay, _tell, target, args)


def _tell(target: Any, args: tuple[Any, ...]) -> None:
    target.tell_nowait(*args)

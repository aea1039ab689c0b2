"""Agent classes of the streaming and cancellation tests (importable by a node in
another process, as the ``process`` world needs)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pydantic

import agentmesh as am


class Prompt(pydantic.BaseModel):
    text: str
    repeat: int = 1


class Echoer(am.Agent):
    """A streaming method whose argument is validated (a pydantic model)."""

    async def echo(self, prompt: Prompt) -> AsyncIterator[str]:
        for _ in range(prompt.repeat):
            yield prompt.text


class Writer(am.Agent):
    """Streaming methods that say what became of them: ``yielded`` counts the items
    made, ``events`` how each generator ended."""

    def __init__(self) -> None:
        self.yielded = 0
        self.events: list[str] = []
        self.gate = asyncio.Event()
        self.plain_calls = 0

    def _ended(self, label: str) -> None:
        self.events.append(label)

    async def count(self, n: int, prefix: str = "t") -> AsyncIterator[str]:
        for i in range(n):
            self.yielded += 1
            yield f"{prefix}{i}"

    async def forever(self) -> AsyncIterator[int]:
        """Numbers without end, never awaiting: it waits only at its yield."""
        i = 0
        try:
            while True:
                self.yielded += 1
                yield i
                i += 1
        except GeneratorExit:
            self._ended("closed at yield")
            raise
        finally:
            self._ended("finally")

    async def stalled(self) -> AsyncIterator[str]:
        """One item, then a wait at the gate (a slow model), then another."""
        try:
            self.yielded += 1
            yield "first"
            await self.gate.wait()
            self.yielded += 1
            yield "second"
        except asyncio.CancelledError:
            self._ended("cancelled at await")
            raise
        finally:
            self._ended("finally")

    async def then_fail(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise ValueError(f"failed after {n}")

    async def unsendable(self) -> AsyncIterator[Any]:
        try:
            yield 1
            yield threading.Lock()  # cannot be pickled
            yield 3
        finally:
            self._ended("finally")

    async def calls_back(self, caller: am.AgentRef, n: int) -> AsyncIterator[str]:
        """Asks its consumer (an agent) back before each item: reentrancy."""
        for i in range(n):
            yield str(await caller.leaf(i))

    async def plain(self) -> str:
        self.plain_calls += 1
        return "plain"

    async def status(self) -> int:
        return self.yielded

    async def ended(self) -> list[str]:
        return self.events


class Reader(am.Agent):
    """Consumes another agent's stream inside its own turn."""

    async def collect(self, writer: am.AgentRef, n: int) -> list[str]:
        return [item async for item in writer.calls_back.stream(self.ref, n, window=2)]

    async def leaf(self, i: int) -> str:
        return f"leaf{i}"


class Worker(am.Agent):
    """Handlers that wait at the gate and say how they ended (cancellation tests)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started: list[str] = []
        self.events: list[str] = []
        self.running = 0

    async def wait(self, label: str) -> str:
        self.started.append(label)
        self.running += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.events.append(f"{label} cancelled")
            raise
        finally:
            self.running -= 1
            self.events.append(f"{label} finally")
        return label

    async def stubborn(self, label: str) -> str:
        """Swallows the cancel and answers anyway (nobody hears it)."""
        self.started.append(label)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.events.append(f"{label} ignored the cancel")
        return label

    async def relay(self, other: am.AgentRef, label: str) -> str:
        """Asks ``other`` to wait: cancelling this cancels that too."""
        self.started.append(label)
        try:
            answer: str = await other.wait(label)
        finally:
            self.events.append(f"{label} relay finally")
        return answer

    async def note(self, label: str) -> None:
        self.events.append(label)

    async def timed(self, seconds: float) -> str:
        """``asyncio.timeout`` in a handler: works as ever after a cancelled turn."""
        try:
            async with asyncio.timeout(seconds):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "never"

    async def log(self) -> list[str]:
        return self.events

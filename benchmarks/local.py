"""agentmesh workloads on the embedded default (one node, in-process)."""

from __future__ import annotations

import time

import agentmesh as am


class Counting(am.Agent):
    """Savina "Counting": one agent receives n increments, then reports the total."""

    def __init__(self) -> None:
        self.total = 0

    async def increment(self, n: int) -> None:
        self.total += n

    async def value(self) -> int:
        return self.total


class Echo(am.Agent):
    async def echo(self, x: int) -> int:
        return x


class Idle(am.Agent):
    def __init__(self, index: int) -> None:
        self.index = index

    async def poke(self) -> int:
        return self.index


class Subscriber(am.Agent):
    def __init__(self) -> None:
        self.received = 0

    @am.subscribe("bench.fanout")
    async def on_item(self, item: int) -> None:
        self.received += 1

    async def count(self) -> int:
        return self.received


async def fan_out(subscribers: int, messages: int) -> float:
    """Seconds for a driver to publish ``messages`` on a topic with ``subscribers``
    agent subscribers, until every subscriber has handled every message."""
    async with am.Mesh() as mesh:
        subs = [await mesh.spawn(Subscriber) for _ in range(subscribers)]
        start = time.perf_counter()
        for i in range(messages):
            await mesh.publish("bench.fanout", i)
        counts = [await s.count() for s in subs]
        elapsed = time.perf_counter() - start
    assert counts == [messages] * subscribers, counts
    return elapsed


async def tell_throughput(n: int) -> float:
    """Seconds for a driver to tell ``n`` increments to one agent and see them counted."""
    async with am.Mesh() as mesh:
        return await timed_tells(await mesh.spawn(Counting), n)


async def timed_tells(counter: am.AgentRef, n: int) -> float:
    """Seconds to tell ``n`` increments to a fresh `Counting` agent and see them all
    counted (the final ask waits behind them)."""
    start = time.perf_counter()
    for _ in range(n):
        await counter.increment.tell(1)
    total = await counter.value()
    elapsed = time.perf_counter() - start
    assert total == n, (total, n)
    return elapsed


async def ask_latencies(n: int) -> list[float]:
    """Latency in seconds of ``n`` sequential asks from a driver to one agent."""
    async with am.Mesh() as mesh:
        echo = await mesh.spawn(Echo)
        await echo.echo(0)  # warm up
        samples = []
        for i in range(n):
            start = time.perf_counter()
            await echo.echo(i)
            samples.append(time.perf_counter() - start)
    return samples


async def timed_asks(echo: am.AgentRef, n: int, outstanding: int) -> float:
    """Seconds for ``n`` asks to ``echo`` with at most ``outstanding`` in flight."""
    import asyncio

    room = asyncio.Semaphore(outstanding)

    async def one(i: int) -> None:
        async with room:
            await echo.echo(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start


async def ask_throughput(n: int, outstanding: int) -> float:
    """Seconds for ``n`` asks to one agent with at most ``outstanding`` in flight."""
    async with am.Mesh() as mesh:
        echo = await mesh.spawn(Echo, concurrency=outstanding, mailbox_size=outstanding)
        return await timed_asks(echo, n, outstanding)


async def idle_agents(n: int) -> int:
    """Spawn ``n`` agents that then sit idle; return their count (memory is measured
    by the caller, in a fresh process)."""
    async with am.Mesh() as mesh:
        refs = [await mesh.spawn(Idle, i) for i in range(n)]
        assert await refs[-1].poke() == n - 1
        return len(mesh._node.cells)

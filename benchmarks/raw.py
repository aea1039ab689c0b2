"""Raw limits of this machine for local delivery: plain asyncio queues, no framework."""

from __future__ import annotations

import asyncio
import time


async def queue_throughput(n: int, maxsize: int) -> float:
    """Seconds for one producer to pass ``n`` items to a consumer task through a
    bounded asyncio.Queue (the same bound as an agent's default mailbox)."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def consumer() -> None:
        total = 0
        while total < n:
            total += await queue.get()
        done.set_result(total)

    task = asyncio.create_task(consumer())
    start = time.perf_counter()
    for _ in range(n):
        await queue.put(1)
    await done
    elapsed = time.perf_counter() - start
    await task
    return elapsed


async def queue_fan_out(subscribers: int, messages: int, maxsize: int) -> float:
    """Seconds for one producer to put ``messages`` items into each of
    ``subscribers`` bounded queues, each drained by its own consumer task."""
    queues: list[asyncio.Queue[int]] = [asyncio.Queue(maxsize) for _ in range(subscribers)]

    async def consumer(queue: asyncio.Queue[int]) -> None:
        for _ in range(messages):
            await queue.get()

    tasks = [asyncio.create_task(consumer(q)) for q in queues]
    start = time.perf_counter()
    for i in range(messages):
        for queue in queues:
            await queue.put(i)
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


async def queue_round_trips(n: int) -> list[float]:
    """Latency in seconds of ``n`` sequential round trips: a request through an
    asyncio.Queue to a server task, answered through a future."""
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[asyncio.Future[int] | None] = asyncio.Queue()

    async def server() -> None:
        while (fut := await requests.get()) is not None:
            fut.set_result(1)

    task = asyncio.create_task(server())
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fut: asyncio.Future[int] = loop.create_future()
        requests.put_nowait(fut)
        await fut
        samples.append(time.perf_counter() - start)
    requests.put_nowait(None)
    await task
    return samples

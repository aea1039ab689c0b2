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


async def queue_requests(n: int, outstanding: int) -> float:
    """Seconds for ``n`` requests to one server task through a queue, answered through
    futures, with at most ``outstanding`` in flight."""
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[asyncio.Future[int] | None] = asyncio.Queue()

    async def server() -> None:
        while (fut := await requests.get()) is not None:
            fut.set_result(1)

    task = asyncio.create_task(server())
    room = asyncio.Semaphore(outstanding)

    async def one() -> None:
        async with room:
            fut: asyncio.Future[int] = loop.create_future()
            requests.put_nowait(fut)
            await fut

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - start
    requests.put_nowait(None)
    await task
    return elapsed


async def queue_ping_pong(rounds: int) -> float:
    """Two tasks passing a counter back and forth through two queues."""
    a: asyncio.Queue[int] = asyncio.Queue()
    b: asyncio.Queue[int] = asyncio.Queue()

    async def ponger() -> None:
        while (n := await a.get()) > 0:
            b.put_nowait(n)
        b.put_nowait(0)

    task = asyncio.create_task(ponger())
    start = time.perf_counter()
    for n in range(rounds, 0, -1):
        a.put_nowait(n)
        await b.get()
    elapsed = time.perf_counter() - start
    a.put_nowait(0)
    await task
    return elapsed


async def queue_ring(tasks: int, hops: int) -> float:
    """A token passed ``hops`` times around a ring of tasks, one queue each."""
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(tasks)]
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def link(i: int) -> None:
        inbox, outbox = queues[i], queues[(i + 1) % tasks]
        while (left := await inbox.get()) >= 0:
            if left == 0:
                done.set_result(0)
            else:
                outbox.put_nowait(left - 1)

    workers = [asyncio.create_task(link(i)) for i in range(tasks)]
    start = time.perf_counter()
    queues[0].put_nowait(hops)
    await done
    elapsed = time.perf_counter() - start
    for q in queues:
        q.put_nowait(-1)
    await asyncio.gather(*workers)
    return elapsed


async def task_fork_join(tasks: int) -> float:
    """Create ``tasks`` tasks, each answering one request through a future."""
    loop = asyncio.get_running_loop()

    async def leaf(request: asyncio.Queue[asyncio.Future[int]]) -> None:
        (await request.get()).set_result(1)

    start = time.perf_counter()
    inboxes: list[asyncio.Queue[asyncio.Future[int]]] = []
    workers = []
    for _ in range(tasks):
        inbox: asyncio.Queue[asyncio.Future[int]] = asyncio.Queue()
        inboxes.append(inbox)
        workers.append(asyncio.create_task(leaf(inbox)))
    answers = []
    for inbox in inboxes:
        fut: asyncio.Future[int] = loop.create_future()
        inbox.put_nowait(fut)
        answers.append(fut)
    total = sum(await asyncio.gather(*answers))
    elapsed = time.perf_counter() - start
    await asyncio.gather(*workers)
    assert total == tasks
    return elapsed


async def queue_big(tasks: int, pings: int) -> float:
    """Savina Big with tasks and queues: random pings, each answered by a pong."""
    import random

    inboxes: list[asyncio.Queue[tuple[str, int]]] = [asyncio.Queue() for _ in range(tasks)]
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    left = [tasks * pings]

    async def peer(i: int) -> None:
        rng = random.Random(i)
        for _ in range(pings):
            inboxes[rng.randrange(tasks)].put_nowait(("ping", i))
        while True:
            kind, sender = await inboxes[i].get()
            if kind == "stop":
                return
            if kind == "ping":
                inboxes[sender].put_nowait(("pong", i))
            else:
                left[0] -= 1
                if left[0] == 0:
                    done.set_result(0)

    start = time.perf_counter()
    workers = [asyncio.create_task(peer(i)) for i in range(tasks)]
    await done
    elapsed = time.perf_counter() - start
    for inbox in inboxes:
        inbox.put_nowait(("stop", 0))
    await asyncio.gather(*workers)
    return elapsed

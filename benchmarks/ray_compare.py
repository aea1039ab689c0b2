"""Ray equivalents of agentmesh workloads, run only when Ray is installed
(``pip install 'agentmesh[ray]'``) and asked for (``python -m benchmarks --ray``).

Every Ray actor is a worker process of its own, so each workload here crosses a process
boundary like agentmesh's cross-node workloads, and is compared with the same raw
grpc.aio limits. Each function is synchronous (Ray's driver API is) and returns seconds
(or latency samples); actors are created outside the timed part unless creating them is
the workload, and killed afterwards. `start` initializes Ray once per process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

ray: Any
try:
    import ray as _ray
except ImportError:  # an optional extra, never a dependency
    ray = None
else:
    ray = _ray


def available() -> bool:
    return ray is not None


@functools.cache
def start() -> None:
    """``ray.init`` once: 2 CPUs, no dashboard, quiet (its startup takes seconds)."""
    assert ray is not None, "Ray is not installed: pip install 'agentmesh[ray]'"
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)


def stop() -> None:
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@functools.cache
def _actor(cls: type) -> Any:
    start()
    assert ray is not None
    return ray.remote(cls)


def _kill(*actors: Any) -> None:
    assert ray is not None
    for actor in actors:
        ray.kill(actor)


class Echo:
    def echo(self, x: int) -> int:
        return x


class Counting:
    def __init__(self) -> None:
        self.total = 0

    def increment(self, n: int) -> None:
        self.total += n

    def value(self) -> int:
        return self.total


class Leaf:
    def answer(self) -> int:
        return 1


class Subscriber:
    def __init__(self) -> None:
        self.received = 0

    def on_item(self, item: int) -> None:
        self.received += 1

    def count(self) -> int:
        return self.received


class Pinger:
    """Async actor: ``run`` waits while ``pong`` calls come in (Savina PingPong)."""

    async def run(self, ponger: Any, rounds: int) -> None:
        assert ray is not None
        self.left = rounds
        self.ponger = ponger
        self.me = ray.get_runtime_context().current_actor
        self.done = asyncio.Event()
        ponger.ping.remote(self.me)
        await self.done.wait()

    async def pong(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()
        else:
            self.ponger.ping.remote(self.me)

    async def ready(self) -> None:
        pass


class Ponger:
    async def ping(self, pinger: Any) -> None:
        pinger.pong.remote()

    async def ready(self) -> None:
        pass


def ask_latencies(n: int) -> list[float]:
    """Sequential ``ray.get(actor.echo.remote(i))`` from the driver."""
    assert ray is not None
    echo = _actor(Echo).remote()
    ray.get(echo.echo.remote(0))
    samples = []
    for i in range(n):
        begin = time.perf_counter()
        ray.get(echo.echo.remote(i))
        samples.append(time.perf_counter() - begin)
    _kill(echo)
    return samples


def ask_throughput(n: int, outstanding: int) -> float:
    """``n`` calls to one actor with at most ``outstanding`` in flight (a window kept
    full with ``ray.wait``, which frees a tenth of it at a time)."""
    assert ray is not None
    echo = _actor(Echo).remote()
    ray.get(echo.echo.remote(0))
    step = max(1, outstanding // 10)
    begin = time.perf_counter()
    pending: list[Any] = []
    for i in range(n):
        if len(pending) >= outstanding:
            ready, pending = ray.wait(pending, num_returns=step)
            ray.get(ready)
        pending.append(echo.echo.remote(i))
    ray.get(pending)
    elapsed = time.perf_counter() - begin
    _kill(echo)
    return elapsed


def tell_throughput(n: int) -> float:
    """Fire-and-forget ``counter.increment.remote(1)``, then one final ``ray.get``."""
    assert ray is not None
    counter = _actor(Counting).remote()
    ray.get(counter.value.remote())
    begin = time.perf_counter()
    for _ in range(n):
        counter.increment.remote(1)
    total = ray.get(counter.value.remote())
    elapsed = time.perf_counter() - begin
    _kill(counter)
    assert total == n, (total, n)
    return elapsed


def ping_pong(rounds: int) -> float:
    """PingPong between two async actors, each in its own process."""
    assert ray is not None
    pinger, ponger = _actor(Pinger).remote(), _actor(Ponger).remote()
    ray.get([pinger.ready.remote(), ponger.ready.remote()])
    begin = time.perf_counter()
    ray.get(pinger.run.remote(ponger, rounds))
    elapsed = time.perf_counter() - begin
    _kill(pinger, ponger)
    return elapsed


def fork_join(actors: int) -> float:
    """Create ``actors`` actors and call each once."""
    assert ray is not None
    leaf = _actor(Leaf)
    begin = time.perf_counter()
    leaves = [leaf.remote() for _ in range(actors)]
    total = sum(ray.get([x.answer.remote() for x in leaves]))
    elapsed = time.perf_counter() - begin
    _kill(*leaves)
    assert total == actors, total
    return elapsed


def fan_out(subscribers: int, messages: int) -> float:
    """The driver calls ``on_item.remote(i)`` on each of ``subscribers`` actors for
    each message (Ray has no topics), then asks each for its count: calls from one
    caller run in order, so the counts come back after the last item."""
    assert ray is not None
    subs = [_actor(Subscriber).remote() for _ in range(subscribers)]
    ray.get([s.count.remote() for s in subs])
    begin = time.perf_counter()
    for i in range(messages):
        for sub in subs:
            sub.on_item.remote(i)
    counts = ray.get([s.count.remote() for s in subs])
    elapsed = time.perf_counter() - begin
    _kill(*subs)
    assert counts == [messages] * subscribers, counts
    return elapsed

"""Pub/sub fan-out across nodes: the driver publishes here, the subscribers live in
another node process; and its raw limit between the same two kinds of process.

A publication crosses the wire once per interested node and fans out to the
subscribers there, so the raw limit does the same work without a framework: a
grpc.aio bidi stream carries each message once (100 to a write), and the server fans
each out to one bounded `asyncio.Queue` per subscriber, drained by its own task.

``python -m benchmarks.remote_fanout serve`` runs that raw server.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

import agentmesh as am

from .remote import _IDENTITY, _far_node, _process, serve_raw

TOPIC = "bench.remote.fanout"


class Collector(am.Agent):
    """On the driver's node: resolves ``done`` once every subscriber reported."""

    def __init__(self, subscribers: int, done: asyncio.Future[float]) -> None:
        self.left = subscribers
        self.done = done

    async def finished(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set_result(time.perf_counter())


class FarSubscriber(am.Agent):
    """Counts the messages it receives; the last one expected tells the collector."""

    def __init__(self, expected: int, collector: am.AgentRef) -> None:
        self.expected = expected
        self.received = 0
        self.collector = collector

    @am.subscribe(TOPIC)
    async def on_item(self, item: int) -> None:
        self.received += 1
        if self.received == self.expected:
            await self.collector.finished.tell()


async def fan_out(subscribers: int, messages: int) -> float:
    """Seconds for a driver to publish ``messages`` on a topic whose ``subscribers``
    agent subscribers all live in another node process, until every subscriber has
    handled every message (each tells a collector here when its count is complete)."""
    async with _far_node() as (mesh, head):
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        collector = await mesh.spawn(Collector, subscribers, done, node=mesh.node_id)
        for _ in range(subscribers):
            await mesh.spawn(FarSubscriber, messages, collector, node=head)
        start = time.perf_counter()
        for i in range(messages):
            await mesh.publish(TOPIC, i)
        end = await asyncio.wait_for(done, 600)
    return end - start


# -- the raw limit: one stream across, then asyncio queues ------------------------------


async def _serve_raw() -> None:
    async def fan(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """The first message says how many subscribers and messages; then batches of
        newline-terminated messages, each put into every subscriber's queue; answers
        once every consumer has drained all of them."""
        header = await anext(aiter(requests))
        subscribers, messages, maxsize = map(int, header.split())
        queues: list[asyncio.Queue[bytes]] = [asyncio.Queue(maxsize) for _ in range(subscribers)]

        async def consumer(queue: asyncio.Queue[bytes]) -> None:
            for _ in range(messages):
                await queue.get()

        tasks = [asyncio.create_task(consumer(q)) for q in queues]
        async for batch in requests:
            for item in batch.splitlines():
                for queue in queues:
                    await queue.put(item)
        await asyncio.gather(*tasks)
        yield b"done"

    await serve_raw({"Fan": grpc.stream_stream_rpc_method_handler(fan, *_IDENTITY)})


async def raw_fan_out(subscribers: int, messages: int, per_write: int, maxsize: int) -> float:
    """Seconds to stream ``messages`` small messages to another process, ``per_write``
    to a write, where each is put into ``subscribers`` bounded queues drained by one
    task each, until every consumer has all of them."""
    async with (
        _process("-m", "benchmarks.remote_fanout", "serve") as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        call = channel.stream_stream("/raw.Raw/Fan", *_IDENTITY)()
        await call.write(b"%d %d %d" % (subscribers, messages, maxsize))
        start = time.perf_counter()
        for i in range(0, messages, per_write):
            await call.write(b"".join(b"%d\n" % j for j in range(i, min(messages, i + per_write))))
        await call.done_writing()
        answer = await call.read()
        elapsed = time.perf_counter() - start
    assert answer == b"done", answer
    return elapsed


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    am.run(_serve_raw())

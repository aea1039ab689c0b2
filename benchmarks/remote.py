"""Cross-node workloads: this process is a driver, the agents live in another node
process on loopback; and the raw gRPC limits between the same two kinds of process.

``python -m benchmarks.remote serve`` runs the raw grpc.aio server (unary echo, and a
bidi stream that acknowledges what it received).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

import agentmesh as am

from .local import Counting, Echo, timed_asks, timed_tells
from .savina import Pinger, Ponger

ROOT = Path(__file__).resolve().parent.parent
_IDENTITY = (lambda b: b, lambda b: b)


# -- the raw limit: grpc.aio with no framework ------------------------------------------


async def _serve_raw() -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def sink(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        count = 0
        async for batch in requests:
            count += batch.count(b"\n") or 1
            if batch.endswith(b"!"):
                yield str(count).encode()

    async def pong(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message

    await serve_raw(
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, *_IDENTITY),
            "Sink": grpc.stream_stream_rpc_method_handler(sink, *_IDENTITY),
            "Pong": grpc.stream_stream_rpc_method_handler(pong, *_IDENTITY),
        }
    )


async def serve_raw(methods: dict[str, grpc.RpcMethodHandler]) -> None:
    """Serve ``methods`` as the service ``raw.Raw`` on a free loopback port; print the
    address first (what `_process` reads), then serve until terminated."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("raw.Raw", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


@asynccontextmanager
async def _process(*args: str) -> AsyncIterator[str]:
    """Run a server process; yield the address it prints first; always stop it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        yield line.decode().strip()
    finally:
        process.terminate()
        await process.wait()


async def raw_unary_latencies(n: int) -> list[float]:
    async with (
        _process("-m", "benchmarks.remote", "serve") as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        echo = channel.unary_unary("/raw.Raw/Echo", *_IDENTITY)
        await echo(b"warm")
        samples = []
        for i in range(n):
            start = time.perf_counter()
            await echo(str(i).encode())
            samples.append(time.perf_counter() - start)
    return samples


async def raw_unary_throughput(n: int, outstanding: int) -> float:
    """Seconds for ``n`` unary calls with at most ``outstanding`` in flight."""
    async with (
        _process("-m", "benchmarks.remote", "serve") as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        echo = channel.unary_unary("/raw.Raw/Echo", *_IDENTITY)
        await echo(b"warm")
        room = asyncio.Semaphore(outstanding)

        async def one(i: int) -> None:
            async with room:
                await echo(str(i).encode())

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start


async def raw_stream_ping_pong(n: int) -> float:
    """Seconds for ``n`` round trips of one message each way on one bidi stream."""
    async with (
        _process("-m", "benchmarks.remote", "serve") as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        call = channel.stream_stream("/raw.Raw/Pong", *_IDENTITY)()
        await call.write(b"warm")
        await call.read()
        start = time.perf_counter()
        for i in range(n):
            await call.write(b"%d" % i)
            await call.read()
        elapsed = time.perf_counter() - start
        await call.done_writing()
    return elapsed


async def raw_stream_seconds(n: int, per_write: int) -> float:
    """Seconds to stream ``n`` small messages, ``per_write`` to a write."""
    async with (
        _process("-m", "benchmarks.remote", "serve") as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        sink = channel.stream_stream("/raw.Raw/Sink", *_IDENTITY)
        call = sink()
        item = b"x" * 40 + b"\n"
        start = time.perf_counter()
        for i in range(0, n, per_write):
            chunk = item * min(per_write, n - i)
            await call.write(chunk + (b"!" if i + per_write >= n else b""))
        count = int(await call.read())
        elapsed = time.perf_counter() - start
        await call.done_writing()
    assert count >= n, (count, n)
    return elapsed


# -- agentmesh between two node processes -----------------------------------------------


@asynccontextmanager
async def _far_node() -> AsyncIterator[tuple[am.Mesh, str]]:
    """A driver mesh joined to a head in another process; yields (driver, head id)."""
    async with (
        _process("-m", "agentmesh", "head", "--listen", "127.0.0.1:0") as address,
        am.Mesh(join=address, ask_timeout=60) as mesh,
    ):
        head = next(n.id for n in await mesh.nodes() if n.role == "head")
        yield mesh, head


async def ask_latencies(n: int) -> list[float]:
    async with _far_node() as (mesh, head):
        echo = await mesh.spawn(Echo, node=head)
        await echo.echo(0)
        samples = []
        for i in range(n):
            start = time.perf_counter()
            await echo.echo(i)
            samples.append(time.perf_counter() - start)
    return samples


async def tell_throughput(n: int) -> float:
    async with _far_node() as (mesh, head):
        counter = await mesh.spawn(Counting, node=head)
        await counter.value()  # connected
        return await timed_tells(counter, n)


class Tally(am.Agent):
    """Hears from each `Share` once it has all its tells; answers `wait` after all
    (which waits beside the `one` notes: two turns at a time)."""

    concurrency = 2

    def __init__(self, shares: int) -> None:
        self.left = shares
        self.all_in = asyncio.Event()

    async def one(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.all_in.set()

    async def wait(self) -> bool:
        await self.all_in.wait()
        return True


class Share(am.Agent):
    """One of many tell targets: counts down its quota, then tells the tally."""

    def __init__(self, quota: int, tally: am.AgentRef) -> None:
        self.left = quota
        self.tally = tally

    async def increment(self, n: int) -> None:
        self.left -= 1
        if self.left == 0:
            await self.tally.one.tell()


class Spawner(am.Agent):
    """Starts agents on its own node (setup, not timed: one round trip for all)."""

    async def shares(self, count: int, quota: int) -> tuple[am.AgentRef, list[am.AgentRef]]:
        tally = await self.mesh.spawn(Tally, count)
        return tally, [await self.mesh.spawn(Share, quota, tally) for _ in range(count)]


async def tell_round_robin(n: int, agents: int) -> float:
    """Seconds for ``n`` tells sent round-robin to ``agents`` agents in the other
    process, until the last of them has counted its share."""
    async with _far_node() as (mesh, head):
        spawner = await mesh.spawn(Spawner, node=head)
        tally, shares = await spawner.shares(agents, n // agents + 1)
        for share in shares:  # one untimed tell each: each ref's route is cached
            await share.increment.tell(1)
        start = time.perf_counter()
        for i in range(n // agents * agents):
            await shares[i % agents].increment.tell(1)
        await tally.wait()
        return time.perf_counter() - start


async def ask_throughput(n: int, outstanding: int) -> float:
    async with _far_node() as (mesh, head):
        echo = await mesh.spawn(Echo, node=head, concurrency=outstanding)
        await echo.echo(0)
        return await timed_asks(echo, n, outstanding)


async def ping_pong(rounds: int) -> float:
    """Savina PingPong by tells: the pinger here, the ponger in the other process."""
    async with _far_node() as (mesh, head):
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        pinger = await mesh.spawn(Pinger, rounds, done, node=mesh.node_id)
        ponger = await mesh.spawn(Ponger, node=head)
        start = time.perf_counter()
        await pinger.start.tell(ponger)
        await done
        return time.perf_counter() - start


class Source(am.Agent):
    """Streams items of the raw stream's size (40 bytes)."""

    async def items(self, n: int) -> AsyncIterator[bytes]:
        item = b"x" * 40
        for _ in range(n):
            yield item


async def stream_throughput(n: int, window: int) -> float:
    """Seconds for this process to take ``n`` items an agent in the other process
    streams (``ref.items.stream``), with ``window`` items of credit."""
    async with _far_node() as (mesh, head):
        source = await mesh.spawn(Source, node=head)
        async for _ in source.items.stream(1):  # connected
            pass
        count = 0
        start = time.perf_counter()
        async for _ in source.items.stream(n, window=window):
            count += 1
        elapsed = time.perf_counter() - start
    assert count == n, (count, n)
    return elapsed


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    am.run(_serve_raw())

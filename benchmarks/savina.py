"""Savina actor benchmarks on the embedded default: PingPong, ThreadRing, ForkJoin
(creation), Big. Each returns the seconds its workload took.

Completion is signalled through an `asyncio.Future` handed to the agents, which is
fine on one node (arguments pass by reference there).
"""

from __future__ import annotations

import asyncio
import random
import time

import agentmesh as am


class Pinger(am.Agent):
    def __init__(self, rounds: int, done: asyncio.Future[int]) -> None:
        self.left = rounds
        self.done = done

    async def start(self, ponger: am.AgentRef) -> None:
        await ponger.ping.tell(self.ref)

    async def pong(self, ponger: am.AgentRef) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set_result(0)
        else:
            await ponger.ping.tell(self.ref)


class Ponger(am.Agent):
    async def ping(self, pinger: am.AgentRef) -> None:
        await pinger.pong.tell(self.ref)


async def ping_pong(rounds: int) -> float:
    """``rounds`` ping/pong round trips between two agents, by tells."""
    async with am.Mesh() as mesh:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        pinger = await mesh.spawn(Pinger, rounds, done)
        ponger = await mesh.spawn(Ponger)
        start = time.perf_counter()
        await pinger.start.tell(ponger)
        await done
        return time.perf_counter() - start


class Link(am.Agent):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.next: am.AgentRef | None = None
        self.done = done

    async def connect(self, nxt: am.AgentRef) -> None:
        self.next = nxt

    async def token(self, hops_left: int) -> None:
        if hops_left == 0:
            self.done.set_result(0)
        else:
            assert self.next is not None
            await self.next.token.tell(hops_left - 1)


async def thread_ring(agents: int, hops: int) -> float:
    """A token passed ``hops`` times around a ring of ``agents`` agents."""
    async with am.Mesh() as mesh:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ring = [await mesh.spawn(Link, done) for _ in range(agents)]
        for i, link in enumerate(ring):
            await link.connect(ring[(i + 1) % agents])
        start = time.perf_counter()
        await ring[0].token.tell(hops)
        await done
        return time.perf_counter() - start


class Leaf(am.Agent):
    async def answer(self) -> int:
        return 1


async def fork_join(agents: int) -> float:
    """Create ``agents`` agents and ask each once (Savina's creation benchmark)."""
    async with am.Mesh() as mesh:
        start = time.perf_counter()
        refs = [await mesh.spawn(Leaf) for _ in range(agents)]
        answers = await asyncio.gather(*(ref.answer() for ref in refs))
        elapsed = time.perf_counter() - start
    assert sum(answers) == agents
    return elapsed


class BigPeer(am.Agent):
    def __init__(self, seed: int, pings: int, sink: asyncio.Future[int], left: list[int]) -> None:
        self.rng = random.Random(seed)
        self.pings = pings
        self.sink = sink
        self.left = left  # shared count of pongs still expected
        self.peers: list[am.AgentRef] = []

    async def meet(self, peers: list[am.AgentRef]) -> None:
        self.peers = peers

    async def go(self) -> None:
        for _ in range(self.pings):
            await self.rng.choice(self.peers).ping.tell(self.ref)

    async def ping(self, sender: am.AgentRef) -> None:
        await sender.pong.tell()

    async def pong(self) -> None:
        self.left[0] -= 1
        if self.left[0] == 0:
            self.sink.set_result(0)


async def big(agents: int, pings: int) -> float:
    """Each of ``agents`` agents pings random peers ``pings`` times; each ping is
    answered with a pong."""
    async with am.Mesh() as mesh:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        left = [agents * pings]
        size = 2 * pings + 10  # room for every ping and pong: no backpressure cycle
        peers = [
            await mesh.spawn(BigPeer, i, pings, done, left, mailbox_size=size)
            for i in range(agents)
        ]
        for peer in peers:
            await peer.meet(peers)
        start = time.perf_counter()
        for peer in peers:
            await peer.go.tell()
        await done
        return time.perf_counter() - start

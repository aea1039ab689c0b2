"""Placement workloads: decisions per second against 1,000 synthetic nodes, and the
spawn rate of a driver on a real 3-node loopback cluster, one spawn at a time and in
one `spawn_many` batch.

The decision workload keeps the cluster about half full: every reservation is
released again 2,000 decisions later. Its raw limit is the naive decision (scan every
node, first fit) on the same cluster and the same requests.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import agentmesh as am
from agentmesh._private.kernel.placing import PlacementRequest, make_request
from agentmesh._private.placement.core import NodeView
from agentmesh._private.placement.scheduler import Scheduler

from .local import Echo
from .remote import _process, raw_unary_latencies

ZONES = ("eu", "us", "ap", "sa")
_HELD = 2_000


def _nodes(count: int, rng: random.Random) -> list[NodeView]:
    nodes = []
    for i in range(count):
        total = {"cpu": float(rng.choice([8, 16, 32, 64])), "memory": float(rng.choice([32, 64]))}
        if rng.random() < 0.25:
            total["gpu"] = float(rng.choice([1, 4, 8]))
        if rng.random() < 0.3:
            total["llm_slots"] = 4.0
        labels = {"zone": rng.choice(ZONES)}
        if rng.random() < 0.5:
            labels["tier"] = rng.choice(["fast", "cheap"])
        nodes.append(NodeView(f"n{i:04}", "worker", total, labels))
    return nodes


def _requests(count: int, rng: random.Random) -> list[PlacementRequest]:
    shapes = [
        lambda: make_request({"cpu": rng.choice([0.5, 1, 2])}),
        lambda: make_request({"cpu": 1, "memory": 2}, strategy="spread"),
        lambda: make_request({"gpu": 1}, {"zone": am.In(rng.choice(ZONES), "eu")}),
        lambda: make_request({"cpu": 4}, strategy="pack"),
        lambda: make_request({"llm_slots": 1}, {"tier": am.Exists()}),
        lambda: make_request({"cpu": 1}, {"zone": am.NotIn("ap"), "tier": "fast"}),
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def _fill(count: int, seed: int) -> tuple[Scheduler, list[PlacementRequest]]:
    rng = random.Random(seed)
    scheduler = Scheduler()
    for node in _nodes(count, rng):
        scheduler.node_up(node.id, node.role, node.total, node.labels)
    return scheduler, _requests(4_000, rng)


def decisions(nodes: int, n: int) -> float:
    """Seconds for ``n`` placement decisions (each reserve; releases keep it steady)."""
    scheduler, requests = _fill(nodes, 1)
    held: list[str] = []
    start = time.perf_counter()
    for i in range(n):
        ticket = scheduler.try_reserve(requests[i % len(requests)])
        if ticket is not None:
            held.append(ticket.key)
        if len(held) > _HELD:
            scheduler.release(held.pop(0))
    return time.perf_counter() - start


def naive_decisions(nodes: int, n: int) -> float:
    """The same decisions by scanning every node for the first with room."""
    scheduler, requests = _fill(nodes, 1)
    order = list(scheduler.view.nodes.values())
    held: list[tuple[NodeView, PlacementRequest]] = []
    start = time.perf_counter()
    for i in range(n):
        request = requests[i % len(requests)]
        for node in order:
            labels_ok = all(m.matches(node.labels.get(k)) for k, m in request.labels)
            if labels_ok and node.has_room(request.resources):
                for key, amount in request.resources:
                    node.used[key] = node.used.get(key, 0.0) + amount
                held.append((node, request))
                break
        if len(held) > _HELD:
            node, old = held.pop(0)
            for key, amount in old.resources:
                node.used[key] -= amount
    return time.perf_counter() - start


async def spawn_rate(n: int) -> float:
    """Seconds for a driver to spawn ``n`` agents with resources on a head and two
    worker processes (each spawn: a decision at the head, a start on a worker)."""
    async with _cluster() as mesh:
        start = time.perf_counter()
        for _ in range(n):
            await mesh.spawn(Echo, resources={"cpu": 0.1})
        return time.perf_counter() - start


async def spawn_many_rate(n: int) -> float:
    """Seconds for a driver to spawn ``n`` agents with resources on a head and two
    worker processes in one `spawn_many` (one decision round at the head for all,
    one message to each worker). Not counted: the driver stopping them as it leaves
    (one request to each worker for the batch)."""
    async with _cluster() as mesh:
        start = time.perf_counter()
        refs = await mesh.spawn_many(Echo, [()] * n, resources={"cpu": 0.1})
        elapsed = time.perf_counter() - start
        assert len(refs) == n
        return elapsed


@asynccontextmanager
async def _cluster() -> AsyncIterator[am.Mesh]:
    """A driver joined to a head and two workers (cpu=1000 each), all on loopback."""
    async with AsyncExitStack() as stack:
        head = await stack.enter_async_context(
            _process("-m", "agentmesh", "head", "--listen", "127.0.0.1:0")
        )
        for _ in range(2):
            await stack.enter_async_context(
                _process("-m", "agentmesh", "node", "--join", head, "--resources", "cpu=1000")
            )
        mesh = await stack.enter_async_context(am.Mesh(join=head, ask_timeout=60))
        while len(await mesh.nodes()) < 4:  # the two workers have registered
            await mesh.placement_report()
        yield mesh


async def raw_round_trips(n: int) -> float:
    """Seconds for ``n`` sequential raw grpc.aio unary round trips."""
    return sum(await raw_unary_latencies(n))

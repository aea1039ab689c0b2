"""`Scheduler`: the placement service's state — nodes, reservations, waiting spawns.

It lives on the head (in the embedded mesh, in the mesh itself). Deciding and
reserving happen in one synchronous step, so concurrent spawns never overcommit a
node. A request no node could ever host fails at once; one that only lacks free
capacity waits, in arrival order, until a release or a new node makes room, or until
its timeout. A node that dies takes its reservations with it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from ..kernel.errors import PlacementError
from ..kernel.placing import GangStrategy, PlacementRequest, Ticket, check_gang_strategy
from .core import ClusterView, NodeView, choose, choose_gang, explain, hold, unhold

__all__ = ["DEFAULT_PLACEMENT_TIMEOUT", "LocalPlacer", "Scheduler"]

log = logging.getLogger("agentmesh.placement")

#: Seconds a spawn waits for free capacity before `PlacementError`.
DEFAULT_PLACEMENT_TIMEOUT = 30.0
_REASONS_SHOWN = 8

Resources = tuple[tuple[str, float], ...]


@dataclass
class _Waiter:
    requests: list[PlacementRequest]
    gang: GangStrategy | None
    exclude: frozenset[str]
    future: asyncio.Future[list[Ticket]]
    many: bool = False  # a batch of spawns, each placed by its own strategy


class Scheduler:
    """Chooses nodes and keeps every reservation, atomically."""

    def __init__(self, timeout: float = DEFAULT_PLACEMENT_TIMEOUT) -> None:
        self.timeout = timeout
        self.view = ClusterView()
        self.held: dict[str, tuple[str, Resources]] = {}  # key -> (node, resources)
        self.waiting: list[_Waiter] = []
        #: The latest placements that failed, newest last (status shows them).
        self.failures: collections.deque[str] = collections.deque(maxlen=20)
        self.failed = 0  # placements that failed since it started (metrics)
        self._prefix = secrets.token_hex(3)
        self._keys = itertools.count(1)

    # -- the nodes -------------------------------------------------------------------

    def node_up(
        self,
        node_id: str,
        role: str,
        resources: Mapping[str, float],
        labels: Mapping[str, str],
        held: Mapping[str, Resources] | None = None,
    ) -> None:
        """A node joined (or registered again, with the reservations it holds)."""
        node = self.view.nodes.get(node_id)
        if node is None:
            node = NodeView(node_id, role, dict(resources), dict(labels))
        else:
            node.role, node.total, node.labels = role, dict(resources), dict(labels)
        self.view.add(node)
        for key, amounts in (held or {}).items():
            if key not in self.held:
                self.held[key] = (node_id, tuple(amounts))
                hold(node, amounts)
        self._admit()

    def node_down(self, node_id: str) -> None:
        """A node died or left: it and what was reserved on it are gone."""
        if self.view.remove(node_id) is None:
            return
        for key in [k for k, (n, _) in self.held.items() if n == node_id]:
            del self.held[key]
        self._admit()

    # -- reserving -------------------------------------------------------------------

    def try_reserve(
        self, request: PlacementRequest, exclude: frozenset[str] = frozenset()
    ) -> Ticket | None:
        """Reserve at once if some node has room, else None."""
        node = choose(request, self.view, exclude)
        return None if node is None else self._hold(node, request.resources)

    async def reserve(
        self,
        request: PlacementRequest,
        *,
        exclude: frozenset[str] = frozenset(),
        timeout: float | None = None,
    ) -> Ticket:
        """Reserve on the node ``request`` should go to; wait up to ``timeout`` for
        room; `PlacementError` naming what each node lacks if none will do."""
        ticket = self.try_reserve(request, exclude)
        if ticket is not None:
            return ticket
        never, reasons = explain(request, self.view, exclude)
        if never:
            raise self._failed(f"no node can ever host {request.describe()}", reasons)
        tickets = await self._wait([request], None, exclude, timeout)
        return tickets[0]

    async def reserve_gang(
        self,
        requests: list[PlacementRequest],
        strategy: GangStrategy,
        timeout: float | None = None,
    ) -> list[Ticket]:
        """Reserve for every member of a gang at once, or for none."""
        check_gang_strategy(strategy)
        if not requests:
            return []
        tickets = self._try_gang(requests, strategy)
        if tickets is not None:
            return tickets
        if choose_gang(requests, strategy, self.view, empty=True) is None:
            raise self._failed(
                f"no set of nodes can ever host this gang of {len(requests)} ({strategy})",
                self._capacity(),
            )
        return await self._wait(requests, strategy, frozenset(), timeout)

    async def reserve_many(
        self, requests: list[PlacementRequest], timeout: float | None = None
    ) -> list[Ticket]:
        """Reserve for each of ``requests`` (a batch of spawns: each placed by its own
        strategy, one after the other, seeing those before it) in one step; if they do
        not all fit now, hold nothing and wait up to ``timeout`` until they do.
        `PlacementError` at once if one of them could never be hosted."""
        if not requests:
            return []
        tickets = self._try_many(requests)
        if tickets is not None:
            return tickets
        failure = self._never(requests)
        if failure is not None:
            raise failure
        return await self._wait(requests, None, frozenset(), timeout, many=True)

    def release(self, key: str) -> None:
        """Give back what ``key`` held (idempotent); waiting spawns may now fit."""
        entry = self.held.pop(key, None)
        if entry is None:
            return
        node = self.view.nodes.get(entry[0])
        if node is not None:
            unhold(node, entry[1])
        self._admit()

    # -- inside --------------------------------------------------------------------------

    def _hold(self, node: NodeView, resources: Resources) -> Ticket:
        hold(node, resources)
        key = f"{self._prefix}.{next(self._keys)}"
        self.held[key] = (node.id, resources)
        return Ticket(key, node.id, resources)

    def _never(self, requests: list[PlacementRequest]) -> PlacementError | None:
        """Why no cluster of these nodes, empty, could ever host all of ``requests``
        (one of them fits nowhere, or all together do not fit), or None."""
        for request in dict.fromkeys(requests):  # each shape once
            never, reasons = explain(request, self.view)
            if never:
                return self._failed(f"no node can ever host {request.describe()}", reasons)
        nodes = self.view.nodes.values()
        saved = {n.id: (n.used, n.agents) for n in nodes}
        placed: list[tuple[NodeView, Resources]] = []
        try:
            for node in nodes:
                node.used, node.agents = {}, 0
            for request in requests:
                found = choose(request, self.view)
                if found is None:
                    shapes = {r.describe() for r in requests}
                    asking = f" asking {shapes.pop()} each" if len(shapes) == 1 else ""
                    totals = {
                        n.id: ", ".join(f"{k} {t:g} in all" for k, t in n.total.items())
                        or "no resources"
                        for n in nodes
                        if n.role != "driver"  # hosts only what is sent to it by name
                    }
                    return self._failed(
                        f"no set of nodes can ever host a batch of {len(requests):,} "
                        f"agents{asking} (at most {len(placed):,} fit)",
                        totals,
                    )
                hold(found, request.resources)
                placed.append((found, request.resources))
        finally:
            for node in nodes:
                node.used, node.agents = saved[node.id]
        return None

    def _try_many(self, requests: list[PlacementRequest]) -> list[Ticket] | None:
        """Hold a node for every request, one after the other, or for none."""
        tickets: list[Ticket] = []
        for request in requests:
            node = choose(request, self.view)
            if node is None:
                for ticket in tickets:  # undo, admitting nobody meanwhile
                    self.held.pop(ticket.key)
                    unhold(self.view.nodes[ticket.node], ticket.resources)
                return None
            tickets.append(self._hold(node, request.resources))
        return tickets

    def _try_gang(
        self, requests: list[PlacementRequest], strategy: GangStrategy
    ) -> list[Ticket] | None:
        nodes = choose_gang(requests, strategy, self.view)
        if nodes is None:
            return None
        return [self._hold(n, r.resources) for n, r in zip(nodes, requests, strict=True)]

    async def _wait(
        self,
        requests: list[PlacementRequest],
        gang: GangStrategy | None,
        exclude: frozenset[str],
        timeout: float | None,
        *,
        many: bool = False,
    ) -> list[Ticket]:
        if timeout is None:
            timeout = requests[0].timeout if gang is None else None
        timeout = self.timeout if timeout is None else timeout
        future: asyncio.Future[list[Ticket]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(requests, gang, exclude, future, many)
        self.waiting.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except BaseException as exc:
            if waiter in self.waiting:
                self.waiting.remove(waiter)
            if future.done() and not future.cancelled() and future.exception() is None:
                if isinstance(exc, TimeoutError):
                    return future.result()  # admitted at the last moment
                for ticket in future.result():  # the spawner is gone: give it back
                    self.release(ticket.key)
                raise
            future.cancel()
            if not isinstance(exc, TimeoutError):
                raise
        if many:
            shapes = {r.describe() for r in requests}
            asking = f" asking {shapes.pop()} each" if len(shapes) == 1 else ""
            what = f"a batch of {len(requests):,} agents{asking}"
        else:
            what = requests[0].describe() if gang is None else f"a gang of {len(requests)}"
        one = gang is None and not many
        reasons = explain(requests[0], self.view, exclude)[1] if one else self._capacity()
        raise self._failed(f"no node had room for {what} within {timeout:g}s", reasons)

    def _admit(self) -> None:
        """Give room to waiting spawns in arrival order (one that still does not fit
        does not hold back later ones that do)."""
        for waiter in list(self.waiting):
            if waiter.future.done():
                self.waiting.remove(waiter)
                continue
            if waiter.many:
                found = self._try_many(waiter.requests)
                if found is None:
                    failure = self._never(waiter.requests)
                    if failure is not None:  # its nodes left, say
                        self.waiting.remove(waiter)
                        waiter.future.set_exception(failure)
                    continue
                tickets = found
            elif waiter.gang is None:
                request = waiter.requests[0]
                ticket = self.try_reserve(request, waiter.exclude)
                if ticket is None:
                    never, reasons = explain(request, self.view, waiter.exclude)
                    if never:  # its node left, say
                        self.waiting.remove(waiter)
                        waiter.future.set_exception(
                            self._failed(f"no node can ever host {request.describe()}", reasons)
                        )
                    continue
                tickets = [ticket]
            else:
                found = self._try_gang(waiter.requests, waiter.gang)
                if found is None:
                    continue
                tickets = found
            self.waiting.remove(waiter)
            waiter.future.set_result(tickets)

    def _capacity(self) -> dict[str, str]:
        return {
            n.id: ", ".join(f"{k} {n.free(k):g} free of {t:g}" for k, t in n.total.items())
            or "no resources"
            for n in self.view.nodes.values()
        }

    def _failed(self, summary: str, reasons: dict[str, str]) -> PlacementError:
        roles = {n.id: n.role for n in self.view.nodes.values()}
        by_reason: dict[str, list[str]] = {}
        for node_id, why in reasons.items():
            label = f"{node_id} ({roles[node_id]})" if node_id in roles else node_id
            by_reason.setdefault(why, []).append(label)
        lines = []
        for why, nodes in sorted(by_reason.items(), key=lambda item: -len(item[1])):
            shown = ", ".join(nodes[:_REASONS_SHOWN])
            more = f" and {len(nodes) - _REASONS_SHOWN} more" if len(nodes) > _REASONS_SHOWN else ""
            lines.append(f"  node {shown}{more}: {why}")
        if not reasons:
            lines.append("  (no node in the cluster can host agents)")
        message = summary + ":\n" + "\n".join(lines)
        self.failures.append(message)
        self.failed += 1
        log.info("%s", message)  # the spawner gets it as PlacementError
        return PlacementError(message)


class LocalPlacer:
    """The `Placer` of a node whose scheduler is in the same process (the embedded
    mesh, the head)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def reserve(
        self,
        request: PlacementRequest,
        *,
        exclude: frozenset[str] = frozenset(),
        timeout: float | None = None,
    ) -> Ticket:
        return await self.scheduler.reserve(request, exclude=exclude, timeout=timeout)

    async def reserve_gang(
        self, requests: list[PlacementRequest], strategy: GangStrategy, timeout: float | None
    ) -> list[Ticket]:
        return await self.scheduler.reserve_gang(requests, strategy, timeout)

    async def reserve_many(
        self, requests: list[PlacementRequest], timeout: float | None = None
    ) -> list[Ticket]:
        return await self.scheduler.reserve_many(requests, timeout)

    def release(self, key: str) -> None:
        self.scheduler.release(key)

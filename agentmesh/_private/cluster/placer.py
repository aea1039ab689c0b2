"""Placement in a cluster: `PlacementService`, the head's scheduler as an agent, and
`RemotePlacer`, how any other node asks it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..kernel.agent import Agent
from ..kernel.errors import (
    AgentmeshError,
)
from ..kernel.placing import GangStrategy, PlacementRequest, Ticket
from ..placement.scheduler import Scheduler

if TYPE_CHECKING:
    from .member import Membership

__all__ = ["PlacementService", "RemotePlacer", "placement_id"]

log = logging.getLogger("agentmesh.cluster")


class PlacementService(Agent):
    """The head's placement scheduler, for spawns on other nodes."""

    concurrency = 100_000  # a spawn waiting for room must not hold back the others

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def reserve(
        self, request: PlacementRequest, exclude: frozenset[str], timeout: float
    ) -> Ticket | AgentmeshError:
        try:
            return await self._scheduler.reserve(request, exclude=exclude, timeout=timeout)
        except AgentmeshError as exc:
            return exc

    async def reserve_gang(
        self, requests: list[PlacementRequest], strategy: GangStrategy, timeout: float
    ) -> list[Ticket] | AgentmeshError:
        try:
            return await self._scheduler.reserve_gang(requests, strategy, timeout)
        except AgentmeshError as exc:
            return exc

    async def reserve_many(
        self, requests: list[PlacementRequest], timeout: float
    ) -> list[Ticket] | AgentmeshError:
        try:
            return await self._scheduler.reserve_many(requests, timeout)
        except AgentmeshError as exc:
            return exc

    async def release(self, key: str) -> None:
        self._scheduler.release(key)

    async def report(self) -> tuple[int, list[str]]:
        """(spawns waiting for room, the latest placement failures)."""
        return len(self._scheduler.waiting), list(self._scheduler.failures)


class RemotePlacer:
    """The `Placer` of a node that is not the head: it asks the head's scheduler."""

    def __init__(self, membership: Membership, timeout: float) -> None:
        self.membership = membership
        self.timeout = timeout

    async def reserve(
        self,
        request: PlacementRequest,
        *,
        exclude: frozenset[str] = frozenset(),
        timeout: float | None = None,
    ) -> Ticket:
        timeout = request.timeout if timeout is None else timeout
        timeout = self.timeout if timeout is None else timeout
        outcome = await self.membership.placement_service().reserve.ask(
            request, exclude, timeout, timeout=timeout + _SLACK
        )
        if isinstance(outcome, AgentmeshError):
            raise outcome
        ticket: Ticket = outcome
        return ticket

    async def reserve_gang(
        self, requests: list[PlacementRequest], strategy: GangStrategy, timeout: float | None
    ) -> list[Ticket]:
        timeout = self.timeout if timeout is None else timeout
        outcome = await self.membership.placement_service().reserve_gang.ask(
            requests, strategy, timeout, timeout=timeout + _SLACK
        )
        if isinstance(outcome, AgentmeshError):
            raise outcome
        tickets: list[Ticket] = outcome
        return tickets

    async def reserve_many(
        self, requests: list[PlacementRequest], timeout: float | None = None
    ) -> list[Ticket]:
        if not requests:
            return []
        timeout = requests[0].timeout if timeout is None else timeout
        timeout = self.timeout if timeout is None else timeout
        outcome = await self.membership.placement_service().reserve_many.ask(
            requests, timeout, timeout=timeout + _SLACK
        )
        if isinstance(outcome, AgentmeshError):
            raise outcome
        tickets: list[Ticket] = outcome
        return tickets

    def release(self, key: str) -> None:
        try:
            self.membership.placement_service().release.tell_nowait(key)
        except AgentmeshError as exc:  # the head is away: it rebuilds from registrations
            log.info("could not release reservation %s: %s", key, exc)


_SLACK = 10.0  # seconds an ask to the scheduler may take beyond its own wait


def placement_id(node_id: str) -> str:
    return f"sys.placement.{node_id}"

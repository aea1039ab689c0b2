"""The agents through which other nodes act on this one: `NodeService` (spawn here,
act on supervised children, status, drain) and `SpawnService` (batches of children).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..kernel.agent import Agent
from ..kernel.errors import (
    AgentmeshError,
    AgentUnavailable,
)
from ..kernel.lifecycle import remote_error
from ..kernel.placing import Ticket
from ..kernel.ref import AgentRef
from ..supervision.spec import ChildSpec
from ..supervision.supervisor import Supervisor, claim_batch, start_many_directly
from .remote_child import ChildLink, OrphanGuard, child_op

if TYPE_CHECKING:
    from ..kernel.node import Node
    from .member import Membership

__all__ = ["NodeService", "SpawnService", "service_id", "spawner_id"]

log = logging.getLogger("agentmesh.cluster")


class NodeService(Agent):
    """Acts on its node for others: spawn here, act on children, take interest."""

    def __init__(self, spawn: Callable[..., Any], membership: Membership) -> None:
        self._spawn = spawn
        self._membership = membership

    async def spawn_child(
        self,
        agent_class: Any,
        args: tuple[Any, ...],
        options: dict[str, Any],
        supervisor: AgentRef,
        key: int,
        restart: str,
    ) -> AgentRef | AgentmeshError:
        """Start a child here for a supervisor on another node (see remote_child)."""
        try:
            return await _start_child_here(
                self._am_cell.node, agent_class, args, options, supervisor, key, restart
            )
        except AgentmeshError as exc:
            return exc

    async def child_op(self, agent_id: str, op: str, arg: Any) -> Any:
        """A supervisor elsewhere acts on its child here: stop, suspend, restart, end,
        info."""
        try:
            return await child_op(self._am_cell.node, agent_id, op, arg)
        except AgentmeshError as exc:
            return exc

    async def drain(self) -> None:
        """Someone asked this node to hand its agents over and leave (``agentmesh
        drain``): the program running it hears it through `Mesh.wait_drain_request`."""
        self._membership.drain_requested.set()

    async def ping(self) -> str:
        """Alive? (A new head asks a node it expects but has not heard from.)"""
        return self._am_cell.node.id

    async def interest(self, node_id: str, patterns: frozenset[str]) -> None:
        """Node ``node_id``'s subscribers now hold ``patterns``."""
        self._membership.apply_interest(node_id, patterns)

    async def spawn(self, spec: ChildSpec, ticket: Ticket | None) -> AgentRef | AgentmeshError:
        """Start ``spec`` here, a child of this node's root, holding the resources of
        ``ticket`` (the class may come pickled by value).

        A typed failure (NameTaken, SpawnError ...) is returned, not raised, so the
        spawner can raise it as it is rather than wrapped in a RemoteError.
        """
        try:
            ref: AgentRef = await self._spawn(spec, None, ticket)
        except AgentmeshError as exc:
            return exc
        return ref


async def _start_child_here(
    node: Node,
    agent_class: Any,
    args: tuple[Any, ...],
    options: dict[str, Any],
    supervisor: AgentRef,
    key: int,
    restart: str,
) -> AgentRef:
    ref: AgentRef = await node.spawn(
        agent_class, args, exit_listener=ChildLink(node, supervisor, key, restart), **options
    )
    # As an OTP child is linked to its supervisor: if the supervisor ends for good
    # (its node died, say), the child stops rather than live on unsupervised.
    cell = node.cell_of(ref)
    assert cell is not None
    node.monitor(supervisor, OrphanGuard(cell))
    return ref


#: What a batch spawn answers for each agent: its ref, or why it did not start.
Outcome = AgentRef | Exception


def _sendable(outcome: Outcome, label: str) -> Outcome:
    """An outcome fit for a reply: an error not of ours travels as a `RemoteError`
    (as a single spawn's would)."""
    if isinstance(outcome, AgentRef | AgentmeshError):
        return outcome
    return remote_error(label, outcome)  # type: ignore[no-any-return]


class SpawnService(Agent):
    """Starts batches of agents on its node for other nodes (`Mesh.spawn_many`), each
    batch one request, the agents started one after the other. Batches run side by
    side, and apart from the `NodeService`, which a long batch never holds up."""

    concurrency = 100_000

    def __init__(self, start_many: Callable[..., Any]) -> None:
        self._start_many = start_many

    async def spawn_children(
        self,
        batch: list[tuple[Any, tuple[Any, ...], dict[str, Any], int, str]],
        supervisor: AgentRef,
    ) -> list[Outcome]:
        """Start children here, in order, for a supervisor on another node: each
        entry is (agent class, args, options, child key, restart type); each outcome
        its ref or the error that kept it from starting."""
        node = self._am_cell.node
        bulk = node.claim_names is not None
        outcomes: list[Outcome | None] = []
        for agent_class, args, options, key, restart in batch:
            try:
                outcome: Outcome = await _start_child_here(
                    node,
                    agent_class,
                    args,
                    {**options, "claim_name": not bulk},
                    supervisor,
                    key,
                    restart,
                )
            except Exception as exc:
                outcome = exc
            outcomes.append(outcome)
        claimed = await claim_batch(node, outcomes)
        missing = AgentUnavailable("not started")  # (never: every entry has an outcome)
        return [
            _sendable(missing if o is None else o, entry[2].get("name") or "a batch child")
            for o, entry in zip(claimed, batch, strict=True)
        ]

    async def stop_children(self, agent_ids: list[str], timeouts: list[float]) -> None:
        """Stop these children of supervisors elsewhere, in this order (a batch's
        share of this node, stopped by its supervisor)."""
        node = self._am_cell.node
        for agent_id, timeout in zip(agent_ids, timeouts, strict=True):
            await child_op(node, agent_id, "stop", timeout)

    async def spawn_many(self, specs: list[ChildSpec], tickets: list[Ticket | None]) -> Any:
        """Start ``specs`` here, children of this node's root, each holding its ticket's
        resources (detached agents of a batch)."""
        try:
            outcomes: list[Outcome] = await self._start_many(specs, tickets)
        except AgentmeshError as exc:  # raised as it is at the spawner
            return exc
        return [_sendable(o, s.name or s.class_name) for o, s in zip(outcomes, specs, strict=True)]

    async def start_children(self, supervisor: str, specs: list[ChildSpec]) -> Any:
        """Start ``specs`` as children of the supervisor ``supervisor`` (an agent id)
        here, placed as its children are."""
        node = self._am_cell.node
        cell = node.cells.get(supervisor)
        instance = None if cell is None else cell.instance
        if not isinstance(instance, Supervisor):
            return AgentUnavailable(f"no live supervisor {supervisor} on node {node.id}")
        try:
            outcomes = await start_many_directly(instance, specs)
        except AgentmeshError as exc:  # PlacementError ...: raised as it is at the spawner
            return exc
        return [_sendable(o, s.name or s.class_name) for o, s in zip(outcomes, specs, strict=True)]


def service_id(node_id: str) -> str:
    return f"sys.node.{node_id}"


def spawner_id(node_id: str) -> str:
    return f"sys.spawn.{node_id}"

"""`Directory`: the head's control plane — membership, failure detection, names.

It is an agent like any other, reached by asks over the same streams as user
traffic. Nodes register, then heartbeat; a node silent for ``dead_after`` seconds is
declared dead and dropped, with its names. Every heartbeat answer carries the live
membership, so nodes learn of joins and deaths within one heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace

from ..kernel.agent import Agent
from ..kernel.ref import AgentRef
from ..placement.scheduler import Resources, Scheduler

__all__ = ["DEFAULT_DEAD_AFTER", "DEFAULT_HEARTBEAT", "Directory", "NodeInfo"]

log = logging.getLogger("agentmesh.cluster")

#: Seconds between heartbeats of a node.
DEFAULT_HEARTBEAT = 0.5
#: Seconds of silence after which the head declares a node dead.
DEFAULT_DEAD_AFTER = 2.5


@dataclass(frozen=True)
class NodeInfo:
    """One node as the head sees it (``agentmesh status`` prints these)."""

    id: str
    address: str
    role: str  # "head", "worker" or "driver"
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    agents: int = 0
    mailbox_depth: int = 0
    #: Messages from other nodes waiting for room in full mailboxes here.
    held: int = 0
    #: Frames and handshakes this node refused (malformed, wrong token).
    refused: int = 0
    alive: bool = True
    last_seen: float = 0.0
    #: Of ``resources``, how much placement has reserved for agents.
    used: dict[str, float] = field(default_factory=dict)


class Directory(Agent):
    """Membership, failure detection and the cluster-wide name registry; it keeps the
    placement scheduler's view of the nodes current."""

    def __init__(self, scheduler: Scheduler, dead_after: float = DEFAULT_DEAD_AFTER) -> None:
        self.scheduler = scheduler
        self.dead_after = dead_after
        self.nodes: dict[str, NodeInfo] = {}
        self.names: dict[str, AgentRef] = {}
        #: Each node's pub/sub interest: the patterns its subscribers hold.
        self.interests: dict[str, frozenset[str]] = {}
        self._watchdog: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def on_stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- membership -----------------------------------------------------------------

    async def register(
        self,
        node: NodeInfo,
        names: dict[str, AgentRef],
        held: dict[str, Resources] | None = None,
    ) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
        """A node joins (or rejoins after a head restart, with the names and the
        reservations it holds). Returns the live members (node id -> address) and
        their pub/sub interest."""
        self.nodes[node.id] = replace(node, alive=True, last_seen=self._now())
        for name, ref in names.items():
            self.names.setdefault(name, ref)
        self.scheduler.node_up(node.id, node.role, node.resources, node.labels, held)
        log.info("node %s (%s) joined from %s", node.id, node.role, node.address)
        return self._members(), dict(self.interests)

    async def set_interest(self, node_id: str, patterns: frozenset[str]) -> None:
        """A node's subscribers changed: tell every other live node, and return once
        each knows (so a new subscription is live cluster-wide when this returns)."""
        self.interests[node_id] = patterns
        others = [n.id for n in self.nodes.values() if n.alive and n.id != node_id]
        results = await asyncio.gather(
            *(self._service(peer).interest.ask(node_id, patterns, timeout=5.0) for peer in others),
            return_exceptions=True,
        )
        for peer, result in zip(others, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("node %s did not take %s's interest: %s", peer, node_id, result)

    def _service(self, node_id: str) -> AgentRef:
        return AgentRef._create(f"sys.node.{node_id}", None, node_id, self._am_cell.node)

    async def heartbeat(
        self, node_id: str, agents: int, mailbox_depth: int, held: int = 0, refused: int = 0
    ) -> dict[str, str] | None:
        """A node is alive; returns the live members, or None if it is not registered
        (a new head, or it was declared dead): it must register again."""
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return None
        self.nodes[node_id] = replace(
            node,
            agents=agents,
            mailbox_depth=mailbox_depth,
            held=held,
            refused=refused,
            last_seen=self._now(),
        )
        return self._members()

    async def address(self, node_id: str) -> str | None:
        """Where a live node listens, or None."""
        node = self.nodes.get(node_id)
        return node.address if node is not None and node.alive else None

    async def leave(self, node_id: str) -> None:
        """A node leaves cleanly: it is forgotten (a dead one stays listed, down)."""
        self._drop(node_id, "left")
        self.nodes.pop(node_id, None)
        self.scheduler.node_down(node_id)

    async def members(self) -> list[NodeInfo]:
        """Every node known, live or dead, with its last reported load."""
        now = self._now()
        views = self.scheduler.view.nodes
        return [
            replace(
                n,
                last_seen=now - n.last_seen,
                used={k: v for k, v in views[n.id].used.items() if v} if n.id in views else {},
            )
            for n in self.nodes.values()
        ]

    def _members(self) -> dict[str, str]:
        return {n.id: n.address for n in self.nodes.values() if n.alive}

    def _drop(self, node_id: str, why: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return
        self.nodes[node_id] = replace(node, alive=False)
        self.interests.pop(node_id, None)
        self.scheduler.node_down(node_id)
        for name, ref in list(self.names.items()):
            if ref.node == node_id:
                del self.names[name]
        # Leaving is routine; a death is worth a warning.
        log.log(logging.INFO if why == "left" else logging.WARNING, "node %s %s", node_id, why)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.dead_after / 5)
            deadline = self._now() - self.dead_after
            for node in list(self.nodes.values()):
                if node.alive and node.role != "head" and node.last_seen < deadline:
                    self._drop(node.id, f"missed heartbeats for {self.dead_after:g}s: dead")

    # -- names ----------------------------------------------------------------------

    async def register_name(self, name: str, ref: AgentRef) -> AgentRef:
        """Claim ``name`` for ``ref`` cluster-wide; returns who holds it now (``ref``
        itself unless another agent had it)."""
        return self.names.setdefault(name, ref)

    async def release_name(self, name: str, ref: AgentRef) -> None:
        if self.names.get(name) == ref:
            del self.names[name]

    async def lookup(self, name: str) -> AgentRef | None:
        """The agent registered as ``name`` anywhere in the cluster, or None."""
        return self.names.get(name)

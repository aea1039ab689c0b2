"""`Directory`: the head's control plane — membership, failure detection, names.

It is an agent like any other, reached by asks over the same streams as user
traffic. Nodes register, then heartbeat; a node silent for ``dead_after`` seconds is
declared dead and dropped, with its names. Every heartbeat answer carries the live
membership and the nodes that are gone (dead or left), so nodes learn of joins and
deaths within one heartbeat.

A node declared dead stays listed, down, for ``forget_dead_after`` seconds (so
``agentmesh status`` shows what died), then leaves the listing; the verdict itself is
kept longer (bounded), so a node that comes back still fences first.

A node is only ever declared gone by a verdict (missed heartbeats, or a clean
leave), never because a list lacks it: a head that restarts knows nobody, and the
first node to register again must not conclude that the others died. A new head
learns the members each registering node knew; one that has not registered within
``dead_after`` is pinged, and declared dead only if it does not answer (a live node
may just be slow to find the new head). A node declared dead that comes back is told
so, fences itself (see `Membership.fence`), and only then joins again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field, replace
from typing import Literal

from ..kernel.agent import Agent
from ..kernel.errors import AgentmeshError
from ..kernel.ref import AgentRef
from ..placement.scheduler import Resources, Scheduler

__all__ = [
    "DEFAULT_DEAD_AFTER",
    "DEFAULT_FORGET_DEAD_AFTER",
    "DEFAULT_HEARTBEAT",
    "Beat",
    "Directory",
    "NodeInfo",
]

log = logging.getLogger("agentmesh.cluster")

#: Seconds between heartbeats of a node.
DEFAULT_HEARTBEAT = 0.5
#: Seconds of silence after which the head declares a node dead.
DEFAULT_DEAD_AFTER = 2.5
#: Seconds a node declared dead stays listed (down) before the head forgets it.
DEFAULT_FORGET_DEAD_AFTER = 60.0
#: How many gone nodes (dead or left) heartbeat answers list at most, newest kept.
GONE_KEPT = 4096
#: How many verdicts of death the head remembers, newest kept (a node declared dead
#: must fence itself before it joins again, also once it is no longer listed).
VERDICTS_KEPT = 65536


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
    #: Seconds since the head last heard from it (as `Mesh.nodes` reports it).
    last_seen: float = 0.0
    #: Of ``resources``, how much placement has reserved for agents.
    used: dict[str, float] = field(default_factory=dict)
    #: Handing its agents over before it leaves (``agentmesh drain``, SIGTERM):
    #: placement no longer picks it.
    draining: bool = False
    #: Seconds it has been running: as it said when it registered, plus the time
    #: since (until it was last heard from, for a dead one).
    uptime: float = 0.0


@dataclass(frozen=True, slots=True)
class Beat:
    """The head's answer to a registration or a heartbeat.

    ``status`` is ``"ok"`` (``members`` and ``gone`` are current), ``"unknown"`` (this
    head does not know the node: it must register) or ``"dead"`` (the node was
    declared dead: it must fence itself before it registers again). ``gone`` maps
    each node known to be dead or to have left to why; only those are down.
    """

    status: Literal["ok", "unknown", "dead"]
    members: dict[str, str] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)
    interests: dict[str, frozenset[str]] = field(default_factory=dict)


class Directory(Agent):
    """Membership, failure detection and the cluster-wide name registry; it keeps the
    placement scheduler's view of the nodes current."""

    def __init__(
        self,
        scheduler: Scheduler,
        dead_after: float = DEFAULT_DEAD_AFTER,
        forget_after: float | None = None,
        forget_dead_after: float = DEFAULT_FORGET_DEAD_AFTER,
    ) -> None:
        self.scheduler = scheduler
        self.dead_after = dead_after
        #: Seconds a node declared dead stays listed, down, in `members`.
        self.forget_dead_after = forget_dead_after
        #: Seconds a gone node stays in heartbeat answers: long enough for every live
        #: node to have heard (they beat well within ``dead_after``), short enough that
        #: answers stay small. A node away longer is declared dead itself and fences.
        self.forget_after = max(60.0, 20 * dead_after) if forget_after is None else forget_after
        self.nodes: dict[str, NodeInfo] = {}
        #: When each node in ``nodes`` registered, in this head's clock (its uptime).
        self._registered: dict[str, float] = {}
        #: Nodes this head declared dead (newest last, bounded): such a node must
        #: fence itself before it joins again, listed or not.
        self.verdicts: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.names: dict[str, AgentRef] = {}
        #: Each node's pub/sub interest: the patterns its subscribers hold.
        self.interests: dict[str, frozenset[str]] = {}
        #: Nodes declared dead or that left (id -> (why, when)), newest last, bounded.
        self.gone: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        #: Nodes a registering node knew that have not registered here yet (a new
        #: head): id -> (address, since when). Pinged once ``dead_after`` has passed,
        #: and declared dead if they do not answer.
        self.expected: dict[str, tuple[str, float]] = {}
        self._pings: set[str] = set()
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
        known: dict[str, str] | None = None,
        fenced: bool = False,
    ) -> Beat:
        """A node joins (or rejoins after a head restart, with the names and the
        reservations it holds, and the members it ``known``).

        A node this head declared dead is refused (status ``"dead"``) until it says
        it has ``fenced`` itself. Returns the membership and pub/sub interests.
        """
        if self._declared_dead(node.id) and not fenced:
            return Beat("dead")
        self.gone.pop(node.id, None)
        self.expected.pop(node.id, None)
        self.verdicts.pop(node.id, None)
        now = self._now()
        self.nodes[node.id] = replace(node, alive=True, last_seen=now)
        self._registered[node.id] = now
        for name, ref in names.items():
            self.names.setdefault(name, ref)
        self.scheduler.node_up(node.id, node.role, node.resources, node.labels, held)
        for peer, address in (known or {}).items():
            if peer not in self.nodes and peer not in self.gone:
                self.expected.setdefault(peer, (address, now))
        log.info("node %s (%s) joined from %s", node.id, node.role, node.address)
        return self._beat(interests=True)

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
    ) -> Beat:
        """A node is alive; returns the membership, or tells it to register (a new
        head) or to fence itself first (it was declared dead)."""
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return Beat("dead" if self._declared_dead(node_id) else "unknown")
        self.nodes[node_id] = replace(
            node,
            agents=agents,
            mailbox_depth=mailbox_depth,
            held=held,
            refused=refused,
            last_seen=self._now(),
        )
        return self._beat()

    async def draining(self, node_id: str) -> None:
        """A node hands its agents over before it leaves: place nothing new there."""
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return
        self.nodes[node_id] = replace(node, draining=True)
        self.scheduler.node_down(node_id)
        log.info("node %s is draining", node_id)

    async def address(self, node_id: str) -> str | None:
        """Where a live node listens (or one expected to register), or None."""
        node = self.nodes.get(node_id)
        if node is not None and node.alive:
            return node.address
        expected = self.expected.get(node_id)
        return None if expected is None else expected[0]

    async def leave(self, node_id: str) -> None:
        """A node leaves cleanly: it is forgotten (a dead one stays listed, down, for
        ``forget_dead_after``)."""
        self._drop(node_id, "left")
        self._forget(node_id)
        self.scheduler.node_down(node_id)

    async def members(self) -> list[NodeInfo]:
        """Every node known, live or dead (until forgotten), with its last reported
        load; ``last_seen`` and ``uptime`` in seconds as of now."""
        now = self._now()
        views = self.scheduler.view.nodes
        return [
            replace(
                n,
                last_seen=now - n.last_seen,
                uptime=n.uptime + ((now if n.alive else n.last_seen) - self._registered[n.id]),
                used={k: v for k, v in views[n.id].used.items() if v} if n.id in views else {},
            )
            for n in self.nodes.values()
        ]

    def _beat(self, interests: bool = False) -> Beat:
        members = {n.id: n.address for n in self.nodes.values() if n.alive}
        gone = {node_id: why for node_id, (why, _) in self.gone.items()}
        return Beat("ok", members, gone, dict(self.interests) if interests else {})

    def _declared_dead(self, node_id: str) -> bool:
        """Whether this head declared ``node_id`` dead (a node that left is not);
        the verdict outlives its tombstone and its listing (`VERDICTS_KEPT`)."""
        if node_id in self.verdicts:
            return True
        return node_id in self.gone and self.gone[node_id][0] != "left"

    def _forget(self, node_id: str) -> None:
        """No longer list ``node_id`` (it left, or it has been dead long enough)."""
        self.nodes.pop(node_id, None)
        self._registered.pop(node_id, None)

    def _bury(self, node_id: str, why: str) -> None:
        self.gone[node_id] = (why, self._now())
        self.gone.move_to_end(node_id)
        while len(self.gone) > GONE_KEPT:
            self.gone.popitem(last=False)

    def _drop(self, node_id: str, why: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return
        self._bury(node_id, why)
        if why != "left":
            self.verdicts[node_id] = None
            self.verdicts.move_to_end(node_id)
            while len(self.verdicts) > VERDICTS_KEPT:
                self.verdicts.popitem(last=False)
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
            # Declared dead once silent for dead_after: listed until this long silent.
            listed = deadline - self.forget_dead_after
            for node in list(self.nodes.values()):
                if node.alive and node.role != "head" and node.last_seen < deadline:
                    self._drop(node.id, f"missed heartbeats for {self.dead_after:g}s: dead")
                elif not node.alive and node.last_seen < listed:
                    self._forget(node.id)
            forgotten = self._now() - self.forget_after
            while self.gone and next(iter(self.gone.values()))[1] < forgotten:
                self.gone.popitem(last=False)
            for node_id, (_, since) in list(self.expected.items()):
                if since < deadline and node_id not in self._pings:
                    self._pings.add(node_id)
                    self._am_cell.spawn_task(self._ping(node_id))

    async def _ping(self, node_id: str) -> None:
        """An expected node is late to register: is it alive at all?"""
        try:
            await self._service(node_id).ping.ask(timeout=self.dead_after)
        except AgentmeshError as exc:
            if node_id in self.expected:
                del self.expected[node_id]
                self._bury(node_id, f"did not join the new head and did not answer: {exc}")
                log.warning("node %s did not join the new head and does not answer", node_id)
        else:
            if node_id in self.expected:  # alive: it will register; wait some more
                address, _ = self.expected[node_id]
                self.expected[node_id] = (address, self._now())
        finally:
            self._pings.discard(node_id)

    # -- names ----------------------------------------------------------------------

    async def register_name(self, name: str, ref: AgentRef) -> AgentRef:
        """Claim ``name`` for ``ref`` cluster-wide; returns who holds it now (``ref``
        itself unless another agent had it)."""
        return self.names.setdefault(name, ref)

    async def register_names(self, claims: list[tuple[str, AgentRef]]) -> list[AgentRef]:
        """`register_name` for each (name, ref) of a batch, in one request."""
        names = self.names
        return [names.setdefault(name, ref) for name, ref in claims]

    async def release_name(self, name: str, ref: AgentRef) -> None:
        if self.names.get(name) == ref:
            del self.names[name]

    async def lookup(self, name: str) -> AgentRef | None:
        """The agent registered as ``name`` anywhere in the cluster, or None."""
        return self.names.get(name)

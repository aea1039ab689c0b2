"""`Membership`: how one node takes part in a cluster (the agents through which other
nodes act on it are in `services`, placement's in `placer`).

A head hosts the `Directory`; every other node dials the head, registers, and
heartbeats. Heartbeat answers carry the membership: a node learns the addresses of
new peers from them and, when the head declares a peer gone (dead or left), fails at
once every ask waiting on it. If the head goes away, nodes keep serving each other
and register again when a head answers at the same address (the head rebuilds its
registry from them). A node the head declared dead fences itself before it joins
again: the agents that supervisors elsewhere own (and have restarted elsewhere)
stop here. A draining node hands those agents over before it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..kernel.cell import Cell
from ..kernel.envelope import NO_KWARGS, Envelope, TracedEnvelope, new_chain
from ..kernel.errors import (
    AgentmeshError,
    AgentNotFound,
    AgentUnavailable,
    AuthError,
    NameTaken,
)
from ..kernel.placing import Ticket
from ..kernel.ref import AgentRef
from ..placement.scheduler import LocalPlacer, Scheduler
from ..pubsub.topics import TopicTrie
from ..supervision.spec import ChildSpec
from ..transport.grpc_transport import GrpcTransport
from .directory import (
    DEFAULT_DEAD_AFTER,
    DEFAULT_FORGET_DEAD_AFTER,
    DEFAULT_HEARTBEAT,
    Beat,
    Directory,
    NodeInfo,
)
from .placer import PlacementService, RemotePlacer, placement_id
from .remote_child import ChildLink, RemoteChildren
from .services import NodeService, SpawnService, service_id, spawner_id

if TYPE_CHECKING:
    from ..kernel.node import Node
    from ..kernel.tracing import Trace
    from ..pubsub.bus import Bus

__all__ = ["Membership", "directory_id"]

log = logging.getLogger("agentmesh.cluster")


def directory_id(node_id: str) -> str:
    return f"sys.directory.{node_id}"


class Membership:
    """One node's part in a cluster: its role, its head, its heartbeat."""

    def __init__(
        self,
        node: Node,
        transport: GrpcTransport,
        *,
        role: str,
        head: str | None,
        resources: dict[str, float],
        labels: dict[str, str],
        heartbeat: float = DEFAULT_HEARTBEAT,
        dead_after: float = DEFAULT_DEAD_AFTER,
        forget_dead_after: float = DEFAULT_FORGET_DEAD_AFTER,
        scheduler: Scheduler | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.node = node
        #: The node's pub/sub bus: publications to other nodes go out through here.
        self.bus = bus
        self.scheduler = scheduler
        self.transport = transport
        self.role = role
        self.head_address = head
        self.resources = resources
        self.labels = labels
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.forget_dead_after = forget_dead_after
        #: When this node started, in its event loop's clock (its uptime).
        self.started = 0.0
        self.directory: AgentRef | None = None
        self.members: dict[str, str] = {}
        self.remote_interest: TopicTrie[str] = TopicTrie()  # pattern -> node, for others
        self._interest_keys: dict[str, dict[str, int]] = {}
        self._keys = itertools.count()
        self._loop_task: asyncio.Task[None] | None = None
        self._buried: set[str] = set()  # gone nodes already taken down here
        #: Set when another program asks this node to drain (``agentmesh drain``).
        self.drain_requested = asyncio.Event()

    # -- joining ---------------------------------------------------------------------

    async def start(self, spawn: Callable[..., Any], spawn_many: Callable[..., Any]) -> None:
        node = self.node
        self.started = asyncio.get_running_loop().time()
        await node.spawn(NodeService, (spawn, self), agent_id=service_id(node.id))
        await node.spawn(SpawnService, (spawn_many,), agent_id=spawner_id(node.id))
        if self.head_address is None:
            scheduler = self.scheduler or Scheduler()
            self.directory = await node.spawn(
                Directory,
                (scheduler, self.dead_after, None, self.forget_dead_after),
                agent_id=directory_id(node.id),
            )
            await node.spawn(PlacementService, (scheduler,), agent_id=placement_id(node.id))
            node.placer = LocalPlacer(scheduler)
        else:
            await self._join()
            node.placer = RemotePlacer(self, self.scheduler.timeout if self.scheduler else 30.0)
        await self._register()
        self.transport.resolve = self._resolve
        node.remote_children = RemoteChildren(self)
        bus = self.bus
        if bus is not None:
            bus.remote_publish = self.remote_publish
            bus.share_interest = self.share_interest
            if bus.interest():
                await self.share_interest(bus.interest())
        self._loop_task = asyncio.get_running_loop().create_task(self._beat())

    async def _join(self) -> None:
        assert self.head_address is not None
        head = await self.transport.dial_address(self.head_address)
        self.directory = AgentRef._create(directory_id(head), None, head, self.node)

    def _me(self) -> NodeInfo:
        uptime = asyncio.get_running_loop().time() - self.started
        info = NodeInfo(
            self.node.id, self.transport.address, self.role, self.resources, self.labels
        )
        return replace(info, uptime=uptime)

    async def _register(self) -> None:
        assert self.directory is not None
        beat = await self.directory.register.ask(*self._registration(False), timeout=5.0)
        if beat.status == "dead":
            await self.fence("the head declared this node dead")
            beat = await self.directory.register.ask(*self._registration(True), timeout=5.0)
        self._update(beat)
        for peer, patterns in beat.interests.items():
            if peer != self.node.id:
                self.apply_interest(peer, patterns)
        bus = self.bus
        if bus is not None and bus.interest() and bus.share_interest is not None:
            await self.share_interest(bus.interest())  # a new head learns it again

    def _registration(self, fenced: bool) -> tuple[Any, ...]:
        names = {name: cell.ref for name, cell in self.node.names.items()}
        held = {
            c.reservation.key: c.reservation.resources
            for c in self.node.cells.values()
            if c.reservation is not None
        }
        return self._me(), names, held, dict(self.members), fenced

    def _update(self, beat: Beat) -> None:
        """Take the head's view: new peers are dialable; gone ones are down. A peer
        missing from ``members`` is not down (a new head may not know it yet)."""
        for peer, address in beat.members.items():
            if peer != self.node.id:
                self.transport.add_peer(peer, address)
        self.members.update(beat.members)
        for gone, why in beat.gone.items():
            if gone == self.node.id or gone in self._buried:
                continue
            self._buried.add(gone)
            self.members.pop(gone, None)
            self.node_down(gone, why)
            self.apply_interest(gone, frozenset())
        # Remember only what the head still lists, so this stays bounded.
        self._buried.intersection_update(beat.gone)

    async def _resolve(self, peer: str) -> str | None:
        """Ask the head where a node we have not heard of yet listens."""
        if self.directory is None or peer == self.directory.node:
            return None
        try:
            address: str | None = await self.directory.address.ask(peer, timeout=5.0)
        except AgentmeshError:
            return None
        if address is not None:
            self.transport.add_peer(peer, address)
        return address

    def node_down(self, peer: str, why: str = "dead") -> None:
        """A peer is gone: fail at once every ask waiting on it; its agents' watchers
        here hear ``node_down``."""
        level = logging.INFO if why in ("left", "the head restarted") else logging.WARNING
        log.log(level, "node %s is down: %s", peer, why)
        reason = f"node {peer} is down" if why != "left" else f"node {peer} left the cluster"
        self.transport.peer_down(peer, reason)
        self.node.peer_down(peer, reason)

    async def drain(self) -> None:
        """Hand this node's agents over before it leaves: placement stops picking it,
        then each agent a supervisor elsewhere owns stops and its supervisor hears
        that its node went down, so it starts the agent again on another node (as
        after a crash of the node, but with nothing lost in flight). Returns once
        every such supervisor has been told."""
        if self.directory is not None:
            try:
                await self.directory.draining.ask(self.node.id, timeout=5.0)
            except AgentmeshError as exc:  # the head is away: it learns when we leave
                log.info("could not tell the head this node is draining: %s", exc)
        why = f"node {self.node.id} is draining"
        log.info("%s: handing its agents over", why)
        owned = self._owned_elsewhere()
        links: list[ChildLink] = []
        for cell in owned:
            link = cell.exit_listener
            assert isinstance(link, ChildLink)
            link.moving = why
            links.append(link)
        await asyncio.gather(*(cell.stop(self.node.shutdown_timeout) for cell in owned))
        for link in links:
            for peer, env in link.outbox:
                try:
                    await self.transport.send(peer, env)
                except AgentmeshError as exc:
                    agent = env.args[-1]
                    log.warning("could not hand %s over to node %s: %s", agent, peer, exc)
            link.outbox.clear()

    def _owned_elsewhere(self) -> list[Cell]:
        """The agents here whose supervisors live on other nodes."""
        return [c for c in self.node.cells.values() if isinstance(c.exit_listener, ChildLink)]

    async def fence(self, why: str) -> None:
        """This node was declared dead while it was away (paused, cut off, blocked):
        the supervisors of its agents that live on other nodes have counted those
        agents lost and restarted them elsewhere, so the instances here stop, without
        telling anyone (what they would say is stale). The node's own remote
        children were stopped by their nodes (they heard this node die), so its
        watchers of remote agents hear ``node_down`` and its supervisors start them
        again. Nothing here may be two places at once."""
        log.warning("fencing node %s: %s", self.node.id, why)
        timeout = self.node.shutdown_timeout
        owned = self._owned_elsewhere()
        for cell in owned:
            cell.exit_listener = None  # its supervisor already counted it lost
        await asyncio.gather(*(cell.stop(timeout) for cell in owned))
        for peer in {ref.node for ref in self.node.remote_monitors.refs.values()}:
            self.node.peer_down(peer, f"node {self.node.id} was cut off from node {peer}")

    # -- pub/sub across nodes -------------------------------------------------------

    def apply_interest(self, node_id: str, patterns: frozenset[str]) -> None:
        """Record which patterns node ``node_id``'s subscribers hold."""
        keys = self._interest_keys.setdefault(node_id, {})
        for pattern in list(keys):
            if pattern not in patterns:
                self.remote_interest.remove(pattern, keys.pop(pattern))
        for pattern in patterns:
            if pattern not in keys:
                keys[pattern] = next(self._keys)
                self.remote_interest.add(pattern, keys[pattern], node_id)

    async def share_interest(self, patterns: frozenset[str]) -> None:
        """Tell the cluster this node's interest; without a head, keep going (it is
        shared again when this node registers with one)."""
        if self.directory is None:
            return
        try:
            await self.directory.set_interest.ask(self.node.id, patterns, timeout=10.0)
        except AgentmeshError as exc:
            log.warning("could not share pub/sub interest with the head: %s", exc)

    async def remote_publish(
        self, topic: str, payload: Any, sender: str | None, trace: Trace | None = None
    ) -> None:
        """Send a publication once to each other node with matching subscribers (with
        its trace, if traced: their deliveries are children of its span)."""
        nodes = dict.fromkeys(self.remote_interest.match(topic))
        for node_id in nodes:
            env = Envelope(
                service_id(node_id),
                "!node.publish",
                (topic, payload),
                NO_KWARGS,
                None,
                new_chain(),
                sender,
            )
            if trace is not None:
                env = TracedEnvelope.of(env, trace)
            try:
                await self.transport.send(node_id, env)
            except AgentmeshError as exc:
                bus = self.bus
                if bus is not None:
                    bus.dead_letter(topic, payload, f"node unreachable: {exc}", node_id, sender)

    # -- heartbeats --------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._beat_once()
            except AgentmeshError as exc:
                log.info("heartbeat to the head failed: %s", exc)
            except Exception:  # a bug here must not silently end this node's beat
                log.exception("heartbeat failed")

    async def _beat_once(self) -> None:
        assert self.directory is not None
        cells = [c for c in self.node.cells.values() if not c.id.startswith("sys.")]
        depth = sum(len(c.mailbox) for c in cells)
        held, refused = self.transport.counters()
        try:
            beat: Beat | None = await self.directory.heartbeat.ask(
                self.node.id, len(cells), depth, held, refused, timeout=self.dead_after
            )
        except AgentNotFound:
            beat = None
        except (AgentUnavailable, AuthError):
            # The head is gone, or another process answers at its address (a new
            # head, with a new id): join whoever serves there now, and register.
            if self.head_address is None:
                raise
            old = self.directory.node
            await self._join()
            if self.directory.node != old:  # that head's process is gone for sure
                self._buried.add(old)
                self.members.pop(old, None)
                self.node_down(old, "the head restarted")
            await self._register()
            return
        if beat is None or beat.status != "ok":
            await self._register()  # a new head (it fences first if declared dead)
            return
        self._update(beat)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self.directory is not None and self.head_address is not None:
            with contextlib.suppress(AgentmeshError):  # the head may be gone already
                await self.directory.leave.ask(self.node.id, timeout=1.0)

    # -- the cluster seen from this node ---------------------------------------------

    def service(self, node_id: str) -> AgentRef:
        return AgentRef._create(service_id(node_id), None, node_id, self.node)

    def spawner(self, node_id: str) -> AgentRef:
        """Node ``node_id``'s `SpawnService`."""
        return AgentRef._create(spawner_id(node_id), None, node_id, self.node)

    async def spawn_on(self, node_id: str, spec: ChildSpec, ticket: Ticket | None) -> AgentRef:
        """Start ``spec`` on node ``node_id``, a child of that node's own root."""
        outcome = await self.service(node_id).spawn(spec, ticket)
        if isinstance(outcome, AgentmeshError):
            raise outcome
        ref: AgentRef = outcome
        return ref

    async def claim_name(self, ref: AgentRef) -> None:
        """Claim ``ref``'s name cluster-wide; `NameTaken` if another agent holds it."""
        if ref.name is not None:
            await self.register_name(ref.name, ref)

    async def claim_names(self, refs: list[AgentRef]) -> list[AgentRef]:
        """Claim the names of ``refs`` (all named) cluster-wide in one request; returns
        who holds each now (the ref itself unless another agent had the name)."""
        assert self.directory is not None
        holders: list[AgentRef] = await self.directory.register_names(
            [(ref.name, ref) for ref in refs]
        )
        return holders

    async def register_name(self, name: str, ref: AgentRef) -> None:
        """Claim ``name`` cluster-wide for ``ref``; `NameTaken` if another holds it."""
        assert self.directory is not None
        holder = await self.directory.register_name(name, ref)
        if holder != ref:
            raise NameTaken(f"an agent named {name!r} already exists (on node {holder.node})")

    def release_name(self, cell: Cell) -> None:
        if cell.name is None or self.directory is None:
            return
        try:
            self.directory.release_name.tell_nowait(cell.name, cell.ref)
        except AgentmeshError as exc:
            log.info("could not release name %r: %s", cell.name, exc)

    async def release_stale_name(self, name: str, ref: AgentRef) -> None:
        """Release ``name`` if ``ref``, an agent known to have ended, still holds it."""
        assert self.directory is not None
        await self.directory.release_name(name, ref)

    async def lookup(self, name: str) -> AgentRef:
        assert self.directory is not None
        ref: AgentRef | None = await self.directory.lookup(name)
        if ref is None:
            raise AgentNotFound(f"no agent named {name!r} in the cluster")
        return ref

    def placement_service(self) -> AgentRef:
        """The head's `PlacementService` (whichever head serves now)."""
        assert self.directory is not None
        head = self.directory.node
        return AgentRef._create(placement_id(head), None, head, self.node)

    async def placement_report(self) -> tuple[int, list[str]]:
        report: tuple[int, list[str]] = await self.placement_service().report()
        return report

    async def nodes(self) -> list[NodeInfo]:
        assert self.directory is not None
        nodes: list[NodeInfo] = await self.directory.members()
        return nodes

"""`Mesh`: the user's entry point — spawn, get, stop — wired onto one node."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from . import tracing
from .cluster.directory import NodeInfo
from .cluster.member import Membership
from .config import MeshConfig, MeshOptions
from .kernel.agent import Agent
from .kernel.cell import Cell
from .kernel.context import current_cell, current_node
from .kernel.errors import (
    AgentmeshError,
    AgentNotFound,
    AgentUnavailable,
    RestartIntensityExceeded,
)
from .kernel.exits import ExitReason, Terminated
from .kernel.info import AgentInfo, AgentListing
from .kernel.listing import DEFAULT_LIMIT, ask_node, local_agents
from .kernel.node import Node
from .kernel.placing import GangStrategy, OnNode, Selector, Strategy, Ticket
from .kernel.ports import NodeRequest
from .kernel.ref import AgentRef
from .kernel.state import StateStore
from .kernel.transport import Transport
from .metrics.snapshot import NodeMetrics
from .placement.resources import machine_resources
from .placement.scheduler import LocalPlacer, Scheduler
from .pubsub.bus import Bus, BusStatistics
from .pubsub.subscriptions import Overflow, TopicStream
from .supervision.spec import ChildSpec, Restart, SupervisorSpec
from .supervision.supervisor import Supervisor, settle, start_directly, start_many_directly
from .transport.grpc_transport import GrpcTransport
from .virtual import Activations, VirtualRef, virtual_name

if TYPE_CHECKING:
    from .metrics.prometheus import MetricsServer

__all__ = ["Mesh"]

log = logging.getLogger("agentmesh.cluster")

A = TypeVar("A", bound=Agent)


class Mesh:
    """A mesh of agents; with no address, an embedded one inside this process.

    Use it as an async context manager. Every agent spawned without a ``supervisor``
    is a child of the mesh's root supervisor (``one_for_one``, ``restart_intensity``
    restarts within ``restart_period`` seconds, default 3 in 5 s). Leaving the mesh
    stops the root, which stops its children newest first, each within its shutdown
    timeout. If the root gives up (too many restarts), its children are stopped and
    the failure is kept: `wait_failure` returns it, and leaving the mesh raises it if
    nobody retrieved it.

    Options are keywords (``Mesh(ask_timeout=5)``), or a `MeshConfig` made before
    (``Mesh(config)``; keywords given too replace its fields); ``mesh.config`` is
    what the mesh runs with. ``ask_timeout`` (default 30 s) bounds every ask that
    does not pass its own; ``shutdown_timeout`` (default 5 s) is how long a stopping
    agent may take before it is cancelled; ``mailbox_size`` (default 1000) is the
    capacity of a mailbox when neither the agent class nor `spawn` sets one;
    ``state_store`` (default: in memory) keeps agents' snapshots; ``slow_turn``
    (default 0.5 s; None: off) is how long a turn may block the event loop before a
    watchdog thread logs a WARNING naming the agent and method (docs/lifecycle.md).
    ``metrics_port`` (default None: off; 0: the OS picks) serves this node's metrics for
    Prometheus at `metrics_url` (needs ``agentmesh[prometheus]``; docs/observability.md).
    The cluster's options (``listen``, ``join``, ``role`` ...) are in docs/cluster.md.
    ``tracing=True`` turns tracing on in this process while the mesh runs, unless it
    is on already (`agentmesh.tracing`, docs/observability.md: the ``otel`` extra).

    The mesh, its agents and its refs belong to the event loop it was entered on;
    from other threads use ``ref.method.ask_sync()`` / ``tell_sync()``.

    Example::

        async with am.Mesh() as mesh:
            counter = await mesh.spawn(Counter, 0, name="counter")
            assert await counter.add(2) == 2
    """

    def __init__(self, config: MeshConfig | None = None, /, **options: Unpack[MeshOptions]) -> None:
        config = MeshConfig(**options) if config is None else replace(config, **options)
        self._setup(config, None)

    @classmethod
    def _over(
        cls, transport: Transport, config: MeshConfig | None = None, /, **options: Any
    ) -> Mesh:
        """A mesh whose node talks through ``transport`` (a `MemoryNetwork`'s: several
        meshes in one process, for tests and simulations)."""
        mesh = cls.__new__(cls)
        mesh._setup(
            MeshConfig(**options) if config is None else replace(config, **options), transport
        )
        return mesh

    def _setup(self, config: MeshConfig, transport: Transport | None) -> None:
        #: What this mesh was configured with.
        self.config = config
        self._root_spec = SupervisorSpec(
            intensity=config.restart_intensity, period=config.restart_period
        )
        grpc_transport: GrpcTransport | None = None
        if config.clustered:
            grpc_transport = GrpcTransport(
                config.listen or "127.0.0.1:0",
                token=config.cluster_token(),
                tls=config.tls,
                advertise=config.advertise,
            )
            transport = grpc_transport
        self._node = Node(
            node_id=config.node_id,
            ask_timeout=config.ask_timeout,
            shutdown_timeout=config.shutdown_timeout,
            mailbox_size=config.mailbox_size,
            transport=transport,
            state_store=config.state_store,
            slow_turn=config.slow_turn,
        )
        self._node.facade = self
        self._bus = Bus()
        self._node.bus = self._bus
        self._node.serve("!node.publish", NodeRequest(self._bus.take_publication, ordered=True))
        # The latest spans this process finished, for the dashboard (docs/observability.md).
        self._node.serve("!node.spans", NodeRequest(tracing.serve_spans))
        self._entered = False
        self._tracing = False  # this mesh turned tracing on (and turns it off)
        self._token: contextvars.Token[Node | None] | None = None
        self._root: Supervisor | None = None
        self._root_ref: AgentRef | None = None
        self._failure: asyncio.Future[RestartIntensityExceeded | None] | None = None
        self._failure_seen = False
        self._membership: Membership | None = None
        self._activations = Activations(self)  # virtual agents reached from here
        self._started = 0.0  # in the event loop's clock
        role = config.role or ("head" if config.join is None else "driver")
        resources = config.resources
        if resources is None:
            resources = {} if role == "driver" else machine_resources()
        labels = config.labels or {}
        self._scheduler = Scheduler(config.placement_timeout)
        if grpc_transport is None:
            self._scheduler.node_up(self._node.id, "head", resources, labels)
            self._node.placer = LocalPlacer(self._scheduler)
        else:
            self._membership = Membership(
                self._node,
                grpc_transport,
                role=role,
                head=config.join,
                resources=dict(resources),
                labels=dict(labels),
                heartbeat=config.heartbeat,
                dead_after=config.dead_after,
                forget_dead_after=config.forget_dead_after,
                scheduler=self._scheduler,
                bus=self._bus,
            )
            self._node.ended_hooks.append(self._membership.release_name)
            self._node.name_claims.append(self._membership.claim_name)
            self._node.claim_names = self._membership.claim_names
        self._metrics: NodeMetrics | None = None
        self._metrics_server: MetricsServer | None = None  # once started
        if config.metrics_port is not None:
            if importlib.util.find_spec("prometheus_client") is None:
                raise ImportError(
                    "metrics_port needs prometheus-client: pip install 'agentmesh[prometheus]'"
                )
            head = self._membership is None or self._membership.role == "head"
            self._metrics = NodeMetrics(self._node, self._bus, self._scheduler if head else None)

    @property
    def node_id(self) -> str:
        """Id of the node this mesh runs agents on."""
        return self._node.id

    @property
    def root(self) -> AgentRef:
        """The root supervisor: parent of every agent spawned without a supervisor."""
        if self._root_ref is None:
            raise RuntimeError("the mesh is not started: use 'async with Mesh() as mesh:'")
        return self._root_ref

    async def __aenter__(self) -> Mesh:
        if self._entered:
            raise RuntimeError("a Mesh can be entered only once")
        self._entered = True
        if self.config.tracing and not tracing.enabled():
            tracing.enable()  # ImportError without OpenTelemetry: before anything starts
            self._tracing = True
        self._node.bind_loop()
        self._token = current_node.set(self._node)
        self._failure = asyncio.get_running_loop().create_future()
        self._started = asyncio.get_running_loop().time()
        try:
            await self._start()
        except BaseException:
            await self.aclose()  # a failed join leaves no server or task behind
            raise
        return self

    async def _start(self) -> None:
        if self._metrics is not None:
            # Imported only now: a mesh without metrics never loads prometheus_client.
            from .metrics.prometheus import MetricsServer

            server = MetricsServer(
                self._metrics, self._metrics_host(), self.config.metrics_port or 0
            )
            server.start()
            self._metrics_server = server
        if self._node.transport is not None:
            await self._node.transport.start()
        self._root_ref = await self._node.spawn(
            Supervisor,
            (self._root_spec,),
            exit_listener=self._root_exited,
            agent_id=f"sys.root.{self.node_id}",
        )
        root_cell = self._node.cell_of(self._root_ref)
        assert root_cell is not None
        root = root_cell.instance
        assert isinstance(root, Supervisor)
        self._root = root
        if self._membership is not None:
            await self._membership.start(self._start_spec, self._start_specs)

    def _metrics_host(self) -> str:
        """Metrics are served on the host the node listens on (loopback if it does not)."""
        listen = self.config.listen
        return listen.rsplit(":", 1)[0].strip("[]") if listen else "127.0.0.1"

    @property
    def metrics_url(self) -> str | None:
        """Where this node's metrics are served (``http://host:port/metrics``), once the
        mesh started with ``metrics_port``; None otherwise."""
        server = self._metrics_server
        return None if server is None else server.url

    @property
    def address(self) -> str | None:
        """The address other nodes dial to reach this one (``host:port``: see
        ``advertise``), or None if embedded."""
        membership = self._membership
        return None if membership is None else membership.transport.address

    async def nodes(self) -> list[NodeInfo]:
        """The cluster's nodes as the head sees them; just this one if embedded."""
        if self._membership is None:
            cells = [c for c in self._node.cells.values() if not c.id.startswith("sys.")]
            depth = sum(len(c.mailbox) for c in cells)
            view = self._scheduler.view.nodes[self.node_id]
            used = {k: v for k, v in view.used.items() if v}
            info = NodeInfo(
                self.node_id, "", "embedded", view.total, view.labels, len(cells), depth
            )
            uptime = asyncio.get_running_loop().time() - self._started
            return [dataclasses.replace(info, used=used, uptime=uptime)]
        return await self._membership.nodes()

    async def placement_report(self) -> tuple[int, list[str]]:
        """(spawns waiting for room, the latest placement failures, oldest first), as
        the head's scheduler sees them."""
        if self._membership is None or self._membership.role == "head":
            scheduler = self._scheduler
            return len(scheduler.waiting), list(scheduler.failures)
        return await self._membership.placement_report()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        failure = self._failure
        if exc is None and failure is not None and failure.done() and not self._failure_seen:
            error = failure.result()
            if error is not None:
                raise error

    async def aclose(self) -> None:
        """Stop every agent, newest first; idempotent."""
        if self._node.closed:
            return
        try:
            # The root first: it stops children on other nodes while still a member.
            if self._root_ref is not None:
                await self._root_ref.stop()
            await self._flush()
            if self._membership is not None:
                await self._membership.stop()
            await self._node.close()
            await self._bus.aclose()
            await self._node.state_store.aclose()
        finally:
            if self._metrics_server is not None:
                await self._metrics_server.aclose()
            if self._failure is not None and not self._failure.done():
                self._failure.set_result(None)  # closed without the root giving up
            if self._tracing:
                self._tracing = False
                tracing.disable()  # and export what was recorded
            if self._token is not None:
                # Closed from another task or context: nothing to restore there.
                with contextlib.suppress(ValueError):
                    current_node.reset(self._token)
                self._token = None

    async def drain(self) -> None:
        """Leave the cluster gracefully, handing agents over first: every agent here
        that a supervisor on another node owns stops, and that supervisor starts it
        again on another node that fits it (as when a node dies, but in order and
        with nothing lost); placement picks this node no more. Then the mesh closes
        as `aclose` does. Daemons do this on SIGTERM and SIGINT. Idempotent; on an
        embedded mesh it is `aclose`."""
        if self._membership is not None and not self._node.closed and self._entered:
            await self._membership.drain()
        await self.aclose()

    async def wait_drain_request(self) -> None:
        """Wait until another program asks this node to drain (``agentmesh drain``,
        `drain_node`); the program hosting the node then calls `drain`."""
        if self._membership is None:
            await asyncio.Future()  # an embedded mesh is never asked: wait forever
        assert self._membership is not None
        await self._membership.drain_requested.wait()

    async def drain_node(self, node_id: str) -> None:
        """Ask node ``node_id`` to drain (hand its agents over and leave, see `drain`);
        returns once it has left. Bound the wait with ``asyncio.timeout`` if needed."""
        if self._membership is None:
            raise AgentUnavailable(f"node {node_id} is not reachable: this mesh is embedded")
        service = self._membership.service(node_id)
        left = asyncio.ensure_future(self._node.wait_terminated(service))
        try:
            await service.drain()
            await left
        finally:
            left.cancel()

    async def _flush(self) -> None:
        """Before leaving: wait (up to the shutdown timeout) until what this node told
        agents on other nodes is in their mailboxes, so closing loses none of it."""
        transport = self._node.transport
        if transport is None:
            return
        timeout = self._node.shutdown_timeout
        left = await transport.flush(timeout)
        if left:
            log.warning(
                "%d tells to agents on other nodes not yet delivered after %ss; closing",
                left,
                timeout,
            )

    def _root_exited(self, cell: Cell, reason: ExitReason, error: str | None) -> bool:
        if reason == "crash" and self._failure is not None and not self._failure.done():
            detail = (error or "").removeprefix("RestartIntensityExceeded: ")
            detail = detail.replace(f"supervisor {cell.label!r}", "the mesh's root supervisor")
            self._failure.set_result(RestartIntensityExceeded(detail))
        return False

    @property
    def state_store(self) -> StateStore:
        """Where this mesh's agents' snapshots are kept."""
        return self._node.state_store

    async def wait_failure(self) -> RestartIntensityExceeded | None:
        """Wait until the root supervisor gives up, and return why; None if the mesh
        closed without that happening.

        Once retrieved here, the failure is no longer raised when the mesh closes.
        """
        if self._failure is None:
            raise RuntimeError("the mesh is not started: use 'async with Mesh() as mesh:'")
        failure = await asyncio.shield(self._failure)
        self._failure_seen = True
        return failure

    def _check_open(self) -> None:
        if not self._entered:
            raise RuntimeError("use the Mesh as 'async with Mesh() as mesh:' before spawning")

    async def spawn(
        self,
        agent_class: type[A] | Callable[..., A],
        /,
        *args: Any,
        name: str | None = None,
        mailbox_size: int | None = None,
        concurrency: int | None = None,
        supervisor: AgentRef | None = None,
        restart: Restart | None = None,
        shutdown: float | None = None,
        checkpoint_every: int = 0,
        node: str | None = None,
        detached: bool = False,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, Selector] | None = None,
        strategy: Strategy | None = None,
        placement_timeout: float | None = None,
    ) -> AgentRef:
        """Start an agent and return its ref once ``on_start`` has run.

        The agent's own arguments are positional; constructor keywords go through
        ``functools.partial(AgentClass, key=value)``. Options are keyword-only:
        ``name`` (unique in the mesh; `NameTaken` otherwise), ``mailbox_size`` and
        ``concurrency`` (override the class attributes), ``supervisor`` (a
        `Supervisor`'s ref; default: the mesh's root), ``restart`` (under the root,
        ``temporary`` by default: never restarted, ``transient`` or ``permanent`` to
        opt in; under a given supervisor, ``permanent`` by default, as `ChildSpec`),
        ``shutdown`` (its stop timeout) and ``checkpoint_every`` (save ``snapshot()``
        after every that many handled messages; 0 = only on ``self.checkpoint()``).

        Placement: ``resources`` (e.g. ``{"gpu": 1, "cpu": 0.5}``) are reserved on the
        chosen node until the agent ends; ``labels`` select nodes (a string for
        equality, or `In`, `NotIn`, `Exists`, `DoesNotExist`); ``strategy`` is
        ``"balanced"`` (default), ``"pack"``, ``"spread"``, `OnNode`, `Near` or
        `AwayFrom`; ``node`` names the node outright. Without any of these the agent
        starts on this node (for a driver: on a node placement picks). A request no
        node could ever satisfy raises `PlacementError` at once; one that only lacks
        free capacity waits up to ``placement_timeout`` (default: the mesh's).
        An agent a driver starts elsewhere is stopped when the driver leaves, unless
        ``detached``. Names are unique across the cluster. Raises `SpawnError` if the
        constructor or ``on_start`` raised.
        """
        if not self._entered:
            self._check_open()  # raises
        if self._node.closed:
            raise RuntimeError("the mesh is closed")
        if (
            supervisor is None
            and restart is None
            and name is None
            and node is None
            and shutdown is None
            and not checkpoint_every
            and resources is None
            and labels is None
            and strategy is None
            and placement_timeout is None
        ):
            membership = self._membership
            if membership is None or membership.role != "driver":  # (a driver places)
                root = self._root
                if root is None or root._am_cell.instance is not root:  # (an ended cell
                    root = self._live_root()  # has none): raises, saying why
                ref = root._start_plain(agent_class, args, mailbox_size, concurrency)
                if ref is not None:  # nothing to await: started already
                    return ref
        if restart is None:
            restart = "temporary" if supervisor is None else "permanent"
        spec = ChildSpec(
            agent_class,
            *args,
            name=name,
            restart=restart,
            shutdown=shutdown,
            mailbox_size=mailbox_size,
            concurrency=concurrency,
            checkpoint_every=checkpoint_every,
            node=node,
            resources=resources,
            labels=labels,
            strategy=strategy,
            placement_timeout=placement_timeout,
        )
        return await self._spawn_spec(spec, supervisor, node, detached)

    async def _spawn_spec(
        self, spec: ChildSpec, supervisor: AgentRef | None, node: str | None, detached: bool
    ) -> AgentRef:
        """Place and start ``spec`` as `spawn` does."""
        if supervisor is not None:
            # Its supervisor places it (and places it again if its node dies).
            return await self._start_spec(spec, supervisor)
        membership = self._membership
        driver = membership is not None and membership.role == "driver"
        request = spec.placement
        ticket: Ticket | None = None
        placer = self._node.placer
        if placer is not None and (not request.is_default or (driver and node is None)):
            if node is not None:
                request = dataclasses.replace(request, strategy=OnNode(node))
            ticket = await placer.reserve(request)
            node = ticket.node
        if node == self.node_id:
            node = None  # here is where a local child starts anyway
        if node is not None and membership is None:
            raise AgentUnavailable(f"node {node} is not reachable: this mesh is embedded")
        try:
            if node is not None and detached:
                # Lives on by itself, a child of that node's own root supervisor.
                assert membership is not None
                spec = spec.on_node(None)
                return await membership.spawn_on(node, spec, ticket)
            # A child of this node's root on `node` (default: here): it is stopped with
            # the root, and restarted per its restart type, elsewhere if its node dies.
            return await self._start_spec(spec.on_node(node), None, ticket)
        except BaseException:
            if ticket is not None and placer is not None:
                placer.release(ticket.key)
            raise

    async def spawn_many(
        self,
        agent_class: type[A] | Callable[..., A],
        args_list: Iterable[tuple[Any, ...]],
        /,
        *,
        names: Iterable[str | None] | None = None,
        mailbox_size: int | None = None,
        concurrency: int | None = None,
        supervisor: AgentRef | None = None,
        restart: Restart | None = None,
        shutdown: float | None = None,
        checkpoint_every: int = 0,
        node: str | None = None,
        detached: bool = False,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, Selector] | None = None,
        strategy: Strategy | None = None,
        placement_timeout: float | None = None,
    ) -> list[AgentRef]:
        """Start one agent of ``agent_class`` per tuple of arguments in ``args_list``,
        with the options of `spawn` shared by all, and return their refs in order once
        every ``on_start`` has run. ``names`` (optional) gives each its name (None: no
        name); names must be unique, within the batch too.

        Each agent is placed and started as `spawn` would place and start it (the
        same supervisor, restart type and resources; restarted elsewhere if its node
        dies, where its restart type says so), but the batch costs one placement
        request to the head for all the agents, and one message to each node that
        hosts some of them, which starts them one after the other.

        Placement is decided for the whole batch before any agent starts: if some
        agent could never be hosted (or the batch could never fit), `PlacementError`
        at once; if the batch fits the cluster but not its free capacity now, it
        waits for room for all of it, up to ``placement_timeout``, holding nothing
        meanwhile, then raises `PlacementError`. Nothing has started then.

        If some agents do not start (their constructor or ``on_start`` raised,
        `NameTaken`, their node died), those that did start are stopped and
        `SpawnManyError` is raised: an `ExceptionGroup` of the failures, each noted
        with its index in ``args_list`` (also ``err.failed``, index -> error). So an
        error leaves nothing of the batch running, and a return means all of it
        runs; but unlike `spawn_gang`, agents may have run (and been stopped) before
        the error. Invalid options raise `ValueError` or `TypeError` before anything.
        """
        self._check_open()
        if self._node.closed:
            raise RuntimeError("the mesh is closed")
        batch = list(args_list)
        for args in batch:
            if not isinstance(args, tuple):
                raise TypeError(
                    f"spawn_many takes one tuple of arguments per agent, got {args!r} "
                    f"(for agents of one argument each: [(x,) for x in xs])"
                )
        given = [None] * len(batch) if names is None else list(names)
        if len(given) != len(batch):
            raise ValueError(f"{len(given)} names for {len(batch)} agents")
        seen: set[str] = set()
        for name in given:
            if name is None:
                continue
            if not isinstance(name, str) or not name:
                raise ValueError(f"an agent name must be a non-empty string, got {name!r}")
            if name in seen:
                raise ValueError(f"the name {name!r} is given twice")
            seen.add(name)
        if restart is None:
            restart = "temporary" if supervisor is None else "permanent"
        template = ChildSpec(
            agent_class,
            restart=restart,
            shutdown=shutdown,
            mailbox_size=mailbox_size,
            concurrency=concurrency,
            checkpoint_every=checkpoint_every,
            node=node,
            resources=resources,
            labels=labels,
            strategy=strategy,
            placement_timeout=placement_timeout,
        )
        specs = [template._replaced(args=a, name=n) for a, n in zip(batch, given, strict=True)]
        if not specs:
            return []
        if supervisor is not None:
            # Its supervisor places them (and places them again if their node dies).
            outcomes = await self._start_specs_under(specs, supervisor)
            return await settle(outcomes, specs, self._node)
        membership = self._membership
        driver = membership is not None and membership.role == "driver"
        request = template.placement
        placer = self._node.placer
        tickets: list[Ticket | None] = [None] * len(specs)
        targets: list[str | None] = [node] * len(specs)
        if placer is not None and (not request.is_default or (driver and node is None)):
            if node is not None:
                request = dataclasses.replace(request, strategy=OnNode(node))
            tickets = list(await placer.reserve_many([request] * len(specs)))
            targets = [t.node if t is not None else None for t in tickets]
        targets = [None if t == self.node_id else t for t in targets]
        try:
            if membership is None and any(t is not None for t in targets):
                raise AgentUnavailable(f"node {node} is not reachable: this mesh is embedded")
            if detached:
                outcomes = await self._start_detached(specs, targets, tickets)
            else:
                # Children of this node's root on their nodes (default: here): stopped
                # with the root, restarted per their restart type, elsewhere if their
                # node dies.
                placed = [s.on_node(t) for s, t in zip(specs, targets, strict=True)]
                outcomes = await self._start_specs(placed, tickets)
        except BaseException:
            if placer is not None:
                for ticket in tickets:
                    if ticket is not None:
                        placer.release(ticket.key)
            raise
        return await settle(outcomes, specs, self._node)

    async def _start_specs(
        self, specs: list[ChildSpec], tickets: list[Ticket | None]
    ) -> list[AgentRef | Exception]:
        """Start ``specs`` as children of this node's root, each holding its ticket's
        resources: each one's ref, or why it did not start."""
        root = self._live_root()
        return await start_many_directly(root, specs, tickets)

    async def _start_specs_under(
        self, specs: list[ChildSpec], supervisor: AgentRef
    ) -> list[AgentRef | Exception]:
        if supervisor.node == self.node_id or self._node.cell_of(supervisor) is not None:
            cell = self._node.cell_of(supervisor)
            local = None if cell is None else cell.instance
            if not isinstance(local, Supervisor):
                raise AgentUnavailable(f"{supervisor} is not a live supervisor")
            return await start_many_directly(local, specs)
        if self._membership is None:
            raise AgentUnavailable(f"supervisor {supervisor} is not reachable")
        spawner = self._membership.spawner(supervisor.node)
        timeout = self._node.ask_timeout * len(specs)
        outcome = await spawner.start_children.ask(supervisor.id, specs, timeout=timeout)
        if isinstance(outcome, AgentmeshError):
            raise outcome
        outcomes: list[AgentRef | Exception] = outcome
        return outcomes

    async def _start_detached(
        self, specs: list[ChildSpec], targets: list[str | None], tickets: list[Ticket | None]
    ) -> list[AgentRef | Exception]:
        """Start each spec on its target node as a child of that node's own root (here:
        of this one's): one message per node."""
        outcomes: list[AgentRef | Exception | None] = [None] * len(specs)
        groups: dict[str | None, list[int]] = {}
        for i, target in enumerate(targets):
            groups.setdefault(target, []).append(i)

        async def start(target: str | None, indices: list[int]) -> None:
            chosen = [specs[i].on_node(None) for i in indices]
            held = [tickets[i] for i in indices]
            try:
                if target is None:
                    got = await self._start_specs(chosen, held)
                else:
                    assert self._membership is not None
                    spawner = self._membership.spawner(target)
                    timeout = self._node.ask_timeout * len(chosen)
                    got = await spawner.spawn_many.ask(chosen, held, timeout=timeout)
                    if isinstance(got, AgentmeshError):
                        raise got
            except Exception as exc:  # none of them is known to have started
                got = [exc] * len(indices)
                placer = self._node.placer
                if placer is not None:
                    for ticket in held:
                        if ticket is not None:
                            placer.release(ticket.key)
            for i, outcome in zip(indices, got, strict=True):
                outcomes[i] = outcome

        await asyncio.gather(*(start(t, i) for t, i in groups.items()))
        return [o if o is not None else AgentUnavailable("not started") for o in outcomes]

    async def spawn_gang(
        self,
        specs: Iterable[ChildSpec],
        *,
        strategy: GangStrategy = "pack",
        placement_timeout: float | None = None,
    ) -> list[AgentRef]:
        """Start a group of agents all at once, or none of them (Ray's placement groups).

        Each `ChildSpec` gives its agent, name, restart type, ``resources`` and
        ``labels`` (not ``node`` or ``strategy``: the gang's ``strategy`` places them
        together): ``pack`` (as few nodes as will do), ``spread`` (distinct nodes as
        far as possible), ``strict_pack`` (all on one node), ``strict_spread`` (each on
        a node of its own). Resources for all are reserved in one step; if that cannot
        be done now the gang waits up to ``placement_timeout``, and raises
        `PlacementError` (at once if no set of nodes could ever host it). If one
        member fails to start, those started are stopped and the error raised. The
        members are children of the mesh's root, refs in the order of ``specs``.
        """
        self._check_open()
        members = list(specs)
        for spec in members:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"spawn_gang takes ChildSpec objects, got {spec!r}")
            if spec.node is not None or spec.placement.strategy != "balanced":
                raise ValueError("a gang member gives no node or node rule: the gang places it")
        placer = self._node.placer
        assert placer is not None
        requests = [dataclasses.replace(s.placement, strategy="balanced") for s in members]
        tickets = await placer.reserve_gang(requests, strategy, placement_timeout)
        placed = [
            spec.on_node(None if ticket.node == self.node_id else ticket.node)
            for spec, ticket in zip(members, tickets, strict=True)
        ]
        try:
            # One message to each node the gang is on, as for spawn_many.
            outcomes = await self._start_specs(placed, list(tickets))
        except BaseException:
            for ticket in tickets:  # none started, or those started were stopped
                placer.release(ticket.key)
            raise
        refs = [o for o in outcomes if isinstance(o, AgentRef)]
        failure = next((o for o in outcomes if isinstance(o, Exception)), None)
        if failure is not None:
            for ref in reversed(refs):
                with contextlib.suppress(AgentmeshError):
                    await ref.stop()
            raise failure
        return refs

    async def _start_spec(
        self,
        spec: ChildSpec,
        supervisor: AgentRef | None = None,
        ticket: Ticket | None = None,
    ) -> AgentRef:
        """Start ``spec`` as a child of ``supervisor`` (else of this node's root), with
        the resources ``ticket`` reserved, if any."""
        if supervisor is not None:
            cell = self._node.cell_of(supervisor)
            local = None if cell is None else cell.instance
            if not isinstance(local, Supervisor):
                ref: AgentRef = await supervisor.start_child(spec)
                return ref
            # A local supervisor starts the child directly rather than through its
            # mailbox, so errors come as they are (NameTaken, SpawnError ...).
            return await start_directly(local, spec)
        # The root is local: start the child directly rather than through its mailbox.
        return await start_directly(self._live_root(), spec, ticket)

    def _live_root(self) -> Supervisor:
        if self._node.closed:
            raise RuntimeError("the mesh is closed")
        root = None if self._root_ref is None else self._node.cell_of(self._root_ref)
        if self._root is None or root is None:
            raise RuntimeError("the mesh is not started")
        if root.instance is not self._root:
            raise AgentUnavailable("the mesh's root supervisor gave up; see wait_failure()")
        return self._root

    async def agent(
        self,
        agent_class: type[A] | Callable[..., A],
        key: str,
        /,
        *,
        idle_after: float | None = None,
        mailbox_size: int | None = None,
        concurrency: int | None = None,
        shutdown: float | None = None,
        checkpoint_every: int = 0,
        node: str | None = None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, Selector] | None = None,
        strategy: Strategy | None = None,
        placement_timeout: float | None = None,
    ) -> VirtualRef:
        """Get, or create, the *virtual agent* of ``agent_class`` for ``key`` (as
        Orleans grains and Dapr actors): one agent per class and key in the whole
        cluster, built as ``agent_class(key)`` and named ``"<module>.<class>/<key>"``.

        Of concurrent callers anywhere, one creates it and every one gets the same
        agent: its node claims the name cluster-wide before building it. It is
        restored from the state store under its name (``snapshot`` / ``restore``).
        With ``idle_after`` it passivates after that many seconds without messages:
        it saves its snapshot and stops; the returned `VirtualRef` activates it again
        at the next call (here or, if its node died, on another). The other options
        are `spawn`'s; a virtual agent is ``detached`` (it lives on when this mesh
        leaves) and never restarted (the next call activates it again). See
        docs/virtual-agents.md.
        """
        self._check_open()
        if self._node.closed:
            raise RuntimeError("the mesh is closed")
        if not isinstance(key, str):
            raise TypeError(f"a virtual agent's key is a string, got {key!r}")
        if idle_after is not None and (isinstance(idle_after, bool) or not idle_after > 0):
            raise ValueError(f"idle_after must be positive seconds or None, got {idle_after!r}")
        spec = ChildSpec(
            agent_class,
            key,
            name=virtual_name(agent_class, key),
            restart="temporary",
            shutdown=shutdown,
            mailbox_size=mailbox_size,
            concurrency=concurrency,
            checkpoint_every=checkpoint_every,
            node=node,
            resources=resources,
            labels=labels,
            strategy=strategy,
            placement_timeout=placement_timeout,
        )._replaced(_claim_first=True, _idle_after=idle_after)
        ref = VirtualRef._create(spec, self)
        await self._activations.resolve(spec, None)
        return ref

    async def _spawn_virtual(self, spec: ChildSpec) -> AgentRef:
        """Start a virtual agent's activation, where `spawn` would start it."""
        return await self._spawn_spec(spec, None, spec.node, True)

    async def _release_name(self, name: str, ref: AgentRef) -> None:
        """Release ``name`` at the head if ``ref``, which has ended, still holds it
        (its node's own release may not have arrived yet)."""
        if self._membership is not None:
            await self._membership.release_stale_name(name, ref)

    async def get(self, name: str) -> AgentRef:
        """The ref of the agent registered as ``name``, on any node of the cluster;
        raises `AgentNotFound`."""
        try:
            return self._node.lookup(name)
        except AgentNotFound:
            if self._membership is None:
                raise
        return await self._membership.lookup(name)

    async def info(self, ref: AgentRef, *, timeout: float = 5.0) -> AgentInfo:
        """A frozen snapshot of an agent's state and counters, wherever it lives.

        An agent of this node is read here (also after it ended, through a ref that
        reached it); one on another node is asked of that node, which answers within
        ``timeout`` seconds or `AskTimeout`; `AgentUnavailable` if the agent has ended
        there or its node is away.
        """
        return await self._node.info_anywhere(ref, timeout)

    async def agents(self) -> list[AgentInfo]:
        """Snapshots of every live agent on this mesh's node, oldest first (the
        framework's own agents, with ids ``sys.*``, excluded). For the whole cluster,
        `list_agents`."""
        return local_agents(self._node, None, sys.maxsize)[1]

    async def list_agents(
        self,
        *,
        node: str | None = None,
        agent_class: type | str | None = None,
        timeout: float = 5.0,
        limit: int = DEFAULT_LIMIT,
    ) -> AgentListing:
        """Snapshots of the live user agents of every live node of the cluster (of
        node ``node`` only, if given), or of those of ``agent_class`` (a class, or its
        qualified name).

        Each node answers for its own agents, all at once; one that does not answer
        within ``timeout`` seconds is named in ``unreachable`` with why, and the
        listing goes on without it. A node lists its oldest ``limit`` agents at most
        (``truncated`` says which had more). Raises `AgentNotFound` if ``node`` is not
        a live node. On an embedded mesh, this node's agents.
        """
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        if isinstance(agent_class, type):
            agent_class = agent_class.__qualname__
        if self._membership is None:
            live = [self.node_id]
        else:
            live = [n.id for n in await self._membership.nodes() if n.alive]
        if node is not None:
            if node not in live:
                raise AgentNotFound(f"no live node {node!r}; live nodes: {', '.join(live)}")
            live = [node]

        async def ask(peer: str) -> Any:  # (count, infos), as the peer says
            if peer == self.node_id:
                return local_agents(self._node, agent_class, limit)
            return await ask_node(self._node, peer, "!node.agents", (agent_class, limit), timeout)

        answers = await asyncio.gather(*(ask(peer) for peer in live), return_exceptions=True)
        agents: list[AgentInfo] = []
        unreachable: dict[str, str] = {}
        truncated: dict[str, int] = {}
        for peer, answer in zip(live, answers, strict=True):
            if isinstance(answer, AgentmeshError):
                unreachable[peer] = f"{type(answer).__name__}: {answer}"
            elif isinstance(answer, BaseException):
                raise answer
            elif not (isinstance(answer, tuple) and len(answer) == 2):
                unreachable[peer] = f"answered what is no listing: {type(answer).__name__}"
            else:
                count, infos = answer
                agents.extend(infos)
                if count > len(infos):
                    truncated[peer] = count
        return AgentListing(agents, unreachable, truncated)

    async def publish(self, topic: str, payload: Any) -> int:
        """Publish ``payload`` on ``topic`` to every matching subscription.

        Each subscriber gets it through its own mailbox (or stream buffer), typed by
        its handler's annotation; one that cannot take it (failed validation, stopped,
        full with ``overflow="drop"``) gets nothing, and the message goes to
        ``agentmesh.dead_letters`` with the reason. With ``overflow="backpressure"``
        (the default) a full subscriber makes this wait for room. Messages of one
        publisher on one topic arrive in the order published. Returns the number of
        matching subscriptions.
        """
        sender = current_cell.get()  # from inside an agent, that agent is the sender
        return await self._bus.publish(topic, payload, None if sender is None else sender.id)

    def subscribe(
        self, pattern: str, *, maxsize: int = 1000, overflow: Overflow = "backpressure"
    ) -> TopicStream:
        """Subscribe this program (outside any agent) to ``pattern``, from now on.

        ``async with mesh.subscribe("sim.**") as stream: async for topic, msg in
        stream: ...`` — at most ``maxsize`` messages wait in the buffer; when it is
        full, publishers wait (``"backpressure"``) or the message is dead-lettered
        (``"drop"``). Leaving the ``async with`` (or ``aclose()``) unsubscribes.
        """
        return self._bus.stream(pattern, maxsize, overflow)

    def bus_statistics(self) -> BusStatistics:
        """Counters of this node's bus: published, deliveries, dead letters, and the
        patterns subscribed here (the node's interest summary)."""
        return self._bus.statistics()

    async def wait_terminated(self, ref: AgentRef) -> Terminated:
        """Wait until ``ref``'s agent ends for good (restarts do not count); returns
        the `Terminated` notice saying why."""
        return await self._node.wait_terminated(ref)


def node_of(mesh: Mesh) -> Node:
    """The kernel node a mesh runs its agents on: for the layers built on the mesh
    (the simulation's step asks the policies of this node directly)."""
    return mesh._node

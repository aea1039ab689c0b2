"""Supervised children on other nodes.

A supervisor's child that lives on another node is started there by that node's
`NodeService` with a `ChildLink` as its exit listener: the link decides at once,
from the child's restart type, whether the child waits for a restart, and tells the
supervisor (``!child_exited``), which decides the rest in a turn of its own. On the
supervisor's side a `RemoteCell` stands in for the child's cell: it has the surface
the supervisor uses (state, stop, suspend, restart, end) and carries each call to
the child's node. If that node dies, the supervisor (which monitors its remote
children) hears ``node_down``, and restarting the child starts a new one on another
live node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..kernel.cell import Cell, State
from ..kernel.envelope import NO_KWARGS, Envelope, new_chain
from ..kernel.errors import AgentmeshError, AgentUnavailable
from ..kernel.exits import ExitReason, Terminated
from ..kernel.info import AgentInfo
from ..kernel.placing import Ticket
from ..kernel.ref import AgentRef
from ..supervision.spec import ChildSpec
from ..supervision.supervisor import takes_restart

if TYPE_CHECKING:
    from ..kernel.node import Node
    from .member import Membership

__all__ = ["ChildLink", "OrphanGuard", "RemoteCell", "RemoteChildren"]

log = logging.getLogger("agentmesh.cluster")


class ChildLink:
    """The exit listener of a child whose supervisor lives on another node.

    Each notice names the instance (its agent id) so the supervisor can ignore one
    from an instance it no longer owns (a stale one on a node that came back).
    ``moving`` is set when this node is draining: the child's exit then reads to
    its supervisor as its node going down, so it starts again elsewhere.
    """

    __slots__ = ("key", "moving", "node", "outbox", "restart", "supervisor")

    def __init__(self, node: Node, supervisor: AgentRef, key: int, restart: str) -> None:
        self.node = node
        self.supervisor = supervisor
        self.key = key
        self.restart = restart
        self.moving: str | None = None
        #: While draining, notices wait here for the drain to send (and await) them.
        self.outbox: list[tuple[str, Envelope]] = []

    @property
    def supervisor_id(self) -> str:
        """The supervisor's id (`AgentInfo.supervisor` of the child)."""
        return self.supervisor.id

    def __call__(self, cell: Cell, reason: ExitReason, error: str | None) -> bool:
        if self.moving is not None:
            notice = (self.key, "node_down", self.moving, takes_restart(self.restart, "node_down"))
            self._tell(cell, notice)
            return False  # this instance ends here; its supervisor starts a new one
        takes = not cell.stop_requested and takes_restart(self.restart, reason)
        # A crash's traceback goes with the news: the supervisor's node logs it (the
        # driver that started the agent sees it, not just this node's log).
        traceback = cell.last_traceback if reason == "crash" else None
        self._tell(cell, (self.key, reason, error, takes), traceback)
        return takes

    def _tell(self, cell: Cell, notice: tuple[Any, ...], traceback: str | None = None) -> None:
        env = Envelope(
            self.supervisor.id,
            "!child_exited",
            (*notice, cell.id, traceback),
            NO_KWARGS,
            None,
            new_chain(),
            None,
        )
        if self.moving is not None:
            self.outbox.append((self.supervisor.node, env))
        else:
            self.node.send_to_peer(self.supervisor.node, env)


class OrphanGuard:
    """Watches a child's supervisor on another node: when it ends for good, the
    child is stopped (its exit listener then has nobody to tell)."""

    __slots__ = ("cell",)

    def __init__(self, cell: Cell) -> None:
        self.cell = cell

    def deliver_notice(self, method: str, notice: Terminated) -> None:
        if notice.restarting or self.cell.state in (State.STOPPED, State.CRASHED):
            return
        log.warning("stopping %s: its supervisor ended (%s)", self.cell.label, notice.reason)
        self.cell.exit_listener = None
        self.cell.node.run_background(self.cell.stop(self.cell.node.shutdown_timeout))


class RemoteCell:
    """The supervisor-side stand-in for a child's cell on another node (a kernel
    `RemoteChildHandle`)."""

    remote = True

    def __init__(
        self,
        children: RemoteChildren,
        spec: ChildSpec,
        ref: AgentRef,
        supervisor: AgentRef,
        key: int,
    ) -> None:
        self.children = children
        self.spec = spec
        self.ref = ref
        self.supervisor = supervisor
        self.key = key
        self.state = State.RUNNING
        self.restarts = 0
        self.last_error: str | None = None
        self.lost = False  # its node died: a restart starts it elsewhere

    @property
    def name(self) -> str | None:
        return self.ref.name

    @property
    def label(self) -> str:
        return self.ref.name or self.ref.id

    def exited(
        self, reason: ExitReason, error: str | None, taken: bool, traceback: str | None = None
    ) -> None:
        if error is not None:
            self.last_error = error
        if reason == "crash":
            _log_crash(self.ref, error, traceback)
        if reason == "node_down":  # its node is draining: start it elsewhere
            self.lost = True
        if taken:
            self.state = State.RESTARTING
        else:
            self.state = State.CRASHED if reason in ("crash", "node_down") else State.STOPPED

    def node_lost(self, error: str | None) -> None:
        self.lost = True
        self.last_error = error

    async def stop(self, timeout: float | None) -> None:
        if not self.lost and self.state not in (State.STOPPED, State.CRASHED):
            try:
                await self.children.operate(self.ref, "stop", timeout)
            except AgentmeshError as exc:  # its node is gone: so is the child
                log.info("stopping %s: %s", self.label, exc)
        if self.state is not State.CRASHED:
            self.state = State.STOPPED

    async def suspend(self, timeout: float) -> None:
        if not self.lost:
            try:
                await self.children.operate(self.ref, "suspend", timeout)
            except AgentmeshError as exc:
                log.info("suspending %s: %s", self.label, exc)
        self.state = State.RESTARTING

    async def restart(self) -> bool:
        if self.lost:  # a new child on another live node
            try:
                self.ref = await self.children.respawn(self)
            except AgentmeshError as exc:
                log.error("could not restart %s elsewhere: %s", self.label, exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.state = State.CRASHED
                return False
            self.lost = False
            ok = True
        else:
            ok = bool(await self.children.operate(self.ref, "restart", None))
        if ok:
            self.restarts += 1
            self.state = State.RUNNING
        return ok

    def end(self, state: State = State.STOPPED, reason: str | None = None) -> None:
        self.state = state
        if not self.lost:
            self.children.operate_later(self.ref, "end", reason)

    async def info(self) -> AgentInfo | None:
        if self.lost:
            return None
        try:
            info: AgentInfo | None = await self.children.operate(self.ref, "info", None)
        except AgentmeshError:
            return None
        return info


class RemoteChildren:
    """Starts and drives supervised children on other nodes, for supervisors here."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    @property
    def node(self) -> Node:
        return self.membership.node

    async def spawn(
        self,
        spec: ChildSpec,
        supervisor: AgentRef,
        key: int,
        node_id: str,
        ticket: Ticket | None,
    ) -> RemoteCell:
        ref = await self._spawn_on(node_id, spec, supervisor, key, ticket)
        return RemoteCell(self, spec, ref, supervisor, key)

    async def spawn_many(
        self,
        node_id: str,
        specs: list[ChildSpec],
        supervisor: AgentRef,
        keys: list[int],
        tickets: list[Ticket | None],
    ) -> list[RemoteCell | Exception]:
        """Start children on node ``node_id`` in one message, one after the other
        there; return, in order, each one's stand-in or the error that kept it from
        starting. The message may take as long as that many single spawns would
        (``ask_timeout`` each)."""
        batch = [
            (spec.agent_class, spec.args, _options(spec, ticket), key, spec.restart)
            for spec, key, ticket in zip(specs, keys, tickets, strict=True)
        ]
        timeout = self.node.ask_timeout * max(1, len(batch))
        spawner = self.membership.spawner(node_id)
        outcomes = await spawner.spawn_children.ask(batch, supervisor, timeout=timeout)
        refs = [o for o in outcomes if isinstance(o, AgentRef)]
        # Its node's death reaches the supervisor: one monitor request for them all.
        self.node.remote_monitors.watch_many(refs, self.node.cell_of(supervisor))
        return [
            RemoteCell(self, spec, o, supervisor, key) if isinstance(o, AgentRef) else o
            for spec, key, o in zip(specs, keys, outcomes, strict=True)
        ]

    async def stop_many(self, cells: list[RemoteCell]) -> None:
        """Stop children on other nodes: one request to each node, which stops its
        share in the order given; the nodes at the same time."""
        default = self.node.shutdown_timeout
        by_node: dict[str, list[RemoteCell]] = {}
        for cell in cells:
            if not cell.lost and cell.state not in (State.STOPPED, State.CRASHED):
                by_node.setdefault(cell.ref.node, []).append(cell)

        async def stop(node_id: str, group: list[RemoteCell]) -> None:
            timeouts = [cell.spec.shutdown or default for cell in group]
            spawner = self.membership.spawner(node_id)
            try:
                await spawner.stop_children.ask(
                    [cell.ref.id for cell in group], timeouts, timeout=sum(timeouts) + _SLACK
                )
            except AgentmeshError as exc:  # its node is gone: so are they
                log.info("stopping %d children on node %s: %s", len(group), node_id, exc)

        await asyncio.gather(*(stop(n, group) for n, group in by_node.items()))
        for cell in cells:
            if cell.state is not State.CRASHED:
                cell.state = State.STOPPED

    async def respawn(self, cell: RemoteCell) -> AgentRef:
        """Start a child lost with its node again, on another node that fits it."""
        placer = self.node.placer
        assert placer is not None
        # Where the old node is still reachable (it is draining, or this node was
        # the one cut off), make sure the old instance is gone first.
        try:
            timeout = self.node.shutdown_timeout
            await self.operate(cell.ref, "stop", timeout, ask_timeout=timeout + _SLACK)
        except AgentmeshError as exc:
            log.debug("old instance of %s not stopped: %s", cell.label, exc)
        lost = frozenset({cell.ref.node})
        ticket = await placer.reserve(cell.spec.placement, exclude=lost)
        log.warning(
            "restarting %s, lost with node %s, on node %s", cell.label, cell.ref.node, ticket.node
        )
        try:
            return await self._spawn_on(ticket.node, cell.spec, cell.supervisor, cell.key, ticket)
        except BaseException:
            placer.release(ticket.key)
            raise

    async def _spawn_on(
        self,
        node_id: str,
        spec: ChildSpec,
        supervisor: AgentRef,
        key: int,
        ticket: Ticket | None,
    ) -> AgentRef:
        service = self.membership.service(node_id)
        outcome = await service.spawn_child(
            spec.agent_class, spec.args, _options(spec, ticket), supervisor, key, spec.restart
        )
        if isinstance(outcome, AgentmeshError):
            raise outcome
        ref: AgentRef = outcome
        self.node.monitor(ref, self.node.cell_of(supervisor))  # its node's death: news to it
        return ref

    async def operate(
        self, ref: AgentRef, op: str, arg: Any, ask_timeout: float | None = None
    ) -> Any:
        service = self.membership.service(ref.node)
        outcome = await service.child_op.ask(ref.id, op, arg, timeout=ask_timeout)
        if isinstance(outcome, AgentmeshError):
            raise outcome
        return outcome

    def operate_later(self, ref: AgentRef, op: str, arg: Any) -> None:
        try:
            self.membership.service(ref.node).child_op.tell_nowait(ref.id, op, arg)
        except AgentmeshError as exc:
            log.info("could not %s %s: %s", op, ref, exc)


_SLACK = 5.0  # seconds a stop request may take beyond the stop itself

#: Where crashes are logged, here as on the node they happened on.
agent_log = logging.getLogger("agentmesh.agent")


def _log_crash(ref: AgentRef, error: str | None, traceback: str | None) -> None:
    """Log a remote child's crash at ERROR, naming the agent and its node, its
    traceback (formatted there) as the record's ``exc_text``: formatters print it
    as they print a local one's."""
    if not agent_log.isEnabledFor(logging.ERROR):
        return
    if not isinstance(traceback, str):  # (what a peer sent: never worth a crash here)
        traceback = None
    label = ref.name or ref.id
    record = agent_log.makeRecord(
        agent_log.name,
        logging.ERROR,
        __file__,
        0,
        "agent %s crashed on node %s: %s",
        (label, ref.node, error or "unknown error"),
        None,
        extra={"agent": label, "agent_id": ref.id, "agent_node": ref.node},
    )
    record.exc_text = traceback.rstrip("\n") if traceback else None
    agent_log.handle(record)


def _options(spec: ChildSpec, ticket: Ticket | None) -> dict[str, Any]:
    """The options of `Node.spawn` a child's node starts it with."""
    return {
        "name": spec.name,
        "mailbox_size": spec.mailbox_size,
        "concurrency": spec.concurrency,
        "checkpoint_every": spec.checkpoint_every,
        "reservation": ticket,
    }


async def child_op(node: Node, agent_id: str, op: str, arg: Any) -> Any:
    """Run a supervisor's request on a child living on this node."""
    cell = node.cells.get(agent_id)
    if cell is None:
        if op in ("stop", "end"):
            return None
        return AgentUnavailable(f"no live agent {agent_id} on node {node.id}")
    if op == "stop":
        await cell.stop(node.shutdown_timeout if arg is None else arg)
    elif op == "suspend":
        await cell.suspend(arg)
    elif op == "restart":
        return await cell.restart()
    elif op == "end":
        cell.end(State.CRASHED, arg)
    elif op == "info":
        return AgentInfo.of(cell)
    return None

"""The node: one process's agents, their registry, and the routing of messages.

A node delivers to its own agents directly and hands everything else to its
`Transport`, so the same code runs one node in-process, several in one process
(`MemoryNetwork`) or several over gRPC.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import secrets
import threading
from _thread import get_ident
from collections.abc import Awaitable, Callable, Container, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from . import listing, tracing
from .agent import Agent, check_agent_class, method_table
from .answers import Answers
from .asking import Ask
from .cell import AskBatch, Cell, State, TellBatch
from .context import current_cell, current_chain, current_node
from .deadlines import Deadlines
from .dispatch import Dispatcher
from .envelope import NO_KWARGS, Envelope, chains, tell_envelope
from .errors import (
    AgentmeshError,
    AgentNotFound,
    AgentUnavailable,
    AskTimeout,
    MailboxFull,
    NameTaken,
    WrongLoop,
    refused,
)
from .exits import ExitReason, Terminated
from .idle import IdleWatch
from .info import AgentInfo, CrashReport
from .mailbox import DEFAULT_MAILBOX_SIZE
from .methods import MethodTable
from .monitors import RemoteMonitors, RemoteWatcher
from .placing import Placer, Ticket
from .ports import FRAMEWORK_PREFIX, BusPort, NodeRequest, RemoteChildrenPort
from .recent import Recent
from .ref import AgentRef
from .reminders import Reminders
from .state import MemoryStateStore, StateStore
from .timers import Timer, end_timers
from .waits import describe_wait
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .lifecycle import ExitListener
    from .timing import TurnTimer
    from .transport import Transport

__all__ = ["DEFAULT_ASK_TIMEOUT", "DEFAULT_SHUTDOWN_TIMEOUT", "DEFAULT_SLOW_TURN", "Node"]

_new = object.__new__


log = logging.getLogger("agentmesh.node")

#: Seconds an ask waits for its reply unless the mesh or the call says otherwise.
DEFAULT_ASK_TIMEOUT = 30.0
#: Seconds a stopping agent gets to finish its queue and ``on_stop`` before cancellation.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
#: Seconds a turn may block the event loop before the watchdog warns (`Mesh(slow_turn=)`).
DEFAULT_SLOW_TURN = 0.5


_EXITS_KEPT = 10_000
#: How many of its latest crashes a node remembers (`Node.recent_crashes`).
CRASHES_KEPT = 100


class Node:
    """Hosts agents in this process and routes messages to them or to peers."""

    def __init__(
        self,
        *,
        node_id: str | None = None,
        ask_timeout: float = DEFAULT_ASK_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        transport: Transport | None = None,
        state_store: StateStore | None = None,
        slow_turn: float | None = None,
    ) -> None:
        if ask_timeout <= 0 or shutdown_timeout <= 0:
            raise ValueError("ask_timeout and shutdown_timeout must be positive")
        if slow_turn is not None and not slow_turn > 0:
            raise ValueError(f"slow_turn must be positive seconds or None, got {slow_turn}")
        self.id = node_id or secrets.token_hex(4)
        self.ask_timeout = ask_timeout
        self.shutdown_timeout = shutdown_timeout
        self.mailbox_size = mailbox_size
        self.state_store: StateStore = state_store or MemoryStateStore()
        #: The named agents' durable reminders, kept in ``state_store``.
        self.reminders = Reminders(self)
        #: The timers of agents that have some (`Agent.every`, `Agent.after`), by id.
        self.timers: dict[str, set[Timer]] = {}
        #: Agents stopped after a while without messages (virtual agents), by id.
        self.idle: dict[str, IdleWatch] = {}
        self.cells: dict[str, Cell] = {}
        #: Why recently ended agents ended, by id, so late messages get a clear error.
        self.exits: collections.OrderedDict[str, tuple[str, ExitReason, str | None]] = (
            collections.OrderedDict()
        )
        #: This node's latest crashes, for ``!node.crashes`` (the dashboard).
        self.recent_crashes: Recent[CrashReport] = Recent(CRASHES_KEPT)
        self._background: set[asyncio.Task[None]] = set()
        self.remote_monitors = RemoteMonitors(self)
        self.names: dict[str, Cell] = {}
        #: The user-facing object agents see as ``self.mesh`` (set by the mesh layer;
        #: the kernel only hands it out).
        self.facade: object | None = None
        #: The node's pub/sub bus (set by the mesh layer; the kernel only calls it).
        self.bus: BusPort | None = None
        #: The requests other nodes make of this one, by method (`serve`).
        self.requests: dict[str, NodeRequest] = {
            "!node.stop": NodeRequest(self._stop_request),
            "!node.monitor": NodeRequest(self._monitor_request),
            "!node.terminated": NodeRequest(self._terminated_request),
            **listing.requests(self),
        }
        #: Called with each cell that ends for good (the cluster releases its name).
        self.ended_hooks: list[Callable[[Cell], None]] = []
        #: Chooses nodes and holds resources for spawns (set by the mesh layer).
        self.placer: Placer | None = None
        #: Starts supervised children on other nodes (set by the cluster layer).
        self.remote_children: RemoteChildrenPort | None = None
        #: Called with each named agent once started (the cluster claims its name
        #: everywhere; NameTaken stops the agent and fails the spawn).
        self.name_claims: list[Callable[[AgentRef], Awaitable[None]]] = []
        #: Claims many agents' names at once, returning who holds each now (set by the
        #: cluster layer): for batches, which spawn with ``claim_name=False``.
        self.claim_names: Callable[[list[AgentRef]], Awaitable[list[AgentRef]]] | None = None
        self.transport = transport
        self.closed = False
        #: The event loop this node runs on and that loop's thread (`bind_loop`):
        #: refs used from anywhere else raise `WrongLoop` (see `wrong_loop`).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: int | None = None
        #: Seconds a turn may block the loop before the watchdog warns; None: no watchdog.
        self.slow_turn = slow_turn
        self._watchdog: Watchdog | None = None
        #: Times turns, sampled, when metrics are on (set by the mesh layer before the
        #: node runs anything); None: off, and turns cost nothing more.
        self.turn_timer: TurnTimer | None = None
        #: Runs the agents' turns (bound to the loop with the node).
        self.dispatcher = Dispatcher(self)
        self._deadlines = Deadlines(ask_timeout, self._expire)
        self._ids = itertools.count(1)
        if transport is not None:
            transport.attach(self)

    # -- the event loop ---------------------------------------------------------

    def bind_loop(self) -> None:
        """Bind this node to the running event loop, on which alone its agents and refs
        work, and start the slow-turn watchdog on it if ``slow_turn`` is set.

        The mesh calls this as it starts; a node used without it binds to the first
        loop that uses it. Binding again on the same loop does nothing.
        """
        loop = asyncio.get_running_loop()
        if self.loop is loop:
            return
        if self.loop is not None:
            raise self._wrong_loop_error("bind_loop()", loop)
        self.loop = loop
        self.thread = threading.get_ident()
        self.dispatcher.bind(loop)
        if self.slow_turn is not None:
            self._watchdog = Watchdog(self.id, self.slow_turn)
            self._watchdog.start()

    def wrong_loop(self, what: str, ref: AgentRef | None = None, method: str = "") -> None:
        """The slow path of the loop checks on the send paths, taken only when the
        caller is not on this node's loop thread (or loop): bind this node if it has
        no loop yet, else raise `WrongLoop` naming ``what`` was misused, and the remedy.
        Raised before anything is queued or armed, so the mesh is left as it was."""
        loop = asyncio._get_running_loop()
        if self.loop is None and loop is not None:
            self.bind_loop()
            return
        if loop is self.loop and threading.get_ident() == self.thread:
            return  # the checks' fast tests are conservative; this one is exact
        if ref is not None:
            what = f"{what} {ref.name or ref.id}.{method}()"
        raise self._wrong_loop_error(what, loop)

    def _wrong_loop_error(self, what: str, loop: asyncio.AbstractEventLoop | None) -> WrongLoop:
        here = threading.current_thread().name
        mine = next((t.name for t in threading.enumerate() if t.ident == self.thread), "?")
        if self.closed or (self.loop is not None and self.loop.is_closed()):
            where = f"called off its loop after node {self.id}'s mesh has ended"
        elif loop is None:
            where = (
                f"called from thread {here!r}, outside node {self.id}'s event loop "
                f"(which runs in thread {mine!r})"
            )
        else:
            where = (
                f"called on another event loop (in thread {here!r}) than node "
                f"{self.id}'s (in thread {mine!r})"
            )
        return WrongLoop(
            f"{what} {where}; a mesh's refs work on the mesh's own loop only. From "
            f"another thread use ref.method.ask_sync(...) or ref.method.tell_sync(...)"
        )

    # -- agents -----------------------------------------------------------------

    async def spawn(
        self,
        factory: Callable[..., Agent],
        args: tuple[Any, ...],
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        concurrency: int | None = None,
        checkpoint_every: int = 0,
        exit_listener: ExitListener | None = None,
        agent_id: str | None = None,
        reservation: Ticket | None = None,
        claim_name: bool = True,
        claim_first: bool = False,
        idle_after: float | None = None,
    ) -> AgentRef:
        """Create an agent here, run its ``on_start`` and return its ref.

        ``agent_id`` gives a framework agent a well-known id (``sys.<what>.<node>``).

        ``exit_listener`` (its supervisor) learns of every exit of an instance and may
        restart it. ``checkpoint_every`` > 0 saves a snapshot every that many handled
        messages. ``reservation`` holds the resources placement reserved for it,
        released when it ends for good. ``claim_name=False`` leaves claiming its name
        beyond this node to the caller (see ``claim_names``). ``claim_first`` claims the
        name before the instance is built, so an agent that loses its name never runs
        (virtual agents); messages sent meanwhile wait in its mailbox. ``idle_after``
        stops it after that many seconds without messages (`IdleWatch`).
        """
        cell = self._new_cell(
            factory,
            args,
            name,
            mailbox_size,
            concurrency,
            checkpoint_every,
            exit_listener,
            agent_id,
            reservation,
        )
        ref = cell.ref
        if self.bus is not None:
            try:
                self.bus.register_agent(cell)  # live before spawn returns
                await self.bus.sync_interest()
            except BaseException:
                cell.end(State.CRASHED, "its topic subscriptions were refused")
                raise
        if name is not None and claim_name and claim_first:
            for claim in self.name_claims:
                try:
                    await claim(ref)
                except BaseException:
                    cell.end(State.STOPPED, "its name is taken")  # never built
                    raise
        await cell.start()
        if name is not None and claim_name:
            for claim in () if claim_first else self.name_claims:
                try:
                    await claim(ref)
                except BaseException:
                    await cell.stop(self.shutdown_timeout)
                    raise
            try:
                await self.reminders.activate(cell)  # its name is its own now
            except BaseException:
                await cell.stop(self.shutdown_timeout)
                raise
        if idle_after is not None and cell.state is State.RUNNING:
            self.idle[cell.id] = IdleWatch(cell, idle_after)
        return ref

    def spawn_now(
        self,
        factory: Callable[..., Agent],
        args: tuple[Any, ...],
        mailbox_size: int | None,
        concurrency: int | None,
        exit_listener: ExitListener | None,
    ) -> AgentRef | None:
        """`spawn` without awaiting, for an anonymous agent whose class has nothing to
        await to start (no ``on_start``, ``restore`` or topic handlers: then it
        returns None, having done nothing): the common spawn, at about two thirds of
        the cost."""
        cls = factory.func if isinstance(factory, functools.partial) else factory
        methods = getattr(cls, "__dict__", {}).get("_am_method_table")
        if methods is None or not methods.starts_now or methods.topics:
            return None  # (a class seen for the first time goes the full way once)
        cell = self._new_cell(
            factory, args, None, mailbox_size, concurrency, 0, exit_listener, None, None, methods
        )
        cell.start_now()
        return cell.ref

    def _new_cell(
        self,
        factory: Callable[..., Agent],
        args: tuple[Any, ...],
        name: str | None,
        mailbox_size: int | None,
        concurrency: int | None,
        checkpoint_every: int,
        exit_listener: ExitListener | None,
        agent_id: str | None,
        reservation: Ticket | None,
        methods: MethodTable | None = None,
    ) -> Cell:
        """A new agent's cell, registered here (by id and name), not started.
        ``methods``: the class's table, if the caller has it already."""
        if asyncio.get_running_loop() is not self.loop:
            self.wrong_loop("spawn()")
        if self.closed:
            raise AgentUnavailable(f"node {self.id} is closed")
        kwargs = NO_KWARGS
        if isinstance(factory, functools.partial):
            args = factory.args + args
            kwargs = dict(factory.keywords)
            factory = factory.func
        cls = check_agent_class(factory)
        if methods is None:
            methods = method_table(cls)
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"an agent name must be a non-empty string, got {name!r}")
            if name in self.names:
                raise NameTaken(f"an agent named {name!r} already exists")
        if agent_id is None:
            agent_id = f"{next(self._ids):x}.{self.id}"
        elif agent_id in self.cells:
            raise NameTaken(f"agent id {agent_id!r} is taken")
        ref = AgentRef._create(agent_id, name, self.id, self)
        if mailbox_size is None:
            mailbox_size = cls.mailbox_size
            if mailbox_size is None:
                mailbox_size = self.mailbox_size
        if concurrency is None:
            concurrency = cls.concurrency
        cell = Cell(
            self, agent_id, name, cls, args, kwargs, methods, mailbox_size, concurrency, ref
        )
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 or more, got {checkpoint_every}")
        if checkpoint_every and not hasattr(cls, "snapshot"):
            raise TypeError(f"checkpoint_every needs {cls.__qualname__}.snapshot() to save")
        cell.checkpoint_every = checkpoint_every
        cell.exit_listener = exit_listener
        cell.reservation = reservation
        ref._cell = cell
        self.cells[agent_id] = cell
        if name is not None:
            self.names[name] = cell
        return cell

    def unregister(self, cell: Cell) -> None:
        """Forget an ended agent (its name becomes free)."""
        if self.cells.get(cell.id) is cell:
            del self.cells[cell.id]
            text = f"agent {cell.label!r} {cell.state.value}" + (
                f" ({cell.exit_reason})" if cell.exit_reason else ""
            )
            self.exits[cell.id] = (text, *cell.final_exit())
            if len(self.exits) > _EXITS_KEPT:
                self.exits.popitem(last=False)
        if cell.name is not None and self.names.get(cell.name) is cell:
            del self.names[cell.name]

    def forget_snapshot(self, cell: Cell) -> None:
        """Delete an ended unnamed agent's snapshot: no later run can claim it."""
        self._spawn_background(self.state_store.delete(cell.store_key))

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("state store failed", exc_info=task.exception())

    def instance_ended(self, cell: Cell) -> None:
        if self.bus is not None:
            self.bus.instance_ended(cell)
        if self.timers:
            timers = self.timers.pop(cell.id, None)
            if timers is not None:
                end_timers(timers)

    def agent_ended(self, cell: Cell) -> None:
        if self.bus is not None:
            self.bus.agent_ended(cell)
        if self.timers:  # an instance that never started (its on_start raised)
            timers = self.timers.pop(cell.id, None)
            if timers is not None:
                end_timers(timers)
        if self.reminders.agents:
            self.reminders.agent_ended(cell)
        if self.idle:
            watch = self.idle.pop(cell.id, None)
            if watch is not None:
                watch.cancel()
        if cell.reservation is not None and self.placer is not None:
            self.placer.release(cell.reservation.key)
            cell.reservation = None
        for hook in self.ended_hooks:
            hook(cell)

    def dead_letter(self, cell: Cell, env: Envelope, reason: str) -> None:
        """A tell an agent could not handle: to the dead letters (or the log)."""
        self.undeliverable(cell.label, env, reason)

    def undeliverable(self, target: str, env: Envelope, reason: str) -> None:
        """A tell that reached nobody: to the dead letters (or the log)."""
        if self.bus is not None:
            self.bus.dead_letter(None, env.args, reason, target, env.sender, env.method)
        else:
            log.warning("dead letter for %s.%s: %s", target, env.method, reason)

    def lookup(self, name: str) -> AgentRef:
        """The ref of the live agent called ``name``; raises `AgentNotFound`."""
        cell = self.names.get(name)
        if cell is None:
            raise AgentNotFound(f"no agent named {name!r}")
        return cell.ref

    def info(self, ref: AgentRef) -> AgentInfo:
        """A snapshot of a local agent's state and counters."""
        cell = self._cell_of(ref)
        assert cell is not None
        return AgentInfo.of(cell)

    async def info_anywhere(self, ref: AgentRef, timeout: float) -> AgentInfo:
        """A snapshot of ``ref``'s agent, asked of its node if it lives on another
        (`AgentUnavailable` if it has ended there or the node is away)."""
        if not self._remote(ref):
            return self.info(ref)
        info: AgentInfo = await listing.ask_node(self, ref.node, "!node.info", (ref.id,), timeout)
        return info

    def gone_reason(self, agent_id: str) -> str:
        """Why agent ``agent_id`` is not here: how it ended, or that it never was."""
        return self._gone(agent_id)

    def monitor(self, ref: AgentRef, watcher: Any) -> None:
        """Send `Terminated` to ``watcher`` (a cell, or a future) when ``ref`` ends,
        wherever it lives."""
        if self._remote(ref):
            self.remote_monitors.watch(ref, watcher)
            return
        cell = self._cell_of(ref, missing_ok=True)
        if cell is None:
            Cell._send_notice(watcher, self._gone_notice(ref))
            return
        cell.watch(watcher)

    def demonitor(self, ref: AgentRef, watcher: Any) -> None:
        if self._remote(ref):
            self.remote_monitors.unwatch(ref, watcher)
            return
        cell = self._cell_of(ref, missing_ok=True)
        if cell is not None:
            cell.unwatch(watcher)

    async def wait_terminated(self, ref: AgentRef) -> Terminated:
        """Wait until ``ref``'s agent ends for good; returns why."""
        while True:
            fut: asyncio.Future[Terminated] = asyncio.get_running_loop().create_future()
            self.monitor(ref, fut)
            notice = await fut
            if not notice.restarting:
                return notice

    def _remote(self, ref: AgentRef) -> bool:
        return ref._cell is None and ref._node_id != self.id

    def run_background(self, coro: Any) -> None:
        """Run ``coro`` in the background, owned by this node."""
        self._spawn_background(coro)

    def send_to_peer(self, peer: str, env: Envelope) -> None:
        """Send a node-level message, in the background (flow control may wait)."""
        self._spawn_background(self._send_quietly(peer, env))

    async def _send_quietly(self, peer: str, env: Envelope) -> None:
        try:
            await self._transport_to(peer).send(peer, env)
        except AgentmeshError as exc:
            log.info("%s to node %s not sent: %s", env.method, peer, exc)
            if env.method == "!node.monitor":
                self.remote_monitors.node_down(peer, str(exc))

    def _transport_to(self, peer: str) -> Transport:
        if self.transport is None:
            raise AgentUnavailable(f"node {peer} is not reachable")
        return self.transport

    def cancel_call(self, env: Envelope) -> None:
        """A peer's caller of ``env`` was cancelled, or its stream's consumer is gone:
        cancel the turn running it here, if any (`Cell.cancel_turn`)."""
        cell = self.cells.get(env.target)
        if cell is not None:
            cell.cancel_turn(env)

    def peer_down(self, peer: str, reason: str) -> None:
        """A peer died: its agents' watchers here learn it (``node_down``)."""
        self.remote_monitors.node_down(peer, reason)

    async def stop_agent(self, ref: AgentRef, timeout: float | None) -> None:
        if asyncio.get_running_loop() is not self.loop:
            self.wrong_loop("stop", ref, "stop")
        if ref._cell is None and ref._node_id != self.id:
            await self._transport(ref).stop_agent(ref._node_id, ref._id, timeout)
            return
        cell = self._cell_of(ref, missing_ok=True)
        if cell is not None:
            await cell.stop(self.shutdown_timeout if timeout is None else timeout)

    async def close(self) -> None:
        """Stop every agent, newest first, each within the shutdown timeout; then the
        transport and the watchdog (also if stopping failed)."""
        self.closed = True
        try:
            for cell in reversed(list(self.cells.values())):
                await cell.stop(self.shutdown_timeout)
            if self._background:  # e.g. snapshots being deleted: before the store closes
                await asyncio.gather(*self._background, return_exceptions=True)
            if self.transport is not None:
                await self.transport.aclose()
            self._deadlines.close()
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
                self._watchdog = None

    def cell_of(self, ref: AgentRef) -> Cell | None:
        """The cell of ``ref``'s agent if it lives on this node (None otherwise): for
        the layers above, which start, watch or drive agents here."""
        return self._cell_of(ref, missing_ok=True)

    def _cell_of(self, ref: AgentRef, missing_ok: bool = False) -> Cell | None:
        cell = ref._cell
        if cell is not None:
            return cell
        cell = self.cells.get(ref.id)
        if cell is not None:
            ref._cell = cell
            return cell
        if missing_ok:
            return None
        raise refused(self._gone(ref.id))

    def _gone(self, agent_id: str) -> str:
        ended = self.exits.get(agent_id)
        if ended is not None:
            return ended[0]
        return f"no live agent {agent_id} on node {self.id}"

    def _gone_notice(self, ref: AgentRef) -> Terminated:
        ended = self.exits.get(ref.id)
        if ended is None:
            return Terminated(ref, "shutdown", self._gone(ref.id), False)
        return Terminated(ref, ended[1], ended[2], False)

    # -- sending ----------------------------------------------------------------

    def ask(
        self,
        ref: AgentRef,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        cell: Cell | None = None,
    ) -> Ask:
        """Send an ask now and return its reply to await (`Ask`); see `MethodRef.ask`.
        ``cell``: the callee's, if the caller knows it (else it is looked up).

        What keeps the call from being sent (the agent is gone, the payload cannot be
        encoded ...) is the ask's error, raised where it is awaited, as its reply's."""
        loop = self.loop
        # The loop check, by thread: cheaper than asking for the running loop.
        if get_ident() != self.thread or loop is None:
            self.wrong_loop("ask", ref, method)
            loop = asyncio.get_running_loop()
        fut = Ask(loop=loop)
        sender = current_cell.get()
        seconds = self.ask_timeout if timeout is None else timeout
        # Field by field: cheaper than Envelope(...), whose __init__ is a Python call.
        env = _new(Envelope)
        env.target = ref._id if cell is None else cell.id
        env.method = method
        env.args = args
        env.kwargs = kwargs or NO_KWARGS
        env.reply = fut
        if sender is None:
            env.chain = current_chain.get() or next(chains)
            env.sender = None
        else:
            env.chain = sender.chain_of_current_task() or next(chains)
            env.sender = sender.id
        env.deadline = loop.time() + seconds
        if tracing.hooks is not None:
            env = tracing.hooks.ask(env, fut, ref._name or ref._id, self.id)
        fut._env = env
        fut._sender = sender
        fut._sending = None
        fut._callee = None
        if seconds == self.ask_timeout:  # one timer for all of them
            fut._deadlines = deadlines = self._deadlines
            fut._timer = None
            if deadlines.timer is not None:
                deadlines.entries[env] = ref  # Deadlines.add, inlined: once an ask
            else:
                deadlines.add(env, ref)
        else:
            fut._deadlines = None
            fut._timer = loop.call_later(seconds, self._expire, env, ref, seconds)
        if sender is not None:
            if sender.waiting_on is None:
                sender.waiting_on = {}
            sender.waiting_on[fut] = env.target
        try:
            if cell is None:
                cell = ref._cell
                if cell is None and ref._node_id == self.id:
                    cell = self._cell_of(ref)
            if cell is None:
                transport = self._transport(ref)
                try:  # the stream is open and has room: no task, no waiting
                    transport.send_nowait(ref._node_id, env)
                except MailboxFull:  # connect, or wait for room, unless the ask expires
                    fut._sending = self._send_later(transport.send(ref._node_id, env), fut)
            else:
                fut._callee = cell
                if not cell.offer(env):  # no room now: wait for it
                    fut._sending = self._send_later(cell.post(env), fut)
        except Exception as exc:  # (AgentUnavailable, SerializationError ...)
            if not fut.done():
                fut.set_exception(exc)
        return fut

    def ask_each(
        self, refs: Sequence[AgentRef], method: str, args: Sequence[Any], deadline: float
    ) -> Answers:
        """Ask each agent of ``refs`` ``method(args[i])``, all at once; the answers go
        into one `Answers`, by position, which the caller `Answers.wait`s on.

        For callers that ask many agents together (the simulation's step). An idle
        agent of this node runs its ask straight from a batch the dispatcher serves:
        no future, task, timer, envelope or reply object each. A busy one gets it in
        its mailbox; one on another node, or whose mailbox is full, an ordinary ask
        in a task. An agent that is gone answers `AgentUnavailable`. The asks carry
        the call chain of the running handler, as `ask` does; none starts after
        ``deadline`` (or after the answers were closed).
        """
        if threading.get_ident() != self.thread:
            self.wrong_loop("ask")
        dispatcher = self.dispatcher
        loop = self.loop
        if loop is None or (dispatcher.task is None and asyncio._get_running_loop() is not loop):
            self.wrong_loop("ask")
            loop = asyncio.get_running_loop()  # (an unbound node was bound to it)
        answers = Answers(len(refs), loop)
        sender = current_cell.get()
        if sender is None:
            chain, sender_id = current_chain.get(), None
        else:
            chain, sender_id = sender.chain_of_current_task(), sender.id
        here = self.id
        cells: list[Cell] = []
        positions: list[int] = []
        tracer = tracing.hooks  # asks made so carry the current span's context
        for i, ref in enumerate(refs):
            cell = ref._cell
            if cell is None:
                if ref._node_id != here:
                    answers.tasks.append(self._ask_into(answers, i, ref, method, args[i], deadline))
                    continue
                cell = self.cells.get(ref._id)
                if cell is None:
                    answers.fail(i, AgentUnavailable(self._gone(ref._id)))
                    continue
                ref._cell = cell
            if tracer is None and cell.claim():  # (a traced ask goes as a traced envelope)
                cells.append(cell)
                positions.append(i)
                continue
            env = Envelope(
                ref._id,
                method,
                (args[i],),
                NO_KWARGS,
                answers.reply(i),
                chain or next(chains),
                sender_id,
                deadline,
            )
            if tracer is not None:
                env = tracer.carry(env)
            try:
                if not cell.offer(env):  # a full mailbox: wait for room in a task
                    answers.tasks.append(self._ask_into(answers, i, ref, method, args[i], deadline))
            except AgentUnavailable as exc:
                answers.fail(i, exc)
        if cells:
            envelope = Envelope("", method, (), NO_KWARGS, None, chain, sender_id, deadline)
            dispatcher.ready.append(
                AskBatch(cells, positions, method, args, answers, envelope, dispatcher.base)
            )
            if dispatcher.task is None:
                dispatcher.start()
        return answers

    def _ask_into(
        self, answers: Answers, i: int, ref: AgentRef, method: str, arg: Any, deadline: float
    ) -> asyncio.Future[Any]:
        """An ordinary ask in a task, answering into ``answers``' slot ``i``."""

        async def ask() -> None:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
            try:
                answers.put(i, await self.ask(ref, method, (arg,), NO_KWARGS, timeout))
            except Exception as exc:
                answers.fail(i, exc)

        return asyncio.ensure_future(ask())

    def _expire(self, env: Envelope, ref: AgentRef, timeout: float | None = None) -> None:
        """Fail a timed-out ask (``env``, to ``ref``) with an `AskTimeout` that says
        who waits on whom."""
        fut = env.reply
        if fut is None or fut.done():
            return
        seconds = self.ask_timeout if timeout is None else timeout
        message = f"ask {ref.name or ref.id}.{env.method}() got no reply within {seconds:g}s"
        if env.sender is not None:
            sender = self.cells.get(env.sender)
            message += f" (asked by agent {env.sender if sender is None else sender.label!r})"
        waits = describe_wait(self, ref.id)
        if waits:
            message += f"; {waits}"
        fut.set_exception(AskTimeout(message))

    @staticmethod
    def _send_later(send: Coroutine[Any, Any, None], fut: Ask) -> asyncio.Task[None]:
        """Send an ask that could not go at once (``send`` waits for room in a mailbox
        or window) in a task, which the ask cancels if it ends first; what fails the
        send fails the ask."""

        async def sending() -> None:
            try:
                await send
            except Exception as exc:
                fut._sending = None
                if not fut.done():
                    fut.set_exception(exc)
            finally:
                fut._sending = None

        return asyncio.get_running_loop().create_task(sending())

    async def tell(
        self, ref: AgentRef, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Send a tell to a ref with no cached cell (remote, or not yet bound)."""
        if threading.get_ident() != self.thread:
            self.wrong_loop("tell", ref, method)
        env = self._tell_envelope(ref, method, args, kwargs)
        cell = self._cell_of(ref) if ref._node_id == self.id else None
        if cell is not None:
            await cell.post(env)
            return
        transport = self._transport(ref)
        try:  # the stream is open and has room; no waiting
            transport.send_nowait(ref._node_id, env)
        except (MailboxFull, AgentUnavailable):
            # Connect, or wait for room, on the waiting path.
            await transport.send(ref._node_id, env)
        # Later tells from this ref take the transport's fast path, if it has one.
        ref._route = transport.route(ref._node_id, ref._id)

    def tell_nowait(
        self, ref: AgentRef, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if threading.get_ident() != self.thread:
            self.wrong_loop("tell_nowait", ref, method)
        env = self._tell_envelope(ref, method, args, kwargs)
        cell = self._cell_of(ref) if ref._node_id == self.id else None
        if cell is None:
            transport = self._transport(ref)
            transport.send_nowait(ref._node_id, env)
            ref._route = transport.route(ref._node_id, ref._id)
        elif not cell.offer(env):
            raise MailboxFull(f"mailbox of {ref!r} is full ({cell.mailbox.capacity} messages)")

    def _tell_envelope(
        self, ref: AgentRef, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Envelope:
        env = tell_envelope(ref._id, method, args, kwargs)
        if tracing.hooks is not None:
            env = tracing.hooks.tell(env, ref._name or ref._id, self.id)
        return env

    # -- the transport seam ------------------------------------------------------

    def _transport(self, ref: AgentRef) -> Transport:
        if self.transport is None:
            raise AgentUnavailable(f"{ref!r} lives on node {ref.node}, which is not reachable")
        return self.transport

    async def deliver_from_peer(self, env: Envelope) -> None:
        """Deliver an envelope a transport received, waiting for room; node-level
        requests (``!node.*``) are served here rather than by an agent."""
        rest = self.take_from_peer(env)
        if rest is not None:
            await rest()

    def take_from_peer(self, env: Envelope) -> Callable[[], Awaitable[None]] | None:
        """Deliver an envelope a transport received as far as that needs no waiting:
        None when done (delivered, run, served, or a tell dead-lettered), else what
        finishes it, waiting for room. Raises `AgentUnavailable` for an ask to an
        agent that is not here. The transport keeps the order per agent."""
        request = self.requests.get(env.method)
        if request is not None:
            return request.serve(env)
        cell = self.cells.get(env.target)
        try:
            if cell is None:
                raise refused(self._gone(env.target))
            if cell.offer(env):
                return None
        except AgentUnavailable as exc:
            self._refused_from_peer(env, exc)
            return None
        return functools.partial(self._post_from_peer, cell, env)

    def bypasses_queue(self, env: Envelope) -> bool:
        """Whether a peer's envelope is served at once, never queued behind an agent's
        other messages: a node-level request that is not ordered (`NodeRequest`), a
        reentrant call, or one for an agent that is not here or takes no messages."""
        request = self.requests.get(env.method)
        if request is not None:
            return not request.ordered
        cell = self.cells.get(env.target)
        return cell is None or cell.runs_at_once(env)

    def serve(self, method: str, request: NodeRequest) -> None:
        """Serve requests ``method`` (``!node.<what>``) from other nodes so: the layers
        above the kernel register theirs (the bus, ``!node.publish``)."""
        if not method.startswith("!node."):
            raise ValueError(f"a node-level request is named !node.<what>, not {method!r}")
        self.requests[method] = request

    def is_control(self, env: Envelope) -> bool:
        """Framework traffic, which the transport neither queues behind user messages
        nor flow-controls: to the framework's own agents (``sys.*``), except ordered
        node-level requests (publications, which are user traffic)."""
        if not env.target.startswith(FRAMEWORK_PREFIX):
            return False
        request = self.requests.get(env.method)
        return request is None or not request.ordered

    async def _post_from_peer(self, cell: Cell, env: Envelope) -> None:
        try:
            await cell.post(env)
        except AgentUnavailable as exc:
            self._refused_from_peer(env, exc)

    def _refused_from_peer(self, env: Envelope, exc: AgentUnavailable) -> None:
        if env.reply is not None:
            raise exc
        # Nobody waits for a tell: its sender learns nothing, the dead letters do.
        self.undeliverable(env.target, env, str(exc))

    def _stop_request(self, env: Envelope) -> None:
        """``!node.stop``: stop one of this node's agents for a peer."""
        self._spawn_background(self._stop_for_peer(env))

    def _monitor_request(self, env: Envelope) -> None:
        """``!node.monitor``: a peer watches agents of this node."""
        agent_ids, watcher_node = env.args  # one id, or a tuple of them
        watcher = RemoteWatcher(self, watcher_node)
        for agent_id in agent_ids if isinstance(agent_ids, tuple) else (agent_ids,):
            cell = self.cells.get(agent_id)
            if cell is None:
                ref = AgentRef._create(agent_id, None, self.id, self)
                watcher.deliver_notice("!terminated", self._gone_notice(ref))
            else:
                cell.watch(watcher)

    def _terminated_request(self, env: Envelope) -> None:
        """``!node.terminated``: an agent a watcher here watched, on a peer, ended."""
        self.remote_monitors.notice(env.args[0])

    def offer_tells(
        self, tells: list[Any], start: int, held: Container[str], delivered: dict[str, int]
    ) -> int:
        """Deliver the tells (`TellRecord` tuples) a peer sent in one frame, from
        ``tells[start]`` on, while each can be queued at once, counting them per
        agent in ``delivered``; return the index of the first one not delivered (its
        agent is full, not here, not running or in ``held``, or it is not a tell
        tuple): the transport delivers that one as an `Envelope`, through
        `take_from_peer`, which waits or reports as it must."""
        cells = self.cells
        i, end = start, len(tells)
        idle: list[Cell] | None = None
        indices: list[int] = []
        while i < end:
            tell = tells[i]
            if type(tell) is not tuple:
                break
            target = tell[0]
            cell = cells.get(target)
            if cell is None or target in held:
                break
            if (
                len(tell) == 5
                and type(tell[1]) is str
                and (tell[3] is None or type(tell[3]) is dict)
                and cell.claim()
            ):
                if idle is None:
                    idle = []
                idle.append(cell)
                indices.append(i)
                delivered[target] = delivered.get(target, 0) + 1
                i += 1
                continue
            taken = cell.offer_tells(tells, i)
            if taken == i:
                break
            delivered[target] = delivered.get(target, 0) + taken - i
            i = taken
        if idle is not None:
            dispatcher = self.dispatcher
            dispatcher.ready.append(TellBatch(idle, indices, tells, dispatcher.base))
            if dispatcher.task is None:
                dispatcher.start()
        return i

    async def _stop_for_peer(self, env: Envelope) -> None:
        cell = self.cells.get(env.target)
        if cell is not None:
            timeout = env.args[0] if env.args else None
            await cell.stop(self.shutdown_timeout if timeout is None else timeout)
        if env.reply is not None and not env.reply.done():
            env.reply.set_result(None)

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def bind_refs(self) -> Any:
        """Context in which refs being unpickled bind to this node."""
        return _BindRefs(self)


class _BindRefs:
    __slots__ = ("_node", "_token")

    def __init__(self, node: Node) -> None:
        self._node = node

    def __enter__(self) -> None:
        self._token = current_node.set(self._node)

    def __exit__(self, *exc: object) -> None:
        current_node.reset(self._token)

"""An agent's lifecycle: start, checkpoint, crash, stop, suspend, restart, end.

`Lifecycle` is the half of `Cell` that moves an agent between states; `Cell` holds
the other half, its mailbox and turns. The exit listener (the agent's supervisor)
learns of every exit of an instance and decides whether a new one starts.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import enum
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import cloudpickle

from .agent import Agent
from .context import current_cell
from .envelope import NO_KWARGS, Envelope, new_chain
from .errors import AgentUnavailable, RemoteError, SpawnError, refused
from .exits import ExitReason, Terminated
from .info import CrashReport

if TYPE_CHECKING:
    from .cell import Cell
    from .mailbox import Mailbox
    from .methods import MethodTable
    from .node import Node
    from .placing import Ticket
    from .ref import AgentRef

__all__ = ["ExitListener", "Lifecycle", "State", "remote_error"]

log = logging.getLogger("agentmesh.agent")


class State(enum.Enum):
    """Lifecycle of an agent. Messages are queued in every state but STOPPING and the
    two final ones, STOPPED and CRASHED."""

    STARTING = "starting"  # building an instance, restoring it, running on_start
    RUNNING = "running"
    STOPPING = "stopping"  # handling what is queued, then on_stop; refuses new messages
    CRASHING = "crashing"  # a crash is being handled: on_stop, then the supervisor
    SUSPENDING = "suspending"  # its supervisor ends this instance to start a new one
    RESTARTING = "restarting"  # no instance; waiting for the supervisor to start one
    STOPPED = "stopped"
    CRASHED = "crashed"


_ENDED = (State.STOPPED, State.CRASHED)

#: Called with (cell, reason, error) when an instance ends; returns True if it takes
#: charge (it will call `restart` or `end`), False to let the agent end now. A
#: supervisor's listener also has ``supervisor_id`` (its id), which `AgentInfo` shows.
ExitListener = Callable[[Any, ExitReason, "str | None"], bool]


def remote_error(agent: str, exc: BaseException, cls: type[RemoteError] = RemoteError) -> Any:
    """Wrap ``exc`` as a `RemoteError` (or subclass) carrying type, message, traceback."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__.startswith("agentmesh._private"):
        name = f"agentmesh.{name}"  # every error of ours is public under that name
    elif kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    tb = "".join(traceback.format_exception(exc))
    return cls(agent, name, str(exc), tb)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Lifecycle(abc.ABC):
    """State transitions of a `Cell`: the base class that declares its fields."""

    # Every field of a cell; Cell.__init__ sets them.
    __slots__ = (
        "_done",
        "_exit_error",
        "_halt",
        "_since_checkpoint",
        "_slot",
        "_spawning",
        "_start",
        "_stop_reason",
        "_suspended",
        "_tasks",
        "_turns_left",
        "active",
        "args",
        "cancelled",
        "chain",
        "checkpoint_every",
        "cls",
        "concurrency",
        "context",
        "crashes",
        "current",
        "exit_listener",
        "exit_reason",
        "handled",
        "id",
        "instance",
        "kwargs",
        "last_error",
        "last_traceback",
        "mailbox",
        "methods",
        "name",
        "node",
        "queued",
        "ref",
        "rejected",
        "reservation",
        "restarts",
        "runner",
        "state",
        "stop_requested",
        "turn_tasks",
        "waiting_on",
        "watchers",
    )

    node: Node
    id: str
    name: str | None
    cls: type[Agent]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    methods: MethodTable
    ref: AgentRef
    state: State
    instance: Agent | None
    current: Envelope | None
    active: list[Envelope] | tuple[()]
    #: Tasks of the asks in ``active``, so that a cancelled asker can cancel its turn.
    turn_tasks: dict[Envelope, asyncio.Task[None]] | None
    #: Turns cancelled by their callers (`Cell.cancel_turn`), each with its task's
    #: ``cancelling()`` count once cancelled so: more means another cancel too.
    cancelled: dict[Envelope, int] | None
    chain: int
    mailbox: Mailbox[Envelope]
    exit_listener: ExitListener | None
    watchers: list[Any] | None
    exit_reason: str | None
    last_error: str | None
    #: The latest crash's traceback, formatted (what a remote supervisor is told).
    last_traceback: str | None
    checkpoint_every: int
    reservation: Ticket | None
    crashes: int
    restarts: int
    _halt: bool
    _spawning: bool
    _since_checkpoint: int
    _stop_reason: ExitReason
    _exit_error: str | None
    #: Something other than the agent asked it to stop: no restart, whatever happens.
    stop_requested: bool
    #: The task running this agent's turns now (the dispatcher's, or one a turn kept).
    runner: asyncio.Task[None] | None
    #: On the dispatcher's ready queue.
    queued: bool
    #: The agent's own contextvars, in which its code runs (made at its first turn).
    context: contextvars.Context | None
    _turns_left: int
    _tasks: set[asyncio.Task[None]] | None
    _slot: asyncio.Future[None] | None
    _start: asyncio.Future[None] | None
    _done: asyncio.Future[None] | None
    _suspended: asyncio.Future[None] | None

    #: A cell is a child here, never on another node (`ports.ChildHandle`).
    remote = False

    @property
    def label(self) -> str:
        """The agent's name, else its id: how logs and errors call it."""
        return self.name or self.id

    @property
    def cell(self) -> Cell:
        """This agent's cell (`Cell` is the only kind of Lifecycle: it adds the
        mailbox and the turns), for the node's callbacks that take one."""
        return cast("Cell", self)

    def unavailable_reason(self) -> str:
        """Why the agent takes no messages (for `AgentUnavailable`)."""
        if self.state is State.STOPPING:
            return f"agent {self.label!r} is stopping"
        return f"agent {self.label!r} is {self.state.value}" + (
            f" ({self.exit_reason})" if self.exit_reason else ""
        )

    def busy(self) -> list[Envelope]:
        """The messages whose handlers are running now."""
        if self.current is None:
            return list(self.active)
        return [self.current, *self.active]

    async def wait_tasks(self) -> None:
        """Wait for the agent's own tasks (concurrent and reentrant turns) to end."""
        tasks = [t for t in self._tasks or () if t is not asyncio.current_task()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @abc.abstractmethod
    def schedule(self) -> None:
        """Have the node's dispatcher run this agent soon (the start, stop or crash it
        is going through, or its turns): `Cell` does, with its mailbox."""

    # -- starting ---------------------------------------------------------------

    def start_now(self) -> None:
        """First start of an agent with nothing to await (no ``on_start`` or
        ``restore``: `MethodTable.starts_now`): build the instance right here, no
        runner needed; raise `SpawnError`. (Spawning many plain agents is twice as
        fast this way.)"""
        try:
            self.instance = self._build()
        except Exception as exc:
            self.end(State.CRASHED, f"construction raised {type(exc).__name__}: {exc}")
            raise remote_error(self.label, exc, SpawnError) from None
        self._spawning = False
        self.state = State.RUNNING
        if self.mailbox.items:  # __init__ told itself something
            self.schedule()

    async def start(self) -> None:
        """First start: build, restore, run ``on_start``; raise `SpawnError`."""
        if self.methods.starts_now:
            self.start_now()
            return
        self._start = asyncio.get_running_loop().create_future()
        self.schedule()
        await self._start

    async def restart(self) -> bool:
        """Start a fresh instance on the same mailbox; True once its ``on_start`` ran.

        Only an agent whose listener took charge of its exit (state RESTARTING)
        restarts; otherwise this does nothing and returns False. A failing start is a
        crash, reported to the listener like any other.
        """
        if self.state is not State.RESTARTING:
            return False
        self.restarts += 1
        self._notify(self._stop_reason, self._exit_error, restarting=True)
        self.state = State.STARTING
        self.stop_requested = False
        self._halt = False
        self._start = asyncio.get_running_loop().create_future()
        self.schedule()
        try:
            await asyncio.shield(self._start)
        except Exception:
            return False
        return True

    async def _run_start(self) -> None:
        start = self._start
        assert start is not None
        where = "construction"
        try:
            instance = self._build()
            where = "restore"
            await self._restore(instance)
            self.instance = instance
            where = "on_start"
            await self._hook(instance.on_start)
        except Exception as exc:
            if self._spawning:  # a failed spawn: the spawner gets the error
                start.set_exception(remote_error(self.label, exc, SpawnError))
                self.instance = None
                self.end(State.CRASHED, f"{where} raised {type(exc).__name__}: {exc}")
            else:  # a failed restart: a crash, for the supervisor to judge
                start.set_exception(AgentUnavailable(f"restart failed in {where}"))
                self.crash(exc, where)
            return
        self._spawning = False
        if self.state is State.STARTING:
            self.state = State.RUNNING
        start.set_result(None)

    @abc.abstractmethod
    def _build(self) -> Agent:
        """A new instance of the agent's class, from its constructor's arguments."""

    @property
    def store_key(self) -> str:
        """Key of this agent's snapshots: its name, else its id."""
        return self.name or self.id

    async def _restore(self, instance: Agent) -> None:
        restore = getattr(instance, "restore", None)
        if restore is None or (self._spawning and self.name is None):
            # An unnamed agent's id means nothing to another run: restore it only
            # after a restart, from what this run saved.
            return
        data = await self.node.state_store.get(self.store_key)
        if data is not None:
            await _maybe_await(restore(cloudpickle.loads(data)))

    async def _hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run a lifecycle hook as a turn of its own, on a call chain of its own, so
        the calls it makes can re-enter this agent and show up in wait descriptions."""
        env = Envelope(self.id, hook.__name__, (), NO_KWARGS, None, new_chain(), self.id)
        self.chain = env.chain
        self.current = env
        try:
            await hook()
        finally:
            self.current = None

    # -- checkpoints --------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Save ``snapshot()`` of the current instance in the state store."""
        instance = self.instance
        snapshot = getattr(instance, "snapshot", None)
        if snapshot is None:
            raise TypeError(f"{self.cls.__qualname__} defines no snapshot() to checkpoint")
        state = await _maybe_await(snapshot())
        await self.node.state_store.put(self.store_key, cloudpickle.dumps(state))
        self._since_checkpoint = 0

    async def _checkpoint_if_due(self) -> None:
        """The checkpoint policy: a snapshot every ``checkpoint_every`` messages handled
        (counted by `Cell._completed`)."""
        if self._since_checkpoint >= self.checkpoint_every:
            try:
                await self.checkpoint()
            except Exception as exc:
                self.crash(exc, "checkpoint")

    # -- crashing ---------------------------------------------------------------

    def crash(self, exc: BaseException, where: str) -> None:
        """The instance failed: stop taking turns, cancel the others, then report."""
        if self.state in _ENDED or self.state is State.CRASHING:
            return
        self.state = State.CRASHING
        self._halt = True
        self.crashes += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.exit_reason = f"crashed in {where}: {self.last_error}"
        self.last_traceback = "".join(traceback.format_exception(exc))
        self.node.recent_crashes.add(CrashReport.of(self, time.time(), where))
        log.error("agent %s crashed in %s", self.label, where, exc_info=exc)
        self._cancel_turns(f"agent {self.label!r} crashed while this call was running")
        runner = self.runner
        if runner is None:
            self.schedule()
        elif runner is not asyncio.current_task():
            runner.cancel()  # _run sees the crash, finishes it and carries on

    def _cancel_turns(self, reason: str) -> None:
        current = asyncio.current_task()
        for env in self.busy():
            if env.reply is not None and not env.reply.done():
                env.reply.set_exception(AgentUnavailable(reason))
        for task in list(self._tasks or ()):
            if task is not current:
                task.cancel()

    async def _finish_crash(self) -> None:
        await self.wait_tasks()
        await self._run_on_stop()
        self._exited("crash", self.last_error)

    # -- stopping ---------------------------------------------------------------

    async def stop(self, timeout: float | None) -> None:
        """Stop gracefully: refuse new messages, handle those already queued, run
        ``on_stop``; past ``timeout`` seconds, cancel whatever still runs.

        An agent class with ``_am_unbounded_stop`` (supervisors) gets no overall
        timeout: its ``on_stop`` stops its children, each within its own.
        """
        if self._unbounded_stop():
            timeout = None
        state = self.state
        if state in _ENDED:
            return
        self_stop = current_cell.get() is self
        if not self_stop:
            self.stop_requested = True  # from now on, no restart
        if state is State.RESTARTING:  # no instance to stop
            self._stop_reason = "shutdown"
            self._exited("shutdown", None)
            return
        if state is not State.STOPPING:
            self._stop_reason = "normal" if self_stop else "shutdown"
            if state not in (State.CRASHING, State.SUSPENDING):
                self.state = State.STOPPING
                self.mailbox.fail_putters(f"agent {self.label!r} is stopping")
                idle = self.runner is None and not self.queued
                idle = idle and not self._tasks and not self.mailbox
                if idle and self._no_on_stop():
                    self._exited(self._stop_reason, None)
                    return
                self.schedule()
        if self_stop:
            return  # an agent stopping itself: the stop completes after this turn
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        done = self._done
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(done)
        except TimeoutError:
            if not done.done():
                self.kill(f"did not stop within {timeout or 0:g}s and was cancelled")

    def _unbounded_stop(self) -> bool:
        return bool(getattr(self.cls, "_am_unbounded_stop", False))

    def _no_on_stop(self) -> bool:
        return self.instance is None or type(self.instance).on_stop is Agent.on_stop

    async def _finish_stop(self) -> None:
        await self.wait_tasks()
        await self._run_on_stop()
        self._exited(self._stop_reason, None)

    async def _run_on_stop(self) -> None:
        instance = self.instance
        if instance is None or self._no_on_stop():
            return
        timeout = None if self._unbounded_stop() else self.node.shutdown_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._hook(instance.on_stop)
        except TimeoutError:
            log.warning("on_stop of %s did not finish in %gs; cancelled", self.label, timeout)
        except Exception:
            log.exception("on_stop of agent %s raised", self.label)

    def kill(self, reason: str) -> None:
        """End the instance now: cancel its running handlers, fail what is queued."""
        if self.state in _ENDED:
            return
        log.warning("agent %s %s", self.label, reason)
        self._cancel_turns(f"agent {self.label!r} {reason}")
        runner = self.runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
        self.exit_reason = reason
        self.stop_requested = True
        self._exited("killed", None)

    # -- suspending (a supervisor restarting a sibling group) ---------------------

    async def suspend(self, timeout: float) -> None:
        """End the current instance (after its current turn, then ``on_stop``) but
        keep the mailbox, which goes on queueing, until `restart`."""
        if self.state not in (State.RUNNING, State.STARTING):
            return
        self.state = State.SUSPENDING
        self._halt = True
        self._suspended = asyncio.get_running_loop().create_future()
        self.schedule()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._suspended)
        except TimeoutError:
            if self.state is State.SUSPENDING:
                log.warning("agent %s did not stop within %gs; cancelled", self.label, timeout)
                self._cancel_turns(f"agent {self.label!r} was restarted")
                if self.runner is not None:
                    self.runner.cancel()
                self._suspend_done()

    async def _finish_suspend(self) -> None:
        await self.wait_tasks()
        await self._run_on_stop()
        self._suspend_done()

    def _suspend_done(self) -> None:
        self.instance = None
        self.node.instance_ended(self.cell)
        self._stop_reason = "shutdown"
        self.state = State.RESTARTING
        if self._suspended is not None and not self._suspended.done():
            self._suspended.set_result(None)

    # -- ending -----------------------------------------------------------------

    def _exited(self, reason: ExitReason, error: str | None) -> None:
        """An instance ended: its listener takes charge (restart) or the agent ends."""
        self.instance = None
        self._stop_reason = reason
        self._exit_error = error
        self.node.instance_ended(self.cell)
        listener = self.exit_listener
        if listener is not None and listener(self, reason, error):
            if self.state is not State.STARTING:
                self.state = State.RESTARTING  # messages keep queueing meanwhile
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
            return
        final = State.CRASHED if reason == "crash" else State.STOPPED
        self.end(final, self.exit_reason if reason in ("crash", "killed") else reason)

    def end(self, state: State = State.STOPPED, reason: str | None = None) -> None:
        """Final state: fail what is left in the mailbox, leave the registry, tell
        the monitors."""
        if self.state in _ENDED:
            return
        self.state = state
        self.instance = None
        if reason is not None:
            self.exit_reason = reason
        why = self.unavailable_reason()
        self.mailbox.fail_putters(why)
        dropped = 0
        for env in self.mailbox.drain():
            if env.reply is None:
                dropped += 1
                self.node.dead_letter(self.cell, env, f"agent ended unhandled: {why}")
            elif not env.reply.done():
                env.reply.set_exception(refused(why))  # queued: it never ran
        if dropped:
            log.warning("agent %s ended with %d tells unhandled", self.label, dropped)
        self.mailbox.release()
        self.node.unregister(self.cell)
        self.node.agent_ended(self.cell)
        if self.name is None and hasattr(self.cls, "snapshot"):
            self.node.forget_snapshot(self.cell)
        self._notify(*self._final_exit(), restarting=False)
        self.watchers = None
        if self._start is not None and not self._start.done():
            self._start.set_exception(AgentUnavailable(why))
        for fut in (self._done, self._suspended):
            if fut is not None and not fut.done():
                fut.set_result(None)

    # -- monitors ---------------------------------------------------------------

    def watch(self, watcher: Any) -> None:
        """Send ``Terminated`` to ``watcher`` (an AgentRef's cell or a future)."""
        if self.state in _ENDED:
            self._send_notice(watcher, Terminated(self.ref, *self._final_exit(), False))
            return
        if self.watchers is None:
            self.watchers = []
        self.watchers.append(watcher)

    def final_exit(self) -> tuple[ExitReason, str | None]:
        """(reason, error) of an agent that ended for good."""
        return self._final_exit()

    def _final_exit(self) -> tuple[ExitReason, str | None]:
        if self.state is State.CRASHED:
            return "crash", self.last_error
        return self._stop_reason, None

    def unwatch(self, watcher: Any) -> None:
        if self.watchers is not None and watcher in self.watchers:
            self.watchers.remove(watcher)

    def _notify(self, reason: ExitReason, error: str | None, restarting: bool) -> None:
        if not self.watchers:
            return
        notice = Terminated(self.ref, reason, error, restarting)
        for watcher in list(self.watchers):
            self._send_notice(watcher, notice)

    @staticmethod
    def _send_notice(watcher: Any, notice: Terminated) -> None:
        if isinstance(watcher, asyncio.Future):
            if not watcher.done():
                watcher.set_result(notice)
        else:
            watcher.deliver_notice("!terminated", notice)

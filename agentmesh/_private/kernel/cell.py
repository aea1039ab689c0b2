"""The cell: the runtime side of one agent — its mailbox, its turns, its lifecycle.

A cell outlives the agent instances it hosts (a restart swaps the instance and keeps
the cell), so refs, the name and the queued messages survive a restart.

The runner task exists only while there is work: it is created when a message reaches
an idle agent and ends when the mailbox is empty.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .agent import Agent
from .context import current_cell, current_chain
from .envelope import NO_KWARGS, Envelope, new_chain
from .errors import (
    AgentmeshError,
    AgentUnavailable,
    BadArguments,
    RemoteError,
    SpawnError,
)
from .mailbox import Mailbox
from .methods import MethodTable

if TYPE_CHECKING:
    from .node import Node
    from .ref import AgentRef

__all__ = ["Cell", "State", "remote_error"]

log = logging.getLogger("agentmesh.agent")


class State(enum.Enum):
    """Lifecycle of an agent."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CRASHING = "crashing"  # a crash is being handled (on_stop, then its supervisor)
    STOPPED = "stopped"
    CRASHED = "crashed"


_ENDED = (State.STOPPED, State.CRASHED)
_OPEN = (State.RUNNING, State.STARTING)  # states that take new messages

#: Called when an instance crashes; returns True if it took charge (e.g. restarted it).
ExitListener = Callable[["Cell", str], bool]


def remote_error(agent: str, exc: BaseException, cls: type[RemoteError] = RemoteError) -> Any:
    """Wrap ``exc`` as a `RemoteError` (or subclass) carrying type, message, traceback."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    tb = "".join(traceback.format_exception(exc))
    return cls(agent, name, str(exc), tb)


class Cell:
    """Runtime of one agent: instance, mailbox, runner task, state and counters."""

    __slots__ = (
        "_done",
        "_runner",
        "_slot",
        "_start",
        "_tasks",
        "active",
        "args",
        "chain",
        "cls",
        "concurrency",
        "crashes",
        "current",
        "exit_listener",
        "exit_reason",
        "handled",
        "id",
        "instance",
        "kwargs",
        "last_error",
        "mailbox",
        "methods",
        "name",
        "node",
        "ref",
        "rejected",
        "state",
        "waiting_on",
    )

    def __init__(
        self,
        node: Node,
        agent_id: str,
        name: str | None,
        cls: type[Agent],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        methods: MethodTable,
        mailbox_size: int,
        concurrency: int,
        ref: AgentRef,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.node = node
        self.id = agent_id
        self.name = name
        # What builds an instance: at spawn, and again at each restart.
        self.cls = cls
        self.args = args
        self.kwargs = kwargs or NO_KWARGS
        self.methods = methods
        self.mailbox: Mailbox[Envelope] = Mailbox(mailbox_size)
        self.concurrency = concurrency
        self.ref = ref
        self.state = State.STARTING
        self.instance: Agent | None = None
        self.current: Envelope | None = None  # the serial runner's turn
        self.active: list[Envelope] = []  # turns in tasks: concurrent or reentrant
        self.chain = 0  # the call chain the runner task is serving (serial agents)
        self.waiting_on: dict[asyncio.Future[Any], str] | None = None
        self.exit_listener: ExitListener | None = None
        self.exit_reason: str | None = None
        self.last_error: str | None = None
        self.handled = 0
        self.rejected = 0
        self.crashes = 0
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self._slot: asyncio.Future[None] | None = None
        self._start: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None

    @property
    def label(self) -> str:
        return self.name or self.id

    def __repr__(self) -> str:
        return f"<Cell {self.label} {self.state.value}>"

    # -- starting ---------------------------------------------------------------

    async def start(self) -> None:
        """Build the instance, run ``on_start`` as the first turn; raise `SpawnError`."""
        try:
            self.instance = self._build()
        except Exception as exc:
            self._end(State.CRASHED, f"constructor raised {type(exc).__name__}: {exc}")
            raise remote_error(self.label, exc, SpawnError) from None
        self._start = asyncio.get_running_loop().create_future()
        self._ensure_runner()
        await self._start

    def _build(self) -> Agent:
        cls = self.cls
        instance = cls.__new__(cls)
        instance._am_cell = self  # before __init__, so self.ref works there too
        instance.__init__(*self.args, **self.kwargs)  # type: ignore[misc]
        return instance

    async def _run_start(self) -> None:
        assert self.instance is not None
        assert self._start is not None
        try:
            await self._hook(self.instance.on_start)
        except Exception as exc:
            self._start.set_exception(remote_error(self.label, exc, SpawnError))
            self._end(State.CRASHED, f"on_start raised {type(exc).__name__}: {exc}")
            return
        if self.state is State.STARTING:
            self.state = State.RUNNING
        self._start.set_result(None)

    # -- receiving --------------------------------------------------------------

    def accepts(self, env: Envelope) -> bool:
        """True when ``env`` should run now, bypassing the queue (call-chain reentrancy):
        it belongs to the call chain of a running turn that is waiting on an ask.
        Two calls of one chain that reach the agent independently (a fan-out with
        ``gather``) still take turns.

        Raises `AgentUnavailable` if the agent no longer takes messages.
        """
        if self.waiting_on:  # a turn of this agent waits on an ask: maybe for this one
            chain = env.chain
            current = self.current
            if current is not None and current.chain == chain:
                return True
            for running in self.active:
                if running.chain == chain:
                    return True
        if self.state is State.RUNNING or self.state is State.STARTING:
            return False
        raise AgentUnavailable(self._unavailable_reason())

    def offer(self, env: Envelope) -> bool:
        """Queue an envelope that starts a new chain (a tell) if there is room now.

        Returns False when the mailbox is full; raises `AgentUnavailable` if the
        agent no longer takes messages. The hot path of every tell.
        """
        if self.state not in _OPEN:
            raise AgentUnavailable(self._unavailable_reason())
        # Mailbox.try_put, inlined: this runs once per tell.
        mailbox = self.mailbox
        items = mailbox.items
        if items is None:
            mailbox.items = items = deque()
        elif mailbox.putters or len(items) + mailbox.reserved >= mailbox.capacity:
            return False
        items.append(env)
        if self._runner is None:
            self._ensure_runner()
        return True

    def post_nowait(self, env: Envelope) -> None:
        """Queue ``env`` (or run it at once if reentrant); raise `MailboxFull`."""
        if (self.current or self.active or self.state is not State.RUNNING) and self.accepts(env):
            self._run_reentrant(env)
            return
        self.mailbox.put_nowait(env)
        if self._runner is None:
            self._ensure_runner()

    async def post(self, env: Envelope) -> None:
        """Queue ``env``, waiting for room in the mailbox."""
        if (self.current or self.active or self.state is not State.RUNNING) and self.accepts(env):
            self._run_reentrant(env)
            return
        await self.mailbox.put(env)
        if self._runner is None:
            self._ensure_runner()

    def _run_reentrant(self, env: Envelope) -> None:
        self._spawn_task(self._turn(env))

    def _unavailable_reason(self) -> str:
        if self.state is State.STOPPING:
            return f"agent {self.label!r} is stopping"
        return f"agent {self.label!r} is {self.state.value}" + (
            f" ({self.exit_reason})" if self.exit_reason else ""
        )

    # -- running ----------------------------------------------------------------

    def _ensure_runner(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    def _spawn_task(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
        slot = self._slot
        if slot is not None and not slot.done():
            slot.set_result(None)

    async def _run(self) -> None:
        current_cell.set(self)
        lingered = False
        try:
            while True:
                try:
                    await self._run_once()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self.state is not State.CRASHING or task is None:
                        raise
                    task.uncancel()  # a crash elsewhere cancelled this turn: finish it
                if self.state is State.STOPPING:
                    await self._finish_stop()
                elif self.state is State.CRASHING:
                    await self._finish_crash()
                    if self._restarted():
                        continue  # restarted by its supervisor: serve the same mailbox
                elif self._linger() and not lingered:
                    # Stay one loop turn: a reply usually brings the next message right
                    # back, and serving it here saves creating a task for it.
                    lingered = True
                    await asyncio.sleep(0)
                    if self.mailbox:
                        lingered = False
                    continue
                return
        finally:
            self._runner = None
            self.mailbox.release()

    def chain_of_current_task(self) -> int:
        """The call chain of the running handler of this agent, for asks it makes.

        Turns in their own task (concurrent or reentrant) carry it in `current_chain`,
        which tasks they spawn inherit. The serial runner keeps it in ``self.chain``
        (cheaper than setting a context variable per message), and tasks spawned by
        its turn (``asyncio.gather``) use the chain of the turn running when they ask.
        """
        chain = current_chain.get()
        if chain == 0 and self.current is not None:
            return self.chain
        return chain

    def busy(self) -> list[Envelope]:
        """The messages whose handlers are running now."""
        if self.current is None:
            return list(self.active)
        return [self.current, *self.active]

    def _linger(self) -> bool:
        return self.state is State.RUNNING and not self.mailbox

    def _restarted(self) -> bool:
        return self.state is State.STARTING

    async def _run_once(self) -> None:
        if self.state is State.STARTING:
            await self._run_start()
        if self.concurrency == 1:
            await self._drain_serial()
        else:
            await self._drain_concurrent()

    async def _drain_serial(self) -> None:
        # The common case, one turn at a time, inlined: this loop is the hot path of
        # every message. _turn holds the same steps for concurrent and reentrant turns.
        mailbox = self.mailbox
        items = mailbox.items
        handlers = self.methods.handlers
        instance = self.instance
        crashing = State.CRASHING
        while items and self.state is not crashing:
            env = items.popleft()
            if mailbox.putters:
                mailbox.wake_putter()
            reply = env.reply
            if reply is not None and reply.done():
                continue  # the asker gave up before this message started
            handler = handlers.get(env.method)
            if handler is None:
                self._reject(env, self.methods.unknown(env.method))
                continue
            self.chain = env.chain  # cheaper than a context variable; see chain_of
            self.current = env
            try:
                try:
                    coro = handler(instance, *env.args, **env.kwargs)
                except TypeError as exc:
                    self._reject(env, BadArguments(f"{self.label}.{env.method}(): {exc}"))
                    continue
                self.handled += 1
                try:
                    result = await coro
                except Exception as exc:
                    self._failed(env, exc)
                    continue
                except asyncio.CancelledError as exc:
                    self._stray_cancel(exc, env)
                    continue
                if reply is not None and not reply.done():
                    reply.set_result(result)
            finally:
                self.current = None

    async def _drain_concurrent(self) -> None:
        mailbox = self.mailbox
        loop = asyncio.get_running_loop()
        while mailbox and self.state is not State.CRASHING:
            if self._tasks is not None and len(self._tasks) >= self.concurrency:
                self._slot = loop.create_future()
                await self._slot
                self._slot = None
                continue
            self._spawn_task(self._turn(mailbox.popleft()))
        if self.state is not State.RUNNING:
            await self._wait_tasks()

    async def _wait_tasks(self) -> None:
        tasks = [t for t in self._tasks or () if t is not asyncio.current_task()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _turn(self, env: Envelope) -> None:
        """One turn in its own task: concurrent agents and reentrant calls."""
        reply = env.reply
        if reply is not None and reply.done():
            return  # the asker gave up before this message started: never run it
        handler = self.methods.handlers.get(env.method)
        if handler is None:
            self._reject(env, self.methods.unknown(env.method))
            return
        current_chain.set(env.chain)
        active = self.active
        active.append(env)
        try:
            try:
                coro = handler(self.instance, *env.args, **env.kwargs)
            except TypeError as exc:
                # Binding the arguments failed before any of the handler's code ran.
                self._reject(env, BadArguments(f"{self.label}.{env.method}(): {exc}"))
                return
            self.handled += 1
            try:
                result = await coro
            except Exception as exc:
                self._failed(env, exc)
                return
            except asyncio.CancelledError as exc:
                self._stray_cancel(exc, env)
                return
            if reply is not None and not reply.done():
                reply.set_result(result)
        finally:
            active.remove(env)

    def _stray_cancel(self, exc: asyncio.CancelledError, env: Envelope) -> None:
        """A handler raised CancelledError: re-raise if this task is being cancelled,
        else it is the handler's own failure (e.g. it awaited a cancelled future)."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise exc
        self._failed(env, exc)

    def _reject(self, env: Envelope, error: AgentmeshError) -> None:
        """A bad call: tell the asker; for a tell, log it. The agent carries on."""
        self.rejected += 1
        reply = env.reply
        if reply is None:
            log.warning("dropped tell to %s: %s", self.label, error)
        elif not reply.done():
            reply.set_exception(error)

    def _failed(self, env: Envelope, exc: BaseException) -> None:
        reply = env.reply
        if reply is None:
            self._crash(exc, f"tell {env.method}")
            return
        log.info("ask %s.%s raised %s: %s", self.label, env.method, type(exc).__name__, exc)
        if not reply.done():
            reply.set_exception(remote_error(self.label, exc))

    # -- crashing ---------------------------------------------------------------

    def _crash(self, exc: BaseException, where: str) -> None:
        if self.state in _ENDED or self.state is State.CRASHING:
            return
        self.state = State.CRASHING
        self.crashes += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.exit_reason = f"crashed in {where}: {self.last_error}"
        log.error("agent %s crashed in %s", self.label, where, exc_info=exc)
        reason = f"agent {self.label!r} crashed while this call was running"
        self._cancel_tasks(reason)
        runner = self._runner
        if runner is None:
            self._ensure_runner()
        elif runner is not asyncio.current_task():
            runner.cancel()  # _run sees the crash, finishes it and carries on

    def _cancel_tasks(self, reason: str) -> None:
        current = asyncio.current_task()
        for env in self.busy():
            if env.reply is not None and not env.reply.done():
                env.reply.set_exception(AgentUnavailable(reason))
        for task in list(self._tasks or ()):
            if task is not current:
                task.cancel()

    async def _finish_crash(self) -> None:
        await self._wait_tasks()
        await self._run_on_stop()
        listener = self.exit_listener
        if listener is not None and listener(self, self.exit_reason or "crashed"):
            return
        self._end(State.CRASHED, self.exit_reason)

    # -- stopping ---------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Stop gracefully: refuse new messages, handle those already queued, run
        ``on_stop``; past ``timeout`` seconds, cancel whatever still runs."""
        if self.state in _ENDED:
            return
        if self.state is not State.STOPPING and self.state is not State.CRASHING:
            self.state = State.STOPPING
            self.mailbox.fail_putters(f"agent {self.label!r} is stopping")
            idle = self._runner is None and not self._tasks and not self.mailbox
            if idle and (self.instance is None or type(self.instance).on_stop is Agent.on_stop):
                self._end(State.STOPPED, "stopped")
                return
            self._ensure_runner()
        if current_cell.get() is self:
            return  # an agent stopping itself: the stop completes after this turn
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        done = self._done
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(done)
        except TimeoutError:
            if not done.done():
                self.kill(f"did not stop within {timeout:g}s and was cancelled")

    async def _finish_stop(self) -> None:
        await self._wait_tasks()
        await self._run_on_stop()
        self._end(State.STOPPED, "stopped")

    async def _run_on_stop(self) -> None:
        instance = self.instance
        if instance is None or type(instance).on_stop is Agent.on_stop:
            return
        try:
            async with asyncio.timeout(self.node.shutdown_timeout):
                await self._hook(instance.on_stop)
        except TimeoutError:
            log.warning(
                "on_stop of agent %s did not finish within %gs and was cancelled",
                self.label,
                self.node.shutdown_timeout,
            )
        except Exception:
            log.exception("on_stop of agent %s raised", self.label)

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

    def kill(self, reason: str) -> None:
        """End the agent now: cancel its running handlers and fail what is queued."""
        if self.state in _ENDED:
            return
        log.warning("agent %s %s", self.label, reason)
        self._cancel_tasks(f"agent {self.label!r} {reason}")
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
        self._end(State.STOPPED, reason)

    def _end(self, state: State, reason: str | None) -> None:
        """Final state: fail what is left in the mailbox and leave the registry."""
        self.state = state
        if reason is not None:
            self.exit_reason = reason
        why = self._unavailable_reason()
        self.mailbox.fail_putters(why)
        dropped = 0
        for env in self.mailbox.drain():
            if env.reply is None:
                dropped += 1
            elif not env.reply.done():
                env.reply.set_exception(AgentUnavailable(why))
        if dropped:
            log.warning("agent %s ended with %d tells unhandled", self.label, dropped)
        self.mailbox.release()
        self.node.unregister(self)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if self._start is not None and not self._start.done():
            self._start.set_exception(AgentUnavailable(why))

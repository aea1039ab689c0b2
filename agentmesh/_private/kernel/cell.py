"""The cell: the runtime side of one agent — its mailbox and its turns.

A cell outlives the agent instances it hosts (a restart swaps the instance and keeps
the cell), so refs, the name and the queued messages survive a restart. Starting,
stopping, crashing and restarting live in `lifecycle.Lifecycle`.

An agent holds no task: a message to an idle agent queues its cell on the node's
`Dispatcher`, which runs its turns (see dispatch.py).
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import logging
import types
from _thread import get_ident
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from . import tracing
from .answers import Answers
from .context import current_chain
from .dispatch import RAISED, RETURNED, TURNS_PER_SLICE, Driver, Suspended, resume
from .envelope import NO_KWARGS, Envelope, Reply, TracedEnvelope, chains
from .errors import AgentmeshError, AgentUnavailable, BadArguments, WrongLoop, refused
from .lifecycle import Lifecycle, State
from .mailbox import _SPARE_MAX, SPARE_QUEUES, Mailbox
from .methods import STREAM_SUFFIX, Handler, MethodTable
from .streams import Sink, producer

if TYPE_CHECKING:
    from .agent import Agent
    from .lifecycle import ExitListener
    from .node import Node
    from .ref import AgentRef

__all__ = ["AskBatch", "Batch", "Cell", "State", "TellBatch"]

log = logging.getLogger("agentmesh.agent")

# States in which a message is queued (or run, if reentrant). STOPPING refuses.
_OPEN = (
    State.RUNNING,
    State.STARTING,
    State.CRASHING,
    State.SUSPENDING,
    State.RESTARTING,
)


# Enum members as plain globals: ``State.RUNNING`` costs an enum descriptor call
# (about 0.1 us on Python 3.11), too much on the path of every message.
_RUNNING = State.RUNNING

#: A slice that finds more messages queued than this awaits them in one coroutine
#: (`_drain_serial`); fewer are driven by hand (`_turns_now`): three coroutines to
#: make cost about what a `StopIteration` a turn does for two or three turns.
_AWAIT_FROM = 3

#: States in which the agent takes turns (STOPPING: those queued before the stop).
_TAKES_TURNS = (State.RUNNING, State.STOPPING)
#: States in which there is nothing to run: no instance, or ended.
_WAITING = (State.RESTARTING, State.STOPPED, State.CRASHED)

#: A turn whose handler suspended: its envelope, coroutine and what it yielded.
StartedTurn = tuple[Envelope, Coroutine[Any, Any, Any], Any]


_Coroutine = types.CoroutineType

#: The `Cell.active` of every agent with no turn in a task: one list less an agent.
NO_TURNS: tuple[()] = ()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class Cell(Lifecycle):
    """Runtime of one agent: instance, mailbox, runner task, state and counters."""

    __slots__ = ()  # the fields are declared by Lifecycle

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
        self.active = NO_TURNS  # turns in tasks (concurrent or reentrant): a list then
        self.turn_tasks = None
        self.cancelled = None
        self.chain = 0  # the call chain the runner task is serving (serial agents)
        # What its turns wait on (ask futures, stream receivers): the agent ids.
        self.waiting_on: dict[object, str] | None = None
        self.exit_listener: ExitListener | None = None
        self.watchers: list[Any] | None = None
        self.exit_reason: str | None = None
        self.last_error: str | None = None
        self.last_traceback: str | None = None
        self.checkpoint_every = 0
        self.reservation = None  # what placement holds for it (a Ticket)
        self.handled = 0
        self.rejected = 0
        self.crashes = 0
        self.restarts = 0
        self._halt = False  # the runner stops after the current turn (crash, suspend)
        self._spawning = True
        self._since_checkpoint = 0
        self._stop_reason: Any = "shutdown"
        self._exit_error: str | None = None
        self.stop_requested = False
        self.runner: asyncio.Task[None] | None = None
        self.queued = False
        self.context = None
        self._turns_left = 0
        self._tasks: set[asyncio.Task[None]] | None = None
        self._slot: asyncio.Future[None] | None = None
        self._start: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._suspended: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Cell {self.label} {self.state.value}>"

    def _build(self) -> Agent:
        cls = self.cls
        instance = cls.__new__(cls)
        instance._am_cell = self  # before __init__, for self.ref
        instance.__init__(*self.args, **self.kwargs)  # type: ignore[misc]
        return instance

    # -- receiving --------------------------------------------------------------

    def _reentrant(self, env: Envelope) -> bool:
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
        if self.state in _OPEN:
            return False
        raise refused(self.unavailable_reason())

    def offer(self, env: Envelope) -> bool:
        """Queue ``env`` if the mailbox has room now, or run it at once if it
        re-enters a turn of this agent that waits on an ask (`_reentrant`).

        Returns False when the mailbox is full (then `post` waits for room); raises
        `AgentUnavailable` if the agent no longer takes messages. The one way into
        the mailbox that does not wait: the hot path of every local message.
        """
        if (self.current or self.active or self.state is not _RUNNING) and self._reentrant(env):
            self._run_reentrant(env)
            return True
        # Mailbox.try_put, inlined: this runs once per message.
        mailbox = self.mailbox
        items = mailbox.items
        if items is None:
            mailbox.items = items = SPARE_QUEUES.pop() if SPARE_QUEUES else deque()
        elif mailbox.putters or len(items) + mailbox.reserved >= mailbox.capacity:
            return False
        items.append(env)
        if self.runner is None and not self.queued and self.instance is not None:
            self.schedule()
        return True

    def offer_tells(self, tells: list[Any], start: int) -> int:
        """Queue the tells (`TellRecord` tuples) of ``tells`` from index ``start`` on
        that are addressed to this agent, as far as the mailbox has room now; return
        the index of the first one not queued (also one whose method is no string).
        Queues none if the agent does not take messages now or senders wait for room
        (`offer` then says why). A run of `offer` calls, for tells a peer sent in one
        frame."""
        mailbox = self.mailbox
        if self.state not in _OPEN or mailbox.putters:
            return start
        items = mailbox.items
        if items is None:
            mailbox.items = items = SPARE_QUEUES.pop() if SPARE_QUEUES else deque()
        end = min(len(tells), start + mailbox.capacity - len(items) - mailbox.reserved)
        me = self.id
        append = items.append
        new = object.__new__
        i = start
        while i < end:  # by index: islice would walk from 0, once per run of tells
            tell = tells[i]
            # A method that is no string: a peer's malformed tell, which the
            # transport then refuses (one type check a tell).
            if type(tell) is not tuple or tell[0] != me or type(tell[1]) is not str:
                break
            # Field by field: cheaper than Envelope(...), whose __init__ is a Python
            # call (this runs once per tell from a peer).
            env = new(Envelope)
            env.target, env.method, env.args, kwargs, env.sender = tell
            env.kwargs = kwargs or NO_KWARGS
            env.reply = None
            env.chain = next(chains)
            env.deadline = 0.0
            append(env)
            i += 1
        if i > start and self.runner is None and not self.queued and self.instance is not None:
            self.schedule()
        return i

    def claim(self) -> bool:
        """Take this agent for a turn straight from a `Batch`, if it is idle: no turn
        running or queued, an empty mailbox, serial, running. Marked queued then, so
        what it is sent meanwhile waits in its mailbox, behind the batched message."""
        if (
            self.runner is None
            and not self.queued
            and self.state is _RUNNING
            and not self.mailbox.items
            and self.concurrency == 1
            and not self.active
            and not self.checkpoint_every
        ):
            self.queued = True
            return True
        return False

    def runs_at_once(self, env: Envelope) -> bool:
        """Whether `offer` would run ``env`` at once, bypassing the mailbox (call-chain
        reentrancy), or refuse it (the agent no longer takes messages)."""
        try:
            return bool(self.current or self.active or self.state is not _RUNNING) and (
                self._reentrant(env)
            )
        except AgentUnavailable:
            return True

    async def post(self, env: Envelope) -> None:
        """Queue ``env``, waiting for room in the mailbox (or run it at once, as
        `offer`)."""
        if self.offer(env):
            return
        await self.mailbox.put(env)
        if self.runner is None and not self.queued and self.instance is not None:
            self.schedule()

    def deliver_notice(self, method: str, *args: Any) -> None:
        """Queue a framework notice (``!terminated``, ``!child_exited``) for a system
        handler; it waits for room rather than be dropped."""
        env = Envelope(self.id, method, args, NO_KWARGS, None, 0, None)
        try:
            if self.offer(env):
                return
        except AgentUnavailable:
            log.info("notice %s for %s dropped: %s", method, self.label, self.unavailable_reason())
            return
        self.spawn_task(self._post_later(env))

    async def _post_later(self, env: Envelope) -> None:
        try:
            await self.post(env)
        except AgentUnavailable as exc:
            log.info("notice %s for %s dropped: %s", env.method, self.label, exc)

    def _run_reentrant(self, env: Envelope) -> None:
        self.spawn_task(self._turn(env))

    # -- running ----------------------------------------------------------------

    def schedule(self) -> None:
        """Have the node's dispatcher run this agent soon: its turns, or the start,
        stop or crash it is going through. Nothing to do if it is queued or running."""
        if self.runner is None and not self.queued:
            node = self.node
            dispatcher = node.dispatcher
            # The loop check, by thread (asking for the running loop costs ~0.3 us
            # here, five times as much), and by loop when a dispatcher task starts.
            if get_ident() != node.thread or (
                dispatcher.task is None and asyncio._get_running_loop() is not node.loop
            ):
                self._scheduled_elsewhere()  # raises, unless it bound an unbound node
            # Onto the dispatcher's ready queue (once per message to an idle agent).
            self.queued = True
            dispatcher.ready.append(self)
            if dispatcher.task is None:
                dispatcher.start()

    def _scheduled_elsewhere(self) -> None:
        """The last line of the loop checks: a message was queued off the node's loop
        (by a thread that carries an agent's context, as ``asyncio.to_thread`` in a
        handler does). Let the node's loop serve it, and raise `WrongLoop` here."""
        node = self.node
        try:
            node.wrong_loop(f"a message for agent {self.label!r} sent")
        except WrongLoop:
            home = node.loop
            if home is not None and not home.is_closed():
                home.call_soon_threadsafe(self.schedule)
            raise

    def spawn_task(self, coro: Any) -> None:
        """Run ``coro`` in a task this agent owns (cancelled if it crashes), in a copy
        of the agent's context."""
        context = self.context
        if context is None:
            context = self.context = self.node.dispatcher.context_for(self)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro, context=context.copy()
        )
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

    def run_slice(self) -> Suspended | bool:
        """Run this agent now, in the dispatcher's task and the agent's context: up to
        `TURNS_PER_SLICE` turns, or the start, stop or crash it is going through.

        Returns False when the agent has nothing left to do, True when it has more
        messages (the dispatcher queues it again), or the coroutine that suspended
        and what it yielded, for the dispatcher to await (`resume`) and then ask
        `slice_ended`.
        """
        state = self.state
        if state is _RUNNING and self.concurrency == 1 and not self.checkpoint_every:
            self._turns_left = TURNS_PER_SLICE
            items = self.mailbox.items
            if items is not None and len(items) > _AWAIT_FROM:
                coro = self._run()  # a backlog: awaited in one coroutine
                try:
                    return coro, coro.send(None)
                except StopIteration:
                    return self.slice_ended()
            turn = self._turns_now()
            if turn is not None:
                coro = self._run(turn)
            elif self.state is _RUNNING:
                # slice_ended, inlined: this runs once per message to an idle agent.
                self.runner = None
                mailbox = self.mailbox
                items = mailbox.items
                if items:
                    return True
                if items is not None and not mailbox.putters and not mailbox.reserved:
                    # Mailbox.recycle, inlined: an idle agent holds no buffer.
                    if len(SPARE_QUEUES) < _SPARE_MAX:
                        SPARE_QUEUES.append(items)
                    mailbox.items = None
                return False
            else:  # a turn crashed or stopped the agent: go through that now
                coro = self._run()
        elif state in _WAITING:
            self.runner = None
            return False
        else:
            self._turns_left = TURNS_PER_SLICE
            coro = self._run()
        try:
            return coro, coro.send(None)
        except StopIteration:
            return self.slice_ended()

    def slice_ended(self) -> bool:
        """The dispatcher is done with this agent for now: True if it should queue it
        again (it has messages left and takes turns)."""
        self.runner = None
        mailbox = self.mailbox
        if not mailbox:
            mailbox.recycle()
            return False
        return not self.queued and self.instance is not None and self.state in _TAKES_TURNS

    async def _run(self, turn: StartedTurn | None = None) -> None:
        """What a slice runs when it may suspend: a turn that already started
        (``turn``), the start, the turns left, then the stop, crash or suspension."""
        try:
            while True:
                try:
                    if turn is not None:
                        started, turn = turn, None
                        await self._finish_turn(*started)
                    if self.state is State.STARTING:
                        await self._run_start()
                    if self.concurrency == 1:
                        await self._drain_serial()
                    else:
                        await self._drain_concurrent()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not self._halt or task is None or self.state is State.STOPPED:
                        raise
                    task.uncancel()  # a crash elsewhere cancelled this turn: finish it
                state = self.state
                if self.mailbox and not self._halt and state in _TAKES_TURNS:
                    return  # the slice is used up: the dispatcher queues the agent again
                if state is State.STOPPING:
                    await self._finish_stop()
                elif state is State.CRASHING:
                    await self._finish_crash()
                elif state is State.SUSPENDING:
                    await self._finish_suspend()
                else:
                    return
                if self.state is not State.STARTING:
                    return
                # restarted at once: start it and serve the same mailbox
        finally:
            self.runner = None
            self.mailbox.release()

    def chain_of_current_task(self) -> int:
        """The call chain of the running handler of this agent, for asks it makes.

        Turns in their own task (concurrent or reentrant) carry it in `current_chain`,
        which tasks they spawn inherit. A serial turn keeps it in ``self.chain``
        (cheaper than setting a context variable per message), and tasks spawned by
        its turn (``asyncio.gather``) use the chain of the turn running when they ask.
        """
        chain = current_chain.get()
        if chain == 0 and self.current is not None:
            return self.chain
        return chain

    def _turns_now(self) -> StartedTurn | None:
        """Handle queued messages one after the other, right now, while the slice has
        turns left: the hot path of every message to a serial agent.

        A handler that finishes without suspending costs no task. One that suspends
        is returned, still the current turn (its envelope, coroutine and what it
        yielded), for the caller to finish with `_finish_turn`; nothing else of this
        agent runs meanwhile. `_turn` holds the same steps for turns in a task.
        """
        mailbox = self.mailbox
        items = mailbox.items
        handlers = self.methods.handlers
        instance = self.instance
        left = self._turns_left
        driver = self.node.dispatcher.driver
        drive = driver.drive
        box = driver.box
        try:
            while items and left > 0 and not self._halt:
                left -= 1
                env = items.popleft()
                if mailbox.putters:
                    mailbox.wake_putter()
                reply = env.reply
                if reply is not None and reply.done():
                    continue  # the asker gave up before this message started
                try:
                    handler = handlers.get(env.method)
                except TypeError:  # not a name at all: from a peer that breaks the protocol
                    handler = None
                if handler is None:
                    handler = self._other_call(env)  # a stream call, or none at all
                    if handler is None:
                        continue
                self.chain = env.chain  # cheaper than a context variable; see chain_of
                self.current = env
                try:
                    kwargs = env.kwargs
                    if kwargs is NO_KWARGS:
                        coro = handler(instance, *env.args)
                    else:
                        coro = handler(instance, *env.args, **kwargs)
                except TypeError as exc:
                    self.current = None
                    self._reject(env, BadArguments(f"{self.label}.{env.method}(): {exc}"))
                    continue
                if type(coro) is not _Coroutine:
                    coro = _awaited(coro)  # an awaitable other than a coroutine
                if type(env) is TracedEnvelope:
                    coro = tracing.turn(coro, env, self)
                self.handled += 1
                out = drive(coro)
                if out is RETURNED:
                    # _completed, inlined: this runs once per message.
                    if reply is not None and not reply.done():
                        reply.set_result(box[0])
                    box[0] = None
                    if self.checkpoint_every:
                        self._since_checkpoint += 1
                    self.current = None
                    continue
                if out is RAISED:
                    error, box[0] = box[0], None
                    if isinstance(error, Exception):
                        self._failed(env, error)
                        self.current = None
                    elif isinstance(error, asyncio.CancelledError):
                        self.current = None
                        self._stray_cancel(error, env)
                    else:
                        raise error
                    continue
                return env, driver.rest(out), out
            return None
        finally:
            self._turns_left = left

    async def _finish_turn(
        self, env: Envelope, coro: Coroutine[Any, Any, Any], yielded: Any
    ) -> None:
        """The rest of a turn whose handler suspended in `_turns_now`."""
        try:
            try:
                result = await resume(coro, yielded)
            except Exception as exc:
                self._failed(env, exc)
                return
            except asyncio.CancelledError as exc:
                self._stray_cancel(exc, env)
                return
            self._completed(env.reply, result)
        finally:
            self.current = None
            if self.cancelled is not None:
                self._cancel_done(env)

    def _completed(self, reply: Reply | None, result: Any) -> None:
        """A handler returned ``result``: answer the asker; count for checkpoints."""
        if reply is not None and not reply.done():
            reply.set_result(result)
        if self.checkpoint_every:
            self._since_checkpoint += 1

    async def _drain_serial(self) -> None:
        """Turns one after the other while the slice lasts, each handler awaited here:
        the path of a slice that finds several messages queued (one StopIteration for
        the slice, where `_turns_now` pays one a turn). Its steps are `_turns_now`'s,
        written out again: this loop is the hot path of a busy agent."""
        mailbox = self.mailbox
        handlers = self.methods.handlers
        instance = self.instance
        while True:
            items = mailbox.items
            if not items or self._turns_left <= 0 or self._halt:
                return
            self._turns_left -= 1
            env = items.popleft()
            if mailbox.putters:
                mailbox.wake_putter()
            reply = env.reply
            if reply is not None and reply.done():
                continue  # the asker gave up before this message started
            try:
                handler = handlers.get(env.method)
            except TypeError:  # not a name at all: from a peer that breaks the protocol
                handler = None
            if handler is None:
                handler = self._other_call(env)  # a stream call, or none at all
                if handler is None:
                    continue
            self.chain = env.chain
            self.current = env
            try:
                try:
                    kwargs = env.kwargs
                    if kwargs is NO_KWARGS:
                        coro = handler(instance, *env.args)
                    else:
                        coro = handler(instance, *env.args, **kwargs)
                except TypeError as exc:
                    self._reject(env, BadArguments(f"{self.label}.{env.method}(): {exc}"))
                    continue
                if type(env) is TracedEnvelope:
                    coro = tracing.turn(coro, env, self)
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
                if self.checkpoint_every:
                    self._since_checkpoint += 1
                    await self._checkpoint_if_due()
            finally:
                self.current = None
                if self.cancelled is not None:
                    self._cancel_done(env)

    async def _drain_concurrent(self) -> None:
        mailbox = self.mailbox
        loop = asyncio.get_running_loop()
        while mailbox and not self._halt:
            if self._tasks is not None and len(self._tasks) >= self.concurrency:
                self._slot = loop.create_future()
                await self._slot
                self._slot = None
                continue
            self.spawn_task(self._turn(mailbox.popleft()))

    async def _turn(self, env: Envelope) -> None:
        """One turn in its own task: concurrent agents and reentrant calls."""
        reply = env.reply
        if reply is not None and reply.done():
            return  # the asker gave up before this message started: never run it
        try:
            handler = self.methods.handlers.get(env.method)
        except TypeError:  # not a name at all (see _turns_now)
            handler = None
        if handler is None:
            handler = self._other_call(env)  # a stream call, or none at all
            if handler is None:
                return
        current_chain.set(env.chain)
        active = self.active
        if isinstance(active, tuple):  # its first: most agents never have one
            active = self.active = []
        active.append(env)
        if reply is not None:  # an ask: its asker may cancel it (`cancel_turn`)
            tasks = self.turn_tasks
            if tasks is None:
                tasks = self.turn_tasks = {}
            task = asyncio.current_task()
            assert task is not None
            tasks[env] = task
        try:
            try:
                coro = handler(self.instance, *env.args, **env.kwargs)
            except TypeError as exc:
                # Binding the arguments failed before any of the handler's code ran.
                self._reject(env, BadArguments(f"{self.label}.{env.method}(): {exc}"))
                return
            if type(env) is TracedEnvelope:
                coro = tracing.turn(coro, env, self)
            self.handled += 1
            timer = self.node.turn_timer  # None unless metrics are on
            if timer is not None:
                coro = timer.timed(self.methods.cls_name, coro)
            try:
                result = await coro
            except Exception as exc:
                self._failed(env, exc)
                return
            except asyncio.CancelledError as exc:
                self._stray_cancel(exc, env)
                return
            self._completed(reply, result)
            if self.checkpoint_every:
                await self._checkpoint_if_due()
        finally:
            active.remove(env)
            if reply is not None and self.turn_tasks is not None:
                self.turn_tasks.pop(env, None)
            if self.cancelled is not None:
                self._cancel_done(env)

    def _stray_cancel(self, exc: asyncio.CancelledError, env: Envelope) -> None:
        """A handler raised CancelledError: re-raise if this task is being cancelled,
        unless only its caller cancelled this turn (`cancel_turn`: the turn ends here
        and the agent goes on); else it is the handler's own failure (e.g. it awaited
        a cancelled future)."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            cancelled = self.cancelled
            if cancelled is None or task.cancelling() > cancelled.get(env, 0):
                raise exc
            return  # `_cancel_done` uncancels the task as the turn ends
        self._failed(env, exc)

    def cancel_turn(self, env: Envelope) -> None:
        """The caller of ``env`` was cancelled (or its stream's consumer is gone):
        cancel its turn if it is running, so that its handler gets CancelledError at
        its ``await``; the agent goes on with its next message. A call still queued
        never starts (its reply is done), and a tell is never cancelled."""
        if self.current is env:
            task = self.runner
        elif self.turn_tasks is not None:
            task = self.turn_tasks.get(env)
        else:
            return
        if task is None or task.done() or task is asyncio.current_task():
            return
        cancelled = self.cancelled
        if cancelled is None:
            cancelled = self.cancelled = {}
        if env in cancelled:
            return
        cancelled[env] = task.cancelling() + 1
        task.cancel(f"the caller of {self.label}.{env.method}() was cancelled")

    def _cancel_done(self, env: Envelope) -> None:
        """A turn ended: if its caller cancelled it, take that cancel back from the task
        (which goes on with other turns), whether the handler let it through or not."""
        cancelled = self.cancelled
        assert cancelled is not None
        count = cancelled.pop(env, None)
        if not cancelled:
            self.cancelled = None
        if count is not None:
            task = asyncio.current_task()
            if task is not None and task.cancelling() >= count:
                task.uncancel()

    def _other_call(self, env: Envelope) -> Handler | None:
        """A message no handler takes: a stream call (``method.stream``, whose reply is
        a `Sink`), whose handler runs the streaming method into the sink; or a call
        the agent cannot take, refused (None)."""
        reply = env.reply
        method = env.method
        if isinstance(reply, Sink) and type(method) is str and method.endswith(STREAM_SUFFIX):
            stream = self.methods.streams.get(method[: -len(STREAM_SUFFIX)])
            if stream is not None:
                return producer(stream, reply)
        self._reject(env, self.methods.unknown(str(method)))
        return None

    def _reject(self, env: Envelope, error: AgentmeshError) -> None:
        """A bad call: tell the asker; for a tell, log it. The agent carries on."""
        self.rejected += 1
        reply = env.reply
        if reply is None:
            self.node.dead_letter(self, env, str(error))
        elif not reply.done():
            reply.set_exception(error)

    def _failed(self, env: Envelope, exc: BaseException) -> None:
        reply = env.reply
        if reply is None:
            self.crash(exc, f"tell {env.method}")
            return
        log.info("ask %s.%s raised %s: %s", self.label, env.method, type(exc).__name__, exc)
        if not reply.done():
            from .lifecycle import remote_error

            reply.set_exception(remote_error(self.label, exc))


class Batch(abc.ABC):
    """Messages to idle agents of this node that the dispatcher runs one after the
    other, each turn straight from the batch: no envelope, mailbox or ready-queue
    round trip of its own (`AskBatch`, `TellBatch`).

    Each agent was idle with an empty mailbox when its message was batched, and was
    marked queued then, so messages sent to it later wait in its mailbox behind this
    one, as if it had been queued first. A turn that suspends goes on as any turn does
    (the dispatcher's task stays with it, and the rest of the batch goes first to the
    next dispatcher); an agent no longer simply running (stopping, crashed,
    restarting), or an unknown method, gets the message through its mailbox, at the
    front.
    """

    __slots__ = ("base", "cells", "context", "env", "next", "queued", "runner", "waits")

    @property
    def driver(self) -> Driver:
        """The dispatcher's (each batch has one cell at least)."""
        return self.cells[0].node.dispatcher.driver

    def __init__(self, cells: list[Cell], envelope: Envelope, context: contextvars.Context) -> None:
        self.cells = cells
        self.next = 0
        self.queued = True
        self.runner: asyncio.Task[None] | None = None
        self.base = context
        self.context: contextvars.Context | None = context
        # The current turn's envelope while no turn suspends (a turn that waits gets
        # one of its own): only its chain is read meanwhile (reentrancy).
        self.env = envelope
        self.waits: Cell | None = None  # the agent whose turn suspended

    @property
    def label(self) -> str:
        return f"a batch of {len(self.cells)} {type(self).__name__[:-5].lower()}s"

    @abc.abstractmethod
    def run_slice(self) -> Suspended | bool:
        """Run up to `TURNS_PER_SLICE` of the messages; True if some are left."""

    def _suspended(
        self,
        i: int,
        cell: Cell,
        turn: Envelope,
        coro: Coroutine[Any, Any, Any],
        yielded: Any,
        ctx: contextvars.Context,
    ) -> Suspended:
        """The turn of message ``i - 1`` waits: it goes on as the agent's slice
        (`Cell._run`), in the dispatcher's task; the messages left go first to the
        next dispatcher."""
        self.next = i
        if i < len(self.cells):
            self.queued = True
            cell.node.dispatcher.ready.appendleft(self)
        cell.current = turn
        cell._turns_left = TURNS_PER_SLICE - 1
        self.waits = cell
        self.context = ctx
        run = cell._run((turn, coro, yielded))
        return run, run.send(None)  # up to where the handler waits: runs no code

    def slice_ended(self) -> bool:
        """The turn that suspended is done: the agent's slice ends as a cell's does."""
        cell = self.waits
        self.waits = None
        self.context = self.base
        if cell is not None and cell.slice_ended():
            cell.queued = True
            cell.node.dispatcher.ready.append(cell)
        return False  # the batch queued itself again if messages were left

    @staticmethod
    def _to_mailbox(cell: Cell, env: Envelope) -> bool:
        """``env`` as an ordinary message, ahead of anything queued since it was
        batched: the agent's slice deals with it as with any message. False if the
        agent has ended (nothing queued)."""
        state = cell.state
        if state not in _OPEN and state is not State.STOPPING:
            return False
        # (A stopping agent handles what was queued before the stop: this was.)
        mailbox = cell.mailbox
        if mailbox.items is None:
            mailbox.items = SPARE_QUEUES.pop() if SPARE_QUEUES else deque()
        mailbox.items.appendleft(env)
        if cell.runner is None and not cell.queued and cell.instance is not None:
            cell.schedule()
        return True


class AskBatch(Batch):
    """Asks of one `Node.ask_each` to idle agents (see `Batch`); the answers go into
    the round's `Answers`, by position."""

    __slots__ = ("answers", "args", "fresh", "method", "positions")

    def __init__(
        self,
        cells: list[Cell],
        positions: list[int],
        method: str,
        args: Sequence[Any],
        answers: Answers,
        envelope: Envelope,
        context: contextvars.Context,
    ) -> None:
        super().__init__(cells, envelope, context)
        self.positions = positions  # of each cell's ask in ``args`` and ``answers``
        self.method = method
        self.args = args
        self.answers = answers
        self.fresh = envelope.chain == 0  # asks from outside any call chain: one each

    def run_slice(self) -> Suspended | bool:
        """Run up to `TURNS_PER_SLICE` of the asks; True if some are left."""
        cells = self.cells
        positions = self.positions
        args = self.args
        answers = self.answers
        values = answers.values
        method = self.method
        env = self.env
        me = self.runner
        i = self.next
        end = min(len(cells), i + TURNS_PER_SLICE)
        methods = handler = None
        driver = self.driver
        drive = driver.drive
        box = driver.box
        answered = 0
        while i < end:
            cell = cells[i]
            k = positions[i]
            i += 1
            cell.queued = False
            if cell.methods is not methods:  # the agents of a batch share a class, mostly
                methods = cell.methods
                handler = methods.handlers.get(method)
            if cell.state is not _RUNNING or handler is None or answers.closed:
                self._to_mailbox_at(cell, k)
                continue
            ctx = cell.context
            if ctx is None:
                ctx = cell.context = cell.node.dispatcher.context_for(cell)
            if self.fresh:
                env.chain = next(chains)
            cell.chain = env.chain
            env.target = cell.id  # (its args stay empty: `_envelope` makes a full one)
            cell.current = env
            cell.runner = me
            try:
                coro = handler(cell.instance, args[k])
            except TypeError as exc:
                cell.current = cell.runner = None
                error = BadArguments(f"{cell.label}.{method}(): {exc}")
                cell._reject(self._envelope(cell, k), error)
                _after_turn(cell)
                continue
            if type(coro) is not _Coroutine:
                coro = _awaited(coro)
            cell.handled += 1
            out = ctx.run(drive, coro)
            if out is RETURNED:
                cell.current = cell.runner = None
                # Answers.put, inlined: this runs once per ask (the answers were not
                # closed above, and each position is asked once).
                values[k] = box[0]
                box[0] = None
                answered += 1
                if cell.mailbox.items or cell.state is not _RUNNING:
                    cell.schedule()
                continue
            if out is RAISED:
                _raised(cell, box, self._envelope(cell, k))
                continue
            answers.answered(answered)
            rest = driver.rest(out)
            return self._suspended(i, cell, self._envelope(cell, k), rest, out, ctx)
        answers.answered(answered)
        self.next = i
        return i < len(cells)

    def _envelope(self, cell: Cell, k: int, chain: int = 0) -> Envelope:
        """Ask ``k`` as an envelope of its own, answering into its slot, on ``chain``
        (by default the current turn's)."""
        env = self.env
        return Envelope(
            cell.id,
            self.method,
            (self.args[k],),
            NO_KWARGS,
            self.answers.reply(k),
            chain or env.chain,
            env.sender,
            env.deadline,
        )

    def _to_mailbox_at(self, cell: Cell, k: int) -> None:
        """Ask ``k`` through the agent's mailbox (see `Batch._to_mailbox`)."""
        chain = next(chains) if self.fresh else self.env.chain
        if not self._to_mailbox(cell, self._envelope(cell, k, chain)):
            self.answers.fail(k, AgentUnavailable(cell.unavailable_reason()))


class TellBatch(Batch):
    """Tells a peer sent in one frame to idle agents (see `Batch`; `Node.offer_tells`):
    each runs straight from the frame's `TellRecord`, on a call chain of its own."""

    __slots__ = ("indices", "tells")

    def __init__(
        self,
        cells: list[Cell],
        indices: list[int],
        tells: list[Any],
        context: contextvars.Context,
    ) -> None:
        super().__init__(cells, Envelope("", "", (), NO_KWARGS, None, 0, None), context)
        self.indices = indices  # of each cell's tell in ``tells``
        self.tells = tells

    def run_slice(self) -> Suspended | bool:
        """Run up to `TURNS_PER_SLICE` of the tells; True if some are left."""
        cells = self.cells
        indices = self.indices
        tells = self.tells
        env = self.env
        me = self.runner
        i = self.next
        end = min(len(cells), i + TURNS_PER_SLICE)
        driver = self.driver
        drive = driver.drive
        box = driver.box
        while i < end:
            cell = cells[i]
            _, method, args, kwargs, sender = tells[indices[i]]
            i += 1
            cell.queued = False
            handler = cell.methods.handlers.get(method)
            if cell.state is not _RUNNING or handler is None:
                message = _tell(cell, method, args, kwargs, sender, next(chains))
                if not self._to_mailbox(cell, message):
                    cell.node.dead_letter(cell, message, cell.unavailable_reason())
                continue
            ctx = cell.context
            if ctx is None:
                ctx = cell.context = cell.node.dispatcher.context_for(cell)
            env.chain = cell.chain = next(chains)
            env.target = cell.id
            env.method = method
            env.sender = sender
            cell.current = env
            cell.runner = me
            try:
                coro = (
                    handler(cell.instance, *args, **kwargs)
                    if kwargs
                    else handler(cell.instance, *args)
                )
            except TypeError as exc:
                cell.current = cell.runner = None
                message = _tell(cell, method, args, kwargs, sender, env.chain)
                cell._reject(message, BadArguments(f"{cell.label}.{method}(): {exc}"))
                _after_turn(cell)
                continue
            if type(coro) is not _Coroutine:
                coro = _awaited(coro)
            cell.handled += 1
            out = ctx.run(drive, coro)
            if out is RETURNED:
                box[0] = None
                cell.current = cell.runner = None
                if cell.mailbox.items or cell.state is not _RUNNING:
                    cell.schedule()
                continue
            turn = _tell(cell, method, args, kwargs, sender, env.chain)
            if out is RAISED:
                _raised(cell, box, turn)
                continue
            return self._suspended(i, cell, turn, driver.rest(out), out, ctx)
        self.next = i
        return i < len(cells)


def _tell(
    cell: Cell,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    sender: str | None,
    chain: int,
) -> Envelope:
    return Envelope(cell.id, method, args, kwargs or NO_KWARGS, None, chain, sender)


def _raised(cell: Cell, box: list[Any], env: Envelope) -> None:
    """A batched turn's handler raised (the exception in the driver's ``box``): a
    failed ask or tell, a stray cancel, or what the dispatcher does not handle."""
    exc, box[0] = box[0], None
    cell.current = None
    if isinstance(exc, Exception):
        cell._failed(env, exc)
        cell.runner = None
    elif isinstance(exc, asyncio.CancelledError):
        cell.runner = None
        cell._stray_cancel(exc, env)
    else:
        raise exc
    _after_turn(cell)


def _after_turn(cell: Cell) -> None:
    """A batched turn ended unusually: let the agent's slice handle what follows."""
    if cell.mailbox.items or cell.state is not _RUNNING:
        cell.schedule()

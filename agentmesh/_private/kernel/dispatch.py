"""The node's dispatcher: agents' turns without a task per wake.

A message to an idle agent puts its cell on the ready queue; one task, the dispatcher,
takes cells off the queue and runs their turns right there, at most `TURNS_PER_SLICE`
for one agent before the next ready agent's (fairness), and yields to the event loop
every `SLICES_PER_PASS` agents. A turn that ends without suspending costs no task and
no loop turn: a message to an idle agent costs a deque append.

A turn that suspends keeps the task it started in, so ``asyncio.timeout()``,
``asyncio.current_task()`` and ``TaskGroup`` in a handler see one task from the
handler's start to its end: that task stays with the agent until the turn (and what
the agent has queued meanwhile) is done, and a new task takes over dispatching.

Each agent's code runs in the agent's own `contextvars.Context` (`Cell.context`).

Besides cells, the ready queue takes batches of asks to idle agents (`AskBatch`, from
`Node.ask_each`): the dispatcher runs each ask's turn straight from the batch, with
no mailbox, envelope or ready-queue round trip of its own.

Turns run a handler's coroutine through the dispatcher's `Driver`, a generator that
awaits it with ``yield from``: a handler that returns costs no StopIteration (what
``coro.send`` raises then, about 0.3 us a turn, a tenth of a simulation step).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Protocol, cast

from .context import current_cell, current_chain, current_node

if TYPE_CHECKING:
    from .cell import Cell
    from .node import Node

__all__ = [
    "SLICES_PER_PASS",
    "TURNS_PER_SLICE",
    "RAISED",
    "RETURNED",
    "Dispatcher",
    "Driver",
    "Runnable",
    "Suspended",
    "resume",
]

log = logging.getLogger("agentmesh.dispatch")

#: Turns one agent takes in a row before the next ready agent gets its turn.
TURNS_PER_SLICE = 32
#: Agents the dispatcher serves before it lets the event loop run other callbacks.
SLICES_PER_PASS = 128

#: A coroutine that ran up to its first suspension, and what it yielded there.
Suspended = tuple[Coroutine[Any, Any, Any], Any]


class Runnable(Protocol):
    """What the ready queue holds: a `Cell`, or an `AskBatch`."""

    queued: bool
    runner: asyncio.Task[None] | None
    #: Where its code runs; after a slice suspended, where the suspended turn resumes.
    context: contextvars.Context | None

    @property
    def label(self) -> str: ...
    def run_slice(self) -> Suspended | bool: ...
    def slice_ended(self) -> bool: ...


#: What `Driver.drive` returns when the handler returned (its value in ``box[0]``) ...
RETURNED: Any = type("Returned", (), {"__repr__": lambda self: "RETURNED"})()
#: ... and when it raised (the exception in ``box[0]``).
RAISED: Any = type("Raised", (), {"__repr__": lambda self: "RAISED"})()


@types.coroutine
def _driving(box: list[Any]) -> Generator[Any, Any, None]:
    coro = yield None
    while True:
        try:
            box[0] = yield from coro
            ended = RETURNED
        except GeneratorExit:
            raise
        except BaseException as exc:  # the caller re-raises what it does not handle
            box[0] = exc
            ended = RAISED
        # (Yielded outside the except clause: a generator waiting in one would keep
        # the exception, its traceback and their frames alive until the next turn.)
        coro = yield ended


class Driver:
    """Runs handler coroutines, each up to its end or its first suspension, in one
    generator (`_driving`) that awaits them: ``drive(coro)`` returns `RETURNED` or
    `RAISED` (the value or exception in ``box[0]``; the caller clears it), else what
    the handler yielded where it suspended. A suspended handler keeps the generator
    (`rest`); the driver takes a new one for the next turn."""

    __slots__ = ("box", "drive", "gen")

    def __init__(self) -> None:
        self._fresh()

    def _fresh(self) -> None:
        self.box: list[Any] = [None]
        self.gen = _driving(self.box)
        self.gen.send(None)
        self.drive: Callable[[Coroutine[Any, Any, Any]], Any] = self.gen.send

    def rest(self, yielded: Any) -> Coroutine[Any, Any, Any]:
        """The handler that just suspended, yielding ``yielded``, as a coroutine that
        stands where it stands (to finish with `resume`): it returns or raises what
        the handler does. The driver goes on with a new generator."""
        rest = _rest(self.gen, self.box, yielded)
        self._fresh()
        rest.send(None)  # up to its first yield, which gives back ``yielded``
        return cast("Coroutine[Any, Any, Any]", rest)


@types.coroutine
def _rest(gen: Generator[Any, Any, None], box: list[Any], yielded: Any) -> Generator[Any, Any, Any]:
    send = gen.send
    throw = gen.throw
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            yielded = throw(exc)
        else:
            yielded = send(sent)
        if yielded is RETURNED:
            return box[0]
        if yielded is RAISED:
            error, box[0] = box[0], None
            raise error


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@types.coroutine
def resume(
    coro: Coroutine[Any, Any, Any], yielded: Any, run: Callable[..., Any] = _call
) -> Generator[Any, Any, Any]:
    """Go on awaiting ``coro``, which already ran up to a suspension where it yielded
    ``yielded`` (a future, or None for a bare yield): pass that to the task awaiting
    this, and each later step to ``coro``, inside ``run`` (a Context's ``run``)."""
    send = coro.send
    throw = coro.throw
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = run(throw, exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = run(send, sent)
            except StopIteration as stop:
                return stop.value


class Dispatcher:
    """The ready queue of one node's agents and the task that serves it."""

    __slots__ = ("base", "driver", "loop", "node", "ready", "task")

    loop: asyncio.AbstractEventLoop
    #: What every agent's context starts as: the node's context, no agent in it.
    base: contextvars.Context

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ready: deque[Runnable] = deque()
        self.driver = Driver()  # the dispatching task's: a task runs one turn at a time
        self.task: asyncio.Task[None] | None = None  # the one that dispatches now

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on ``loop`` (the node's, from `Node.bind_loop` on)."""
        self.loop = loop
        self.base = contextvars.copy_context()
        self.base.run(_enter_node, self.node)

    def start(self) -> None:
        """Start a task to serve the ready queue (none serves it now). Cells queue
        themselves (`Cell.schedule`: append to `ready`, then this if `task` is None)."""
        self.task = self.loop.create_task(self._serve(), context=self.base.copy())

    def context_for(self, cell: Cell) -> contextvars.Context:
        """A new context for ``cell``'s code: the node's, with the agent in it."""
        ctx = self.base.copy()
        ctx.run(current_cell.set, cell)
        return ctx

    async def _serve(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        ready = self.ready
        timer = self.node.turn_timer  # None unless metrics are on: then slices are sampled
        idle = False
        try:
            while True:
                served = 0
                while ready and served < SLICES_PER_PASS:
                    served += 1
                    cell = ready.popleft()
                    cell.queued = False
                    ctx = cell.context
                    if ctx is None:  # a cell's first slice (a batch always has one)
                        ctx = cell.context = self.context_for(cast("Cell", cell))
                    cell.runner = me
                    try:
                        if timer is None:
                            ran = ctx.run(cell.run_slice)
                        else:
                            ran = timer.run_slice(ctx, cell)
                    except Exception:  # a bug of ours: keep serving the others
                        log.exception("dispatching %s failed", cell.label)
                        cell.runner = None
                        continue
                    if ran is False:
                        continue
                    if ran is not True:
                        # The turn waits: this task goes on with it, another dispatches.
                        self.task = None
                        if ready:
                            self.start()
                        ctx = cell.context  # a batch's: that of the agent whose turn waits
                        assert ctx is not None
                        await resume(*ran, run=ctx.run)
                        ran = cell.slice_ended()
                    if ran:
                        cell.queued = True
                        ready.append(cell)
                    if self.task is not me:
                        if self.task is not None:
                            return
                        self.task = me  # nobody dispatches: back to it
                if served:
                    idle = False
                elif idle:
                    return
                else:
                    # Stay one loop turn: a reply usually brings the next message right
                    # back, and serving it here saves creating a task for it.
                    idle = True
                await asyncio.sleep(0)
        finally:
            if self.task is me:
                self.task = None


def _enter_node(node: Node) -> None:
    current_node.set(node)
    current_cell.set(None)
    current_chain.set(0)

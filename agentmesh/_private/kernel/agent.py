"""The `Agent` base class users subclass."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, cast

from .errors import AgentUnavailable, NameRequired
from .idle import PASSIVATE
from .methods import MethodTable
from .reminders import FIRE, Missed, Reminder, check_missed, due_time, period_seconds
from .timers import TICK, Timer, bound_handler

if TYPE_CHECKING:
    from ..mesh import Mesh  # the one name from above the kernel: the type of `mesh`
    from .cell import Cell
    from .exits import Terminated
    from .ports import BusPort
    from .ref import AgentRef

__all__ = ["Agent", "check_agent_class", "method_table"]

log = logging.getLogger("agentmesh.agent")


class Agent:
    """Base class of agents: a plain async Python class with a mailbox.

    Every public ``async def`` method can be called by others through an `AgentRef`,
    one message at a time (or up to ``concurrency`` interleaved). Names that start with
    ``_`` stay private. Agents are never constructed directly: ``await mesh.spawn(Cls,
    *args)`` builds one and returns its ref.

    Class attributes ``concurrency`` and ``mailbox_size`` set defaults for every agent
    of the class; `spawn` options override them. Arguments of parameters annotated
    with pydantic models are validated before a method runs (`BadArguments` if they
    do not validate); ``class A(am.Agent, validate=True)`` validates every annotated
    parameter, ``validate=False`` none (docs/messaging.md). Inside an agent, ``self.ref``,
    ``self.name``, ``self.node`` and ``self.mesh`` are available from ``__init__`` on;
    these names, the hooks and the methods defined here are reserved.

    Example::

        class Counter(am.Agent):
            def __init__(self, start: int = 0) -> None:
                self.value = start

            async def add(self, n: int) -> int:
                self.value += n
                return self.value
    """

    __slots__ = ("_am_cell",)

    #: How many handlers may run interleaved; 1 means strictly one message at a time.
    concurrency: ClassVar[int] = 1
    #: Mailbox capacity; None means the mesh default (see `DEFAULT_MAILBOX_SIZE`).
    mailbox_size: ClassVar[int | None] = None
    #: Framework notices and the methods that receive them.
    _am_notices: ClassVar[dict[str, str]] = {
        "!terminated": "on_terminated",
        "!deliver": "_am_deliver",
        TICK: "_am_timer",
        FIRE: "_am_reminder",
        PASSIVATE: "_am_passivate",
    }
    #: Which arguments are validated: None models only, True every annotated one,
    #: False none. Set by the class keyword ``validate=``; subclasses inherit it.
    _am_validate: ClassVar[bool | None] = None

    _am_cell: Cell

    def __init_subclass__(cls, *, validate: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if validate is not None:
            if not isinstance(validate, bool):
                raise TypeError(f"validate= takes True or False, got {validate!r}")
            cls._am_validate = validate

    async def on_start(self) -> None:
        """Run once, as the agent's first turn, before `spawn` returns.

        If it raises, the agent does not start and `spawn` raises `SpawnError`.
        """

    async def on_stop(self) -> None:
        """Run once when the agent stops or crashes, as its last turn.

        Bounded by the mesh's shutdown timeout; an exception here is logged, not raised.
        """

    async def on_terminated(self, notice: Terminated) -> None:
        """Receive a `Terminated` notice for an agent this one monitors.

        Runs as a turn like any message. The default logs it; override to react.
        """
        log.info(
            "agent %s: monitored %r ended (%s)", self._am_cell.label, notice.ref, notice.reason
        )

    async def monitor(self, ref: AgentRef) -> None:
        """Get a `Terminated` notice (in `on_terminated`) when ``ref``'s agent ends.

        A monitor stays in place across restarts of the monitored agent (each restart
        sends a notice with ``restarting=True``) and is removed when it ends for good.
        Monitoring an agent that already ended sends the notice at once.
        """
        self._am_cell.node.monitor(ref, self._am_cell)

    async def demonitor(self, ref: AgentRef) -> None:
        """Stop monitoring ``ref``; notices already queued may still arrive."""
        self._am_cell.node.demonitor(ref, self._am_cell)

    async def publish(self, topic: str, payload: Any) -> None:
        """Publish ``payload`` on ``topic`` (see `Mesh.publish`); this agent is the
        sender, and its messages on one topic arrive in the order published."""
        await self._bus().publish(topic, payload, self._am_cell.id)

    async def subscribe(
        self,
        pattern: str,
        handler: Callable[..., Awaitable[Any]],
        *,
        overflow: str = "backpressure",
    ) -> None:
        """Call ``handler(payload)`` (an async method of this agent) as a turn for each
        message on topics matching ``pattern``, until `unsubscribe` or until this
        instance ends (a restarted instance subscribes again in ``on_start``; use
        ``@am.subscribe`` for subscriptions that outlive restarts)."""
        bus = self._bus()
        bus.subscribe_handler(self._am_cell, pattern, handler, overflow)
        await bus.sync_interest()

    async def unsubscribe(
        self, pattern: str, handler: Callable[..., Awaitable[Any]] | None = None
    ) -> None:
        """End this instance's runtime subscriptions to ``pattern`` (only the one to
        ``handler``, if given)."""
        self._bus().unsubscribe_handler(self._am_cell, pattern, handler)

    def _bus(self) -> BusPort:
        bus = self._am_cell.node.bus
        if bus is None:
            raise RuntimeError("this agent's node has no pub/sub bus")
        return bus

    async def _am_deliver(
        self,
        handler: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if getattr(handler, "__self__", self) is not self:
            return  # subscribed by an earlier instance of this agent: that one is gone
        await handler(*args, **kwargs)

    # -- timers ---------------------------------------------------------------------

    def every(
        self,
        period: float,
        method: Callable[..., Coroutine[Any, Any, Any]] | str,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Timer:
        """Tell this agent ``method(*args, **kwargs)`` every ``period`` seconds, first
        ``period`` seconds from now; returns the `Timer` (``cancel()`` it).

        Each tick is a message in this agent's mailbox, taking its turn. Ticks keep to
        the grid ``now + k * period`` (no drift); a tick is skipped while the previous
        one still waits in the mailbox. The timer ends with this instance of the agent
        (stop, crash, restart): a restarted agent arms its own in ``on_start``.
        """
        if isinstance(period, bool) or not isinstance(period, int | float) or not period > 0:
            raise ValueError(f"every() takes a positive period in seconds, got {period!r}")
        return self._am_timer_for(method, args, kwargs, period, period, "every()")

    def after(
        self,
        delay: float,
        method: Callable[..., Coroutine[Any, Any, Any]] | str,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Timer:
        """Tell this agent ``method(*args, **kwargs)`` once, ``delay`` seconds from now
        (a message in its mailbox); returns the `Timer` (``cancel()`` it). It ends
        with this instance of the agent, as `every`'s timers do."""
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise ValueError(f"after() takes a delay of 0 or more seconds, got {delay!r}")
        return self._am_timer_for(method, args, kwargs, delay, None, "after()")

    def _am_timer_for(
        self,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delay: float,
        period: float | None,
        what: str,
    ) -> Timer:
        cell = self._am_cell
        # Its own instance, or one being built (__init__, restore): not one that ended.
        if cell.instance is not self and not (
            cell.instance is None and cell.state.value == "starting"
        ):
            raise AgentUnavailable(
                f"{what}: this instance of agent {cell.label!r} has ended "
                f"({cell.state.value}); timers belong to a live instance"
            )
        handler = bound_handler(self, method, what)
        timer = Timer(cell, self, handler, args, kwargs, float(delay), period)
        timers = cell.node.timers.get(cell.id)
        if timers is None:
            timers = cell.node.timers[cell.id] = set()
        timers.add(timer)
        return timer

    async def _am_timer(self, timer: Timer) -> None:
        coro = timer.begin(self)
        if coro is not None:
            await coro

    # -- durable reminders -------------------------------------------------------------

    async def remind(
        self,
        name: str,
        *,
        due: float | datetime | timedelta,
        period: float | timedelta | None = None,
        missed: Missed = "once",
        method: Callable[..., Coroutine[Any, Any, Any]] | str = "on_reminder",
        replace: bool = True,
    ) -> bool:
        """Register a durable reminder ``name``: at ``due`` (seconds from now, a
        `timedelta`, or a `datetime`), then every ``period`` seconds if given, this
        agent gets a message ``method(reminder)`` (default ``on_reminder``) carrying a
        `Reminder` with a unique ``id``.

        Kept in the mesh's state store under this agent's name (`NameRequired` for
        an unnamed agent), so it outlives restarts of the agent, of its node and of
        the mesh (with a durable store): it fires again wherever an agent of this
        name runs. Firings missed meanwhile are skipped, fired ``"once"`` (the
        default) or ``"all"`` fired, as ``missed`` says. A reminder of the same name
        is replaced, unless ``replace=False``: then it is kept, and this returns
        False. Returns once the reminder is saved.
        """
        cell = self._am_cell
        if cell.name is None:
            raise NameRequired(
                f"a reminder is kept under its agent's name, and agent {cell.label} has "
                f"none: spawn it with name="
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"a reminder's name must be a non-empty string, got {name!r}")
        first = due_time(due)
        every = period_seconds(period)
        check_missed(missed)
        return await cell.node.reminders.remind(
            cell, name, first, every, missed, self._am_reminder_method(method), replace
        )

    def _am_reminder_method(self, method: Any) -> str:
        """The name of the method a reminder calls: checked now, looked up at each
        firing (possibly by another process)."""
        cls = type(self)
        if method == "on_reminder" and cls.on_reminder is Agent.on_reminder:
            raise TypeError(
                f"{cls.__qualname__} defines no on_reminder(self, reminder): define it, "
                f"or pass method="
            )
        handler = bound_handler(self, method, "remind()")
        name = handler.__name__
        if getattr(cls, name, None) is not getattr(handler, "__func__", None):
            raise TypeError(f"remind(): method {name!r} is not reachable by its name")
        return name

    async def forget(self, name: str) -> bool:
        """Cancel the durable reminder ``name`` (and delete it from the store); a
        firing already queued does not run. False if there was none."""
        cell = self._am_cell
        if cell.name is None:
            raise NameRequired(f"agent {cell.label} has no name, so it has no reminders")
        return await cell.node.reminders.forget(cell, name)

    async def on_reminder(self, reminder: Reminder) -> None:
        """Receive a firing of a durable reminder registered with `remind` (the
        default ``method``). Runs as a turn like any message; define it to use
        reminders. A firing may come again after a crash: ``reminder.id`` tells."""

    async def _am_reminder(self, fire: Reminder) -> None:
        cell = self._am_cell
        reminders = cell.node.reminders
        method = reminders.method_of(cell, fire)
        if method is None:
            return  # forgotten, replaced, or done already
        try:
            handler = getattr(self, method, None)
            if handler is None or not inspect.iscoroutinefunction(handler):
                raise TypeError(
                    f"reminder {fire.name!r}: {type(self).__qualname__} has no async "
                    f"method {method!r}"
                )
            await handler(fire)
        except Exception:
            await reminders.handled(cell, fire)  # done: a crash is not redelivered
            raise
        await reminders.handled(cell, fire)

    async def _am_passivate(self, seen: int) -> None:
        """An idle virtual agent passivates (see `IdleWatch`): it stops, refusing
        messages from now on, and saves its snapshot."""
        cell = self._am_cell
        if cell.handled != seen + 1 or cell.mailbox or len(cell.busy()) > 1:
            return  # a message came in since: not idle
        if cell.node.reminders.armed(cell):
            return
        await cell.stop(None)  # from its own turn: returns at once, STOPPING now
        if hasattr(self, "snapshot"):
            await cell.checkpoint()

    async def checkpoint(self) -> None:
        """Save ``self.snapshot()`` now, so a restarted instance is restored from it.

        Needs ``snapshot()`` (plain or async); raises TypeError without one.
        """
        await self._am_cell.checkpoint()

    @property
    def ref(self) -> AgentRef:
        """This agent's own ref, to hand to others."""
        return self._am_cell.ref

    @property
    def name(self) -> str | None:
        """The registered name, or None for an anonymous agent."""
        return self._am_cell.name

    @property
    def node(self) -> str:
        """Id of the node hosting this agent."""
        return self._am_cell.node.id

    @property
    def mesh(self) -> Mesh:
        """The mesh this agent lives in: spawn, get and publish from here."""
        facade = self._am_cell.node.facade
        assert facade is not None, "agent is not attached to a Mesh"
        return cast("Mesh", facade)

    def __repr__(self) -> str:
        cell = getattr(self, "_am_cell", None)
        label = "unattached" if cell is None else (cell.name or cell.id)
        return f"<{type(self).__qualname__} agent {label}>"


# The framework's names, and the state hooks an agent may define, are never messages.
_RESERVED = frozenset(name for name in dir(Agent) if not name.startswith("_")) | {
    "snapshot",
    "restore",
}


def method_table(cls: type[Agent]) -> MethodTable:
    """The table of callable methods of ``cls``, made once per class and kept in the
    class's own ``__dict__`` (a subclass gets its own; a class shipped to another node
    by value takes none along: a table pickles as None, and is rebuilt there). Raises
    TypeError if an annotation to validate cannot be evaluated."""
    table: MethodTable | None = cls.__dict__.get("_am_method_table")
    if table is None:
        table = MethodTable(cls, _RESERVED)
        table.starts_now = cls.on_start is Agent.on_start and not hasattr(cls, "restore")
        type.__setattr__(cls, "_am_method_table", table)
    return table


def check_agent_class(cls: Any) -> type[Agent]:
    """Return ``cls`` if it is an `Agent` subclass, else raise TypeError.

    Its method table is made here, where the class was defined or received, so
    that the annotations it validates are evaluated before the class travels.
    """
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise TypeError(f"spawn() needs an Agent subclass, got {cls!r}")
    method_table(cls)
    return cls

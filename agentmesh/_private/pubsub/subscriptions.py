"""Subscriptions: where a published message goes, and how it is typed on the way.

Each kind delivers through its subscriber's bounded buffer: an agent's mailbox, or a
driver's `TopicStream`. When that buffer is full, ``overflow`` decides: wait for room
(``"backpressure"``, the default: the publisher slows down) or drop the message to
the dead letters (``"drop"``: the publisher never waits for this subscriber).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import pydantic

from ..kernel import tracing
from ..kernel.cell import Cell
from ..kernel.envelope import NO_KWARGS, Envelope, TracedEnvelope, chains
from ..kernel.errors import AgentUnavailable

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["DeadLetter", "Overflow", "Subscription", "TopicStream", "payload_adapter"]

#: What to do when a subscriber's buffer is full.
Overflow = Literal["backpressure", "drop"]

_NO_VALUE = object()
#: The key of a publication's trace in its memo (see `Subscription.offer`).
TRACE = object()
_ValidationError = pydantic.ValidationError


def check_overflow(overflow: str) -> Overflow:
    if overflow not in get_args(Overflow):
        raise ValueError(f"overflow must be one of {get_args(Overflow)}, got {overflow!r}")
    return overflow  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be delivered, published on ``agentmesh.dead_letters``.

    ``topic`` is where it was published, or None for a tell sent straight to an agent
    (then ``method`` names the method and ``payload`` is the arguments). ``reason``
    says why (failed validation, subscriber stopped, buffer full, an unknown method
    or bad arguments, an agent that ended with tells unhandled); ``subscriber``
    names who should have received it; ``sender`` who sent it (an agent id).
    """

    topic: str | None
    payload: Any
    reason: str
    subscriber: str | None = None
    sender: str | None = None
    method: str | None = None


class PayloadAdapter:
    """Validates a payload into a handler's annotated type (pydantic).

    Text that does not validate as it is (``str | None`` takes ``"hello"``) is tried
    once more as JSON (a model takes ``'{"step": 1}'``). A plain class pydantic has
    no schema for is checked with ``isinstance``.
    """

    __slots__ = ("adapter", "annotation")

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        try:
            self.adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
        except pydantic.PydanticSchemaGenerationError:
            if not isinstance(annotation, type):
                raise
            config = pydantic.ConfigDict(arbitrary_types_allowed=True)
            self.adapter = pydantic.TypeAdapter(annotation, config=config)

    def validate(self, payload: Any) -> Any:
        try:
            return self.adapter.validate_python(payload)
        except pydantic.ValidationError:
            if not isinstance(payload, str | bytes):
                raise
            return self.adapter.validate_json(payload)


_ADAPTERS: dict[Any, PayloadAdapter] = {}


def payload_adapter(handler: Callable[..., Any]) -> tuple[PayloadAdapter | None, str, bool]:
    """The adapter for a handler's payload parameter (None: untyped), that
    parameter's name, and whether the handler takes the topic (a parameter named
    ``topic``, before or after the payload)."""
    signature = inspect.signature(handler)
    params = [p for p in signature.parameters.values() if p.name not in ("self", "topic")]
    if not params:
        raise TypeError(f"{handler!r} must take the payload as a parameter")
    wants_topic = "topic" in signature.parameters
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:  # e.g. a class local to a function, as a string
        raise TypeError(
            f"cannot resolve the annotations of {handler!r} ({exc}); define the payload "
            "type at module level, or drop the annotation to take payloads as they are"
        ) from exc
    name = params[0].name
    annotation = hints.get(name, Any)
    if annotation is Any:
        return None, name, wants_topic
    adapter = _ADAPTERS.get(annotation)
    if adapter is None:
        adapter = _ADAPTERS[annotation] = PayloadAdapter(annotation)
    return adapter, name, wants_topic


class Subscription:
    """One subscriber's interest in one pattern."""

    __slots__ = ("adapter", "key", "overflow", "pattern", "wants_topic")

    def __init__(
        self,
        key: int,
        pattern: str,
        adapter: PayloadAdapter | None,
        wants_topic: bool,
        overflow: Overflow,
    ) -> None:
        self.key = key
        self.pattern = pattern
        self.adapter = adapter
        self.wants_topic = wants_topic
        self.overflow = overflow

    @property
    def subscriber(self) -> str:
        raise NotImplementedError

    def typed(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, memo: dict[Any, Any]
    ) -> Any:
        """The payload validated for this subscriber, or _NO_VALUE after a dead letter."""
        adapter = self.adapter
        if adapter is None:
            return payload
        value = memo.get(adapter, _NO_VALUE)
        if value is _NO_VALUE:
            try:
                value = adapter.validate(payload)
            except pydantic.ValidationError as exc:
                value = exc
            memo[adapter] = value
        if isinstance(value, pydantic.ValidationError):
            reason = f"payload failed validation as {adapter.annotation!r}: {value}"
            bus.dead_letter(topic, payload, reason, self.subscriber, sender)
            return _NO_VALUE
        return value

    def offer(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, memo: dict[Any, Any]
    ) -> Any:
        """Deliver without waiting: None when done (delivered, or dead-lettered), else
        what `wait_deliver` needs to finish once there is room (backpressure)."""
        raise NotImplementedError

    async def wait_deliver(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, pending: Any
    ) -> None:
        """Finish a delivery `offer` could not complete, waiting for room."""
        raise NotImplementedError

    async def deliver(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, memo: dict[Any, Any]
    ) -> None:
        """Deliver, waiting for room if the overflow policy says so."""
        pending = self.offer(bus, topic, payload, sender, memo)
        if pending is not None:
            await self.wait_deliver(bus, topic, payload, sender, pending)

    def deliver_nowait(self, topic: str, payload: Any, sender: str | None) -> bool:
        """Deliver only if it needs no waiting; False if it could not."""
        raise NotImplementedError


class AgentSubscription(Subscription):
    """A subscription of an agent: each message is a tell to one of its methods.

    ``method`` is a method name (an ``@subscribe`` handler: it reaches whatever
    instance the agent has, so it survives restarts) or None, in which case
    ``handler`` (a runtime ``self.subscribe``) is called through ``!deliver``.
    """

    __slots__ = ("cell", "handler", "method", "payload_name")

    def __init__(
        self,
        key: int,
        pattern: str,
        cell: Cell,
        method: str | None,
        handler: Callable[..., Any] | None,
        overflow: Overflow,
    ) -> None:
        target = handler if handler is not None else cell.methods.handlers[method or ""]
        adapter, self.payload_name, wants_topic = payload_adapter(target)
        super().__init__(key, pattern, adapter, wants_topic, overflow)
        self.cell = cell
        self.method = method
        self.handler = handler

    @property
    def subscriber(self) -> str:
        return self.cell.label

    def _envelope(self, topic: str, value: Any, sender: str | None) -> Envelope:
        # By keyword when the topic comes too, so the parameters' order is free.
        args: tuple[Any, ...] = (value,)
        kwargs = NO_KWARGS
        if self.wants_topic:
            args, kwargs = (), {self.payload_name: value, "topic": topic}
        if self.method is not None:
            return Envelope(self.cell.id, self.method, args, kwargs, None, next(chains), sender)
        call = (self.handler, args, kwargs)
        return Envelope(self.cell.id, "!deliver", call, NO_KWARGS, None, next(chains), sender)

    def deliver_nowait(self, topic: str, payload: Any, sender: str | None) -> bool:
        value = payload
        if self.adapter is not None:
            try:
                value = self.adapter.validate(payload)
            except pydantic.ValidationError:
                return False
        try:
            return self.cell.offer(self._envelope(topic, value, sender))
        except AgentUnavailable:
            return False

    def offer(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, memo: dict[Any, Any]
    ) -> Any:
        # The hot path of every delivery to an agent: no coroutine unless it must wait,
        # and the common steps inlined (validation memoized per publish).
        value = payload
        if self.adapter is not None:
            value = memo.get(self.adapter, _NO_VALUE)
            if value is _NO_VALUE or isinstance(value, _ValidationError):
                value = self.typed(bus, topic, payload, sender, memo)
                if value is _NO_VALUE:
                    return None
        cell = self.cell
        method = self.method
        if method is not None and not self.wants_topic:
            env = Envelope(cell.id, method, (value,), NO_KWARGS, None, next(chains), sender)
        else:
            env = self._envelope(topic, value, sender)
        if tracing.hooks is not None:  # its turn: a child of the publication's span
            trace = memo.get(TRACE)
            if trace is not None:
                env = TracedEnvelope.of(env, trace)
        try:
            if cell.offer(env):
                return None
        except AgentUnavailable as exc:
            bus.dead_letter(topic, payload, f"subscriber unavailable: {exc}", cell.label, sender)
            return None
        if self.overflow == "drop":
            bus.dead_letter(topic, payload, "subscriber's mailbox is full", cell.label, sender)
            return None
        return env

    async def wait_deliver(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, pending: Any
    ) -> None:
        try:
            await self.cell.post(pending)
        except AgentUnavailable as exc:
            reason = f"subscriber unavailable: {exc}"
            bus.dead_letter(topic, payload, reason, self.cell.label, sender)


class TopicStream(Subscription):
    """A driver's subscription: ``async for topic, payload in mesh.subscribe(...)``.

    Holds at most ``maxsize`` undelivered messages. Use it as an async context manager
    (or call `aclose`) to unsubscribe; until then the bus keeps it. After `aclose`,
    what is buffered can still be read, then iteration ends.
    """

    __slots__ = ("_bus", "_closed", "_getter", "_items", "_maxsize", "_putters")

    def __init__(self, bus: Bus, key: int, pattern: str, maxsize: int, overflow: Overflow) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        super().__init__(key, pattern, None, False, overflow)
        self._bus = bus
        self._maxsize = maxsize
        self._items: collections.deque[tuple[str, Any]] = collections.deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    @property
    def subscriber(self) -> str:
        return f"stream {self.pattern!r}"

    def offer(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, memo: dict[Any, Any]
    ) -> Any:
        if self.deliver_nowait(topic, payload, sender):
            return None
        if self._closed:
            bus.dead_letter(topic, payload, "stream closed", self.subscriber, sender)
            return None
        if self.overflow == "drop":
            bus.dead_letter(topic, payload, "stream buffer is full", self.subscriber, sender)
            return None
        return True

    async def wait_deliver(
        self, bus: Bus, topic: str, payload: Any, sender: str | None, pending: Any
    ) -> None:
        while not self._closed:
            if len(self._items) < self._maxsize:
                self._items.append((topic, payload))
                _wake(self._getter)
                return
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            await fut
        bus.dead_letter(topic, payload, "stream closed", self.subscriber, sender)

    def deliver_nowait(self, topic: str, payload: Any, sender: str | None) -> bool:
        if self._closed or len(self._items) >= self._maxsize:
            return False
        self._items.append((topic, payload))
        _wake(self._getter)
        return True

    def __aiter__(self) -> AsyncIterator[tuple[str, Any]]:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._getter = asyncio.get_running_loop().create_future()
            await self._getter
        item = self._items.popleft()
        if self._putters:
            _wake(self._putters.popleft())
        return item

    async def __aenter__(self) -> TopicStream:
        await self._bus.sync_interest()  # live on every node of the cluster from here
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe. Publishers waiting for room give up (to the dead letters)."""
        if self._closed:
            return
        self._closed = True
        self._bus.remove(self)
        _wake(self._getter)
        while self._putters:
            _wake(self._putters.popleft())


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)

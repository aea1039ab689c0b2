"""Streaming calls: a method that yields, its items sent to the caller as they come.

The caller holds a `Stream` (``ref.method.stream(...)``), an async iterator over a
`Receiver`, where the items arrive. The callee's turn runs the method and pushes what
it yields into a `Sink`, the envelope's reply (`pump`). Credit bounds what lies in
between: the producer is at most ``window`` items ahead of the consumer, and waits at
its ``yield`` while it is. Within a node the sink puts items straight into the
receiver (by reference, as asks pass results); across nodes the transport carries
them and the credit back (`CreditSink`, `CreditPeer`).

A stream call is a turn of its agent, as an ask is: a serial agent runs nothing else
until the stream ends (see docs/messaging.md#streaming).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
from collections.abc import Callable, Coroutine
from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .context import current_cell, current_chain
from .envelope import NO_KWARGS, Envelope, new_chain
from .errors import AskTimeout, MailboxFull, SerializationError
from .methods import STREAM_SUFFIX, Producer
from .waits import describe_wait

if TYPE_CHECKING:
    from .cell import Cell
    from .ref import AgentRef

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "CreditPeer",
    "CreditSink",
    "Receiver",
    "Sink",
    "Stream",
    "producer",
]

T = TypeVar("T")

#: Items a producer may be ahead of its consumer unless the call says otherwise.
DEFAULT_WINDOW = 256
#: The largest window a call may ask for (what a producer's node may have to hold).
MAX_WINDOW = 65536

# A receiver's states: made, items flowing, ended by the producer, closed by the consumer.
_NEW, _OPEN, _ENDED, _CLOSED = range(4)


class StreamPeer(Protocol):
    """How a consumer reaches its producer: credit for items taken, and the cancel."""

    def taken(self) -> None:
        """The consumer took one item out of the receiver."""

    def cancel(self) -> None:
        """The consumer is gone: stop the producer (its turn is cancelled)."""


class Receiver:
    """The consumer's end of a stream call: items in arrival order, and how the stream
    ended. A transport feeds it (it is the envelope's reply across nodes); the user
    iterates the `Stream` that wraps it, which nothing else refers to, so a stream
    dropped unfinished is collected and its producer stopped."""

    __slots__ = (
        "deadline",
        "error",
        "items",
        "label",
        "owner",
        "peer",
        "state",
        "waiter",
        "window",
    )

    def __init__(self, window: int, label: str) -> None:
        self.window = window
        self.label = label  # "agent.method", for errors
        self.items: collections.deque[Any] = collections.deque()
        self.state = _NEW
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.peer: StreamPeer | None = None
        #: When the consumer stops waiting for the first item (the loop's clock): a
        #: call still queued then never starts.
        self.deadline = 0.0
        #: The agent whose turn made the call: it waits on the producer until the
        #: stream is over, as on an ask (`register`).
        self.owner: Cell | None = None

    def register(self, owner: Cell, target: str) -> None:
        """``owner`` waits on agent ``target`` until the stream is over: the producer's
        calls back into it on this chain are let in (reentrancy), even between items,
        and a timed-out ask names the wait."""
        self.owner = owner
        if owner.waiting_on is None:
            owner.waiting_on = {}
        owner.waiting_on[self] = target

    def release(self) -> None:
        """The stream is over: its owner no longer waits on it."""
        owner = self.owner
        if owner is not None:
            self.owner = None
            if owner.waiting_on is not None:
                owner.waiting_on.pop(self, None)

    def attach(self, peer: StreamPeer) -> None:
        """The way to the producer, set by whoever carries the call."""
        self.peer = peer
        if self.state == _CLOSED:  # closed while the call was on its way
            peer.cancel()

    def feed(self, item: Any) -> None:
        """One item from the producer (dropped if the consumer is gone)."""
        if self.state == _OPEN:
            self.items.append(item)
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def done(self) -> bool:
        """Whether the stream is over: ended by its producer, or closed."""
        return self.state >= _ENDED

    def set_result(self, result: Any, /) -> None:
        """The producer ended: the consumer gets what is buffered, then the end."""
        if self.state == _OPEN:
            self.state = _ENDED
            self.release()
            self._wake()

    def set_exception(self, exception: BaseException, /) -> None:
        """The stream failed: the consumer gets what is buffered, then ``exception``."""
        if self.state <= _OPEN:
            self.state = _ENDED
            self.error = exception
            self.release()
            self._wake()

    def close(self) -> None:
        """The consumer is done: drop what is buffered and stop the producer."""
        state = self.state
        if state >= _ENDED:
            return
        self.state = _CLOSED
        self.items.clear()
        self.release()
        peer = self.peer
        if state == _OPEN and peer is not None:
            peer.cancel()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Stream(Generic[T]):
    """What a streaming method yields, as its caller receives it, in order.

    Made by ``ref.method.stream(*args, window=256, item_timeout=None, **kwargs)``; the
    call is sent when iteration starts. ``async for item in stream`` takes the items;
    errors come from the iteration: `RemoteError` if the method raised, `AgentUnavailable`
    if the agent stopped or its node went away, `AskTimeout` if no item came within
    ``item_timeout`` seconds (default: the mesh's ask timeout), `StreamMismatch` if the
    method does not yield. ``aclose()`` (or ``async with``), leaving the loop early
    (once the stream is dropped), an item timeout, or cancelling the iterating task
    stop the producer: its generator is closed at its ``yield`` (or cancelled at its
    ``await``), and its ``finally`` blocks run.

    Example::

        async for token in llm.generate.stream("Hello", window=32):
            print(token, end="")
    """

    __slots__ = ("__weakref__", "_args", "_kwargs", "_method", "_receiver", "_ref", "item_timeout")

    def __init__(
        self,
        ref: AgentRef,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        window: int,
        item_timeout: float | None,
    ) -> None:
        if type(window) is not int or not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be an int from 1 to {MAX_WINDOW}, got {window!r}")
        if item_timeout is not None and not item_timeout > 0:
            raise ValueError(f"item_timeout must be positive seconds or None, got {item_timeout}")
        self._ref = ref
        self._method = method
        self._args = args
        self._kwargs = kwargs
        #: Seconds to wait for each item; None until the call is sent: the mesh's
        #: ask timeout.
        self.item_timeout = item_timeout
        self._receiver = Receiver(window, f"{ref.name or ref.id}.{method}")

    @property
    def window(self) -> int:
        """How many items the producer may be ahead of this consumer."""
        return self._receiver.window

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:
        receiver = self._receiver
        items = receiver.items
        if items:  # the common case under load: an item is there
            item: T = items.popleft()
            peer = receiver.peer
            if peer is not None:
                peer.taken()
            return item
        return await self._next()

    async def _next(self) -> T:
        receiver = self._receiver
        if receiver.state == _NEW:
            await self._open()
        items = receiver.items
        while not items:
            state = receiver.state
            if state == _ENDED:
                error = receiver.error
                if error is not None:
                    receiver.error = None  # raised once; then the stream is just over
                    raise error
                raise StopAsyncIteration
            if state == _CLOSED:
                raise StopAsyncIteration
            await self._wait()
        item: T = items.popleft()
        peer = receiver.peer
        if peer is not None:
            peer.taken()
        return item

    async def _wait(self) -> None:
        """Wait for the next item (or the end), at most ``item_timeout`` seconds."""
        receiver = self._receiver
        if receiver.waiter is not None:
            raise RuntimeError(f"stream {receiver.label}() is already being iterated")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        receiver.waiter = fut
        assert self.item_timeout is not None
        timer = loop.call_later(self.item_timeout, self._expire, fut)
        try:
            await fut
        except asyncio.CancelledError:
            receiver.close()  # the consumer's task was cancelled: so is the producer
            raise
        finally:
            timer.cancel()
            receiver.waiter = None

    def _expire(self, fut: asyncio.Future[None]) -> None:
        """No item within ``item_timeout``: the stream ends with `AskTimeout`, and its
        producer is stopped."""
        if fut.done():
            return
        receiver = self._receiver
        message = f"stream {receiver.label}() gave no item within {self.item_timeout:g}s"
        node = self._ref._node
        waits = describe_wait(node, self._ref.id) if node is not None else ""
        if waits:
            message += f"; {waits}"
        fut.set_exception(AskTimeout(message))
        receiver.close()

    async def _open(self) -> None:
        """Send the call: to the agent's cell here, or to its node."""
        receiver = self._receiver
        receiver.state = _OPEN
        try:
            await _send(self, receiver)
        except BaseException:
            receiver.state = _ENDED  # never sent (or refused): nothing to stop
            receiver.release()
            raise

    async def aclose(self) -> None:
        """Stop the stream: buffered items are dropped and the producer is stopped
        (its generator closed at its ``yield``). Closing a finished stream does nothing."""
        self._receiver.close()

    async def __aenter__(self) -> Stream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._receiver.close()

    def __del__(self) -> None:
        # Dropped while its producer runs (a loop left with ``break``): stop it, on
        # the loop (a finalizer may run anywhere).
        receiver = getattr(self, "_receiver", None)  # (None: __init__ refused the options)
        if receiver is None or receiver.state != _OPEN:
            return
        node = self._ref._node
        loop = None if node is None else node.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(receiver.close)

    def __repr__(self) -> str:
        state = ("new", "open", "ended", "closed")[self._receiver.state]
        return f"<Stream {self._receiver.label}() {state}>"


async def _send(stream: Stream[Any], receiver: Receiver) -> None:
    """Send ``stream``'s call, waiting for room at most until its first item is due."""
    ref = stream._ref
    node = ref._bind()
    if get_ident() != node.thread or node.loop is None:
        node.wrong_loop("stream", ref, stream._method)
    loop = asyncio.get_running_loop()
    if stream.item_timeout is None:
        stream.item_timeout = node.ask_timeout
    deadline = receiver.deadline = loop.time() + stream.item_timeout
    sender = current_cell.get()
    chain = (
        current_chain.get() if sender is None else sender.chain_of_current_task()
    ) or new_chain()
    method = stream._method + STREAM_SUFFIX
    kwargs = stream._kwargs or NO_KWARGS
    sender_id = None if sender is None else sender.id
    if sender is not None:
        receiver.register(sender, ref._id)
    cell = ref._cell
    if cell is None and ref._node_id == node.id:
        cell = node._cell_of(ref)  # (raises AgentUnavailable if it is gone)
    try:
        if cell is not None:
            sink = LocalSink(receiver, cell)
            env = Envelope(ref._id, method, stream._args, kwargs, sink, chain, sender_id, deadline)
            sink.env = env
            receiver.attach(sink)
            if not cell.offer(env):  # no room now: wait for it
                async with asyncio.timeout_at(deadline):
                    await cell.post(env)
            return
        env = Envelope(ref._id, method, stream._args, kwargs, receiver, chain, sender_id, deadline)
        transport = node._transport(ref)
        try:  # the stream to that node is open and has room
            transport.send_nowait(ref._node_id, env)
        except MailboxFull:  # connect, or wait for room
            async with asyncio.timeout_at(deadline):
                await transport.send(ref._node_id, env)
    except TimeoutError:
        raise AskTimeout(
            f"stream {receiver.label}() was not sent within {stream.item_timeout:g}s: "
            f"no room at the agent (its mailbox or the stream to its node is full)"
        ) from None


class Sink(abc.ABC):
    """The callee's end of a stream call (its envelope's reply): where the turn that
    runs the method pushes what it yields (`pump`)."""

    __slots__ = ()

    @abc.abstractmethod
    def done(self) -> bool:
        """Whether nothing more is wanted: the stream ended, its consumer is gone, or
        it never started and its consumer gave up waiting."""

    def start(self) -> None:  # noqa: B027 (only credit sinks keep a start deadline)
        """The producer starts: from now on the start deadline no longer applies."""

    @abc.abstractmethod
    def push(self, item: Any) -> bool:
        """Send one item; False when the consumer has no room for more (then `room`
        waits for it) or is gone. Raises `SerializationError` for an item that cannot
        travel."""

    @abc.abstractmethod
    async def room(self) -> None:
        """Return once the consumer has room for more items, or is gone."""

    @abc.abstractmethod
    def set_result(self, result: Any, /) -> None:
        """The producer ended: end the stream."""

    @abc.abstractmethod
    def set_exception(self, exception: BaseException, /) -> None:
        """The producer failed, or the call was refused: end the stream so."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """The consumer is gone: push no more (its turn is being cancelled)."""


class LocalSink(Sink):
    """A stream call within one node: items go straight into the consumer's receiver.
    The producer waits once ``window`` items are buffered, until half are taken."""

    __slots__ = ("_waiter", "cell", "env", "receiver")

    env: Envelope

    def __init__(self, receiver: Receiver, cell: Cell) -> None:
        self.receiver = receiver
        self.cell = cell
        self._waiter: asyncio.Future[None] | None = None

    def done(self) -> bool:
        return self.receiver.state >= _ENDED

    def push(self, item: Any) -> bool:
        receiver = self.receiver
        if receiver.state != _OPEN:
            return False
        receiver.feed(item)
        return len(receiver.items) < receiver.window

    async def room(self) -> None:
        receiver = self.receiver
        low = receiver.window // 2
        loop = asyncio.get_running_loop()
        while len(receiver.items) > low and receiver.state == _OPEN:
            self._waiter = fut = loop.create_future()
            try:
                await fut
            finally:
                self._waiter = None

    def taken(self) -> None:
        waiter = self._waiter
        receiver = self.receiver
        if waiter is not None and len(receiver.items) <= receiver.window // 2 and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.cell.cancel_turn(self.env)

    def set_result(self, result: Any, /) -> None:
        self.receiver.set_result(None)

    def set_exception(self, exception: BaseException, /) -> None:
        self.receiver.set_exception(exception)


class CreditSink(Sink):
    """A stream call from another node: the producer may send ``window`` items, and
    more as the consumer grants credit (`grant`). Subclasses send (`_send_item`,
    `_send_end`); a transport calls `grant` and `cancel`."""

    __slots__ = ("_clock", "_credit", "_deadline", "_started", "_state", "_waiter", "_window")

    def __init__(self, window: int, deadline: float, clock: Callable[[], float]) -> None:
        self._window = window
        self._credit = window
        self._deadline = deadline  # (the loop's clock) past it, a call not started is dropped
        self._clock = clock
        self._started = False
        self._state = _OPEN
        self._waiter: asyncio.Future[None] | None = None

    def done(self) -> bool:
        return self._state != _OPEN or (not self._started and self._clock() > self._deadline)

    def start(self) -> None:
        self._started = True

    def push(self, item: Any) -> bool:
        if self._state != _OPEN:
            return False
        self._send_item(item)
        self._credit -= 1
        return self._credit > 0

    async def room(self) -> None:
        loop = asyncio.get_running_loop()
        while self._credit <= 0 and self._state == _OPEN:
            self._waiter = fut = loop.create_future()
            try:
                await fut
            finally:
                self._waiter = None

    def grant(self, credit: int) -> None:
        """The consumer took ``credit`` more items: as many more may be sent (never
        more than a window ahead, whatever a peer says)."""
        self._credit = min(self._credit + credit, self._window)
        if self._credit > 0:
            self._wake()

    def cancel(self) -> None:
        self._state = _CLOSED
        self._wake()

    def set_result(self, result: Any, /) -> None:
        if self._state == _OPEN:
            self._state = _ENDED
            self._send_end(None)

    def set_exception(self, exception: BaseException, /) -> None:
        if self._state == _OPEN:
            self._state = _ENDED
            self._send_end(exception)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @abc.abstractmethod
    def _send_item(self, item: Any) -> None:
        """Carry one item to the consumer; raises `SerializationError` if it cannot."""

    @abc.abstractmethod
    def _send_end(self, error: BaseException | None) -> None:
        """Carry the end of the stream (``error`` None: it finished) to the consumer."""


class CreditPeer:
    """The consumer's side of a stream call across nodes: credit goes back in steps
    of half the window (``grant``); ``cancel`` stops the producer. Counts what the
    producer sent beyond the credit it had (`received`), which a peer must never do."""

    __slots__ = ("_cancel", "_grant", "_step", "_untold", "outstanding", "window")

    def __init__(
        self, window: int, grant: Callable[[int], None], cancel: Callable[[], None]
    ) -> None:
        self.window = window
        self._grant = grant
        self._cancel = cancel
        self._step = max(1, window // 2)
        self._untold = 0  # items taken, not yet credited
        self.outstanding = 0  # items received, not yet credited

    def received(self, count: int) -> bool:
        """``count`` items arrived; False if that is more than the producer may send."""
        self.outstanding += count
        return self.outstanding <= self.window

    def taken(self) -> None:
        self._untold += 1
        if self._untold >= self._step:
            credit, self._untold = self._untold, 0
            self.outstanding -= credit
            self._grant(credit)

    def cancel(self) -> None:
        self._cancel()


def producer(method: Producer, sink: Sink) -> Callable[..., Coroutine[Any, Any, None]]:
    """A handler that runs the streaming ``method`` into ``sink``: called with the
    instance and the call's arguments, it makes the generator there and then (wrong
    arguments raise TypeError before any of the method's code runs, as for an ask)."""

    def start(instance: Any, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, None]:
        return pump(method(instance, *args, **kwargs), sink)

    return start


async def pump(gen: Any, sink: Sink) -> None:
    """Push what ``gen`` yields into ``sink``, waiting for room when the consumer's
    window is full; close ``gen`` however this ends, so its ``finally`` blocks run.

    A consumer that goes away cancels the turn running this (`Cell.cancel_turn`): the
    generator gets CancelledError at its ``await``, or GeneratorExit at its ``yield``
    (from ``aclose``) if it waits here for room. An item that cannot travel ends the
    stream with `SerializationError`."""
    sink.start()
    try:
        async for item in gen:
            try:
                room = sink.push(item)
            except SerializationError as exc:
                sink.set_exception(exc)
                return
            if not room:
                await sink.room()
                if sink.done():  # the consumer is gone
                    return
    finally:
        await gen.aclose()

"""`Link`: one authenticated stream to a peer node, carrying traffic both ways.

Writes batch naturally: the writer takes everything queued when it wakes, so one
message goes out at once at low load and many share a frame at high load. Envelopes
are flow-controlled by credit, as HTTP/2 streams are: a side may have at most
``window`` envelopes that the other has not yet delivered or parked, and at most
``window`` tells to any one agent that it has not yet delivered into that agent's
mailbox (see `inbox`). So a fast sender never grows a slow receiver's memory, and one
slow agent never holds back the others; replies and credit are never held back.

Stream calls' items come back as `StreamItems`, each call's within the window its
caller grants (`streaming`); a caller that is cancelled, or a stream closed, sends a
cancel for its call, which cancels the handler on the callee's side.

How envelopes are encoded into a frame and read back is `frames`' business; how they
are delivered on the receiving side, `inbox`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import pickle
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import pydantic
from google.protobuf.message import Message

from ...v1 import wire_pb2
from ..kernel import tracing
from ..kernel.envelope import NO_KWARGS, Envelope, RemoteReply, TracedEnvelope, new_chain
from ..kernel.errors import AgentmeshError, AgentUnavailable, MailboxFull, SerializationError
from ..kernel.streams import MAX_WINDOW, CreditPeer, Receiver
from .codec import MAX_VALUE_BYTES, decode, encode
from .frames import (
    FRAME_BUDGET,
    PLAIN_TYPES,
    SHORT,
    SHORT_TYPES,
    MalformedFrame,
    Outbox,
    StreamRefused,
    malformed,
    pack,
    plain_tell,
    unpack_header,
    unpickle,
)
from .inbox import Inbox, OfferTells, Take
from .streaming import RemoteSink
from .untrusted import said

__all__ = ["Link"]

log = logging.getLogger("agentmesh.transport")

Read = Callable[[], Awaitable[Any]]
Write = Callable[[wire_pb2.Frame], Awaitable[None]]
Deliver = Callable[[Envelope], Awaitable[None]]


#: Calls a peer made that a link keeps (to cancel them) before it drops answered ones.
_PRUNE_FROM = 1024
#: Seconds a link whose writing failed waits for the peer's last frame (its reason).
_LAST_WORD = 0.5

#: Values that travel with a codec of their own (JSON, protobuf), not pickled.
TYPED = (pydantic.BaseModel, Message)


def _has_typed(env: Envelope) -> bool:
    """Whether a value of ``env`` has a codec of its own (checked without a generator:
    this runs once per cross-node message)."""
    for value in env.args:
        if isinstance(value, TYPED):
            return True
    if env.kwargs:
        for value in env.kwargs.values():
            if isinstance(value, TYPED):
                return True
    return False


class Link:
    """A stream to ``peer`` after the handshake; `run` serves it until it breaks."""

    def __init__(
        self,
        peer: str,
        read: Read,
        write: Write,
        deliver: Deliver,
        window: int,
        bind_refs: Callable[[], AbstractContextManager[None]],
        take: Take,
        bypasses: Callable[[Envelope], bool],
        offer_tells: OfferTells,
        control: Callable[[Envelope], bool],
        receive_window: int | None = None,
        cancel: Callable[[Envelope], None] | None = None,
    ) -> None:
        self.peer = peer
        self._bind_refs = bind_refs  # refs decoded here belong to this node
        self._read = read
        self._write = write
        self._deliver = deliver  # for the framework's own agents
        #: Whether an envelope is control traffic: never windowed nor queued behind
        #: user messages (`Node.is_control`).
        self._is_control = control
        self.window = window  # envelopes we may still send before credit comes back
        self._per_agent = window  # tells to one agent in flight, at most
        self._sent: dict[str, int] = {}  # tells in flight per agent (not delivered)
        self._outbox = Outbox(peer, self._dropped)  # envelopes queued to send, in order
        self._queue = self._outbox.queue  # where offer_tell appends plain tells
        self._replies: collections.deque[wire_pb2.Reply] = collections.deque()
        self._clock = asyncio.get_running_loop().time
        self._wake = asyncio.Event()
        self._woken = False  # True: _wake is set (other paths may set it without this)
        # Received for user agents: delivered in order per agent, flow-controlled.
        self.inbox = Inbox(
            window if receive_window is None else receive_window,
            self._wake.set,
            self._entry,
            self._decode,
            take,
            bypasses,
            offer_tells,
            self._refused,
        )
        # Received for the framework's own agents: never behind user traffic.
        self._control_in: collections.deque[tuple[Any, float]] = collections.deque()
        self._control_ready = asyncio.Event()
        self._control_out: collections.deque[bytes] = collections.deque()
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        # Senders of tells waiting for room at an agent (its credit used up), per agent.
        self._held: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._flush_waiters: list[asyncio.Future[None]] = []  # see `flushed`
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._corr = itertools.count(1)
        # Stream calls made over this link: where their items go, and their credit.
        self.streams: dict[int, tuple[Receiver, CreditPeer]] = {}
        self._stream_credit: dict[int, int] = {}  # items taken, to credit, per call
        self._cancels: list[int] = []  # calls whose callers gave up, to tell the peer
        # Calls the peer made, by correlation id, until answered: to cancel them.
        self._incoming: dict[int, Envelope] = {}
        self._prune_at = _PRUNE_FROM
        #: Cancels the turn of a call whose caller was cancelled (`Node.cancel_call`).
        self._cancel_call = cancel
        # Items and ends of the stream calls the peer made: (corr, item, end, error).
        self._stream_out: collections.deque[
            tuple[int, bytes | None, bool, wire_pb2.Value | None]
        ] = collections.deque()
        self.closed = False
        self.frames_sent = 0
        self.envelopes_sent = 0
        #: Times a send waited for credit (the stream's, or its agent's), and for how
        #: long in all: counted on the waiting path only.
        self.credit_waits = 0
        self.credit_wait_seconds = 0.0
        #: Told of a malformed frame from the peer before the peer is told (which
        #: may end the call, and cancel whoever serves it): the transport counts it.
        self.on_malformed: Callable[[MalformedFrame], None] | None = None

    # -- sending ------------------------------------------------------------------

    def _encode(self, env: Envelope) -> wire_pb2.Envelope | bytes:
        """The envelope for the wire: pickled whole (the common case), or as a proto
        Envelope when a value has a codec of its own (a pydantic model, a protobuf
        message). Raises `SerializationError` before anything is registered."""
        reply = env.reply
        corr = next(self._corr) if reply is not None else 0
        time_left = 0.0
        window = 0
        if corr:
            time_left = max(0.0, env.deadline - asyncio.get_running_loop().time())
            if isinstance(reply, Receiver):  # a stream call
                window = reply.window
        carried = None  # the W3C trace context, for a traced message (tracing is on)
        if tracing.hooks is not None and env.trace is not None:
            carried = tracing.hooks.to_wire(env.trace)
        wire: wire_pb2.Envelope | bytes
        if _has_typed(env) and not self._is_control(env):
            wire = wire_pb2.Envelope(
                target=env.target,
                method=env.method,
                args=[encode(a) for a in env.args],
                chain=env.chain,
                sender=env.sender or "",
                corr=corr,
                time_left=time_left,
                window=window,
            )
            for key, value in env.kwargs.items():
                wire.kwargs[key].CopyFrom(encode(value))
            if carried is not None:
                wire.traceparent, wire.tracestate = carried
        else:
            body: tuple[Any, ...] = (
                env.method,
                env.args,
                env.kwargs or None,
                env.chain,
                env.sender,
            )
            if window:
                body += (carried, window)
            elif carried is not None:
                body += (carried,)
            wire = pack(env.target, corr, time_left, body)
        if window:
            assert isinstance(reply, Receiver)
            peer = CreditPeer(
                window,
                functools.partial(self._credit_stream, corr),
                functools.partial(self._cancel_stream, corr),
            )
            self.streams[corr] = (reply, peer)
            reply.attach(peer)
        elif reply is not None:
            assert isinstance(reply, asyncio.Future)
            self.pending[corr] = reply
            reply.add_done_callback(functools.partial(self._forget, corr))
        return wire

    def _forget(self, corr: int, fut: asyncio.Future[Any]) -> None:
        self.pending.pop(corr, None)
        if fut.cancelled() and not self.closed:  # its asker was cancelled: so is the call
            self._cancels.append(corr)
            self._wake.set()

    def _credit_stream(self, corr: int, credit: int) -> None:
        """The consumer of stream call ``corr`` took ``credit`` more items."""
        if corr in self.streams and not self.closed:
            self._stream_credit[corr] = self._stream_credit.get(corr, 0) + credit
            self._wake.set()

    def _cancel_stream(self, corr: int) -> None:
        """The consumer of stream call ``corr`` is gone: stop its producer."""
        if self.streams.pop(corr, None) is not None and not self.closed:
            self._stream_credit.pop(corr, None)
            self._cancels.append(corr)
            self._wake.set()

    def stream_item(self, corr: int, data: bytes) -> None:
        """Queue one item (pickled) of the stream call ``corr`` the peer made."""
        if not self.closed:
            self._stream_out.append((corr, data, False, None))
            self._wake.set()

    def stream_end(self, corr: int, error: BaseException | None) -> None:
        """Queue the end of the stream call ``corr`` the peer made (``error``: how it
        failed, or None)."""
        self._incoming.pop(corr, None)
        if self.closed:
            return
        encoded = None
        if error is not None:
            try:
                encoded = encode(error)
            except SerializationError as exc:
                encoded = encode(exc)
        self._stream_out.append((corr, None, True, encoded))
        self._wake.set()

    def offer_tell(
        self,
        target: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sender: str | None,
    ) -> bool:
        """Queue a tell to a user agent if the stream and the agent have room, nobody
        waits for either, and its values are plain (`plain_tell`); False otherwise,
        and then `send` or `send_nowait` with an envelope does it. The hot path of a
        cross-node tell (a `Route`, cached by refs)."""
        if self.window <= 0 or self.closed or self._room:
            return False
        sent = self._sent
        in_flight = sent.get(target, 0)
        if in_flight >= self._per_agent or (self._held and target in self._held):
            return False
        for value in args:  # plain_tell(args, kwargs), inlined for the arguments
            kind = type(value)
            if kind not in PLAIN_TYPES and (kind not in SHORT_TYPES or len(value) > SHORT):
                return False
        if kwargs and not plain_tell((), kwargs):
            return False
        self.window -= 1
        sent[target] = in_flight + 1
        self.envelopes_sent += 1
        self._queue.append((target, method, args, kwargs or None, sender))
        if not self._woken:  # cheaper than Event.set() once the writer is woken
            self._woken = True
            self._wake.set()
        return True

    def send_nowait(self, env: Envelope) -> None:
        """Queue ``env`` if the peer has room for it; raise `MailboxFull` if not."""
        if env.reply is None and self._held and env.target in self._held:
            raise MailboxFull(f"agent {env.target} on node {self.peer} is full (flow control)")
        self._send(env)

    async def send(self, env: Envelope) -> None:
        """Queue ``env``, first waiting for the peer to grant room: on the stream, and
        for a tell, at its agent."""
        if not self._is_control(env):
            tell = env.reply is None
            while True:
                self._check_open()
                waiters: collections.deque[asyncio.Future[None]]
                if tell and self._sent.get(env.target, 0) >= self._per_agent:
                    waiters = self._held.setdefault(env.target, collections.deque())
                elif self.window <= 0:
                    waiters = self._room
                else:
                    break
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                waiters.append(fut)
                self.credit_waits += 1
                started = self._clock()
                try:
                    await fut
                except BaseException:
                    self._gave_up(env.target, waiters, fut)
                    raise
                finally:
                    self.credit_wait_seconds += self._clock() - started
        self._send(env)

    def _gave_up(
        self, target: str, waiters: collections.deque[asyncio.Future[None]], fut: Any
    ) -> None:
        """A sender waiting for room was cancelled: leave no trace that would keep
        others off the fast path, and pass on the room it may have been given."""
        if fut in waiters:
            waiters.remove(fut)
        if waiters is self._room:
            self._grant(0)
            return
        if not waiters and self._held.get(target) is waiters:
            del self._held[target]
        self._grant_to(target, 0)

    def _send(self, env: Envelope) -> None:
        self._check_open()
        if self._is_control(env):  # the framework's own traffic: no window
            control = self._encode(env)
            assert isinstance(control, bytes)
            self._control_out.append(control)
            self._wake.set()
            return
        if self.window <= 0:
            raise MailboxFull(f"no room on the stream to node {self.peer} (flow control)")
        tell = env.reply is None
        if tell:
            in_flight = self._sent.get(env.target, 0)
            if in_flight >= self._per_agent:
                raise MailboxFull(f"agent {env.target} on node {self.peer} is full (flow control)")
        wire = self._encode(env)
        if tell:
            self._sent[env.target] = in_flight + 1
        self.window -= 1
        self.envelopes_sent += 1
        self._outbox.push(wire)
        self._wake.set()

    @property
    def undelivered(self) -> int:
        """Tells sent (or queued) that the peer has not yet delivered into a mailbox."""
        return sum(self._sent.values())

    async def flushed(self) -> None:
        """Return once every tell sent so far is in its agent's mailbox (or the stream
        is closed)."""
        while self._sent and not self.closed:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._flush_waiters.append(fut)
            await fut

    @property
    def held_senders(self) -> int:
        """How many sends wait for room (on the stream, or at an agent)."""
        return len(self._room) + sum(len(held) for held in self._held.values())

    def reply(self, corr: int, ok: bool, value: Any) -> None:
        self._incoming.pop(corr, None)
        if self.closed:
            return  # the asker's node is gone; nobody is waiting
        try:
            encoded = encode(value)
        except SerializationError as exc:
            ok, encoded = False, encode(exc)
        self._replies.append(wire_pb2.Reply(corr=corr, ok=ok, value=encoded))
        self._wake.set()

    def _check_open(self) -> None:
        if self.closed:
            raise AgentUnavailable(f"the connection to node {self.peer} is closed")

    # -- serving ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the stream until either side ends it; then fail what waits on it.

        Raises `MalformedFrame` if it ended because the peer sent one."""
        tasks = [
            asyncio.ensure_future(self._writer()),
            asyncio.ensure_future(self._reader()),
            self.inbox.failed,
            asyncio.ensure_future(self._control_delivery()),
        ]
        reason = f"the connection to node {self.peer} was lost"
        malformed = None
        writer, reader = tasks[0], tasks[1]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if (
                done == {writer}
                and not writer.cancelled()
                and writer.exception() is not None
                and not self.closed
            ):
                # A write that failed as the stream ended: what the peer said last (a
                # refusal, saying why) may still be on its way in, and says more.
                finished, _ = await asyncio.wait((reader,), timeout=_LAST_WORD)
                done |= finished
            for task in done:
                error = None if task.cancelled() else task.exception()
                if isinstance(error, MalformedFrame):
                    malformed = error
                    reason = f"node {self.peer} sent a malformed frame: {malformed}"
                elif isinstance(error, StreamRefused):
                    reason = f"node {self.peer} ended the stream: {error}"
                    log.warning("%s", reason)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if malformed is not None:
                if self.on_malformed is not None:
                    self.on_malformed(malformed)
                await self._refuse(f"it could not read a frame from this node: {malformed}")
            self.close(reason)
        if malformed is not None:
            raise malformed

    async def _refuse(self, reason: str) -> None:
        """Tell the peer why this side ends the stream, if it still can."""
        refusal = wire_pb2.Frame(refusal=wire_pb2.Refusal(reason=reason))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._write(refusal)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(AgentUnavailable(reason))
        self.pending.clear()
        streams, self.streams = self.streams, {}
        for receiver, _peer in streams.values():
            receiver.set_exception(AgentUnavailable(reason))
        incoming, self._incoming = self._incoming, {}
        for env in incoming.values():
            if isinstance(env.reply, RemoteSink):  # its consumer is gone: stop it
                env.reply.cancel()
                if self._cancel_call is not None:
                    self._cancel_call(env)
        waiting = [*self._room, *(fut for held in self._held.values() for fut in held)]
        self._room.clear()
        self._held.clear()
        self._wake_flushers()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(AgentUnavailable(reason))
        self.inbox.close()
        if self._outbox.queue:
            log.warning(
                "%d messages to node %s not sent: %s", len(self._outbox.queue), self.peer, reason
            )
        self._wake.set()

    async def _writer(self) -> None:
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            self._woken = False
            inbox = self.inbox
            while (
                self._outbox.queue
                or self._replies
                or inbox.credit_owed
                or self._control_out
                or inbox.target_owed
                or self._stream_out
                or self._stream_credit
                or self._cancels
            ):
                await self._write(wire_pb2.Frame(batch=self._next_batch()))
                self.frames_sent += 1

    def _next_batch(self) -> wire_pb2.Batch:
        """Take what is queued, up to the frame budget, as one batch."""
        budget = FRAME_BUDGET
        control: list[bytes] = []
        while self._control_out and (budget > 0 or not control):
            control.append(self._control_out.popleft())
            budget -= len(control[-1])
        pickled, typed, order, budget = self._outbox.take(budget)
        replies: list[wire_pb2.Reply] = []
        while self._replies and (budget > 0 or not replies):
            replies.append(self._replies.popleft())
            budget -= replies[-1].ByteSize()
        streams: dict[int, wire_pb2.StreamItems] = {}
        out = self._stream_out
        while out and (budget > 0 or not streams):
            corr, data, end, error = out.popleft()
            items = streams.get(corr)
            if items is None:
                items = streams[corr] = wire_pb2.StreamItems(corr=corr)
            if data is not None:
                items.items.append(data)
                budget -= len(data)
            if end:
                items.end = True
                if error is not None:
                    items.error.CopyFrom(error)
        stream_credit, self._stream_credit = self._stream_credit, {}
        cancels, self._cancels = self._cancels, []
        inbox = self.inbox
        credit, inbox.credit_owed = inbox.credit_owed, 0
        inbox.allowance += credit  # room the peer will have: it may send that many more
        owed, inbox.target_owed = inbox.target_owed, {}
        return wire_pb2.Batch(
            credited=owed.keys(),
            credits=owed.values(),
            envelopes=typed,
            pickled=pickled,
            order=order,
            replies=replies,
            credit=credit,
            control=control,
            streams=streams.values(),
            stream_credited=stream_credit.keys(),
            stream_credits=stream_credit.values(),
            cancels=cancels,
        )

    async def _reader(self) -> None:
        self._bind_refs().__enter__()  # refs decoded in this task belong to this node
        while True:
            frame = await self._read()
            if frame is None:
                return  # the peer ended the stream
            body = frame.WhichOneof("body")
            if body == "refusal":
                raise StreamRefused(said(frame.refusal.reason, 400))
            if body != "batch":
                raise MalformedFrame(f"a {body} frame mid-stream")
            try:
                self._take_batch(frame.batch)
            except MalformedFrame:
                raise
            except Exception as exc:  # whatever the peer sent, this node lives on
                raise malformed("a frame this node failed on", exc) from None

    def _take_batch(self, batch: wire_pb2.Batch) -> None:
        """Take in what a frame brought: credit, replies, envelopes (these delivered
        or parked at once). Raises `MalformedFrame`."""
        if batch.credited:
            for target, credit in zip(batch.credited, batch.credits, strict=False):
                self._grant_to(target, credit)
        if batch.credit:
            self._grant(batch.credit)
        for reply in batch.replies:
            self._resolve(reply)
        for items in batch.streams:
            self._stream_items(items)
        if batch.stream_credited:
            self._grant_streams(batch.stream_credited, batch.stream_credits)
        now = asyncio.get_running_loop().time()
        if batch.control:
            self._control_in.extend((item, now) for item in batch.control)
            self._control_ready.set()
        if batch.pickled or batch.envelopes:
            self.inbox.put(unpickle(batch, now))
        for corr in batch.cancels:  # after the envelopes: a call may come with its cancel
            self._cancelled(corr)

    def _stream_items(self, message: wire_pb2.StreamItems) -> None:
        """Items (and maybe the end) of a stream call this side made, for its consumer.
        Raises `MalformedFrame` for more items than the call's credit allows."""
        corr = message.corr
        entry = self.streams.get(corr)
        if entry is None:
            return  # closed by its consumer: what was on its way is dropped
        receiver, peer = entry
        if message.items:
            if not peer.received(len(message.items)):
                raise MalformedFrame(f"stream items beyond the call's window of {peer.window}")
            for data in message.items:
                if len(data) > MAX_VALUE_BYTES:
                    raise MalformedFrame(f"a stream item of {len(data):,} bytes, over the limit")
                try:
                    item = pickle.loads(data)
                except Exception as exc:  # the item's class may not exist here, say
                    why = f"{type(exc).__name__}: {said(str(exc), 200)}"
                    receiver.set_exception(
                        SerializationError(f"a stream item from node {self.peer}: {why}")
                    )
                    self._cancel_stream(corr)
                    return
                receiver.feed(item)
        if message.end:
            del self.streams[corr]
            self._stream_credit.pop(corr, None)
            if message.HasField("error"):
                receiver.set_exception(self._error_of(message.error))
            else:
                receiver.set_result(None)

    def _error_of(self, value: wire_pb2.Value) -> BaseException:
        """The exception a peer sent as a call's error (decoded here)."""
        try:
            error = decode(value)
        except SerializationError as exc:
            return exc
        if isinstance(error, BaseException):
            return error
        return AgentmeshError(f"node {self.peer} sent {said(error)} as an error")

    def _grant_streams(self, calls: Any, credits: Any) -> None:
        """Credit for stream calls the peer made: their producers may send more."""
        incoming = self._incoming
        for corr, credit in zip(calls, credits, strict=False):
            env = incoming.get(corr)
            if env is not None and isinstance(env.reply, RemoteSink):
                env.reply.grant(credit)

    def _cancelled(self, corr: int) -> None:
        """The peer's caller of call ``corr`` gave up: a queued call never starts, a
        running one is cancelled. Nothing for a call already answered (or unknown)."""
        env = self._incoming.pop(corr, None)
        if env is None:
            return
        reply = env.reply
        if isinstance(reply, RemoteReply | RemoteSink):
            reply.cancel()
        if self._cancel_call is not None:
            self._cancel_call(env)

    def _grant(self, credit: int) -> None:
        """Room for ``credit`` more envelopes: wake senders waiting for it."""
        self.window += credit
        while self._room and self.window > 0:
            fut = self._room.popleft()
            if not fut.done():
                fut.set_result(None)

    def _grant_to(self, target: str, credit: int) -> None:
        """Room for ``credit`` more tells to ``target``: wake senders waiting for it."""
        in_flight = self._sent.get(target, 0) - credit
        if in_flight > 0:
            self._sent[target] = in_flight
        else:  # (never below zero, whatever the peer says)
            self._sent.pop(target, None)
            in_flight = 0
            if not self._sent and self._flush_waiters:
                self._wake_flushers()
        waiters = self._held.get(target)
        if waiters is None:
            return
        room = self._per_agent - in_flight
        while waiters and room > 0:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                room -= 1
        if not waiters:
            del self._held[target]

    def _wake_flushers(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _dropped(self, target: str) -> None:
        """A tell taken back from the outbox and never sent: its credit is free."""
        self._grant(1)
        self._grant_to(target, 1)

    def _resolve(self, reply: wire_pb2.Reply) -> None:
        if len(reply.value.data) > MAX_VALUE_BYTES:
            raise MalformedFrame(f"a reply of {len(reply.value.data):,} bytes, over the limit")
        fut = self.pending.pop(reply.corr, None)
        if fut is None:
            entry = self.streams.pop(reply.corr, None)
            if entry is not None:  # a stream call the peer refused (or could not read)
                if reply.ok:
                    entry[0].set_result(None)
                else:
                    with self._bind_refs():
                        entry[0].set_exception(self._error_of(reply.value))
            return
        if fut.done():
            return
        try:
            with self._bind_refs():
                value = decode(reply.value)
        except SerializationError as exc:
            fut.set_exception(exc)
            return
        if reply.ok:
            fut.set_result(value)
        elif isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_exception(AgentmeshError(f"node {self.peer} sent {said(value)} as an error"))

    def _entry(self, entry: Any, arrived: float) -> Envelope | None:
        """One envelope of a run, decoded (see `_decode`). Raises `MalformedFrame`
        for one that is no envelope: a tell whose target, method or sender is not a
        string. (Arguments of the wrong type are the agent's to refuse, as for tells
        `offer_tells` queues at once, which checks only the method's type.)"""
        if type(entry) is tuple and len(entry) == 5:
            target, method, args, kwargs, sender = entry
            _check_names(target, method, sender)
            return Envelope(target, method, args, kwargs or NO_KWARGS, None, new_chain(), sender)
        if type(entry) is bytes:
            return self._decode(entry, arrived)
        raise MalformedFrame(f"{said(entry)} where an envelope should be")

    async def _control_delivery(self) -> None:
        self._bind_refs().__enter__()
        while True:
            while not self._control_in:
                self._control_ready.clear()
                await self._control_ready.wait()
            item, arrived = self._control_in.popleft()
            try:
                env = self._decode(item, arrived)
                if env is not None:
                    await self._hand_over(env)
            except MalformedFrame:
                raise
            except Exception as exc:  # whatever the peer sent, this node lives on
                raise malformed("a control message this node failed on", exc) from None

    def _decode(self, wire: wire_pb2.Envelope | bytes, arrived: float) -> Envelope | None:
        """The envelope a peer sent in a frame that arrived at ``arrived``, decoded
        once; None if it cannot be (an ask then gets a `SerializationError` back, a
        tell is logged and dropped). Raises `MalformedFrame` for a broken header."""
        if isinstance(wire, bytes):
            corr, time_left, target, start = unpack_header(wire)  # checks its size
        else:
            corr, time_left, target = wire.corr, wire.time_left, wire.target
            _check_values(wire)
        # An ask expires its asker's time left after its frame arrived.
        deadline = arrived + time_left if corr else 0.0
        traced: Any = None  # the W3C trace context the sender sent, if any
        window = 0  # a stream call's
        try:
            if isinstance(wire, bytes):
                body = pickle.loads(memoryview(wire)[start:])
            else:
                method, chain, sender = wire.method, wire.chain, wire.sender
                args = tuple(decode(a) for a in wire.args)
                kwargs = {k: decode(v) for k, v in wire.kwargs.items()} or NO_KWARGS
                if wire.traceparent:
                    traced = (wire.traceparent, wire.tracestate)
                window = wire.window
        except Exception as exc:
            reason = f"node {self.peer} sent what this node cannot decode: {said(str(exc), 200)}"
            if corr:
                self.reply(corr, False, SerializationError(reason))
            else:
                log.warning("%s (a tell to %s, dropped)", reason, said(target))
                self.inbox.settled(target)
            return None
        if isinstance(wire, bytes):  # the pickle's shape: the peer's to get right
            if type(body) is not tuple or len(body) != 5:
                if type(body) is not tuple or len(body) not in (6, 7):
                    raise MalformedFrame(f"{said(body)} where an envelope's body should be")
                if len(body) == 7:
                    window = body[6]
                    if type(window) is not int:
                        raise MalformedFrame(f"a stream call's window that is {said(window)}")
                traced, body = body[5], body[:5]
            method, args, kwargs, chain, sender = body
            _check_names(target, method, sender)
            if type(chain) is not int:
                raise MalformedFrame(f"a call chain that is {said(chain)}")
            kwargs = kwargs or NO_KWARGS
        reply: RemoteReply | RemoteSink | None = None
        if window:
            if not corr or not 0 < window <= MAX_WINDOW:
                raise MalformedFrame(f"a stream call with corr {corr} and window {window}")
            reply = RemoteSink(self, corr, window, deadline, self._clock)
        elif corr:
            reply = RemoteReply(self.reply, corr, deadline, self._clock)
        env = Envelope(target, method, args, kwargs, reply, chain, sender or None, deadline)
        if traced is not None:
            env = _traced(env, traced)
        if corr:
            self._answering(corr, env)
        return env

    def _answering(self, corr: int, env: Envelope) -> None:
        """Keep the peer's call ``corr`` until it is answered, to cancel it if asked.
        Calls never answered (they expired queued) are dropped now and then."""
        incoming = self._incoming
        incoming[corr] = env
        if len(incoming) >= self._prune_at:
            for key in [k for k, e in incoming.items() if e.reply is None or e.reply.done()]:
                del incoming[key]
            self._prune_at = max(_PRUNE_FROM, 2 * len(incoming))

    async def _hand_over(self, env: Envelope) -> None:
        """Deliver a control envelope; a refusal goes back to an asker or to the log."""
        try:
            await self._deliver(env)
        except AgentmeshError as exc:
            self._refused(env, exc)

    def _refused(self, env: Envelope, exc: AgentmeshError) -> None:
        if env.reply is not None:
            env.reply.set_exception(exc)
        else:
            log.warning(
                "tell %s.%s from node %s dropped: %s",
                said(env.target),
                said(env.method),
                self.peer,
                said(str(exc), 400),
            )


def _traced(env: Envelope, traced: Any) -> Envelope:
    """``env`` with the trace context its sender sent, if tracing is on here and that
    is a valid W3C one (else it is ignored, as W3C says: the trace starts again)."""
    tracer = tracing.hooks
    if tracer is None or type(traced) is not tuple or len(traced) != 2:
        return env
    trace = tracer.from_wire(*traced)
    return env if trace is None else TracedEnvelope.of(env, trace)


def _check_names(target: Any, method: Any, sender: Any) -> None:
    """Raise `MalformedFrame` unless an envelope's target and method are strings, and
    its sender one or None (a few type checks: not on the path of plain tells queued
    at once, whose agent checked its id and the method's type)."""
    if type(target) is not str or type(method) is not str:
        raise MalformedFrame(f"an envelope to {said(target)} calling {said(method)}")
    if sender is not None and type(sender) is not str:
        raise MalformedFrame(f"an envelope from {said(sender)}")


def _check_values(wire: wire_pb2.Envelope) -> None:
    """Raise `MalformedFrame` for a value over the documented limit (a sender
    refuses to send one; `decode` would refuse it too, but as the sender's error)."""
    for value in wire.args:
        if len(value.data) > MAX_VALUE_BYTES:
            raise MalformedFrame(f"a value of {len(value.data):,} bytes, over the limit")
    for value in wire.kwargs.values():
        if len(value.data) > MAX_VALUE_BYTES:
            raise MalformedFrame(f"a value of {len(value.data):,} bytes, over the limit")

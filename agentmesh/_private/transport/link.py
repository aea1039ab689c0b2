"""`Link`: one authenticated stream to a peer node, carrying traffic both ways.

Writes batch naturally: the writer takes everything queued when it wakes, so one
message goes out at once at low load and many share a frame at high load. Envelopes
are flow-controlled by credit: a side may have at most ``window`` envelopes that the
other has not yet delivered into a mailbox, so a fast sender never grows a slow
receiver's memory; replies and credit are never held back.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import cloudpickle
import pydantic
from google.protobuf.message import Message

from ...v1 import wire_pb2
from ..kernel.envelope import NO_KWARGS, Envelope, RemoteReply
from ..kernel.errors import AgentmeshError, AgentUnavailable, MailboxFull, SerializationError
from .codec import MAX_VALUE_BYTES, decode, encode

__all__ = ["Link"]

log = logging.getLogger("agentmesh.transport")

Read = Callable[[], Awaitable[Any]]
Write = Callable[[wire_pb2.Frame], Awaitable[None]]
Deliver = Callable[[Envelope], Awaitable[None]]


#: Values that travel with a codec of their own (JSON, protobuf), not pickled.
TYPED = (pydantic.BaseModel, Message)


def pack(entry: tuple[Any, ...]) -> bytes:
    """One envelope as bytes: its correlation id (8 bytes, so a callee that cannot
    unpickle the rest can still answer the asker), then the envelope pickled.

    Plain pickle when it can, cloudpickle for what it cannot take or would name by
    reference where the peer cannot find it (classes and functions of ``__main__``).
    """
    try:
        data = pickle.dumps(entry, protocol=5)
        if b"__main__" in data:
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        try:
            data = cloudpickle.dumps(entry, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"arguments of {entry[1]}() cannot be encoded: {type(exc).__name__}: {exc}"
            ) from exc
    if len(data) > MAX_VALUE_BYTES:
        raise SerializationError(f"arguments of {entry[1]}() encode to {len(data):,} bytes")
    return _HEADER.pack(entry[4], entry[7]) + data


# A packed envelope starts with its correlation id and the time its asker still waits.
_HEADER = struct.Struct("<Qd")
#: Bytes of envelopes and replies per frame, at most (a frame may hold 64 MiB).
_FRAME_BUDGET = 8 * 1024 * 1024


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


def _is_control(env: Envelope) -> bool:
    """Messages for the framework's own agents, except publications (user traffic,
    which keeps its order and flow control)."""
    return env.target.startswith("sys.") and env.method != "!node.publish"


def _deadline(item: wire_pb2.Envelope | bytes, now: float) -> float:
    """When an ask expires, measured from when its frame arrived (0.0 for a tell)."""
    if isinstance(item, bytes):
        corr, time_left = _HEADER.unpack_from(item)
    else:
        corr, time_left = item.corr, item.time_left
    return now + time_left if corr else 0.0


def _merge(batch: wire_pb2.Batch) -> list[wire_pb2.Envelope | bytes]:
    """The batch's envelopes in the order they were sent."""
    if not batch.order:
        return [*batch.envelopes, *batch.packed]
    typed, packed = iter(batch.envelopes), iter(batch.packed)
    return [next(packed) if is_packed else next(typed) for is_packed in batch.order]


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
        deliver_nowait: Callable[[Envelope], bool] = lambda _env: False,
    ) -> None:
        self.peer = peer
        self._bind_refs = bind_refs  # refs decoded here belong to this node
        self._deliver_nowait = deliver_nowait
        self._read = read
        self._write = write
        self._deliver = deliver
        self.window = window  # envelopes we may still send before credit comes back
        self._envelopes: collections.deque[wire_pb2.Envelope | bytes] = collections.deque()
        self._replies: collections.deque[wire_pb2.Reply] = collections.deque()
        self._credit_owed = 0
        # Received, not yet delivered: (envelope, deadline), for user agents (in order,
        # flow-controlled) and for the framework's own agents (never behind those).
        self._inbound: collections.deque[tuple[Any, float]] = collections.deque()
        self._inbound_ready = asyncio.Event()
        self._control_in: collections.deque[tuple[Any, float]] = collections.deque()
        self._control_ready = asyncio.Event()
        self._control_out: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._corr = itertools.count(1)
        self.closed = False
        self._credit_batch = max(1, window // 4)
        self.frames_sent = 0
        self.envelopes_sent = 0

    # -- sending ------------------------------------------------------------------

    def _encode(self, env: Envelope) -> wire_pb2.Envelope | bytes:
        """The envelope for the wire: pickled whole (the common case), or as a proto
        Envelope when a value has a codec of its own (a pydantic model, a protobuf
        message). Raises `SerializationError` before anything is registered."""
        corr = next(self._corr) if env.reply is not None else 0
        time_left = 0.0
        if corr:
            time_left = max(0.0, env.deadline - asyncio.get_running_loop().time())
        wire: wire_pb2.Envelope | bytes
        if _has_typed(env) and not _is_control(env):
            wire = wire_pb2.Envelope(
                target=env.target,
                method=env.method,
                args=[encode(a) for a in env.args],
                chain=env.chain,
                sender=env.sender or "",
                corr=corr,
                time_left=time_left,
            )
            for key, value in env.kwargs.items():
                wire.kwargs[key].CopyFrom(encode(value))
        else:
            wire = pack(
                (
                    env.target,
                    env.method,
                    env.args,
                    env.kwargs or None,
                    corr,
                    env.chain,
                    env.sender,
                    time_left,
                )
            )
        reply = env.reply
        if reply is not None:
            assert isinstance(reply, asyncio.Future)
            self.pending[corr] = reply
            reply.add_done_callback(functools.partial(self._forget, corr))
        return wire

    def _forget(self, corr: int, _fut: asyncio.Future[Any]) -> None:
        self.pending.pop(corr, None)

    def send_nowait(self, env: Envelope) -> None:
        """Queue ``env`` if the peer has room for it; raise `MailboxFull` if not."""
        self._check_open()
        if _is_control(env):  # the framework's own traffic: no window
            control = self._encode(env)
            assert isinstance(control, bytes)
            self._control_out.append(control)
            self._wake.set()
            return
        if self.window <= 0:
            raise MailboxFull(f"no room on the stream to node {self.peer} (flow control)")
        wire = self._encode(env)
        self.window -= 1
        self.envelopes_sent += 1
        self._envelopes.append(wire)
        self._wake.set()

    async def send(self, env: Envelope) -> None:
        """Queue ``env``, first waiting for the peer to grant room."""
        while self.window <= 0 and not _is_control(env):
            self._check_open()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(fut)
            await fut
        self.send_nowait(env)

    def reply(self, corr: int, ok: bool, value: Any) -> None:
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
        """Serve the stream until either side ends it; then fail what waits on it."""
        tasks = [
            asyncio.ensure_future(self._writer()),
            asyncio.ensure_future(self._reader()),
            asyncio.ensure_future(self._delivery()),
            asyncio.ensure_future(self._control_delivery()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close(f"the connection to node {self.peer} was lost")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(AgentUnavailable(reason))
        self.pending.clear()
        while self._room:
            fut = self._room.popleft()
            if not fut.done():
                fut.set_exception(AgentUnavailable(reason))
        if self._envelopes:
            log.warning(
                "%d messages to node %s not sent: %s", len(self._envelopes), self.peer, reason
            )
        self._wake.set()

    async def _writer(self) -> None:
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self._envelopes or self._replies or self._credit_owed or self._control_out:
                await self._write(wire_pb2.Frame(batch=self._next_batch()))
                self.frames_sent += 1

    def _next_batch(self) -> wire_pb2.Batch:
        """Take what is queued, up to the frame budget, as one batch."""
        budget = _FRAME_BUDGET
        control: list[bytes] = []
        while self._control_out and (budget > 0 or not control):
            control.append(self._control_out.popleft())
            budget -= len(control[-1])
        outgoing: list[wire_pb2.Envelope | bytes] = []
        while self._envelopes and (budget > 0 or not outgoing):
            outgoing.append(self._envelopes.popleft())
            item = outgoing[-1]
            budget -= len(item) if isinstance(item, bytes) else item.ByteSize()
        replies: list[wire_pb2.Reply] = []
        while self._replies and (budget > 0 or not replies):
            replies.append(self._replies.popleft())
            budget -= replies[-1].ByteSize()
        packed = [e for e in outgoing if isinstance(e, bytes)]
        mixed = 0 < len(packed) < len(outgoing)  # then say how they interleave
        credit, self._credit_owed = self._credit_owed, 0
        return wire_pb2.Batch(
            envelopes=[e for e in outgoing if not isinstance(e, bytes)],
            packed=packed,
            order=[isinstance(e, bytes) for e in outgoing] if mixed else [],
            replies=replies,
            credit=credit,
            control=control,
        )

    async def _reader(self) -> None:
        self._bind_refs().__enter__()  # refs decoded in this task belong to this node
        while True:
            frame = await self._read()
            if frame is None:
                return  # the peer ended the stream
            if frame.WhichOneof("body") != "batch":
                raise AgentmeshError(f"node {self.peer} sent {frame.WhichOneof('body')} mid-stream")
            batch = frame.batch
            if batch.credit:
                self.window += batch.credit
                while self._room and self.window > 0:
                    fut = self._room.popleft()
                    if not fut.done():
                        fut.set_result(None)
            for reply in batch.replies:
                self._resolve(reply)
            now = asyncio.get_running_loop().time()
            if batch.control:
                self._control_in.extend((item, _deadline(item, now)) for item in batch.control)
                self._control_ready.set()
            if batch.packed or batch.envelopes:
                items = batch.packed if not batch.envelopes else _merge(batch)
                self._inbound.extend((item, _deadline(item, now)) for item in items)
                self._inbound_ready.set()

    def _resolve(self, reply: wire_pb2.Reply) -> None:
        fut = self.pending.pop(reply.corr, None)
        if fut is None or fut.done():
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
            fut.set_exception(AgentmeshError(f"node {self.peer} sent a malformed error: {value!r}"))

    async def _delivery(self) -> None:
        self._bind_refs().__enter__()  # once for the task, not once per envelope
        # In order, one at a time: a full mailbox holds back this stream's later
        # envelopes (and their credit), never its replies, which the reader handles.
        while True:
            while not self._inbound:
                self._inbound_ready.clear()
                await self._inbound_ready.wait()
            wire, deadline = self._inbound.popleft()
            env = self._decode(wire, deadline)
            # A tell to an agent with room is taken at once; the rest may wait.
            if env is not None and not (env.reply is None and self._deliver_nowait(env)):
                await self._hand_over(env)
            self._credit_owed += 1
            # Credit goes back in bulk: when a quarter of the window is owed, or when
            # nothing more is waiting (a frame per envelope would cost a write each).
            if self._credit_owed >= self._credit_batch or not self._inbound:
                self._wake.set()

    async def _control_delivery(self) -> None:
        self._bind_refs().__enter__()
        while True:
            while not self._control_in:
                self._control_ready.clear()
                await self._control_ready.wait()
            item, deadline = self._control_in.popleft()
            env = self._decode(item, deadline)
            if env is not None:
                await self._hand_over(env)

    def _decode(self, wire: wire_pb2.Envelope | bytes, deadline: float) -> Envelope | None:
        """The envelope a peer sent, decoded once; None if it cannot be (an ask then
        gets a `SerializationError` back, a tell is logged and dropped)."""
        corr = _HEADER.unpack_from(wire)[0] if isinstance(wire, bytes) else wire.corr
        try:
            if isinstance(wire, bytes):
                entry = pickle.loads(memoryview(wire)[_HEADER.size :])
                target, method, args, kwargs, _, chain, sender, _ = entry
                kwargs = kwargs or NO_KWARGS
            else:
                target, method, chain, sender = wire.target, wire.method, wire.chain, wire.sender
                args = tuple(decode(a) for a in wire.args)
                kwargs = {k: decode(v) for k, v in wire.kwargs.items()} or NO_KWARGS
        except Exception as exc:
            reason = f"node {self.peer} sent what this node cannot decode: {exc}"
            if corr:
                self.reply(corr, False, SerializationError(reason))
            else:
                log.warning("%s (a tell, dropped)", reason)
            return None
        reply = RemoteReply(self.reply, corr, deadline) if corr else None
        return Envelope(target, method, args, kwargs, reply, chain, sender or None, deadline)

    async def _hand_over(self, env: Envelope) -> None:
        """Deliver, waiting for room; a refusal goes back to an asker or to the log."""
        try:
            await self._deliver(env)
        except AgentmeshError as exc:
            if env.reply is not None:
                env.reply.set_exception(exc)
            else:
                log.warning(
                    "tell %s.%s from node %s dropped: %s", env.target, env.method, self.peer, exc
                )

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
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

from ...v1 import wire_pb2
from ..kernel.envelope import NO_KWARGS, Envelope
from ..kernel.errors import AgentmeshError, AgentUnavailable, MailboxFull, SerializationError
from .codec import decode, encode

__all__ = ["Link"]

log = logging.getLogger("agentmesh.transport")

Read = Callable[[], Awaitable[Any]]
Write = Callable[[wire_pb2.Frame], Awaitable[None]]
Deliver = Callable[[Envelope], Awaitable[None]]


class _WireReply:
    """Stands in, on the callee's node, for the asker's future on the other node."""

    __slots__ = ("_corr", "_deadline", "_done", "_link")

    def __init__(self, link: Link, corr: int, deadline: float) -> None:
        self._link = link
        self._corr = corr
        self._deadline = deadline
        self._done = False

    def done(self) -> bool:
        # Past its deadline the asker gave up: the callee need not start the call.
        return self._done or asyncio.get_running_loop().time() > self._deadline

    def set_result(self, result: Any, /) -> None:
        self._done = True
        self._link.reply(self._corr, True, result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._link.reply(self._corr, False, exception)


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
    ) -> None:
        self.peer = peer
        self._bind_refs = bind_refs  # refs decoded here belong to this node
        self._read = read
        self._write = write
        self._deliver = deliver
        self.window = window  # envelopes we may still send before credit comes back
        self._envelopes: collections.deque[wire_pb2.Envelope] = collections.deque()
        self._replies: collections.deque[wire_pb2.Reply] = collections.deque()
        self._credit_owed = 0
        self._inbound: collections.deque[wire_pb2.Envelope] = collections.deque()
        self._inbound_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._corr = itertools.count(1)
        self.closed = False
        self.frames_sent = 0
        self.envelopes_sent = 0

    # -- sending ------------------------------------------------------------------

    def _encode(self, env: Envelope) -> wire_pb2.Envelope:
        wire = wire_pb2.Envelope(
            target=env.target,
            method=env.method,
            args=[encode(a) for a in env.args],
            chain=env.chain,
            sender=env.sender or "",
        )
        for key, value in env.kwargs.items():
            wire.kwargs[key].CopyFrom(encode(value))
        reply = env.reply
        if reply is not None:
            assert isinstance(reply, asyncio.Future)
            corr = next(self._corr)
            wire.corr = corr
            wire.time_left = max(0.0, env.deadline - asyncio.get_running_loop().time())
            self.pending[corr] = reply
            reply.add_done_callback(functools.partial(self._forget, corr))
        return wire

    def _forget(self, corr: int, _fut: asyncio.Future[Any]) -> None:
        self.pending.pop(corr, None)

    def send_nowait(self, env: Envelope) -> None:
        """Queue ``env`` if the peer has room for it; raise `MailboxFull` if not."""
        self._check_open()
        if self.window <= 0:
            raise MailboxFull(f"no room on the stream to node {self.peer} (flow control)")
        wire = self._encode(env)
        self.window -= 1
        self.envelopes_sent += 1
        self._envelopes.append(wire)
        self._wake.set()

    async def send(self, env: Envelope) -> None:
        """Queue ``env``, first waiting for the peer to grant room."""
        while self.window <= 0:
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
            if not (self._envelopes or self._replies or self._credit_owed):
                continue
            batch = wire_pb2.Batch(
                envelopes=list(self._envelopes),
                replies=list(self._replies),
                credit=self._credit_owed,
            )
            self._envelopes.clear()
            self._replies.clear()
            self._credit_owed = 0
            await self._write(wire_pb2.Frame(batch=batch))
            self.frames_sent += 1

    async def _reader(self) -> None:
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
            if batch.envelopes:
                self._inbound.extend(batch.envelopes)
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
        # In order, one at a time: a full mailbox holds back this stream's later
        # envelopes (and their credit), never its replies, which the reader handles.
        loop = asyncio.get_running_loop()
        while True:
            while not self._inbound:
                self._inbound_ready.clear()
                await self._inbound_ready.wait()
            wire = self._inbound.popleft()
            await self._deliver_one(wire, loop)
            self._credit_owed += 1
            self._wake.set()

    async def _deliver_one(self, wire: wire_pb2.Envelope, loop: asyncio.AbstractEventLoop) -> None:
        reply = None
        deadline = 0.0
        if wire.corr:
            deadline = loop.time() + wire.time_left
            reply = _WireReply(self, wire.corr, deadline)
        try:
            with self._bind_refs():
                args = tuple(decode(a) for a in wire.args)
                kwargs = {k: decode(v) for k, v in wire.kwargs.items()} or NO_KWARGS
            env = Envelope(
                wire.target,
                wire.method,
                args,
                kwargs,
                reply,
                wire.chain,
                wire.sender or None,
                deadline,
            )
            await self._deliver(env)
        except AgentmeshError as exc:
            if reply is not None:
                reply.set_exception(exc)
            else:
                log.warning(
                    "tell %s.%s from node %s dropped: %s", wire.target, wire.method, self.peer, exc
                )

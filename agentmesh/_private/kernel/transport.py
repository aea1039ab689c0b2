"""The transport seam, and `MemoryNetwork`: several nodes in one process.

A transport carries envelopes from one node to another and brings replies back. The
kernel calls only `Transport`; the gRPC transport implements the same seam, and
`MemoryNetwork` implements it in-process, copying every message through cloudpickle
exactly as a wire would, so tests and simulations exercise cross-node semantics
(copies, ref rebinding, unpicklable payloads) without sockets.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import itertools
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from . import pickling, tracing
from .envelope import Envelope, RemoteReply, TracedEnvelope
from .errors import AgentmeshError, AgentUnavailable, MailboxFull, SerializationError
from .streams import CreditPeer, CreditSink, Receiver

if TYPE_CHECKING:
    from .node import Node

__all__ = ["MemoryNetwork", "MemoryTransport", "Route", "Transport"]


class Route(Protocol):
    """A transport's fast path for tells to one agent on one peer, cached by refs."""

    def offer_tell(
        self,
        target: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sender: str | None,
    ) -> bool:
        """Queue the tell (it starts a new call chain) if that needs no waiting; False
        if it cannot be taken so (then the node sends an `Envelope`, which waits or
        raises as it must)."""
        ...


class Transport(abc.ABC):
    """Carries envelopes between nodes; one instance per node.

    ``send`` may wait for flow control (the peer's mailbox or the stream's window);
    ``send_nowait`` never waits and raises `MailboxFull` instead. For an ask, the
    envelope's ``reply`` is a local future the transport resolves when the peer's reply
    comes back, or fails with `AgentUnavailable` if the peer goes away first.
    """

    node: Node

    def attach(self, node: Node) -> None:
        """Called once by the node that owns this transport."""
        self.node = node

    async def start(self) -> None:  # noqa: B027 (most transports have nothing to start)
        """Begin serving peers; called when the mesh starts."""

    @abc.abstractmethod
    async def send(self, peer: str, env: Envelope) -> None: ...

    @abc.abstractmethod
    def send_nowait(self, peer: str, env: Envelope) -> None: ...

    def route(self, peer: str, target: str) -> Route | None:
        """A fast path for tells to agent ``target`` on ``peer`` (refs cache it after
        a tell), or None. Optional: without one every tell is an `Envelope` sent by
        ``send`` or ``send_nowait``; a route that can no longer take tells (its stream
        closed) only ever answers False."""
        return None

    def counters(self) -> tuple[int, int]:
        """(messages from peers waiting for room in this node's mailboxes, frames and
        handshakes refused): what ``agentmesh status`` shows as held and refused."""
        return 0, 0

    async def flush(self, timeout: float) -> int:
        """Wait, at most ``timeout`` seconds, until the tells this node sent are in
        their agents' mailboxes; return how many are not (a closing node waits so, so
        that what it told before closing is not lost). Asks need no such wait."""
        return 0

    async def stop_agent(self, peer: str, agent_id: str, timeout: float | None) -> None:
        """Stop an agent that lives on ``peer``; returns when it has stopped. A
        ``!node.stop`` request the peer's node serves (`Node.take_from_peer`)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        wait = (timeout or self.node.shutdown_timeout) + 5.0
        env = Envelope(agent_id, "!node.stop", (timeout,), {}, fut, 0, None, loop.time() + wait)
        await self.send(peer, env)
        await fut

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections; pending asks on peers fail with `AgentUnavailable`."""


class MemoryNetwork:
    """An in-process network: every transport made by `transport()` reaches the others.

    As between processes, a ref must reach another node inside a message (or pickled
    under that node's ``bind_refs()``); a ref object shared directly keeps its own
    node's shortcut to the agent.
    """

    def __init__(self) -> None:
        self.transports: dict[str, MemoryTransport] = {}

    def transport(self) -> MemoryTransport:
        return MemoryTransport(self)


class MemoryTransport(Transport):
    """One node's end of a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._corr = itertools.count(1)
        #: Stream calls this node made, by correlation id: where their items go.
        self.streams: dict[int, Receiver] = {}
        #: Calls peers made of this node, by (peer, correlation id), until answered.
        self.incoming: dict[tuple[str, int], Envelope] = {}
        self._prune_at = 1024

    def attach(self, node: Node) -> None:
        super().attach(node)
        self.network.transports[node.id] = self

    def _peer(self, peer: str) -> MemoryTransport:
        transport = self.network.transports.get(peer)
        if transport is None:
            raise AgentUnavailable(f"node {peer} is not reachable")
        return transport

    def _copy(self, env: Envelope, peer: MemoryTransport) -> Envelope:
        # Pickle and unpickle as a wire would: the callee gets copies, refs rebind.
        try:
            frame = pickling.dumps((env.target, env.method, env.args, env.kwargs))
        except Exception as exc:
            raise SerializationError(
                f"arguments of {env.method}() cannot be pickled: {type(exc).__name__}: {exc}"
            ) from exc
        corr = 0 if env.reply is None else next(self._corr)
        with peer.node.bind_refs():
            target, method, args, kwargs = cloudpickle.loads(frame)
        if corr == 0:
            copy = Envelope(target, method, args, kwargs, None, env.chain, env.sender)
        else:
            # A wire carries the time left, not the deadline: clocks differ between nodes.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (env.deadline - loop.time())
            reply: RemoteReply | MemorySink
            if isinstance(env.reply, Receiver):  # a stream call
                reply = MemorySink(self, peer, corr, env.reply.window, deadline, loop.time)
            else:
                send = functools.partial(peer.reply, self.node.id)
                reply = RemoteReply(send, corr, deadline, loop.time)
            copy = Envelope(target, method, args, kwargs, reply, env.chain, env.sender, deadline)
        if tracing.hooks is not None and env.trace is not None:  # as a wire carries it
            trace = tracing.hooks.from_wire(*tracing.hooks.to_wire(env.trace))
            if trace is not None:
                copy = TracedEnvelope.of(copy, trace)
        if corr:
            peer.answering(self.node.id, corr, copy)
            if isinstance(env.reply, Receiver):
                receiver = self.streams[corr] = env.reply
                sink = copy.reply
                assert isinstance(sink, MemorySink)
                stop = functools.partial(self._stop_stream, corr, peer)
                receiver.attach(CreditPeer(receiver.window, sink.grant, stop))
            else:
                assert isinstance(env.reply, asyncio.Future)
                self.pending[corr] = env.reply
                env.reply.add_done_callback(functools.partial(self._forget, corr, peer))
        return copy

    def answering(self, origin: str, corr: int, env: Envelope) -> None:
        """Keep call ``corr`` from ``origin`` until answered, to cancel it if asked;
        calls never answered (they expired queued) are dropped now and then."""
        incoming = self.incoming
        incoming[origin, corr] = env
        if len(incoming) >= self._prune_at:
            for key in [k for k, e in incoming.items() if e.reply is None or e.reply.done()]:
                del incoming[key]
            self._prune_at = max(1024, 2 * len(incoming))

    def _forget(self, corr: int, peer: MemoryTransport, fut: asyncio.Future[Any]) -> None:
        self.pending.pop(corr, None)
        if fut.cancelled():  # its asker was cancelled: so is the call
            peer.cancel(self.node.id, corr)

    def _stop_stream(self, corr: int, peer: MemoryTransport) -> None:
        """The consumer of stream call ``corr`` is gone: stop its producer."""
        if self.streams.pop(corr, None) is not None:
            peer.cancel(self.node.id, corr)

    def cancel(self, origin: str, corr: int) -> None:
        """Called on the callee's side: the caller of call ``corr`` gave up."""
        env = self.incoming.pop((origin, corr), None)
        if env is None:
            return  # answered already: nothing to cancel
        reply = env.reply
        if isinstance(reply, RemoteReply | MemorySink):
            reply.cancel()
        self.node.cancel_call(env)

    def stream_item(self, corr: int, item: Any) -> None:
        """Called on the caller's side: an item of stream call ``corr`` (copied)."""
        receiver = self.streams.get(corr)
        if receiver is not None:
            receiver.feed(item)

    def stream_end(self, corr: int, error: BaseException | None) -> None:
        """Called on the caller's side: stream call ``corr`` ended (``error``: how)."""
        receiver = self.streams.pop(corr, None)
        if receiver is None:
            return
        if error is None:
            receiver.set_result(None)
        else:
            receiver.set_exception(error)

    # The peer's node takes what arrives as it takes what a gRPC stream brings
    # (`Node.take_from_peer`): node-level requests, reentrant calls, refusals.

    async def send(self, peer: str, env: Envelope) -> None:
        other = self._peer(peer)
        await other.node.deliver_from_peer(self._copy(env, other))

    def send_nowait(self, peer: str, env: Envelope) -> None:
        other = self._peer(peer)
        if other.node.take_from_peer(self._copy(env, other)) is not None:
            raise MailboxFull(f"mailbox of agent {env.target} on node {peer} is full")

    def reply(self, origin: str, corr: int, ok: bool, value: Any) -> None:
        """Called on the callee's side: carry a result back to the asker's node."""
        self.incoming.pop((origin, corr), None)
        result, error = (value, None) if ok else (None, value)
        try:
            frame = pickling.dumps((result, error))
        except Exception as exc:
            who = self.node.id
            error = SerializationError(f"the reply from node {who} cannot be pickled: {exc}")
            frame = pickling.dumps((None, error))
        asker = self.network.transports.get(origin)
        if asker is None:
            return  # the asker's node is gone; nobody is waiting
        with asker.node.bind_refs():
            result, error = cloudpickle.loads(frame)
        fut = asker.pending.pop(corr, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    async def aclose(self) -> None:
        self.network.transports.pop(self.node.id, None)
        reason = f"node {self.node.id} closed"
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(AgentUnavailable(reason))
        self.pending.clear()
        for receiver in list(self.streams.values()):
            producer = receiver.peer
            receiver.set_exception(AgentUnavailable(reason))
            if producer is not None:
                producer.cancel()  # (this node's consumers are gone)
        incoming, self.incoming = self.incoming, {}
        for env in incoming.values():
            if isinstance(env.reply, MemorySink):  # a stream call: its consumer is cut off
                env.reply.set_exception(AgentUnavailable(reason))
                self.node.cancel_call(env)


class MemorySink(CreditSink):
    """The callee's end of a stream call between two nodes of a `MemoryNetwork`: each
    item is pickled and unpickled on its way, as a wire would."""

    __slots__ = ("_asker", "_callee", "_corr")

    def __init__(
        self,
        asker: MemoryTransport,
        callee: MemoryTransport,
        corr: int,
        window: int,
        deadline: float,
        clock: Any,
    ) -> None:
        super().__init__(window, deadline, clock)
        self._asker = asker
        self._callee = callee
        self._corr = corr

    def _send_item(self, item: Any) -> None:
        try:
            frame = pickling.dumps(item)
        except Exception as exc:
            raise SerializationError(
                f"a streamed {type(item).__qualname__} cannot be pickled: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        with self._asker.node.bind_refs():
            copy = cloudpickle.loads(frame)
        self._asker.stream_item(self._corr, copy)

    def _send_end(self, error: BaseException | None) -> None:
        self._callee.incoming.pop((self._asker.node.id, self._corr), None)
        if error is not None:
            try:
                frame = pickling.dumps(error)
            except Exception as exc:
                frame = pickling.dumps(SerializationError(f"a stream's error: {exc}"))
            with self._asker.node.bind_refs():
                error = cloudpickle.loads(frame)
            if not isinstance(error, BaseException):
                error = AgentmeshError(f"{error!r} as an error")
        self._asker.stream_end(self._corr, error)

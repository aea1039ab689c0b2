"""`GrpcTransport`: the kernel's transport seam over gRPC streams between nodes.

Each node runs a gRPC server (``Peer.Connect``) and dials the peers it sends to. A
node sends to a peer over the first authenticated stream it has with it, dialed or
accepted, so two nodes usually share one stream both ways. A broken stream fails the
asks waiting on it at once (`AgentUnavailable`) and is redialed on the next send.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from ...v1 import wire_pb2
from ..kernel.envelope import Envelope
from ..kernel.errors import AgentUnavailable, AuthError, MailboxFull
from ..kernel.ports import FRAMEWORK_PREFIX
from ..kernel.transport import Transport
from .auth import check_listen_address, new_nonce, prove, verify
from .frames import MalformedFrame
from .link import Link
from .stream import MAX_MESSAGE, FrameStream
from .untrusted import said

__all__ = ["DEFAULT_WINDOW", "TLS", "GrpcTransport", "PeerTraffic"]

log = logging.getLogger("agentmesh.transport")

#: Envelopes a node may have in flight to a peer before the peer grants more room.
DEFAULT_WINDOW = 4096
#: gRPC messages are at most 64 KiB either way (larger frames travel in pieces, see
#: `stream`): what a peer that has not proved the token can make a node hold.
_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]
#: The server's own: no BDP probing, which would let any dialer grow the connection's
#: flow-control window, and with it what gRPC buffers for a stream before a message's
#: size is checked (measured: ~10 MiB a connection of hostile hellos with it, nothing
#: without). gRPC's default windows carry tens of MB/s and more on loopback.
_SERVER_OPTIONS = [*_OPTIONS, ("grpc.http2.bdp_probe", 0), ("grpc.so_reuseport", 0)]
_HANDSHAKE_TIMEOUT = 5.0
#: The method both sides speak, with the frames as raw bytes (`FrameStream` parses
#: them, so it sees a message's size before anything else).
_SERVICE = "agentmesh.v1.Peer"
_CONNECT = f"/{_SERVICE}/Connect"
#: The longest node id a peer may give, and then only of printable characters.
_MAX_NODE_ID = 256


@dataclass(frozen=True)
class TLS:
    """Certificate files for TLS between nodes: this node's certificate and key, and
    the CA that signed its peers' (then peers must present a certificate too)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        cert = Path(self.cert_file).read_bytes()
        key = Path(self.key_file).read_bytes()
        ca = Path(self.ca_file).read_bytes() if self.ca_file else None
        return cert, key, ca

    def server_credentials(self) -> Any:
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> Any:
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


@dataclass
class PeerTraffic:
    """What this node sent to one peer over every stream it had with it: frames,
    envelopes (asks and tells to user agents), sends that waited for credit and their
    seconds waiting; and the sends waiting for credit now."""

    frames_sent: int = 0
    envelopes_sent: int = 0
    credit_waits: int = 0
    credit_wait_seconds: float = 0.0
    senders_waiting: int = 0

    def add(self, link: Link) -> None:
        self.frames_sent += link.frames_sent
        self.envelopes_sent += link.envelopes_sent
        self.credit_waits += link.credit_waits
        self.credit_wait_seconds += link.credit_wait_seconds


_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def advertised_address(listen: str, port: int, advertise: str | None) -> str:
    """The ``host:port`` other nodes dial: ``advertise`` (its port, or the one bound),
    else the host listened on, or this machine's hostname if that is a wildcard."""
    if advertise:
        if advertise.startswith("["):  # IPv6: "[addr]" or "[addr]:port"
            return advertise if "]:" in advertise else f"{advertise}:{port}"
        if advertise.count(":") == 1:  # "host:port"
            return advertise
        if ":" in advertise:  # IPv6 without brackets
            return f"[{advertise}]:{port}"
        return f"{advertise}:{port}"
    host = listen.rsplit(":", 1)[0]
    if host in _WILDCARDS:
        host = socket.gethostname()
        log.info("listening on %s: advertised as %s (set advertise= to change it)", listen, host)
    return f"{host}:{port}"


class GrpcTransport(Transport):
    """Streams to peer nodes over gRPC, authenticated with the cluster token.

    ``listen`` is ``host:port`` (port 0: the OS chooses; see `address` after
    `start`). Without a ``token`` it listens on loopback only. ``advertise`` is the
    ``host`` or ``host:port`` other nodes dial, when that is not the one listened on
    (a wildcard such as ``0.0.0.0``, a NAT); by default the listening host, or this
    machine's hostname for a wildcard. Peers are made known with `add_peer` (the
    cluster layer does it from the head's membership).
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        *,
        token: str | None = None,
        window: int = DEFAULT_WINDOW,
        tls: TLS | None = None,
        advertise: str | None = None,
    ) -> None:
        check_listen_address(listen, token)
        self.listen = listen
        self.advertise = advertise
        self.tls = tls
        self.token = token or ""
        self.window = window
        self.address = ""
        self.peers: dict[str, str] = {}
        self.links: dict[str, Link] = {}
        self.down: dict[str, str] = {}  # peers declared dead, and why
        #: Finds the address of a peer not known yet (set by the cluster layer).
        self.resolve: Callable[[str], Awaitable[str | None]] | None = None
        self.rejected = 0  # handshakes and frames refused
        self._serving: set[Link] = set()  # links not yet ended, for `traffic`
        self._ended: dict[str, PeerTraffic] = {}  # what ended links carried, by peer
        self._dials: dict[str, asyncio.Task[Link]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: grpc.aio.Server | None = None
        self._channels: list[grpc.aio.Channel] = []

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; `address` then holds the address bound (``host:port``)."""
        # No SO_REUSEPORT: a second node on a taken port must fail, not share it.
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        connect = grpc.stream_stream_rpc_method_handler(self._connected)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(_SERVICE, {"Connect": connect})]
        )
        if self.tls is None:
            port = server.add_insecure_port(self.listen)
        else:
            port = server.add_secure_port(self.listen, self.tls.server_credentials())
        await server.start()
        self._server = server
        self.address = advertised_address(self.listen, port, self.advertise)

    def add_peer(self, node_id: str, address: str) -> None:
        self.peers[node_id] = address
        self.down.pop(node_id, None)

    def peer_down(self, node_id: str, reason: str) -> None:
        """A peer is dead: fail what waits on it now, and refuse sends to it."""
        self.down[node_id] = reason
        self.peers.pop(node_id, None)
        link = self.links.pop(node_id, None)
        if link is not None:
            link.close(reason)

    def counters(self) -> tuple[int, int]:
        held = sum(link.inbox.parked for link in self.links.values() if not link.closed)
        return held, self.rejected

    def traffic(self) -> dict[str, PeerTraffic]:
        """What this node sent to each peer since it started (for metrics)."""
        totals = {peer: replace(sent) for peer, sent in self._ended.items()}
        for link in self._serving:
            sent = totals.setdefault(link.peer, PeerTraffic())
            sent.add(link)
            if not link.closed:
                sent.senders_waiting += link.held_senders
        return totals

    def _ended_link(self, link: Link) -> None:
        """``link`` is done: keep what it carried."""
        if link in self._serving:
            self._serving.discard(link)
            self._ended.setdefault(link.peer, PeerTraffic()).add(link)

    async def flush(self, timeout: float) -> int:
        links = [link for link in self.links.values() if not link.closed]
        if links:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(link.flushed() for link in links))
        return sum(link.undelivered for link in links)

    async def aclose(self) -> None:
        for link in list(self.links.values()):
            link.close(f"node {self.node.id} is closing")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close()
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None

    # -- the seam -----------------------------------------------------------------

    async def send(self, peer: str, env: Envelope) -> None:
        await (await self._link(peer)).send(env)

    def send_nowait(self, peer: str, env: Envelope) -> None:
        if peer in self.down:
            raise AgentUnavailable(self.down[peer])
        link = self.links.get(peer)
        if link is None or link.closed:
            # Dialing would wait; a tell_nowait never does: no room on a stream yet.
            self._spawn(self._warm(peer))
            raise MailboxFull(f"no stream to node {peer} yet (connecting); retry, or tell()")
        link.send_nowait(env)

    def route(self, peer: str, target: str) -> Link | None:
        if target.startswith(FRAMEWORK_PREFIX):  # the framework's own traffic: not windowed
            return None
        link = self.links.get(peer)
        return None if link is None or link.closed else link

    # -- links --------------------------------------------------------------------

    async def _link(self, peer: str) -> Link:
        if peer in self.down:
            raise AgentUnavailable(self.down[peer])
        link = self.links.get(peer)
        if link is not None and not link.closed:
            return link
        dial = self._dials.get(peer)
        if dial is None:
            dial = self._dials[peer] = asyncio.ensure_future(self._dial(peer))
            dial.add_done_callback(lambda _t: self._dials.pop(peer, None))
        return await asyncio.shield(dial)

    async def _warm(self, peer: str) -> None:
        try:
            await self._link(peer)
        except Exception as exc:
            log.info("could not connect to node %s: %s", peer, exc)

    async def dial_address(self, address: str) -> str:
        """Connect to the node listening at ``address``; returns its node id."""
        link = await self._dial(None, address)
        return link.peer

    async def _dial(self, peer: str | None, address: str | None = None) -> Link:
        if address is None:
            assert peer is not None
            address = self.peers.get(peer)
            if address is None and self.resolve is not None:
                address = await self.resolve(peer)
        if address is None:
            raise AgentUnavailable(f"node {peer} is unknown to node {self.node.id}")
        # A channel of its own (no shared subchannel): one sharing a subchannel that
        # failed a moment ago would fail at once, even once a new peer listens there.
        options = [*_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        if self.tls is None:
            channel = grpc.aio.insecure_channel(address, options=options)
        else:
            channel = grpc.aio.secure_channel(address, self.tls.channel_credentials(), options)
        self._channels.append(channel)
        call = channel.stream_stream(_CONNECT)()  # raw bytes both ways

        async def read() -> bytes | None:
            data = await call.read()
            return None if data is grpc.aio.EOF else bytes(data)

        stream = FrameStream(read, call.write)
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                peer, window = await self._dialer_handshake(stream, peer)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            call.cancel()
            who = f"node {peer} at {address}" if peer else address
            if isinstance(exc, TimeoutError):
                why = f"no answer within {_HANDSHAKE_TIMEOUT:g}s"
            else:  # gRPC's own words, not the repr of its error object
                why = f"{exc.code().name}: {exc.details()}"
            raise AgentUnavailable(f"cannot reach {who}: {said(why, 400)}") from None
        except MalformedFrame as exc:
            call.cancel()
            raise AuthError(f"{address} answered with what is no handshake: {exc}") from None
        except AuthError:
            call.cancel()
            raise
        stream.authenticated = True
        self.peers.setdefault(peer, address)
        link = self._register(peer, stream.read, stream.write, window)
        self._spawn(self._serve(link, call.cancel))
        return link

    async def _dialer_handshake(self, stream: FrameStream, peer: str | None) -> tuple[str, int]:
        nonce = new_nonce()
        await stream.write(wire_pb2.Frame(hello=wire_pb2.Hello(node_id=self.node.id, nonce=nonce)))
        frame = await stream.read()
        if frame is None or frame.WhichOneof("body") != "challenge":
            reason = said(frame.refusal.reason, 400) if frame is not None else "stream closed"
            raise AuthError(f"node {peer or 'at the address'} refused the connection: {reason}")
        challenge = frame.challenge
        if peer is not None and challenge.node_id != peer:
            raise AuthError(f"dialed node {peer} but {said(challenge.node_id)} answered")
        verify(self.token, b"listener", nonce, challenge.mac)
        _check_node_id(challenge.node_id)
        mac = prove(self.token, b"dialer", challenge.nonce)
        await stream.write(wire_pb2.Frame(proof=wire_pb2.Proof(mac=mac, window=self.window)))
        return str(challenge.node_id), int(challenge.window)

    def _register(self, peer: str, read: Any, write: Any, window: int) -> Link:
        node = self.node
        link = Link(
            peer,
            read,
            write,
            node.deliver_from_peer,
            window,
            node.bind_refs,
            node.take_from_peer,
            node.bypasses_queue,
            node.offer_tells,
            node.is_control,
            self.window,
            node.cancel_call,
        )
        link.on_malformed = functools.partial(self._malformed, link)
        self._serving.add(link)
        current = self.links.get(peer)
        if current is None or current.closed:
            self.links[peer] = link
        return link

    async def _serve(self, link: Link, cancel: Any) -> None:
        try:
            await link.run()
        except MalformedFrame:
            pass  # counted (`_malformed`) as it was found
        except Exception as exc:
            log.warning("stream with node %s failed: %s", link.peer, said(str(exc), 400))
        finally:
            cancel()
            if self.links.get(link.peer) is link:
                del self.links[link.peer]
            self._ended_link(link)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connected(self, request_iterator: Any, context: Any) -> None:
        """gRPC's handler of ``Peer.Connect``: messages are raw bytes both ways."""
        await self.accept(context)

    async def accept(self, context: Any) -> None:
        """Serve one incoming stream: handshake, then the link, until it ends."""

        async def read() -> bytes | None:
            data = await context.read()
            return None if data is grpc.aio.EOF else bytes(data)

        stream = FrameStream(read, context.write)
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                peer, window = await self._listener_handshake(stream)
        except (AuthError, MalformedFrame, TimeoutError) as exc:
            self.rejected += 1
            reason = str(exc) or "the handshake did not finish in time"
            log.warning("refused a connection: %s", reason)
            with contextlib.suppress(Exception):  # the peer may be gone already
                await stream.write(wire_pb2.Frame(refusal=wire_pb2.Refusal(reason=reason)))
            return
        stream.authenticated = True
        link = self._register(peer, stream.read, stream.write, window)
        try:
            await link.run()
        except MalformedFrame:
            pass  # counted (`_malformed`) as it was found
        finally:
            if self.links.get(peer) is link:
                del self.links[peer]
            self._ended_link(link)

    def _malformed(self, link: Link, exc: MalformedFrame) -> None:
        self.rejected += 1
        log.warning("node %s sent a malformed frame, stream ended: %s", link.peer, exc)

    async def _listener_handshake(self, stream: FrameStream) -> tuple[str, int]:
        frame = await stream.read()
        if frame is None or frame.WhichOneof("body") != "hello":
            raise AuthError("the stream did not open with a hello")
        hello = frame.hello
        nonce = new_nonce()
        mac = prove(self.token, b"listener", hello.nonce)
        challenge = wire_pb2.Challenge(
            node_id=self.node.id, nonce=nonce, mac=mac, window=self.window
        )
        await stream.write(wire_pb2.Frame(challenge=challenge))
        frame = await stream.read()
        if frame is None or frame.WhichOneof("body") != "proof":
            raise AuthError(f"node {said(hello.node_id)} did not send its proof")
        verify(self.token, b"dialer", nonce, frame.proof.mac)
        _check_node_id(hello.node_id)
        return hello.node_id, frame.proof.window


def _check_node_id(node_id: str) -> None:
    """A peer's node id is logged and shown as it is once proved: refuse one that is
    long or not printable (a newline in it would forge log lines)."""
    if not node_id or len(node_id) > _MAX_NODE_ID or not node_id.isprintable():
        raise AuthError(f"node id {said(node_id)}: empty, over {_MAX_NODE_ID} long or unprintable")

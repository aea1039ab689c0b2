"""Unauthenticated input costs a node almost nothing; bad input from anyone ends its
stream with a reason, is counted, and never harms the node.

Each test runs a real head (``agentmesh head --token ...``, an OS-chosen port on
loopback) and attacks it with a hostile client written with raw gRPC and the wire
protobufs; then a driver joins and asks an agent, to show the head serves on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import pickle
import secrets
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon
from agentmesh.v1 import wire_pb2, wire_pb2_grpc

from .agents import Counter, Gate
from .conftest import start_daemon, wait_for

pytestmark = pytest.mark.slow

TOKEN = "wire-hardening-token"
#: What gRPC accepts from a peer in one message, before the handshake or after.
MAX_MESSAGE = 64 * 1024
MAX_VALUE = 32 * 1024 * 1024
#: A packed envelope's header: correlation id, time left, target length (frames.HEADER).
HEADER_FORMAT = "<QdH"


@pytest.fixture
async def head() -> AsyncIterator[Daemon]:
    daemon = await start_daemon("head", "--listen", "127.0.0.1:0", "--token", TOKEN)
    try:
        yield daemon
    finally:
        await daemon.stop()


@asynccontextmanager
async def raw_stream(address: str) -> AsyncIterator[Any]:
    """A ``Peer.Connect`` call on a connection of its own, that sends anything."""
    options = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = wire_pb2_grpc.PeerStub(channel).Connect()
        try:
            yield call
        finally:
            call.cancel()


async def handshake(call: Any, node_id: str = "hostile") -> wire_pb2.Challenge:
    """Prove the token as a dialer does: the client is then a token holder."""
    await call.write(wire_pb2.Frame(hello=wire_pb2.Hello(node_id=node_id, nonce=_nonce())))
    frame = await call.read()
    assert frame.WhichOneof("body") == "challenge", frame
    challenge: wire_pb2.Challenge = frame.challenge
    mac = hmac.new(TOKEN.encode(), b"dialer" + challenge.nonce, hashlib.sha256).digest()
    await call.write(wire_pb2.Frame(proof=wire_pb2.Proof(mac=mac, window=64)))
    return challenge


async def send(call: Any, frame: wire_pb2.Frame) -> None:
    """Send ``frame`` as the protocol says: in pieces when larger than a message."""
    data = frame.SerializeToString()
    if len(data) <= MAX_MESSAGE:
        await call.write(frame)
        return
    step = MAX_MESSAGE - 64
    for start in range(0, len(data), step):
        piece = wire_pb2.Piece(data=data[start : start + step], last=start + step >= len(data))
        await call.write(wire_pb2.Frame(piece=piece))


async def refusal(call: Any, timeout: float = 20.0) -> str:
    """The reason of the refusal the head ends the stream with (credit and other
    frames before it are skipped); fails if the stream ends without one."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await call.read()
            assert frame is not grpc.aio.EOF, "the stream ended without a refusal"
            if frame.WhichOneof("body") == "refusal":
                reason: str = frame.refusal.reason
                return reason


def packed(target: str, body: tuple[Any, ...], corr: int = 0) -> bytes:
    """An envelope pickled alone, as `frames.pack` makes one (without its checks)."""
    name = target.encode()
    return struct.pack(HEADER_FORMAT, corr, 5.0, len(name)) + name + pickle.dumps(body)


def rss_mib(daemon: Daemon) -> float:
    """The daemon's resident memory, in MiB."""
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _nonce() -> bytes:
    return secrets.token_bytes(32)


@asynccontextmanager
async def driver(head: Daemon) -> AsyncIterator[am.Mesh]:
    async with am.Mesh(join=head.address, token=TOKEN, ask_timeout=10) as mesh:
        yield mesh


async def refused(mesh: am.Mesh) -> int:
    """Frames and handshakes the head refused, as it reports them (heartbeats)."""
    return next(n.refused for n in await mesh.nodes() if n.role == "head")


async def serves_on(head: Daemon, refusals: int) -> None:
    """The head is alive, counted ``refusals`` (at least), and answers an ask from
    another node, on a new agent."""
    assert head.process.returncode is None, head.log.decode(errors="replace")[-2000:]
    async with driver(head) as mesh:

        async def counted() -> bool:
            return await refused(mesh) >= refusals

        await wait_for(counted, timeout=10, what=f"the head counted {refusals} refusals")
        counter = await mesh.spawn(Counter, 41)
        assert await counter.add(1) == 42


async def test_before_the_handshake_a_large_message_costs_the_node_almost_nothing(
    head: Daemon,
) -> None:
    async with driver(head) as mesh:  # the head has served a node: its memory settled
        assert await (await mesh.spawn(Counter)).add(1) == 1
    before = rss_mib(head)
    hello = wire_pb2.Frame(hello=wire_pb2.Hello(node_id="x" * (50 << 20), nonce=_nonce()))
    answers: list[str] = []

    async def attack() -> None:
        async with raw_stream(head.address) as call:
            try:
                await call.write(hello)
                frame = await call.read()
            except grpc.aio.AioRpcError as exc:
                answers.append(exc.code().name)  # gRPC refused it, by its length
                return
            answers.append("EOF" if frame is grpc.aio.EOF else frame.WhichOneof("body"))

    await asyncio.gather(*(attack() for _ in range(8)))
    grown = rss_mib(head) - before
    assert "challenge" not in answers, answers  # never taken as a hello
    assert grown < 32, f"eight 50 MiB hellos grew the head by {grown:.0f} MiB"
    await serves_on(head, 8)


async def test_what_a_peer_says_is_logged_escaped_and_cut_short(head: Daemon) -> None:
    forged = "x" * 60_000 + "\nERROR forged log line"
    async with raw_stream(head.address) as call:  # an id nobody proved, then no proof
        await call.write(wire_pb2.Frame(hello=wire_pb2.Hello(node_id=forged, nonce=_nonce())))
        assert (await call.read()).WhichOneof("body") == "challenge"
        await call.done_writing()
        assert "did not send its proof" in await refusal(call)
    async with raw_stream(head.address) as call:  # a token holder's bad envelope
        await handshake(call)
        entry = packed("agent\nERROR forged log line", (5, (), None, 0, None))
        await send(call, wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickle.dumps([entry]))))
        assert "calling 5" in await refusal(call)
    await serves_on(head, 2)
    lines = head.log.decode(errors="replace").splitlines()
    assert not [line for line in lines if line.startswith("ERROR forged")]
    assert max(map(len, lines)) < 1000
    assert sum(map(len, lines)) < 20_000


async def test_a_value_over_the_limit_is_refused_on_receipt(head: Daemon) -> None:
    async with driver(head) as mesh:
        counter = await mesh.spawn(Counter)
        blob = b"x" * (MAX_VALUE + (1 << 20))  # 33 MiB
        async with raw_stream(head.address) as call:  # pickled with its envelope
            await handshake(call)
            entry = packed(counter.id, ("record", (blob,), None, 0, None), corr=1)
            await send(call, wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickle.dumps([entry]))))
            assert "over the limit" in await refusal(call)
        async with raw_stream(head.address) as call:  # a value with a codec of its own
            await handshake(call)
            value = wire_pb2.Value(codec="pickle", data=pickle.dumps(blob))
            envelope = wire_pb2.Envelope(target=counter.id, method="record", args=[value], corr=1)
            await send(call, wire_pb2.Frame(batch=wire_pb2.Batch(envelopes=[envelope])))
            assert "over the limit" in await refusal(call)
        assert await counter.items() == []
    await serves_on(head, 2)


async def test_an_envelope_whose_target_or_method_is_no_string_is_refused(
    head: Daemon,
) -> None:
    hostile = [
        [packed("sys.x", (["add"], (), None, 0, None), corr=1)],  # an ask; method a list
        [(5, "add", (), None, None)],  # a plain tell to a number
    ]
    for entries in hostile:
        async with raw_stream(head.address) as call:
            await handshake(call)
            batch = wire_pb2.Batch(pickled=pickle.dumps(entries))
            await send(call, wire_pb2.Frame(batch=batch))
            assert "an envelope to" in await refusal(call)
    await serves_on(head, 2)


async def test_a_control_message_of_the_wrong_shape_is_refused(head: Daemon) -> None:
    async with raw_stream(head.address) as call:
        await handshake(call)
        watch = packed("sys.x", ("!node.monitor", ("only one",), None, 0, None))
        await send(call, wire_pb2.Frame(batch=wire_pb2.Batch(control=[watch])))
        assert "ValueError" in await refusal(call)
    await serves_on(head, 1)


async def test_a_stream_call_with_a_bad_window_is_refused(head: Daemon) -> None:
    hostile = [
        ("count.stream", (1,), None, 0, None, None, 1 << 20),  # over the largest window
        ("count.stream", (1,), None, 0, None, None, "16"),  # not a number
        ("count.stream", (1,), None, 0, None, None, -1),
    ]
    for body in hostile:
        async with raw_stream(head.address) as call:
            await handshake(call)
            entry = packed("agent", body, corr=1)
            await send(call, wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickle.dumps([entry]))))
            assert "window" in await refusal(call)
    async with raw_stream(head.address) as call:  # a stream call that is no call (corr 0)
        await handshake(call)
        entry = packed("agent", ("count.stream", (1,), None, 0, None, None, 16))
        await send(call, wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickle.dumps([entry]))))
        assert "window" in await refusal(call)
    await serves_on(head, 4)


async def test_a_peer_that_ignores_its_credit_is_cut_off(head: Daemon) -> None:
    async with driver(head) as mesh:
        gate = await mesh.spawn(Gate, mailbox_size=1)
        await gate.wait.tell("blocker")  # the gate's mailbox stays full from now on
        async with raw_stream(head.address) as call:
            window = (await handshake(call)).window
            tells = [(gate.id, "note", ("x",), None, None)] * 1000
            pickled = pickle.dumps(tells)
            reading = asyncio.ensure_future(refusal(call, timeout=30))
            try:
                # Its tells park behind the full mailbox; the head returns the
                # stream's credit for up to twice a window of them, then holds it.
                for _ in range(3 * window // len(tells) + 2):
                    if reading.done():
                        break
                    await call.write(wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickled)))
                assert "beyond the stream's credit" in await reading
            finally:
                reading.cancel()
    await serves_on(head, 1)

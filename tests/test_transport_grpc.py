"""The gRPC transport on loopback: handshake, hostile input, batching, broken streams."""

from __future__ import annotations

import asyncio
import pickle
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import cloudpickle
import grpc
import pydantic
import pytest

import agentmesh as am
from agentmesh._private.transport.codec import decode, encode
from agentmesh._private.transport.grpc_transport import GrpcTransport, advertised_address
from agentmesh.v1 import wire_pb2, wire_pb2_grpc

from .agents import Counter, Forever, Gate
from .conftest import GrpcPair, open_grpc_pair, wait_for


class Quote(pydantic.BaseModel):
    symbol: str
    price: float


Linked = GrpcPair


@pytest.fixture
async def linked() -> AsyncIterator[Linked]:
    async with open_grpc_pair(
        tokens=("s3cret", "s3cret"), ask_timeout=5, shutdown_timeout=1
    ) as pair:
        yield pair


def _seen_from(mesh: am.Mesh, ref: am.AgentRef) -> am.AgentRef:
    with mesh._node.bind_refs():
        copy: am.AgentRef = cloudpickle.loads(cloudpickle.dumps(ref))
    return copy


async def test_asks_and_tells_cross_with_typed_values(linked: Linked) -> None:
    driver, host, _, _ = linked
    counter = _seen_from(driver, await host.spawn(Counter))
    await counter.record(Quote(symbol="X", price=1.5))
    await counter.record.tell({"plain": [1, 2]})
    assert await counter.items() == [Quote(symbol="X", price=1.5), {"plain": [1, 2]}]


def test_codecs_pick_json_protobuf_or_pickle() -> None:
    assert encode(Quote(symbol="X", price=1.0)).codec == f"json:{__name__}:Quote"
    hello = wire_pb2.Hello(node_id="n", nonce=b"x")
    assert encode(hello).codec == "proto:agentmesh.v1.Hello"
    assert encode((1, "a")).codec == "pickle"
    for value in (Quote(symbol="X", price=1.0), hello, (1, "a")):
        assert decode(encode(value)) == value
    with pytest.raises(am.SerializationError, match="lock"):
        encode(threading.Lock())
    with pytest.raises(am.SerializationError, match="unknown codec"):
        decode(wire_pb2.Value(codec="nope", data=b""))
    with pytest.raises(am.SerializationError):
        decode(wire_pb2.Value(codec="pickle", data=b"garbage"))


async def test_unpicklable_arguments_fail_at_the_sender(linked: Linked) -> None:
    driver, host, _, _ = linked
    counter = _seen_from(driver, await host.spawn(Counter))
    with pytest.raises(am.SerializationError, match="lock"):
        await counter.record(threading.Lock())
    assert await counter.get() == 0  # nothing lost, nobody crashed


async def test_an_unpicklable_tell_fails_alone_among_batched_ones(linked: Linked) -> None:
    driver, host, near, _ = linked
    counter = _seen_from(driver, await host.spawn(Counter))
    await counter.get()  # connect
    link = near.links[host.node_id]
    before = link.frames_sent
    # Queued together: plain values (pickled with their frame), others (pickled each
    # when sent) and a pydantic model (its own codec). The one that cannot travel
    # fails its own call, at once; the others arrive, in order.
    sent: list[object] = []
    for i in range(300):
        if i == 150:
            with pytest.raises(am.SerializationError, match="lock"):
                counter.record.tell_nowait(threading.Lock())
            continue
        item: object = i if i % 3 else ("tuple", i) if i % 2 else Quote(symbol="Q", price=i)
        counter.record.tell_nowait(item)
        sent.append(item)
    with pytest.raises(am.SerializationError, match="lock"):
        await counter.record.tell(threading.Lock())
    assert await counter.items() == sent
    assert link.frames_sent - before < 10  # they did share frames


async def test_tells_to_several_agents_in_one_frame_keep_their_order(linked: Linked) -> None:
    driver, host, near, _ = linked
    small = _seen_from(driver, await host.spawn(Counter, mailbox_size=3))
    roomy = _seen_from(driver, await host.spawn(Counter))
    await small.get()  # connect
    link = near.links[host.node_id]
    before = link.frames_sent
    for i in range(500):  # queued at once: a few frames, the small mailbox full often
        (small if i % 3 else roomy).record.tell_nowait(i)
    assert await small.items() == [i for i in range(500) if i % 3]
    assert await roomy.items() == [i for i in range(500) if not i % 3]
    assert link.frames_sent - before < 10


async def test_plain_tells_larger_than_reckoned_are_spread_over_frames() -> None:
    async with open_grpc_pair(window=20_000, ask_timeout=5) as (driver, host, near, _):
        sizes = _seen_from(driver, await host.spawn(Sizes, mailbox_size=20_000))
        await sizes.seen()  # connect
        link = near.links[host.node_id]
        before = link.frames_sent
        for i in range(12_000):  # 12 MB queued at once: over one frame's budget
            # Plain, but far more than a plain tell is reckoned to take (and each its
            # own object: pickle would send the same one once).
            sizes.take.tell_nowait(b"%05d" % i + b"x" * 995)
        assert await sizes.seen() == [1000] * 12_000
        assert link.frames_sent - before >= 2


async def test_a_malformed_frame_ends_the_stream_and_is_counted(linked: Linked) -> None:
    driver, host, near, far = linked
    counter = _seen_from(driver, await host.spawn(Counter))
    forever = _seen_from(driver, await host.spawn(Forever))
    assert await counter.add(1) == 1
    link = near.links[host.node_id]
    waiting = asyncio.create_task(forever.hang())
    await wait_for(lambda: bool(link.pending), what="an ask on its way")
    await link._write(wire_pb2.Frame(batch=wire_pb2.Batch(pickled=b"not a pickle")))
    await wait_for(lambda: far.rejected == 1, what="the receiver counted it")
    await wait_for(lambda: link.closed, what="the stream ended")
    with pytest.raises(am.AgentUnavailable, match="could not read a frame from this node"):
        await waiting  # the sender hears why
    assert near.rejected == 0  # a refusal is no malformed frame
    assert await counter.add(1) == 2  # a new stream; both nodes live on


async def test_a_malformed_tell_parked_behind_a_full_mailbox_ends_the_stream(
    linked: Linked,
) -> None:
    driver, host, near, far = linked
    gate = _seen_from(driver, await host.spawn(Gate, mailbox_size=1))
    instance = host._node.cells[gate.id].instance
    await gate.wait.tell("blocker")
    await wait_for(lambda: instance.running == 1, what="the gate blocked")
    await gate.note.tell("a")  # fills the mailbox
    await gate.note.tell("b")  # waits in the gate's lane on the host
    inbox = far.links[driver.node_id].inbox
    await wait_for(lambda: inbox.parked == 1, what="a tell parked")
    link = near.links[host.node_id]
    # A tuple for the gate that is no tell: parked behind "b", found out when it is due.
    await link._write(wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickle.dumps([(gate.id, 1)]))))
    await wait_for(lambda: inbox.parked == 2, what="the bad one parked")
    instance.gate.set()
    await wait_for(lambda: far.rejected == 1, what="the receiver counted it")
    await wait_for(lambda: link.closed, what="the stream ended")
    assert await gate.calls_so_far() == ["blocker", "a", "b"]  # a new stream; all live


def _refuse_to_load() -> None:
    raise RuntimeError("this value cannot be loaded here")


class Unloadable:
    """Pickles fine; unpickling it on the receiver fails."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse_to_load, ())


async def test_tells_a_receiver_cannot_decode_still_return_their_credit() -> None:
    async with open_grpc_pair(window=4, ask_timeout=5) as (driver, host, _, _):
        counter = _seen_from(driver, await host.spawn(Counter))
        with pytest.raises(am.SerializationError, match="cannot be loaded"):
            await counter.record(Unloadable())  # an ask hears why
        async with asyncio.timeout(5):
            for _ in range(3 * 4):  # three windows' worth, each dropped (and logged)
                await counter.record.tell(Unloadable())
            await counter.record.tell(1)
        assert await counter.items() == [1]


async def test_room_given_to_a_cancelled_sender_passes_to_the_next() -> None:
    async with open_grpc_pair(window=4, ask_timeout=5) as (driver, host, near, _):
        local = await host.spawn(Counter)
        counter = _seen_from(driver, local)
        assert await counter.add(0) == 0  # connect
        link = near.links[host.node_id]
        link._sent[local.id] = 4  # as if a window's worth of tells were on their way
        first = asyncio.create_task(counter.add.tell(1))
        second = asyncio.create_task(counter.add.tell(2))
        await wait_for(lambda: len(link._held.get(local.id, ())) == 2, what="both wait")
        link._grant_to(local.id, 1)  # room for one: the first sender is woken ...
        first.cancel()  # ... and cancelled before it could use it
        await asyncio.wait_for(second, 5)  # the room went to the second
        assert await counter.get() == 2
        link._grant_to(local.id, 3)  # the tells that never were


async def test_a_wrong_token_is_refused_and_counted() -> None:
    async with open_grpc_pair(tokens=("right", "wrong")) as (a, b, right, _):
        counter = _seen_from(b, await a.spawn(Counter))
        with pytest.raises(am.AuthError, match="token"):
            await counter.get()
        await wait_for(lambda: right.rejected == 1, what="the listener counted it")
        assert await _seen_from(a, counter).get() == 0  # the node lives on


async def test_hostile_input_never_crashes_a_node(linked: Linked) -> None:
    driver, host, _, far = linked
    # Raw garbage on the port.
    hostname, port = far.address.rsplit(":", 1)
    with socket.create_connection((hostname, int(port))) as raw:
        raw.sendall(b"\x00\xff garbage, not HTTP/2 \x13\x37" * 100)
    # A well-formed stream that skips the handshake.
    async with grpc.aio.insecure_channel(far.address) as channel:
        call = wire_pb2_grpc.PeerStub(channel).Connect()
        await call.write(wire_pb2.Frame(batch=wire_pb2.Batch(credit=5)))
        answer = await call.read()
        assert answer.WhichOneof("body") == "refusal"
        assert "hello" in answer.refusal.reason
    assert far.rejected >= 1
    counter = _seen_from(driver, await host.spawn(Counter))
    assert await counter.add(2) == 2  # still serving


async def test_tells_with_fields_of_the_wrong_type_are_rejected(linked: Linked) -> None:
    driver, host, near, _ = linked
    local = await host.spawn(Counter)
    counter = _seen_from(driver, local)
    assert await counter.add(1) == 1
    link = near.links[host.node_id]
    hostile = [
        (local.id, "add", 5, None, None),  # arguments that are no tuple
        (local.id, "add", (), [1], None),  # keyword arguments that are no dict
    ]
    await link._write(wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickle.dumps(hostile))))
    await wait_for(lambda: _rejected(host, local, 2), what="both rejected")
    assert await counter.add(1) == 2  # the agent carries on, on the same stream
    assert not link.closed


async def test_a_tell_whose_method_is_no_string_ends_the_stream(linked: Linked) -> None:
    driver, host, near, far = linked
    local = await host.spawn(Counter)
    counter = _seen_from(driver, local)
    assert await counter.add(1) == 1
    link = near.links[host.node_id]
    hostile = [(local.id, ["add"], (), None, None)]  # no envelope: the stream is refused
    await link._write(wire_pb2.Frame(batch=wire_pb2.Batch(pickled=pickle.dumps(hostile))))
    await wait_for(lambda: far.rejected == 1, what="the receiver counted it")
    await wait_for(lambda: link.closed, what="the stream ended")
    assert await counter.add(1) == 2  # a new stream; the agent carries on


async def _rejected(mesh: am.Mesh, ref: am.AgentRef, n: int) -> bool:
    return (await mesh.info(ref)).rejected == n


async def test_natural_batching(linked: Linked) -> None:
    driver, host, near, _ = linked
    counter = _seen_from(driver, await host.spawn(Counter))
    await counter.get()  # connect
    link = near.links[host.node_id]
    before = link.frames_sent
    await counter.add(1)  # low load: one message, one frame, at once
    assert link.frames_sent == before + 1
    before = link.frames_sent
    for _ in range(2000):
        await counter.add.tell(1)
    assert await counter.get() == 2001
    assert link.frames_sent - before < 200  # high load: many envelopes per write


async def test_a_broken_stream_fails_pending_asks_at_once_and_reconnects(
    linked: Linked,
) -> None:
    driver, host, near, _ = linked
    forever = _seen_from(driver, await host.spawn(Forever))
    assert await forever.ping() == "pong"
    hanging = asyncio.create_task(forever.hang())
    await wait_for(lambda: bool(near.links[host.node_id].pending), what="ask in flight")
    near.links[host.node_id].close("test: stream cut")
    with pytest.raises(am.AgentUnavailable, match="stream cut"):
        await asyncio.wait_for(hanging, 2)  # at once, not after the ask timeout
    await wait_for(lambda: host.node_id not in near.links, what="link forgotten")
    counter = _seen_from(driver, await host.spawn(Counter))
    assert await counter.add(1) == 1  # the next send dialed again
    assert near.links[host.node_id].closed is False


def test_no_token_means_loopback_only() -> None:
    with pytest.raises(am.AuthError, match="token"):
        GrpcTransport("0.0.0.0:0")
    GrpcTransport("127.0.0.1:0")
    GrpcTransport("0.0.0.0:0", token="t")


def test_the_address_other_nodes_dial() -> None:
    assert advertised_address("127.0.0.1:0", 7000, None) == "127.0.0.1:7000"
    assert advertised_address("0.0.0.0:0", 7000, None) == f"{socket.gethostname()}:7000"
    assert advertised_address("[::]:0", 7000, None) == f"{socket.gethostname()}:7000"
    assert advertised_address("0.0.0.0:0", 7000, "10.0.0.5") == "10.0.0.5:7000"
    assert advertised_address("0.0.0.0:0", 7000, "gw.example:9000") == "gw.example:9000"
    assert advertised_address("[::]:0", 7000, "fd00::5") == "[fd00::5]:7000"
    assert advertised_address("[::]:0", 7000, "[fd00::5]:9000") == "[fd00::5]:9000"


async def test_a_head_on_every_interface_is_reached_where_it_advertises() -> None:
    async with am.Mesh(listen="0.0.0.0:0", token="t", advertise="127.0.0.1") as head:
        assert head.address is not None
        assert head.address.startswith("127.0.0.1:")
        async with am.Mesh(join=head.address, token="t") as driver:
            nodes = {n.role: n.address for n in await driver.nodes()}
            assert nodes["head"] == head.address
            counter = await driver.spawn(Counter, node=head.node_id)
            assert await counter.add(3) == 3


def _make_certificates(folder: Path) -> am.TLS:
    """A CA and one node certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=node",
        "-keyout",
        "node.key",
        "-out",
        "node.csr",
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "node.pem",
    )
    return am.TLS(str(folder / "node.pem"), str(folder / "node.key"), str(folder / "ca.pem"))


async def test_tls_between_nodes(tmp_path: Path) -> None:
    tls = _make_certificates(tmp_path)
    async with am.Mesh(listen="127.0.0.1:0", token="t", tls=tls) as head:
        assert head.address is not None
        async with am.Mesh(join=head.address, token="t", tls=tls) as driver:
            counter = await driver.spawn(Counter, 3)
            assert counter.node == head.node_id
            assert await counter.add(1) == 4
        # A peer without TLS cannot even begin the handshake.
        with pytest.raises(am.AgentUnavailable):
            await _join_plain(head.address)


async def _join_plain(address: str) -> None:
    async with am.Mesh(join=address, token="t"):
        pass


class Sizes(am.Agent):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def take(self, blob: bytes) -> None:
        self.sizes.append(len(blob))

    async def seen(self) -> list[int]:
        return self.sizes


async def test_large_values_are_spread_over_frames(linked: Linked) -> None:
    driver, host, near, _ = linked
    sizes = _seen_from(driver, await host.spawn(Sizes))
    await sizes.seen()  # connect
    link = near.links[host.node_id]
    before = link.frames_sent
    blob = b"x" * (12 * 1024 * 1024)
    for _ in range(3):  # queued at once: together over one frame's budget
        sizes.take.tell_nowait(blob)
    assert await sizes.seen() == [len(blob)] * 3
    assert link.frames_sent - before >= 3

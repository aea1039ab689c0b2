"""A head and a driver in one process, over real gRPC on loopback: quick checks of
the cluster layer (the multi-process ones are in test_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import agentmesh as am
from agentmesh._private.cluster.directory import Directory, NodeInfo
from agentmesh._private.placement.scheduler import Scheduler
from agentmesh._private.transport.grpc_transport import DEFAULT_WINDOW
from agentmesh.v1 import wire_pb2

from .agents import Counter, Gate, Recorder
from .conftest import recorded, wait_for


class Listener(am.Agent):
    def __init__(self, recorder: am.AgentRef, label: str) -> None:
        self.recorder = recorder
        self.label = label

    @am.subscribe("news.*")
    async def on_news(self, item: int, topic: str) -> None:
        await self.recorder.log.tell((self.label, topic, item))


class Announcer(am.Agent):
    async def announce(self, n: int) -> None:
        for i in range(n):
            await self.publish("from.head.items", i)


class Caller(am.Agent):
    """Asks another agent from within a handler, with a small mailbox behind it."""

    mailbox_size = 2

    def __init__(self) -> None:
        self.answer: int | None = None
        self.notes: list[int] = []

    async def call(self, relay: am.AgentRef, back: bool = False) -> None:
        self.answer = await relay.relay(self.ref if back else None)

    async def note(self, i: int) -> None:
        self.notes.append(i)

    async def get(self) -> int:
        return 7


class Relay(am.Agent):
    """Answers with what ``source.get()`` says once its gate opens."""

    def __init__(self, source: am.AgentRef | None = None) -> None:
        self.source = source
        self.gate = asyncio.Event()

    async def relay(self, source: am.AgentRef | None = None) -> int:
        await self.gate.wait()
        answer: int = await (source or self.source).get()  # type: ignore[union-attr]
        return answer


#: A head and a driver that joined it, both meshes of this process, over gRPC.
HeadAndDriver = tuple[am.Mesh, am.Mesh]


@pytest.fixture
async def head_and_driver() -> AsyncIterator[HeadAndDriver]:
    async with am.Mesh(listen="127.0.0.1:0", ask_timeout=10) as head:
        assert head.address is not None
        async with am.Mesh(join=head.address, ask_timeout=10) as driver:
            yield head, driver


async def test_publications_cross_once_per_interested_node(head_and_driver: HeadAndDriver) -> None:
    head, driver = head_and_driver
    recorder = await head.spawn(Recorder)
    for label in "abc":  # three subscribers, all on the head
        await head.spawn(Listener, recorder, label)
    link = driver._node.transport.links[head.node_id]  # type: ignore[union-attr]
    before = link.envelopes_sent
    for i in range(10):
        await driver.publish("news.today", i)
    events = await recorded(recorder, 30)
    for label in "abc":
        assert [e[2] for e in events if e[0] == label] == list(range(10))  # in order
    assert link.envelopes_sent - before == 10  # once per node, not per subscriber
    assert await driver.publish("elsewhere", 0) == 0
    assert link.envelopes_sent - before == 10  # nobody is interested: nothing sent


async def test_a_driver_stream_hears_agents_on_other_nodes(head_and_driver: HeadAndDriver) -> None:
    head, driver = head_and_driver
    announcer = await head.spawn(Announcer)
    async with driver.subscribe("from.head.**") as stream:
        with head._node.bind_refs():
            await announcer.announce(5)
        got = [(await asyncio.wait_for(anext(stream), 5))[1] for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]


async def test_subscriptions_made_after_joining_are_live_when_spawn_returns(
    head_and_driver: HeadAndDriver,
) -> None:
    head, driver = head_and_driver
    recorder = await driver.spawn(Recorder, node=driver.node_id)
    await driver.spawn(Listener, recorder, "late", node=driver.node_id)
    assert await head.publish("news.now", 7) == 0  # no subscriber on the head itself
    assert await recorded(recorder, 1) == [("late", "news.now", 7)]


class Watcher(am.Agent):
    def __init__(self, recorder: am.AgentRef) -> None:
        self.recorder = recorder

    async def watch(self, ref: am.AgentRef) -> None:
        await self.monitor(ref)

    async def on_terminated(self, notice: am.Terminated) -> None:
        await self.recorder.log.tell((notice.ref, notice.reason, notice.restarting))


async def test_monitors_across_nodes(head_and_driver: HeadAndDriver) -> None:
    head, driver = head_and_driver
    from .agents import Counter

    recorder = await driver.spawn(Recorder, node=driver.node_id)
    watcher = await driver.spawn(Watcher, recorder, node=driver.node_id)
    flaky = await driver.spawn(Counter, node=head.node_id, restart="permanent")
    plain = await driver.spawn(Counter, node=head.node_id)
    await watcher.watch(flaky)
    await watcher.watch(plain)
    ended = asyncio.create_task(driver.wait_terminated(plain))
    await flaky.divide.tell(0)  # crashes, and is restarted
    await plain.stop()
    notice = await asyncio.wait_for(ended, 5)
    assert (notice.ref, notice.reason) == (plain, "shutdown")
    events = await recorded(recorder, 2)
    assert set(events) == {(flaky, "crash", True), (plain, "shutdown", False)}


class Slow(am.Agent):
    mailbox_size = 2

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.handled = 0

    async def work(self) -> None:
        await self.gate.wait()
        self.handled += 1

    async def count(self) -> int:
        return self.handled


async def test_the_control_plane_is_never_stuck_behind_user_traffic(
    head_and_driver: HeadAndDriver,
) -> None:
    head, driver = head_and_driver
    slow = await driver.spawn(Slow, node=head.node_id)
    gate = head._node.cells[slow.id].instance.gate  # type: ignore[union-attr]
    # More tells than the mailbox (2) and the agent's window hold: the flood stalls.
    total = DEFAULT_WINDOW + 100
    flood = asyncio.create_task(_tell_many(slow, total))
    try:
        link = driver._node.transport.links[head.node_id]  # type: ignore[union-attr]
        await wait_for(lambda: link.held_senders > 0, what="the flood held")
        async with asyncio.timeout(2):  # membership still answers at once
            roles = {n.role for n in await driver.nodes()}
        assert roles == {"head", "driver"}
    finally:
        gate.set()
    await asyncio.wait_for(flood, 30)
    assert await slow.count() == total


async def _tell_many(ref: am.AgentRef, n: int) -> None:
    for _ in range(n):
        await ref.work.tell()


async def test_names_of_supervised_children_are_cluster_wide(
    head_and_driver: HeadAndDriver,
) -> None:
    head, driver = head_and_driver
    recorder = await head.spawn(Recorder)
    spec = am.SupervisorSpec(children=[am.ChildSpec(Listener, recorder, "w", name="w1")])
    await head.spawn(am.Supervisor, spec)
    found = await driver.get("w1")
    assert found.node == head.node_id
    with pytest.raises(am.NameTaken):
        await driver.spawn(Recorder, name="w1", node=driver.node_id)


async def test_a_taken_port_is_refused() -> None:
    async with am.Mesh(listen="127.0.0.1:0") as first:
        assert first.address is not None
        with pytest.raises(RuntimeError, match="bind"):
            await _listen(first.address)


async def _listen(address: str) -> None:
    async with am.Mesh(listen=address):
        pass


async def test_a_supervisor_drives_a_child_on_another_node(head_and_driver: HeadAndDriver) -> None:
    head, driver = head_and_driver
    from .agents import Counter

    spec = am.SupervisorSpec(
        children=[am.ChildSpec(Counter, 5, name="far-child", node=head.node_id)]
    )
    sup = await driver.spawn(am.Supervisor, spec, node=driver.node_id)
    child = await driver.get("far-child")
    assert child.node == head.node_id
    assert await child.add(1) == 6
    await child.divide.tell(0)  # crashes on the head; its supervisor is on the driver
    await wait_for(lambda: _restarts_are(sup, [1]), what="restarted from afar")
    assert await child.add(1) == 6  # a fresh instance, same ref
    await sup.stop()  # stops its remote child too
    await wait_for(lambda: head_has_no(head, "far-child"), what="remote child stopped")


async def _restarts_are(sup: am.AgentRef, expected: list[int]) -> bool:
    return [c.restarts for c in await sup.children()] == expected


async def head_has_no(head: am.Mesh, name: str) -> bool:
    return name not in head._node.names


async def test_a_drivers_remote_agents_stop_with_it_unless_detached() -> None:
    from .agents import Counter

    async with am.Mesh(listen="127.0.0.1:0") as head:
        assert head.address is not None
        async with am.Mesh(join=head.address) as driver:
            await driver.spawn(Counter, name="attached")
            kept = await driver.spawn(Counter, 7, name="kept", detached=True)
            assert kept.node == head.node_id
        assert "attached" not in head._node.names  # stopped when the driver left
        assert await (await head.get("kept")).get() == 7


async def test_failure_detection_time_is_configurable() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        am.Mesh(listen="127.0.0.1:0", heartbeat=1.0, dead_after=0.5)
    async with am.Mesh(listen="127.0.0.1:0", heartbeat=0.1, dead_after=0.6) as head:
        assert head.address is not None
        async with am.Mesh(join=head.address, heartbeat=0.1) as driver:
            membership = driver._membership
            assert membership is not None
            assert membership._loop_task is not None
            membership._loop_task.cancel()  # the driver falls silent
            loop = asyncio.get_running_loop()
            silent_at = loop.time()
            await wait_for(lambda: _declared_dead(head, driver.node_id), what="declared dead")
            assert loop.time() - silent_at < 2.0


async def _declared_dead(head: am.Mesh, node_id: str) -> bool:
    return any(n.id == node_id and not n.alive for n in await head.nodes())


async def test_a_full_agent_does_not_hold_back_others_on_its_node(
    head_and_driver: HeadAndDriver,
) -> None:
    head, driver = head_and_driver
    local_gate = await head.spawn(Gate, mailbox_size=2, name="gate")
    await head.spawn(Counter, name="counter")
    gate, counter = await driver.get("gate"), await driver.get("counter")
    link = driver._node.transport.links[head.node_id]  # type: ignore[union-attr]
    instance = head._node.cells[local_gate.id].instance
    await gate.wait.tell("blocker")
    await wait_for(lambda: instance.running == 1, what="the gate blocked")
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:  # until flow control makes the driver wait, and on after
            await gate.note.tell(sent)
            sent += 1

    # The gate's mailbox (2) fills; the head parks what follows until the driver has
    # used up its window of tells to the gate: the flood waits, nothing else does.
    flooding = asyncio.create_task(flood())
    try:
        await wait_for(lambda: gate.id in link._held, what="the flood held")
        with pytest.raises(am.MailboxFull, match="full"):
            gate.note.tell_nowait("refused")
        await wait_for(lambda: _head_reports(driver, "held", DEFAULT_WINDOW), what="held")
        assert await counter.add(5) == 5  # an ask to another agent of that node
        counter.add.tell_nowait(1)  # and a tell
        assert await counter.get() == 6
        assert link.window > 0  # the gate's parked tells hold none of the stream's room
        instance.gate.set()
        held_at = sent
        await wait_for(lambda: sent > held_at + 3 * DEFAULT_WINDOW, what="the flood flowing")
    finally:
        instance.gate.set()
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
    calls = await gate.calls_so_far()
    assert calls[0] == "blocker"
    assert calls[1:] == list(range(len(calls) - 1))  # in order, none lost
    assert len(calls) > held_at + 3 * DEFAULT_WINDOW


async def test_a_call_chain_across_nodes_is_not_stuck_behind_a_full_mailbox(
    head_and_driver: HeadAndDriver,
) -> None:
    """The chain docs/cluster.md once listed as a deadlock: X on the head, its mailbox
    full of the driver's tells, asks Y on the driver, whose handler asks Z on the
    head; Z's ask travels on the stream behind X's tells, and must not wait for them."""
    head, driver = head_and_driver
    await head.spawn(Counter, 42, name="z")
    z = await driver.get("z")  # as the driver sees it (not the head's own ref)
    y = await driver.spawn(Relay, z, node=driver.node_id)
    await _call_behind_a_flood(head_and_driver, y, back=False, expected=42)


async def test_a_reentrant_call_reaches_an_agent_behind_its_full_mailbox(
    head_and_driver: HeadAndDriver,
) -> None:
    """X on the head, its mailbox and what the head parks for it full, asks Y on the
    driver, which asks X back in the same call chain: that call runs at once."""
    _, driver = head_and_driver
    y = await driver.spawn(Relay, node=driver.node_id)
    await _call_behind_a_flood(head_and_driver, y, back=True, expected=7)  # Caller.get says 7


async def _call_behind_a_flood(
    head_and_driver: HeadAndDriver, y: am.AgentRef, back: bool, expected: int
) -> None:
    """X on the head asks Y on the driver, which asks X (``back``) or its own source
    on the head once its gate opens, while the driver floods X with tells beyond its
    mailbox and window."""
    head, driver = head_and_driver
    x = await driver.spawn(Caller, node=head.node_id)
    caller = head._node.cells[x.id].instance
    relay = driver._node.cells[y.id].instance
    link = driver._node.transport.links[head.node_id]  # type: ignore[union-attr]
    await x.call.tell(y, back)
    await wait_for(lambda: y.id in _busy(driver), what="X asks Y")
    flooding = asyncio.create_task(_tell_notes(x, DEFAULT_WINDOW + 100))
    try:
        await wait_for(lambda: x.id in link._held, what="X's tells held at the driver")
        relay.gate.set()  # Y now asks, on the stream behind X's tells
        await wait_for(lambda: caller.answer == expected, what="the chain answered")
        await asyncio.wait_for(flooding, 10)
    finally:
        relay.gate.set()
        flooding.cancel()
    await wait_for(lambda: len(caller.notes) == DEFAULT_WINDOW + 100, what="every tell")
    assert caller.notes == list(range(DEFAULT_WINDOW + 100))  # in order


def _busy(mesh: am.Mesh) -> set[str]:
    """Ids of the mesh's agents running a handler now."""
    return {cell.id for cell in mesh._node.cells.values() if cell.busy()}


async def _tell_notes(ref: am.AgentRef, n: int) -> None:
    for i in range(n):
        await ref.note.tell(i)


async def test_what_a_driver_told_before_closing_is_delivered() -> None:
    async with am.Mesh(listen="127.0.0.1:0") as head:
        assert head.address is not None
        counter = await head.spawn(Counter, name="counter", mailbox_size=10)
        async with am.Mesh(join=head.address) as driver:
            far = await driver.get("counter")
            for i in range(3000):  # most still on their way when the driver closes
                await far.record.tell(i)
        await wait_for(lambda: _count(counter, 3000), what="every tell delivered")
        assert await counter.items() == list(range(3000))


async def _count(counter: am.AgentRef, n: int) -> bool:
    return len(await counter.items()) >= n


class SlowReader(am.Agent):
    """Subscribes with backpressure and reads one message at a time, once opened."""

    mailbox_size = 1

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.read: list[int] = []

    @am.subscribe("slow.news")
    async def on_news(self, item: int) -> None:
        await self.gate.wait()
        self.read.append(item)


async def test_a_slow_subscriber_holds_back_only_the_publications(
    head_and_driver: HeadAndDriver,
) -> None:
    head, driver = head_and_driver
    local = await head.spawn(SlowReader)
    reader = head._node.cells[local.id].instance
    await head.spawn(Counter, name="counter")
    counter = await driver.get("counter")
    await counter.get()  # the stream is open
    for i in range(5):  # at most one handled (stuck), one in the mailbox, the rest held
        await driver.publish("slow.news", i)
    inbox = head._node.transport.links[driver.node_id].inbox  # type: ignore[union-attr]
    await wait_for(lambda: inbox.parked >= 3, what="publications held back on the head")
    assert await counter.add(5) == 5  # the stream still carries everything else
    reader.gate.set()
    await wait_for(lambda: reader.read == [0, 1, 2, 3, 4], what="every publication, in order")


async def _head_reports(mesh: am.Mesh, field: str, value: int) -> bool:
    """Whether the head's last heartbeat (`mesh.nodes()`) says ``field == value``."""
    try:
        nodes = await mesh.nodes()
    except am.AgentUnavailable:  # asked while a stream was ending: ask again
        return False
    return any(n.role == "head" and getattr(n, field) == value for n in nodes)


async def test_the_head_reports_frames_it_refused(head_and_driver: HeadAndDriver) -> None:
    head, driver = head_and_driver
    counter = await driver.spawn(Counter, node=head.node_id)
    assert await counter.add(1) == 1
    link = driver._node.transport.links[head.node_id]  # type: ignore[union-attr]
    await link._write(wire_pb2.Frame(batch=wire_pb2.Batch(pickled=b"not a pickle")))
    await wait_for(lambda: _head_reports(driver, "refused", 1), what="one refused frame")
    assert await counter.add(1) == 2  # over a new stream


async def test_heartbeat_answers_forget_old_tombstones_but_the_head_keeps_its_verdict(
    mesh: am.Mesh,
) -> None:
    # Every heartbeat answer lists the gone nodes: only for a while, or a long-lived
    # cluster would ship thousands of ids to every node twice a second.
    directory = await mesh._node.spawn(Directory, (Scheduler(), 0.2, 1.0))
    await directory.register(NodeInfo("x", "127.0.0.1:1", "worker"), {})
    await directory.register(NodeInfo("y", "127.0.0.1:2", "worker"), {})

    async def gone_for_y() -> dict[str, str]:  # y beats at every check: it stays alive
        beat = await directory.heartbeat("y", 0, 0)
        assert beat.status == "ok"
        gone: dict[str, str] = beat.gone
        return gone

    async def listed() -> bool:
        return "x" in await gone_for_y()

    async def forgotten() -> bool:
        return "x" not in await gone_for_y()

    await wait_for(listed, what="x declared dead and listed")
    await wait_for(forgotten, what="x no longer listed after forget_after")
    # The verdict stays: x, coming back, must still fence before it rejoins.
    assert (await directory.heartbeat("x", 0, 0)).status == "dead"
    assert (await directory.register(NodeInfo("x", "127.0.0.1:1", "worker"), {})).status == "dead"

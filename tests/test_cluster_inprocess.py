"""A head and a driver in one process, over real gRPC on loopback: quick checks of
the cluster layer (the multi-process ones are in test_cluster.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import agentmesh as am
from agentmesh._private.transport.grpc_transport import DEFAULT_WINDOW

from .agents import Recorder
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


@pytest.fixture
async def pair() -> AsyncIterator[tuple[am.Mesh, am.Mesh]]:
    async with am.Mesh(listen="127.0.0.1:0", ask_timeout=10) as head:
        assert head.address is not None
        async with am.Mesh(join=head.address, ask_timeout=10) as driver:
            yield head, driver


async def test_publications_cross_once_per_interested_node(pair: tuple[am.Mesh, am.Mesh]) -> None:
    head, driver = pair
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


async def test_a_driver_stream_hears_agents_on_other_nodes(pair: tuple[am.Mesh, am.Mesh]) -> None:
    head, driver = pair
    announcer = await head.spawn(Announcer)
    async with driver.subscribe("from.head.**") as stream:
        with head._node.bind_refs():
            await announcer.announce(5)
        got = [(await asyncio.wait_for(anext(stream), 5))[1] for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]


async def test_subscriptions_made_after_joining_are_live_when_spawn_returns(
    pair: tuple[am.Mesh, am.Mesh],
) -> None:
    head, driver = pair
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


async def test_monitors_across_nodes(pair: tuple[am.Mesh, am.Mesh]) -> None:
    head, driver = pair
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
    pair: tuple[am.Mesh, am.Mesh],
) -> None:
    head, driver = pair
    slow = await driver.spawn(Slow, node=head.node_id)
    gate = head._node.cells[slow.id].instance.gate  # type: ignore[union-attr]
    # More tells than the mailbox (2) and the stream's window hold: it stalls.
    total = DEFAULT_WINDOW + 100
    flood = asyncio.create_task(_tell_many(slow, total))
    try:
        link = driver._node.transport.links[head.node_id]  # type: ignore[union-attr]
        await wait_for(lambda: bool(link._room), what="the stream to the head is full")
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


async def test_names_of_supervised_children_are_cluster_wide(pair: tuple[am.Mesh, am.Mesh]) -> None:
    head, driver = pair
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


async def test_a_supervisor_drives_a_child_on_another_node(pair: tuple[am.Mesh, am.Mesh]) -> None:
    head, driver = pair
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

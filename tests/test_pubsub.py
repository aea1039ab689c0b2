"""The pub/sub bus: subscriptions, typed payloads, dead letters, order, isolation."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import pydantic
import pytest

import agentmesh as am

from .agents import Recorder
from .conftest import recorded, wait_for


class Tick(pydantic.BaseModel):
    step: int
    price: float


class Trader(am.Agent):
    def __init__(self, recorder: am.AgentRef) -> None:
        self.recorder = recorder

    @am.subscribe("market.*.ticks")
    async def on_tick(self, tick: Tick, topic: str) -> None:
        assert isinstance(tick, Tick)
        await self.recorder.log.tell((topic, tick.step, tick.price))

    @am.subscribe("news.**")
    @am.subscribe("alerts")
    async def _on_text(self, text: str) -> None:  # a private handler works too
        await self.recorder.log.tell(("text", text))

    async def crash(self) -> None:
        raise RuntimeError("boom")


async def test_subscriptions_are_live_when_spawn_returns(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    await mesh.spawn(Trader, recorder)
    assert await mesh.publish("market.eu.ticks", Tick(step=1, price=9.5)) == 1
    assert await mesh.publish("market.eu.other", Tick(step=2, price=1.0)) == 0
    assert await mesh.publish("news", "headline") == 1
    assert await mesh.publish("news.world.today", "more") == 1
    assert await mesh.publish("alerts", "alert") == 1
    assert await recorded(recorder, 4) == [
        ("market.eu.ticks", 1, 9.5),
        ("text", "headline"),
        ("text", "more"),
        ("text", "alert"),
    ]


async def test_dicts_and_json_are_validated_into_the_annotation(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    await mesh.spawn(Trader, recorder)
    await mesh.publish("market.us.ticks", {"step": 3, "price": "2.5"})
    await mesh.publish("market.us.ticks", '{"step": 4, "price": 7}')
    assert await recorded(recorder, 2) == [("market.us.ticks", 3, 2.5), ("market.us.ticks", 4, 7.0)]


async def test_invalid_payloads_become_dead_letters(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    trader = await mesh.spawn(Trader, recorder)
    async with mesh.subscribe(am.DEAD_LETTERS) as dead:
        await mesh.publish("market.eu.ticks", {"step": "not a number"})
        topic, letter = await asyncio.wait_for(anext(dead), 5)
    assert topic == am.DEAD_LETTERS
    assert isinstance(letter, am.DeadLetter)
    assert letter.topic == "market.eu.ticks"
    assert letter.payload == {"step": "not a number"}
    assert "validation" in letter.reason
    assert letter.subscriber == trader.id
    assert mesh.bus_statistics().dead_letters == 1
    assert (await mesh.info(trader)).state == "running"  # the subscriber did not crash
    assert await recorder.all() == []  # and the handler never saw it


async def test_undeliverable_tells_become_dead_letters(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    async with mesh.subscribe(am.DEAD_LETTERS) as dead:
        await recorder.log.tell("a", "b", "c")  # bad arguments
        _, letter = await asyncio.wait_for(anext(dead), 5)
    assert letter.topic is None
    assert letter.method == "log"
    assert letter.payload == ("a", "b", "c")
    assert "log()" in letter.reason


async def test_agents_subscribe_and_unsubscribe_at_run_time(mesh: am.Mesh) -> None:
    class Listener(am.Agent):
        def __init__(self) -> None:
            self.got: list[Any] = []

        async def listen(self, pattern: str) -> None:
            await self.subscribe(pattern, self.collect)

        async def stop_listening(self, pattern: str) -> None:
            await self.unsubscribe(pattern)

        async def collect(self, item: int, topic: str) -> None:
            self.got.append((topic, item))

        async def seen(self) -> list[Any]:
            return self.got

    listener = await mesh.spawn(Listener)
    await listener.listen("jobs.*")
    await mesh.publish("jobs.a", "1")  # validated into int
    await listener.stop_listening("jobs.*")
    assert await mesh.publish("jobs.b", 2) == 0
    assert await listener.seen() == [("jobs.a", 1)]


async def test_a_driver_stream_receives_in_publish_order(mesh: am.Mesh) -> None:
    async with mesh.subscribe("sim.**") as stream:
        for i in range(50):
            await mesh.publish(f"sim.step.{i % 3}", i)
        got = [await anext(stream) for _ in range(50)]
    assert [payload for _, payload in got] == list(range(50))
    assert got[4] == ("sim.step.1", 4)
    assert await mesh.publish("sim.x", 0) == 0  # closed streams are gone


async def test_order_per_publisher_per_topic_across_agents(mesh: am.Mesh) -> None:
    class Publisher(am.Agent):
        async def run(self, n: int) -> None:
            for i in range(n):
                await self.publish("seq", (self.name, i))

    async with mesh.subscribe("seq", maxsize=500) as stream:
        pubs = [await mesh.spawn(Publisher, name=f"p{k}") for k in range(3)]
        await asyncio.gather(*(p.run(100) for p in pubs))
        got = [(await anext(stream))[1] for _ in range(300)]
    for k in range(3):
        assert [i for name, i in got if name == f"p{k}"] == list(range(100))


async def test_a_slow_subscriber_with_drop_does_not_stall_the_others(mesh: am.Mesh) -> None:
    class Slow(am.Agent):
        def __init__(self) -> None:
            self.gate = asyncio.Event()

        @am.subscribe("feed", overflow="drop")
        async def on_feed(self, item: int) -> None:
            await self.gate.wait()

    slow = await mesh.spawn(Slow, mailbox_size=5)
    async with mesh.subscribe("feed", maxsize=200) as fast:
        for i in range(100):
            await mesh.publish("feed", i)  # never waits for the slow one
        got = [(await anext(fast))[1] for _ in range(100)]
    assert got == list(range(100))
    # The slow one holds what fits in its mailbox (and in hand); the rest are dead letters.
    info = await mesh.info(slow)
    assert info.mailbox_depth == 5
    assert mesh.bus_statistics().dead_letters == 100 - info.mailbox_depth - info.running
    mesh._node.cells[slow.id].instance.gate.set()  # type: ignore[union-attr]


async def test_a_full_subscriber_with_backpressure_slows_the_publisher(mesh: am.Mesh) -> None:
    async with mesh.subscribe("feed", maxsize=2) as stream:
        await mesh.publish("feed", 1)
        await mesh.publish("feed", 2)
        third = asyncio.create_task(mesh.publish("feed", 3))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not third.done()  # waits for room rather than drop or grow
        assert (await anext(stream))[1] == 1
        await asyncio.wait_for(third, 5)
        assert [(await anext(stream))[1] for _ in range(2)] == [2, 3]
    assert mesh.bus_statistics().dead_letters == 0


async def test_decorated_subscriptions_survive_a_restart(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    trader = await mesh.spawn(Trader, recorder, restart="permanent")
    await trader.crash.tell()
    cell = mesh._node.cells[trader.id]
    await wait_for(lambda: cell.restarts == 1 and cell.state.value == "running")
    await mesh.publish("alerts", "after restart")
    assert await recorded(recorder, 1) == [("text", "after restart")]


async def test_subscriptions_end_with_the_agent(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    trader = await mesh.spawn(Trader, recorder)
    assert "alerts" in mesh.bus_statistics().patterns
    await trader.stop()
    assert await mesh.publish("alerts", "nobody") == 0
    assert "alerts" not in mesh.bus_statistics().patterns


async def test_runtime_subscriptions_end_with_the_instance(mesh: am.Mesh) -> None:
    class Once(am.Agent):
        async def on_start(self) -> None:
            if not getattr(type(self), "started", False):
                type(self).started = True  # type: ignore[attr-defined]
                await self.subscribe("once", self.handle)

        async def handle(self, item: Any) -> None:
            pass

        async def crash(self) -> None:
            raise RuntimeError("boom")

    once = await mesh.spawn(Once, restart="permanent")
    assert await mesh.publish("once", 1) == 1
    await once.crash.tell()
    cell = mesh._node.cells[once.id]
    await wait_for(lambda: cell.restarts == 1 and cell.state.value == "running")
    assert await mesh.publish("once", 2) == 0  # the new instance did not resubscribe


async def test_bad_topics_and_options_are_refused(mesh: am.Mesh) -> None:
    with pytest.raises(ValueError, match="patterns only"):
        await mesh.publish("a.*", 1)
    with pytest.raises(ValueError, match="overflow"):
        mesh.subscribe("a", overflow="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pattern"):
        am.subscribe("a..b")
    with pytest.raises(TypeError, match="async def"):
        am.subscribe("a")(lambda self, x: None)


class Texts(am.Agent):
    def __init__(self, recorder: am.AgentRef) -> None:
        self.recorder = recorder

    @am.subscribe("text.optional")
    async def optional(self, text: str | None) -> None:
        await self.recorder.log.tell(("optional", text))

    @am.subscribe("text.choice")
    async def choice(self, topic: str, pick: Literal["a", "b"]) -> None:  # topic first
        await self.recorder.log.tell((topic, pick))


async def test_text_payloads_and_parameter_order(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    await mesh.spawn(Texts, recorder)
    await mesh.publish("text.optional", "hello")  # plain text, not JSON
    await mesh.publish("text.choice", "b")
    await mesh.publish("text.choice", "c")  # refused by the Literal
    assert await recorded(recorder, 2) == [("optional", "hello"), ("text.choice", "b")]
    assert mesh.bus_statistics().dead_letters == 1


async def test_a_handler_the_bus_cannot_serve_fails_the_spawn_cleanly(mesh: am.Mesh) -> None:
    class NoPayload(am.Agent):
        @am.subscribe("x")
        async def on_x(self) -> None:
            pass

    with pytest.raises(TypeError, match="payload"):
        await mesh.spawn(NoPayload, name="np")
    with pytest.raises(am.AgentNotFound):
        await mesh.get("np")
    assert await mesh.agents() == []


async def test_a_bad_runtime_pattern_leaves_nothing_behind(mesh: am.Mesh) -> None:
    class Sloppy(am.Agent):
        async def listen(self) -> None:
            await self.subscribe("a..b", self.on)

        async def on(self, item: Any) -> None:
            pass

    sloppy = await mesh.spawn(Sloppy)
    with pytest.raises(am.RemoteError, match="ValueError"):
        await sloppy.listen()
    await sloppy.stop()
    assert mesh.bus_statistics().subscriptions == 0


async def test_a_suspended_instance_takes_its_runtime_subscriptions_along(mesh: am.Mesh) -> None:
    class Listener(am.Agent):
        async def on_start(self) -> None:
            await self.subscribe("news", self.on_news)

        async def on_news(self, item: Any) -> None:
            pass

    recorder = await mesh.spawn(Recorder)
    from .test_supervisor import Worker

    spec = am.SupervisorSpec(
        strategy="one_for_all",
        children=[am.ChildSpec(Listener, name="listener"), am.ChildSpec(Worker, "w", recorder)],
    )
    sup = await mesh.spawn(am.Supervisor, spec)
    assert await mesh.publish("news", 1) == 1
    worker = (await sup.children())[1].ref
    await worker.crash.tell()  # one_for_all: the listener is restarted too
    await wait_for(lambda: _restarted(sup), what="both restarted")
    assert await mesh.publish("news", 2) == 1  # the new instance's, not two


async def _restarted(sup: am.AgentRef) -> bool:
    return [c.restarts for c in await sup.children()] == [1, 1]


async def test_streams_end_when_the_mesh_closes() -> None:
    async with am.Mesh() as mesh:
        stream = mesh.subscribe("x")
    assert [item async for item in stream] == []


async def test_publishing_through_self_mesh_names_the_agent_as_sender(mesh: am.Mesh) -> None:
    class Speaker(am.Agent):
        async def speak(self) -> None:
            await self.mesh.publish("bad.topic", "x")

    speaker = await mesh.spawn(Speaker)

    class Picky(am.Agent):
        @am.subscribe("bad.topic")
        async def on(self, n: int) -> None:
            pass

    await mesh.spawn(Picky)
    async with mesh.subscribe(am.DEAD_LETTERS) as dead:
        await speaker.speak()
        _, letter = await asyncio.wait_for(anext(dead), 5)
    assert letter.sender == speaker.id


async def test_framework_handlers_are_not_callable(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    trader = await mesh.spawn(Trader, recorder)
    with pytest.raises(am.UnknownMethod, match="framework"):
        await trader["!_on_text"]("x")
    with pytest.raises(am.UnknownMethod) as caught:
        await trader.nope()
    assert "!" not in str(caught.value)

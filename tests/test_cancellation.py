"""Cancelling a caller cancels the handler it waits on, on every transport (`world`)."""

from __future__ import annotations

import asyncio

import cloudpickle
import pytest

import agentmesh as am

from .conftest import World, open_grpc_pair, wait_for
from .stream_agents import Worker


async def _started(world: World, ref: am.AgentRef, *labels: str) -> bool:
    started: list[str] = await world.attr(ref, "started")
    return started == list(labels)


async def _events(world: World, ref: am.AgentRef, *events: str) -> bool:
    seen: list[str] = await world.attr(ref, "events")
    return seen == list(events)


async def test_cancelling_an_ask_cancels_its_handler_and_the_agent_goes_on(
    world: World,
) -> None:
    worker = await world.spawn(Worker)
    asking = asyncio.create_task(worker.wait("a"))
    await wait_for(lambda: _started(world, worker, "a"), what="the handler running")
    queued = asyncio.create_task(worker.note("next"))  # behind it in the mailbox
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await queued
    expected = ("a cancelled", "a finally", "next")
    await wait_for(lambda: _events(world, worker, *expected), what="cancelled, then the next")
    assert (await world.info(worker)).state == "running"
    assert await worker.timed(0.01) == "timed out"  # asyncio.timeout works there as ever


async def test_cancelling_the_ask_itself_cancels_its_handler(world: World) -> None:
    worker = await world.spawn(Worker)
    asking = worker.wait("a")  # an `Ask`: a future, cancelled here directly
    await wait_for(lambda: _started(world, worker, "a"), what="the handler running")
    assert asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await wait_for(lambda: _events(world, worker, "a cancelled", "a finally"))
    await worker.note("after")
    assert await worker.log() == ["a cancelled", "a finally", "after"]


async def test_a_timeout_around_an_ask_cancels_its_handler(world: World) -> None:
    worker = await world.spawn(Worker)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await worker.wait("slow")
    await wait_for(lambda: _events(world, worker, "slow cancelled", "slow finally"))
    await worker.note("after")
    assert await worker.log() == ["slow cancelled", "slow finally", "after"]


async def test_an_ask_cancelled_before_it_started_never_runs(world: World) -> None:
    worker = await world.spawn(Worker)
    blocker = asyncio.create_task(worker.wait("blocker"))
    await wait_for(lambda: _started(world, worker, "blocker"), what="the blocker running")
    queued = asyncio.create_task(worker.wait("queued"))
    await wait_for(lambda: _queued(world, worker), what="the second ask queued")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    # Across nodes the cancel travels after the ask: wait until the callee has it.
    await wait_for(lambda: world.asks_given_up(worker), what="the queued ask given up")
    await world.open_gate(worker)
    assert await blocker == "blocker"
    await worker.note("last")
    assert await world.attr(worker, "started") == ["blocker"]
    assert await worker.log() == ["blocker finally", "last"]


async def _queued(world: World, ref: am.AgentRef) -> bool:
    return (await world.info(ref)).mailbox_depth == 1


async def test_a_handler_may_swallow_the_cancel(world: World) -> None:
    worker = await world.spawn(Worker)
    asking = asyncio.create_task(worker.stubborn("s"))
    await wait_for(lambda: _started(world, worker, "s"), what="the handler running")
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):  # the asker is cancelled whatever happens
        await asking
    await wait_for(lambda: _events(world, worker, "s ignored the cancel"))
    assert await worker.timed(0.01) == "timed out"  # the cancel was taken back
    assert (await world.info(worker)).state == "running"


async def test_only_the_cancelled_call_of_a_concurrent_agent_stops(world: World) -> None:
    worker = await world.spawn(Worker, concurrency=3)
    calls = {label: asyncio.create_task(worker.wait(label)) for label in "abc"}
    await wait_for(lambda: _running(world, worker, 3), what="three handlers running")
    calls["b"].cancel()
    await wait_for(lambda: _events(world, worker, "b cancelled", "b finally"))
    assert await world.attr(worker, "running") == 2
    await world.open_gate(worker)
    assert [await calls["a"], await calls["c"]] == ["a", "c"]
    assert calls["b"].cancelled()


async def _running(world: World, ref: am.AgentRef, count: int) -> bool:
    return bool(await world.attr(ref, "running") == count)


async def test_cancelling_a_call_cancels_the_calls_it_waits_on(world: World) -> None:
    front = await world.spawn(Worker)
    back = await world.spawn(Worker)
    asking = asyncio.create_task(front.relay(back, "r"))
    await wait_for(lambda: _started(world, back, "r"), what="the relayed call running")
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await wait_for(lambda: _events(world, back, "r cancelled", "r finally"))
    await wait_for(lambda: _events(world, front, "r relay finally"))
    assert await front.note("front") is None
    assert await back.note("back") is None


async def test_a_tell_is_not_cancelled_with_its_sender(world: World) -> None:
    worker = await world.spawn(Worker)

    async def send() -> None:
        await worker.wait.tell("told")
        await asyncio.Event().wait()  # the sender goes on waiting, then is cancelled

    sender = asyncio.create_task(send())
    await wait_for(lambda: _started(world, worker, "told"), what="the tell running")
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    await worker.note.tell("probe")  # in order behind the tell, which still runs
    assert await world.attr(worker, "events") == []
    await world.open_gate(worker)
    await wait_for(lambda: _events(world, worker, "told finally", "probe"))


async def test_a_cancel_that_arrives_after_the_reply_does_nothing() -> None:
    async with open_grpc_pair(ask_timeout=5.0) as pair:
        ref = await pair.host.spawn(Worker)
        with pair.driver._node.bind_refs():
            worker: am.AgentRef = cloudpickle.loads(cloudpickle.dumps(ref))
        await worker.note("one")
        link = pair.near.links[pair.host.node_id]
        answered = next(link._corr)  # every call made so far is answered
        link._cancels.extend(range(1, answered))
        link._wake.set()
        await worker.note("two")  # sent after the cancels, which the host has then
        worker_here = pair.host._node.cells[ref.id].instance
        running = asyncio.create_task(worker.wait("w"))
        await wait_for(lambda: worker_here.started == ["w"], what="the handler running")
        worker_here.gate.set()
        assert await running == "w"
        assert await worker.log() == ["one", "two", "w finally"]

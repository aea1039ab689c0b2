"""Streaming calls (``ref.method.stream``) on every transport (`world` fixture), and a
stream whose node dies."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon

from .conftest import World, start_daemon, wait_for
from .stream_agents import Echoer, Reader, Writer

ROOT = Path(__file__).resolve().parent.parent


async def _take(stream: am.Stream[Any], into: list[Any]) -> None:
    """Take the items of ``stream`` into ``into``, which keeps them if it raises."""
    while True:
        try:
            item = await anext(stream)
        except StopAsyncIteration:
            return
        into.append(item)


async def _settle(world: World, ref: am.AgentRef) -> None:
    """Give a producer that should be waiting every chance to run on: loop turns here,
    then round trips to its agent (which must take calls beside the stream)."""
    for _ in range(20):
        await asyncio.sleep(0)
    for _ in range(5):
        await ref.status()


async def _ended(world: World, ref: am.AgentRef, *events: str) -> bool:
    seen: list[str] = await world.attr(ref, "events")
    return seen == list(events)


async def test_items_arrive_in_order(world: World) -> None:
    writer = await world.spawn(Writer)
    items = [item async for item in writer.count.stream(300, window=4)]
    assert items == [f"t{i}" for i in range(300)]
    assert [item async for item in writer.count.stream(3, prefix="x")] == ["x0", "x1", "x2"]
    assert [item async for item in writer.count.stream(0)] == []


async def test_awaiting_a_streaming_method_says_to_stream_it(world: World) -> None:
    writer = await world.spawn(Writer)
    with pytest.raises(am.StreamMismatch, match=r"async for item in ref\.count\.stream"):
        await writer.count(3)
    await writer.count.tell(3)  # a tell is refused the same way, to the dead letters
    await wait_for(lambda: _rejected(world, writer, 2), what="two refused calls")
    assert await writer.status() == 0  # never ran
    assert (await world.info(writer)).state == "running"


async def _rejected(world: World, ref: am.AgentRef, count: int) -> bool:
    rejected: int = await world.cell_value(ref, "rejected")
    return rejected == count


async def test_streaming_a_plain_method_is_refused_before_it_runs(world: World) -> None:
    writer = await world.spawn(Writer)
    with pytest.raises(am.StreamMismatch, match=r"await ref\.plain\(\.\.\.\)"):
        async for _ in writer.plain.stream():
            pass
    with pytest.raises(am.UnknownMethod, match="no public async method 'nosuch'"):
        async for _ in writer["nosuch"].stream():
            pass
    with pytest.raises(am.BadArguments, match="count"):
        async for _ in writer.count.stream(1, 2, 3):
            pass
    assert await world.attr(writer, "plain_calls") == 0
    assert await writer.plain() == "plain"


async def test_the_arguments_of_a_stream_call_are_validated(world: World) -> None:
    echoer = await world.spawn(Echoer)
    assert [x async for x in echoer.echo.stream({"text": "hi", "repeat": 2})] == ["hi", "hi"]
    with pytest.raises(am.BadArguments, match=r"argument 'prompt' of Echoer\.echo"):
        async for _ in echoer.echo.stream({"repeat": 2}):
            pass


async def test_a_slow_consumer_holds_the_producer_to_its_window(world: World) -> None:
    writer = await world.spawn(Writer, concurrency=2)  # answers status beside the stream
    stream = writer.forever.stream(window=4)
    taken = [await anext(stream), await anext(stream)]
    # The producer runs ahead by the window, and no further, until more is taken.
    await wait_for(lambda: _yielded(world, writer, 2 + 4), what="the window filled")
    await _settle(world, writer)
    assert await writer.status() == 2 + 4
    taken += [await anext(stream) for _ in range(4)]
    await wait_for(lambda: _yielded(world, writer, 6 + 4), what="the window filled again")
    await _settle(world, writer)
    assert await writer.status() == 6 + 4
    assert taken == list(range(6))
    await stream.aclose()


async def _yielded(world: World, ref: am.AgentRef, count: int) -> bool:
    return bool(await world.attr(ref, "yielded") == count)


@pytest.mark.parametrize("how", ["aclose", "async with", "break", "cancel"])
async def test_a_consumer_that_leaves_stops_the_producer_at_its_yield(
    world: World, how: str
) -> None:
    writer = await world.spawn(Writer)
    if how == "aclose":
        stream = writer.forever.stream(window=4)
        assert await anext(stream) == 0
        await stream.aclose()
        await stream.aclose()  # twice: nothing more
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    elif how == "async with":
        async with writer.forever.stream() as stream:
            assert await anext(stream) == 0
    elif how == "break":
        async for item in writer.forever.stream():
            if item == 3:
                break
    else:
        taken: list[int] = []

        task = asyncio.create_task(_take(writer.forever.stream(window=2), taken))
        await wait_for(lambda: len(taken) > 2, what="items taken")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ended = ("closed at yield", "finally")
    await wait_for(lambda: _ended(world, writer, *ended), what="the generator closed")
    # The agent goes on: its stream turn is over.
    assert [item async for item in writer.count.stream(2)] == ["t0", "t1"]


async def test_a_consumer_that_leaves_cancels_the_producer_at_its_await(world: World) -> None:
    writer = await world.spawn(Writer)
    stream = writer.stalled.stream()
    assert await anext(stream) == "first"
    await wait_for(lambda: _yielded(world, writer, 1), what="the producer waiting at the gate")
    await stream.aclose()
    ended = ("cancelled at await", "finally")
    await wait_for(lambda: _ended(world, writer, *ended), what="the generator cancelled")
    assert await writer.status() == 1
    assert (await world.info(writer)).state == "running"


async def test_an_item_timeout_ends_the_stream_and_stops_the_producer(world: World) -> None:
    writer = await world.spawn(Writer)
    stream = writer.stalled.stream(item_timeout=0.2)
    assert await anext(stream) == "first"
    with pytest.raises(am.AskTimeout, match=r"stalled\(\) gave no item within 0\.2s") as caught:
        await anext(stream)
    assert isinstance(caught.value, TimeoutError)
    ended = ("cancelled at await", "finally")
    await wait_for(lambda: _ended(world, writer, *ended), what="the generator cancelled")
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_stream_queued_past_its_item_timeout_never_runs(world: World) -> None:
    writer = await world.spawn(Writer)
    busy = writer.stalled.stream()
    assert await anext(busy) == "first"  # the serial agent's turn: it waits at its gate
    with pytest.raises(am.AskTimeout):
        async for _ in writer.count.stream(3, item_timeout=0.05):
            pass
    # Across nodes the callee learns it (its own deadline, or the consumer's cancel)
    # a little later: wait until it, too, sees the queued call as given up.
    await wait_for(lambda: world.asks_given_up(writer), what="the queued stream call given up")
    await world.open_gate(writer)
    assert [item async for item in busy] == ["second"]
    assert await writer.status() == 2  # count() never ran: it yielded nothing


async def test_an_error_of_the_producer_ends_the_stream_after_its_items(world: World) -> None:
    writer = await world.spawn(Writer, name="w")
    got: list[int] = []
    with pytest.raises(am.RemoteError) as caught:
        await _take(writer.then_fail.stream(3), got)
    assert got == [0, 1, 2]
    assert caught.value.remote_type == "ValueError"
    assert caught.value.remote_message == "failed after 3"
    assert "in then_fail" in caught.value.remote_traceback
    assert (await world.info(writer)).state == "running"  # an ask's error, not a crash


@pytest.mark.worlds("memory", "grpc", "process")  # within a node items are not encoded
async def test_an_item_that_cannot_travel_ends_the_stream(world: World) -> None:
    writer = await world.spawn(Writer)
    got: list[int] = []
    with pytest.raises(am.SerializationError, match="lock"):
        await _take(writer.unsendable.stream(), got)
    assert got == [1]
    await wait_for(lambda: _ended(world, writer, "finally"), what="the generator closed")


async def test_a_stream_ends_with_agent_unavailable_when_its_agent_stops(world: World) -> None:
    writer = await world.spawn(Writer)
    stream = writer.stalled.stream()
    assert await anext(stream) == "first"
    stopping = asyncio.create_task(writer.stop(timeout=0.05))  # its turn never ends: cancelled
    with pytest.raises(am.AgentUnavailable):
        await anext(stream)
    await stopping


async def test_a_serial_agent_runs_a_stream_as_one_turn(world: World) -> None:
    writer = await world.spawn(Writer)
    stream = writer.stalled.stream()
    assert await anext(stream) == "first"
    status = asyncio.create_task(writer.status())
    await wait_for(lambda: _queued(world, writer, 1), what="the ask queued behind the stream")
    assert not status.done()
    await world.open_gate(writer)
    assert await anext(stream) == "second"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert await status == 2


async def _queued(world: World, ref: am.AgentRef, count: int) -> bool:
    return (await world.info(ref)).mailbox_depth == count


async def test_with_concurrency_a_stream_runs_beside_other_calls(world: World) -> None:
    writer = await world.spawn(Writer, concurrency=2)
    stream = writer.stalled.stream()
    assert await anext(stream) == "first"
    assert await writer.status() == 1  # answered while the stream waits at its gate
    await world.open_gate(writer)
    assert [item async for item in stream] == ["second"]


async def test_a_producer_may_call_its_consuming_agent_back(world: World) -> None:
    writer = await world.spawn(Writer)
    reader = await world.spawn(Reader)
    assert await reader.collect(writer, 5) == [f"leaf{i}" for i in range(5)]


async def test_stream_options_are_checked(mesh: am.Mesh) -> None:
    writer = await mesh.spawn(Writer)
    for window in (0, -1, 65537, 2.0):
        with pytest.raises(ValueError, match="window"):
            writer.count.stream(1, window=window)
    with pytest.raises(ValueError, match="item_timeout"):
        writer.count.stream(1, item_timeout=0)
    stream = writer.count.stream(2, window=65536)
    assert stream.window == 65536
    assert "new" in repr(stream)
    assert [item async for item in stream] == ["t0", "t1"]
    assert "ended" in repr(stream)


async def test_a_stream_not_iterated_sends_nothing(mesh: am.Mesh) -> None:
    writer = await mesh.spawn(Writer)
    stream = writer.forever.stream()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert await writer.status() == 0


async def test_one_stream_is_iterated_by_one_task_at_a_time(mesh: am.Mesh) -> None:
    writer = await mesh.spawn(Writer)
    stream = writer.stalled.stream()
    assert await anext(stream) == "first"
    waiting = asyncio.create_task(anext(stream))
    await wait_for(lambda: stream._receiver.waiter is not None, what="a task waiting")
    with pytest.raises(RuntimeError, match="already being iterated"):
        await anext(stream)
    await writer.stop(timeout=0.05)
    with pytest.raises(am.AgentUnavailable):
        await waiting


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Daemon, Daemon]]:
    head = await start_daemon("head", "--listen", "127.0.0.1:0")
    worker = None
    try:
        worker = await start_daemon("node", "--join", head.address)
        yield head, worker
    finally:
        if worker is not None:
            await worker.stop()
        await head.stop()


@pytest.mark.slow
async def test_the_death_of_the_producers_node_ends_the_stream_at_once(
    cluster: tuple[Daemon, Daemon],
) -> None:
    head, worker = cluster
    async with am.Mesh(join=head.address, ask_timeout=60) as mesh:
        node = next(n.id for n in await mesh.nodes() if n.role == "worker")
        writer = await mesh.spawn(Writer, node=node)
        stream = writer.stalled.stream(item_timeout=60)
        assert await anext(stream) == "first"
        waiting = asyncio.create_task(anext(stream))
        await worker.kill()
        async with asyncio.timeout(10):  # well before the item timeout
            with pytest.raises(am.AgentUnavailable):
                await waiting


def _examples(section: str) -> list[str]:
    """The Python examples of a section of docs/messaging.md."""
    page = (ROOT / "docs" / "messaging.md").read_text()
    body = page.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.mark.parametrize(
    "section", ["Three ways to send", "Streaming", "Cancellation", "Call-chain reentrancy"]
)
def test_the_docs_examples_run_and_print_what_they_say(section: str) -> None:
    examples = _examples(section)
    assert examples
    for code in examples:
        if "am.run(" not in code:
            continue  # a fragment
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        # Each print's comment is a line it prints, in this order (others may come between).
        lines = iter(done.stdout.splitlines())
        for promised in re.findall(r"print\(.*\)  # (.*)", code):
            assert promised in lines, (promised, done.stdout)

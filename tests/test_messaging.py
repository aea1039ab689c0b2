"""Semantics of ask, tell and tell_nowait, on every transport (`world` fixture)."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest

import agentmesh as am

from .agents import CallsBackOnStart, Counter, FanOut, Forever, Gate, Recorder, Relay
from .conftest import World, wait_for


async def test_ask_returns_the_handlers_result(world: World) -> None:
    counter = await world.spawn(Counter, 10)
    assert await counter.add(5) == 15
    assert await counter.add.ask(1, timeout=1.0) == 16
    assert await counter.get() == 16


async def test_tells_and_asks_from_one_sender_arrive_in_order(world: World) -> None:
    counter = await world.spawn(Counter)
    expected = []
    for i in range(300):
        if i % 3 == 0:
            await counter.record(i)  # an ask
        elif i % 3 == 1:
            await counter.record.tell(i)
        else:
            counter.record.tell_nowait(i)
        expected.append(i)
    assert await counter.items() == expected


async def test_full_mailbox_backpressures_tell_and_refuses_tell_nowait(world: World) -> None:
    gate = await world.spawn(Gate, mailbox_size=2)
    await gate.wait.tell("blocker")
    await wait_for(lambda: _running(world, gate, 1), what="blocker running")
    sent: list[str] = []

    async def flood() -> None:
        for i in range(2 + world.in_flight + 5):
            await gate.note.tell(f"t{i}")
            sent.append(f"t{i}")

    flooding = asyncio.create_task(flood())
    # The mailbox (2) fills, then, across nodes, what the receiver parks for the agent
    # and the stream's window; then tell waits.
    await wait_for(lambda: world.sender_blocked(gate), what="sender waiting for room")
    assert not flooding.done()
    assert 2 <= len(sent) <= 2 + world.in_flight
    with pytest.raises(am.MailboxFull):
        gate.note.tell_nowait("refused")  # never waits, never overtakes a waiting sender
    await world.open_gate(gate)
    await asyncio.wait_for(flooding, 5)
    expected = ["blocker", *sent]
    await wait_for(lambda: _calls_are(gate, expected), what="every call handled in order")


async def _calls_are(gate: am.AgentRef, expected: list[str]) -> bool:
    return await gate.calls_so_far() == expected


async def _running(world: World, gate: am.AgentRef, count: int) -> bool:
    """Whether exactly ``count`` handlers of a `Gate` are waiting at it."""
    running: int = await world.attr(gate, "running")
    return running == count


async def test_an_ask_is_sent_when_made_and_answered_where_awaited(world: World) -> None:
    gate = await world.spawn(Gate)
    pending = gate.wait("early")  # not awaited yet: the call is on its way all the same
    assert isinstance(pending, am.Ask)
    assert isinstance(pending, asyncio.Future)
    await wait_for(lambda: _running(world, gate, 1), what="the call running, unawaited")
    await world.open_gate(gate)
    assert await pending == "early"


async def test_gathering_asks_makes_no_task_for_each(world: World) -> None:
    gate = await world.spawn(Gate)
    await gate.calls_so_far()  # (across nodes: the way there is open now)
    tasks_before = len(asyncio.all_tasks())
    # (As many as the way to another node takes without waiting: past that, a sender
    # waits for room, in a task.)
    labels = [str(i) for i in range(min(100, world.in_flight or 100) // 2)]
    gathering = asyncio.ensure_future(asyncio.gather(*(gate.wait(label) for label in labels)))
    await wait_for(lambda: _running(world, gate, 1), what="the first call running")
    # Each ask is a future gather waits on: no task each (a few may come and go, such
    # as the dispatcher's while a turn waits).
    assert len(asyncio.all_tasks()) < tasks_before + 10
    assert not gathering.done()
    await world.open_gate(gate)
    assert await asyncio.wait_for(gathering, 10) == labels


async def test_an_ask_that_cannot_be_sent_raises_where_it_is_awaited(world: World) -> None:
    counter = await world.spawn(Counter)
    await counter.stop()
    pending = counter.get()  # nothing raised here: the ask holds its error
    with pytest.raises(am.AgentUnavailable):
        await pending


async def test_an_answered_ask_is_freed_without_the_garbage_collector(mesh: am.Mesh) -> None:
    # An Ask and its envelope point at each other until it ends: then they must not,
    # or each ask would live until the collector's next full pass.
    counter = await mesh.spawn(Counter)
    gc.disable()
    try:
        answered = []
        for _ in range(20):
            ask = counter.add(1)
            answered.append(weakref.ref(ask))
            await ask
        del ask
        await asyncio.sleep(0)  # (the task that awaited the last one lets go of it)
        assert sum(ref() is not None for ref in answered) == 0
    finally:
        gc.enable()


async def test_an_ask_that_expires_while_waiting_for_room_never_runs(world: World) -> None:
    gate = await world.spawn(Gate, mailbox_size=1)
    await gate.wait.tell("blocker")
    await wait_for(lambda: _running(world, gate, 1), what="blocker running")
    for i in range(1 + world.in_flight):  # the mailbox and the way there, full
        await gate.note.tell(f"t{i}")
    late = gate.note.ask("late", timeout=0.2)  # sent now: it waits for room
    with pytest.raises(am.AskTimeout):
        await late
    # It no longer waits for room either (nor takes the room a later sender gets).
    await wait_for(lambda: not world.sender_blocked(gate), what="the late ask gone")
    await world.open_gate(gate)
    expected = ["blocker", *(f"t{i}" for i in range(1 + world.in_flight))]
    await wait_for(lambda: _calls_are(gate, expected), what="all but the late one handled")
    await gate.note("after")  # (had the late one run, it would show before this)
    assert await gate.calls_so_far() == [*expected, "after"]


async def test_ask_timeout_per_call(world: World) -> None:
    forever = await world.spawn(Forever)
    with pytest.raises(am.AskTimeout) as caught:
        await forever.hang.ask(timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert "hang()" in str(caught.value)
    assert "0.05s" in str(caught.value)
    await forever.stop(timeout=0.01)  # its handler still runs: an ask timeout cancels nothing


async def test_ask_timeout_default_from_the_mesh() -> None:
    async with am.Mesh(ask_timeout=0.05, shutdown_timeout=0.5) as mesh:
        forever = await mesh.spawn(Forever)
        with pytest.raises(am.AskTimeout, match=r"within 0\.05s"):
            await forever.hang()


class Impatient(am.Agent):
    async def ask_hang(self, target: am.AgentRef, timeout: float | None) -> str:
        try:
            if timeout is None:
                await target.hang()
            else:
                await target.hang.ask(timeout=timeout)
        except am.AskTimeout as exc:
            return str(exc)
        return "answered"


async def test_an_ask_timeout_names_whom_and_who_asked() -> None:
    async with am.Mesh(ask_timeout=0.05, shutdown_timeout=0.5) as mesh:
        forever = await mesh.spawn(Forever, name="sleeper")
        asker = await mesh.spawn(Impatient, name="curious")
        # the mesh's timeout (one timer serves all such asks), and one of the ask's own
        for timeout, seconds in ((None, "0.05s"), (0.03, "0.03s")):
            message = await asker.ask_hang.ask(forever, timeout, timeout=5)
            assert f"ask sleeper.hang() got no reply within {seconds}" in message
            assert "(asked by agent 'curious')" in message


async def test_an_ask_that_timed_out_before_starting_never_runs(world: World) -> None:
    gate = await world.spawn(Gate)
    blocked = asyncio.create_task(gate.wait("blocker"))
    await wait_for(lambda: _running(world, gate, 1), what="blocker running")
    with pytest.raises(am.AskTimeout):
        await gate.note.ask("too late", timeout=0.05)
    # Across nodes the callee measures the deadline itself (transit included): wait
    # until it, too, sees the queued ask as given up.
    await wait_for(lambda: world.asks_given_up(gate), what="the queued ask given up")
    await world.open_gate(gate)
    assert await blocked == "blocker"
    assert await gate.calls_so_far() == ["blocker"]


async def test_exception_in_ask_handler_reaches_the_caller(world: World) -> None:
    counter = await world.spawn(Counter, 3, name="calc")
    with pytest.raises(am.RemoteError) as caught:
        await counter.fail("no luck")
    err = caught.value
    assert err.remote_type == "ValueError"
    assert err.remote_message == "no luck"
    assert "in fail" in err.remote_traceback
    assert err.agent == "calc"
    with pytest.raises(am.RemoteError) as zero:
        await counter.divide(0)
    assert zero.value.remote_type == "ZeroDivisionError"
    assert await counter.add(1) == 4  # the agent carries on
    assert (await world.info(counter)).state == "running"


@pytest.mark.parametrize("method", ["nosuch", "_secret", "not_async", "on_start", "on_stop"])
async def test_uncallable_methods_give_a_clear_error(world: World, method: str) -> None:
    counter = await world.spawn(Counter)
    with pytest.raises(am.UnknownMethod) as caught:
        await counter[method]()
    assert "Counter" in str(caught.value)
    assert await counter.add(1) == 1


async def test_private_method_error_says_private(world: World) -> None:
    counter = await world.spawn(Counter)
    with pytest.raises(am.UnknownMethod, match="private"):
        await counter._secret()


async def test_wrong_arguments_give_a_clear_error_and_the_agent_carries_on(world: World) -> None:
    counter = await world.spawn(Counter)
    with pytest.raises(am.BadArguments, match="add"):
        await counter.add(1, 2, 3)
    with pytest.raises(am.BadArguments):
        await counter.add(nope=1)
    await counter.add.tell("x", "y")  # a bad tell: refused, logged, counted; no crash
    await wait_for(lambda: _rejected(world, counter, 3), what="three rejected calls")
    assert await counter.add(2) == 2
    assert (await world.info(counter)).state == "running"


async def _rejected(world: World, ref: am.AgentRef, count: int) -> bool:
    rejected: int = await world.cell_value(ref, "rejected")
    return rejected == count


async def test_exception_in_tell_handler_crashes_the_agent(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    counter = await world.spawn(Counter, 1, name="fragile")
    with caplog.at_level(logging.ERROR, logger="agentmesh.agent"):
        await counter.divide.tell(0)
        await wait_for(lambda: _state_is(world, counter, "crashed"), what="agent crashed")
    if world.kind != "process":  # there, the crash is logged in the other process
        assert any("fragile crashed" in r.getMessage() for r in caplog.records)
    info = await world.info(counter)
    assert info.crashes == 1
    assert info.last_error is not None
    assert info.last_error.startswith("ZeroDivisionError")
    with pytest.raises(am.AgentUnavailable, match="crashed"):
        await counter.get()


async def _state_is(world: World, ref: am.AgentRef, state: str) -> bool:
    return bool(await world.cell_value(ref, "state") == state)


async def _settle(world: World) -> None:
    """Give a handler that should not start every chance to start."""
    for _ in range(20):
        await asyncio.sleep(0)
    if world.probe is not None:
        for _ in range(5):  # a few round trips: the far node's loop turns too
            await world.probe.track(world.probe.id)


async def test_concurrency_limit_bounds_interleaved_handlers(world: World) -> None:
    gate = await world.spawn(Gate, concurrency=3)
    calls = [asyncio.create_task(gate.wait(str(i))) for i in range(7)]
    await wait_for(lambda: _running(world, gate, 3), what="three handlers running")
    await _settle(world)
    assert await world.attr(gate, "running") == 3
    await world.open_gate(gate)
    assert sorted(await asyncio.gather(*calls)) == [str(i) for i in range(7)]
    assert await world.attr(gate, "peak") == 3


async def test_one_message_at_a_time_by_default(world: World) -> None:
    gate = await world.spawn(Gate)
    calls = [asyncio.create_task(gate.wait(str(i))) for i in range(3)]
    await wait_for(lambda: _running(world, gate, 1), what="first handler running")
    await _settle(world)
    assert await world.attr(gate, "running") == 1
    await world.open_gate(gate)
    await asyncio.gather(*calls)
    assert await world.attr(gate, "peak") == 1


async def test_call_chain_reentrancy(world: World) -> None:
    a = await world.spawn(Relay)
    b = await world.spawn(Relay)
    # a asks b, b asks a back inside the same request, and so on: no deadlock.
    assert await a.ask_back(b, 1) == 1
    assert await a.ask_back(b, 2) == 2
    assert await a.ask_back(b, 9) == 9


async def test_reentrancy_through_tasks_a_handler_spawns(world: World) -> None:
    a = await world.spawn(Relay)
    others = [await world.spawn(Relay) for _ in range(3)]
    assert await a.fan_back(others) == ["leaf"] * 3


async def test_self_ask_is_reentrant(world: World) -> None:
    relay = await world.spawn(Relay)
    me = await relay.me()
    assert me == relay
    assert await relay.call(me, "cycle_leaf") == "leaf"


async def _deadlock(world: World) -> tuple[am.AgentRef, am.AgentRef, am.AgentRef]:
    """alpha and beta each handle a request that waits at a gate, then asks the other."""
    a = await world.spawn(Relay, name="alpha")
    b = await world.spawn(Relay, name="beta")
    gate = await world.spawn(Gate, concurrency=2)
    return a, b, gate


async def test_wait_cycle_between_independent_requests_times_out(world: World) -> None:
    a, b, gate = await _deadlock(world)
    ask_a = asyncio.create_task(a.cycle.ask(gate, b, 0.3, timeout=0.2))
    ask_b = asyncio.create_task(b.cycle.ask(gate, a, 0.3, timeout=0.2))
    await wait_for(lambda: _running(world, gate, 2), what="both at the gate")
    await world.open_gate(gate)
    results = await asyncio.gather(ask_a, ask_b, return_exceptions=True)
    assert all(isinstance(r, am.AskTimeout) for r in results), results
    # The inner asks time out too, and both agents are free again afterwards.
    assert await a.cycle_leaf() == "leaf"
    assert await b.cycle_leaf() == "leaf"


async def test_wait_cycle_is_named_in_the_timeout(mesh: am.Mesh) -> None:
    world = World("local", mesh, mesh)
    a, b, gate = await _deadlock(world)
    ask_a = asyncio.create_task(a.cycle.ask(gate, b, 0.5, timeout=0.2))
    ask_b = asyncio.create_task(b.cycle.ask(gate, a, 0.5, timeout=0.2))
    await wait_for(lambda: _running(world, gate, 2), what="both at the gate")
    await world.open_gate(gate)
    with pytest.raises(am.AskTimeout) as caught:
        await ask_a
    message = str(caught.value)
    assert "alpha.cycle()" in message
    assert "wait cycle: alpha (in cycle()) -> beta (in cycle()) -> alpha" in message
    with pytest.raises(am.AskTimeout):
        await ask_b


async def test_refs_inside_messages_reach_their_agent(world: World) -> None:
    relay = await world.spawn(Relay)
    counter = await world.spawn(Counter, 7)
    assert await relay.call(counter, "add", 3) == 10
    returned = await relay.me()
    assert returned == relay
    assert await returned.call(counter, "get") == 10


async def test_stop_handles_queued_messages_then_refuses_new_ones(world: World) -> None:
    recorder = await world.spawn(Recorder)
    from .agents import Stoppable

    worker = await world.spawn(Stoppable, recorder, "w")
    for _ in range(5):
        await worker.work.tell()
    await worker.stop()
    assert await recorder.all() == [("w", 5)]
    with pytest.raises(am.AgentUnavailable):
        await worker.work()
    if world.kind != "local":
        # A tell across nodes is not answered: the stopped agent's node dead-letters it.
        before = await world.dead_letters()
        await worker.work.tell()
        await wait_for(lambda: _dead_letters(world, before + 1), what="a dead letter")
    else:
        with pytest.raises(am.AgentUnavailable):
            await worker.work.tell()
    await worker.stop()  # stopping twice is harmless


async def _dead_letters(world: World, count: int) -> bool:
    return await world.dead_letters() == count


async def test_stop_cancels_a_stuck_handler_after_the_timeout(world: World) -> None:
    forever = await world.spawn(Forever)
    stuck = asyncio.create_task(forever.hang())
    await wait_for(lambda: world.busy(forever), what="hanging")
    async with asyncio.timeout(3):
        await forever.stop(timeout=0.05)
    with pytest.raises(am.AgentUnavailable):
        await stuck
    with pytest.raises(am.AgentUnavailable):
        await forever.ping()


async def test_agent_can_stop_itself(world: World) -> None:
    recorder = await world.spawn(Recorder)
    from .agents import Stoppable

    worker = await world.spawn(Stoppable, recorder, "self")
    assert await worker.stop_self() == "stopping"
    await wait_for(recorder.all, what="on_stop reported")
    assert await recorder.all() == [("self", 0)]
    with pytest.raises(am.AgentUnavailable):
        await worker.work()


async def test_calls_of_one_chain_that_arrive_independently_still_take_turns(
    world: World,
) -> None:
    gate = await world.spawn(Gate)
    fan = await world.spawn(FanOut)
    call = asyncio.create_task(fan.fan(gate))
    await wait_for(lambda: _running(world, gate, 1), what="first call running")
    await _settle(world)
    assert await world.attr(gate, "running") == 1  # the chain's second call waits its turn
    await world.open_gate(gate)
    assert await call == ["one", "two"]
    assert await world.attr(gate, "peak") == 1


async def test_on_start_can_be_called_back(world: World) -> None:
    relay = await world.spawn(Relay)
    agent = await world.spawn(CallsBackOnStart, relay)
    assert await agent.result() == "pong"


async def test_handled_counts_each_handler_that_ran(world: World) -> None:
    counter = await world.spawn(Counter)
    for _ in range(5):
        await counter.add.tell(1)
    await counter.add.tell("a", "b")  # rejected: does not count as handled
    assert await counter.get() == 5
    info = await world.info(counter)
    assert (info.handled, info.rejected) == (6, 1)  # five adds and the get

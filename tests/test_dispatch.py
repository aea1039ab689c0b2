"""The dispatcher: turns without a task per wake, and what handlers may rely on.

A handler that suspends keeps one task from its start to its end (asyncio.timeout,
current_task, TaskGroup); agents' context variables are their own; one busy agent
neither starves the others nor the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

import pytest

import agentmesh as am
from agentmesh._private.kernel.answers import PENDING, Answers

from .conftest import wait_for

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Patient(am.Agent):
    """Handlers that suspend in the ways asyncio code does."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def times_out(self, seconds: float) -> str:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "never"

    async def same_task(self) -> bool:
        before = asyncio.current_task()
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return asyncio.current_task() is before

    async def group(self) -> str:
        async def fail() -> None:
            await asyncio.sleep(0)
            raise ValueError("child failed")

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fail())
                tg.create_task(asyncio.Event().wait())
        except ExceptionGroup as eg:
            return f"group failed: {eg.exceptions[0]}"
        return "never"

    async def wait_gate(self, _: object = None) -> str:
        await self.gate.wait()
        return "through"

    async def open_gate(self) -> None:
        self.gate.set()

    async def echo(self, x: int) -> int:
        return x


class Tagged(am.Agent):
    """Sets a context variable in one turn and reads it in the next."""

    async def set(self, value: str) -> None:
        request_id.set(value)

    async def get(self) -> str:
        return request_id.get()

    async def get_in_task(self) -> str:
        return await asyncio.create_task(self.get())


class Busy(am.Agent):
    def __init__(self) -> None:
        self.handled = 0

    async def work(self) -> None:
        self.handled += 1

    async def count(self) -> int:
        return self.handled


class TaskCounter(am.Agent):
    """Records how many tasks the loop has while it handles a message."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    async def look(self) -> None:
        self.seen.append(len(asyncio.all_tasks()))


async def test_timeout_in_a_handler_cancels_only_that_handler(mesh: am.Mesh) -> None:
    patient = await mesh.spawn(Patient)
    other = await mesh.spawn(Patient)
    waiting = asyncio.ensure_future(patient.times_out(0.05))
    # While the handler waits, other agents (and this one's queue) keep moving.
    assert await other.echo(7) == 7
    assert await waiting == "timed out"
    assert await patient.echo(8) == 8


async def test_a_handler_keeps_one_task_across_suspensions(mesh: am.Mesh) -> None:
    patient = await mesh.spawn(Patient)
    assert all(await asyncio.gather(*(patient.same_task() for _ in range(5))))


async def test_task_group_in_a_handler(mesh: am.Mesh) -> None:
    patient = await mesh.spawn(Patient)
    assert await patient.group() == "group failed: child failed"
    assert await patient.echo(1) == 1


async def test_a_suspended_turn_blocks_only_its_own_agent(mesh: am.Mesh) -> None:
    waiting = await mesh.spawn(Patient)
    others = [await mesh.spawn(Patient) for _ in range(20)]
    first = asyncio.ensure_future(waiting.wait_gate())
    queued = asyncio.ensure_future(waiting.echo(5))  # behind the suspended turn
    assert await asyncio.gather(*(o.echo(i) for i, o in enumerate(others))) == list(range(20))
    assert not queued.done()
    await waiting.open_gate.tell()  # a tell queues behind too: it cannot open the gate
    assert not first.done()
    waiting_cell = waiting._cell
    assert waiting_cell is not None
    waiting_cell.instance.gate.set()  # type: ignore[union-attr]
    assert await first == "through"
    assert await queued == 5


async def test_context_variables_are_each_agents_own(mesh: am.Mesh) -> None:
    a = await mesh.spawn(Tagged)
    b = await mesh.spawn(Tagged)
    request_id.set("driver")
    await a.set("a")
    await b.set("b")
    assert (await a.get(), await b.get()) == ("a", "b")
    assert await a.get_in_task() == "a"  # tasks a handler starts inherit its context
    assert request_id.get() == "driver"  # nothing leaks back to the driver
    c = await mesh.spawn(Tagged)
    assert await c.get() == "-"


async def test_a_flooded_agent_does_not_starve_the_others(mesh: am.Mesh) -> None:
    busy = await mesh.spawn(Busy, mailbox_size=20_000)
    quick = await mesh.spawn(Busy)
    for _ in range(10_000):
        busy.work.tell_nowait()
    loop_ran: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cell = busy._cell
    assert cell is not None
    asyncio.get_running_loop().call_soon(lambda: loop_ran.set_result(cell.handled))
    await quick.work()
    # The other agent, and the event loop's own callbacks, got their turns long
    # before the flooded agent was through its 10,000 messages.
    assert cell.handled < 10_000
    assert await loop_ran < 10_000
    await wait_for(lambda: cell.handled == 10_000, what="the flood handled")
    assert await busy.count() == 10_000


async def test_messages_to_idle_agents_start_no_task(mesh: am.Mesh) -> None:
    seen: list[int] = []
    agents = [await mesh.spawn(TaskCounter, seen) for _ in range(200)]
    baseline = len(asyncio.all_tasks())
    for agent in agents:
        await agent.look.tell()
    await wait_for(lambda: len(seen) == 200, what="every agent looked")
    # One dispatcher task serves them all (a task per idle agent would be 200 more).
    assert max(seen) <= baseline + 2


@pytest.mark.parametrize("seconds", [0.0, 0.01])
async def test_a_crash_while_suspended_restarts_cleanly(mesh: am.Mesh, seconds: float) -> None:
    class Fragile(am.Agent):
        async def fail_later(self) -> None:
            await asyncio.sleep(seconds)
            raise RuntimeError("boom")

        async def echo(self, x: int) -> int:
            return x

    spec = am.SupervisorSpec(children=[am.ChildSpec(Fragile, name="fragile")])
    sup = await mesh.spawn(am.Supervisor, spec)
    fragile = await mesh.get("fragile")
    await fragile.fail_later.tell()

    async def restarted() -> bool:
        return (await mesh.info(fragile)).restarts == 1

    await wait_for(restarted, what="the restart")
    assert await fragile.echo(3) == 3
    await sup.stop()


async def test_asks_in_a_batch_answer_by_position(mesh: am.Mesh) -> None:
    node = mesh._node
    agents = [await mesh.spawn(Patient) for _ in range(3)]
    gone = await mesh.spawn(Patient)
    await gone.stop()
    busy = await mesh.spawn(Patient)
    stuck = asyncio.ensure_future(busy.wait_gate())  # its turn waits: the next queues
    await wait_for(lambda: busy._cell is not None and busy._cell.current is not None)
    full = await mesh.spawn(Patient, mailbox_size=1)
    stuck_too = asyncio.ensure_future(full.wait_gate())
    await wait_for(lambda: full._cell is not None and full._cell.current is not None)
    await full.echo.tell(0)  # the one place in its mailbox, taken
    refs = [*agents, gone, busy, full]
    deadline = asyncio.get_running_loop().time() + 10
    answers = node.ask_each(refs, "echo", list(range(len(refs))), deadline)
    assert isinstance(answers.errors[3], am.AgentUnavailable)  # at once: it is gone
    await wait_for(lambda: answers.left == 2, what="the idle agents' answers")
    assert answers.values[:3] == [0, 1, 2]
    # the busy agent has it in its mailbox; the full one in a task, waiting for room
    busy._cell.instance.gate.set()  # type: ignore[union-attr]
    full._cell.instance.gate.set()  # type: ignore[union-attr]
    await answers.wait(deadline)
    assert answers.values == [0, 1, 2, PENDING, 4, 5]
    assert await stuck == await stuck_too == "through"


async def test_answers_after_the_deadline_are_dropped(mesh: am.Mesh) -> None:
    slow = await mesh.spawn(Patient)
    loop = asyncio.get_running_loop()
    answers = mesh._node.ask_each([slow], "wait_gate", [None], loop.time() + 10)
    await answers.wait(loop.time() + 0.05)  # the gate is closed: it cannot answer
    assert answers.values == [PENDING]
    assert answers.closed
    slow._cell.instance.gate.set()  # type: ignore[union-attr]
    assert await slow.echo(1) == 1  # the turn ended; its late answer went nowhere
    assert answers.values == [PENDING]


class Recorder(am.Agent):
    """Keeps the order its messages arrive in; some handlers wait, fail or stop."""

    def __init__(self) -> None:
        self.log: list[object] = []

    async def record(self, x: object) -> object:
        self.log.append(x)
        return x

    async def waits(self, seconds: float) -> tuple[bool, str]:
        before = asyncio.current_task()
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(seconds):
                await asyncio.Event().wait()
        except TimeoutError:
            pass
        self.log.append("waited")
        return asyncio.current_task() is before, request_id.get()

    async def tag(self, value: str) -> str:
        request_id.set(value)
        return value

    async def boom(self, _: object) -> None:
        raise ValueError("boom")

    async def leave(self, _: object) -> str:
        await self.ref.stop()
        return "leaving"

    async def history(self) -> list[object]:
        return self.log


def _ask_each(mesh: am.Mesh, refs: list[am.AgentRef], method: str, args: list[object]) -> Answers:
    """One round of asks, as the simulation's step makes them."""
    deadline = asyncio.get_running_loop().time() + 10
    return mesh._node.ask_each(refs, method, args, deadline)


async def _all(answers: Answers) -> list[object]:
    """Every answer of the round: a value, or the exception raised."""
    await answers.wait(asyncio.get_running_loop().time() + 10)
    assert answers.left == 0
    return [answers.errors.get(i, v) for i, v in enumerate(answers.values)]


async def test_a_batched_turn_that_waits_keeps_its_task_and_context(mesh: am.Mesh) -> None:
    a, b, c = [await mesh.spawn(Recorder) for _ in range(3)]
    assert await _all(_ask_each(mesh, [a], "tag", ["a-tag"])) == ["a-tag"]
    # a's turn waits; b's and c's, after it in the batch, go on meanwhile
    waiting = _ask_each(mesh, [b, a, c], "waits", [0.01, 0.2, 0.01])
    # the turn that waited kept one task and ran in a's context (its first turn set it)
    assert await _all(waiting) == [(True, "-"), (True, "a-tag"), (True, "-")]
    assert await a.history() == ["waited"]


async def test_messages_after_a_batch_wait_behind_its_asks(mesh: am.Mesh) -> None:
    a = await mesh.spawn(Recorder)
    first = _ask_each(mesh, [a], "record", ["first"])
    await a.record.tell("second")  # queued behind the batched ask, not before it
    third = _ask_each(mesh, [a], "record", ["third"])
    assert await _all(first) == ["first"]
    assert await _all(third) == ["third"]
    assert await a.history() == ["first", "second", "third"]


async def test_one_agent_twice_in_a_batch_answers_both_in_order(mesh: am.Mesh) -> None:
    a = await mesh.spawn(Recorder)
    assert await _all(_ask_each(mesh, [a, a, a], "record", [0, 1, 2])) == [0, 1, 2]
    assert await a.history() == [0, 1, 2]


async def test_bad_calls_in_a_batch_get_typed_errors_and_the_agent_goes_on(
    mesh: am.Mesh,
) -> None:
    a, b = await mesh.spawn(Recorder), await mesh.spawn(Recorder)
    boom = await _all(_ask_each(mesh, [a, b], "boom", [None, None]))
    assert [type(e) for e in boom] == [am.RemoteError, am.RemoteError]
    assert [type(e) for e in await _all(_ask_each(mesh, [a], "nope", [1]))] == [am.UnknownMethod]
    assert [type(e) for e in await _all(_ask_each(mesh, [b], "history", [1]))] == [am.BadArguments]
    assert await _all(_ask_each(mesh, [a, b], "record", ["after", "after"])) == ["after"] * 2
    assert await a.history() == ["after"]
    assert (await mesh.info(a)).rejected == 1
    assert (await mesh.info(b)).rejected == 1


async def test_an_agent_stopping_itself_in_a_batched_turn_stops(mesh: am.Mesh) -> None:
    a = await mesh.spawn(Recorder)
    assert await _all(_ask_each(mesh, [a], "leave", [None])) == ["leaving"]
    await asyncio.wait_for(mesh.wait_terminated(a), 5)
    assert (await mesh.info(a)).state == "stopped"


async def test_an_agent_stopped_after_batching_answers_then_stops(mesh: am.Mesh) -> None:
    a = await mesh.spawn(Recorder)
    answers = _ask_each(mesh, [a], "record", ["queued"])
    await a.stop()  # the ask was queued before the stop: it is handled first
    assert await _all(answers) == ["queued"]
    assert (await mesh.info(a)).state == "stopped"


def _frame(*tells: tuple[am.AgentRef, str, tuple[object, ...]]) -> list[object]:
    """Tells as a peer sends them in one frame (`TellRecord` tuples)."""
    return [(ref.id, method, args, None, None) for ref, method, args in tells]


async def test_tells_of_a_frame_run_from_it_each_agent_in_order(mesh: am.Mesh) -> None:
    a, b, c = [await mesh.spawn(Recorder) for _ in range(3)]
    frame = _frame(
        (a, "record", (1,)), (b, "record", (1,)), (a, "record", (2,)), (c, "waits", (0.01,)),
        (a, "record", (3,)), (b, "record", (2,)),
    )  # fmt: skip
    delivered: dict[str, int] = {}
    assert mesh._node.offer_tells(frame, 0, (), delivered) == len(frame)
    assert delivered == {a.id: 3, b.id: 2, c.id: 1}
    assert await a.history() == [1, 2, 3]  # asked after the tells: behind them
    assert await b.history() == [1, 2]
    assert await c.history() == ["waited"]  # its turn waited; the others went on


async def test_a_bad_or_failing_tell_from_a_frame_is_handled_as_any_tell(
    mesh: am.Mesh,
) -> None:
    dead = mesh.subscribe("agentmesh.dead_letters")
    a, b = await mesh.spawn(Recorder), await mesh.spawn(Recorder)
    frame = _frame((a, "record", (1, 2)), (b, "boom", (None,)), (a, "record", ("ok",)))
    assert mesh._node.offer_tells(frame, 0, (), {}) == 3
    letter = await asyncio.wait_for(dead.__anext__(), 5)  # the bad call: a dead letter
    _, dead_letter = letter  # (topic, payload)
    assert (dead_letter.method, dead_letter.payload) == ("record", (1, 2))
    assert "positional argument" in dead_letter.reason
    assert await a.history() == ["ok"]
    await asyncio.wait_for(mesh.wait_terminated(b), 5)  # a failing tell crashes its agent
    info = await mesh.info(b)
    assert (info.state, info.crashes) == ("crashed", 1)
    await dead.aclose()


class Journal(am.Agent):
    """Notes what it is told in a list its spawner keeps (it outlives the agent)."""

    def __init__(self, seen: list[object]) -> None:
        self.seen = seen

    async def record(self, x: object) -> None:
        self.seen.append(x)


async def test_a_tell_batched_before_a_stop_is_handled_before_it(mesh: am.Mesh) -> None:
    seen: list[object] = []
    a = await mesh.spawn(Journal, seen)
    assert mesh._node.offer_tells(_frame((a, "record", ("queued",))), 0, (), {}) == 1
    await a.stop()  # the tell came first: the agent handles it, then stops
    assert seen == ["queued"]
    assert (await mesh.info(a)).state == "stopped"


class Results(am.Agent):
    """Returns or raises, before or after suspending."""

    async def make(self, _: object = None) -> Payload:
        return Payload()

    async def fail_carrying(self) -> None:
        raise ValueError("carried", Payload())

    async def fail_later(self, _: object = None) -> None:
        await asyncio.sleep(0)
        raise ValueError("late failure")

    async def many_waits(self, n: int) -> int:
        for _ in range(n):
            await asyncio.sleep(0)
        return n


class Payload:
    """A result whose lifetime the test watches."""

    made: weakref.WeakSet[Payload] = weakref.WeakSet()

    def __init__(self) -> None:
        self.made.add(self)


async def test_the_dispatcher_keeps_no_result_alive(mesh: am.Mesh) -> None:
    agent = await mesh.spawn(Results)
    cell = agent._cell
    assert cell is not None
    await agent.make.tell()  # its result goes nowhere: nothing may keep it
    await wait_for(lambda: cell.handled == 1)
    gc.collect()
    assert not Payload.made
    answers = _ask_each(mesh, [agent], "make", [None])
    await answers.wait(asyncio.get_running_loop().time() + 10)
    assert answers.left == 0
    assert len(Payload.made) == 1
    del answers
    await wait_for(lambda: mesh._node.dispatcher.task is None)  # it held the batch last
    gc.collect()
    assert not Payload.made


async def test_the_dispatcher_keeps_no_error_alive(mesh: am.Mesh) -> None:
    agent = await mesh.spawn(Results)
    with pytest.raises(am.RemoteError, match="carried"):
        await agent.fail_carrying()  # the error holds a Payload: nothing may keep it
    await wait_for(lambda: mesh._node.dispatcher.task is None)
    gc.collect()
    assert not Payload.made


async def test_a_handler_that_fails_after_waiting_reports_its_error(mesh: am.Mesh) -> None:
    a, b = await mesh.spawn(Results), await mesh.spawn(Results)
    with pytest.raises(am.RemoteError, match="late failure"):
        await a.fail_later()
    out = await _all(_ask_each(mesh, [a, b], "fail_later", [None, None]))
    assert all(isinstance(e, am.RemoteError) and "late failure" in str(e) for e in out)
    # each went on as usual, and a turn that waits many times ends with its value
    assert await _all(_ask_each(mesh, [a, b], "many_waits", [3, 5])) == [3, 5]
    assert await a.many_waits(4) == 4

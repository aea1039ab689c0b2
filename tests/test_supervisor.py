"""Supervision, after OTP's documented supervisor behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import agentmesh as am
from agentmesh import sim

from .agents import Recorder
from .conftest import recorded, wait_for


class Worker(am.Agent):
    """Reports its starts and stops; crashes on request; counts in memory."""

    def __init__(self, label: str, recorder: am.AgentRef) -> None:
        self.label = label
        self.recorder = recorder
        self.count = 0

    async def on_start(self) -> None:
        await self.recorder.log.tell(("start", self.label))

    async def on_stop(self) -> None:
        await self.recorder.log.tell(("stop", self.label))

    async def bump(self) -> int:
        self.count += 1
        return self.count

    async def crash(self) -> None:
        raise RuntimeError(f"{self.label} crashed on purpose")

    async def quit(self) -> None:
        await self.ref.stop()


@pytest.fixture
async def mesh() -> AsyncIterator[am.Mesh]:
    async with am.Mesh(shutdown_timeout=1.0, ask_timeout=5.0) as m:
        yield m


async def _tree(
    mesh: am.Mesh, strategy: str, restart: str = "permanent", **flags: Any
) -> tuple[am.AgentRef, am.AgentRef, list[am.AgentRef]]:
    recorder = await mesh.spawn(Recorder)
    spec = am.SupervisorSpec(
        strategy=strategy,  # type: ignore[arg-type]
        children=[
            am.ChildSpec(Worker, label, recorder, name=label, restart=restart)  # type: ignore[arg-type]
            for label in ("a", "b", "c")
        ],
        **flags,
    )
    sup = await mesh.spawn(am.Supervisor, spec, name="sup")
    kids = [await mesh.get(label) for label in ("a", "b", "c")]
    return sup, recorder, kids


async def _restarts(sup: am.AgentRef) -> list[int]:
    return [c.restarts for c in await sup.children()]


async def test_children_start_in_order(mesh: am.Mesh) -> None:
    _, recorder, _ = await _tree(mesh, "one_for_one")
    assert await recorded(recorder, 3) == [("start", "a"), ("start", "b"), ("start", "c")]


async def test_one_for_one_restarts_only_the_crashed_child(mesh: am.Mesh) -> None:
    sup, recorder, (a, b, c) = await _tree(mesh, "one_for_one")
    await a.bump()
    await c.bump()
    await b.crash.tell()
    await wait_for(lambda: _has(sup, [0, 1, 0]), what="b restarted")
    assert await a.bump() == 2  # a and c kept their instances
    assert await c.bump() == 2
    assert await b.bump() == 1
    events = await recorded(recorder, 5)
    assert events[3:] == [("stop", "b"), ("start", "b")]


async def _has(sup: am.AgentRef, restarts: list[int]) -> bool:
    return await _restarts(sup) == restarts


async def test_one_for_all_restarts_every_child(mesh: am.Mesh) -> None:
    sup, recorder, (a, b, _) = await _tree(mesh, "one_for_all")
    await a.bump()
    await b.crash.tell()
    await wait_for(lambda: _has(sup, [1, 1, 1]), what="all restarted")
    assert await a.bump() == 1  # a fresh instance
    events = await recorded(recorder, 9)
    # b stopped by its crash, the others in reverse order, then all in start order.
    assert events[3:] == [
        ("stop", "b"),
        ("stop", "c"),
        ("stop", "a"),
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
    ]


async def test_rest_for_one_restarts_the_crashed_child_and_later_ones(mesh: am.Mesh) -> None:
    sup, recorder, (a, b, _) = await _tree(mesh, "rest_for_one")
    await a.bump()
    await b.crash.tell()
    await wait_for(lambda: _has(sup, [0, 1, 1]), what="b and c restarted")
    assert await a.bump() == 2
    events = await recorded(recorder, 7)
    assert events[3:] == [("stop", "b"), ("stop", "c"), ("start", "b"), ("start", "c")]


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        ("permanent", "crash", True),
        ("permanent", "quit", True),  # exited normally: a permanent child comes back
        ("permanent", "stop", False),  # stopped by someone else: never restarted
        ("transient", "crash", True),
        ("transient", "quit", False),
        ("temporary", "crash", False),
        ("temporary", "quit", False),
    ],
)
async def test_restart_types(mesh: am.Mesh, restart: str, how: str, restarted: bool) -> None:
    sup, _, (a, _, _) = await _tree(mesh, "one_for_one", restart=restart)
    if how == "stop":
        await a.stop()
    else:
        await a[how].tell()
    if restarted:
        await wait_for(lambda: _has(sup, [1, 0, 0]), what="a restarted")
        assert await a.bump() == 1
    else:
        await wait_for(lambda: _child_state(sup, 0, ("stopped", "crashed")), what="a ended")
        with pytest.raises(am.AgentUnavailable):
            await a.bump()
        assert await _restarts(sup) == [0, 0, 0]


async def _child_state(sup: am.AgentRef, index: int, states: tuple[str, ...]) -> bool:
    return (await sup.children())[index].state in states


async def test_refs_names_and_queued_messages_survive_a_restart(mesh: am.Mesh) -> None:
    class Slow(am.Agent):
        def __init__(self, recorder: am.AgentRef) -> None:
            self.recorder = recorder
            self.gate = asyncio.Event()

        async def block_then_crash(self) -> None:
            await self.recorder.log.tell("crashing")
            await self.gate.wait()
            raise RuntimeError("boom")

        async def note(self, item: str) -> None:
            await self.recorder.log.tell(item)

    recorder = await mesh.spawn(Recorder)
    ref = await mesh.spawn(Slow, recorder, name="slow", restart="permanent")
    await ref.block_then_crash.tell()
    await recorded(recorder, 1)
    await ref.note.tell("queued-1")
    await ref.note.tell("queued-2")
    cell = mesh._node.cells[ref.id]
    cell.instance.gate.set()  # type: ignore[union-attr]
    events = await recorded(recorder, 3)
    assert events == ["crashing", "queued-1", "queued-2"]  # the crashing message is gone
    assert cell.restarts == 1
    assert await mesh.get("slow") == ref
    await ref.note("after")
    assert (await recorder.all())[-1] == "after"


async def test_asks_in_flight_on_a_crashed_instance_fail_at_once(mesh: am.Mesh) -> None:
    class Busy(am.Agent):
        concurrency = 3

        async def hang(self) -> None:
            await asyncio.Event().wait()

        async def crash(self) -> None:
            raise RuntimeError("boom")

        async def ping(self) -> str:
            return "pong"

    ref = await mesh.spawn(Busy, restart="permanent")
    hanging = [asyncio.create_task(ref.hang()) for _ in range(2)]
    cell = mesh._node.cells[ref.id]
    await wait_for(lambda: len(cell.busy()) == 2, what="two asks in flight")
    await ref.crash.tell()
    for task in hanging:
        with pytest.raises(am.AgentUnavailable, match="crashed"):
            await asyncio.wait_for(task, 2)
    assert await ref.ping() == "pong"  # and the restarted agent answers


async def test_intensity_exceeded_escalates_exactly_once(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    inner = am.SupervisorSpec(
        intensity=1,
        period=30.0,
        children=[
            am.ChildSpec(Worker, "w", recorder, name="w"),
            am.ChildSpec(Worker, "x", recorder),
        ],
    )
    top = await mesh.spawn(
        am.Supervisor,
        am.SupervisorSpec(
            children=[am.ChildSpec(am.Supervisor, inner, name="inner", restart="temporary")]
        ),
    )
    inner_ref = await mesh.get("inner")
    ended = asyncio.create_task(mesh.wait_terminated(inner_ref))
    worker = await mesh.get("w")
    await worker.crash.tell()
    await wait_for(lambda: mesh._node.cells[worker.id].restarts == 1, what="first restart")
    await worker.crash.tell()  # the second restart within the period is one too many
    notice = await asyncio.wait_for(ended, 5)
    assert notice.reason == "crash"
    assert notice.error is not None
    assert "RestartIntensityExceeded" in notice.error
    children = await top.children()
    assert [(c.name, c.state, c.restarts) for c in children] == [("inner", "crashed", 0)]
    with pytest.raises(am.AgentNotFound):
        await mesh.get("w")  # the inner supervisor stopped its children first


async def test_a_parent_restarts_a_supervisor_that_gave_up_once(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    inner = am.SupervisorSpec(intensity=0, children=[am.ChildSpec(Worker, "w", recorder, name="w")])
    top = await mesh.spawn(
        am.Supervisor,
        am.SupervisorSpec(intensity=5, children=[am.ChildSpec(am.Supervisor, inner, name="inner")]),
    )
    inner_ref = await mesh.get("inner")
    worker = await mesh.get("w")
    await worker.crash.tell()  # intensity 0: the inner supervisor gives up at once
    await wait_for(lambda: _has(top, [1]), what="inner restarted by top")
    fresh = await mesh.get("w")  # the restarted inner supervisor started a new worker
    assert fresh != worker
    assert await fresh.bump() == 1
    assert await mesh.get("inner") == inner_ref  # the supervisor's own ref survived
    for _ in range(20):
        await asyncio.sleep(0)
    assert await _restarts(top) == [1]  # one escalation, one restart
    events = await recorder.all()
    assert events.count(("start", "w")) == 2


async def test_nested_trees_contain_failures(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    inner = am.SupervisorSpec(children=[am.ChildSpec(Worker, "leaf", recorder, name="leaf")])
    top = await mesh.spawn(
        am.Supervisor,
        am.SupervisorSpec(
            children=[
                am.ChildSpec(am.Supervisor, inner, name="team"),
                am.ChildSpec(Worker, "sibling", recorder, name="sibling"),
            ]
        ),
    )
    leaf = await mesh.get("leaf")
    await leaf.crash.tell()
    team = await mesh.get("team")
    await wait_for(lambda: _has(team, [1]), what="leaf restarted by team")
    assert await _restarts(top) == [0, 0]


async def test_children_stop_in_reverse_order_with_timeouts(mesh: am.Mesh) -> None:
    class Stuck(am.Agent):
        async def on_stop(self) -> None:
            await asyncio.Event().wait()

    recorder = await mesh.spawn(Recorder)
    spec = am.SupervisorSpec(
        children=[
            am.ChildSpec(Worker, "first", recorder),
            am.ChildSpec(Stuck, shutdown=0.05),
            am.ChildSpec(Worker, "last", recorder),
        ]
    )
    sup = await mesh.spawn(am.Supervisor, spec)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sup.stop()
    assert loop.time() - started < 3  # the stuck on_stop was cut off
    events = await recorder.all()
    assert [e for e in events if e[0] == "stop"] == [("stop", "last"), ("stop", "first")]


async def test_dynamic_children_join_a_supervisor(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    sup = await mesh.spawn(am.Supervisor, am.SupervisorSpec())
    worker = await mesh.spawn(Worker, "dyn", recorder, supervisor=sup, restart="permanent")
    extra = await sup.start_child(am.ChildSpec(Worker, "extra", recorder, restart="temporary"))
    children = await sup.children()
    assert [(c.ref, c.dynamic, c.restart) for c in children] == [
        (worker, True, "permanent"),
        (extra, True, "temporary"),
    ]
    await worker.crash.tell()
    await wait_for(lambda: _has(sup, [1, 0]), what="dynamic child restarted")
    await extra.crash.tell()  # temporary: not restarted, and forgotten
    await wait_for(lambda: _count(sup, 1), what="temporary child removed")


async def _count(sup: am.AgentRef, n: int) -> bool:
    return len(await sup.children()) == n


async def test_backoff_spaces_restarts(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    spec = am.SupervisorSpec(
        intensity=5,
        backoff=am.Backoff(minimum=0.2, maximum=1.0, jitter=0.0),
        children=[am.ChildSpec(Worker, "b", recorder, name="b")],
    )
    sup = await mesh.spawn(am.Supervisor, spec)
    worker = await mesh.get("b")
    loop = asyncio.get_running_loop()
    crashed_at = loop.time()
    await worker.crash.tell()
    await worker.bump.tell()  # queued while the child waits out its backoff
    await wait_for(lambda: _has(sup, [1]), what="restarted after backoff")
    assert loop.time() - crashed_at >= 0.19
    assert await worker.bump() == 2  # the queued bump reached the new instance


async def test_a_plain_spawn_is_temporary(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    worker = await mesh.spawn(Worker, "plain", recorder)
    await worker.crash.tell()
    notice = await asyncio.wait_for(mesh.wait_terminated(worker), 5)
    assert (notice.reason, notice.restarting) == ("crash", False)


async def test_root_giving_up_is_visible_to_the_program() -> None:
    async with am.Mesh(restart_intensity=0) as mesh:
        recorder = await mesh.spawn(Recorder)
        worker = await mesh.spawn(Worker, "w", recorder, restart="permanent")
        await worker.crash.tell()
        failure = await asyncio.wait_for(mesh.wait_failure(), 5)
        assert isinstance(failure, am.RestartIntensityExceeded)
        with pytest.raises(am.AgentUnavailable):
            await recorder.all()  # the root stopped every child
        with pytest.raises(am.AgentUnavailable, match="root"):
            await mesh.spawn(Recorder)


async def test_an_unretrieved_root_failure_is_raised_on_exit() -> None:
    async def crash_the_root() -> None:
        async with am.Mesh(restart_intensity=0) as mesh:
            recorder = await mesh.spawn(Recorder)
            worker = await mesh.spawn(Worker, "w", recorder, restart="permanent")
            await worker.crash.tell()
            root = mesh.root._cell
            assert root is not None
            await wait_for(lambda: root.state.value == "crashed", what="root gave up")

    with pytest.raises(am.RestartIntensityExceeded, match="gave up"):
        await crash_the_root()


def test_specs_refuse_invalid_values() -> None:
    with pytest.raises(ValueError, match="strategy"):
        am.SupervisorSpec(strategy="one_for_some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="intensity"):
        am.SupervisorSpec(intensity=-1)
    with pytest.raises(ValueError, match="period"):
        am.SupervisorSpec(period=0)
    with pytest.raises(ValueError, match="restart"):
        am.ChildSpec(Recorder, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique"):
        am.SupervisorSpec(children=[am.ChildSpec(Recorder, name="x")] * 2)
    with pytest.raises(TypeError, match="Agent subclass"):
        am.ChildSpec(int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jitter"):
        am.Backoff(jitter=1.5)
    assert am.SupervisorSpec().intensity == 1  # OTP's defaults
    assert am.SupervisorSpec().period == 5.0


async def test_a_notice_about_an_old_child_never_hits_a_new_one(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    inner = am.SupervisorSpec(
        intensity=0,
        children=[
            am.ChildSpec(Worker, "a", recorder, name="a"),
            am.ChildSpec(Worker, "b", recorder, name="b"),
        ],
    )
    top = await mesh.spawn(
        am.Supervisor,
        am.SupervisorSpec(intensity=5, children=[am.ChildSpec(am.Supervisor, inner, name="inner")]),
    )
    a, b = await mesh.get("a"), await mesh.get("b")
    a.crash.tell_nowait()
    b.crash.tell_nowait()  # its notice reaches the inner supervisor after it gave up
    await wait_for(lambda: _has(top, [1]), what="inner restarted")
    fresh_b = await mesh.get("b")
    assert await fresh_b.bump() == 1
    for _ in range(50):
        await asyncio.sleep(0)
    assert await _restarts(top) == [1]  # one failure, one escalation


async def test_a_crash_while_stopping_is_not_restarted(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    worker = await mesh.spawn(Worker, "w", recorder, restart="permanent")
    await worker.crash.tell()  # still queued when the stop begins
    await worker.stop()
    info = await mesh.info(worker)
    assert (info.state, info.restarts) == ("crashed", 0)
    with pytest.raises(am.AgentUnavailable):
        await worker.bump()


async def test_spawn_under_a_local_supervisor_raises_plain_errors(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    sup = await mesh.spawn(am.Supervisor, am.SupervisorSpec())
    worker = await mesh.spawn(Worker, "w", recorder, supervisor=sup, name="w")
    with pytest.raises(am.NameTaken):
        await mesh.spawn(Worker, "w2", recorder, supervisor=sup, name="w")
    assert [c.restart for c in await sup.children()] == ["permanent"]  # ChildSpec's default
    assert (await sup.children())[0].ref == worker


def test_a_supervisor_stop_waits_for_each_child_in_turn() -> None:
    """Children stop newest first, each within its own shutdown timeout: together
    they may take longer than one. On a virtual clock (`sim.run_virtual`), where a
    stop's work takes exactly the time it says however loaded the machine is."""

    class SlowStop(am.Agent):
        def __init__(self, label: str, recorder: am.AgentRef) -> None:
            self.label = label
            self.recorder = recorder

        async def on_stop(self) -> None:
            await self.recorder.log.tell(("begins", self.label, round(sim.now(), 6)))
            await asyncio.sleep(0.6)  # the work of stopping: within 1 s, not twice
            await self.recorder.log.tell(("ends", self.label, round(sim.now(), 6)))

    async def main() -> tuple[list[Any], float]:
        async with am.Mesh(shutdown_timeout=1.0, slow_turn=None) as mesh:
            recorder = await mesh.spawn(Recorder)
            spec = am.SupervisorSpec(
                children=[am.ChildSpec(SlowStop, label, recorder) for label in "abc"]
            )
            sup = await mesh.spawn(am.Supervisor, spec)
            started = sim.now()
            await sup.stop()
            return await recorder.all(), sim.now() - started

    events, took = sim.run_virtual(main())
    assert events == [  # one at a time, newest first, none cut short
        ("begins", "c", 0.0),
        ("ends", "c", 0.6),
        ("begins", "b", 0.6),
        ("ends", "b", 1.2),
        ("begins", "a", 1.2),
        ("ends", "a", 1.8),
    ]
    assert took == pytest.approx(1.8)  # more than one shutdown timeout


async def test_stopping_a_supervisor_cancels_a_pending_backoff(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    spec = am.SupervisorSpec(
        backoff=am.Backoff(minimum=30.0, maximum=30.0, jitter=0.0),
        children=[am.ChildSpec(Worker, "b", recorder, name="b")],
    )
    sup = await mesh.spawn(am.Supervisor, spec)
    worker = await mesh.get("b")
    await worker.crash.tell()
    cell = mesh._node.cells[worker.id]
    await wait_for(lambda: cell.state.value == "restarting", what="waiting out the backoff")
    async with asyncio.timeout(5):
        await sup.stop()
    assert cell.state.value == "stopped"
    with pytest.raises(am.AgentNotFound):
        await mesh.get("b")


async def test_closed_mesh_refuses_spawns_and_reports_no_failure() -> None:
    async with am.Mesh() as mesh:
        pass
    assert await mesh.wait_failure() is None
    with pytest.raises(RuntimeError, match="closed"):
        await mesh.spawn(Recorder)


async def test_restart_count_and_notice_error_of_a_normal_exit(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    worker = await mesh.spawn(Worker, "w", recorder, restart="permanent")
    seen: list[am.Terminated] = []
    fut: asyncio.Future[am.Terminated] = asyncio.get_running_loop().create_future()
    cell = mesh._node.cells[worker.id]
    cell.watch(fut)
    await worker.crash.tell()
    seen.append(await asyncio.wait_for(fut, 5))
    await wait_for(lambda: cell.state.value == "running", what="restarted")
    fut = asyncio.get_running_loop().create_future()
    cell.watch(fut)
    await worker.quit.tell()  # a normal exit: a permanent child comes back
    seen.append(await asyncio.wait_for(fut, 5))
    assert [(n.reason, n.error, n.restarting) for n in seen] == [
        ("crash", "RuntimeError: w crashed on purpose", True),
        ("normal", None, True),
    ]
    await wait_for(lambda: cell.state.value == "running", what="restarted again")
    assert (await mesh.info(worker)).restarts == 2


async def test_an_exit_notice_from_an_instance_the_supervisor_no_longer_owns_is_ignored(
    mesh: am.Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    # A child restarted elsewhere leaves a stale instance behind on a node that was cut
    # off; when that one ends, its notice names it, and the supervisor must not take
    # it for the live child's.
    recorder = await mesh.spawn(Recorder)
    spec = am.SupervisorSpec(children=[am.ChildSpec(Worker, "w", recorder, name="w")])
    sup = await mesh.spawn(am.Supervisor, spec)
    [child] = await sup.children()
    assert sup._cell is not None
    key = next(iter(sup._cell.instance._children))  # type: ignore[union-attr]
    sup._cell.deliver_notice("!child_exited", key, "crash", "stale boom", True, "sys.gone.1")
    assert await sup.children() == [child]  # the notice went through the mailbox first
    assert "restarting w" not in caplog.text
    # The same notice naming the live instance is acted on (the path is real).
    sup._cell.deliver_notice("!child_exited", key, "crash", "live boom", True, child.ref.id)
    await wait_for(lambda: "restarting w after live boom" in caplog.text, what="acted on")
    assert "stale boom" not in caplog.text

"""Durable reminders (`Agent.remind`): kept in the state store under the agent's name,
fired as messages with a unique id, surviving restarts of the agent, of its node and
of the whole mesh.

Exact firing counts are checked on the simulation's virtual clock (time moves only
when every task waits, so what fires when is exact); the SQLite and cross-process
tests run in real time and check what holds whatever the timing: no firing lost,
none delivered twice but the one in flight, missed ones accounted for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon
from agentmesh.sim import run_virtual

from .agents import Recorder
from .conftest import docs_example, start_daemon, wait_for
from .timed_agents import Beating


def now() -> float:
    return asyncio.get_running_loop().time()


def virtual(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_virtual(main())


def mesh(store: am.StateStore) -> am.Mesh:
    return am.Mesh(slow_turn=None, state_store=store, restart_intensity=10)


#: (reminder name, number, skipped, loop time) of every firing handled, in order.
FIRED: list[tuple[str, int, int, float]] = []


class Alarm(am.Agent):
    """Records its reminders' firings in FIRED; ``fail_on`` crashes it in one."""

    def __init__(self, fail_on: int = 0) -> None:
        self.fail_on = fail_on

    async def set(self, name: str, due: float, period: float | None, missed: str) -> None:
        await self.remind(name, due=due, period=period, missed=missed)  # type: ignore[arg-type]

    async def on_reminder(self, reminder: am.Reminder) -> None:
        FIRED.append((reminder.name, reminder.number, reminder.skipped, now()))
        if reminder.number == self.fail_on:
            raise RuntimeError(f"crash in firing {reminder.number}")

    async def fail(self) -> None:
        raise RuntimeError("crash on purpose")


@pytest.fixture(autouse=True)
def _fresh() -> None:
    FIRED.clear()


def test_a_periodic_reminder_fires_numbered_messages() -> None:
    ids: list[str] = []

    class Keeper(Alarm):
        async def on_reminder(self, reminder: am.Reminder) -> None:
            ids.append(reminder.id)
            await super().on_reminder(reminder)

    async def main() -> None:
        async with mesh(am.MemoryStateStore()) as m:
            alarm = await m.spawn(Keeper, name="alarm")
            await alarm.set("r", 1.0, 2.0, "once")
            await asyncio.sleep(7.5)
        assert [("r", n, 0, t) for n, t in ((1, 1.0), (2, 3.0), (3, 5.0), (4, 7.0))] == FIRED
        registration = ids[0].split(":")[1]
        assert ids == [f"r:{registration}:{n}" for n in (1, 2, 3, 4)]

    virtual(main)


def test_reminders_fire_exactly_once_each_around_crashes(caplog: pytest.LogCaptureFixture) -> None:
    """Crashes of the agent (a tell, and a firing's own handler) neither lose a firing
    nor deliver one twice: the reminders belong to the agent, not its instance."""
    caplog.set_level(logging.CRITICAL, "agentmesh")

    async def main() -> None:
        async with mesh(am.MemoryStateStore()) as m:
            alarm = await m.spawn(Alarm, 6, name="alarm", restart="permanent")
            await alarm.set("r", 1.0, 1.0, "all")
            await asyncio.sleep(2.5)
            await alarm.fail.tell()
            await asyncio.sleep(2.0)
            await alarm.fail.tell()
            await asyncio.sleep(6.0)  # to 10.5; firing 6 crashes it too
            info = await m.info(alarm)
            assert (info.crashes, info.restarts) == (3, 3)
        assert [(n, t) for _, n, _, t in FIRED] == [(n, float(n)) for n in range(1, 11)]

    virtual(main)


@pytest.mark.parametrize("restart", ["agent", "mesh"])
@pytest.mark.parametrize(
    ("missed", "expected"),
    [
        # (number, skipped, when) of the firings handled: 1-3 before the stop at 3.5,
        # the rest after the new start at 7.5 (firings 4-7 were due meanwhile).
        ("skip", [(1, 0, 1.0), (2, 0, 2.0), (3, 0, 3.0), (8, 4, 8.0), (9, 0, 9.0)]),
        ("once", [(1, 0, 1.0), (2, 0, 2.0), (3, 0, 3.0), (7, 3, 7.5), (8, 0, 8.0), (9, 0, 9.0)]),
        (
            "all",
            [(n, 0, float(n)) for n in (1, 2, 3)]
            + [(n, 0, 7.5) for n in (4, 5, 6, 7)]
            + [(8, 0, 8.0), (9, 0, 9.0)],
        ),
    ],
)
def test_firings_missed_while_no_agent_runs_are_handled_as_missed_says(
    restart: str, missed: str, expected: list[tuple[int, int, float]]
) -> None:
    store = am.MemoryStateStore()  # one store for both meshes: it outlives the first

    async def main() -> None:
        async with mesh(store) as m:
            alarm = await m.spawn(Alarm, name="alarm")
            await alarm.set("r", 1.0, 1.0, missed)
            await asyncio.sleep(3.5)
            if restart == "agent":
                await alarm.stop()
                await asyncio.sleep(4.0)
                await m.spawn(Alarm, name="alarm")
                await asyncio.sleep(2.0)
        if restart == "mesh":
            await asyncio.sleep(4.0)
            async with mesh(store) as m:
                await m.spawn(Alarm, name="alarm")
                await asyncio.sleep(2.0)
        assert [(n, s, t) for _, n, s, t in FIRED] == expected

    virtual(main)


@pytest.mark.parametrize("missed", ["skip", "once"])
def test_a_missed_one_shot_reminder(missed: str) -> None:
    store = am.MemoryStateStore()

    async def main() -> None:
        async with mesh(store) as m:
            alarm = await m.spawn(Alarm, name="alarm")
            await alarm.set("r", 2.0, None, missed)
            await alarm.stop()
            await asyncio.sleep(5.0)
            assert await store.get("!reminders:alarm") is not None
            await m.spawn(Alarm, name="alarm")
            await asyncio.sleep(5.0)
            assert await store.get("!reminders:alarm") is None  # done, or skipped
        assert ([] if missed == "skip" else [("r", 1, 0, 5.0)]) == FIRED

    virtual(main)


class Planner(am.Agent):
    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []

    async def on_reminder(self, reminder: am.Reminder) -> None:
        self.log.append((reminder.name, reminder.registration, reminder.number))

    async def later(self, reminder: am.Reminder) -> None:
        self.log.append(("later:" + reminder.name, reminder.registration, reminder.number))

    async def plan(self, name: str, due: float, replace: bool = True, method: str = "") -> bool:
        options: dict[str, Any] = {"method": method} if method else {}
        return await self.remind(name, due=due, period=1.0, replace=replace, **options)

    async def drop(self, name: str) -> bool:
        return await self.forget(name)

    async def busy_then_forget(self, seconds: float, name: str) -> None:
        await asyncio.sleep(seconds)
        await self.forget(name)

    async def seen(self) -> list[tuple[str, str, int]]:
        return self.log


def test_forget_and_replace() -> None:
    async def main() -> None:
        store = am.MemoryStateStore()
        async with mesh(store) as m:
            planner = await m.spawn(Planner, name="planner")
            assert await planner.plan("a", 1.0)
            assert await planner.plan("b", 1.0, method="later")
            assert await planner.plan("a", 5.0, replace=False) is False  # kept
            await asyncio.sleep(1.5)
            # A turn from 1.5 to 2.5, which forgets "b" at its end: the firings due at
            # 2.0 wait behind it, and "b"'s never runs.
            await planner.busy_then_forget.tell(1.0, "b")
            await asyncio.sleep(1.2)
            assert await planner.drop("b") is False
            assert await planner.plan("a", 0.5)  # replaced: a new registration, from 1
            await asyncio.sleep(1.0)
            seen = await planner.seen()
            first, second = seen[0][1], seen[-1][1]
            assert first != second
            assert seen == [
                ("a", first, 1),
                ("later:b", seen[1][1], 1),
                ("a", first, 2),
                ("a", second, 1),  # at 3.2; the old registration's 3.0 never came
            ]
            record = json.loads(await store.get("!reminders:planner") or b"{}")
            assert [r["name"] for r in record["reminders"]] == ["a"]

    virtual(main)


class Unnamed(am.Agent):
    async def on_reminder(self, reminder: am.Reminder) -> None: ...

    async def try_remind(self, **options: Any) -> str:
        try:
            await self.remind("r", **options)
        except am.AgentmeshError as exc:
            return type(exc).__name__
        except (TypeError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"


class Silent(am.Agent):
    def plain(self) -> None: ...

    async def try_remind(self, **options: Any) -> str:
        return await Unnamed.try_remind(self, **options)  # type: ignore[arg-type]


async def test_reminders_need_a_named_agent_and_valid_arguments(mesh: am.Mesh) -> None:
    anonymous = await mesh.spawn(Unnamed)
    assert await anonymous.try_remind(due=1.0) == "NameRequired"
    named = await mesh.spawn(Unnamed, name="named")
    assert (await named.try_remind(due=-1.0)).startswith("ValueError")
    assert (await named.try_remind(due="soon")).startswith("TypeError")
    assert (await named.try_remind(due=1.0, period=0)).startswith("ValueError")
    assert (await named.try_remind(due=1.0, missed="twice")).startswith("ValueError")
    assert (await named.try_remind(due=1.0, method="nope")).startswith("TypeError")
    assert await named.try_remind(due=timedelta(hours=1)) == "ok"
    assert await named.try_remind(due=datetime.now() + timedelta(hours=1)) == "ok"
    silent = await mesh.spawn(Silent, name="silent")
    assert "defines no on_reminder" in await silent.try_remind(due=1.0)
    assert (await silent.try_remind(due=1.0, method="plain")).startswith("TypeError")
    assert await mesh.state_store.get("!reminders:silent") is None


# -- durable across processes ---------------------------------------------------------


class Logged(am.Agent):
    """Logs its firings in FIRED, wall-clock stamped."""

    async def on_start(self) -> None:
        await self.remind("once", due=0.3, missed="once", replace=False)
        await self.remind("every", due=0.3, period=0.3, missed="skip", replace=False)

    async def on_reminder(self, reminder: am.Reminder) -> None:
        FIRED.append((reminder.name, reminder.number, reminder.skipped, time.time()))


async def test_reminders_resume_in_a_new_mesh_on_the_same_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with am.Mesh(state_store=am.SqliteStateStore(path)) as first:
        await first.spawn(Logged, name="logged")
    closed = time.time()
    before = list(FIRED)  # (none, unless this machine was slower than 0.3 s)
    # Let at least three firings of "every" fall due while no mesh runs.
    await wait_for(lambda: time.time() > closed + 1.0, what="time to pass")
    async with am.Mesh(state_store=am.SqliteStateStore(path)) as second:
        await second.spawn(Logged, name="logged")  # its on_start keeps both reminders

        def resumed() -> bool:
            return len([f for f in FIRED[len(before) :] if f[0] == "every"]) >= 2

        await wait_for(resumed, what="two firings in the new mesh")
    once = [f for f in FIRED if f[0] == "once"]
    assert [(n, s) for _, n, s, _ in once] == [(1, 0)]  # missed="once": late, but once
    every = [(n, s) for name, n, s, _ in FIRED if name == "every"]
    number = 0
    for n, skipped in every:  # each firing accounts for those skipped before it
        assert n == number + skipped + 1
        number = n
    after = [(n, s) for name, n, s, _ in FIRED[len(before) :] if name == "every"]
    assert after[0][1] >= 2  # at least two fell due while no mesh ran: skipped


@pytest.fixture
async def shared_cluster(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Daemon, Path]]:
    """A head and a worker, two processes sharing one SQLite state file."""
    db = tmp_path / "shared.db"
    timing = ("--heartbeat", "0.1", "--dead-after", "1.0")
    head = await start_daemon("head", "--listen", "127.0.0.1:0", "--state", str(db), *timing)
    worker = None
    try:
        worker = await start_daemon("node", "--join", head.address, "--state", str(db), *timing)
        yield head, worker, db
    finally:
        if worker is not None:
            await worker.stop()
        await head.stop()


@pytest.mark.slow
async def test_reminders_move_with_their_agent_when_its_node_dies(
    shared_cluster: tuple[Daemon, Daemon, Path],
) -> None:
    head, worker, _ = shared_cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as driver:
        nodes = await driver.nodes()
        head_id = next(n.id for n in nodes if n.role == "head")
        worker_id = next(n.id for n in nodes if n.role == "worker")
        recorder = await driver.spawn(Recorder, node=head_id, detached=True)
        spec = am.SupervisorSpec(
            intensity=5,
            children=[am.ChildSpec(Beating, recorder, 0.05, name="beating", node=worker_id)],
        )
        await driver.spawn(am.Supervisor, spec, node=head_id, detached=True)

        async def logged(count: int, where: str | None = None) -> bool:
            events = await recorder.all()
            return len(events) >= count and (where is None or events[-1][2] == where)

        await wait_for(lambda: logged(5), what="firings on the worker")
        await (await driver.get("beating")).fail.tell()  # a crash: restarted in place
        await wait_for(lambda: logged(10), what="firings after the crash")
        await worker.kill()
        seen = len(await recorder.all())
        await wait_for(lambda: logged(seen + 5, head_id), timeout=20, what="firings on the head")
        events = await recorder.all()
        numbers = [number for _, number, _ in events]
        assert set(numbers) == set(range(1, max(numbers) + 1))  # none lost
        assert len(numbers) - len(set(numbers)) <= 1  # at most the one in flight, again
        ids: dict[int, set[str]] = {}
        for id_, number, _ in events:
            ids.setdefault(number, set()).add(id_)
        assert all(len(same) == 1 for same in ids.values())  # delivered again: same id
        assert {where for _, _, where in events} == {worker_id, head_id}


def test_the_example_of_the_docs_prints_what_they_say() -> None:
    printed, promised = docs_example("state.md", "## Reminders")
    assert printed == promised


async def test_an_unreadable_record_fails_the_spawn_and_says_which_key(mesh: am.Mesh) -> None:
    await mesh.state_store.put("!reminders:alarm", b"not json")
    with pytest.raises(ValueError, match="'!reminders:alarm'"):
        await mesh.spawn(Alarm, name="alarm")
    with pytest.raises(am.AgentNotFound):
        await mesh.get("alarm")  # stopped again
    await mesh.state_store.delete("!reminders:alarm")
    alarm = await mesh.spawn(Alarm, name="alarm")
    await alarm.set("r", 0.0, None, "once")
    await wait_for(lambda: len(FIRED) == 1, what="the firing")

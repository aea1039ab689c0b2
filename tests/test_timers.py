"""Timers of agents (`Agent.every`, `Agent.after`): ticks are messages, bound to the
agent's instance.

Schedules are checked on the simulation's virtual clock, where time moves only when
every task waits, so the times a tick starts at are exact; the `world` test runs the
same timers in every world of the messaging suite, in real time, waiting on
conditions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import agentmesh as am
from agentmesh.sim import run_virtual

from .conftest import World, docs_example, wait_for
from .timed_agents import Ticking


def now() -> float:
    return asyncio.get_running_loop().time()


def virtual(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on the virtual clock, from t=0."""
    run_virtual(main())


def mesh() -> am.Mesh:
    return am.Mesh(slow_turn=None, shutdown_timeout=5.0)


def instance(m: am.Mesh, ref: am.AgentRef) -> Any:
    """The agent object behind ``ref`` (a local one): read without taking a turn."""
    return m._node.cells[ref.id].instance


class Metronome(am.Agent):
    """Ticks every second; each tick takes ``work`` seconds (holding its turn)."""

    def __init__(self, work: float = 0.0) -> None:
        self.work = work
        self.started: list[float] = []
        self.timer: am.Timer | None = None

    async def on_start(self) -> None:
        self.timer = self.every(1.0, self.tick, "beat")

    async def tick(self, label: str) -> None:
        assert label == "beat"
        self.started.append(now())
        await asyncio.sleep(self.work)


def test_every_ticks_on_its_grid_without_drift() -> None:
    async def main() -> None:
        async with mesh() as m:
            metronome = await m.spawn(Metronome, 0.3)
            await asyncio.sleep(5.5)
            # Each tick's work (0.3 s) does not push the next one back.
            assert instance(m, metronome).started == [1.0, 2.0, 3.0, 4.0, 5.0]

    virtual(main)


def test_a_tick_is_skipped_while_the_previous_one_is_still_queued() -> None:
    async def main() -> None:
        async with mesh() as m:
            metronome = await m.spawn(Metronome, 2.25)
            await asyncio.sleep(8.5)
            # Tick 1 runs 1 -> 3.25; tick 2 waits from 2 and runs 3.25 -> 5.5; tick 3,
            # due while tick 2 waited, is skipped; tick 4 waits from 4, and so on.
            agent = instance(m, metronome)
            assert agent.started == [1.0, 3.25, 5.5, 7.75]
            assert agent.timer.skipped == 3  # ticks 3, 5 and 7 (tick 8 waits)
            agent.timer.cancel()

    virtual(main)


class Once(am.Agent):
    def __init__(self) -> None:
        self.fired: list[tuple[str, float]] = []
        self.timers: dict[str, am.Timer] = {}

    async def arm(self, label: str, delay: float) -> bool:
        self.timers[label] = self.after(delay, self.fire, label)
        return self.timers[label].active

    async def cancel(self, label: str) -> bool:
        self.timers[label].cancel()
        return self.timers[label].active

    async def fire(self, label: str) -> None:
        self.fired.append((label, now()))

    async def busy(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def log(self) -> list[tuple[str, float]]:
        return self.fired


def test_after_fires_once_and_a_cancelled_timer_never_starts_a_tick() -> None:
    async def main() -> None:
        async with mesh() as m:
            once = await m.spawn(Once)
            assert await once.arm("a", 2.0)
            assert await once.arm("b", 1.0)
            assert await once.arm("c", 3.0)
            assert await once.cancel("c") is False
            await once.busy.tell(1.5)  # holds the turn from 0 to 1.5
            await asyncio.sleep(1.2)
            # "b" fired at 1.0 and waits in the mailbox behind busy(); cancel it there.
            node = m._node
            assert len(node.cells[once.id].mailbox) == 1
            node.cells[once.id].instance.timers["b"].cancel()
            await asyncio.sleep(10.0)
            assert await once.log() == [("a", 2.0)]
            assert not node.timers  # every timer of it is done: nothing is kept

    virtual(main)


class Generations(am.Agent):
    """Arms a timer in on_start; each instance logs its ticks under its generation."""

    log: list[tuple[int, float]] = []
    built = 0

    def __init__(self) -> None:
        Generations.built += 1
        self.generation = Generations.built

    async def on_start(self) -> None:
        self.every(1.0, self.tick)

    async def tick(self) -> None:
        Generations.log.append((self.generation, now()))

    async def fail(self) -> None:
        raise RuntimeError("crash on purpose")


def test_timers_end_with_their_instance_and_are_not_kept_across_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, "agentmesh")
    Generations.log, Generations.built = [], 0

    async def main() -> None:
        async with mesh() as m:
            agent = await m.spawn(Generations, restart="permanent")
            await asyncio.sleep(2.5)
            await agent.fail.tell()  # crashes at 2.5; a new instance starts at once
            await asyncio.sleep(2.2)
            node = m._node
            assert len(node.timers[agent.id]) == 1  # the new instance's, only
            await agent.stop()  # at 4.7
            assert not node.timers
            await asyncio.sleep(10.0)
        # The old instance's timer ended with it; the new one's runs from its start.
        assert Generations.log == [(1, 1.0), (1, 2.0), (2, 3.5), (2, 4.5)]

    virtual(main)


class Misuse(am.Agent):
    def plain(self) -> None: ...

    async def ok(self) -> None: ...

    async def check(self, other: am.AgentRef) -> list[str]:
        errors = []
        for call in (
            lambda: self.every(0, self.ok),
            lambda: self.every(-1.0, self.ok),
            lambda: self.after(-0.5, self.ok),
            lambda: self.every(1.0, "missing"),
            lambda: self.every(1.0, self.plain),
            lambda: self.after(1.0, other.ok),
            lambda: self.after(1.0, print),
        ):
            try:
                call()
            except (TypeError, ValueError) as exc:
                errors.append(type(exc).__name__)
        return errors


async def test_timers_refuse_what_they_cannot_run(mesh: am.Mesh) -> None:
    agent = await mesh.spawn(Misuse)
    other = await mesh.spawn(Misuse)
    errors = await agent.check(other)
    assert errors == ["ValueError"] * 3 + ["TypeError"] * 4
    assert not mesh._node.timers


async def test_ticks_are_messages_and_end_with_the_agent_in_every_world(world: World) -> None:
    ticking = await world.spawn(Ticking, 0.01)

    async def ticked(n: int) -> bool:
        ticks, controls = await ticking.counts()
        return ticks >= n and controls >= n

    await wait_for(lambda: ticked(3), what="three ticks of each timer")
    assert await ticking.cancel_tick() is False
    ticks, controls = await ticking.counts()
    # The control timer, of the same period, ticks on; the cancelled one never again.
    await wait_for(lambda: _controls_at_least(ticking, controls + 5), what="control ticks")
    assert (await ticking.counts())[0] == ticks
    info = await world.info(ticking)
    assert info.handled >= ticks + controls + 5  # every tick was a message
    await ticking.stop()
    if world.kind != "process":
        assert not world.host._node.timers  # its timers ended with it


async def _controls_at_least(ticking: am.AgentRef, n: int) -> bool:
    return bool((await ticking.counts())[1] >= n)


def test_the_example_of_the_docs_prints_what_they_say() -> None:
    printed, promised = docs_example("agents.md", "## Timers")
    assert printed == promised

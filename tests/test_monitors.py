"""Monitors: Terminated notices to agents and to drivers."""

from __future__ import annotations

import asyncio

import agentmesh as am

from .agents import Counter, Recorder
from .conftest import wait_for


class Watcher(am.Agent):
    def __init__(self, recorder: am.AgentRef) -> None:
        self.recorder = recorder

    async def watch(self, ref: am.AgentRef) -> None:
        await self.monitor(ref)

    async def unwatch(self, ref: am.AgentRef) -> None:
        await self.demonitor(ref)

    async def on_terminated(self, notice: am.Terminated) -> None:
        await self.recorder.log.tell((notice.ref, notice.reason, notice.restarting))


async def test_monitor_reports_stop_crash_and_restart(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    watcher = await mesh.spawn(Watcher, recorder)
    stopped = await mesh.spawn(Counter)
    restarted = await mesh.spawn(Counter, restart="permanent")
    crashed = await mesh.spawn(Counter)
    for ref in (stopped, restarted, crashed):
        await watcher.watch(ref)
    await stopped.stop()
    await restarted.divide.tell(0)
    await crashed.divide.tell(0)
    await wait_for(lambda: _count(recorder, 3), what="three notices")
    events = set(await recorder.all())
    assert events == {
        (stopped, "shutdown", False),
        (restarted, "crash", True),
        (crashed, "crash", False),
    }
    assert await restarted.add(1) == 1  # the monitor survives the restart, so does the ref
    await restarted.stop()
    await wait_for(lambda: _count(recorder, 4), what="fourth notice")
    assert (await recorder.all())[-1] == (restarted, "shutdown", False)


async def _count(recorder: am.AgentRef, n: int) -> bool:
    return len(await recorder.all()) >= n


async def test_monitoring_an_ended_agent_notifies_at_once(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    watcher = await mesh.spawn(Watcher, recorder)
    gone = await mesh.spawn(Counter)
    await gone.stop()
    await watcher.watch(gone)
    await wait_for(lambda: _count(recorder, 1), what="notice")


async def test_demonitor_stops_notices(mesh: am.Mesh) -> None:
    recorder = await mesh.spawn(Recorder)
    watcher = await mesh.spawn(Watcher, recorder)
    a = await mesh.spawn(Counter)
    b = await mesh.spawn(Counter)
    await watcher.watch(a)
    await watcher.watch(b)
    await watcher.unwatch(a)
    await a.stop()
    await b.stop()
    await wait_for(lambda: _count(recorder, 1), what="b's notice")
    assert [e[0] for e in await recorder.all()] == [b]


async def test_a_driver_waits_for_an_agent_to_end(mesh: am.Mesh) -> None:
    counter = await mesh.spawn(Counter)
    waiting = asyncio.create_task(mesh.wait_terminated(counter))
    await asyncio.sleep(0)
    assert not waiting.done()
    await counter.stop()
    notice = await asyncio.wait_for(waiting, 5)
    assert notice == am.Terminated(counter, "shutdown", None, False)

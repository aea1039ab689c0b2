"""The slow-turn watchdog: a turn that blocks the loop is named while it blocks, once
per stall; the watchdog's thread ends with the mesh; daemons warn on stderr."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

import pytest

import agentmesh as am

from .agents import Counter, Sleeper
from .conftest import start_daemon, wait_for


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("agentmesh-watchdog-")]


def stall_records(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """The watchdog's (warnings during stalls, "ran again" lines) so far."""
    lines = [r.getMessage() for r in caplog.records if r.name == "agentmesh.watchdog"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name.endswith("dog"))
    return [m for m in lines if "(slow_turn=" in m], [m for m in lines if "ran again" in m]


async def test_a_blocking_handler_is_named_once_per_stall_and_its_end_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agentmesh.watchdog")
    async with am.Mesh(slow_turn=0.1) as mesh:
        sleeper = await mesh.spawn(Sleeper, name="sleeper")
        assert await sleeper.nap(0.6) == "rested"
        await wait_for(lambda: bool(stall_records(caplog)[1]), what="the 'ran again' line")
        blocked, ended = stall_records(caplog)
        assert len(blocked) == 1, blocked  # once per stall, however long it lasts
        warning = blocked[0]
        assert "agent 'sleeper' (Sleeper) in nap()" in warning
        assert "agents.py:" in warning  # the line the handler is blocked on
        assert f"node {mesh.node_id}" in warning
        assert len(ended) == 1
        total = float(re.findall(r"blocked for ([\d.]+)s", ended[0])[0])
        assert 0.3 < total < 0.7, ended
        assert "agent 'sleeper' (Sleeper) in nap()" in ended[0]
        assert await sleeper.nap(0.0) == "rested"  # a quick turn: no warning
    assert len(stall_records(caplog)[0]) == 1


async def test_a_blocking_hook_is_named_too(caplog: pytest.LogCaptureFixture) -> None:
    class SlowStart(am.Agent):
        async def on_start(self) -> None:
            time.sleep(0.4)  # noqa: ASYNC251  (blocking on purpose)

    caplog.set_level(logging.WARNING, logger="agentmesh.watchdog")
    async with am.Mesh(slow_turn=0.1) as mesh:
        await mesh.spawn(SlowStart, name="slow-start")
        await wait_for(lambda: bool(stall_records(caplog)[1]), what="the 'ran again' line")
        assert "agent 'slow-start' (" in stall_records(caplog)[0][0]
        assert "SlowStart) in on_start()" in stall_records(caplog)[0][0]


async def test_the_watchdog_thread_ends_with_the_mesh() -> None:
    before = watchdog_threads()
    async with am.Mesh(slow_turn=0.1) as mesh:
        mine = [t for t in watchdog_threads() if t.name.endswith(mesh.node_id)]
        assert len(mine) == 1
        assert mine[0].daemon
    assert not mine[0].is_alive()
    assert watchdog_threads() == before
    async with am.Mesh(slow_turn=None) as quiet:
        await (await quiet.spawn(Counter)).add(1)
        assert not [t for t in watchdog_threads() if t.name.endswith(quiet.node_id)]


def test_a_virtual_clock_is_neither_sliced_nor_alarmed(caplog: pytest.LogCaptureFixture) -> None:
    from agentmesh import sim

    async def main() -> float:
        async with am.Mesh(slow_turn=0.05):
            await asyncio.sleep(100_000)  # virtual seconds: one jump, not a timer per tick
            return sim.now()

    caplog.set_level(logging.WARNING, logger="agentmesh.watchdog")
    started = time.monotonic()
    assert sim.run_virtual(main()) >= 100_000
    assert time.monotonic() - started < 5
    assert stall_records(caplog) == ([], [])


def test_slow_turn_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match="slow_turn"):
        am.Mesh(slow_turn=0)
    assert am.DEFAULT_SLOW_TURN == 0.5


@pytest.mark.slow
async def test_a_daemon_warns_on_stderr_naming_the_slow_agent() -> None:
    head = await start_daemon("head", "--listen", "127.0.0.1:0", "--slow-turn", "0.1")
    try:
        async with am.Mesh(join=head.address, ask_timeout=10.0) as driver:
            node = next(n.id for n in await driver.nodes() if n.role == "head")
            sleeper = await driver.spawn(Sleeper, name="far-sleeper", node=node)
            assert await sleeper.nap(0.5) == "rested"
            await wait_for(lambda: b"ran again" in head.log, timeout=10, what="the second line")
        lines = head.log.decode().splitlines()
        blocked = [line for line in lines if "(slow_turn=" in line]
        assert len(blocked) == 1, lines
        assert "agent 'far-sleeper' (Sleeper) in nap()" in blocked[0]
        assert "slow_turn=0.1s" in blocked[0]
    finally:
        await head.stop()

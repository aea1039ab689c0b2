"""Event-driven runs on the virtual clock: simulated time, and exact replay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentmesh as am
from agentmesh import sim

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Ticker(sim.SimAgent):
    def __init__(self) -> None:
        self.log: list[tuple[float, int]] = []

    async def on_start(self) -> None:
        self.schedule(1.0, "tick", 1)

    async def tick(self, n: int) -> None:
        self.log.append((self.now, n))
        if n < 4:
            self.schedule(1.5, "tick", n + 1)

    async def nap(self, seconds: float) -> float:
        await self.sleep(seconds)
        return self.now

    async def history(self) -> list[tuple[float, int]]:
        return self.log


def test_simulated_time_passes_only_by_timers() -> None:
    async def main() -> tuple[list[tuple[float, int]], float, float]:
        async with am.Mesh() as mesh:
            ticker = await mesh.spawn(Ticker)
            await sim.sleep_until(3600.0)  # an hour, at once
            woke = await ticker.nap(0.25)
            return await ticker.history(), woke, sim.now()

    log, woke, end = sim.run_virtual(main())
    assert log == [(1.0, 1), (2.5, 2), (4.0, 3), (5.5, 4)]
    assert woke == end == 3600.25


def test_ask_timeouts_are_in_simulated_time() -> None:
    async def main() -> float:
        async with am.Mesh(shutdown_timeout=1.0) as mesh:
            ticker = await mesh.spawn(Ticker)
            with pytest.raises(am.AskTimeout):
                await ticker.nap.ask(100.0, timeout=10.0)
            return sim.now()

    assert sim.run_virtual(main(), start=5.0) == 15.0


def test_sleep_and_schedule_are_not_messages() -> None:
    async def main() -> None:
        async with am.Mesh() as mesh:
            ticker = await mesh.spawn(Ticker)
            with pytest.raises(am.UnknownMethod):
                await ticker.sleep(1.0)
            with pytest.raises(am.UnknownMethod):
                await ticker.schedule(1.0, "tick", 9)

    sim.run_virtual(main())


class Gossip(sim.SimAgent):
    """Wakes at random simulated times, publishes, and tells a random peer."""

    def __init__(self, key: str, seed: int) -> None:
        self.key = key
        self.rng = sim.stream(seed, key)
        self.peers: list[am.AgentRef] = []
        self.heard: list[tuple[float, str, str]] = []

    async def meet(self, peers: list[am.AgentRef]) -> None:
        self.peers = peers
        self.schedule(self.rng.expovariate(1.0), "wake")

    async def wake(self) -> None:
        await self.publish("gossip", (self.key, self.now))
        peer = self.rng.choice(self.peers)
        await peer.hear.tell(self.key)  # not an ask: two waking at once would wait cycle
        if self.now < 50:
            self.schedule(self.rng.expovariate(1.0), "wake")

    @am.subscribe("gossip")
    async def on_gossip(self, news: tuple[str, float]) -> None:
        self.heard.append((self.now, "topic", news[0]))
        await self.sleep(self.rng.random() / 10)  # busy a while: others queue up

    async def hear(self, who: str) -> None:
        self.heard.append((self.now, "ask", who))

    async def log(self) -> list[tuple[float, str, str]]:
        return self.heard


def _gossip(seed: int) -> list[list[tuple[float, str, str]]]:
    async def main() -> list[list[tuple[float, str, str]]]:
        async with am.Mesh() as mesh:
            agents = [await mesh.spawn(Gossip, f"g{i}", seed) for i in range(12)]
            for agent in agents:
                await agent.meet(agents)
            await sim.sleep_until(60.0)
            return [await a.log() for a in agents]

    return sim.run_virtual(main())


def test_an_event_driven_run_replays_exactly() -> None:
    first = _gossip(3)
    assert sum(len(log) for log in first) > 500
    assert _gossip(3) == first
    assert _gossip(4) != first


def test_the_market_replays_across_processes() -> None:
    """Two processes with different string hashing still trade the same tape."""
    digests = set()
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "market.py"), "--traders", "8", "--seconds", "60"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert done.returncode == 0, done.stderr
        assert "replay       identical" in done.stdout
        digests.add(done.stdout.split("tape digest ")[1].split(")")[0])
    assert len(digests) == 1


def test_a_virtual_loop_is_an_ordinary_asyncio_loop() -> None:
    async def main() -> list[str]:
        order: list[str] = []

        async def later(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            order.append(name)

        await asyncio.gather(later("b", 2.0), later("a", 1.0), later("c", 2.0))
        return order

    assert sim.run_virtual(main()) == ["a", "b", "c"]

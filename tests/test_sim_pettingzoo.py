"""The PettingZoo adapter: PettingZoo's own API test, and a real environment end to end."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

import agentmesh as am
from agentmesh import sim

pytest.importorskip("pettingzoo")
pytest.importorskip("pygame")  # rps imports it for rendering

import pettingzoo

with warnings.catch_warnings():  # pettingzoo.test imports environments the old way
    warnings.simplefilter("ignore", DeprecationWarning)
    from pettingzoo.test import parallel_api_test


def rps(max_cycles: int = 150) -> Any:
    """Rock-paper-scissors, PettingZoo's classic parallel environment."""
    return pettingzoo.make("parallel", "classic/rps-v2", max_cycles=max_cycles)


class Player(sim.Policy):
    def __init__(self, seed: int, key: str) -> None:
        self.rng = sim.stream(seed, key)
        self.seen: list[Any] = []

    async def act(self, observation: Any) -> int:
        self.seen.append(int(observation))
        return self.rng.randrange(3)


class Absent(sim.Policy):
    async def act(self, observation: Any) -> int:
        await asyncio.Event().wait()
        return 2


def test_parallel_api_test_passes_through_the_adapter() -> None:
    parallel_api_test(sim.PettingZooEnv(rps()), num_cycles=200)


async def _play(seed: int, absent: str | None = None) -> sim.EpisodeResult:
    # With an absent player every step waits out the deadline: fewer, longer steps,
    # so the present player always answers in time even on a loaded machine.
    env = sim.PettingZooEnv(rps(max_cycles=10 if absent else 40))
    async with am.Mesh(shutdown_timeout=0.2) as mesh:
        policies = {a: await mesh.spawn(Player, seed, a) for a in env.possible_agents}
        if absent is not None:
            policies[absent] = await mesh.spawn(Absent)
        deadline = 0.3 if absent else 5.0
        return await sim.run_episode(mesh, env, policies, seed=seed, deadline=deadline)


async def test_rock_paper_scissors_runs_end_to_end_and_reproducibly() -> None:
    first = await _play(5)
    assert first.steps == 40
    assert sorted(first.returns) == ["player_0", "player_1"]
    assert first.returns["player_0"] == -first.returns["player_1"]  # zero-sum
    assert first.total_late == first.total_failed == 0
    assert (await _play(5)).digest == first.digest
    assert (await _play(6)).digest != first.digest


async def test_an_absent_player_plays_the_default_action_counted() -> None:
    result = await _play(5, absent="player_1")
    assert dict(result.late) == {"player_1": 10}
    assert result.total_failed == 0

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


def _play(seed: int, absent: str | None = None) -> sim.EpisodeResult:
    """An episode on a virtual clock (`sim.run_virtual`): answering takes no time and
    the deadline is exactly 0.05 s, so only an absent player is ever late, however
    loaded the machine is."""
    env = sim.PettingZooEnv(rps(max_cycles=40))

    async def main() -> sim.EpisodeResult:
        async with am.Mesh(shutdown_timeout=0.2, slow_turn=None) as mesh:
            policies = {a: await mesh.spawn(Player, seed, a) for a in env.possible_agents}
            if absent is not None:
                policies[absent] = await mesh.spawn(Absent)
            return await sim.run_episode(mesh, env, policies, seed=seed, deadline=0.05)

    return sim.run_virtual(main())


def test_rock_paper_scissors_runs_end_to_end_and_reproducibly() -> None:
    first = _play(5)
    assert first.steps == 40
    assert sorted(first.returns) == ["player_0", "player_1"]
    assert first.returns["player_0"] == -first.returns["player_1"]  # zero-sum
    assert first.total_late == first.total_failed == 0
    assert _play(5).digest == first.digest
    assert _play(6).digest != first.digest


def test_an_absent_player_plays_the_default_action_counted() -> None:
    result = _play(5, absent="player_1")
    assert dict(result.late) == {"player_1": 40}
    assert result.total_failed == 0

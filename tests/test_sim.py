"""The lockstep runner: deadlines, failures, batching, reproducibility, results."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import agentmesh as am
from agentmesh import sim


class Walk(sim.Env[int, int]):
    """Each agent walks a line; reward = its step; a random kick from the env's seed."""

    def __init__(self, n: int, length: int = 5) -> None:
        self.possible_agents = [f"a{i}" for i in range(n)]
        self.agents: list[str] = []
        self.length = length
        self.steps_seen: list[dict[str, int]] = []

    def reset(
        self, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
        self.rng = sim.stream(seed or 0, "env")
        self.agents = list(self.possible_agents)
        self.pos = dict.fromkeys(self.agents, 0)
        self.t = 0
        self.steps_seen = []
        return dict(self.pos), {a: {} for a in self.agents}

    def step(self, actions: Mapping[str, int]) -> sim.StepResult[int]:
        self.steps_seen.append(dict(actions))
        self.t += 1
        for a in self.agents:
            self.pos[a] += actions[a] + self.rng.randrange(2)
        rewards = {a: float(actions[a]) for a in self.agents}
        done = self.t >= self.length
        live = list(self.agents)
        if done:
            self.agents = []
        return (
            {a: self.pos[a] for a in live},
            rewards,
            dict.fromkeys(live, False),
            dict.fromkeys(live, done),
            {a: {} for a in live},
        )

    def default_action(self, agent: str) -> int:
        return -100

    def metrics(self) -> Mapping[str, float]:
        return {"spread": max(self.pos.values()) - min(self.pos.values())}


class Random(sim.Policy):
    def __init__(self, seed: int, key: str) -> None:
        self.rng = sim.stream(seed, key)
        self.calls = 0

    async def act(self, observation: int) -> int:
        self.calls += 1
        return self.rng.randrange(1, 4)


class Shuffled(Random):
    """Replies after a number of loop turns that differs on every run (not seeded),
    so replies arrive in a different order each time."""

    concurrency = 1
    _jitter = __import__("random").Random()  # deliberately unseeded

    async def act(self, observation: int) -> int:
        for _ in range(self._jitter.randrange(5)):
            await asyncio.sleep(0)
        return await super().act(observation)


class Stuck(sim.Policy):
    """Never answers until released: a policy that misses every deadline."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def act(self, observation: int) -> int:
        await self.release.wait()
        return 1


class Broken(sim.Policy):
    async def act(self, observation: int) -> int:
        raise ValueError("no idea")


async def _policies(mesh: am.Mesh, env: Walk, seed: int, cls: Any = Random) -> dict[str, Any]:
    return {a: await mesh.spawn(cls, seed, a) for a in env.possible_agents}


async def test_an_episode_applies_the_actions_and_records_each_step(mesh: am.Mesh) -> None:
    env = Walk(4, length=3)
    result = await sim.run_episode(mesh, env, await _policies(mesh, env, 1), seed=1)
    assert result.steps == 3
    assert [r.step for r in result.records] == [0, 1, 2]
    assert all(r.agents == 4 and r.late == 0 and r.failed == 0 for r in result.records)
    assert all(1 <= a <= 3 for step in env.steps_seen for a in step.values())
    assert result.total_reward == sum(sum(step.values()) for step in env.steps_seen)
    assert result.returns["a0"] == sum(step["a0"] for step in env.steps_seen)
    assert all("spread" in r.metrics for r in result.records)
    assert "3 steps, 4 agents" in result.summary()


def test_a_late_policy_gets_the_default_action_and_is_counted() -> None:
    # On a virtual clock (`sim.run_virtual`) answering takes no time and the deadline
    # is exactly 0.05 s however loaded the machine is: only the stuck policy is late.
    env = Walk(3, length=4)

    async def main() -> tuple[sim.EpisodeResult, float]:
        async with am.Mesh(shutdown_timeout=0.2, slow_turn=None) as mesh:
            policies = await _policies(mesh, env, 1)
            policies["a1"] = await mesh.spawn(Stuck)
            started = sim.now()
            result = await sim.run_episode(mesh, env, policies, seed=1, deadline=0.05)
            return result, sim.now() - started

    result, took = sim.run_virtual(main())
    assert [step["a1"] for step in env.steps_seen] == [-100] * 4
    assert all(step["a0"] != -100 and step["a2"] != -100 for step in env.steps_seen)
    assert dict(result.late) == {"a1": 4}
    assert [r.late for r in result.records] == [1, 1, 1, 1]
    assert result.total_failed == 0
    assert took == pytest.approx(4 * 0.05)  # each step waited out its deadline, no more


async def test_a_failing_policy_gets_the_default_action_and_its_error_is_kept(
    mesh: am.Mesh,
) -> None:
    env = Walk(2, length=2)
    policies = await _policies(mesh, env, 1)
    policies["a0"] = await mesh.spawn(Broken)
    result = await sim.run_episode(mesh, env, policies, seed=1)
    assert [step["a0"] for step in env.steps_seen] == [-100, -100]
    assert dict(result.failed) == {"a0": 2}
    assert result.errors["a0"] == "ValueError: no idea"
    assert result.total_late == 0


async def test_a_stopped_policy_counts_as_failed(mesh: am.Mesh) -> None:
    env = Walk(2, length=2)
    policies = await _policies(mesh, env, 1)
    await policies["a1"].stop()
    result = await sim.run_episode(mesh, env, policies, seed=1)
    assert dict(result.failed) == {"a1": 2}
    assert "AgentUnavailable" in result.errors["a1"]


async def test_every_agent_needs_a_policy(mesh: am.Mesh) -> None:
    env = Walk(3)
    policies = await _policies(mesh, env, 1)
    del policies["a2"]
    with pytest.raises(ValueError, match="a2"):
        await sim.run_episode(mesh, env, policies)


async def test_a_shared_policy_gets_one_batch_per_step(mesh: am.Mesh) -> None:
    env = Walk(6, length=3)
    left = await mesh.spawn(Random, 1, "left")
    right = await mesh.spawn(Random, 1, "right")
    policies = {a: (left if int(a[1:]) < 4 else right) for a in env.possible_agents}
    result = await sim.run_episode(mesh, env, policies, seed=1)
    assert result.total_late == result.total_failed == 0
    instance = mesh._node.cells[left.id].instance
    assert isinstance(instance, Random)
    assert instance.calls == 4 * 3  # act once per agent, inside act_batch
    assert mesh._node.cells[left.id].handled == 3  # one message per step


async def test_the_same_seed_gives_the_same_trajectory_however_replies_interleave() -> None:
    digests = []
    for _ in range(3):
        async with am.Mesh() as mesh:
            env = Walk(30, length=6)
            policies = await _policies(mesh, env, 42, Shuffled)
            result = await sim.run_episode(mesh, env, policies, seed=42)
            assert result.total_late == 0
            digests.append((result.digest, env.steps_seen))
    assert digests[0] == digests[1] == digests[2]
    async with am.Mesh() as mesh:
        env = Walk(30, length=6)
        other = await sim.run_episode(mesh, env, await _policies(mesh, env, 43), seed=43)
    assert other.digest != digests[0][0]


async def _make_policies(mesh: am.Mesh, env: sim.Env[Any, Any], seed: int) -> dict[str, Any]:
    return {a: await mesh.spawn(Random, seed, a) for a in env.possible_agents}


def _make_env() -> Walk:
    return Walk(5, length=4)


async def test_episodes_run_in_parallel_in_order_and_reproducibly(mesh: am.Mesh) -> None:
    first = await sim.run_episodes(
        mesh, _make_env, _make_policies, episodes=4, seed=10, parallel=4, progress=False
    )
    again = await sim.run_episodes(
        mesh, _make_env, _make_policies, episodes=4, seed=10, parallel=2, progress=False
    )
    assert [r.episode for r in first] == [0, 1, 2, 3]
    assert [r.seed for r in first] == [10, 11, 12, 13]
    assert [r.digest for r in first] == [r.digest for r in again]
    assert len({r.digest for r in first}) == 4
    assert await mesh.agents() == []


def test_results_go_to_csv_and_json(tmp_path: Path) -> None:
    async def run() -> list[sim.EpisodeResult]:
        async with am.Mesh() as mesh:
            return await sim.run_episodes(
                mesh, _make_env, _make_policies, episodes=2, progress=False
            )

    results = am.run(run())
    text = sim.write_csv(results, tmp_path / "r.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 8
    assert rows[0].keys() >= {"episode", "step", "reward", "late", "failed", "spread"}
    assert float(rows[5]["reward"]) == results[1].records[1].reward
    data = json.loads(sim.write_json(results, tmp_path / "r.json").read_text())
    assert [e["digest"] for e in data["episodes"]] == [r.digest for r in results]
    assert data["episodes"][0]["records"][2]["metrics"]["spread"] >= 0


def test_streams_do_not_depend_on_the_process() -> None:
    assert sim.stream(7, "prey_1").random() == sim.stream("7", "prey_1").random()
    assert sim.stream(7, "prey_1").random() != sim.stream(7, "prey_2").random()
    assert sim.stream(7, "a").randrange(10**9) == 112_417_932  # fixed, not hash()-based

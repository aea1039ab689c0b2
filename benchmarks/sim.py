"""The lockstep runner against a plain in-process loop calling the same policies.

A grid walk of N agents: each step every live agent's policy picks a move from its
observation (its cell and the nearest wall) with its own seeded stream, and the
environment applies the moves. "plain" calls each policy object's ``act`` (or
``act_batch``) directly in a loop; "runner" is `sim.run_episode` with the same
policy classes spawned as agents, on the embedded mesh or on node processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import agentmesh as am
from agentmesh import sim

SIZE = 200
MOVES = ((0, 0), (0, -1), (0, 1), (1, 0), (-1, 0))

Obs = tuple[int, int]


class Walk(sim.Env[Obs, int]):
    def __init__(self, agents: int) -> None:
        self.possible_agents = [f"w{i:06d}" for i in range(agents)]
        self.agents: list[str] = []

    def reset(
        self, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Obs], dict[str, dict[str, Any]]]:
        rng = sim.stream(seed or 0, "env")
        self.agents = list(self.possible_agents)
        self.where = {a: (rng.randrange(SIZE), rng.randrange(SIZE)) for a in self.agents}
        return dict(self.where), {a: {} for a in self.agents}

    def step(self, actions: Mapping[str, int]) -> sim.StepResult[Obs]:
        where = self.where
        rewards: dict[str, float] = {}
        for agent, action in actions.items():
            dx, dy = MOVES[action]
            x, y = where[agent]
            where[agent] = ((x + dx) % SIZE, (y + dy) % SIZE)
            rewards[agent] = 1.0 if where[agent][0] == 0 else 0.0
        false = dict.fromkeys(self.agents, False)
        return dict(where), rewards, false, false, {}

    def default_action(self, agent: str) -> int:
        return 0


class Walker(sim.Policy):
    def __init__(self, seed: int, key: str) -> None:
        self.rng = sim.stream(seed, key)

    async def act(self, observation: Obs) -> int:
        x, _ = observation
        return 4 if x < 10 and self.rng.random() < 0.5 else self.rng.randrange(5)


def _groups(agents: list[str], group: int) -> list[list[str]]:
    return [agents[k : k + group] for k in range(0, len(agents), group)]


async def plain_loop(agents: int, steps: int, group: int) -> float:
    """Seconds for ``steps`` steps calling the policy objects directly."""
    env = Walk(agents)
    policies: dict[str, Walker] = {}
    for chunk in _groups(env.possible_agents, group):
        policies.update(dict.fromkeys(chunk, Walker(1, chunk[0])))
    observations, _ = env.reset(seed=1)
    started = time.perf_counter()
    for _ in range(steps):
        actions: dict[str, int] = {}
        if group == 1:
            for agent in env.agents:
                actions[agent] = await policies[agent].act(observations[agent])
        else:
            for chunk in _groups(env.agents, group):
                batch = {a: observations[a] for a in chunk}
                actions.update(await policies[chunk[0]].act_batch(batch))
        observations, *_ = env.step(actions)
    return time.perf_counter() - started


async def runner(agents: int, steps: int, group: int, nodes: int = 0) -> float:
    """Seconds of `sim.run_episode` for the same walk (spawning excluded)."""
    env = Walk(agents)
    async with sim.open_local_cluster(nodes) as mesh:
        workers = sorted(n.id for n in await mesh.nodes() if n.role == "worker")
        chunks = _groups(env.possible_agents, group)
        policies: dict[str, am.AgentRef] = {}
        for w, node in enumerate(workers or [None]):  # one batch per node
            mine = chunks[w :: max(1, len(workers))]
            refs = await mesh.spawn_many(Walker, [(1, chunk[0]) for chunk in mine], node=node)
            for chunk, ref in zip(mine, refs, strict=True):
                policies.update(dict.fromkeys(chunk, ref))
        result = await sim.run_episode(mesh, env, policies, seed=1, max_steps=steps, deadline=60)
        assert result.total_late == result.total_failed == 0
        return result.seconds

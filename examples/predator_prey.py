"""Predator-prey: a grid world of thousands of agents, stepped in lockstep.

Predators and prey live on a wrapping grid. Every step each live agent sees the
nearest agent of the other kind within a few cells, and its policy (an agent of the
mesh, with its own seeded random stream) picks a move: predators chase, prey flee,
both wander when they see nobody. A predator that ends its move on prey eats it
(+1 reward; -1 for the prey, which earns 0.1 a step alive) and regains energy; one
whose energy runs out starves. Eaten prey and starved predators leave the episode, as
in PettingZoo's parallel API.

The runner sends each step's observations to all policies at once and waits at most
``--deadline`` seconds; a late policy's agent stays put (the default action), and the
summary counts it. The same seed gives the same trajectory digest on the embedded
mesh and on ``--nodes N`` local node processes.

    python examples/predator_prey.py --agents 2000 --steps 100 --seed 7
    python examples/predator_prey.py --agents 2000 --steps 50 --nodes 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import agentmesh as am
from agentmesh import sim

MOVES = ((0, 0), (0, -1), (0, 1), (1, 0), (-1, 0))  # stay, north, south, east, west
VIEW = 4  # how far an agent sees, in cells
START_ENERGY = 20
MEAL = 10
SURVIVAL = 0.1  # a prey's reward for each step it lives through

Observation = tuple[int, int] | None  # offset to the nearest other-kind agent, if any


class PredatorPrey(sim.Env[Observation, int]):
    """The grid world: ``predators`` hunters and ``prey`` on a ``size`` x ``size`` torus."""

    def __init__(self, predators: int, prey: int, size: int) -> None:
        self.size = size
        self.possible_agents = [f"predator_{i:05d}" for i in range(predators)]
        self.possible_agents += [f"prey_{i:05d}" for i in range(prey)]
        self.agents: list[str] = []
        self.where: dict[str, tuple[int, int]] = {}
        self.energy: dict[str, int] = {}
        self.captures = 0

    def reset(
        self, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Observation], dict[str, dict[str, Any]]]:
        rng = sim.stream(seed or 0, "env")
        self.agents = list(self.possible_agents)
        cells = rng.sample(range(self.size * self.size), len(self.agents))
        self.where = {a: divmod(c, self.size) for a, c in zip(self.agents, cells, strict=True)}
        self.energy = {a: START_ENERGY for a in self.agents if a.startswith("predator")}
        self.captures = 0
        return self._observe(), {a: {} for a in self.agents}

    def default_action(self, agent: str) -> int:
        return 0  # stay

    def step(self, actions: Mapping[str, int]) -> sim.StepResult[Observation]:
        size = self.size
        for agent in self.agents:  # moves, in agent-id order
            dx, dy = MOVES[actions[agent]]
            x, y = self.where[agent]
            self.where[agent] = ((x + dx) % size, (y + dy) % size)
        rewards = {a: 0.0 if a.startswith("predator") else SURVIVAL for a in self.agents}
        prey_at: dict[tuple[int, int], list[str]] = {}
        for agent in self.agents:
            if agent.startswith("prey"):
                prey_at.setdefault(self.where[agent], []).append(agent)
        gone: set[str] = set()
        self.captures = 0
        for agent in self.agents:
            if not agent.startswith("predator"):
                continue
            self.energy[agent] -= 1
            victims = prey_at.get(self.where[agent])
            if victims:
                victim = victims.pop(0)
                gone.add(victim)
                rewards[agent] += 1.0
                rewards[victim] -= 1.0
                self.energy[agent] += MEAL
                self.captures += 1
            if self.energy[agent] <= 0:
                gone.add(agent)
        terminations = {a: a in gone for a in self.agents}
        truncations = dict.fromkeys(self.agents, False)
        self.agents = [a for a in self.agents if a not in gone]
        for agent in gone:
            del self.where[agent]
        return self._observe(), rewards, terminations, truncations, {a: {} for a in rewards}

    def _observe(self) -> dict[str, Observation]:
        """For each agent, the offset to the nearest agent of the other kind."""
        grid: dict[tuple[int, int], tuple[bool, bool]] = {}
        for agent in self.agents:
            pred, prey = grid.get(self.where[agent], (False, False))
            if agent.startswith("predator"):
                grid[self.where[agent]] = (True, prey)
            else:
                grid[self.where[agent]] = (pred, True)
        size = self.size
        out: dict[str, Observation] = {}
        for agent in self.agents:
            x, y = self.where[agent]
            wants = 1 if agent.startswith("predator") else 0  # look for prey / predators
            out[agent] = None
            for dx, dy in _RING_ORDER:
                seen = grid.get(((x + dx) % size, (y + dy) % size))
                if seen is not None and seen[wants]:
                    out[agent] = (dx, dy)
                    break
        return out

    def metrics(self) -> Mapping[str, float]:
        predators = sum(1 for a in self.agents if a.startswith("predator"))
        return {
            "predators": predators,
            "prey": len(self.agents) - predators,
            "captures": self.captures,
        }


# Offsets within VIEW, nearest first (ties in a fixed order): the search order above.
_RING_ORDER = sorted(
    ((dx, dy) for dx in range(-VIEW, VIEW + 1) for dy in range(-VIEW, VIEW + 1)),
    key=lambda d: (abs(d[0]) + abs(d[1]), d),
)


def _toward(offset: tuple[int, int]) -> int:
    dx, dy = offset
    if abs(dx) >= abs(dy) and dx:
        return 3 if dx > 0 else 4
    if dy:
        return 2 if dy > 0 else 1
    return 0


class Hunter(sim.Policy):
    """A predator's policy: chase the prey in sight, else wander."""

    def __init__(self, seed: int, key: str) -> None:
        self.rng = sim.stream(seed, key)

    async def act(self, observation: Observation) -> int:
        roll = self.rng.randrange(5)  # drawn every step: one stream, one pace
        if observation is None:
            return roll
        return _toward(observation)


class Runner(sim.Policy):
    """A prey's policy: run from the predator in sight, else wander."""

    def __init__(self, seed: int, key: str) -> None:
        self.rng = sim.stream(seed, key)

    async def act(self, observation: Observation) -> int:
        roll = self.rng.randrange(5)
        if observation is None:
            return roll
        return _toward((-observation[0], -observation[1]))


async def spawn_policies(
    mesh: am.Mesh, agents: list[str], seed: int, group: int, nodes: list[str]
) -> dict[str, am.AgentRef]:
    """One policy agent per ``group`` environment agents of a kind, spread over
    ``nodes`` in turn (here, if none)."""
    policies: dict[str, am.AgentRef] = {}
    for kind, cls in (("predator", Hunter), ("prey", Runner)):
        mine = [a for a in agents if a.startswith(kind)]
        for k in range(0, len(mine), group):
            chunk = mine[k : k + group]
            node = nodes[(k // group) % len(nodes)] if nodes else None
            ref = await mesh.spawn(cls, seed, chunk[0], node=node)
            policies.update(dict.fromkeys(chunk, ref))
    return policies


async def main(args: argparse.Namespace) -> sim.EpisodeResult:
    predators = max(1, args.agents // 5)
    env = PredatorPrey(predators, args.agents - predators, args.size)
    async with sim.open_local_cluster(args.nodes) as mesh:
        workers = sorted(n.id for n in await mesh.nodes() if n.role == "worker")
        started = time.perf_counter()
        policies = await spawn_policies(mesh, env.possible_agents, args.seed, args.group, workers)
        spawned = time.perf_counter() - started
        bar = sim.ProgressBar(args.steps, "steps")
        try:
            result = await sim.run_episode(
                mesh,
                env,
                policies,
                seed=args.seed,
                deadline=args.deadline,
                max_steps=args.steps,
                progress=bar,
            )
        finally:
            bar.close()
    where = f"{args.nodes} node processes" if args.nodes else "the embedded mesh"
    distinct = len(set(policies.values()))
    hosts = len({ref.node for ref in policies.values()})
    print(f"predator-prey: {args.agents} agents on a {args.size}x{args.size} grid, {where}")
    print(f"  policies     {distinct} policy agents on {hosts} node(s), spawned in {spawned:.2f} s")
    print(f"  steps        {result.steps} in {result.seconds:.2f} s "
          f"({result.steps / max(result.seconds, 1e-9):.1f} steps/s)")  # fmt: skip
    last = result.records[-1].metrics if result.records else {}
    predators, prey = last.get("predators", 0), last.get("prey", 0)
    print(f"  survivors    {predators:.0f} predators, {prey:.0f} prey")
    captures = sum(r.metrics.get("captures", 0) for r in result.records)
    print(f"  captures     {captures:.0f}")
    print(f"  defaults     late {result.total_late}, failed {result.total_failed}")
    print(f"  digest       {result.digest}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, after the run)
    sim.write_csv([result], out / "predator_prey.csv")
    sim.write_json([result], out / "predator_prey.json")
    plots = write_plots(result, args, out)
    print(f"  results      {out / 'predator_prey.csv'}, .json; plot {plots}")
    return result


def write_plots(result: sim.EpisodeResult, args: argparse.Namespace, out: Path) -> str:
    """The run as a figure: PNG and SVG with matplotlib (the plot extra), else the
    built-in PNG (`make demo` installs only the runtime dependencies)."""
    title = (
        f"Predator-prey: {args.agents} agents on a {args.size}x{args.size} grid, seed {args.seed}"
    )
    try:
        png = sim.plot([result], out / "predator_prey.png", title=title)
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        png = sim.plot_png([result], out / "predator_prey.png")
        return f"{png} (built in; pip install 'agentmesh[plot]' for titled axes and SVG)"
    sim.plot([result], out / "predator_prey.svg", title=title)
    return f"{png}, .svg"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2000, help="agents (default 2000)")
    parser.add_argument("--steps", type=int, default=100, help="steps (default 100)")
    parser.add_argument("--size", type=int, default=0, help="grid side (default: from --agents)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--nodes", type=int, default=0, help="local node processes (default 0)")
    parser.add_argument("--group", type=int, default=1, help="env agents per policy agent")
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--out", default="sim-results", help="folder for CSV, JSON, PNG")
    args = parser.parse_args()
    if args.agents < 2:
        parser.error("--agents must be at least 2")
    if args.group < 1:
        parser.error("--group must be at least 1")
    args.size = args.size or max(8, int((args.agents * 4) ** 0.5))
    if args.size * args.size < args.agents:
        parser.error("--size too small for --agents")
    return args


if __name__ == "__main__":
    am.run(main(parse_args()))
    sys.exit(0)

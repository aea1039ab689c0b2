"""The lockstep runner: one episode (`run_episode`) or many in parallel across the
mesh's nodes (`run_episodes`)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping
from itertools import repeat
from operator import add
from typing import TYPE_CHECKING, Any

from ..kernel.agent import Agent
from ..kernel.ref import AgentRef
from ..mesh import node_of
from .env import Env
from .fanout import Collected, LocalFanout, NodeFanout
from .progress import ProgressBar
from .results import EpisodeResult, StepRecord

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["DEFAULT_DEADLINE", "run_episode", "run_episodes"]

#: Seconds each step waits for actions before applying default actions.
DEFAULT_DEADLINE = 5.0

PolicyFactory = Callable[["Mesh", Env[Any, Any], int], Awaitable[Mapping[str, AgentRef]]]


class _Stepper:
    """Asks for one step's actions: this node's policies directly, each other node's
    through a `NodeFanout` agent on that node."""

    def __init__(self, mesh: Mesh, policies: Mapping[str, AgentRef]) -> None:
        self.mesh = mesh
        node = node_of(mesh)
        here: dict[str, AgentRef] = {}
        self.elsewhere: dict[str, dict[str, AgentRef]] = {}
        for agent, ref in policies.items():
            if ref.node == node.id or node.cell_of(ref) is not None:
                here[agent] = ref
            else:
                self.elsewhere.setdefault(ref.node, {})[agent] = ref
        self.local = LocalFanout(here, node)
        self.remote: list[tuple[AgentRef, frozenset[str]]] = []

    async def start(self) -> None:
        for node_id, policies in sorted(self.elsewhere.items()):
            fanout = await self.mesh.spawn(NodeFanout, policies, node=node_id)
            self.remote.append((fanout, frozenset(policies)))

    async def stop(self) -> None:
        for fanout, _ in self.remote:
            await fanout.stop()

    async def collect(self, observations: Mapping[str, Any], timeout: float) -> Collected:
        asks = [
            (
                agents,
                fanout.collect.ask(
                    {a: o for a, o in observations.items() if a in agents},
                    timeout,
                    timeout=timeout + 1.0,  # its own deadline is `timeout`; this is for the wire
                ),
            )
            for fanout, agents in self.remote
        ]
        if not asks:
            return await self.local.collect(observations, timeout)
        tasks = [asyncio.ensure_future(coro) for _, coro in asks]
        out = await self.local.collect(observations, timeout)
        for (agents, _), task in zip(asks, tasks, strict=True):
            live = sorted(a for a in agents if a in observations)
            try:
                out.merge(await task)
            except Exception as exc:  # the node's fanout failed or is gone
                out.failed.update(dict.fromkeys(live, f"{type(exc).__name__}: {exc}"))
        return out


def _pack(values: Iterable[Any]) -> bytes:
    """The exact bytes of a step's actions: machine integers when they all are."""
    values = tuple(values)
    try:
        return array("q", values).tobytes()
    except (TypeError, OverflowError):
        return repr(values).encode()


#: Every agent's return starts at 0.0 (`_Tally.add`'s default for ``returns.get``).
_ZEROS = repeat(0.0)


class _Tally:
    """Accumulates an episode: returns, default-action counts, the digest."""

    def __init__(self, episode: int) -> None:
        self.episode = episode
        self.returns: dict[str, float] = {}
        self.late: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.records: list[StepRecord] = []
        self.hash = hashlib.sha256()
        self.ids: list[str] = []

    def add(
        self,
        step: int,
        actions: Mapping[str, Any],
        rewards: Mapping[str, float],
        got: Collected,
        seconds: float,
        metrics: Mapping[str, float],
    ) -> StepRecord:
        returns = self.returns
        # returns[agent] += reward for each agent, in C: one lookup, one sum, one store.
        sums = map(add, map(returns.get, rewards, _ZEROS), rewards.values())
        returns.update(zip(rewards, sums, strict=True))
        for agent in got.late:
            self.late[agent] = self.late.get(agent, 0) + 1
        for agent, error in got.failed.items():
            self.failed[agent] = self.failed.get(agent, 0) + 1
            self.errors.setdefault(agent, error)
        # In the environment's agent order (never arrival order), ids only when the
        # live set changes: cheap enough for 10,000 agents a step.
        ids = list(actions)
        if ids != self.ids:
            self.ids = ids
            self.hash.update(repr(ids).encode())
        self.hash.update(b"step %d" % step)
        self.hash.update(_pack(actions.values()))
        if list(rewards) != ids:
            self.hash.update(repr(list(rewards)).encode())
        self.hash.update(array("d", rewards.values()).tobytes())
        record = StepRecord(
            self.episode,
            step,
            len(actions),
            float(sum(rewards.values())),
            len(got.late),
            len(got.failed),
            seconds,
            dict(metrics),
        )
        self.records.append(record)
        return record


async def run_episode(
    mesh: Mesh,
    env: Env[Any, Any],
    policies: Mapping[str, AgentRef],
    *,
    seed: int = 0,
    episode: int = 0,
    deadline: float | None = DEFAULT_DEADLINE,
    max_steps: int | None = None,
    progress: ProgressBar | None = None,
) -> EpisodeResult:
    """Run one episode of ``env`` here, its policies wherever they live.

    ``policies`` maps every environment agent id to the policy agent acting for it
    (several ids may share one agent: it is then sent one `Policy.act_batch` per
    step). Each step sends the live agents' observations out concurrently and waits
    at most ``deadline`` seconds (None: the mesh's ask timeout); an agent whose
    policy is late or raised gets ``env.default_action(agent)``, counted in the
    result's ``late`` / ``failed``. The episode ends when no agent is live or after
    ``max_steps``. ``env.reset(seed=seed)`` starts it: same seed, same policies'
    seeds, no late actions, same trajectory (same ``digest``), wherever they run.
    """
    missing = sorted(set(env.possible_agents) - set(policies))
    if missing:
        raise ValueError(f"no policy for agents {missing[:5]}{'...' if len(missing) > 5 else ''}")
    timeout = node_of(mesh).ask_timeout if deadline is None else deadline
    stepper = _Stepper(mesh, policies)
    await stepper.start()
    tally = _Tally(episode)
    started = time.perf_counter()
    try:
        observations, _ = env.reset(seed=seed)
        step = 0
        while env.agents and (max_steps is None or step < max_steps):
            t0 = time.perf_counter()
            live = list(env.agents)
            if len(observations) != len(live) or not all(map(observations.__contains__, live)):
                observations = {a: observations.get(a) for a in live}  # only the live
            got = await stepper.collect(observations, timeout)
            received = got.actions
            try:  # every live agent has an action (the common case): built in C
                actions = dict(zip(live, map(received.__getitem__, live), strict=True))
            except KeyError:
                actions = {a: received[a] if a in received else env.default_action(a) for a in live}
            observations, rewards, _, _, _ = env.step(actions)
            record = tally.add(step, actions, rewards, got, time.perf_counter() - t0, env.metrics())
            step += 1
            if progress is not None:
                progress.advance(note=f"reward {record.reward:,.1f}")
    finally:
        await stepper.stop()
    return EpisodeResult(
        episode,
        seed,
        len(tally.records),
        time.perf_counter() - started,
        tally.returns,
        tally.late,
        tally.failed,
        tally.errors,
        tuple(tally.records),
        tally.hash.hexdigest(),
    )


class EpisodeHost(Agent):
    """Runs episodes on its node: builds the environment and its policies there."""

    def __init__(self, make_env: Callable[[], Env[Any, Any]], make_policies: PolicyFactory) -> None:
        self._make_env = make_env
        self._make_policies = make_policies

    async def run(
        self, episode: int, seed: int, deadline: float | None, max_steps: int | None
    ) -> EpisodeResult:
        env = self._make_env()
        policies = await self._make_policies(self.mesh, env, seed)
        try:
            return await run_episode(
                self.mesh,
                env,
                policies,
                seed=seed,
                episode=episode,
                deadline=deadline,
                max_steps=max_steps,
            )
        finally:
            for ref in sorted(set(policies.values())):
                await ref.stop()
            env.close()


async def run_episodes(
    mesh: Mesh,
    make_env: Callable[[], Env[Any, Any]],
    make_policies: PolicyFactory,
    *,
    episodes: int = 1,
    seed: int = 0,
    parallel: int | None = None,
    deadline: float | None = DEFAULT_DEADLINE,
    max_steps: int | None = None,
    progress: bool | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes, up to ``parallel`` at once, across the mesh's nodes.

    Episode ``i`` runs on a host agent on the ``i % n``-th node able to host agents
    (the workers of a cluster, else this node): there ``make_env()`` builds the
    environment and ``await make_policies(mesh, env, seed)`` spawns its policies
    (on that node, through the ``mesh`` it is given) and returns the mapping from
    agent id to policy; they are stopped after the episode. Its seed is ``seed + i``.
    Results come back in episode order. ``progress`` shows a bar of episodes done
    (default: when stderr is a terminal). Both factories must pickle to reach other
    nodes (module-level functions, or defined in the script being run).
    """
    nodes = await _hosting_nodes(mesh)
    limit = asyncio.Semaphore(parallel or max(len(nodes), 1))
    bar = ProgressBar(episodes, "episodes", enabled=progress)

    async def one(i: int) -> EpisodeResult:
        async with limit:
            node = nodes[i % len(nodes)] if nodes else None
            host = await mesh.spawn(EpisodeHost, make_env, make_policies, node=node)
            try:
                result: EpisodeResult = await host.run.ask(
                    i, seed + i, deadline, max_steps, timeout=_episode_timeout(mesh)
                )
            finally:
                await host.stop()
            bar.advance(note=f"last: reward {result.total_reward:,.1f}")
            return result

    try:
        return list(await asyncio.gather(*(one(i) for i in range(episodes))))
    finally:
        bar.close()


def _episode_timeout(mesh: Mesh) -> float:
    return max(node_of(mesh).ask_timeout, 24 * 3600.0)  # an episode may take long


async def _hosting_nodes(mesh: Mesh) -> list[str]:
    return sorted(n.id for n in await mesh.nodes() if n.role == "worker" and n.alive)

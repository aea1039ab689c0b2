"""`PettingZooEnv`: any PettingZoo ``ParallelEnv`` as an `Env`, as it is.

PettingZoo is not imported here (it is an optional extra: ``pip install
'agentmesh[pettingzoo]'``); the adapter only calls the parallel API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .env import Env, StepResult

__all__ = ["PettingZooEnv"]

_UNSET: Any = object()


class PettingZooEnv(Env[Any, Any]):
    """Wraps a PettingZoo ``ParallelEnv`` so the runner can drive it.

    Everything is forwarded: ``reset``, ``step``, ``agents`` (as of the last reset
    or step), ``possible_agents``,
    ``observation_space``, ``action_space``, ``render``, ``state``, ``close``,
    ``metadata``; the wrapper is itself a valid ``ParallelEnv`` (PettingZoo's
    ``parallel_api_test`` passes through it). ``default_action`` is the action for a
    late or failed policy: a value, or a function of the agent id; by default the
    first action of a ``Discrete`` space, else a sample of the action space seeded
    from the episode's seed (so it is reproducible too).

    Example::

        env = sim.PettingZooEnv(pettingzoo.make("parallel", "classic/rps-v2", max_cycles=50))
        result = await sim.run_episode(mesh, env, policies, seed=1)
    """

    def __init__(self, env: Any, default_action: Any = _UNSET) -> None:
        self.env = env
        self._default = default_action
        self.possible_agents = list(env.possible_agents)
        self.agents = list(env.agents) if hasattr(env, "agents") else []
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def reset(
        self, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        if seed is not None:
            for agent in self.possible_agents:
                self.env.action_space(agent).seed(seed)
        observations, infos = self.env.reset(
            seed=seed, options=None if options is None else dict(options)
        )
        self.agents = list(self.env.agents)
        return observations, infos

    def step(self, actions: Mapping[str, Any]) -> StepResult[Any]:
        observations, rewards, terminations, truncations, infos = self.env.step(dict(actions))
        self.agents = list(self.env.agents)
        return observations, rewards, terminations, truncations, infos

    def default_action(self, agent: str) -> Any:
        if self._default is not _UNSET:
            chosen = self._default
            return chosen(agent) if callable(chosen) else chosen
        space = self.env.action_space(agent)
        if type(space).__name__ == "Discrete":
            return int(space.start)
        return space.sample()

    def metrics(self) -> Mapping[str, float]:
        return {"agents": float(len(self.env.agents))}

    def observation_space(self, agent: str) -> Any:
        return self.env.observation_space(agent)

    def action_space(self, agent: str) -> Any:
        return self.env.action_space(agent)

    def render(self) -> Any:
        return self.env.render()

    def state(self) -> Any:
        return self.env.state()

    def close(self) -> None:
        self.env.close()

    @property
    def num_agents(self) -> int:
        return len(self.env.agents)

    @property
    def max_num_agents(self) -> int:
        return len(self.possible_agents)

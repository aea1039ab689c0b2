"""`Env`: the environment interface, shaped like PettingZoo's parallel API."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Env", "StepResult"]

Obs = TypeVar("Obs")
Act = TypeVar("Act")

#: What `Env.step` returns: observations, rewards, terminations, truncations, infos.
StepResult = tuple[
    dict[str, Obs],
    dict[str, float],
    dict[str, bool],
    dict[str, bool],
    dict[str, dict[str, Any]],
]


class Env(ABC, Generic[Obs, Act]):
    """A multi-agent environment stepped in lockstep, as PettingZoo's ``ParallelEnv``.

    ``possible_agents`` lists every agent id that may ever take part; ``agents`` the
    ones still live (the runner asks only them for actions). `reset` and `step` have
    PettingZoo's signatures and return values, so a PettingZoo environment fits
    through `PettingZooEnv` and one of ours can be checked by PettingZoo's own tests.

    Two additions serve the runner: `default_action` is applied for an agent whose
    policy missed the step deadline or failed (and the runner counts it), and
    `metrics` reports the environment's own per-step figures (population, captures
    ...), recorded beside the rewards. Determinism is the environment's job too: all
    its randomness must come from the ``seed`` given to `reset`.
    """

    possible_agents: list[str]
    agents: list[str]
    metadata: dict[str, Any] = {}  # noqa: RUF012 (PettingZoo's class attribute)

    @abstractmethod
    def reset(
        self, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Obs], dict[str, dict[str, Any]]]:
        """Start an episode: observations and infos of every live agent."""

    @abstractmethod
    def step(self, actions: Mapping[str, Act]) -> StepResult[Obs]:
        """Apply one action per live agent; advance the world by one step."""

    @abstractmethod
    def default_action(self, agent: str) -> Act:
        """The action taken for ``agent`` when its policy is late or failed."""

    def metrics(self) -> Mapping[str, float]:
        """Figures of the world after the last step, recorded per step (none by default)."""
        return {}

    def close(self) -> None:
        """Release what the environment holds (nothing by default)."""

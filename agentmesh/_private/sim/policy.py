"""`Policy`: the agent that chooses actions, and seeded random streams."""

from __future__ import annotations

import random
from typing import Any

from ..kernel.agent import Agent

__all__ = ["Policy", "stream"]


def stream(seed: int | str, key: str) -> random.Random:
    """A random stream for ``key`` (an agent id) under ``seed``.

    Seeded from the string ``f"{seed}:{key}"``, which `random.Random` hashes with
    SHA-512, not with Python's per-process ``hash()``: the same seed and key give the
    same numbers in every process, on every node.
    """
    return random.Random(f"{seed}:{key}")


class Policy(Agent):
    """An agent that acts in an environment: override ``act(observation)``.

    Any agent with ``async def act(self, observation)`` can be a policy; this base
    class adds `act_batch`, which the runner uses when one policy agent serves
    several environment agents (one message per step instead of one per agent).

    Example::

        class Walker(sim.Policy):
            def __init__(self, seed: int, key: str) -> None:
                self.rng = sim.stream(seed, key)

            async def act(self, observation: int) -> int:
                return self.rng.randrange(4)
    """

    async def act(self, observation: Any) -> Any:
        """The action for ``observation``."""
        raise NotImplementedError(f"{type(self).__qualname__} must define act()")

    async def act_batch(self, observations: dict[str, Any]) -> dict[str, Any]:
        """Actions for several environment agents, by agent id.

        Calls `act` for each, in agent-id order, so a policy's random stream is
        consumed in the same order on every run. A failure in one agent's `act`
        fails the whole batch (each of its agents gets the default action).
        """
        return {agent: await self.act(observations[agent]) for agent in sorted(observations)}

"""One step's round of asks: observations out to the policies, actions back by a
deadline; late and failed policies are named, never hidden.

Policies on this node are asked all at once (`Node.ask_each`: an idle policy's turn
runs straight from one batch, its answer goes into a list by position; no future,
task or envelope per ask), which is what lets thousands of policy agents step
together. Policies
on other nodes are asked through one `NodeFanout` agent per node, so a step costs one
message per node on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..kernel.agent import Agent
from ..kernel.answers import PENDING
from ..kernel.errors import AskTimeout, RemoteError
from ..kernel.node import Node
from ..kernel.ref import AgentRef

__all__ = ["Collected", "LocalFanout", "NodeFanout"]


@dataclass
class Collected:
    """The outcome of one round: actions received, and who was late or failed."""

    actions: dict[str, Any] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # agent -> "Type: message"

    def merge(self, other: Collected) -> None:
        self.actions.update(other.actions)
        self.late.extend(other.late)
        self.failed.update(other.failed)


@dataclass
class _Group:
    """One policy agent and the environment agents it acts for (sorted)."""

    ref: AgentRef
    agents: tuple[str, ...]
    members: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.members = frozenset(self.agents)


def groups_of(policies: Mapping[str, AgentRef]) -> list[_Group]:
    """Environment agents grouped by the policy agent serving them, in agent order."""
    by_ref: dict[AgentRef, list[str]] = {}
    for agent in sorted(policies):
        by_ref.setdefault(policies[agent], []).append(agent)
    return [_Group(ref, tuple(agents)) for ref, agents in by_ref.items()]


class LocalFanout:
    """Asks policies for actions, all at once (`Node.ask_each`): one round for the
    policies that serve one agent each, one for those that serve several."""

    def __init__(self, policies: Mapping[str, AgentRef], node: Node) -> None:
        self.node = node
        groups = groups_of(policies)
        # One policy agent per environment agent (the common case), and the rest.
        singles = [g for g in groups if len(g.agents) == 1]
        self.single_agents = [g.agents[0] for g in singles]
        self.single_refs = [g.ref for g in singles]
        self.groups = [g for g in groups if len(g.agents) > 1]

    async def collect(self, observations: Mapping[str, Any], timeout: float) -> Collected:
        """Ask every live agent's policy for its action; wait at most ``timeout`` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        agents = self.single_agents
        refs = self.single_refs
        if len(observations) < len(agents) or not all(map(observations.__contains__, agents)):
            live = [i for i, a in enumerate(agents) if a in observations]
            agents = [agents[i] for i in live]
            refs = [refs[i] for i in live]
        singles = self.node.ask_each(refs, "act", [observations[a] for a in agents], deadline)
        keys = observations.keys()
        batched: list[tuple[str, ...]] = []
        batch_refs: list[AgentRef] = []
        for group in self.groups:
            live_group = group.agents
            if not group.members <= keys:  # some of its agents are done
                live_group = tuple(a for a in live_group if a in keys)
            if live_group:
                batched.append(live_group)
                batch_refs.append(group.ref)
        batches = self.node.ask_each(
            batch_refs, "act_batch", [{a: observations[a] for a in g} for g in batched], deadline
        )
        await singles.wait(deadline)
        await batches.wait(deadline)
        out = Collected()
        if singles.left == 0 and not singles.errors:
            # Every policy answered with an action: in agent order, in one go.
            out.actions = dict(zip(agents, singles.values, strict=True))
        else:
            for i, agent in enumerate(agents):
                _take(out, (agent,), False, singles.values[i], singles.errors.get(i))
        for i, group_agents in enumerate(batched):
            _take(out, group_agents, True, batches.values[i], batches.errors.get(i))
        return out


def _take(
    out: Collected, live: tuple[str, ...], batched: bool, value: Any, exc: BaseException | None
) -> None:
    """Record one policy's answer: ``value``, or ``exc``, or none in time (`PENDING`)."""
    if (value is PENDING and exc is None) or isinstance(exc, AskTimeout):
        out.late.extend(live)
    elif exc is not None:
        if isinstance(exc, RemoteError):
            reason = f"{exc.remote_type}: {exc.remote_message}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        out.failed.update(dict.fromkeys(live, reason))
    elif not batched:
        out.actions[live[0]] = value
    elif not isinstance(value, Mapping):
        out.failed.update(dict.fromkeys(live, "act_batch did not return a mapping"))
    elif len(value) == len(live) and value.keys() >= set(live):
        out.actions.update(value)
    else:
        for agent in live:
            if agent in value:
                out.actions[agent] = value[agent]
            else:
                out.failed[agent] = f"act_batch returned no action for {agent!r}"


class NodeFanout(Agent):
    """Asks the policies on its own node for one step's actions, for a runner
    elsewhere: one message per node per step crosses the wire, not one per agent."""

    def __init__(self, policies: dict[str, AgentRef]) -> None:
        self._policies = policies
        self._fanout: LocalFanout | None = None

    async def collect(self, observations: dict[str, Any], timeout: float) -> Collected:
        """Actions of this node's policies (see `LocalFanout.collect`)."""
        if self._fanout is None:
            self._fanout = LocalFanout(self._policies, self._am_cell.node)
        return await self._fanout.collect(observations, timeout)

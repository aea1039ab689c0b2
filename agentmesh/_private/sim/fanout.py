"""One step's round of asks: observations out to the policies, actions back by a
deadline; late and failed policies are named, never hidden.

Policies on this node are asked without a task per ask (the envelope goes straight
into the mailbox, and one waiter counts the replies), which is what lets thousands of
policy agents step together. Policies on other nodes are asked through one
`NodeFanout` agent per node, so a step costs one message per node on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..kernel.agent import Agent
from ..kernel.context import current_cell
from ..kernel.envelope import NO_KWARGS, Envelope, chains
from ..kernel.errors import AgentUnavailable, AskTimeout, RemoteError
from ..kernel.node import Node
from ..kernel.ref import AgentRef

__all__ = ["Collected", "LocalFanout", "NodeFanout", "wait_until"]


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


async def wait_until(futures: Iterable[asyncio.Future[Any]], deadline: float) -> None:
    """Wait until every future is done or the loop's clock reaches ``deadline``."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    remaining = 0

    def one_done(_: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not waiter.done():
            waiter.set_result(None)

    for fut in futures:
        if not fut.done():
            remaining += 1
            fut.add_done_callback(one_done)
    if remaining == 0:
        return

    def expire() -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_at(deadline, expire)
    try:
        await waiter
    finally:
        timer.cancel()


class LocalFanout:
    """Asks policies for actions: those on ``node`` directly, others one by one."""

    def __init__(self, policies: Mapping[str, AgentRef], node: Node) -> None:
        self.node = node
        self.groups = groups_of(policies)

    def _ask(self, ref: AgentRef, method: str, arg: Any, deadline: float) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        cell = ref._cell
        if cell is None and ref.node == self.node.id:
            cell = self.node.cells.get(ref.id)
        if cell is not None:
            fut: asyncio.Future[Any] = loop.create_future()
            sender = current_cell.get()
            sender_id = None if sender is None else sender.id
            env = Envelope(
                ref.id, method, (arg,), NO_KWARGS, fut, next(chains), sender_id, deadline
            )
            try:
                if cell.offer(env):
                    return fut
            except AgentUnavailable as exc:
                fut.set_exception(exc)
                return fut
        # Remote, or a full mailbox: the ordinary ask, in a task of its own.
        timeout = max(deadline - loop.time(), 0.0)
        return asyncio.ensure_future(ref[method].ask(arg, timeout=timeout))

    async def collect(self, observations: Mapping[str, Any], timeout: float) -> Collected:
        """Ask every live agent's policy for its action; wait at most ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent: list[tuple[tuple[str, ...], bool, asyncio.Future[Any]]] = []
        keys = observations.keys()
        for group in self.groups:
            if group.members <= keys:  # the common case: all of its agents are live
                live = group.agents
            else:
                live = tuple(a for a in group.agents if a in keys)
            if not live:
                continue
            if len(group.agents) == 1:
                fut = self._ask(group.ref, "act", observations[live[0]], deadline)
                sent.append((live, False, fut))
            else:
                batch = {a: observations[a] for a in live}
                sent.append((live, True, self._ask(group.ref, "act_batch", batch, deadline)))
        await wait_until((fut for _, _, fut in sent), deadline)
        out = Collected()
        for live, batched, fut in sent:
            _read(out, live, batched, fut)
        return out


def _read(out: Collected, live: tuple[str, ...], batched: bool, fut: asyncio.Future[Any]) -> None:
    if not fut.done() or fut.cancelled():
        fut.cancel()  # the policy never starts it, if it has not yet
        out.late.extend(live)
        return
    exc = fut.exception()
    if isinstance(exc, AskTimeout):
        out.late.extend(live)
    elif exc is not None:
        if isinstance(exc, RemoteError):
            reason = f"{exc.remote_type}: {exc.remote_message}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        out.failed.update(dict.fromkeys(live, reason))
    elif not batched:
        out.actions[live[0]] = fut.result()
    else:
        result = fut.result()
        if not isinstance(result, Mapping):
            out.failed.update(dict.fromkeys(live, "act_batch did not return a mapping"))
        elif len(result) == len(live) and result.keys() >= set(live):
            out.actions.update(result)
        else:
            for agent in live:
                if agent in result:
                    out.actions[agent] = result[agent]
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

"""One step's round of asks: observations out to the policies, actions back by a
deadline; late and failed policies are named, never hidden.

Policies on this node are asked without a task or future per ask (`Node.offer_asks`:
the ask goes straight into the mailbox and its answer into an `_Answer`; one waiter
counts them), which is what lets thousands of policy agents step together. Policies
on other nodes are asked through one `NodeFanout` agent per node, so a step costs one
message per node on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..kernel.agent import Agent
from ..kernel.errors import AskTimeout, RemoteError
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


class _Answers:
    """Where one round's direct asks answer: counted as they come, no future each."""

    __slots__ = ("closed", "left", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.left = 0
        self.closed = False  # past the deadline: late answers are not taken
        self.waiter: asyncio.Future[None] = loop.create_future()


class _Answer:
    """One policy's answer (a kernel `Reply`): an action, or why there is none."""

    __slots__ = ("answers", "error", "state", "value")

    def __init__(self, answers: _Answers) -> None:
        self.answers = answers
        self.state = 0  # 0 waiting, 1 action, 2 error
        self.value: Any = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.state != 0 or self.answers.closed

    def set_result(self, value: Any) -> None:
        self.value = value
        self.state = 1
        answers = self.answers
        answers.left -= 1
        if answers.left == 0 and not answers.waiter.done():
            answers.waiter.set_result(None)

    def set_exception(self, exc: BaseException) -> None:
        self.error = exc
        self.state = 2
        answers = self.answers
        answers.left -= 1
        if answers.left == 0 and not answers.waiter.done():
            answers.waiter.set_result(None)


class LocalFanout:
    """Asks policies for actions: those on ``node`` directly, others one by one."""

    def __init__(self, policies: Mapping[str, AgentRef], node: Node) -> None:
        self.node = node
        self.groups = groups_of(policies)

    def _ask(self, ref: AgentRef, method: str, arg: Any, deadline: float) -> asyncio.Future[Any]:
        """The ordinary ask, in a task of its own (a remote policy, or a full mailbox)."""
        loop = asyncio.get_running_loop()
        timeout = max(deadline - loop.time(), 0.0)
        return asyncio.ensure_future(ref[method].ask(arg, timeout=timeout))

    async def collect(self, observations: Mapping[str, Any], timeout: float) -> Collected:
        """Ask every live agent's policy for its action; wait at most ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        answers = _Answers(loop)
        sent: list[tuple[tuple[str, ...], bool, _Answer | asyncio.Future[Any]]] = []
        calls: list[tuple[AgentRef, str, tuple[Any, ...], _Answer]] = []
        keys = observations.keys()
        live: tuple[str, ...]
        for group in self.groups:
            agents = group.agents
            if len(agents) == 1:  # one policy agent per agent: a dict lookup each
                if agents[0] not in observations:
                    continue
                answer = _Answer(answers)
                calls.append((group.ref, "act", (observations[agents[0]],), answer))
                sent.append((agents, False, answer))
                continue
            if group.members <= keys:  # all of its agents are live
                live = agents
            else:
                live = tuple(a for a in agents if a in keys)
            if live:
                answer = _Answer(answers)
                batch = {a: observations[a] for a in live}
                calls.append((group.ref, "act_batch", (batch,), answer))
                sent.append((live, True, answer))
        answers.left = len(calls)
        # Straight into the mailboxes; the others (elsewhere, or full) one ask each.
        for i in self.node.offer_asks(calls, deadline):
            ref, method, (arg,), answer = calls[i]
            answers.left -= 1
            live, batched, _ = sent[i]
            sent[i] = (live, batched, self._ask(ref, method, arg, deadline))
        waits = [a for _, _, a in sent if isinstance(a, asyncio.Future)]
        if answers.left:
            waits.append(answers.waiter)
        await wait_until(waits, deadline)
        answers.closed = True
        out = Collected()
        for live, batched, got in sent:
            if isinstance(got, _Answer):
                _take(out, live, batched, got.state, got.value, got.error)
            elif not got.done() or got.cancelled():
                got.cancel()  # the policy never starts it, if it has not yet
                out.late.extend(live)
            else:
                exc = got.exception()
                _take(out, live, batched, 2 if exc else 1, None if exc else got.result(), exc)
        return out


def _take(
    out: Collected,
    live: tuple[str, ...],
    batched: bool,
    state: int,
    value: Any,
    exc: BaseException | None,
) -> None:
    """Record one policy's answer (state 0: none in time, 1: ``value``, 2: ``exc``)."""
    if state == 0 or isinstance(exc, AskTimeout):
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

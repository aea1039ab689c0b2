"""What a node tells other nodes of its agents: ``!node.info`` (one agent's
`AgentInfo`), ``!node.agents`` (its user agents) and ``!node.crashes`` (its latest
crashes), and `ask_node`, which asks.

All are node-level requests (`NodeRequest`): served on arrival, ahead of any
agent's mailbox, so a listing never waits behind user traffic or a slow spawn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .envelope import Envelope
from .errors import AgentUnavailable, AskTimeout, BadArguments
from .info import AgentInfo, CrashReport
from .ports import FRAMEWORK_PREFIX, NodeRequest

if TYPE_CHECKING:
    from .node import Node

__all__ = ["DEFAULT_LIMIT", "answer", "ask_node", "local_agents", "recent_crashes", "requests"]

#: How many agents one node lists at most, unless the caller says otherwise.
DEFAULT_LIMIT = 10_000


def local_agents(
    node: Node, agent_class: str | None = None, limit: int = DEFAULT_LIMIT
) -> tuple[int, list[AgentInfo]]:
    """(how many user agents of ``agent_class`` (a qualified name; None: any) live
    on ``node``, snapshots of the oldest ``limit`` of them). The framework's own
    agents (ids ``sys.*``) are never listed."""
    count = 0
    infos: list[AgentInfo] = []
    for cell in node.cells.values():
        if cell.id.startswith(FRAMEWORK_PREFIX):
            continue
        if agent_class is not None and cell.methods.cls_name != agent_class:
            continue
        count += 1
        if len(infos) < limit:
            infos.append(AgentInfo.of(cell))
    return count, infos


def recent_crashes(node: Node, seen: int, limit: int) -> tuple[int, list[CrashReport]]:
    """(the number of ``node``'s latest crash, its crashes numbered after ``seen``: the
    newest ``limit`` of those it remembers, oldest first)."""
    return node.recent_crashes.after(seen, limit)


def _counts(args: Any) -> bool:
    """Whether request arguments are (seen, limit), two counts."""
    return type(args) is tuple and len(args) == 2 and all(type(a) is int and a >= 0 for a in args)


def requests(node: Node) -> dict[str, NodeRequest]:
    """The requests `Node` serves for this (``!node.info``, ``!node.agents``,
    ``!node.crashes``)."""

    def info(env: Envelope) -> None:
        args = env.args
        if not (type(args) is tuple and len(args) == 1 and type(args[0]) is str):
            answer(env, BadArguments("!node.info takes one agent id"))
            return
        cell = node.cells.get(args[0])
        if cell is None:
            answer(env, AgentUnavailable(node.gone_reason(args[0])))
        else:
            answer(env, AgentInfo.of(cell))

    def agents(env: Envelope) -> None:
        args = env.args
        if not (
            type(args) is tuple
            and len(args) == 2
            and (args[0] is None or type(args[0]) is str)
            and type(args[1]) is int
            and args[1] >= 0
        ):
            answer(env, BadArguments("!node.agents takes (class name or None, limit)"))
            return
        answer(env, local_agents(node, args[0], args[1]))

    def crashes(env: Envelope) -> None:
        if not _counts(env.args):
            answer(env, BadArguments("!node.crashes takes (seen, limit), two counts"))
            return
        answer(env, recent_crashes(node, *env.args))

    return {
        "!node.info": NodeRequest(info),
        "!node.agents": NodeRequest(agents),
        "!node.crashes": NodeRequest(crashes),
    }


def answer(env: Envelope, value: Any) -> None:
    """Answer node-level request ``env`` with ``value`` (an exception: that error)."""
    reply = env.reply
    if reply is None or reply.done():  # a tell, or its asker gave up
        return
    if isinstance(value, Exception):
        reply.set_exception(value)
    else:
        reply.set_result(value)


async def ask_node(
    node: Node, peer: str, method: str, args: tuple[Any, ...], timeout: float
) -> Any:
    """Make node-level request ``method`` of node ``peer`` and return its answer;
    `AgentUnavailable` if the peer is unreachable or goes away, `AskTimeout` if it
    does not answer within ``timeout`` seconds."""
    transport = node.transport
    if transport is None:
        raise AgentUnavailable(f"node {peer} is not reachable: this node is on its own")
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[Any] = loop.create_future()
    target = f"{FRAMEWORK_PREFIX}node.{peer}"
    env = Envelope(target, method, args, {}, reply, 0, None, loop.time() + timeout)
    try:
        async with asyncio.timeout(timeout):
            await transport.send(peer, env)
            return await reply
    except TimeoutError:
        raise AskTimeout(f"node {peer} did not answer {method} within {timeout:g}s") from None
    finally:
        reply.cancel()  # (if unanswered) the transport forgets it

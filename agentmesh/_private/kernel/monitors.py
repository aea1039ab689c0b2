"""Monitors of agents on other nodes.

A node keeps, for each remote agent its agents or drivers monitor, the local
watchers, and asks the agent's node once to report its end (``!node.monitor``). That
node forwards the `Terminated` notice (``!node.terminated``). If the agent's node
goes down first, every watcher gets ``Terminated(ref, "node_down", ...)``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .envelope import NO_KWARGS, Envelope, new_chain
from .exits import Terminated

if TYPE_CHECKING:
    from .node import Node
    from .ref import AgentRef

__all__ = ["RemoteMonitors", "RemoteWatcher"]

log = logging.getLogger("agentmesh.node")


def system_envelope(peer: str, method: str, *args: Any) -> Envelope:
    """A node-level message (``!node.*``) to node ``peer``."""
    return Envelope(f"sys.node.{peer}", method, args, NO_KWARGS, None, new_chain(), None)


class RemoteWatcher:
    """Stands in, on the watched agent's node, for the watchers on node ``peer``."""

    __slots__ = ("node", "peer")

    def __init__(self, node: Node, peer: str) -> None:
        self.node = node
        self.peer = peer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteWatcher) and other.peer == self.peer

    def __hash__(self) -> int:
        return hash(self.peer)

    def deliver_notice(self, method: str, notice: Terminated) -> None:
        self.node.send_to_peer(self.peer, system_envelope(self.peer, "!node.terminated", notice))


class RemoteMonitors:
    """This node's watchers of agents that live elsewhere."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.watchers: dict[str, list[Any]] = {}  # agent id -> local watchers
        self.refs: dict[str, AgentRef] = {}

    def watch(self, ref: AgentRef, watcher: Any) -> None:
        first = ref.id not in self.watchers
        self.watchers.setdefault(ref.id, []).append(watcher)
        self.refs[ref.id] = ref
        if first:
            env = system_envelope(ref.node, "!node.monitor", ref.id, self.node.id)
            self.node.send_to_peer(ref.node, env)

    def watch_many(self, refs: list[AgentRef], watcher: Any) -> None:
        """`watch` each of ``refs``, asking each node once for all its agents."""
        asks: dict[str, list[str]] = {}
        for ref in refs:
            if ref.id not in self.watchers:
                asks.setdefault(ref.node, []).append(ref.id)
            self.watchers.setdefault(ref.id, []).append(watcher)
            self.refs[ref.id] = ref
        for peer, ids in asks.items():
            env = system_envelope(peer, "!node.monitor", tuple(ids), self.node.id)
            self.node.send_to_peer(peer, env)

    def unwatch(self, ref: AgentRef, watcher: Any) -> None:
        watchers = self.watchers.get(ref.id)
        if watchers and watcher in watchers:
            watchers.remove(watcher)

    def notice(self, notice: Terminated) -> None:
        """A watched agent elsewhere ended (or restarted): tell the local watchers."""
        watchers = self.watchers.get(notice.ref.id, [])
        if not notice.restarting:
            self.watchers.pop(notice.ref.id, None)
            self.refs.pop(notice.ref.id, None)
        for watcher in list(watchers):
            if isinstance(watcher, asyncio.Future):
                if not watcher.done():
                    watcher.set_result(notice)
                watchers.remove(watcher)  # a future hears one notice
            else:
                watcher.deliver_notice("!terminated", notice)

    def node_down(self, peer: str, reason: str) -> None:
        """Node ``peer`` is gone: its agents are, for every watcher here."""
        for ref in list(self.refs.values()):
            if ref.node == peer:
                self.notice(Terminated(ref, "node_down", reason, False))

"""`Bus`: one node's topic index, publishing, and dead letters.

A publish walks the topic index once (cached per topic until subscriptions change)
and delivers to each matching subscription in subscription order, each through its
own buffer. The bus also keeps the node's interest summary (the patterns with
subscribers here), which the cluster layer shares so a message crosses the network
once per interested node.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..kernel import tracing
from ..kernel.cell import Cell
from ..kernel.envelope import Envelope
from ..kernel.tracing import Trace, Tracer
from .decorator import decorated_handlers
from .subscriptions import (
    TRACE,
    AgentSubscription,
    DeadLetter,
    Overflow,
    Subscription,
    TopicStream,
    check_overflow,
)
from .topics import TopicTrie, check_topic

__all__ = ["DEAD_LETTERS", "Bus", "BusStatistics"]

log = logging.getLogger("agentmesh.pubsub")

#: The topic dead letters are published on.
DEAD_LETTERS = "agentmesh.dead_letters"
_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """Counters of one node's bus since it started."""

    published: int
    deliveries: int
    dead_letters: int
    subscriptions: int
    patterns: frozenset[str]


class Bus:
    """Topic subscriptions of the agents and drivers of one node."""

    def __init__(self) -> None:
        self._trie: TopicTrie[Subscription] = TopicTrie()
        self._keys = itertools.count()
        self._by_cell: dict[str, list[AgentSubscription]] = {}
        self._cache: dict[str, list[Subscription]] = {}
        self._interest: Counter[str] = Counter()
        self.published = 0
        self.deliveries = 0
        self.dead_letters = 0
        #: Set by the cluster layer: sends a publication to the other interested
        #: nodes (once per node), and shares this node's interest when it changes.
        self.remote_publish: (
            Callable[[str, Any, str | None, Trace | None], Awaitable[None]] | None
        ) = None
        self.share_interest: Callable[[frozenset[str]], Awaitable[None]] | None = None
        self._interest_dirty = False

    # -- subscribing ------------------------------------------------------------------

    def _add(self, sub: Subscription) -> None:
        self._trie.add(sub.pattern, sub.key, sub)
        self._interest[sub.pattern] += 1
        if self._interest[sub.pattern] == 1:
            self._interest_dirty = True
        self._cache.clear()

    def remove(self, sub: Subscription) -> None:
        if self._trie.remove(sub.pattern, sub.key):
            self._interest[sub.pattern] -= 1
            if self._interest[sub.pattern] <= 0:
                del self._interest[sub.pattern]
                self._interest_dirty = True
            self._cache.clear()

    def register_agent(self, cell: Cell) -> None:
        """Make the ``@subscribe`` handlers of a new agent live (before it starts)."""
        for method, pattern, overflow in decorated_handlers(cell.cls):
            name = method if not method.startswith("_") else "!" + method
            sub = AgentSubscription(next(self._keys), pattern, cell, name, None, overflow)
            self._add(sub)
            self._by_cell.setdefault(cell.id, []).append(sub)

    def subscribe_handler(
        self, cell: Cell, pattern: str, handler: Callable[..., Any], overflow: Overflow
    ) -> None:
        """A runtime subscription of one agent instance (ends with that instance)."""
        check_overflow(overflow)
        sub = AgentSubscription(next(self._keys), pattern, cell, None, handler, overflow)
        self._add(sub)  # validates the pattern first
        self._by_cell.setdefault(cell.id, []).append(sub)

    def unsubscribe_handler(
        self, cell: Cell, pattern: str, handler: Callable[..., Any] | None
    ) -> int:
        """Remove an agent's runtime subscriptions to ``pattern`` (to ``handler`` only,
        if given); returns how many."""
        subs = self._by_cell.get(cell.id, [])
        gone = [
            s
            for s in subs
            if s.handler is not None
            and s.pattern == pattern
            and (handler is None or s.handler == handler)
        ]
        for sub in gone:
            subs.remove(sub)
            self.remove(sub)
        return len(gone)

    def instance_ended(self, cell: Cell) -> None:
        """An instance ended: its runtime subscriptions end with it."""
        subs = self._by_cell.get(cell.id)
        if subs:
            for sub in [s for s in subs if s.handler is not None]:
                subs.remove(sub)
                self.remove(sub)

    def agent_ended(self, cell: Cell) -> None:
        """An agent ended for good: all its subscriptions end."""
        for sub in self._by_cell.pop(cell.id, ()):
            self.remove(sub)

    async def aclose(self) -> None:
        """End every driver stream (their iterations stop)."""
        streams = [s for s in self._trie.all() if isinstance(s, TopicStream)]
        for stream in streams:
            await stream.aclose()

    def stream(self, pattern: str, maxsize: int, overflow: Overflow) -> TopicStream:
        """A driver's subscription, live from this call on."""
        stream = TopicStream(self, next(self._keys), pattern, maxsize, check_overflow(overflow))
        self._add(stream)
        return stream

    # -- publishing -------------------------------------------------------------------

    def matching(self, topic: str) -> list[Subscription]:
        subs = self._cache.get(topic)
        if subs is None:
            subs = self._trie.match(topic)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[topic] = subs
        return subs

    async def sync_interest(self) -> None:
        """Share a changed interest summary with the cluster, and wait until every
        node knows it (so a new subscription is live everywhere when this returns)."""
        if self._interest_dirty and self.share_interest is not None:
            self._interest_dirty = False
            await self.share_interest(self.interest())

    def publish(
        self, topic: str, payload: Any, sender: str | None = None, *, local_only: bool = False
    ) -> Coroutine[Any, Any, int]:
        """Deliver ``payload`` to every subscription matching ``topic`` here, then
        (unless ``local_only``) once to every other node with matching subscribers.
        Returns how many subscriptions here it was delivered (or dead-lettered) to.
        With tracing on it runs in a publish span, the parent of each delivery's turn."""
        if tracing.hooks is not None:
            return self._traced_publish(tracing.hooks, topic, payload, sender, local_only)
        return self._publish(topic, payload, sender, local_only, None)

    async def _publish(
        self, topic: str, payload: Any, sender: str | None, local_only: bool, trace: Trace | None
    ) -> int:
        subs = self._subscriptions(topic)
        rest = self._offer_to(subs, topic, payload, sender, trace)
        if rest is not None:
            await rest()
        if self.remote_publish is not None and not local_only:
            await self.remote_publish(topic, payload, sender, trace)
        return len(subs)

    async def _traced_publish(
        self, tracer: Tracer, topic: str, payload: Any, sender: str | None, local_only: bool
    ) -> int:
        with tracer.publish(topic, sender) as trace:
            return await self._publish(topic, payload, sender, local_only, trace)

    def take_publication(self, env: Envelope) -> Callable[[], Awaitable[None]] | None:
        """Serve ``!node.publish``, a publication another node sends here once for
        all its subscribers on this node (see `offer_publish`)."""
        topic, payload = env.args
        return self.offer_publish(topic, payload, env.sender, env.trace)

    def offer_publish(
        self, topic: str, payload: Any, sender: str | None, trace: Trace | None = None
    ) -> Callable[[], Awaitable[None]] | None:
        """Deliver a publication from another node here as far as it needs no waiting:
        None when done, else what finishes it, waiting where a subscription
        backpressures (a transport awaits that only for the subscriber it waits on)."""
        return self._offer_to(self._subscriptions(topic), topic, payload, sender, trace)

    def _subscriptions(self, topic: str) -> list[Subscription]:
        subs = self._cache.get(topic)
        if subs is None:
            check_topic(topic)
            subs = self.matching(topic)
        return subs

    def _offer_to(
        self,
        subs: list[Subscription],
        topic: str,
        payload: Any,
        sender: str | None,
        trace: Trace | None,
    ) -> Callable[[], Awaitable[None]] | None:
        self.published += 1
        self.deliveries += len(subs)
        # The memo of one publication: payloads validated per annotation, its trace.
        memo: dict[Any, Any] = {} if trace is None else {TRACE: trace}
        return self._offer_from(subs, 0, topic, payload, sender, memo)

    def _offer_from(
        self,
        subs: list[Subscription],
        start: int,
        topic: str,
        payload: Any,
        sender: str | None,
        memo: dict[Any, Any],
    ) -> Callable[[], Awaitable[None]] | None:
        """Deliver to ``subs[start:]`` without waiting; at the first full buffer with
        backpressure, return what finishes the rest (it waits for that room)."""
        for i in range(start, len(subs)):
            pending = subs[i].offer(self, topic, payload, sender, memo)
            if pending is not None:
                return functools.partial(
                    self._finish, subs, i, pending, topic, payload, sender, memo
                )
        return None

    async def _finish(
        self,
        subs: list[Subscription],
        i: int,
        pending: Any,
        topic: str,
        payload: Any,
        sender: str | None,
        memo: dict[Any, Any],
    ) -> None:
        await subs[i].wait_deliver(self, topic, payload, sender, pending)
        rest = self._offer_from(subs, i + 1, topic, payload, sender, memo)
        if rest is not None:
            await rest()

    def dead_letter(
        self,
        topic: str | None,
        payload: Any,
        reason: str,
        subscriber: str | None = None,
        sender: str | None = None,
        method: str | None = None,
    ) -> None:
        """Count, log and publish an undeliverable message on ``agentmesh.dead_letters``.

        Delivered without waiting: a dead letter that finds no room is only counted
        and logged (dead letters never produce dead letters).
        """
        self.dead_letters += 1
        if self.dead_letters <= 10 or self.dead_letters % 1000 == 0:
            where = topic if topic is not None else f"tell {method}"
            log.info(
                "dead letter #%d (%s) for %s: %s", self.dead_letters, where, subscriber, reason
            )
        if topic == DEAD_LETTERS:
            return
        letter = DeadLetter(topic, payload, reason, subscriber, sender, method)
        for sub in self.matching(DEAD_LETTERS):
            if not sub.deliver_nowait(DEAD_LETTERS, letter, sender):
                log.warning("dead letter for %s lost: %s has no room", subscriber, sub.subscriber)

    def interest(self) -> frozenset[str]:
        """The patterns with at least one subscriber on this node."""
        return frozenset(self._interest)

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            self.published, self.deliveries, self.dead_letters, len(self._trie), self.interest()
        )

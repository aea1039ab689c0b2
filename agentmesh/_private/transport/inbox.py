"""`Inbox`: what a stream received for user agents, delivered in order per agent.

An envelope goes into its agent's mailbox at once when there is room. When there is
not, that agent's envelopes wait in a lane of their own, in the order they came,
and the stream's other envelopes go on: one full mailbox never holds back another
agent's messages (no head-of-line blocking).

Credit comes back two ways, as HTTP/2 has a window per stream besides the
connection's. The stream's, as soon as an envelope is delivered or parked, so parked
envelopes never hold back the stream. Each agent's, as its tells are delivered into
its mailbox: a sender may have at most a window of tells to one agent that are not
yet delivered, so a lane holds at most that many tells. Asks are not counted (a
reentrant one must run at once); a lane past twice the window, which only asks or a
peer that ignores its credit can make, keeps its stream credit until it drains, so
what a peer can park stays bounded. A peer that sends more envelopes than the
stream's credit allows (`allowance`) is cut off: its frame is malformed.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Awaitable, Callable, Container
from itertools import islice
from typing import Any

from ...v1 import wire_pb2
from ..kernel.envelope import Envelope
from ..kernel.errors import AgentmeshError
from .frames import Inbound, MalformedFrame, Run, malformed

__all__ = ["Inbox"]

#: What finishes a delivery that must wait for room (`Node.take_from_peer`).
Rest = Callable[[], Awaitable[None]]
Take = Callable[[Envelope], Rest | None]
OfferTells = Callable[[list[Any], int, Container[str], dict[str, int]], int]


class Lane:
    """One agent's envelopes that wait for room, oldest at ``items[head]``: `TellRecord`
    tuples, envelopes, and first the `Rest` of the one that found the mailbox full."""

    __slots__ = ("head", "items", "withheld")

    def __init__(self, first: Rest) -> None:
        self.items: list[Any] = [first]
        self.head = 0
        self.withheld = 0  # parked envelopes not yet credited to the stream (too many)

    def __len__(self) -> int:
        return len(self.items) - self.head


class Inbox:
    """Delivers what a stream received for user agents (`put`), in order per agent."""

    def __init__(
        self,
        window: int,
        wake: Callable[[], None],
        decode_entry: Callable[[Any, float], Envelope | None],
        decode_typed: Callable[[wire_pb2.Envelope, float], Envelope | None],
        take: Take,
        bypasses: Callable[[Envelope], bool],
        offer_tells: OfferTells,
        refused: Callable[[Envelope, AgentmeshError], None],
    ) -> None:
        self._wake = wake  # the writer: credit to send
        self._decode_entry = decode_entry
        self._decode_typed = decode_typed
        self._take = take
        self._bypasses = bypasses
        self._offer_tells = offer_tells
        self._refused = refused
        self._hard = 2 * max(1, window)  # a lane longer keeps its stream credit
        self._credit_batch = max(1, window // 4)
        self._lanes: dict[str, Lane] = {}
        self._drains: set[asyncio.Task[None]] = set()
        #: Ends with `MalformedFrame` if an entry in a lane turns out to be none.
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.credit_owed = 0  # envelopes delivered or parked, not yet credited
        #: Envelopes the peer may still send: the window, less those received, plus
        #: the credit sent back (the link adds it as it sends it).
        self.allowance = max(1, window)
        self.target_owed: dict[str, int] = {}  # tells delivered, not yet credited

    def put(self, items: list[Inbound]) -> None:
        """Deliver or park the envelopes of one frame, in the order they were sent
        (never waiting: the stream's reader calls this, in its task, which binds refs
        to this node); raises `MalformedFrame`."""
        for item in items:
            if isinstance(item, Run):
                self._take_run(item.entries, item.arrived)
            else:
                self._spend(1)
                self.credit_owed += 1
                env = self._decode_typed(*item)
                if env is not None:
                    self._take_one(env)
        self._wake()  # the credit for them goes back in one frame

    @property
    def parked(self) -> int:
        """How many envelopes wait in lanes."""
        return sum(len(lane) for lane in self._lanes.values())

    def close(self) -> None:
        for task in self._drains:
            task.cancel()

    def _spend(self, count: int) -> None:
        """``count`` envelopes received: raise `MalformedFrame` if the peer had no
        room for them (one subtraction and a comparison per run of envelopes)."""
        self.allowance -= count
        if self.allowance < 0:
            raise MalformedFrame(
                f"{-self.allowance} envelopes beyond the stream's credit (flow control)"
            )

    def _fail(self, exc: MalformedFrame) -> None:
        """End the stream from a lane (`failed` ends with ``exc``)."""
        if not self.failed.done():
            self.failed.set_exception(exc)

    def _take_run(self, entries: list[Any], arrived: float) -> None:
        """Deliver a frame's pickled envelopes: plain tells to agents with room many
        in a call, the rest one by one or into their agent's lane."""
        lanes = self._lanes
        self._spend(len(entries))
        self.credit_owed += len(entries)
        i, end = 0, len(entries)
        while i < end:
            try:
                i = self._offer_tells(entries, i, lanes, self.target_owed)
            except (LookupError, ValueError, TypeError) as exc:
                raise malformed("an envelope that is not one", exc) from None
            if i == end:
                return
            entry = entries[i]
            if lanes and type(entry) is tuple:  # (offer_tells checked its target)
                target = entry[0]
                lane = lanes.get(target)
                if lane is not None:  # this agent's tells that follow, parked at once
                    j = _same_target(entries, i, target)
                    self._park(lane, entries[i:j])
                    i = j
                    continue
            i += 1
            env = self._decode_entry(entry, arrived)
            if env is not None:
                self._take_one(env)

    def _take_one(self, env: Envelope) -> None:
        lane = self._lanes.get(env.target) if self._lanes else None
        if lane is not None and not self._bypasses(env):
            self._park(lane, [env])
            return
        rest = self._deliver(env)
        if rest is not None:
            lane = self._lanes[env.target] = Lane(rest)
            task = asyncio.ensure_future(self._drain(env.target, lane, env))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    def _deliver(self, env: Envelope) -> Rest | None:
        """Deliver ``env`` if that needs no waiting (a tell is then owed credit), or
        refuse it; else what finishes it, waiting for room."""
        try:
            rest = self._take(env)
        except AgentmeshError as exc:
            self._refused(env, exc)
            rest = None
        if rest is None and env.reply is None:
            self.settled(env.target)
        return rest

    def settled(self, target: str, count: int = 1) -> None:
        """Tells to ``target`` delivered (or dropped): credit to return for it."""
        owed = self.target_owed
        owed[target] = owed.get(target, 0) + count

    def _park(self, lane: Lane, items: list[Any]) -> None:
        room = self._hard - len(lane)
        lane.items.extend(items)
        if room < len(items):
            withheld = len(items) - max(0, room)
            lane.withheld += withheld
            self.credit_owed -= withheld

    async def _drain(self, target: str, lane: Lane, first: Envelope) -> None:
        """Deliver a lane in order as its agent makes room; then close it. Ends the
        stream (`failed`) if an entry is no envelope or fails this node."""
        try:
            await self._drain_lane(target, lane, first)
        except MalformedFrame as exc:
            self._fail(exc)
        except Exception as exc:  # whatever the peer sent, this node lives on
            self._fail(malformed("an envelope this node failed on", exc))

    async def _drain_lane(self, target: str, lane: Lane, first: Envelope) -> None:
        items = lane.items
        await self._finish(first, items[0])
        self._advance(target, lane, 1)
        while lane.head < len(items):
            item = items[lane.head]
            if type(item) is tuple:
                try:
                    taken = self._offer_tells(items, lane.head, (), self.target_owed)
                except (LookupError, ValueError, TypeError) as exc:
                    raise malformed("an envelope that is not one", exc) from None
                if taken > lane.head:
                    self._advance(target, lane, taken - lane.head)
                    continue
            if not isinstance(item, Envelope):
                # A tell tuple, or (from a peer that breaks the protocol) not: then
                # this raises MalformedFrame.
                item = self._decode_entry(item, 0.0)
            if item is not None:
                rest = self._deliver(item)
                if rest is not None:
                    await self._finish(item, rest)
            self._advance(target, lane, 1)
        del self._lanes[target]
        self._wake()  # what the lane's agent is owed goes back now

    async def _finish(self, env: Envelope, rest: Rest) -> None:
        try:
            await rest()
        except AgentmeshError as exc:
            self._refused(env, exc)
        if env.reply is None:
            self.settled(env.target)

    def _advance(self, target: str, lane: Lane, delivered: int) -> None:
        lane.head += delivered
        if lane.head >= 1024 and 2 * lane.head >= len(lane.items):
            del lane.items[: lane.head]  # drop what was delivered (amortized)
            lane.head = 0
        left = len(lane)
        if lane.withheld and left < self._hard:
            give = min(lane.withheld, self._hard - left)
            lane.withheld -= give
            self.credit_owed += give
            self._wake()
        # An agent's credit goes back in bulk too, as the stream's does.
        if self.target_owed.get(target, 0) >= self._credit_batch:
            self._wake()


_first = operator.itemgetter(0)


def _same_target(entries: list[Any], start: int, target: str) -> int:
    """The end of the run of entries from ``start`` on whose first item is
    ``target`` (the tells to one agent). Counted in C when the whole rest is (a
    flood of tells to one agent); the target of a frame's tells is one object."""
    try:
        if list(map(_first, entries[start:])).count(target) == len(entries) - start:
            return len(entries)
    except (LookupError, TypeError):
        pass  # an entry that has no first item: not a tell
    end = start + 1
    for entry in islice(entries, start + 1, None):
        if type(entry) is not tuple or not entry or entry[0] != target:
            break
        end += 1
    return end

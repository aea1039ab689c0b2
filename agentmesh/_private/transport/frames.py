"""Frames: how envelopes are encoded into a batch, and read back from one.

A tell whose values are all plain (`plain_tell`) is queued as a `TellRecord` tuple,
and everything queued is pickled together, one pickle per frame. Any other envelope
is encoded when it is sent (`pack`, or protobuf for values with a codec of their
own), so a value that cannot travel fails the call that sent it and nothing else.
The receiving side reads a frame's pickle back as one `Run`.
"""

from __future__ import annotations

import collections
import logging
import pickle
import struct
from collections.abc import Callable
from typing import Any

from ...v1 import wire_pb2
from ..kernel import pickling
from ..kernel.envelope import new_chain
from ..kernel.errors import AgentmeshError, SerializationError
from .codec import MAX_VALUE_BYTES
from .untrusted import said

__all__ = [
    "FRAME_BUDGET",
    "HEADER",
    "PLAIN_TYPES",
    "SHORT",
    "SHORT_TYPES",
    "StreamRefused",
    "MalformedFrame",
    "malformed",
    "Outbox",
    "Run",
    "pack",
    "plain_tell",
    "unpack_header",
    "unpickle",
]

log = logging.getLogger("agentmesh.transport")

#: An envelope queued to send: a plain tell as a `TellRecord` tuple, or one encoded
#: when it was sent.
Outgoing = tuple[Any, ...] | wire_pb2.Envelope | bytes

#: Types whose values always pickle, and pickle small: a tell of only these (strings
#: and bytes up to `SHORT` long) is queued as it is and pickled with its frame.
PLAIN_TYPES = frozenset({int, float, bool, type(None)})
SHORT_TYPES = frozenset({str, bytes})
SHORT = 1024
#: What a queued plain tell is reckoned to add to a frame (the frame budget's unit).
PLAIN_SIZE = 64
#: Bytes of envelopes and replies per frame, at most (a frame may hold 64 MiB).
FRAME_BUDGET = 8 * 1024 * 1024


def plain_tell(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every value is plain: None, a bool, int or float, or a str or bytes of
    at most 1 KiB (exact types: a subclass may not pickle). Such values cannot fail to
    pickle and are immutable, so pickling them later, with the frame, is safe."""
    for value in args:
        kind = type(value)
        if kind not in PLAIN_TYPES and (kind not in SHORT_TYPES or len(value) > SHORT):
            return False
    if kwargs:
        for value in kwargs.values():
            kind = type(value)
            if kind not in PLAIN_TYPES and (kind not in SHORT_TYPES or len(value) > SHORT):
                return False
    return True


class StreamRefused(AgentmeshError):
    """The peer ended the stream, saying why (a `Refusal`: it could not read a frame
    this node sent)."""


class MalformedFrame(AgentmeshError):
    """A peer sent a frame this node cannot read: the stream is ended (its state is
    no longer known) and the frame counted as rejected."""


def malformed(what: str, exc: BaseException) -> MalformedFrame:
    """A `MalformedFrame`: ``what`` a peer sent made this node fail with ``exc``
    (said safely: its type and text are the peer's to choose)."""
    return MalformedFrame(f"{what} ({said(type(exc).__name__, 60)}: {said(str(exc), 200)})")


#: A packed envelope starts with its correlation id, the seconds its asker still waits
#: and the length of its target's id; then that id (UTF-8), then the rest pickled.
HEADER = struct.Struct("<QdH")


def pack(target: str, corr: int, time_left: float, body: tuple[Any, ...]) -> bytes:
    """One envelope as bytes: in clear what its receiver needs even when it cannot
    unpickle the rest (the correlation id to answer an asker, the target to return
    its flow-control credit), then ``body`` (method, args, kwargs, chain, sender).

    Plain pickle when it can, cloudpickle for what it cannot take or would name by
    reference where the peer cannot find it (classes and functions of ``__main__``).
    """
    try:
        data = pickle.dumps(body, protocol=5)
        if b"__main__" in data:
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        try:
            data = pickling.dumps(body, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"arguments of {body[0]}() cannot be encoded: {type(exc).__name__}: {exc}"
            ) from exc
    if len(data) > MAX_VALUE_BYTES:
        raise SerializationError(f"arguments of {body[0]}() encode to {len(data):,} bytes")
    name = target.encode()
    return HEADER.pack(corr, time_left, len(name)) + name + data


def unpack_header(wire: bytes) -> tuple[int, float, str, int]:
    """A packed envelope's correlation id, time left, target, and where its pickle
    starts; raises `MalformedFrame`."""
    try:
        corr, time_left, size = HEADER.unpack_from(wire)
        start = HEADER.size + size
        if len(wire) < start:
            raise ValueError(f"{len(wire)} bytes, its header says at least {start}")
        target = wire[HEADER.size : start].decode()
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise malformed("an envelope with a malformed header", exc) from None
    if not time_left >= 0.0:  # also NaN
        raise MalformedFrame(f"an ask that waits {time_left} seconds")
    if len(wire) - start > MAX_VALUE_BYTES:
        raise MalformedFrame(
            f"an envelope of {len(wire) - start:,} bytes, over the limit of {MAX_VALUE_BYTES:,}"
        )
    return corr, time_left, target, start


class Run:
    """Envelopes received in one pickle: plain tells (`TellRecord` tuples) and
    envelopes pickled alone (bytes)."""

    __slots__ = ("arrived", "entries")

    def __init__(self, entries: list[Any], arrived: float) -> None:
        self.entries = entries
        self.arrived = arrived  # asks among them expire from here


#: Received, not yet delivered: a run of pickled envelopes, or a typed envelope and
#: when its frame arrived (its asker's time left counts from then).
Inbound = Run | tuple[wire_pb2.Envelope, float]


def unpickle(batch: wire_pb2.Batch, now: float) -> list[Inbound]:
    """The batch's envelopes in the order they were sent; raises `MalformedFrame`."""
    entries: list[Any] = []
    if batch.pickled:
        try:
            entries = pickle.loads(batch.pickled)
        except Exception as exc:
            raise malformed("a batch that cannot be unpickled", exc) from None
        if type(entries) is not list:
            raise MalformedFrame(f"a batch of {said(entries)}, not a list")
        if len(batch.pickled) > FRAME_BUDGET and not _packed_only(entries):
            # A sender pickles plain tells (values of 1 KiB at most) in frames of at
            # most FRAME_BUDGET bytes; a packed envelope's size is checked on its own.
            raise MalformedFrame(
                f"a batch of {len(batch.pickled):,} bytes with plain tells, over {FRAME_BUDGET:,}"
            )
    if not batch.envelopes:
        return [Run(entries, now)] if entries else []
    typed: list[Inbound] = [(item, now) for item in batch.envelopes]
    if not entries:
        return typed
    # Interleaved as `order` says: typed envelopes between runs of pickled ones.
    out: list[Inbound] = []
    first = taken = next_typed = 0
    for is_pickled in batch.order:
        if is_pickled:
            taken += 1
            continue
        if taken > first:
            out.append(Run(entries[first:taken], now))
        if next_typed == len(typed):
            break
        out.append(typed[next_typed])
        next_typed += 1
        first = taken
    if taken != len(entries) or next_typed != len(typed):
        raise MalformedFrame("a batch whose order does not match its envelopes")
    if taken > first:
        out.append(Run(entries[first:taken], now))
    return out


def _packed_only(entries: list[Any]) -> bool:
    return all(type(entry) is bytes for entry in entries)


class Outbox:
    """The envelopes queued on a stream, in order, and how the writer takes them.

    Plain tells are appended to `queue` as they are (the link's hot path); every
    other envelope goes through `push`, which counts its size, so a queue of plain
    tells only is taken whole without a look at each.
    """

    __slots__ = ("_dropped", "_queued_bytes", "_queued_typed", "peer", "queue")

    def __init__(self, peer: str, dropped: Callable[[str], None]) -> None:
        self.peer = peer
        self.queue: collections.deque[Outgoing] = collections.deque()
        self._queued_bytes = 0  # of the queued envelopes that are not plain tells
        self._queued_typed = 0
        self._dropped = dropped  # told of envelopes taken back and never sent

    def push(self, wire: wire_pb2.Envelope | bytes) -> None:
        """Queue an envelope encoded when it was sent."""
        if isinstance(wire, bytes):
            self._queued_bytes += len(wire)
        else:
            self._queued_typed += 1
            self._queued_bytes += wire.ByteSize()
        self.queue.append(wire)

    def take(self, budget: int) -> tuple[bytes, list[wire_pb2.Envelope], list[bool], int]:
        """Take queued envelopes up to ``budget`` bytes (at least one): the pickle of
        the pickled ones, the typed ones, how they interleave, and the budget left."""
        queue = self.queue
        while True:
            cost = len(queue) * PLAIN_SIZE + self._queued_bytes
            if not self._queued_typed and cost <= budget:
                # The common case: everything queued fits, and nothing is typed.
                items: list[Any] = list(queue)
                queue.clear()
                self._queued_bytes = 0
                typed: list[wire_pb2.Envelope] = []
                order: list[bool] = []
                budget -= cost
            else:
                items, typed, order, budget = self._take_some(budget)
            if not items:
                return b"", typed, order, budget
            try:
                pickled = pickle.dumps(items, protocol=5)
            except Exception:  # plain tells always pickle; should never happen
                log.exception("a batch of envelopes to node %s did not pickle", self.peer)
                pickled = b""
            if pickled and (len(pickled) <= FRAME_BUDGET or not self._has_plain(items)):
                return pickled, typed, order, budget
            if not self._has_plain(items):  # a list of bytes always pickles
                raise AgentmeshError(f"envelopes to node {self.peer} did not pickle")
            # Larger than reckoned (or unpicklable): requeue its envelopes, the plain
            # tells each pickled alone, at their real size, and take again.
            self._requeue(items, typed, order)

    def _take_some(self, budget: int) -> tuple[list[Any], list[wire_pb2.Envelope], list[bool], int]:
        queue = self.queue
        items: list[Any] = []
        typed: list[wire_pb2.Envelope] = []
        order: list[bool] = []
        while queue and (budget > 0 or not order):
            item = queue.popleft()
            if isinstance(item, tuple):
                budget -= PLAIN_SIZE
                items.append(item)
                order.append(True)
                continue
            if isinstance(item, bytes):
                size = len(item)
                items.append(item)
                order.append(True)
            else:
                size = item.ByteSize()
                typed.append(item)
                order.append(False)
                self._queued_typed -= 1
            self._queued_bytes -= size
            budget -= size
        if not typed or not items:
            order = []  # one kind only: no need to say how they interleave
        return items, typed, order, budget

    @staticmethod
    def _has_plain(items: list[Any]) -> bool:
        return any(type(item) is tuple for item in items)

    def _requeue(self, items: list[Any], typed: list[wire_pb2.Envelope], order: list[bool]) -> None:
        """Put taken envelopes back at the head of the queue, in order, each plain
        tell pickled alone; one that cannot be is logged and dropped."""
        if not order:
            order = [True] * len(items) + [False] * len(typed)
        pickled, proto = iter(items), iter(typed)
        taken: list[Outgoing] = [next(pickled) if kind else next(proto) for kind in order]
        for item in reversed(taken):
            if isinstance(item, tuple):
                target, method, args, kwargs, sender = item
                try:
                    item = pack(target, 0, 0.0, (method, args, kwargs, new_chain(), sender))
                except SerializationError as exc:
                    log.warning("tell %s.%s to node %s dropped: %s", target, method, self.peer, exc)
                    self._dropped(target)  # it will not be delivered, so never credited
                    continue
            if isinstance(item, bytes):
                self._queued_bytes += len(item)
            else:
                self._queued_typed += 1
                self._queued_bytes += item.ByteSize()
            self.queue.appendleft(item)

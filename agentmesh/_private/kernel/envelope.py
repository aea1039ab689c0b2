"""The envelope: one message on its way to one agent."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .context import current_cell

if TYPE_CHECKING:
    from .tracing import Trace

__all__ = [
    "NO_KWARGS",
    "Envelope",
    "RemoteReply",
    "Reply",
    "TellRecord",
    "TracedEnvelope",
    "chains",
    "new_chain",
    "tell_envelope",
]

# Call-chain ids are unique per process and, with a random base, across processes.
chains = itertools.count(random.getrandbits(62) | 1)


#: Shared by every envelope without keyword arguments (never mutated): one container
#: less per queued message for the garbage collector to track.
NO_KWARGS: dict[str, Any] = {}


#: A tell in the compact form transports carry plain tells in, one tuple each:
#: (target, method, args, kwargs or None, sender). It has no call chain: a tell starts
#: a new one, so the node that delivers it makes one. See `Node.offer_tells`.
TellRecord = tuple[str, str, tuple[Any, ...], dict[str, Any] | None, str | None]


def new_chain() -> int:
    """Return a fresh call-chain id (never 0, which means "no chain")."""
    return next(chains)


class Reply(Protocol):
    """Where the result of an ask goes: an `asyncio.Future` locally, a reply
    envelope when the asker lives on another node."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class Envelope:
    """A message to ``target``: a method call with arguments.

    ``reply`` is None for a tell. ``chain`` is the call-chain id used for reentrancy:
    an ask made while handling a message carries that message's chain; a tell, or an
    ask from outside any agent, starts a new one. ``sender`` is the id of the sending
    agent, or None for a driver. ``deadline`` is when an ask expires, in the event
    loop's clock (0.0 for a tell); transports send the time left, so the callee skips
    an ask whose asker has already given up. ``trace`` is the trace context of a
    traced message: always None here, where it is a class attribute and takes no room
    (`TracedEnvelope` holds one; hot paths test ``type(env) is TracedEnvelope``, since
    reading a class attribute through an instance is never specialized on 3.11).

    Hot paths make envelopes field by field (``object.__new__(Envelope)``, then every
    slot): cheaper than a call to ``__init__``. Untraced ones are all of this one class,
    so the interpreter's attribute caches on them hold (a second class at the same
    ``env.reply`` would make them miss).
    """

    __slots__ = ("args", "chain", "deadline", "kwargs", "method", "reply", "sender", "target")
    trace: Trace | None = None

    def __init__(
        self,
        target: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        reply: Reply | None,
        chain: int,
        sender: str | None,
        deadline: float = 0.0,
    ) -> None:
        self.target = target
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.reply = reply
        self.chain = chain
        self.sender = sender
        self.deadline = deadline

    def __repr__(self) -> str:
        kind = "tell" if self.reply is None else "ask"
        return f"<Envelope {kind} {self.target}.{self.method} chain={self.chain:x}>"


class TracedEnvelope(Envelope):
    """An envelope with a trace context (tracing is on: see kernel/tracing.py)."""

    __slots__ = ("trace",)

    @classmethod
    def of(cls, env: Envelope, trace: Trace) -> TracedEnvelope:
        """``env``'s fields, and ``trace``."""
        new = object.__new__(cls)
        new.target = env.target
        new.method = env.method
        new.args = env.args
        new.kwargs = env.kwargs
        new.reply = env.reply
        new.chain = env.chain
        new.sender = env.sender
        new.deadline = env.deadline
        new.trace = trace
        return new


def tell_envelope(
    target: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Envelope:
    """A tell from whoever is running (an agent's turn, or a driver): a new chain."""
    sender = current_cell.get()
    return Envelope(
        target,
        method,
        args,
        kwargs or NO_KWARGS,
        None,
        next(chains),
        None if sender is None else sender.id,
    )


class RemoteReply:
    """Stands in, on the callee's node, for an asker's future on another node: the
    outcome goes back through ``send(corr, ok, value)``; past ``deadline`` (in this
    node's loop clock) the asker has given up, so the call need not start."""

    __slots__ = ("_clock", "_corr", "_deadline", "_done", "_send")

    def __init__(
        self,
        send: Callable[[int, bool, Any], None],
        corr: int,
        deadline: float,
        clock: Callable[[], float],
    ) -> None:
        self._send = send
        self._corr = corr
        self._deadline = deadline
        self._clock = clock  # the loop's time()
        self._done = False

    def done(self) -> bool:
        return self._done or self._clock() > self._deadline

    def set_result(self, result: Any, /) -> None:
        self._done = True
        self._send(self._corr, True, result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._send(self._corr, False, exception)

    def cancel(self) -> None:
        """The asker was cancelled: nothing is sent back, and a queued call never runs."""
        self._done = True

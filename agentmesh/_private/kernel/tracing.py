"""Tracing's seam in the kernel: the tracer the layer above sets, and what a traced
message carries.

The kernel records nothing itself and imports no tracing library. When tracing is on
(`agentmesh.tracing.enable`), `hooks` holds a `Tracer` (OpenTelemetry's, in
``_private/tracing.py``) and the send paths call it; off, `hooks` is None, and a
message costs one read of it where it is sent and one test of its envelope's type
at its turn: no span, no context capture, and no field in the envelope
(`TracedEnvelope` is the one that has it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .cell import Cell
    from .envelope import Envelope

__all__ = ["Trace", "Tracer", "hooks", "turn"]


class Trace:
    """The trace context one message carries: the context of the span that sent it
    (opaque here: an OpenTelemetry ``SpanContext``), and when it was sent, or
    arrived from a peer (`time.monotonic`), from which its turn measures how long it
    waited in the mailbox."""

    __slots__ = ("context", "sent")

    def __init__(self, context: Any, sent: float) -> None:
        self.context = context
        self.sent = sent


class Tracer(Protocol):
    """What the kernel, the transports and the bus ask of the tracer when it is on.
    Messages to and from the framework's own agents (``sys.*``) are not traced."""

    def ask(self, env: Envelope, fut: asyncio.Future[Any], target: str, node: str) -> Envelope:
        """An ask is being sent: start its span (a child of the current one), end it
        when ``fut`` is done; return the envelope carrying the span's context."""
        ...

    def tell(self, env: Envelope, target: str, node: str) -> Envelope:
        """A tell is being sent: record its span; return the envelope carrying it."""
        ...

    def carry(self, env: Envelope) -> Envelope:
        """``env`` with the current span's context (an ask of many made at once, as a
        simulation's step makes them), or as it is if there is none."""
        ...

    def publish(self, topic: str, sender: str | None) -> AbstractContextManager[Trace | None]:
        """A publication's span, open while it is delivered here and sent to other
        nodes; it gives the trace its deliveries carry (their turns are its children)."""
        ...

    def turn(self, coro: Coroutine[Any, Any, Any], env: Envelope, cell: Cell) -> Any:
        """The handler's coroutine ``coro`` for ``env`` (which has a trace) run in a
        turn span, a child of the sender's span, that is current while it runs."""
        ...

    def to_wire(self, trace: Trace) -> tuple[str, str]:
        """The W3C ``traceparent`` and ``tracestate`` values of a trace."""
        ...

    def from_wire(self, traceparent: Any, tracestate: Any) -> Trace | None:
        """A trace a peer sent, arrived now; None if it is not a valid W3C one."""
        ...


#: The tracer while tracing is on, else None: read once per message sent.
hooks: Tracer | None = None


def turn(coro: Coroutine[Any, Any, Any], env: Envelope, cell: Cell) -> Any:
    """``coro`` in a turn span if tracing is on (``env`` has a trace), else as it is."""
    tracer = hooks
    return coro if tracer is None else tracer.turn(coro, env, cell)

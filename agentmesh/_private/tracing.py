"""Tracing over OpenTelemetry: the kernel's `Tracer` (kernel/tracing.py), and turning
it on and off (`enable`, `disable`), for ``agentmesh.tracing``, ``Mesh(tracing=True)``
and ``agentmesh head|node --tracing``.

OpenTelemetry is imported by `enable` only (the ``otel`` extra): a program that never
turns tracing on never imports it.

The spans: ``ask <method>`` (CLIENT) from the moment an ask is sent until its reply
or error; ``tell <method>`` (PRODUCER) when a tell is sent; ``publish <topic>``
(PRODUCER) while a publication is delivered and sent to other nodes; and ``turn
<Class>.<method>`` (SERVER for an ask, CONSUMER for a tell or a delivery), a child of
the span that sent its message, with the time the message waited in the mailbox as
``agentmesh.mailbox.wait`` (seconds). The turn's span is current while its handler
runs, so what the handler sends, and the spans it starts itself, are its children.

While tracing is on, the process also keeps its latest finished spans (`recent_spans`,
fed by a span processor `enable` adds to the provider) for the dashboard, which reads
them through the node-level request ``!node.spans`` (`serve_spans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import time
import weakref
from collections.abc import Coroutine, Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .kernel import tracing as seam
from .kernel.envelope import Envelope, TracedEnvelope
from .kernel.errors import BadArguments
from .kernel.listing import answer
from .kernel.ports import FRAMEWORK_PREFIX
from .kernel.recent import Recent
from .kernel.tracing import Trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.trace import Span, SpanContext, TracerProvider

    from .kernel.cell import Cell

__all__ = ["disable", "enable", "enabled", "recent_spans", "serve_spans", "spans_since"]

log = logging.getLogger("agentmesh.tracing")

INSTALL = "tracing needs OpenTelemetry: pip install 'agentmesh[otel]'"
#: The instrumentation scope of agentmesh's spans.
SCOPE = "agentmesh"
#: Seconds `disable` waits for the spans recorded so far to be exported.
FLUSH_TIMEOUT = 5.0

# W3C trace context, version 00 (the one this side writes; other versions are
# ignored, so the trace starts again, as the recommendation allows).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACESTATE_MAX = 512

#: How many finished spans this process keeps for the dashboard (``!node.spans``).
SPANS_KEPT = 2000
#: Of a kept span's attributes, how many are sent, and how long a string value may be.
_ATTRIBUTES_SENT = 32
_VALUE_CHARS = 256
#: This process's latest finished spans, fed by the processor `enable` adds to each
#: provider that takes span processors (the SDK's).
recent_spans: Recent[ReadableSpan] = Recent(SPANS_KEPT)
#: The providers that feed `recent_spans`.
_feeding: weakref.WeakSet[Any] = weakref.WeakSet()


class OtelTracer:
    """The kernel's `Tracer` over an OpenTelemetry ``TracerProvider``."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.span import TraceFlags, TraceState

        from .. import __version__

        self.provider = provider
        self._tracer = provider.get_tracer(SCOPE, __version__)
        self._trace = trace
        self._context = context
        self._kinds = SpanKind
        self._error = functools.partial(Status, StatusCode.ERROR)
        self._flags = TraceFlags
        self._state = TraceState

    # -- sending ----------------------------------------------------------------------

    def ask(self, env: Envelope, fut: asyncio.Future[Any], target: str, node: str) -> Envelope:
        if _framework(env):
            return env
        span = self._send_span("ask", self._kinds.CLIENT, env, target, node)
        fut.add_done_callback(functools.partial(self._answered, span))
        return TracedEnvelope.of(env, Trace(span.get_span_context(), time.monotonic()))

    def _send_span(self, verb: str, kind: Any, env: Envelope, target: str, node: str) -> Span:
        """The span of sending ``env`` (an ask's or a tell's), started now."""
        return self._tracer.start_span(
            f"{verb} {env.method}",
            kind=kind,
            attributes={
                "agentmesh.method": env.method,
                "agentmesh.target": target,
                "agentmesh.node": node,
            },
        )

    def _answered(self, span: Span, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            span.set_attribute("agentmesh.cancelled", True)
        else:
            error = fut.exception()
            if error is not None:
                self._failed(span, error)
        span.end()

    def _failed(self, span: Span, error: BaseException) -> None:
        span.record_exception(error)
        span.set_status(self._error(f"{type(error).__name__}: {error}"))

    def tell(self, env: Envelope, target: str, node: str) -> Envelope:
        if _framework(env):
            return env
        span = self._send_span("tell", self._kinds.PRODUCER, env, target, node)
        span.end()  # a tell's span marks the send; its turn measures the wait
        return TracedEnvelope.of(env, Trace(span.get_span_context(), time.monotonic()))

    def carry(self, env: Envelope) -> Envelope:
        context = self._trace.get_current_span().get_span_context()
        if not context.is_valid or _framework(env):
            return env
        return TracedEnvelope.of(env, Trace(context, time.monotonic()))

    @contextlib.contextmanager
    def publish(self, topic: str, sender: str | None) -> Iterator[Trace | None]:
        if topic.startswith("agentmesh."):  # the framework's own (dead letters)
            yield None
            return
        span = self._tracer.start_span(
            f"publish {topic}",
            kind=self._kinds.PRODUCER,
            attributes={"agentmesh.topic": topic},
        )
        try:
            yield Trace(span.get_span_context(), time.monotonic())
        except BaseException as error:
            self._failed(span, error)
            raise
        finally:
            span.end()

    # -- receiving --------------------------------------------------------------------

    def turn(self, coro: Coroutine[Any, Any, Any], env: Envelope, cell: Cell) -> Any:
        return self._turn(coro, env, cell)

    async def _turn(self, coro: Coroutine[Any, Any, Any], env: Envelope, cell: Cell) -> Any:
        trace = env.trace
        assert trace is not None
        started = time.monotonic()
        method = env.method
        if method == "!deliver":  # a runtime subscription: name its handler
            method = getattr(env.args[0], "__name__", method)
        trace_api = self._trace
        parent = trace_api.set_span_in_context(trace_api.NonRecordingSpan(trace.context))
        span = self._tracer.start_span(
            f"turn {cell.cls.__name__}.{method}",
            context=parent,
            kind=self._kinds.CONSUMER if env.reply is None else self._kinds.SERVER,
            attributes={
                "agentmesh.agent": cell.label,
                "agentmesh.agent.class": cell.cls.__qualname__,
                "agentmesh.method": method,
                "agentmesh.node": cell.node.id,
                "agentmesh.mailbox.wait": max(0.0, started - trace.sent),
            },
        )
        # Current while the handler runs, in the agent's context: what it sends, and
        # spans it starts itself, are children of its turn. Restored by value (not by
        # token), so a turn finished from another context leaves no error behind.
        otel_context = self._context
        previous = otel_context.get_current()
        otel_context.attach(trace_api.set_span_in_context(span, previous))
        try:
            return await coro
        except GeneratorExit:
            raise  # closed unfinished (the loop went away): no outcome to record
        except BaseException as error:
            self._failed(span, error)
            raise
        finally:
            otel_context.attach(previous)
            span.end()

    # -- the wire ---------------------------------------------------------------------

    def to_wire(self, trace: Trace) -> tuple[str, str]:
        context: SpanContext = trace.context
        parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        state = context.trace_state
        return parent, state.to_header() if state else ""

    def from_wire(self, traceparent: Any, tracestate: Any) -> Trace | None:
        if type(traceparent) is not str:
            return None
        match = _TRACEPARENT.fullmatch(traceparent)
        if match is None:
            return None
        trace_id, span_id = int(match[1], 16), int(match[2], 16)
        if not trace_id or not span_id:
            return None
        state = None
        if (
            type(tracestate) is str
            and tracestate
            and len(tracestate) <= _TRACESTATE_MAX
            and tracestate.isascii()
            and tracestate.isprintable()
        ):
            state = self._state.from_header([tracestate])
        context = self._trace.SpanContext(
            trace_id, span_id, True, self._flags(int(match[3], 16)), state
        )
        return Trace(context, time.monotonic())

    def flush(self) -> None:
        """Export what was recorded so far (the provider's ``force_flush``, if any)."""
        flush = getattr(self.provider, "force_flush", None)
        if flush is not None:
            try:
                flush(int(FLUSH_TIMEOUT * 1000))
            except Exception:  # an exporter's failure is not the caller's
                log.exception("flushing spans failed")


def _framework(env: Envelope) -> bool:
    """Whether a message is the framework's own traffic (to or from ``sys.*``)."""
    sender = env.sender
    return env.target.startswith(FRAMEWORK_PREFIX) or (
        sender is not None and sender.startswith(FRAMEWORK_PREFIX)
    )


def enable(tracer_provider: TracerProvider | None = None) -> None:
    """Turn tracing on in this process, recording spans with ``tracer_provider``.

    None: OpenTelemetry's global provider if the program set one, else one built
    from the standard ``OTEL_*`` environment variables (``OTEL_TRACES_EXPORTER``,
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, the exporters' own), which
    becomes the global provider. Enabling again replaces the provider (what the
    previous one recorded is exported first). Raises
    `ImportError` if OpenTelemetry is not installed (the ``otel`` extra).
    """
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(INSTALL) from exc
    provider = tracer_provider
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            built = _provider_from_environment()
            if built is not None:
                trace.set_tracer_provider(built)
                provider = built
    _keep_recent(provider)
    previous, seam.hooks = seam.hooks, OtelTracer(provider)
    if isinstance(previous, OtelTracer) and previous.provider is not provider:
        previous.flush()


def disable() -> None:
    """Turn tracing off in this process: nothing is recorded from now on, and what was
    recorded is exported (flushed) first. Messages already sent keep their context."""
    tracer = seam.hooks
    seam.hooks = None
    if isinstance(tracer, OtelTracer):
        tracer.flush()


def enabled() -> bool:
    """Whether tracing is on in this process."""
    return seam.hooks is not None


def _provider_from_environment() -> TracerProvider | None:
    """An SDK provider exporting to what ``OTEL_TRACES_EXPORTER`` names (default
    ``otlp``; ``none``: nothing), each exporter found by its entry point as
    ``opentelemetry-instrument`` finds it; None without the SDK (spans are then not
    recorded, but trace context still travels)."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing is on without opentelemetry-sdk: no span is recorded")
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "agentmesh"}))
    provider = TracerProvider(resource=resource)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in filter(None, (part.strip() for part in names.split(","))):
        if name == "none":
            continue
        found = metadata.entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
            log.warning("no span exporter %r is installed%s: its spans are dropped", name, hint)
            continue
        try:
            exporter = next(iter(found)).load()()
        except Exception:
            log.exception("the span exporter %r failed to start", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# -- the latest spans, for the dashboard ------------------------------------------------


def _keep_recent(provider: Any) -> None:
    """Have ``provider`` add every span it finishes to `recent_spans` (once; a
    provider that takes no span processors, the API's own, records none)."""
    add = getattr(provider, "add_span_processor", None)
    if add is None or provider in _feeding:
        return
    add(_recent_processor()())
    _feeding.add(provider)


@functools.cache
def _recent_processor() -> type[SpanProcessor]:
    """The span processor class that keeps finished spans in `recent_spans` (made on
    first use: the SDK is imported only then)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class KeepRecent(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            recent_spans.add(span)

    return KeepRecent


def spans_since(seen: int, limit: int) -> dict[str, Any]:
    """What ``!node.spans`` answers: whether tracing is ``enabled`` in this process and
    its spans ``recorded`` (kept here), the number of the ``last`` span kept, and the
    ``spans`` numbered after ``seen`` (the newest ``limit``, oldest first), as plain
    dicts (`span_record`)."""
    tracer = seam.hooks
    recorded = isinstance(tracer, OtelTracer) and tracer.provider in _feeding
    last, spans = recent_spans.after(seen, limit)
    return {
        "enabled": tracer is not None,
        "recorded": recorded,
        "last": last,
        "spans": [span_record(span) for span in spans],
    }


def serve_spans(env: Envelope) -> None:
    """``!node.spans`` (seen, limit): `spans_since`, for another node (the dashboard)."""
    args = env.args
    if not (
        type(args) is tuple and len(args) == 2 and all(type(a) is int and a >= 0 for a in args)
    ):
        answer(env, BadArguments("!node.spans takes (seen, limit), two counts"))
        return
    answer(env, spans_since(*args))


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as plain values (JSON's): ids in hex, times in seconds since
    the epoch, its ``status`` (``unset``, ``ok``, ``error``) and ``error``, ``kind``,
    ``attributes`` (the first few, strings cut) and ``service`` (``service.name``)."""
    context = span.context
    parent = span.parent
    start = span.start_time or 0
    end = span.end_time or start
    status = span.status
    attributes = dict(list((span.attributes or {}).items())[:_ATTRIBUTES_SENT])
    service = span.resource.attributes.get("service.name")
    return {
        "trace_id": f"{context.trace_id:032x}" if context else "",
        "span_id": f"{context.span_id:016x}" if context else "",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "start": start / 1e9,
        "duration": max(0, end - start) / 1e9,
        "status": status.status_code.name.lower(),
        "error": status.description,
        "attributes": {k: _plain(v) for k, v in attributes.items()},
        "service": service if isinstance(service, str) else None,
    }


def _plain(value: Any) -> Any:
    """An attribute's value as JSON has it, strings cut to `_VALUE_CHARS`."""
    if isinstance(value, str):
        return value if len(value) <= _VALUE_CHARS else value[:_VALUE_CHARS] + "..."
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value[:16]]
    return str(value)[:_VALUE_CHARS]

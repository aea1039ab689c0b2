"""Agents and a span exporter for the tracing tests (importable by daemons, whose
working directory is the repository: see `conftest.start_daemon`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

import agentmesh as am
from agentmesh import tracing

#: Where `JsonFileExporter` writes: this path plus ``.<pid>.jsonl``.
SPANS_VARIABLE = "AGENTMESH_TEST_SPANS"


class Front(am.Agent):
    """Asks ``back``, tells ``sink`` and publishes on ``news.<x>``, for one request."""

    async def handle(self, back: am.AgentRef, sink: am.AgentRef, x: int) -> int:
        await sink.record.tell(x)
        await self.publish(f"news.{x}", x)
        doubled: int = await back.double(x)
        return doubled

    async def fail(self, back: am.AgentRef) -> None:
        await back.fail()


class Back(am.Agent):
    async def double(self, x: int) -> int:
        return 2 * x

    async def fail(self) -> None:
        raise ValueError("no")


class Sink(am.Agent):
    """Records what it is told, and what is published on ``news.*``."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    async def record(self, x: Any) -> None:
        self.got.append(x)

    @am.subscribe("news.*")
    async def on_news(self, x: int) -> None:
        self.got.append(("news", x))

    async def seen(self) -> list[Any]:
        return self.got


@dataclass
class Recorded:
    """What a test records this process's spans with: the exporter, and a tracer of
    its own for a request's root span."""

    exporter: InMemorySpanExporter
    tracer: Tracer

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        [span] = self.named(name)
        return span


@contextmanager
def recording() -> Iterator[Recorded]:
    """Tracing on in this process, into an in-memory exporter, until the end."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield Recorded(exporter, provider.get_tracer("tests"))
    finally:
        tracing.disable()
        provider.shutdown()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """What the tests check of a span, as plain JSON."""
    context = span.context
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "service": span.resource.attributes.get("service.name"),
        "pid": os.getpid(),
    }


class JsonFileExporter(SpanExporter):
    """Writes each span as a line of JSON to ``$AGENTMESH_TEST_SPANS.<pid>.jsonl``: how
    a daemon's spans reach the test, through ``OTEL_TRACES_EXPORTER`` (an entry point
    the test declares), as any exporter would be found."""

    def __init__(self) -> None:
        self._path = f"{os.environ[SPANS_VARIABLE]}.{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._path, "a") as out:
            for span in spans:
                out.write(json.dumps(span_record(span)) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

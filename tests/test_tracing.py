"""Tracing in one process: spans of asks, tells, publishes and turns, their parents,
and nothing at all when tracing is off. Across processes: test_tracing_cluster.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import agentmesh as am
from agentmesh import tracing
from agentmesh._private.kernel import tracing as seam
from agentmesh._private.kernel.envelope import TracedEnvelope
from agentmesh._private.kernel.transport import MemoryNetwork
from agentmesh._private.tracing import INSTALL, OtelTracer

from .agents import Gate, Relay
from .conftest import GRPC_WINDOW, ROOT, World, open_grpc_pair, wait_for
from .traced_agents import Back, Front, Recorded, Sink, recording


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    with recording() as spans:
        yield spans


async def spans_ended(recorded: Recorded, *names: str) -> None:
    """Until a span of each name has ended (a tell's turn may end after the ask)."""

    def ended() -> bool:
        have = {s.name for s in recorded.spans()}
        return all(name in have for name in names)

    await wait_for(ended, what=f"spans {names}")


@pytest.fixture(params=["local", "memory", "grpc"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """The driver's node and the agents' node: one, two over a `MemoryNetwork`, or
    two over gRPC on loopback."""
    options = {"ask_timeout": 5.0, "shutdown_timeout": 2.0}
    if request.param == "local":
        async with am.Mesh(**options) as mesh:
            yield World("local", mesh, mesh)
    elif request.param == "memory":
        network = MemoryNetwork()
        async with (
            am.Mesh._over(network.transport(), **options) as driver,
            am.Mesh._over(network.transport(), **options) as host,
        ):
            yield World("memory", driver, host)
    else:
        async with open_grpc_pair(window=GRPC_WINDOW, **options) as pair:
            yield World("grpc", pair.driver, pair.host)


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def test_one_request_is_one_trace(recorded: Recorded, world: World) -> None:
    front = await world.spawn(Front, name="front")
    sink = await world.spawn(Sink, name="sink")
    back = await world.driver.spawn(Back, name="back")  # the driver's node: a hop back
    with recorded.tracer.start_as_current_span("request"):
        assert await front.handle(back, sink, 3) == 6
    await spans_ended(recorded, "turn Sink.record", "turn Sink.on_news")

    request = recorded.one("request")
    ask = recorded.one("ask handle")
    turn = recorded.one("turn Front.handle")
    tell, told = recorded.one("tell record"), recorded.one("turn Sink.record")
    publish, delivered = recorded.one("publish news.3"), recorded.one("turn Sink.on_news")
    inner, answered = recorded.one("ask double"), recorded.one("turn Back.double")
    trace = [request, ask, turn, tell, told, publish, delivered, inner, answered]
    assert {trace_id(s) for s in trace} == {trace_id(request)}
    assert {s.name for s in recorded.spans() if trace_id(s) == trace_id(request)} == {
        s.name for s in trace
    }
    assert parent_of(ask) == span_id(request)
    assert parent_of(turn) == span_id(ask)  # the ask's span is the parent of its turn
    for sent in (tell, publish, inner):  # what the handler sends: children of its turn
        assert parent_of(sent) == span_id(turn)
    assert parent_of(told) == span_id(tell)
    assert parent_of(delivered) == span_id(publish)
    assert parent_of(answered) == span_id(inner)

    kinds = {s.name: s.kind.name for s in trace}
    assert kinds["ask handle"] == kinds["ask double"] == "CLIENT"
    assert kinds["turn Front.handle"] == kinds["turn Back.double"] == "SERVER"
    assert kinds["tell record"] == kinds["publish news.3"] == "PRODUCER"
    assert kinds["turn Sink.record"] == kinds["turn Sink.on_news"] == "CONSUMER"
    attributes = dict(turn.attributes or {})
    wait = attributes.pop("agentmesh.mailbox.wait")
    assert isinstance(wait, float)
    assert wait >= 0.0
    assert attributes == {
        "agentmesh.agent": "front",
        "agentmesh.agent.class": "Front",
        "agentmesh.method": "handle",
        "agentmesh.node": world.host.node_id,
    }
    assert dict(ask.attributes or {}) == {
        "agentmesh.method": "handle",
        "agentmesh.target": "front",
        "agentmesh.node": world.driver.node_id,
    }
    assert dict(publish.attributes or {}) == {"agentmesh.topic": "news.3"}
    assert all(s.status.status_code.name == "UNSET" for s in trace)


async def test_failures_are_recorded_on_the_spans(recorded: Recorded, world: World) -> None:
    front = await world.spawn(Front)
    back = await world.driver.spawn(Back)
    with pytest.raises(am.RemoteError):
        await front.fail(back)
    await spans_ended(recorded, "ask fail", "turn Front.fail", "turn Back.fail")
    for span in recorded.spans():
        if span.name in ("ask fail", "turn Front.fail", "turn Back.fail"):
            assert span.status.status_code.name == "ERROR", span.name
            assert [e.name for e in span.events] == ["exception"], span.name
    [driver_ask, _] = sorted(recorded.named("ask fail"), key=lambda s: s.start_time or 0)
    assert "RemoteError" in (driver_ask.status.description or "")


@pytest.mark.parametrize("how", ["one", "backlog", "concurrent"])
async def test_every_turn_has_a_span_whatever_runs_it(recorded: Recorded, how: str) -> None:
    """A turn run at once, one of a backlog (awaited in one coroutine) and one of a
    concurrent agent (a task each) each get a span, a child of its tell's."""
    count = 1 if how == "one" else 10
    async with am.Mesh() as mesh:
        sink = await mesh.spawn(Sink, concurrency=3 if how == "concurrent" else None)
        for i in range(count):  # queued together: a backlog for one slice
            sink.record.tell_nowait(i)
        await wait_for(lambda: len(recorded.named("turn Sink.record")) == count)
        assert await sink.seen() == list(range(count))
    tells = {span_id(s) for s in recorded.named("tell record")}
    turns = recorded.named("turn Sink.record")
    assert len(tells) == count
    assert {parent_of(s) for s in turns} == tells


async def test_a_reentrant_turn_is_a_child_of_its_ask(recorded: Recorded) -> None:
    """a -> b -> a: the call back into a (a turn in a task of its own, while a's first
    turn waits) is in the one trace, a chain of asks and their turns."""
    async with am.Mesh() as mesh:
        a = await mesh.spawn(Relay, name="a")
        b = await mesh.spawn(Relay, name="b")
        assert await a.ask_back(b, 2) == 2
    asks = recorded.named("ask ask_back")
    turns = recorded.named("turn Relay.ask_back")
    assert len(asks) == len(turns) == 3
    assert len({trace_id(s) for s in asks + turns}) == 1
    by_parent = {parent_of(s): s for s in asks + turns}
    chain = [next(s for s in asks if s.parent is None)]
    while span_id(chain[-1]) in by_parent:
        chain.append(by_parent[span_id(chain[-1])])
    assert [s.name.split()[0] for s in chain] == ["ask", "turn"] * 3
    agents = [dict(s.attributes or {})["agentmesh.agent"] for s in chain[1::2]]
    assert agents == ["a", "b", "a"]


async def test_an_ask_from_a_thread_is_a_child_of_the_threads_span(recorded: Recorded) -> None:
    async with am.Mesh() as mesh:
        back = await mesh.spawn(Back)
        result: list[int] = []

        def web_request() -> None:
            with recorded.tracer.start_as_current_span("web"):
                result.append(back.double.ask_sync(4))

        thread = threading.Thread(target=web_request)
        thread.start()
        await asyncio.to_thread(thread.join)
        assert result == [8]
    assert parent_of(recorded.one("ask double")) == span_id(recorded.one("web"))
    assert parent_of(recorded.one("turn Back.double")) == span_id(recorded.one("ask double"))


async def test_asks_made_many_at_once_carry_the_current_span(recorded: Recorded) -> None:
    """`Node.ask_each` (the simulation's step): no ask span each, but the turns are
    children of the span current where they were made."""
    async with am.Mesh() as mesh:
        backs = [await mesh.spawn(Back) for _ in range(3)]
        loop = asyncio.get_running_loop()
        with recorded.tracer.start_as_current_span("step"):
            answers = mesh._node.ask_each(backs, "double", [0, 1, 2], loop.time() + 5)
        await answers.wait(loop.time() + 5)
        assert answers.values == [0, 2, 4]
        await wait_for(lambda: len(recorded.named("turn Back.double")) == 3)
    step = recorded.one("step")
    assert {parent_of(s) for s in recorded.named("turn Back.double")} == {span_id(step)}


async def test_nothing_is_recorded_and_nothing_carried_when_off() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert not tracing.enabled()
    async with am.Mesh() as mesh:
        front = await mesh.spawn(Front)
        sink = await mesh.spawn(Sink)
        back = await mesh.spawn(Back)
        gate = await mesh.spawn(Gate)
        with provider.get_tracer("tests").start_as_current_span("request"):
            assert await front.handle(back, sink, 1) == 2
            await gate.wait.tell("blocker")
            await gate.note.tell("queued")
            cell = mesh._node.cells[gate.id]
            await wait_for(lambda: len(cell.mailbox) == 1)
            [queued] = cell.mailbox.items or ()
            assert type(queued) is not TracedEnvelope
            assert queued.trace is None
            cell.instance.gate.set()  # type: ignore[union-attr]
        await wait_for(lambda: len(sink_cell_got(mesh, sink)) == 2)
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


def sink_cell_got(mesh: am.Mesh, sink: am.AgentRef) -> list[Any]:
    instance = mesh._node.cells[sink.id].instance
    assert isinstance(instance, Sink)
    return instance.got


async def test_turned_off_with_messages_in_flight(recorded: Recorded) -> None:
    """A traced message still queued when tracing is turned off runs without a span."""
    async with am.Mesh() as mesh:
        gate = await mesh.spawn(Gate)
        await gate.wait.tell("blocker")
        await gate.note.tell("queued")
        cell = mesh._node.cells[gate.id]
        await wait_for(lambda: len(cell.mailbox) == 1)
        [queued] = cell.mailbox.items or ()
        assert isinstance(queued, TracedEnvelope)
        tracing.disable()
        cell.instance.gate.set()  # type: ignore[union-attr]
        assert await gate.calls_so_far() == ["blocker", "queued"]
    assert "turn Gate.note" not in {s.name for s in recorded.spans()}


async def test_a_mesh_with_tracing_leaves_it_on_when_it_did_not_turn_it_on(
    recorded: Recorded,
) -> None:
    async with am.Mesh(tracing=True) as mesh:
        back = await mesh.spawn(Back)
        assert await back.double(1) == 2
    assert tracing.enabled()
    assert recorded.named("turn Back.double")


def test_enabling_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(ImportError, match=r"agentmesh\[otel\]") as caught:
        tracing.enable()
    assert str(caught.value) == INSTALL
    assert not tracing.enabled()


async def test_a_mesh_with_tracing_but_without_opentelemetry_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    mesh = am.Mesh(tracing=True)
    with pytest.raises(ImportError, match=r"agentmesh\[otel\]"):
        await mesh.__aenter__()
    assert not tracing.enabled()
    assert mesh._node.loop is None  # stopped before anything started


def test_the_wire_form_is_w3c_trace_context() -> None:
    tracer = OtelTracer(TracerProvider())
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace = tracer.from_wire(parent, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert trace is not None
    assert trace.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert trace.context.span_id == 0xB7AD6B7169203331
    assert trace.context.is_remote
    assert tracer.to_wire(trace) == (parent, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    unsampled = tracer.from_wire(parent[:-2] + "00", "")
    assert unsampled is not None
    assert tracer.to_wire(unsampled) == (parent[:-2] + "00", "")
    for bad in (
        "",
        "junk",
        parent.upper(),
        "01" + parent[2:],  # another version: ignored, the trace starts again
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # all-zero ids are invalid
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
        parent + "-extra",
        parent * 1000,
        42,
        None,
    ):
        assert tracer.from_wire(bad, "") is None, bad
    # A tracestate that is not W3C's is dropped, the traceparent kept.
    for state in ("\n", "x" * 600, "no pair", 7, None):
        trace = tracer.from_wire(parent, state)
        assert trace is not None
        assert tracer.to_wire(trace) == (parent, "")


def test_tracing_off_never_imports_opentelemetry() -> None:
    script = textwrap.dedent(
        """
        import sys
        import agentmesh as am
        from tests.traced_agents import Back  # imports the SDK: forget it again

        for name in [m for m in sys.modules if m.startswith("opentelemetry")]:
            del sys.modules[name]

        async def main():
            async with am.Mesh() as mesh:
                back = await mesh.spawn(Back)
                assert await back.double(2) == 4
                await back.double.tell(1)
                await mesh.publish("news.1", 1)

        am.run(main())
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_mesh_with_tracing_exports_as_the_environment_says(tmp_path: Any) -> None:
    """``Mesh(tracing=True)`` with no provider set: one built from the ``OTEL_*``
    variables (here the SDK's console exporter and a service name), on while the mesh
    runs, flushed when it ends."""
    script = textwrap.dedent(
        """
        import agentmesh as am
        from agentmesh import tracing
        from tests.traced_agents import Back

        async def main():
            async with am.Mesh(tracing=True) as mesh:
                assert tracing.enabled()
                back = await mesh.spawn(Back)
                assert await back.double(2) == 4
            assert not tracing.enabled()

        am.run(main())
        """
    )
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "tracing-test",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # so only the flush at the end exports
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    spans = _json_objects(done.stdout)
    names = {s["name"] for s in spans}
    assert {"ask double", "turn Back.double"} <= names, names
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"tracing-test"}


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects printed one after the other (the console exporter's)."""
    decoder = json.JSONDecoder()
    found, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return found
        item, i = decoder.raw_decode(text, i)
        found.append(item)


def test_the_seam_is_empty_when_off() -> None:
    assert seam.hooks is None


def test_the_example_of_the_docs_prints_what_they_say() -> None:
    page = (ROOT / "docs" / "observability.md").read_text()
    section = page[page.index("## Tracing") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    printed = section.split("It prints:\n\n```text\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed

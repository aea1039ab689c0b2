"""Tracing across processes: one request through agents on two daemons is one trace.

The daemons run with ``--tracing`` and export as the ``OTEL_*`` variables say, as in
production: ``OTEL_TRACES_EXPORTER`` names an exporter found by its entry point, here
`tests.traced_agents.JsonFileExporter`, declared by a distribution the test lays on
the daemons' ``PYTHONPATH``; it writes each process's spans to a file the test
reads. The driver (this process) records into an in-memory exporter.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon
from agentmesh.v1 import wire_pb2

from .agents import Counter
from .conftest import start_daemon, wait_for
from .test_wire_hardening import TOKEN, handshake, packed, raw_stream, send
from .traced_agents import SPANS_VARIABLE, Back, Front, Recorded, Sink, recording, span_record

pytestmark = pytest.mark.slow

ENTRY_POINTS = """\
[opentelemetry_traces_exporter]
jsonfile = tests.traced_agents:JsonFileExporter
"""


@pytest.fixture
def exporting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Daemons started from here export their spans to ``<tmp>/spans.<pid>.jsonl``."""
    dist = tmp_path / "site" / "agentmesh_test_spans-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: agentmesh-test-spans\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    path = os.pathsep.join(filter(None, [str(dist.parent), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonfile")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds between exports
    monkeypatch.setenv(SPANS_VARIABLE, str(tmp_path / "spans"))
    return tmp_path


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    """The driver's spans (this process's)."""
    with recording() as spans:
        yield spans


def exported(folder: Path) -> list[dict[str, Any]]:
    """The spans the daemons have exported so far."""
    spans = []
    for path in folder.glob("spans.*.jsonl"):
        spans.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return spans


@pytest.fixture
async def daemons(
    exporting: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Daemon, Daemon]]:
    """A head and a worker, each with ``--tracing`` and a service name of its own."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "head")
    head = await start_daemon("head", "--listen", "127.0.0.1:0", "--tracing", "--token", TOKEN)
    try:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "worker")
        worker = await start_daemon("node", "--join", head.address, "--tracing", "--token", TOKEN)
        try:
            yield head, worker
        finally:
            await worker.stop()
    finally:
        await head.stop()


async def test_one_request_through_two_nodes_is_one_trace(
    exporting: Path, daemons: tuple[Daemon, Daemon], recorded: Recorded
) -> None:
    """The driver asks A on node 1; A tells C and publishes (C subscribes) and asks B,
    both on node 2: every span, from three processes, is in the request's trace."""
    head, worker = daemons
    async with am.Mesh(join=head.address, token=TOKEN, ask_timeout=20) as driver:
        nodes = {n.role: n.id for n in await driver.nodes()}
        front = await driver.spawn(Front, name="front", node=nodes["head"])
        back = await driver.spawn(Back, name="back", node=nodes["worker"])
        sink = await driver.spawn(Sink, name="sink", node=nodes["worker"])
        with recorded.tracer.start_as_current_span("request") as request:
            assert await front.handle(back, sink, 3) == 6

        async def sink_has_both() -> bool:
            return sorted(map(str, await sink.seen())) == ["('news', 3)", "3"]

        await wait_for(sink_has_both, timeout=20, what="the tell and the publication")
        trace_id = f"{request.get_span_context().trace_id:032x}"
        wanted = {
            "turn Front.handle",
            "tell record",
            "publish news.3",
            "ask double",
            "turn Back.double",
            "turn Sink.record",
            "turn Sink.on_news",
        }

        def in_trace() -> list[dict[str, Any]]:
            return [s for s in exported(exporting) if s["trace_id"] == trace_id]

        await wait_for(
            lambda: {s["name"] for s in in_trace()} >= wanted,
            timeout=20,
            what="the daemons' spans of the request",
        )
    spans = in_trace() + [
        span_record(s)
        for s in recorded.spans()
        if s.context is not None and f"{s.context.trace_id:032x}" == trace_id
    ]
    by_name = {s["name"]: s for s in spans}
    assert sorted(s["name"] for s in spans) == sorted({*wanted, "request", "ask handle"})

    def parent(name: str) -> str:
        return by_name[name]["parent_id"]

    def span(name: str) -> str:
        return by_name[name]["span_id"]

    assert by_name["request"]["parent_id"] is None
    assert parent("ask handle") == span("request")
    assert parent("turn Front.handle") == span("ask handle")
    for sent in ("tell record", "publish news.3", "ask double"):
        assert parent(sent) == span("turn Front.handle")
    assert parent("turn Sink.record") == span("tell record")
    assert parent("turn Sink.on_news") == span("publish news.3")
    assert parent("turn Back.double") == span("ask double")

    # Each span was recorded where its agent runs: three processes, two services.
    pids = {s["name"]: s["pid"] for s in spans}
    assert pids["request"] == pids["ask handle"] == os.getpid()
    assert pids["turn Front.handle"] == pids["ask double"] == head.process.pid
    assert pids["turn Back.double"] == pids["turn Sink.on_news"] == worker.process.pid
    services = {s["name"]: s["service"] for s in spans if s["pid"] != os.getpid()}
    assert services["turn Front.handle"] == "head"
    assert services["turn Back.double"] == "worker"
    assert by_name["turn Back.double"]["attributes"]["agentmesh.node"] == nodes["worker"]
    assert by_name["turn Back.double"]["attributes"]["agentmesh.mailbox.wait"] >= 0.0


async def test_a_peers_trace_context_is_taken_if_valid_and_ignored_if_not(
    exporting: Path,
) -> None:
    """A traced head delivers what a peer sends whatever its trace context: a valid
    one parents the turn's span, anything else is ignored (no span, no refusal)."""
    head = await start_daemon("head", "--listen", "127.0.0.1:0", "--tracing", "--token", TOKEN)
    try:
        async with am.Mesh(join=head.address, token=TOKEN, ask_timeout=10) as mesh:
            counter = await mesh.spawn(Counter)
            valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            bodies = [
                ("record", ("valid",), None, 0, None, (valid, "k=v")),
                ("record", ("junk",), None, 0, None, ("junk", "")),
                ("record", ("wrong shape",), None, 0, None, "not a pair"),
                ("record", ("numbers",), None, 0, None, (1, 2)),
                ("record", ("long",), None, 0, None, (valid * 100, "x" * 10_000)),
            ]
            typed = wire_pb2.Envelope(
                target=counter.id,
                method="record",
                args=[wire_pb2.Value(codec="pickle", data=pickle.dumps("typed"))],
                traceparent="zz",
                tracestate="\n",
            )
            async with raw_stream(head.address) as call:
                await handshake(call)
                entries = [packed(counter.id, body) for body in bodies]
                batch = wire_pb2.Batch(
                    pickled=pickle.dumps(entries), envelopes=[typed], order=[True] * 5 + [False]
                )
                await send(call, wire_pb2.Frame(batch=batch))

                async def all_recorded() -> bool:
                    return len(await counter.items()) == 6

                await wait_for(all_recorded, timeout=10, what="every envelope delivered")
            assert await counter.items() == [
                "valid",
                "junk",
                "wrong shape",
                "numbers",
                "long",
                "typed",
            ]
            assert head.process.returncode is None

            def recorded_turns() -> list[dict[str, Any]]:
                return [s for s in exported(exporting) if s["name"] == "turn Counter.record"]

            await wait_for(lambda: len(recorded_turns()) >= 1, timeout=10, what="a turn span")
            [turn] = recorded_turns()  # the one with a valid context, no other
            assert turn["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
            assert turn["parent_id"] == "b7ad6b7169203331"
    finally:
        await head.stop()

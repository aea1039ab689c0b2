"""The dashboard's JSON endpoint and HTTP server, without a browser: an embedded mesh,
or meshes of this process, served by a real `Dashboard` on loopback and read over
real HTTP. The page itself, in Chromium against daemons, is
test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import agentmesh as am
import agentmesh.tracing
from agentmesh._private import cli
from agentmesh._private.kernel.listing import ask_node
from agentmesh._private.kernel.recent import Recent
from agentmesh._private.kernel.transport import MemoryNetwork
from agentmesh._private.mesh import node_of
from agentmesh._private.tracing import recent_spans
from agentmesh.dashboard import Dashboard

from .agents import Counter
from .conftest import ROOT, wait_for
from .traced_agents import Recorded, recording


class Reply:
    """One HTTP response as the server sent it."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    dashboard: Dashboard,
    path: str = "/api/snapshot",
    *,
    method: str = "GET",
    host: str | None = None,
    raw: bytes | None = None,
) -> Reply:
    """Send one request to the dashboard (``raw``: these bytes as they are)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(dashboard.url.split(":")[2][:-1])
    )
    try:
        if raw is None:
            raw = (
                f"{method} {path} HTTP/1.1\r\nHost: {host or dashboard.url[7:-1]}\r\n\r\n".encode()
            )
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return Reply(await reader.read())
    finally:
        writer.close()


@pytest.fixture
async def served(mesh: am.Mesh) -> AsyncIterator[Dashboard]:
    async with Dashboard(mesh, interval=0.05) as dashboard:
        yield dashboard


async def test_the_snapshot_lists_nodes_agents_and_their_supervisors(
    mesh: am.Mesh, served: Dashboard
) -> None:
    team = await mesh.spawn(am.Supervisor, am.SupervisorSpec(), name="team")
    member = await mesh.spawn(Counter, name="member", supervisor=team)
    loner = await mesh.spawn(Counter, name="loner")
    await loner.add(1)

    reply = await request(served)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    view = reply.json()
    assert view["version"] == 1
    assert view["dashboard_node"] == mesh.node_id
    assert view["interval"] == 0.05
    [node] = view["nodes"]
    assert (node["id"], node["role"], node["state"], node["alive"]) == (
        mesh.node_id,
        "embedded",
        "up",
        True,
    )
    assert node["agents"] == 3
    assert set(node["resources"]) >= {"cpu", "memory"}
    agents = {a["name"]: a for a in view["agents"]}
    assert set(agents) == {"team", "member", "loner"}
    assert agents["member"]["supervisor"] == team.id
    assert (
        agents["team"]["supervisor"] == agents["loner"]["supervisor"] == f"sys.root.{mesh.node_id}"
    )
    assert agents["member"]["id"] == member.id
    assert (agents["loner"]["agent_class"], agents["loner"]["handled"]) == ("Counter", 1)
    assert agents["team"]["agent_class"] == "Supervisor"
    assert view["unreachable"] == view["truncated"] == {}
    assert view["failures"] == {
        "crashes": [],
        "placement": [],
        "placement_waiting": 0,
        "placement_error": None,
    }


async def test_rates_are_messages_handled_per_second_since_an_earlier_snapshot(
    mesh: am.Mesh, served: Dashboard
) -> None:
    busy = await mesh.spawn(Counter, name="busy")
    idle = await mesh.spawn(Counter, name="idle")

    def rate(view: dict[str, Any], ref: am.AgentRef) -> float | None:
        return next(a["rate"] for a in view["agents"] if a["id"] == ref.id)

    first = (await request(served)).json()
    assert rate(first, busy) is None  # seen once: no rate yet

    async def busy_is_counted() -> bool:
        for _ in range(20):
            await busy.add(1)
        view = (await request(served)).json()
        return (rate(view, busy) or 0) > 0 and view["nodes"][0]["rate"] > 0

    await wait_for(busy_is_counted, what="a rate above 0 for the busy agent")
    assert rate((await request(served)).json(), idle) == 0


async def test_a_crash_is_a_recent_failure_with_its_traceback(
    mesh: am.Mesh, served: Dashboard
) -> None:
    fragile = await mesh.spawn(Counter, name="fragile<b>")
    await fragile.fail.tell("broken <script>")  # a tell's exception crashes the agent
    await mesh.wait_terminated(fragile)

    view = (await request(served)).json()
    [crash] = view["failures"]["crashes"]
    assert crash["agent_id"] == fragile.id
    assert crash["name"] == "fragile<b>"
    assert crash["agent_class"] == "Counter"
    assert crash["node"] == mesh.node_id
    assert crash["error"] == "ValueError: broken <script>"
    assert crash["where"].startswith("tell")
    assert "Traceback (most recent call last)" in crash["traceback"]
    assert "raise ValueError(message)" in crash["traceback"]
    assert crash["supervisor"] == f"sys.root.{mesh.node_id}"
    assert fragile.id not in {a["id"] for a in view["agents"]}  # it ended: temporary
    # Taken once: the next snapshot still has it, not twice.
    assert len((await request(served)).json()["failures"]["crashes"]) == 1


async def test_a_placement_failure_is_a_recent_failure(mesh: am.Mesh, served: Dashboard) -> None:
    with pytest.raises(am.PlacementError):
        await mesh.spawn(Counter, resources={"gpu": 1})
    [failure] = (await request(served)).json()["failures"]["placement"]
    assert "gpu" in failure


async def test_with_tracing_off_the_snapshot_says_so(mesh: am.Mesh, served: Dashboard) -> None:
    assert not agentmesh.tracing.enabled()
    kept = recent_spans.last  # (spans of earlier tests, with tracing on, stay kept)
    counter = await mesh.spawn(Counter)
    await counter.add(1)
    tracing = (await request(served)).json()["tracing"]
    assert tracing["nodes"] == {mesh.node_id: {"enabled": False, "recorded": False}}
    assert recent_spans.last == kept


class Pricer(am.Agent):
    async def price(self, item: str) -> float:
        return 0.5


class Shop(am.Agent):
    def __init__(self, pricer: am.AgentRef) -> None:
        self.pricer = pricer

    async def quote(self, item: str, count: int) -> float:
        price: float = await self.pricer.price(item)
        return count * price


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    with recording() as spans:
        yield spans


async def test_with_tracing_on_a_request_is_a_trace_of_spans_with_parents(
    recorded: Recorded, mesh: am.Mesh, served: Dashboard
) -> None:
    shop = await mesh.spawn(Shop, await mesh.spawn(Pricer))
    with recorded.tracer.start_as_current_span("request") as request_span:
        assert await shop.quote("apple", 4) == 2.0
    trace_id = f"{request_span.get_span_context().trace_id:032x}"

    async def trace() -> list[dict[str, Any]]:
        view = (await request(served)).json()
        return [t for t in view["tracing"]["traces"] if t["trace_id"] == trace_id]

    await wait_for(trace, what="the request's trace in the snapshot")
    view = (await request(served)).json()
    assert view["tracing"]["nodes"] == {mesh.node_id: {"enabled": True, "recorded": True}}
    [trace] = [t for t in view["tracing"]["traces"] if t["trace_id"] == trace_id]
    assert trace["root"] == "request"
    spans = {s["name"]: s for s in trace["spans"]}
    assert set(spans) == {
        "request",
        "ask quote",
        "turn Shop.quote",
        "ask price",
        "turn Pricer.price",
    }
    assert spans["request"]["parent_id"] is None
    for child, parent in [
        ("ask quote", "request"),
        ("turn Shop.quote", "ask quote"),
        ("ask price", "turn Shop.quote"),
        ("turn Pricer.price", "ask price"),
    ]:
        assert spans[child]["parent_id"] == spans[parent]["span_id"], child
        assert spans[child]["trace_id"] == trace["trace_id"]
    turn = spans["turn Shop.quote"]
    assert (turn["kind"], turn["status"], turn["node"]) == ("server", "unset", mesh.node_id)
    assert turn["attributes"]["agentmesh.agent.class"] == "Shop"
    assert turn["duration"] >= 0
    # (Times are seconds since the epoch as floats: equal to a microsecond.)
    assert trace["duration"] >= max(s["duration"] for s in trace["spans"]) - 1e-6
    assert trace["errors"] == 0
    assert trace["nodes"] == [mesh.node_id]


async def test_a_failed_ask_is_an_error_span(
    recorded: Recorded, mesh: am.Mesh, served: Dashboard
) -> None:
    counter = await mesh.spawn(Counter)
    with recorded.tracer.start_as_current_span("failing") as span, pytest.raises(am.RemoteError):
        await counter.fail("refused")
    trace_id = f"{span.get_span_context().trace_id:032x}"

    async def failed() -> list[dict[str, Any]]:
        view = (await request(served)).json()
        return [t for t in view["tracing"]["traces"] if t["trace_id"] == trace_id]

    await wait_for(failed, what="the failed ask's trace")
    [trace] = await failed()
    assert trace["errors"] == 2  # the ask and its turn
    ask = next(s for s in trace["spans"] if s["name"] == "ask fail")
    assert ask["status"] == "error"
    assert "refused" in ask["error"]


async def test_crashes_and_spans_of_other_nodes_are_asked_of_them() -> None:
    """Two meshes over a `MemoryNetwork`: each answers ``!node.crashes`` for its own
    node, a bad request gets `BadArguments`, and a node that is not there is named."""
    network = MemoryNetwork()
    async with (
        am.Mesh._over(network.transport(), ask_timeout=5) as near,
        am.Mesh._over(network.transport(), ask_timeout=5) as far,
    ):
        fragile = await far.spawn(Counter)
        await fragile.fail.tell("far away")
        await far.wait_terminated(fragile)
        node = node_of(near)
        last, [report] = await ask_node(node, far.node_id, "!node.crashes", (0, 10), 5)
        assert (last, report.agent_id, report.error) == (1, fragile.id, "ValueError: far away")
        assert await ask_node(node, far.node_id, "!node.crashes", (1, 10), 5) == (1, [])
        spans = await ask_node(node, far.node_id, "!node.spans", (0, 10), 5)
        assert set(spans) == {"enabled", "recorded", "last", "spans"}
        for bad in [(), ("0", 10), (-1, 10), (0, True), (0, 1, 2)]:
            for method in ("!node.crashes", "!node.spans"):
                with pytest.raises(am.BadArguments):
                    await ask_node(node, far.node_id, method, bad, 5)


def test_recent_keeps_the_latest_items_numbered() -> None:
    recent: Recent[str] = Recent(3)
    assert recent.after(0, 10) == (0, [])
    for item in "abcde":
        recent.add(item)
    assert recent.after(0, 10) == (5, ["c", "d", "e"])  # "a" and "b" went
    assert recent.after(3, 10) == (5, ["d", "e"])
    assert recent.after(4, 10) == (5, ["e"])
    assert recent.after(5, 10) == (5, [])
    assert recent.after(0, 1) == (5, ["e"])  # the newest, when limited
    assert recent.after(9, 10) == (5, ["c", "d", "e"])  # a reader of another buffer
    with pytest.raises(ValueError, match="1 item or more"):
        Recent(0)


async def test_the_page_is_one_static_file_that_loads_nothing_from_elsewhere(
    served: Dashboard,
) -> None:
    reply = await request(served, "/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    csp = reply.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    page = reply.body.decode()
    assert "/api/snapshot" in page
    assert "innerHTML" not in page  # text is set as text
    assert "http://" not in page  # no CDN, no font, nothing from elsewhere
    assert "https://" not in page
    assert (await request(served, "/index.html")).body == reply.body


async def test_head_answers_headers_alone(served: Dashboard) -> None:
    reply = await request(served, "/", method="HEAD")
    assert reply.status == 200
    assert int(reply.headers["content-length"]) > 1000
    assert reply.body == b""


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
        (b"GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
        (b"GET /api/snapshot HTTP/1.1\r\nHost: evil.example:80\r\n\r\n", 403),
        (b"GET /api/snapshot HTTP/1.1\r\n\r\n", 403),  # no Host: not provably loopback
        (b"BREW /pot\r\n\r\n", 400),
        (b"GET / SPDY/3\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"x" * 20_000 + b"\r\n\r\n", 431),
    ],
    ids=[
        "post",
        "unknown-path",
        "foreign-host",
        "no-host",
        "bad-line",
        "not-http",
        "bad-header",
        "huge",
    ],
)
async def test_bad_requests_get_clear_statuses(served: Dashboard, raw: bytes, status: int) -> None:
    reply = await request(served, raw=raw)
    assert reply.status == status
    # ... and the dashboard goes on serving.
    assert (await request(served)).status == 200


@pytest.mark.parametrize("host", ["localhost:7480", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
async def test_any_loopback_host_is_served(served: Dashboard, host: str) -> None:
    assert (await request(served, host=host)).status == 200


async def test_a_dashboard_listens_where_asked(mesh: am.Mesh) -> None:
    async with Dashboard(mesh, host="localhost", port=0) as dashboard:
        assert dashboard.url.startswith("http://127.0.0.1:")
        assert (await request(dashboard)).status == 200
    with pytest.raises(ValueError, match="port"):
        Dashboard(mesh, port=70000)
    with pytest.raises(ValueError, match="interval"):
        Dashboard(mesh, interval=0)
    with pytest.raises(ValueError, match="timeout"):
        Dashboard(mesh, timeout=0)
    with pytest.raises(ValueError, match="host"):
        Dashboard(mesh, host="")
    async with Dashboard(mesh) as taken:
        port = int(taken.url.split(":")[2][:-1])
        with pytest.raises(OSError):
            await Dashboard(mesh, port=port).start()


async def test_viewers_at_the_same_time_share_one_snapshot(mesh: am.Mesh) -> None:
    async with Dashboard(mesh, interval=60) as dashboard:
        first, second = await asyncio.gather(dashboard.snapshot(), dashboard.snapshot())
        assert first is second
        assert await dashboard.snapshot() is first  # within half an interval


def test_the_docs_example_prints_what_the_docs_say() -> None:
    page = (ROOT / "docs" / "observability.md").read_text()
    section = page[page.index("## Dashboard") :]
    program = section.split("```python\n", 1)[1].split("```", 1)[0]
    promised = section.split("It prints:\n\n```text\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == promised


async def test_the_docs_name_every_field_of_the_snapshot(mesh: am.Mesh, served: Dashboard) -> None:
    fragile = await mesh.spawn(Counter)
    await fragile.fail.tell("for the docs")
    await mesh.wait_terminated(fragile)
    await mesh.spawn(Counter)
    view = await served.snapshot()
    page = (ROOT / "docs" / "observability.md").read_text()
    table = page[page.index("### The JSON: `/api/snapshot`") :]
    for key in view:
        assert f"| `{key}` |" in table or f"| `{key}." in table, key
    for part in ("failures", "tracing"):
        for key in view[part]:
            assert f"| `{part}.{key}` |" in table, f"{part}.{key}"
    for row, keys in [("nodes", view["nodes"][0]), ("agents", view["agents"][0])]:
        line = next(line for line in table.splitlines() if line.startswith(f"| `{row}` |"))
        for key in keys:
            assert f"`{key}`" in line, f"{row}: {key}"
    line = next(line for line in table.splitlines() if line.startswith("| `failures.crashes` |"))
    for key in view["failures"]["crashes"][0]:
        assert f"`{key}`" in line, f"crashes: {key}"


@pytest.mark.parametrize(
    "argv",
    [
        ("dashboard", "--port", "70000"),
        ("dashboard", "--host", " "),
        ("dashboard", "--interval", "0"),
        ("dashboard", "--timeout", "-1"),
        ("head", "--dashboard-port", "-1"),
        ("head", "--dashboard-host", ""),
    ],
    ids=["port", "host", "interval", "timeout", "head-port", "head-host"],
)
def test_bad_dashboard_flags_are_usage_errors(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    assert exited.value.code == 2
    assert argv[-2] in capsys.readouterr().err

"""The dashboard in a real headless browser: Debian's Chromium, driven by Playwright,
shows a real 3-node loopback cluster (a head serving the dashboard, two workers, all
tracing) and a driver (this process): the nodes, the agents and their classes, a
supervision tree, a crash, message rates, live updates and a trace across three
processes. A screenshot is kept in ``test-artifacts/dashboard.png``.

Without /usr/bin/chromium the test is skipped, unless ``AGENTMESH_REQUIRE_BROWSER=1``
(CI sets it, and installs Chromium): then it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon

from .agents import Counter
from .conftest import ROOT, start_daemon
from .traced_agents import Recorded, recording

CHROMIUM = Path("/usr/bin/chromium")
#: Chromium's flags: headless, and nothing that reaches out (updates, sync, QUIC ...).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
#: Milliseconds the page has to show what a step waits for.
SHOWN_WITHIN = 30_000
#: An agent name a page that parsed names as HTML would turn into an element.
HOSTILE = '<img src=x onerror="document.title=1"><b>bold</b>'


def _browser_or_skip() -> None:
    """Skip (or fail, when CI requires the browser) without Chromium or Playwright."""
    required = os.environ.get("AGENTMESH_REQUIRE_BROWSER") == "1"
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is absent (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (the test extra)"
    if missing is not None:
        if required:
            pytest.fail(f"AGENTMESH_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"no browser to test the dashboard in: {missing}")


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
    """Tracing on in this process (the driver) too: its requests start the traces."""
    with recording() as spans:
        yield spans


@pytest.fixture
async def cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Daemon, str, list[Daemon]]]:
    """A head serving the dashboard and two workers, all with ``--tracing`` keeping
    their spans only for the dashboard (no exporter); (head, dashboard URL, workers)."""
    _browser_or_skip()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    head = await start_daemon(
        "head", "--listen", "127.0.0.1:0", "--dashboard-port", "0", "--tracing"
    )
    workers: list[Daemon] = []
    try:
        assert head.process.stdout is not None
        said = (await head.process.stdout.readline()).decode().split()
        assert said[0] == "dashboard", said
        for _ in range(2):
            worker = await start_daemon("node", "--join", head.address, "--tracing")
            workers.append(worker)
        yield head, said[1], workers
    finally:
        for daemon in (*workers, head):
            await daemon.stop()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium (a profile of its own, thrown away)."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="agentmesh-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000},
            )
            try:
                yield await context.new_page()
            finally:
                await context.close()


async def shows(page: Any, condition: str, *args: Any) -> Any:
    """Wait until the page makes ``condition`` (a JS function of ``args``) truthy."""
    handle = await page.wait_for_function(condition, arg=list(args), timeout=SHOWN_WITHIN)
    return await handle.json_value()


@pytest.mark.slow
async def test_the_dashboard_shows_a_live_cluster_in_a_browser(
    cluster: tuple[Daemon, str, list[Daemon]], recorded: Recorded
) -> None:
    head, url, workers = cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as driver:
        nodes = await driver.nodes()
        head_id = next(n.id for n in nodes if n.role == "head")
        w1, w2 = (next(n.id for n in nodes if n.address == w.address) for w in workers)

        team = await driver.spawn(am.Supervisor, am.SupervisorSpec(), name="team", node=w1)
        member = await driver.spawn(Counter, name="member", supervisor=team)
        squad = await driver.spawn(
            am.Supervisor, am.SupervisorSpec(), name="squad", supervisor=team
        )
        scout = await driver.spawn(Counter, name="scout", supervisor=squad)
        busy = await driver.spawn(Counter, name="busy", node=head_id)
        quiet = await driver.spawn(Counter, name="quiet", node=w2)
        hostile = await driver.spawn(Counter, name=HOSTILE, node=w2)
        shop = await driver.spawn(
            Shop, await driver.spawn(Pricer, name="pricer", node=w2), name="shop", node=w1
        )
        fragile = await driver.spawn(Counter, name="fragile", node=w2)
        await fragile.fail.tell("boom")  # a tell's exception crashes it (temporary: it ends)
        with recorded.tracer.start_as_current_span("request") as request:
            assert await shop.quote("apple", 4) == 2.0
        trace_id = f"{request.get_span_context().trace_id:032x}"

        async def traffic() -> None:  # load for the rates (paced, so it leaves CPU to others)
            while True:
                await busy.add(1)
                await asyncio.sleep(0.005)

        load = asyncio.create_task(traffic())
        try:
            async with chromium() as page:
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(url)

                # The nodes: the three daemons (and this driver), up, with resources.
                for node, role in [(head_id, "head"), (w1, "worker"), (w2, "worker")]:
                    row = f'#nodes tr[data-node="{node}"]'
                    await page.wait_for_selector(row, timeout=SHOWN_WITHIN)
                    text = await page.inner_text(row)
                    assert role in text
                    assert "up" in text
                    assert "cpu" in text
                assert (
                    await page.get_attribute(f'#nodes tr[data-node="{head_id}"]', "data-state")
                    == "up"
                )
                assert "this dashboard" in await page.inner_text(
                    f'#nodes tr[data-node="{head_id}"]'
                )

                # The agents, with their classes and nodes.
                expected = {
                    team: "Supervisor",
                    member: "Counter",
                    squad: "Supervisor",
                    scout: "Counter",
                    busy: "Counter",
                    shop: "Shop",
                    hostile: "Counter",
                }
                for ref, cls in expected.items():
                    row = f'#agents tr[data-agent="{ref.id}"]'
                    await page.wait_for_selector(row, timeout=SHOWN_WITHIN)
                    assert await page.get_attribute(row, "data-class") == cls
                assert w1 in await page.inner_text(f'#agents tr[data-agent="{shop.id}"]')

                # A name is shown as text, never parsed as HTML.
                hostile_row = f'#agents tr[data-agent="{hostile.id}"]'
                assert HOSTILE in await page.inner_text(hostile_row)
                assert await page.locator(f"{hostile_row} img, {hostile_row} b").count() == 0
                assert await page.title() == "agentmesh dashboard"

                # The supervision tree: squad under team, scout under squad.
                team_item = f'#tree li[data-agent="{team.id}"]'
                for ref in (member, squad):
                    await page.wait_for_selector(
                        f'{team_item} > ul > li[data-agent="{ref.id}"]', timeout=SHOWN_WITHIN
                    )
                squad_item = f'{team_item} li[data-agent="{squad.id}"]'
                assert await page.locator(
                    f'{squad_item} > ul > li[data-agent="{scout.id}"]'
                ).count()
                driver_root = f'#tree [data-root="sys.root.{driver.node_id}"]'
                assert await page.locator(
                    f'{driver_root} > ul > li[data-agent="{team.id}"]'
                ).count()

                # The crash, with its error and traceback.
                crash = f'#crashes .crash[data-agent="{fragile.id}"]'
                await page.wait_for_selector(crash, timeout=SHOWN_WITHIN)
                crash_text = await page.inner_text(crash)
                assert "fragile" in crash_text
                assert "ValueError: boom" in crash_text
                assert w2 in crash_text
                await page.click(f"{crash} summary")
                assert "raise ValueError(message)" in await page.inner_text(f"{crash} pre")

                # A message rate above 0 for the busy agent, and on its node.
                rate = await shows(
                    page,
                    """([id]) => {
                        const row = document.querySelector(`#agents tr[data-agent="${id}"]`);
                        return row && Number(row.dataset.rate) > 0 && row.dataset.rate;
                    }""",
                    busy.id,
                )
                assert float(rate) > 0
                head_rate = await page.inner_text(f'#nodes tr[data-node="{head_id}"] td.rate')
                assert head_rate not in ("0", "\N{EN DASH}")  # (the page's "no rate yet")

                # Live: what the quiet agent handles shows up without reloading.
                handled = f'#agents tr[data-agent="{quiet.id}"] td.handled'
                before = int((await page.inner_text(handled)).replace(",", ""))
                for _ in range(5):
                    await quiet.add(1)
                await shows(
                    page,
                    "([path, count]) => document.querySelector(path)?.textContent === count",
                    handled,
                    str(before + 5),
                )

                # The request's trace (by its id: spans of earlier tests in this process are
                # kept too): five spans over three processes, nested.
                await page.fill("#trace-filter", "Shop")
                trace = f'#traces details.trace[data-trace="{trace_id}"]'
                await page.wait_for_selector(trace, timeout=SHOWN_WITHIN)
                summary = await page.inner_text(f"{trace} summary")
                assert "request" in summary
                assert "5 spans" in summary
                assert "3 nodes" in summary
                await page.click(f"{trace} summary")
                depths = await page.eval_on_selector_all(
                    f"{trace} tr[data-span]",
                    "rows => rows.map(r => [r.cells[0].textContent, Number(r.dataset.depth)])",
                )
                assert depths == [
                    ["request", 0],
                    ["ask quote", 1],
                    ["turn Shop.quote", 2],
                    ["ask price", 3],
                    ["turn Pricer.price", 4],
                ]
                await page.fill("#trace-filter", "")

                ARTIFACTS.mkdir(exist_ok=True)
                screenshot = ARTIFACTS / "dashboard.png"
                await page.screenshot(path=str(screenshot), full_page=True)
                print(f"dashboard screenshot: {screenshot}")
                assert errors == [], errors
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load


def test_the_browser_is_required_when_ci_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """With AGENTMESH_REQUIRE_BROWSER=1 a missing browser fails rather than skips."""
    monkeypatch.setattr("tests.test_dashboard_browser.CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setenv("AGENTMESH_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="AGENTMESH_REQUIRE_BROWSER=1 but"):
        _browser_or_skip()
    monkeypatch.delenv("AGENTMESH_REQUIRE_BROWSER")
    with pytest.raises(pytest.skip.Exception, match="absent"):
        _browser_or_skip()

"""The dashboard against daemons, over HTTP: ``agentmesh dashboard`` joins a cluster
as a driver and serves it, ``agentmesh head --dashboard-port`` serves it from the
head, and the JSON says plainly when the head is gone. Ports are chosen by the OS;
every process is stopped, also on failure."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

import agentmesh as am

from .agents import Counter
from .conftest import ROOT, start_daemon, wait_for

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def get(url: str) -> tuple[int, Any]:
    """(status, JSON or text) of a GET, made off the event loop."""
    status, body = await asyncio.to_thread(_get, url)
    text = body.decode()
    return status, json.loads(text) if text.startswith("{") else text


async def test_agentmesh_dashboard_serves_the_cluster_and_says_when_the_head_is_gone() -> None:
    head = await start_daemon("head", "--listen", "127.0.0.1:0")
    worker = dashboard = None
    try:
        worker = await start_daemon("node", "--join", head.address)
        dashboard = await start_daemon("dashboard", "--address", head.address, "--port", "0")
        url = dashboard.address  # its first line: the page's URL
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/")
        status, page = await get(url)
        assert status == 200
        assert "<title>agentmesh dashboard</title>" in page

        async with am.Mesh(join=head.address, ask_timeout=10) as driver:
            worker_id = next(n.id for n in await driver.nodes() if n.role == "worker")
            counter = await driver.spawn(Counter, name="tally", node=worker_id)
            await counter.add(1)
            status, view = await get(url + "api/snapshot")
            assert status == 200
            roles = {n["id"]: n["role"] for n in view["nodes"]}
            assert roles[view["dashboard_node"]] == "driver"
            assert sorted(roles.values()) == ["driver", "driver", "head", "worker"]
            [tally] = view["agents"]
            assert (tally["name"], tally["node"], tally["handled"]) == ("tally", worker_id, 1)
            assert tally["supervisor"] == f"sys.root.{driver.node_id}"
            assert view["unreachable"] == {}

        await head.kill()

        async def head_gone() -> bool:
            status, view = await get(url + "api/snapshot")
            return status == 503 and "cannot reach" in view["error"]

        await wait_for(head_gone, timeout=30, what="a 503 saying the head cannot be reached")
        assert dashboard.process.returncode is None  # it waits for the head to come back
        assert await dashboard.stop() == 0
    finally:
        for daemon in (dashboard, worker, head):
            if daemon is not None:
                await daemon.stop()


async def test_the_head_serves_the_dashboard_with_dashboard_port() -> None:
    head = await start_daemon(
        "head", "--listen", "127.0.0.1:0", "--metrics-port", "0", "--dashboard-port", "0"
    )
    try:
        assert head.process.stdout is not None
        metrics = (await head.process.stdout.readline()).decode().split()
        shown = (await head.process.stdout.readline()).decode().split()
        assert metrics[0] == "metrics"
        assert shown[0] == "dashboard"
        assert shown[1].startswith("http://127.0.0.1:")
        status, view = await get(shown[1] + "api/snapshot")
        assert status == 200
        [node] = view["nodes"]
        assert (node["role"], node["id"]) == ("head", view["dashboard_node"])
        assert node["address"] == head.address
    finally:
        assert await head.stop() == 0


async def test_agentmesh_dashboard_says_plainly_that_the_head_is_unreachable() -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "agentmesh", "dashboard", "--address", address),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 1
    assert out == b""
    assert err.decode().startswith(f"agentmesh dashboard: cannot reach the head at {address}")
    assert b"Traceback" not in err

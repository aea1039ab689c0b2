"""`Daemon`: an agentmesh daemon as a child process (what the cluster tests start)."""

from __future__ import annotations

import asyncio

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon

from .conftest import ROOT, start_daemon

pytestmark = pytest.mark.slow


async def test_a_head_serves_at_the_address_it_printed_and_stops_on_sigterm() -> None:
    head = await start_daemon("head", "--listen", "127.0.0.1:0")
    try:
        async with am.Mesh(join=head.address) as driver:
            assert [n.address for n in await driver.nodes() if n.role == "head"] == [head.address]
    finally:
        assert await head.stop() == 0  # drained and left
    assert head.process.returncode == 0


async def test_a_daemon_that_exits_before_its_address_says_why() -> None:
    with pytest.raises(RuntimeError, match=r"exited with 2 before printing its address: .*"):
        await Daemon.start(
            "node", "--join", "127.0.0.1:1", stderr=asyncio.subprocess.PIPE, cwd=ROOT
        )


async def test_a_restarted_head_comes_back_at_its_address_under_the_same_handle() -> None:
    head = await start_daemon("head", "--listen", "127.0.0.1:0")
    try:
        first, address = head.process, head.address
        await head.restart("head", "--listen", address)
        assert first.returncode is not None  # killed
        assert head.process is not first
        assert head.process.returncode is None
        assert head.address == address
        async with am.Mesh(join=head.address) as driver:
            assert any(n.role == "head" for n in await driver.nodes())
    finally:
        await head.stop()

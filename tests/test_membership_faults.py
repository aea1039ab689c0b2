"""Membership changes with real processes: a head restart, a paused node, a drain,
a blocked loop. Healthy nodes must lose nothing, and no supervised agent may live in
two places.

Ports are chosen by the OS; every process started here is stopped, also on failure.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon

from .agents import Blocker, Counter, Pinger
from .conftest import ROOT, start_daemon, wait_for
from .test_cluster import _finds

pytestmark = pytest.mark.slow

DEAD_AFTER = 1.5
FAST = ("--heartbeat", "0.25")


@asynccontextmanager
async def three_nodes() -> AsyncIterator[tuple[Daemon, Daemon, Daemon]]:
    """A head and two workers, each its own process, detecting deaths in 1.5 s."""
    head = await start_daemon(
        "head", "--listen", "127.0.0.1:0", "--dead-after", str(DEAD_AFTER), *FAST
    )
    workers: list[Daemon] = []
    try:
        workers.append(await start_daemon("node", "--join", head.address, *FAST))
        workers.append(await start_daemon("node", "--join", head.address, *FAST))
        yield head, workers[0], workers[1]
    finally:
        for daemon in workers:
            if daemon.process.returncode is None:
                daemon.process.send_signal(signal.SIGCONT)  # a paused one must hear TERM
            await daemon.stop()
        await head.stop()


async def ids(mesh: am.Mesh, *daemons: Daemon) -> list[str]:
    by_address = {n.address: n.id for n in await mesh.nodes()}
    return [by_address[d.address] for d in daemons]


async def alive(mesh: am.Mesh, node: str) -> bool:
    return any(n.id == node and n.alive for n in await mesh.nodes())


async def dead(mesh: am.Mesh, node: str) -> bool:
    return any(n.id == node and not n.alive for n in await mesh.nodes())


async def agents_on(mesh: am.Mesh, node: str) -> int:
    return next(n.agents for n in await mesh.nodes() if n.id == node)


async def restart_head(head: Daemon) -> None:
    """SIGKILL the head and start a new one at the same address."""
    address = head.address
    await head.restart("head", "--listen", address, "--dead-after", str(DEAD_AFTER), *FAST)
    assert head.address == address


async def test_a_head_restart_costs_healthy_nodes_nothing() -> None:
    async with three_nodes() as (head, w1, w2), am.Mesh(join=head.address, ask_timeout=20) as mesh:
        n1, n2 = await ids(mesh, w1, w2)
        # A tree on the driver with a child on each worker, and traffic between them.
        spec = am.SupervisorSpec(
            children=[
                am.ChildSpec(Counter, 0, name="c2", node=n2),
                am.ChildSpec(Counter, 0, name="c1", node=n1),
            ]
        )
        sup = await mesh.spawn(am.Supervisor, spec, name="tree", node=mesh.node_id)
        c2 = await mesh.get("c2")
        pinger = await mesh.spawn(Pinger, c2, name="pinger", node=n1, detached=True)
        await wait_for(lambda: _pinged(pinger, 20), timeout=10, what="traffic flows")
        before = [c.ref for c in await sup.children()]

        await restart_head(head)
        driver_failures = 0
        for _ in range(3):  # the driver's own asks, across the restart
            async with asyncio.timeout(10):
                await _until_registered(mesh, 4)
            try:
                await c2.get()
            except am.AgentmeshError:
                driver_failures += 1
        # Let heartbeats run for a while under the new head: nobody is declared dead.
        ok, _ = await pinger.report()
        await wait_for(lambda: _pinged(pinger, ok + 200), timeout=15, what="traffic goes on")

        _, failed = await pinger.report()
        assert failed == [], failed  # asks between healthy nodes: none failed
        assert driver_failures == 0
        children = await sup.children()
        assert [c.state for c in children] == ["running", "running"]
        assert [c.restarts for c in children] == [0, 0]  # nothing ran twice
        assert [c.ref for c in children] == before
        # tree, c1, c2 and pinger: four agents in the cluster, each once.
        assert sum(n.agents for n in await mesh.nodes() if n.alive) == 4
        # Names are rebuilt: a new driver finds every one.
        async with am.Mesh(join=head.address, ask_timeout=10) as fresh:
            for name in ("c1", "c2", "pinger", "tree"):
                await wait_for(lambda n=name: _finds(fresh, n), timeout=10, what=name)
        logs = (w1.log + w2.log).decode()
        assert not any(node in logs for node in (n1, n2, mesh.node_id)), logs


async def _pinged(pinger: am.AgentRef, at_least: int) -> bool:
    ok, _ = await pinger.report()
    return bool(ok >= at_least)


async def _until_registered(mesh: am.Mesh, count: int) -> None:
    while True:
        try:
            if len([n for n in await mesh.nodes() if n.alive]) >= count:
                return
        except am.AgentmeshError:
            pass
        await asyncio.sleep(0.05)  # polling the new head until it answers


async def test_a_node_that_died_while_the_head_was_away_is_declared_dead() -> None:
    async with three_nodes() as (head, w1, w2), am.Mesh(join=head.address, ask_timeout=10) as mesh:
        _, n2 = await ids(mesh, w1, w2)
        counter = await mesh.spawn(Counter, node=n2)
        ended = asyncio.ensure_future(mesh.wait_terminated(counter))
        w2.process.send_signal(signal.SIGKILL)
        await restart_head(head)
        # The new head never hears from n2; the others knew it: it is declared dead.
        notice = await asyncio.wait_for(ended, 20)
        assert (notice.reason, notice.restarting) == ("node_down", False)
        await wait_for(lambda: _not_alive(mesh, n2), timeout=10, what="listed as down")


async def _not_alive(mesh: am.Mesh, node: str) -> bool:
    try:
        return not await alive(mesh, node)
    except am.AgentmeshError:
        return False


async def test_a_paused_node_fences_itself_when_it_comes_back() -> None:
    async with three_nodes() as (head, w1, w2), am.Mesh(join=head.address, ask_timeout=10) as mesh:
        n1, n2 = await ids(mesh, w1, w2)
        spec = am.SupervisorSpec(children=[am.ChildSpec(Counter, 10, name="mover", node=n1)])
        sup = await mesh.spawn(am.Supervisor, spec, name="tree", node=mesh.node_id)
        old = await mesh.get("mover")
        assert old.node == n1
        assert await old.add(1) == 11

        w1.process.send_signal(signal.SIGSTOP)  # longer than dead_after
        await wait_for(lambda: _moved(mesh, n1), timeout=15, what="restarted elsewhere")
        moved = await mesh.get("mover")
        assert moved.node == n2
        w1.process.send_signal(signal.SIGCONT)
        await wait_for(lambda: alive(mesh, n1), timeout=15, what="the paused node rejoined")
        # Once this driver reaches n1 again, the stale instance must be gone: old refs
        # fail, and n1 hosts only what was started there since.
        probe = await _reach(mesh, n1)
        with pytest.raises(am.AgentUnavailable):
            await old.get()
        await wait_for(lambda: _hosts_some(mesh, n1), timeout=10, what="n1 reports its agents")
        assert await agents_on(mesh, n1) == 1, "a stale instance still runs on n1"
        [child] = await sup.children()
        assert (child.state, child.restarts, child.ref) == ("running", 1, moved)
        assert await moved.add(1) == 11  # one instance, the replacement
        assert await probe.get() == 0
        assert "fencing node" in w1.log.decode()


async def _reach(mesh: am.Mesh, node: str) -> am.AgentRef:
    """Start an agent on ``node`` and ask it, retrying until this driver reaches the
    node again (it rejoined under the head; this driver hears it at its next beat)."""
    async with asyncio.timeout(15):
        while True:
            try:
                probe = await mesh.spawn(Counter, node=node)
                await probe.get()
                return probe
            except am.AgentUnavailable:
                await asyncio.sleep(0.05)  # until the next heartbeat re-adds the node


async def _hosts_some(mesh: am.Mesh, node: str) -> bool:
    return await agents_on(mesh, node) > 0


async def _moved(mesh: am.Mesh, away_from: str) -> bool:
    try:
        return (await mesh.get("mover")).node != away_from
    except am.AgentNotFound:
        return False


async def _unavailable(ref: am.AgentRef) -> bool:
    try:
        await ref.get.ask(timeout=2)
    except am.AgentUnavailable:
        return True
    except am.AgentmeshError:
        return False
    return False


async def _hosts(mesh: am.Mesh, node: str, count: int) -> bool:
    return await agents_on(mesh, node) == count


@pytest.mark.parametrize("how", ["sigterm", "cli"])
async def test_a_draining_worker_hands_its_supervised_agents_over(how: str) -> None:
    async with three_nodes() as (head, w1, w2), am.Mesh(join=head.address, ask_timeout=10) as mesh:
        n1, n2 = await ids(mesh, w1, w2)
        spec = am.SupervisorSpec(
            children=[
                am.ChildSpec(Counter, 10, name="mover", node=n1),
                am.ChildSpec(Counter, 0, name="once", node=n1, restart="temporary"),
            ]
        )
        sup = await mesh.spawn(am.Supervisor, spec, name="tree", node=mesh.node_id)
        assert await (await mesh.get("mover")).add(1) == 11
        if how == "sigterm":
            w1.process.send_signal(signal.SIGTERM)
        else:
            drain = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentmesh", "drain", n1, "--address", head.address,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(drain.communicate(), 60)
            assert drain.returncode == 0, err.decode()
            assert f"node {n1} drained" in out.decode()
        assert await asyncio.wait_for(w1.process.wait(), 30) == 0
        await wait_for(lambda: _moved(mesh, n1), timeout=10, what="handed over")
        moved = await mesh.get("mover")
        assert moved.node == n2
        assert await moved.add(1) == 11
        mover, once = await sup.children()
        assert (mover.state, mover.restarts) == ("running", 1)
        # Temporary: not restarted, as when its node dies; the reason is given.
        assert (once.state, once.restarts) == ("crashed", 0)
        assert f"node {n1} is draining" in (once.last_error or "")


async def test_a_blocked_node_leaves_no_orphan_behind() -> None:
    async with three_nodes() as (head, w1, _):
        async with am.Mesh(join=head.address, ask_timeout=10) as driver:
            (n1,) = await ids(driver, w1)
            blocker = await driver.spawn(Blocker, name="blocker", node=n1)
            assert await blocker.ping() == "pong"
            await blocker.block.tell(DEAD_AFTER * 3)  # the loop of n1 stops
            await wait_for(lambda: dead(driver, n1), timeout=10, what="declared dead")
        # The driver left while n1 was blocked: its agent must not outlive it.
        async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
            await wait_for(lambda: alive(mesh, n1), timeout=20, what="n1 is back")
            probe = await _reach(mesh, n1)
            await wait_for(lambda: _hosts_some(mesh, n1), timeout=10, what="n1 reports")
            assert await agents_on(mesh, n1) == 1, "an orphan still runs on n1"
            assert not await _finds(mesh, "blocker")
            assert await probe.get() == 0

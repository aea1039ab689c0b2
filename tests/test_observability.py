"""Seeing what agents do, in one process over real gRPC on loopback: `mesh.info` of
remote agents, `mesh.list_agents` across nodes, a remote crash in its supervisor's
log, and dead nodes aged out of the directory.
The multi-process checks (the command line, daemons' logs) are in
test_observability_cluster.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

import agentmesh as am
from agentmesh._private.cluster.directory import Directory, NodeInfo
from agentmesh._private.placement.scheduler import Scheduler

from .agents import Counter, Gate
from .conftest import wait_for

#: A head, a worker and a driver, all meshes of this process, over gRPC.
Trio = tuple[am.Mesh, am.Mesh, am.Mesh]


@pytest.fixture
async def trio() -> AsyncIterator[Trio]:
    async with am.Mesh(listen="127.0.0.1:0", ask_timeout=10) as head:
        assert head.address is not None
        async with (
            am.Mesh(join=head.address, role="worker", ask_timeout=10) as worker,
            am.Mesh(join=head.address, ask_timeout=10) as driver,
        ):
            yield head, worker, driver


async def test_info_of_an_agent_on_another_node_is_asked_of_that_node(trio: Trio) -> None:
    head, worker, driver = trio
    counter = await driver.spawn(Counter, 1, name="counted", node=worker.node_id)
    for _ in range(3):
        await counter.add(1)
    info = await driver.info(counter)
    assert (info.node, info.name, info.agent_class, info.state) == (
        worker.node_id,
        "counted",
        "Counter",
        "running",
    )
    assert info.handled == 3
    # A driver's plain spawn is a child of the driver's root supervisor.
    assert info.supervisor == f"sys.root.{driver.node_id}"
    assert (await head.info(await head.get("counted"))).handled == 3  # from a third node
    await counter.stop()
    with pytest.raises(am.AgentUnavailable) as gone:
        await driver.info(counter)
    assert driver.node_id not in str(gone.value)  # not "no agent on <the asker's node>"


async def test_list_agents_lists_every_nodes_agents_and_filters_them(trio: Trio) -> None:
    head, worker, driver = trio
    on_worker = [await driver.spawn(Counter, name=f"w{i}", node=worker.node_id) for i in range(3)]
    gate = await driver.spawn(Gate, name="gate", node=head.node_id)
    here = await driver.spawn(Counter, name="here", node=driver.node_id)
    await on_worker[0].add(5)

    listing = await driver.list_agents()
    assert listing.unreachable == {}
    assert listing.truncated == {}
    by_name = {a.name: a for a in listing.agents}
    assert set(by_name) == {"w0", "w1", "w2", "gate", "here"}  # no framework agents
    assert by_name["w0"].node == worker.node_id
    assert by_name["w0"].handled == 1
    assert by_name["gate"].node == head.node_id
    assert by_name["here"].node == driver.node_id

    only_worker = await driver.list_agents(node=worker.node_id)
    assert [a.name for a in only_worker.agents] == ["w0", "w1", "w2"]  # oldest first
    counters = await head.list_agents(agent_class=Counter)
    assert {a.name for a in counters.agents} == {"w0", "w1", "w2", "here"}
    assert {a.name for a in (await driver.list_agents(agent_class="Gate")).agents} == {"gate"}
    few = await driver.list_agents(node=worker.node_id, limit=2)
    assert [a.name for a in few.agents] == ["w0", "w1"]
    assert few.truncated == {worker.node_id: 3}
    with pytest.raises(am.AgentNotFound):
        await driver.list_agents(node="no-such-node")
    await gate.stop()
    await here.stop()


async def test_an_embedded_mesh_lists_its_own_agents() -> None:
    async with am.Mesh() as mesh:
        await mesh.spawn(Counter, name="solo")
        listing = await mesh.list_agents()
        assert [a.name for a in listing.agents] == ["solo"]
        assert [a.name for a in await mesh.agents()] == ["solo"]


async def test_a_crash_on_another_node_is_logged_where_its_supervisor_lives(
    trio: Trio, caplog: pytest.LogCaptureFixture
) -> None:
    _, worker, driver = trio
    caplog.set_level(logging.ERROR, logger="agentmesh.agent")
    fragile = await driver.spawn(Counter, name="fragile", node=worker.node_id)
    await fragile.fail.tell("boom")  # an exception escaping a tell: a crash

    def forwarded() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "agent_node", None) == worker.node_id]

    await wait_for(lambda: bool(forwarded()), what="the driver logged the remote crash")
    [record] = forwarded()
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"agent fragile crashed on node {worker.node_id}: ValueError: boom"
    )
    assert record.agent == "fragile"  # type: ignore[attr-defined]
    assert record.exc_text is not None
    assert record.exc_text.startswith("Traceback (most recent call last):")
    assert "in fail" in record.exc_text
    assert record.exc_text.endswith("ValueError: boom")
    assert "ValueError: boom" in caplog.text  # formatters print it as a traceback


async def test_a_dead_node_stays_listed_for_a_while_then_is_forgotten(mesh: am.Mesh) -> None:
    directory = await mesh._node.spawn(Directory, (Scheduler(), 0.2, None, 0.3))
    await directory.register(NodeInfo("x", "127.0.0.1:1", "worker", uptime=7.0), {})
    await directory.register(NodeInfo("y", "127.0.0.1:2", "worker"), {})

    async def members() -> dict[str, NodeInfo]:
        assert (await directory.heartbeat("y", 0, 0)).status == "ok"  # y stays alive
        listed: list[NodeInfo] = await directory.members()
        return {n.id: n for n in listed}

    async def x_down() -> bool:
        x = (await members()).get("x")
        return x is not None and not x.alive

    async def x_forgotten() -> bool:
        return "x" not in await members()

    await wait_for(x_down, what="x declared dead and listed down")
    x = (await members())["x"]
    assert x.uptime >= 7.0  # what it said when it registered, and the time it ran since
    assert x.last_seen >= 0.2
    await wait_for(x_forgotten, what="x forgotten after forget_dead_after")
    # The verdict outlives the listing: x, coming back, must fence before it rejoins.
    assert (await directory.register(NodeInfo("x", "127.0.0.1:1", "worker"), {})).status == "dead"
    assert (await members())["y"].alive

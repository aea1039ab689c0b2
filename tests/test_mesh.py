"""Mesh: spawning, names, lookups, and stopping everything on the way out."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import agentmesh as am

from .agents import Counter, Forever
from .conftest import wait_for


async def test_names_are_unique_and_looked_up(mesh: am.Mesh) -> None:
    counter = await mesh.spawn(Counter, 3, name="counter")
    assert await mesh.get("counter") == counter
    with pytest.raises(am.NameTaken, match="counter"):
        await mesh.spawn(Counter, name="counter")
    with pytest.raises(am.AgentNotFound, match="nobody"):
        await mesh.get("nobody")
    await counter.stop()
    with pytest.raises(am.AgentNotFound):
        await mesh.get("counter")
    # A stopped agent's name is free again, and the old ref does not reach the new agent.
    fresh = await mesh.spawn(Counter, 10, name="counter")
    assert fresh != counter
    assert await fresh.get() == 10
    with pytest.raises(am.AgentUnavailable, match="stopped"):
        await counter.get()


async def test_spawn_validates_its_input(mesh: am.Mesh) -> None:
    with pytest.raises(TypeError, match="Agent subclass"):
        await mesh.spawn(int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        await mesh.spawn(Counter, name="")
    with pytest.raises(ValueError, match="mailbox_size"):
        await mesh.spawn(Counter, mailbox_size=0)
    with pytest.raises(ValueError, match="concurrency"):
        await mesh.spawn(Counter, concurrency=-1)


async def test_spawn_requires_an_entered_mesh() -> None:
    mesh = am.Mesh()
    with pytest.raises(RuntimeError, match="async with"):
        await mesh.spawn(Counter)


async def test_options_override_class_attributes(mesh: am.Mesh) -> None:
    class Wide(am.Agent):
        concurrency = 4
        mailbox_size = 7

        async def noop(self) -> None:
            pass

    default = await mesh.info(await mesh.spawn(Wide))
    assert (default.concurrency, default.mailbox_size) == (4, 7)
    chosen = await mesh.info(await mesh.spawn(Wide, concurrency=2, mailbox_size=3))
    assert (chosen.concurrency, chosen.mailbox_size) == (2, 3)
    plain = await mesh.info(await mesh.spawn(Counter))
    assert (plain.concurrency, plain.mailbox_size) == (1, am.DEFAULT_MAILBOX_SIZE)


class Ordered(am.Agent):
    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    async def on_stop(self) -> None:
        self.log.append(self.label)


async def test_leaving_the_mesh_stops_agents_in_reverse_start_order() -> None:
    log: list[str] = []
    async with am.Mesh() as mesh:
        refs = [await mesh.spawn(Ordered, str(i), log) for i in range(5)]
        await refs[2].stop()
    assert log == ["2", "4", "3", "1", "0"]


async def test_leaving_the_mesh_never_hangs_on_a_stuck_agent() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with am.Mesh(shutdown_timeout=0.1) as mesh:
        forever = await mesh.spawn(Forever)
        hung = asyncio.create_task(forever.hang())
        await asyncio.sleep(0)
    assert loop.time() - started < 2.0
    with pytest.raises(am.AgentUnavailable, match="cancelled"):
        await hung


async def test_agents_listing_and_info(mesh: am.Mesh) -> None:
    a = await mesh.spawn(Counter, name="a")
    await mesh.spawn(Counter)
    await a.add(1)
    infos = await mesh.agents()
    assert [i.name for i in infos] == ["a", None]
    info = await mesh.info(a)
    assert info.handled == 1
    assert info.state == "running"
    assert info.agent_class == "Counter"


async def test_a_mesh_is_entered_once_and_closes_idempotently() -> None:
    mesh = am.Mesh()
    async with mesh:
        with pytest.raises(RuntimeError, match="once"):
            await mesh.__aenter__()
    await mesh.aclose()


async def test_many_idle_agents_hold_no_tasks(mesh: am.Mesh) -> None:
    before = len(asyncio.all_tasks())
    refs = [await mesh.spawn(Counter) for _ in range(200)]
    for ref in refs:
        await ref.add(1)
    # A runner stays one loop turn after its last message, then ends.
    await wait_for(lambda: len(asyncio.all_tasks()) == before, what="runners ended")
    cells = [mesh._node.cells[r.id] for r in refs]
    assert all(cell.runner is None and cell.mailbox.items is None for cell in cells)


async def test_a_config_object_and_keywords_configure_a_mesh_alike() -> None:
    config = am.MeshConfig(ask_timeout=2.0, mailbox_size=7)
    async with am.Mesh(config, shutdown_timeout=1.0) as mesh:
        assert mesh.config == dataclasses.replace(config, shutdown_timeout=1.0)
        counter = await mesh.spawn(Counter, 1)
        assert (await mesh.info(counter)).mailbox_size == 7
    async with am.Mesh(ask_timeout=2.0, mailbox_size=7, shutdown_timeout=1.0) as mesh:
        assert mesh.config == dataclasses.replace(config, shutdown_timeout=1.0)


def test_a_config_is_checked_when_made() -> None:
    with pytest.raises(ValueError, match="mailbox_size"):
        am.MeshConfig(mailbox_size=0)
    with pytest.raises(ValueError, match="heartbeat"):
        am.MeshConfig(heartbeat=5.0, dead_after=2.0)
    with pytest.raises(ValueError, match="role"):
        am.MeshConfig(role="worker")  # a worker joins a cluster
    with pytest.raises(TypeError, match="bogus"):
        am.Mesh(bogus=1)  # type: ignore[call-arg]


def test_mesh_options_and_config_fields_are_the_same() -> None:
    from agentmesh._private.config import MeshOptions, config_fields

    assert list(MeshOptions.__annotations__) == config_fields()

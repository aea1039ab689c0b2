"""Placement through `Mesh.spawn`: on the embedded mesh, and on an in-process cluster
(a head and two workers over real gRPC on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import agentmesh as am

from .agents import Counter
from .conftest import wait_for


class Crasher(am.Agent):
    async def crash(self) -> None:
        raise RuntimeError("boom")

    async def ping(self) -> str:
        return "pong"

    @am.subscribe("crash.now")
    async def on_crash(self, _: object) -> None:
        raise RuntimeError("told to crash")


class Fails(am.Agent):
    async def on_start(self) -> None:
        raise RuntimeError("cannot start")


async def _used(mesh: am.Mesh, node_id: str | None = None) -> dict[str, float]:
    nodes = {n.id: n for n in await mesh.nodes()}
    return nodes[node_id or mesh.node_id].used


async def test_the_embedded_mesh_holds_resources_until_agents_end() -> None:
    async with am.Mesh(resources={"cpu": 2, "gpu": 1}, labels={"zone": "eu"}) as mesh:
        nodes = await mesh.nodes()
        assert nodes[0].resources == {"cpu": 2.0, "gpu": 1.0}
        assert nodes[0].labels == {"zone": "eu"}
        a = await mesh.spawn(Counter, resources={"cpu": 1.5})
        b = await mesh.spawn(Crasher, resources={"cpu": 0.5, "gpu": 1})
        assert await _used(mesh) == {"cpu": 2.0, "gpu": 1.0}
        with pytest.raises(am.PlacementError, match=r"within 0s(.|\n)*cpu 0 free of 1"):
            await mesh.spawn(Counter, resources={"cpu": 1}, placement_timeout=0)
        await a.stop()  # a stop releases
        assert await _used(mesh) == {"cpu": 0.5, "gpu": 1.0}
        await mesh.publish("crash.now", None)  # so does a crash (temporary: not restarted)
        await mesh.wait_terminated(b)
        await wait_for(lambda: _nothing_used(mesh), what="the crash released the reservation")


async def test_an_infeasible_spawn_fails_at_once_naming_what_is_missing() -> None:
    async with am.Mesh(resources={"cpu": 2}, labels={"zone": "eu"}) as mesh:
        with pytest.raises(am.PlacementError, match="gpu 0 in all of 1"):
            await mesh.spawn(Counter, resources={"gpu": 1})
        with pytest.raises(am.PlacementError, match=r"label zone in \['us'\]: zone='eu'"):
            await mesh.spawn(Counter, labels={"zone": am.In("us")})
        with pytest.raises(am.PlacementError, match="not node elsewhere"):
            await mesh.spawn(Counter, node="elsewhere", resources={"cpu": 1})
        assert await mesh.spawn(Counter, labels={"zone": am.Exists()}) is not None
        waiting, failures = await mesh.placement_report()
        assert waiting == 0
        assert len(failures) == 3
        assert await mesh.agents() != []
        assert await _used(mesh) == {}  # nothing held by the failed spawns


async def test_a_spawn_waits_for_room_and_gets_it_when_an_agent_stops() -> None:
    async with am.Mesh(resources={"gpu": 1}) as mesh:
        first = await mesh.spawn(Counter, resources={"gpu": 1})
        waiting = asyncio.ensure_future(mesh.spawn(Counter, 7, resources={"gpu": 1}))
        await wait_for(lambda: _queued(mesh), what="the spawn queued")
        assert not waiting.done()
        await first.stop()
        second = await asyncio.wait_for(waiting, 10)
        assert await second.get() == 7
        assert await _used(mesh) == {"gpu": 1.0}


async def test_a_restart_keeps_the_reservation_and_a_failed_start_releases_it() -> None:
    async with am.Mesh(resources={"cpu": 1}) as mesh:
        crasher = await mesh.spawn(Crasher, resources={"cpu": 1}, restart="permanent")
        await mesh.publish("crash.now", None)
        await wait_for(lambda: mesh._node.cells[crasher.id].restarts == 1, what="restart")
        assert await crasher.ping() == "pong"
        assert await _used(mesh) == {"cpu": 1.0}  # held by the same agent still
        await crasher.stop()
        with pytest.raises(am.SpawnError):
            await mesh.spawn(Fails, resources={"cpu": 1})
        assert await _used(mesh) == {}


async def test_supervised_children_are_placed_from_their_spec() -> None:
    async with am.Mesh(resources={"cpu": 1}) as mesh:
        tree = am.SupervisorSpec(children=[am.ChildSpec(Counter, resources={"cpu": 1})])
        sup = await mesh.spawn(am.Supervisor, tree)
        assert await _used(mesh) == {"cpu": 1.0}
        with pytest.raises(am.PlacementError, match="cpu 0 free of 1"):
            await mesh.spawn(Counter, supervisor=sup, resources={"cpu": 1}, placement_timeout=0)
        assert len(await sup.children()) == 1
        await sup.stop()
        assert await _used(mesh) == {}
    with pytest.raises(ValueError, match="not both"):
        am.ChildSpec(Counter, node="x", strategy="pack")


async def test_an_embedded_gang_is_all_or_nothing() -> None:
    async with am.Mesh(resources={"cpu": 4}) as mesh:
        with pytest.raises(am.PlacementError, match="gang of 2"):
            await mesh.spawn_gang([am.ChildSpec(Counter)] * 2, strategy="strict_spread")
        team = await mesh.spawn_gang(
            [am.ChildSpec(Counter, 1, resources={"cpu": 1}), am.ChildSpec(Counter, 2)],
            strategy="strict_pack",
        )
        assert [await ref.get() for ref in team] == [1, 2]
        assert await _used(mesh) == {"cpu": 1.0}
        count = len(await mesh.agents())
        with pytest.raises(am.SpawnError):  # one member fails: the others are stopped
            await mesh.spawn_gang(
                [am.ChildSpec(Counter, resources={"cpu": 1}), am.ChildSpec(Fails)]
            )
        assert len(await mesh.agents()) == count
        assert await _used(mesh) == {"cpu": 1.0}
        with pytest.raises(ValueError, match="gang places it"):
            await mesh.spawn_gang([am.ChildSpec(Counter, strategy="spread")])


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh]]:
    """A head (cpu=2), a gpu worker in eu, a cpu worker in us, and a driver."""
    async with am.Mesh(listen="127.0.0.1:0", resources={"cpu": 2}, ask_timeout=10) as head:
        assert head.address is not None
        async with (
            am.Mesh(
                join=head.address,
                resources={"cpu": 4, "gpu": 1},
                labels={"zone": "eu", "tier": "gpu"},
                role="worker",
            ) as eu,
            am.Mesh(
                join=head.address, resources={"cpu": 4}, labels={"zone": "us"}, role="worker"
            ) as us,
            am.Mesh(join=head.address, ask_timeout=10) as driver,
        ):
            yield head, eu, us, driver


async def test_a_driver_places_by_resources_labels_and_strategy(
    cluster: tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh],
) -> None:
    head, eu, us, driver = cluster
    # Unconstrained spawns from a driver spread over the workers, the head kept free.
    spread = [(await driver.spawn(Counter)).node for _ in range(4)]
    assert sorted(spread) == sorted([eu.node_id, us.node_id] * 2)
    gpu = await driver.spawn(Counter, resources={"gpu": 1})
    assert gpu.node == eu.node_id
    assert (await driver.spawn(Counter, labels={"zone": am.NotIn("eu")})).node == us.node_id
    assert (await driver.spawn(Counter, strategy=am.Near(gpu))).node == eu.node_id
    away = {(await driver.spawn(Counter, strategy=am.AwayFrom(gpu))).node for _ in range(4)}
    assert eu.node_id not in away
    assert (await driver.spawn(Counter, node=head.node_id)).node == head.node_id
    nodes = {n.id: n for n in await driver.nodes()}
    assert nodes[eu.node_id].used == {"gpu": 1.0}
    with pytest.raises(am.PlacementError) as caught:
        await driver.spawn(Counter, resources={"gpu": 1, "cpu": 1}, labels={"zone": "us"})
    text = str(caught.value)
    assert f"{eu.node_id} (worker): gpu 0 free of 1" not in text  # never, not "busy"
    assert f"{us.node_id} (worker): label zone = 'us'" not in text
    assert "label zone = 'us': zone='eu'" in text
    assert "gpu 0 in all of 1" in text


async def test_a_busy_cluster_queues_spawns_until_a_node_joins(
    cluster: tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh],
) -> None:
    head, _, _, driver = cluster
    await driver.spawn(Counter, resources={"gpu": 1})
    waiting = asyncio.ensure_future(driver.spawn(Counter, 3, resources={"gpu": 1}))
    await wait_for(lambda: _queued(driver), what="the spawn queued at the head")
    assert head.address is not None
    async with am.Mesh(
        join=head.address, resources={"gpu": 2}, labels={"zone": "ap"}, role="worker"
    ) as ap:
        ref = await asyncio.wait_for(waiting, 10)
        assert ref.node == ap.node_id
        assert await ref.get() == 3
        await ref.stop()
        await wait_for(lambda: _free_gpus(driver, ap.node_id), what="released across nodes")


async def _queued(mesh: am.Mesh) -> bool:
    return (await mesh.placement_report())[0] == 1


async def _free_gpus(mesh: am.Mesh, node_id: str) -> bool:
    nodes = {n.id: n for n in await mesh.nodes()}
    return nodes[node_id].used.get("gpu", 0.0) == 0.0


async def test_a_cluster_gang_spreads_over_distinct_nodes(
    cluster: tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh],
) -> None:
    head, eu, us, driver = cluster
    team = await driver.spawn_gang(
        [am.ChildSpec(Counter, i, resources={"cpu": 1}) for i in range(3)],
        strategy="strict_spread",
    )
    assert {ref.node for ref in team} == {head.node_id, eu.node_id, us.node_id}
    assert [await ref.get() for ref in team] == [0, 1, 2]
    with pytest.raises(am.PlacementError, match="gang of 4"):
        await driver.spawn_gang([am.ChildSpec(Counter)] * 4, strategy="strict_spread")
    for ref in team:
        await ref.stop()
    await wait_for(lambda: _nothing_used(driver), what="the gang released everything")


async def _nothing_used(mesh: am.Mesh) -> bool:
    return all(not n.used for n in await mesh.nodes())

"""`Mesh.spawn_many`: a batch of agents placed in one request and started with one
message per node; on the embedded mesh, on an in-process cluster, and on node
processes on loopback (ports from the OS; every process is stopped, also on failure)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

import agentmesh as am
from agentmesh._private.kernel.placing import make_request
from agentmesh._private.placement.scheduler import Scheduler

from .agents import Counter, Picky, Recorder, Stoppable
from .conftest import recorded, wait_for
from .test_cluster import Daemon


class Fails(am.Agent):
    async def on_start(self) -> None:
        raise RuntimeError("cannot start")


async def _used(mesh: am.Mesh) -> dict[str, dict[str, float]]:
    return {n.id: n.used for n in await mesh.nodes()}


# -- the embedded mesh -----------------------------------------------------------------


async def test_the_embedded_mesh_starts_a_batch_in_order() -> None:
    async with am.Mesh(resources={"cpu": 4}) as mesh:
        assert await mesh.spawn_many(Counter, []) == []
        names = [f"c{i}" if i % 2 else None for i in range(50)]
        refs = await mesh.spawn_many(Counter, [(i,) for i in range(50)], names=names)
        assert [await ref.get() for ref in refs] == list(range(50))
        assert [ref.name for ref in refs] == names
        assert await mesh.get("c7") == refs[7]
        placed = await mesh.spawn_many(Counter, [()] * 8, resources={"cpu": 0.5})
        assert (await _used(mesh))[mesh.node_id] == {"cpu": 4.0}
        assert {ref.node for ref in placed} == {mesh.node_id}
        await placed[0].stop()
        assert (await _used(mesh))[mesh.node_id] == {"cpu": 3.5}
        assert len(await mesh.agents()) == 57
    # Leaving the mesh stopped them with its root, as single spawns.
    assert mesh._node.cells == {}


async def test_a_failure_stops_the_whole_batch_and_says_which_agents_failed() -> None:
    async with am.Mesh(resources={"cpu": 4}) as mesh:
        before = len(await mesh.agents())
        with pytest.raises(am.SpawnManyError) as caught:
            await mesh.spawn_many(Picky, [(i, (3, 7)) for i in range(10)], resources={"cpu": 0.25})
        err = caught.value
        assert sorted(err.failed) == [3, 7]
        assert err.started == 8
        assert all(isinstance(e, am.SpawnError) for e in err.failed.values())
        text = str(err)
        assert "2 of 10 agents did not start (8 started and were stopped again)" in text
        assert "#3: SpawnError: ValueError in agent" in text
        assert "will not be number 7" in text
        assert "agent #7 of the batch" in (err.failed[7].__notes__ or [])
        assert len(await mesh.agents()) == before  # nothing of the batch is left
        assert (await _used(mesh))[mesh.node_id] == {}  # nor any reservation
        # An ExceptionGroup: the failures split by type, as ``except*`` splits them.
        with pytest.raises(am.SpawnManyError) as caught:
            await mesh.spawn_many(Fails, [(), ()], names=["f1", "f2"])
        spawn_errors, rest = caught.value.split(am.SpawnError)
        assert rest is None
        assert spawn_errors is not None
        assert [str(e).splitlines()[0] for e in spawn_errors.exceptions] == [
            "RuntimeError in agent 'f1': cannot start",
            "RuntimeError in agent 'f2': cannot start",
        ]


async def test_a_batch_checks_its_arguments_before_starting_anything() -> None:
    async with am.Mesh() as mesh:
        taken = await mesh.spawn(Counter, name="taken")
        with pytest.raises(TypeError, match=r"one tuple of arguments per agent"):
            await mesh.spawn_many(Counter, [1, 2])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="2 names for 3 agents"):
            await mesh.spawn_many(Counter, [()] * 3, names=["a", "b"])
        with pytest.raises(ValueError, match="'a' is given twice"):
            await mesh.spawn_many(Counter, [()] * 2, names=["a", "a"])
        with pytest.raises(ValueError, match="restart must be one of"):
            await mesh.spawn_many(Counter, [()], restart="sometimes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not both"):
            await mesh.spawn_many(Counter, [()], node=mesh.node_id, strategy="pack")
        assert [a.name for a in await mesh.agents()] == ["taken"]
        with pytest.raises(am.SpawnManyError) as caught:
            await mesh.spawn_many(Counter, [(1,), (2,)], names=["fresh", "taken"])
        assert isinstance(caught.value.failed[1], am.NameTaken)
        assert caught.value.started == 1
        assert [a.name for a in await mesh.agents()] == ["taken"]
        assert await taken.get() == 0


async def test_a_batch_is_placed_whole_at_once_or_waits_for_room_for_all() -> None:
    async with am.Mesh(resources={"cpu": 2}) as mesh:
        with pytest.raises(am.PlacementError, match="gpu 0 in all of 1"):
            await mesh.spawn_many(Counter, [()] * 3, resources={"gpu": 1})
        async with asyncio.timeout(5):  # never: at once, not after placement_timeout
            with pytest.raises(am.PlacementError, match=r"batch of 5 agents.*at most 4 fit"):
                await mesh.spawn_many(Counter, [()] * 5, resources={"cpu": 0.5})
        first = await mesh.spawn(Counter, resources={"cpu": 1})
        with pytest.raises(am.PlacementError, match="no node had room for a batch of 2"):
            await mesh.spawn_many(Counter, [()] * 2, resources={"cpu": 1}, placement_timeout=0)
        assert (await _used(mesh))[mesh.node_id] == {"cpu": 1.0}  # it held nothing
        waiting = asyncio.ensure_future(
            mesh.spawn_many(Counter, [(1,), (2,)], resources={"cpu": 1})
        )
        await wait_for(lambda: _waiting(mesh, 1), what="the batch waits for room")
        await first.stop()
        refs = await asyncio.wait_for(waiting, 5)
        assert [await ref.get() for ref in refs] == [1, 2]
        assert (await _used(mesh))[mesh.node_id] == {"cpu": 2.0}


async def _waiting(mesh: am.Mesh, count: int) -> bool:
    return (await mesh.placement_report())[0] == count


async def test_a_batch_under_a_supervisor_is_restarted_as_its_children_are() -> None:
    async with am.Mesh() as mesh:
        sup = await mesh.spawn(am.Supervisor, am.SupervisorSpec(intensity=5))
        refs = await mesh.spawn_many(Counter, [(10,), (20,), (30,)], supervisor=sup)
        children = await sup.children()
        assert [(c.ref, c.restart, c.dynamic) for c in children] == [
            (ref, "permanent", True) for ref in refs
        ]
        await refs[1].add(5)
        await refs[1].fail.tell("crash")  # escapes a tell handler: a crash
        await wait_for(lambda: _restarts(sup, [0, 1, 0]), what="restarted")
        assert await refs[1].get() == 20  # a fresh instance, same ref
        with pytest.raises(am.AgentUnavailable, match="not a live supervisor"):
            await mesh.spawn_many(Counter, [()], supervisor=refs[0])
        assert [await r.get() for r in await sup.start_children([am.ChildSpec(Counter, 4)])] == [4]


async def _restarts(sup: am.AgentRef, expected: list[int]) -> bool:
    return [c.restarts for c in await sup.children()][: len(expected)] == expected


async def test_the_scheduler_reserves_a_batch_whole_or_not_at_all() -> None:
    scheduler = Scheduler()
    scheduler.node_up("a", "worker", {"cpu": 2}, {})
    scheduler.node_up("b", "worker", {"cpu": 2}, {})
    one = make_request({"cpu": 1})
    tickets = await scheduler.reserve_many([one] * 3)
    assert sorted(t.node for t in tickets) == ["a", "a", "b"]  # balanced: spread
    held = dict(scheduler.held)
    waiting = asyncio.ensure_future(scheduler.reserve_many([one] * 2, timeout=5))
    await wait_for(lambda: len(scheduler.waiting) == 1, what="queued: one cpu is free")
    assert scheduler.held == held  # waiting, it holds nothing
    scheduler.release(tickets[0].key)
    assert len(await waiting) == 2
    assert not scheduler.waiting
    with pytest.raises(am.PlacementError, match="at most 4 fit"):
        await scheduler.reserve_many([one] * 5)


# -- an in-process cluster: a head, two workers and a driver over gRPC ----------------


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh]]:
    """A head (cpu=2), a gpu worker in eu, a cpu worker in us, and a driver."""
    async with am.Mesh(listen="127.0.0.1:0", resources={"cpu": 2}, ask_timeout=10) as head:
        assert head.address is not None
        async with (
            am.Mesh(
                join=head.address,
                resources={"cpu": 4, "gpu": 1},
                labels={"zone": "eu"},
                role="worker",
            ) as eu,
            am.Mesh(
                join=head.address, resources={"cpu": 4}, labels={"zone": "us"}, role="worker"
            ) as us,
            am.Mesh(join=head.address, ask_timeout=10) as driver,
        ):
            yield head, eu, us, driver


async def test_a_driver_places_a_batch_as_it_would_place_single_spawns(
    cluster: tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh],
) -> None:
    head, eu, us, driver = cluster
    refs = await driver.spawn_many(Counter, [(i,) for i in range(20)])
    nodes = [ref.node for ref in refs]
    assert (nodes.count(eu.node_id), nodes.count(us.node_id)) == (10, 10)  # the head kept free
    assert await asyncio.gather(*(ref.get() for ref in refs)) == list(range(20))
    [gpu] = await driver.spawn_many(Counter, [()], resources={"gpu": 1})
    assert gpu.node == eu.node_id
    with pytest.raises(am.PlacementError, match="batch of 2 agents asking resources gpu=1"):
        await driver.spawn_many(Counter, [()] * 2, resources={"gpu": 1})
    zoned = await driver.spawn_many(Counter, [()] * 3, labels={"zone": "us"})
    assert {ref.node for ref in zoned} == {us.node_id}
    pinned = await driver.spawn_many(Counter, [()] * 2, node=head.node_id)
    assert {ref.node for ref in pinned} == {head.node_id}
    # Under a supervisor on another node: its children, on the node asked for.
    sup = await driver.spawn(am.Supervisor, am.SupervisorSpec(intensity=5), node=head.node_id)
    kids = await driver.spawn_many(
        Counter, [(1,), (2,)], supervisor=sup, node=eu.node_id, names=["k1", "k2"]
    )
    assert [c.ref for c in await sup.children()] == kids
    assert {ref.node for ref in kids} == {eu.node_id}
    assert await (await head.get("k2")).get() == 2
    with pytest.raises(am.PlacementError, match="gpu 1 in all of 5"):  # as it is
        await driver.spawn_many(Counter, [()], supervisor=sup, resources={"gpu": 5})
    # Detached agents outlive the driver that started them; the others do not.
    assert head.address is not None
    async with am.Mesh(join=head.address, ask_timeout=10) as brief:
        await brief.spawn_many(Counter, [(5,), (6,)], names=["d5", "d6"], detached=True)
        await brief.spawn_many(Counter, [(7,)], names=["n7"])
    assert await (await head.get("d6")).get() == 6
    await wait_for(lambda: _gone(head, "n7"), what="stopped with its driver")


async def _gone(mesh: am.Mesh, name: str) -> bool:
    try:
        await mesh.get(name)
    except am.AgentNotFound:
        return True
    return False


async def test_a_batch_stops_as_it_started_each_node_its_share_newest_first(
    cluster: tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh],
) -> None:
    head, eu, us, _ = cluster
    recorder = await head.spawn(Recorder)
    assert head.address is not None
    async with am.Mesh(join=head.address, ask_timeout=10) as brief:
        await brief.spawn(Stoppable, recorder, "first", node=eu.node_id)
        batch = await brief.spawn_many(Stoppable, [(recorder, f"b{i}") for i in range(6)])
        await brief.spawn(Stoppable, recorder, "last", node=eu.node_id)
    events = [label for label, _ in await recorded(recorder, 8)]
    assert sorted(events) == sorted(["first", "last"] + [f"b{i}" for i in range(6)])
    on = {
        mesh.node_id: [f"b{i}" for i, r in enumerate(batch) if r.node == mesh.node_id]
        for mesh in (eu, us)
    }
    # What each node says reaches the recorder in order: its share, newest first,
    # between the single spawns (the newest of all first).
    from_eu = [e for e in events if e in ("first", "last", *on[eu.node_id])]
    assert from_eu == ["last", *reversed(on[eu.node_id]), "first"]
    assert [e for e in events if e in on[us.node_id]] == list(reversed(on[us.node_id]))
    assert on[eu.node_id]
    assert on[us.node_id]


async def test_a_batch_that_fails_on_other_nodes_is_stopped_everywhere(
    cluster: tuple[am.Mesh, am.Mesh, am.Mesh, am.Mesh],
) -> None:
    head, eu, us, driver = cluster
    names = [f"p{i}" for i in range(10)]
    with pytest.raises(am.SpawnManyError) as caught:
        await driver.spawn_many(Picky, [(i, (4,)) for i in range(10)], names=names)
    err = caught.value
    assert (sorted(err.failed), err.started) == ([4], 9)
    failure = err.failed[4]
    assert isinstance(failure, am.SpawnError)
    assert "will not be number 4" in failure.remote_traceback
    for mesh in (eu, us):
        assert await mesh.agents() == []
    for name in names:
        await wait_for(lambda name=name: _gone(head, name), what=f"{name} released")
    # A name held elsewhere in the cluster (claimed for the batch in one request).
    await driver.spawn(Counter, name="dup", node=us.node_id)
    with pytest.raises(am.SpawnManyError) as caught:
        await driver.spawn_many(Counter, [()] * 4, names=["x", "y", "dup", "z"])
    assert list(caught.value.failed) == [2]
    assert isinstance(caught.value.failed[2], am.NameTaken)
    assert [a.name for a in await us.agents()] == ["dup"]
    assert await eu.agents() == []


# -- node processes -------------------------------------------------------------------


async def _workers(mesh: am.Mesh, count: int) -> list[str]:
    await wait_for(
        lambda: _has_workers(mesh, count), timeout=15, what=f"{count} workers registered"
    )
    return [n.id for n in await mesh.nodes() if n.role == "worker" and n.alive]


async def _has_workers(mesh: am.Mesh, count: int) -> bool:
    return sum(n.role == "worker" and n.alive for n in await mesh.nodes()) == count


@pytest.mark.slow
async def test_a_batch_across_node_processes_starts_every_agent() -> None:
    head = await Daemon.start("head", "--listen", "127.0.0.1:0", "--resources", "cpu=0")
    workers: list[Daemon] = []
    try:
        for _ in range(2):  # one by one: each is stopped below even if the next fails
            workers.append(  # noqa: PERF401
                await Daemon.start("node", "--join", head.address, "--resources", "cpu=100")
            )
        async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
            ids = await _workers(mesh, 2)
            names = [f"n{i}" for i in range(300)]
            refs = await mesh.spawn_many(
                Counter, [(i,) for i in range(300)], resources={"cpu": 0.1}, names=names
            )
            assert {ref.node for ref in refs} == set(ids)
            added = await asyncio.gather(*(ref.add(1) for ref in refs))
            assert added == [i + 1 for i in range(300)]
            assert await mesh.get("n123") == refs[123]
            used = {n.id: n.used.get("cpu", 0.0) for n in await mesh.nodes()}
            assert round(sum(used[i] for i in ids), 6) == 30.0
            with pytest.raises(am.PlacementError, match="no node can ever host resources cpu=101"):
                await mesh.spawn_many(Counter, [()] * 2, resources={"cpu": 101})
            with pytest.raises(am.PlacementError, match=r"3,000 agents.*at most 2,000 fit"):
                await mesh.spawn_many(Counter, [()] * 3000, resources={"cpu": 0.1})
            with pytest.raises(am.SpawnManyError) as caught:
                await mesh.spawn_many(Picky, [(i, (0, 1)) for i in range(6)])
            assert sorted(caught.value.failed) == [0, 1]
            assert {type(e) for e in caught.value.failed.values()} == {am.SpawnError}
            assert caught.value.started == 4
            counts = {n.id: n.agents for n in await mesh.nodes()}
            assert sum(counts[i] for i in ids) <= 300  # nothing of the failed batch kept
    finally:
        for daemon in workers:
            await daemon.stop()
        await head.stop()


@pytest.mark.slow
async def test_batch_spawned_agents_of_a_killed_node_restart_on_another() -> None:
    head = await Daemon.start("head", "--listen", "127.0.0.1:0", "--dead-after", "1.5")
    workers: list[Daemon] = []
    try:
        for _ in range(2):  # one by one: each is stopped below even if the next fails
            workers.append(  # noqa: PERF401
                await Daemon.start("node", "--join", head.address, "--heartbeat", "0.25")
            )
        async with am.Mesh(join=head.address, ask_timeout=10, restart_intensity=100) as mesh:
            await _workers(mesh, 2)
            addresses = {n.id: n.address for n in await mesh.nodes()}
            kept = await mesh.spawn_many(
                Counter,
                [(i,) for i in range(20)],
                names=[f"m{i}" for i in range(20)],
                restart="permanent",
            )
            temporary = await mesh.spawn_many(
                Counter, [(i,) for i in range(6)], names=[f"t{i}" for i in range(6)]
            )
            doomed = kept[0].node
            survivor = next(r.node for r in kept if r.node != doomed)
            lost = [i for i, ref in enumerate(kept) if ref.node == doomed]
            assert 0 < len(lost) < 20
            for ref in kept:
                await ref.add(100)
            victim = next(d for d in workers if d.address == addresses[doomed])
            victim.process.send_signal(signal.SIGKILL)
            for i in range(20):
                name = f"m{i}"
                await wait_for(
                    lambda name=name: _on(mesh, name, survivor), timeout=15, what=f"{name} moved"
                )
            for i in range(20):
                ref = await mesh.get(f"m{i}")
                # Those lost restart fresh (with a new ref); the others kept their state.
                assert await ref.get() == (i if i in lost else i + 100)
                assert (ref == kept[i]) == (i not in lost)
            for i, ref in enumerate(temporary):  # temporary: not restarted
                if ref.node == doomed:
                    await wait_for(lambda i=i: _gone(mesh, f"t{i}"), what=f"t{i} not restarted")
                else:
                    assert await ref.get() == i
            restarts = {c.name: c.restarts for c in await mesh.root.children()}
            assert [restarts[f"m{i}"] for i in range(20)] == [int(i in lost) for i in range(20)]
    finally:
        for daemon in workers:
            await daemon.stop()
        await head.stop()


async def _on(mesh: am.Mesh, name: str, node: str) -> bool:
    try:
        return (await mesh.get(name)).node == node
    except am.AgentNotFound:
        return False

"""A real cluster on loopback: a head and a worker as separate processes.

Ports are chosen by the OS; every process started here is stopped, also on failure.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon

from .agents import Counter, Forever
from .conftest import ROOT, start_daemon, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Daemon, Daemon]]:
    head = await start_daemon("head", "--listen", "127.0.0.1:0")
    worker = None
    try:
        worker = await start_daemon(
            "node", "--join", head.address, "--resources", "cpu=4,gpu=1", "--labels", "zone=eu"
        )
        yield head, worker
    finally:
        if worker is not None:
            await worker.stop()
        await head.stop()


async def _workers(mesh: am.Mesh) -> list[am.NodeInfo]:
    return [n for n in await mesh.nodes() if n.role == "worker" and n.alive]


async def test_a_driver_spawns_on_the_worker_and_talks_to_it(
    cluster: tuple[Daemon, Daemon],
) -> None:
    head, _ = cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
        workers = await _workers(mesh)
        assert [(w.resources, w.labels) for w in workers] == [
            ({"cpu": 4.0, "gpu": 1.0}, {"zone": "eu"})
        ]
        counter = await mesh.spawn(Counter, 5, name="shared")
        assert counter.node == workers[0].id
        assert await counter.add(2) == 7
        for _ in range(500):
            await counter.add.tell(1)
        assert await counter.get() == 507
        with pytest.raises(am.RemoteError) as caught:
            await counter.fail("over the wire")
        assert caught.value.remote_type == "ValueError"
        assert "in fail" in caught.value.remote_traceback
        assert await mesh.get("shared") == counter  # the cluster-wide registry
        with pytest.raises(am.NameTaken):
            await mesh.spawn(Counter, name="shared", node=head_id(await mesh.nodes()))


def head_id(nodes: list[am.NodeInfo]) -> str:
    return next(n.id for n in nodes if n.role == "head")


async def test_a_class_defined_in_a_script_runs_remotely(
    cluster: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    head, _ = cluster
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import agentmesh as am

            class Greeter(am.Agent):          # defined in __main__: shipped by value
                def __init__(self, greeting):
                    self.greeting = greeting

                async def greet(self, who):
                    return f"{self.greeting}, {who}, from {self.node}"

            async def main(address):
                async with am.Mesh(join=address) as mesh:
                    greeter = await mesh.spawn(Greeter, "hello")
                    print(greeter.node != mesh.node_id)
                    print(await greeter.greet("world"))

            am.run(main(sys.argv[1]))
            """
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        head.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "True"
    assert lines[1].startswith("hello, world, from ")


async def test_status_shows_nodes_resources_and_labels(cluster: tuple[Daemon, Daemon]) -> None:
    head, worker = cluster
    for as_json in (True, False):
        args = ["status", "--address", head.address] + (["--json"] if as_json else [])
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmesh", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
        text = out.decode()
        if as_json:
            view = json.loads(text)
            assert view["waiting"] == 0
            nodes = {n["role"]: n for n in view["nodes"]}
            assert nodes["worker"]["address"] == worker.address
            assert nodes["worker"]["labels"] == {"zone": "eu"}
            assert nodes["head"]["address"] == head.address
        else:
            assert worker.address in text
            assert "zone=eu" in text
            assert "gpu=0/1" in text  # used/total


async def test_a_killed_worker_fails_pending_asks_at_once(cluster: tuple[Daemon, Daemon]) -> None:
    head, worker = cluster
    async with am.Mesh(join=head.address, ask_timeout=60) as mesh:
        forever = await mesh.spawn(Forever)
        assert await forever.ping() == "pong"
        hanging = [asyncio.create_task(forever.hang()) for _ in range(3)]
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await worker.kill()
        for task in hanging:
            with pytest.raises(am.AgentUnavailable):
                await asyncio.wait_for(task, 10)
        assert loop.time() - killed_at < 5  # not the 60 s ask timeout
        await wait_for(lambda: _no_workers(mesh), timeout=10, what="the head saw it die")
        with pytest.raises(am.AgentUnavailable):
            await forever.ping()


async def _no_workers(mesh: am.Mesh) -> bool:
    return not await _workers(mesh)


async def test_a_wrong_token_is_refused_with_a_clear_error(cluster: tuple[Daemon, Daemon]) -> None:
    head, _ = cluster
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentmesh",
        "node",
        "--join",
        head.address,
        "--token",
        "not-the-token",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "AuthError" in err.decode()
    assert not out


async def test_daemons_stop_cleanly_on_sigterm(cluster: tuple[Daemon, Daemon]) -> None:
    head, worker = cluster
    async with am.Mesh(join=head.address) as mesh:
        await wait_for(lambda: _has_worker(mesh), what="worker registered")
        assert await worker.stop() == 0
        await wait_for(lambda: _no_workers(mesh), what="worker left")
    assert await head.stop() == 0


async def _has_worker(mesh: am.Mesh) -> bool:
    return bool(await _workers(mesh))


async def test_a_restarted_head_rebuilds_the_registry_and_the_data_plane_carries_on(
    cluster: tuple[Daemon, Daemon],
) -> None:
    head, _ = cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
        counter = await mesh.spawn(Counter, 1, name="survivor", detached=True)
        for _ in range(100):
            await counter.add.tell(1)
        await head.kill()
        # Without a head, agents on other nodes keep serving their callers.
        for _ in range(100):
            await counter.add.tell(1)
        assert await counter.get() == 201
        address = head.address
        await head.restart("head", "--listen", address)  # the fixture stops it
        assert head.address == address
    # A new driver finds the name: the nodes registered again with the new head.
    assert head.process.returncode is None, head.log.decode()
    async with am.Mesh(join=head.address, ask_timeout=10) as fresh:
        await wait_for(
            lambda: _finds(fresh, "survivor"), timeout=15, what=f"registry rebuilt: {head.log!r}"
        )
        again = await fresh.get("survivor")
        assert again == counter
        assert await again.add(1) == 202


async def _finds(mesh: am.Mesh, name: str) -> bool:
    try:
        await mesh.get(name)
    except am.AgentNotFound:
        return False
    return True


async def test_watchers_hear_of_agents_on_a_node_that_died(cluster: tuple[Daemon, Daemon]) -> None:
    head, worker = cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
        counter = await mesh.spawn(Counter)
        assert counter.node != mesh.node_id
        ended = asyncio.create_task(mesh.wait_terminated(counter))
        await counter.get()
        worker.process.send_signal(signal.SIGKILL)
        notice = await asyncio.wait_for(ended, 10)
        assert (notice.ref, notice.reason, notice.restarting) == (counter, "node_down", False)


async def test_supervised_agents_of_a_dead_node_restart_on_another(
    cluster: tuple[Daemon, Daemon],
) -> None:
    head, worker = cluster
    second = await start_daemon("node", "--join", head.address)
    try:
        async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
            nodes = await mesh.nodes()
            doomed = next(n.id for n in nodes if n.address == worker.address)
            head_node = next(n.id for n in nodes if n.role == "head")
            spec = am.SupervisorSpec(
                intensity=3,
                children=[am.ChildSpec(Counter, 10, name="mover", node=doomed)],
            )
            sup = await mesh.spawn(am.Supervisor, spec, node=head_node)
            mover = await mesh.get("mover")
            assert mover.node == doomed
            assert await mover.add(1) == 11
            # Under load: asks keep arriving while the node is killed; none may hang.
            load = [asyncio.create_task(_keep_asking(mover)) for _ in range(5)]
            worker.process.send_signal(signal.SIGKILL)
            outcomes = await asyncio.wait_for(asyncio.gather(*load), 10)
            assert all(isinstance(o, am.AgentUnavailable) for o in outcomes), outcomes
            await wait_for(lambda: _moved(mesh, doomed), timeout=15, what="restarted elsewhere")
            moved = await mesh.get("mover")
            assert moved.node not in (doomed, mesh.node_id)
            assert await moved.add(1) == 11  # a fresh instance on a live node
            assert [c.restarts for c in await sup.children()] == [1]
    finally:
        await second.stop()


async def _keep_asking(ref: am.AgentRef) -> BaseException:
    """Ask until the agent is unreachable; return that error."""
    while True:
        try:
            await ref.add(0)
        except am.AgentmeshError as exc:
            return exc


async def _moved(mesh: am.Mesh, away_from: str) -> bool:
    try:
        return (await mesh.get("mover")).node != away_from
    except am.AgentNotFound:
        return False


async def test_agents_of_a_killed_driver_do_not_outlive_it(
    cluster: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    head, _ = cluster
    script = tmp_path / "doomed_driver.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            sys.path.insert(0, sys.argv[2])  # the repository, for tests.agents
            import agentmesh as am
            from tests.agents import Counter

            async def main(address):
                async with am.Mesh(join=address) as mesh:
                    await mesh.spawn(Counter, name="orphan")  # a child of this driver
                    await mesh.spawn(Counter, name="keeper", detached=True)
                    print("ready", flush=True)
                    await asyncio.Event().wait()

            am.run(main(sys.argv[1]))
            """
        )
    )
    driver = await asyncio.create_subprocess_exec(
        sys.executable, str(script), head.address, str(ROOT), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert driver.stdout is not None
        assert await asyncio.wait_for(driver.stdout.readline(), 20) == b"ready\n"
        async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
            assert await (await mesh.get("orphan")).get() == 0
            driver.send_signal(signal.SIGKILL)
            await wait_for(lambda: _gone(mesh, "orphan"), timeout=15, what="orphan stopped")
            assert await (await mesh.get("keeper")).get() == 0  # detached: lives on
    finally:
        if driver.returncode is None:
            driver.kill()
        await driver.wait()


async def _gone(mesh: am.Mesh, name: str) -> bool:
    return not await _finds(mesh, name)


async def test_placed_agents_of_a_dead_node_are_placed_again_under_their_constraints() -> None:
    head = await start_daemon("head", "--listen", "127.0.0.1:0", "--dead-after", "1.5")
    fast = ("--heartbeat", "0.25")
    workers: dict[str, Daemon] = {}
    try:
        for name, resources, labels in (
            ("eu1", "cpu=2,gpu=1", "zone=eu"),
            ("eu2", "cpu=2,gpu=1", "zone=eu"),
            ("us1", "cpu=2,gpu=4", "zone=us"),
        ):
            workers[name] = await start_daemon(
                "node", "--join", head.address, "--resources", resources, "--labels", labels, *fast
            )
        async with am.Mesh(join=head.address, ask_timeout=10) as mesh:
            ids = {n.address: n.id for n in await mesh.nodes()}
            by_name = {name: ids[d.address] for name, d in workers.items()}
            head_node = next(n.id for n in await mesh.nodes() if n.role == "head")
            spec = am.SupervisorSpec(
                intensity=5,
                children=[
                    am.ChildSpec(
                        Counter, 1, name="mover", resources={"gpu": 1}, labels={"zone": "eu"}
                    )
                ],
            )
            sup = await mesh.spawn(am.Supervisor, spec, node=head_node)
            first = (await mesh.get("mover")).node
            assert first in (by_name["eu1"], by_name["eu2"])
            doomed = next(name for name, node in by_name.items() if node == first)
            workers[doomed].process.send_signal(signal.SIGKILL)
            await wait_for(lambda: _moved(mesh, first), timeout=15, what="placed again")
            survivor = next(n for n in ("eu1", "eu2") if n != doomed)
            assert (await mesh.get("mover")).node == by_name[survivor]  # not us1: wrong zone
            assert await (await mesh.get("mover")).add(1) == 2
            nodes = {n.id: n for n in await mesh.nodes()}
            assert nodes[by_name[survivor]].used == {"gpu": 1.0}
            # No node fits any more: the loss is reported, not hidden.
            workers[survivor].process.send_signal(signal.SIGKILL)
            await wait_for(lambda: _child_crashed(sup), timeout=15, what="reported")
            [child] = await sup.children()
            assert "PlacementError" in (child.last_error or "")
            assert "zone" in (child.last_error or "")
            _, failures = await mesh.placement_report()
            assert any("gpu" in f and by_name["us1"] in f for f in failures)
    finally:
        for daemon in workers.values():
            await daemon.stop()
        await head.stop()


async def _child_crashed(sup: am.AgentRef) -> bool:
    return [c.state for c in await sup.children()] == ["crashed"]

"""Virtual agents (`Mesh.agent`): one agent per class and key in the cluster, got or
created atomically, passivated when idle and activated again through the same ref,
with their state; elsewhere if their node dies.

Races with passivation are checked on the simulation's virtual clock (exact), the
rest in real time on real clusters: in-process over gRPC, and daemons in processes
of their own (slow).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import pickle
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon
from agentmesh.sim import run_virtual

from .agents import Counter
from .conftest import ROOT, World, docs_example, start_daemon, wait_for
from .timed_agents import Tally


def virtual(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_virtual(main())


class Account(am.Agent):
    """A virtual agent whose balance is its snapshot; counts its constructions."""

    built: list[str] = []

    def __init__(self, key: str, *, slow_snapshot: float = 0.0) -> None:
        Account.built.append(key)
        self.key = key
        self.balance = 0
        self.slow_snapshot = slow_snapshot

    async def snapshot(self) -> int:
        await asyncio.sleep(self.slow_snapshot)  # a slow store, on the virtual clock
        return self.balance

    def restore(self, state: int) -> None:
        self.balance = state

    async def deposit(self, amount: int) -> int:
        self.balance += amount
        return self.balance

    async def note(self, amount: int) -> None:
        self.balance += amount

    async def whoami(self) -> str:
        return f"{self.key}@{self.ref.id}"

    async def hang(self) -> None:
        await asyncio.Event().wait()

    async def history(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield self.balance + i

    async def fail(self) -> None:
        raise RuntimeError("crash on purpose")


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Account.built = []


async def test_one_agent_per_class_and_key(mesh: am.Mesh) -> None:
    refs = await asyncio.gather(*(mesh.agent(Account, "alice") for _ in range(5)))
    assert all(ref == refs[0] for ref in refs)
    assert Account.built == ["alice"]
    alice = refs[0]
    assert alice.name == f"{__name__}.Account/alice"
    assert alice.key == "alice"
    assert await alice.deposit(10) == 10
    assert await (await mesh.agent(Account, "alice")).deposit(5) == 15
    bob = await mesh.agent(Account, "bob")
    assert bob != alice
    assert await bob.deposit(1) == 1
    assert await mesh.get(alice.name) == await alice.resolve()  # a named agent
    with pytest.raises(TypeError):
        await mesh.agent(Account, 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await mesh.agent(Account, "x", idle_after=0)
    with pytest.raises(am.SpawnError):
        await mesh.agent(am.Supervisor, "no spec")  # a constructor that fails
    copy = pickle.loads(pickle.dumps(alice))
    assert copy == alice
    assert await copy.deposit(0) == 15


async def test_a_passivated_agent_comes_back_through_the_same_ref_with_its_state(
    mesh: am.Mesh,
) -> None:
    alice = await mesh.agent(Account, "alice", idle_after=0.05)
    await alice.deposit(10)
    first = await alice.resolve()
    notice = await mesh.wait_terminated(first)  # idle for 0.05 s: passivated
    assert notice.reason == "normal"
    assert await mesh.state_store.get(alice.name) is not None  # its snapshot, saved
    assert await alice.deposit(1) == 11  # activated again, restored
    assert await alice.resolve() != first
    assert Account.built == ["alice", "alice"]
    await alice.note.tell(1)  # tells too activate it once it passivated again
    await mesh.wait_terminated(await alice.resolve())
    await alice.note.tell(1)
    assert await alice.deposit(0) == 13


def test_calls_that_meet_a_passivating_agent_are_sent_to_its_next_activation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call refused as the agent passivates never ran: the ref sends it again, to
    a new activation restored from the snapshot the old one was saving."""
    caplog.set_level(logging.CRITICAL, "agentmesh")

    async def main() -> None:
        async with am.Mesh(slow_turn=None) as m:
            cls = functools.partial(Account, slow_snapshot=0.5)
            alice = await m.agent(cls, "alice", idle_after=1.0)
            await alice.deposit(10)  # at 0, seen idle from the check at 0.25
            first = await alice.resolve()
            await asyncio.sleep(1.4)  # passivation began at 1.25; saving until 1.75
            assert m._node.cells[first.id].state.value == "stopping"
            await alice.note.tell(1)  # refused: waits for the old one, then activates
            assert await alice.deposit(1) == 12
            assert Account.built == ["alice", "alice"]
            assert asyncio.get_running_loop().time() == 1.75  # right after it ended
            # A call that was running when the agent crashed is not sent again.
            bob = await m.agent(cls, "bob", concurrency=2)
            await bob.deposit(3)
            hanging = asyncio.ensure_future(bob.hang())
            await asyncio.sleep(0.1)
            await bob.fail.tell()
            with pytest.raises(am.AgentUnavailable) as err:
                await hanging
            assert err.value.never_ran is False
            assert await bob.deposit(0) == 0  # the next call: a new activation (no snapshot)

    virtual(main)


class SlowStart(am.Agent):
    built = 0

    def __init__(self, key: str) -> None:
        SlowStart.built += 1

    async def on_start(self) -> None:
        await asyncio.sleep(2.0)

    async def ping(self) -> str:
        return "pong"


def test_a_stream_opens_on_the_next_activation_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "agentmesh")

    async def main() -> None:
        async with am.Mesh(slow_turn=None) as m:
            cls = functools.partial(Account, slow_snapshot=0.5)
            alice = await m.agent(cls, "alice", idle_after=1.0)
            await alice.deposit(5)
            assert [x async for x in alice.history.stream(3)] == [5, 6, 7]
            await asyncio.sleep(1.4)  # passivating from 1.25, saving until 1.75
            async with alice.history.stream(2, window=1) as items:
                assert [x async for x in items] == [5, 6]  # activated again, restored
            assert Account.built == ["alice", "alice"]
            assert asyncio.get_running_loop().time() == 1.75

    virtual(main)


def test_a_call_that_gives_up_on_an_activation_leaves_it_to_finish() -> None:
    SlowStart.built = 0

    async def main() -> None:
        async with am.Mesh(slow_turn=None) as m:
            slow = await m.agent(SlowStart, "s", idle_after=1.0)  # built by t=2
            await m.wait_terminated(await slow.resolve())  # passivated
            with pytest.raises(am.AskTimeout, match=r"not activated within 0\.5s"):
                await slow.ping.ask(timeout=0.5)
            assert await slow.ping() == "pong"  # the activation under way, not another
            assert SlowStart.built == 2

    virtual(main)


async def test_a_call_refused_by_an_agent_that_ended_says_it_never_ran(world: World) -> None:
    """What a virtual ref relies on to send a call again, in every world."""
    counter = await world.spawn(Counter)
    await counter.stop()
    with pytest.raises(am.AgentUnavailable) as err:
        await counter.add(1)
    assert err.value.never_ran is True


async def test_across_nodes_passivation_and_refs_sent_in_messages() -> None:
    async with (
        am.Mesh(listen="127.0.0.1:0") as head,
        am.Mesh(join=head.address, ask_timeout=10) as driver,
    ):
        alice = await driver.agent(Tally, "alice", idle_after=0.1)
        where, node = await alice.where()
        assert node == head.node_id  # no worker: placed on the head
        await alice.add(10)
        await driver.wait_terminated(await alice.resolve())  # passivated, over there
        assert await alice.add(1) == 11  # activated again, from here
        assert (await alice.where())[0] != where
        # A ref in a message works on the other side, and finds the same agent.
        relay = await driver.spawn(Relay)  # on the head
        assert relay.node == head.node_id
        assert await relay.add_through(alice, 1) == 12
        assert await (await head.agent(Tally, "alice")).add(0) == 12


class Relay(am.Agent):
    async def add_through(self, ref: am.VirtualRef, n: int) -> int:
        total: int = await ref.add(n)
        return total


async def test_two_meshes_racing_build_one_agent_per_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "built.txt"
    monkeypatch.setenv("TALLY_LOG", str(log))
    keys = [f"k{i}" for i in range(20)]
    async with (
        am.Mesh(listen="127.0.0.1:0") as head,
        am.Mesh(join=head.address) as one,
        am.Mesh(join=head.address) as two,
    ):
        refs = await asyncio.gather(*(m.agent(Tally, k) for k in keys for m in (one, two)))
        mine = [await r.where() for r in refs[0::2]]
        theirs = [await r.where() for r in refs[1::2]]
        assert mine == theirs
    built = sorted(line.split()[0] for line in log.read_text().splitlines())
    assert built == sorted(keys)  # the losers never built theirs


# -- processes of their own ---------------------------------------------------------

CREATOR = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])  # the repository, for tests.timed_agents
    import agentmesh as am
    from tests.timed_agents import Tally

    async def main(address, keys):
        async with am.Mesh(join=address, ask_timeout=20) as mesh:
            refs = await asyncio.gather(*(mesh.agent(Tally, k) for k in keys))
            for key, ref in zip(keys, refs):
                agent_id, _ = await ref.where()
                print(key, agent_id, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[3].split(",")))
    """
)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Daemon, Path]]:
    """A head and a worker in processes of their own, sharing a SQLite state file."""
    db = tmp_path / "shared.db"
    timing = ("--heartbeat", "0.1", "--dead-after", "1.0")
    head = await start_daemon("head", "--listen", "127.0.0.1:0", "--state", str(db), *timing)
    worker = None
    try:
        worker = await start_daemon("node", "--join", head.address, "--state", str(db), *timing)
        yield head, worker, db
    finally:
        if worker is not None:
            await worker.stop()
        await head.stop()


@pytest.mark.slow
async def test_two_driver_processes_get_the_same_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "built.txt"
    monkeypatch.setenv("TALLY_LOG", str(log))  # the daemons and drivers inherit it
    head = await start_daemon("head", "--listen", "127.0.0.1:0")
    workers: list[Daemon] = []
    try:
        workers.append(await start_daemon("node", "--join", head.address))
        workers.append(await start_daemon("node", "--join", head.address))
        script = tmp_path / "creator.py"
        script.write_text(CREATOR)
        keys = ",".join(f"k{i}" for i in range(30))
        drivers = [
            await asyncio.create_subprocess_exec(
                sys.executable, str(script), head.address, str(ROOT), keys,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]  # fmt: skip
        outputs = [await asyncio.wait_for(d.communicate(), 60) for d in drivers]
        assert [d.returncode for d in drivers] == [0, 0]
        seen = [dict(line.split() for line in out.decode().splitlines()) for out, _ in outputs]
        assert len(seen[0]) == 30
        assert seen[0] == seen[1]
        built = sorted(line.split()[0] for line in log.read_text().splitlines())
        assert built == sorted(seen[0])  # each built once, on whichever node won
    finally:
        for worker in workers:
            await worker.stop()
        await head.stop()


@pytest.mark.slow
async def test_an_agent_whose_node_died_is_activated_elsewhere_with_its_state(
    cluster: tuple[Daemon, Daemon, Path],
) -> None:
    head, worker, db = cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as driver:
        nodes = await driver.nodes()
        head_id = next(n.id for n in nodes if n.role == "head")
        worker_id = next(n.id for n in nodes if n.role == "worker")
        account = await driver.agent(Tally, "acct", checkpoint_every=1)
        assert (await account.where())[1] == worker_id
        assert await account.add(10) == 10
        store = am.SqliteStateStore(db)
        try:  # the snapshot is taken right after the reply: wait until it is saved
            await wait_for(lambda: _saved(store, account.name, 10), what="the snapshot")
        finally:
            await store.aclose()
        await worker.kill()

        async def head_only() -> bool:
            return not [n for n in await driver.nodes() if n.role == "worker" and n.alive]

        await wait_for(head_only, timeout=15, what="the worker declared dead")
        # A call may fail while this driver has not heard of the death yet (it cannot
        # have run); then the next one activates it on a live node, restored from the
        # shared store.
        try:
            total = await account.add(1)
        except am.AgentUnavailable:
            total = await account.add(1)
        assert total == 11
        assert (await account.where())[1] == head_id


async def _saved(store: am.StateStore, key: str, state: Any) -> bool:
    data = await store.get(key)
    return data is not None and pickle.loads(data) == state


def test_the_example_of_the_docs_prints_what_they_say() -> None:
    printed, promised = docs_example("virtual-agents.md")
    assert printed == promised

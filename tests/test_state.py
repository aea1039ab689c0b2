"""State that survives a restart: snapshot/restore through both stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import agentmesh as am

from .conftest import wait_for


class Account(am.Agent):
    """Keeps a balance; snapshots it (sync) and restores it (async)."""

    def __init__(self) -> None:
        self.balance = 0

    def snapshot(self) -> int:
        return self.balance

    async def restore(self, state: int) -> None:
        self.balance = state

    async def deposit(self, amount: int) -> int:
        self.balance += amount
        return self.balance

    async def save(self) -> None:
        await self.checkpoint()

    async def get(self) -> int:
        return self.balance

    async def crash(self) -> None:
        raise RuntimeError("boom")


async def _crash_and_wait(mesh: am.Mesh, ref: am.AgentRef) -> None:
    cell = mesh._node.cells[ref.id]
    before = cell.restarts
    await ref.crash.tell()
    await wait_for(lambda: cell.restarts == before + 1 and cell.state.value == "running")


async def test_explicit_checkpoint_is_restored_after_a_restart() -> None:
    async with am.Mesh() as mesh:
        account = await mesh.spawn(Account, name="acct", restart="permanent")
        await account.deposit(10)
        await account.save()
        await account.deposit(5)  # not saved
        await _crash_and_wait(mesh, account)
        assert await account.get() == 10


async def test_checkpoint_after_every_message() -> None:
    async with am.Mesh() as mesh:
        account = await mesh.spawn(Account, restart="permanent", checkpoint_every=1)
        for _ in range(4):
            await account.deposit(1)
        await _crash_and_wait(mesh, account)
        assert await account.get() == 4


async def test_checkpoint_every_n_messages() -> None:
    async with am.Mesh() as mesh:
        account = await mesh.spawn(Account, restart="permanent", checkpoint_every=3)
        for _ in range(5):
            await account.deposit(1)  # saved after the 3rd; the 4th and 5th are lost
        await _crash_and_wait(mesh, account)
        assert await account.get() == 3


async def test_without_snapshot_a_restart_starts_fresh() -> None:
    async with am.Mesh() as mesh:
        account = await mesh.spawn(Account, restart="permanent")
        await account.deposit(7)
        await _crash_and_wait(mesh, account)
        assert await account.get() == 0


async def test_checkpoint_needs_a_snapshot_method() -> None:
    class Plain(am.Agent):
        async def save(self) -> None:
            await self.checkpoint()

    async with am.Mesh() as mesh:
        plain = await mesh.spawn(Plain)
        with pytest.raises(am.RemoteError, match="snapshot"):
            await plain.save()


async def test_the_sqlite_store_survives_a_fresh_mesh(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with am.Mesh(state_store=am.SqliteStateStore(path)) as mesh:
        account = await mesh.spawn(Account, name="acct", checkpoint_every=1)
        await account.deposit(42)
    async with am.Mesh(state_store=am.SqliteStateStore(path)) as mesh:
        again = await mesh.spawn(Account, name="acct")
        assert await again.get() == 42  # restored when the new agent started
        other = await mesh.spawn(Account, name="other")
        assert await other.get() == 0


async def test_the_sqlite_store_restores_after_a_restart(tmp_path: Path) -> None:
    async with am.Mesh(state_store=am.SqliteStateStore(tmp_path / "s.db")) as mesh:
        account = await mesh.spawn(Account, name="acct", restart="permanent")
        await account.deposit(3)
        await account.save()
        await _crash_and_wait(mesh, account)
        assert await account.get() == 3


async def test_store_api_round_trip(tmp_path: Path) -> None:
    for store in (am.MemoryStateStore(), am.SqliteStateStore(tmp_path / "x.db")):
        assert await store.get("k") is None
        await store.put("k", b"one")
        await store.put("k", b"two")
        assert await store.get("k") == b"two"
        await store.delete("k")
        assert await store.get("k") is None
        await store.aclose()


async def test_a_failing_snapshot_crashes_the_agent() -> None:
    class Broken(Account):
        def snapshot(self) -> int:
            raise ValueError("cannot snapshot")

    async with am.Mesh() as mesh:
        broken = await mesh.spawn(Broken, checkpoint_every=1)
        await broken.deposit.tell(1)
        notice = await asyncio.wait_for(mesh.wait_terminated(broken), 5)
        assert notice.reason == "crash"
        assert notice.error == "ValueError: cannot snapshot"


async def test_an_unnamed_agent_is_not_restored_by_another_run(tmp_path: Path) -> None:
    path = tmp_path / "ids.db"
    async with am.Mesh(node_id="n1", state_store=am.SqliteStateStore(path)) as mesh:
        first = await mesh.spawn(Account)
        await first.deposit(99)
        await first.save()
    async with am.Mesh(node_id="n1", state_store=am.SqliteStateStore(path)) as mesh:
        second = await mesh.spawn(Account)
        assert second.id == first.id  # the same id, in another run
        assert await second.get() == 0


async def test_state_hooks_are_not_messages_and_need_each_other() -> None:
    class NoSnapshot(am.Agent):
        async def noop(self) -> None:
            pass

    async with am.Mesh() as mesh:
        account = await mesh.spawn(Account)
        with pytest.raises(am.UnknownMethod, match="framework"):
            await account.restore(999)
        with pytest.raises(TypeError, match="snapshot"):
            await mesh.spawn(NoSnapshot, checkpoint_every=1)
        assert mesh.state_store is not None

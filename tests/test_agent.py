"""The Agent base class: callable methods, framework attributes, hooks."""

from __future__ import annotations

import asyncio
import functools

import pytest

import agentmesh as am
from agentmesh._private.kernel.agent import method_table

from .agents import Counter
from .conftest import wait_for


def test_method_table_lists_public_async_methods_only() -> None:
    table = method_table(Counter)
    public = {name for name in table.handlers if not name.startswith("!")}
    assert public == {"add", "record", "get", "items", "fail", "divide"}
    assert "!terminated" in table.handlers  # the framework's notice, never a user name
    assert "not async" in str(table.unknown("not_async"))
    assert "no public async method 'nope'" in str(table.unknown("nope"))
    assert "private" in str(table.unknown("_secret"))
    assert "framework" in str(table.unknown("on_start"))


class Introspective(am.Agent):
    def __init__(self, tag: str, *, suffix: str = "") -> None:
        self.seen_in_init = (self.name, self.node, self.ref)
        self.tag = tag + suffix

    async def about(self) -> tuple[str | None, str, am.AgentRef, str]:
        return self.name, self.node, self.ref, self.tag

    async def spawn_child(self) -> am.AgentRef:
        return await self.mesh.spawn(Counter, 5)


async def test_framework_attributes_inside_an_agent(mesh: am.Mesh) -> None:
    ref = await mesh.spawn(functools.partial(Introspective, suffix="!"), "t", name="intro")
    name, node, me, tag = await ref.about()
    assert (name, node, me, tag) == ("intro", mesh.node_id, ref, "t!")
    instance = mesh._node.cells[ref.id].instance
    assert instance.seen_in_init == ("intro", mesh.node_id, ref)  # type: ignore[union-attr]
    child = await ref.spawn_child()
    assert await child.get() == 5


class Hooks(am.Agent):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start")
        await self.ref.hello.tell()  # messages sent from on_start wait for it to finish

    async def hello(self) -> None:
        self.log.append("hello")

    async def on_stop(self) -> None:
        self.log.append("stop")


async def test_hooks_run_first_and_last(mesh: am.Mesh) -> None:
    log: list[str] = []
    ref = await mesh.spawn(Hooks, log)
    assert log[0] == "start"
    await ref.stop()
    assert log == ["start", "hello", "stop"]


class FailingInit(am.Agent):
    def __init__(self) -> None:
        raise RuntimeError("no config")


class FailingStart(am.Agent):
    async def on_start(self) -> None:
        raise KeyError("missing")


async def test_a_failing_constructor_or_on_start_is_a_spawn_error(mesh: am.Mesh) -> None:
    with pytest.raises(am.SpawnError, match="no config") as caught:
        await mesh.spawn(FailingInit, name="x")
    assert caught.value.remote_type == "RuntimeError"
    with pytest.raises(am.SpawnError) as caught2:
        await mesh.spawn(FailingStart, name="x")
    assert caught2.value.remote_type == "KeyError"
    assert isinstance(caught2.value, am.RemoteError)
    # The name was released each time.
    assert await (await mesh.spawn(Counter, name="x")).get() == 0


async def test_an_anonymous_agent_is_a_child_of_the_root_and_a_failed_one_leaves_none(
    mesh: am.Mesh,
) -> None:
    # (an anonymous agent with nothing to await starts without awaiting: this checks
    # that way keeps the supervisor's records as the full way does)
    root = mesh._root_ref
    assert root is not None
    before = [c.ref for c in await root.children()]
    with pytest.raises(am.SpawnError, match="no config"):
        await mesh.spawn(FailingInit)
    assert [c.ref for c in await root.children()] == before
    ref = await mesh.spawn(functools.partial(Counter, start=5))
    *_, child = await root.children()
    assert (child.ref, child.agent_class, child.restart) == (ref, "Counter", "temporary")
    assert await ref.get() == 5
    await ref.stop()
    assert [c.ref for c in await root.children()] == before


async def test_wrong_constructor_arguments_are_a_spawn_error(mesh: am.Mesh) -> None:
    with pytest.raises(am.SpawnError, match="TypeError"):
        await mesh.spawn(Counter, 1, 2, 3)


async def test_on_stop_errors_are_logged_not_raised(
    mesh: am.Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    class BadStop(am.Agent):
        async def on_stop(self) -> None:
            raise RuntimeError("cleanup failed")

    ref = await mesh.spawn(BadStop)
    await ref.stop()
    assert any("on_stop" in r.getMessage() for r in caplog.records)
    assert (await mesh.info(ref)).state == "stopped"


async def test_on_stop_after_a_crash_is_bounded_by_the_shutdown_timeout() -> None:
    class SlowStop(am.Agent):
        async def on_stop(self) -> None:
            await asyncio.sleep(100)

        async def boom(self) -> None:
            raise RuntimeError("boom")

    async with am.Mesh(shutdown_timeout=0.05) as mesh:
        ref = await mesh.spawn(SlowStop, name="slow")
        await ref.boom.tell()
        cell = mesh._node.cells[ref.id]
        await wait_for(lambda: cell.state.value == "crashed", what="crash finished")
        with pytest.raises(am.AgentNotFound):
            await mesh.get("slow")

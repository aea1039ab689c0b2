"""Refs off their mesh's loop: a typed `WrongLoop` that leaves the mesh intact, and
`ask_sync` / `tell_sync`, the blocking calls for other threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import agentmesh as am

from .agents import Counter, Forever
from .conftest import wait_for


def outcome(fn: Callable[[], Any]) -> Any:
    """What ``fn()`` returned, or the exception it raised (for calls made in a thread)."""
    try:
        return fn()
    except BaseException as exc:
        return exc


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread while this loop goes on; its result or exception."""
    return await asyncio.to_thread(outcome, fn)


# -- misuse from another thread or loop ---------------------------------------------


async def test_ask_timeouts_still_work_after_a_thread_misused_a_ref() -> None:
    # The old bug: asyncio.run(ref.m()) in a thread armed the shared ask timer on the
    # thread's loop, which then closed: no default-timeout ask ever expired again.
    async with am.Mesh(ask_timeout=0.3, shutdown_timeout=0.5) as mesh:
        forever = await mesh.spawn(Forever, concurrency=2)
        error = await in_thread(lambda: asyncio.run(forever.ping()))
        assert isinstance(error, am.WrongLoop), error
        assert isinstance(error, RuntimeError)
        assert "ask_sync" in str(error)  # the message names the remedy
        with pytest.raises(am.AskTimeout):
            # wait_for only guards the test: on the old code the ask never expires.
            await asyncio.wait_for(forever.hang(), 5.0)
        assert await forever.ping() == "pong"


async def test_a_thread_misusing_refs_leaves_the_agent_as_it_was(mesh: am.Mesh) -> None:
    counter = await mesh.spawn(Counter)
    cell = mesh._node.cells[counter.id]
    misuses = [
        lambda: counter.add.tell_nowait(1),  # a plain thread: no loop at all
        lambda: asyncio.run(counter.add.tell(1)),  # another loop
        lambda: asyncio.run(counter.add(1)),
        lambda: asyncio.run(counter.add.ask(1, timeout=1.0)),
        lambda: asyncio.run(counter.stop()),
    ]
    for misuse in misuses:
        error = await in_thread(misuse)
        assert isinstance(error, am.WrongLoop), error
    assert "tell_nowait" in str(await in_thread(misuses[0]))
    assert not cell.mailbox
    assert cell.handled == 0
    assert cell.runner is None
    assert await counter.add(1) == 1  # nothing was queued, the agent still serves


async def test_a_thread_started_in_a_handler_is_refused_and_its_tell_still_served(
    mesh: am.Mesh,
) -> None:
    # asyncio.to_thread copies the handler's context into the thread: the check that
    # spares agents the thread test cannot see it, and the runner's check catches it.
    class Spawner(am.Agent):
        async def poke_from_thread(self, target: am.AgentRef) -> Any:
            return await in_thread(lambda: target.add.tell_nowait(1))

    counter = await mesh.spawn(Counter)
    spawner = await mesh.spawn(Spawner)
    error = await spawner.poke_from_thread(counter)
    assert isinstance(error, am.WrongLoop), error

    async def served() -> bool:
        return bool(await counter.get() == 1)

    await wait_for(served, what="the tell queued from the thread is handled")


async def test_a_ref_from_an_ended_mesh_says_so_on_a_new_loop() -> None:
    async with am.Mesh() as mesh:
        counter = await mesh.spawn(Counter)
    error = await in_thread(lambda: asyncio.run(counter.add(1)))
    assert isinstance(error, am.WrongLoop)
    assert "has ended" in str(error)


# -- ask_sync and tell_sync -----------------------------------------------------------


async def test_ask_sync_and_tell_sync_from_threads_keep_each_threads_order(
    mesh: am.Mesh,
) -> None:
    counter = await mesh.spawn(Counter)

    def client(label: str) -> list[Any]:
        for i in range(50):
            if i % 2:
                counter.record.tell_sync((label, i))
            else:
                counter.record.ask_sync((label, i))
        total: list[Any] = counter.items.ask_sync()
        return total

    threads = await asyncio.gather(*(in_thread(lambda n=n: client(f"t{n}")) for n in range(4)))
    seen = await counter.items()
    assert len(seen) == 200
    for n in range(4):
        mine = [i for label, i in seen if label == f"t{n}"]
        assert mine == list(range(50))  # one thread's calls, in the order it made them
        assert isinstance(threads[n], list)


async def test_ask_sync_errors_arrive_typed(mesh: am.Mesh) -> None:
    counter = await mesh.spawn(Counter, 4)
    forever = await mesh.spawn(Forever)
    assert await in_thread(lambda: counter.divide.ask_sync(2)) == 2.0
    error = await in_thread(lambda: counter.fail.ask_sync("boom"))
    assert isinstance(error, am.RemoteError)
    assert error.remote_type == "ValueError"
    assert error.remote_message == "boom"
    error = await in_thread(lambda: forever.hang.ask_sync(timeout=0.2))
    assert isinstance(error, am.AskTimeout)
    assert "hang" in str(error)
    error = await in_thread(lambda: counter.add.ask_sync("x", "y", "z"))
    assert isinstance(error, am.BadArguments)
    await counter.stop()
    error = await in_thread(lambda: counter.add.ask_sync(1))
    assert isinstance(error, am.AgentUnavailable)
    error = await in_thread(lambda: counter.add.tell_sync(1))
    assert isinstance(error, am.AgentUnavailable)


async def test_sync_calls_on_the_loop_thread_raise_instead_of_deadlocking(
    mesh: am.Mesh,
) -> None:
    counter = await mesh.spawn(Counter)
    with pytest.raises(am.WrongLoop, match="deadlock"):
        counter.add.ask_sync(1)
    with pytest.raises(am.WrongLoop, match="deadlock"):
        counter.add.tell_sync(1)
    assert await counter.get() == 0


async def test_sync_calls_after_the_mesh_ended_raise_agent_unavailable() -> None:
    async with am.Mesh() as mesh:
        counter = await mesh.spawn(Counter)
    error = await in_thread(lambda: counter.add.ask_sync(1))
    assert isinstance(error, am.AgentUnavailable)


def test_sync_calls_into_a_mesh_running_in_a_background_thread() -> None:
    # The shape of a web app: the mesh runs in a thread of its own; request handlers
    # (here the test's main thread, which has no loop) call its agents.
    refs: dict[str, am.AgentRef] = {}
    ready = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []

    async def serve() -> None:
        async with am.Mesh() as mesh:
            refs["counter"] = await mesh.spawn(Counter, 10)
            ready.set()
            await asyncio.to_thread(done.wait)

    def run_mesh() -> None:
        try:
            am.run(serve())
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    server = threading.Thread(target=run_mesh)
    server.start()
    try:
        assert ready.wait(10)
        assert not errors
        counter = refs["counter"]
        assert counter.add.ask_sync(5) == 15
        counter.add.tell_sync(1)
        assert counter.get.ask_sync() == 16
        with pytest.raises(am.WrongLoop):
            counter.add.tell_nowait(1)  # async-world calls still refuse this thread
    finally:
        done.set()
        server.join(10)
    assert not server.is_alive()
    assert not errors


async def test_ask_sync_reaches_an_agent_in_another_process(far_head: str) -> None:
    async with am.Mesh(join=far_head, ask_timeout=5.0) as driver:
        head = next(n.id for n in await driver.nodes() if n.role == "head")
        counter = await driver.spawn(Counter, 1, node=head)
        forever = await driver.spawn(Forever, node=head)
        assert counter.node == head
        assert await in_thread(lambda: counter.add.ask_sync(2)) == 3
        await in_thread(lambda: counter.add.tell_sync(3))
        assert await in_thread(lambda: counter.get.ask_sync()) == 6
        error = await in_thread(lambda: counter.fail.ask_sync("far"))
        assert isinstance(error, am.RemoteError)
        assert (error.remote_type, error.remote_message) == ("ValueError", "far")
        error = await in_thread(lambda: forever.hang.ask_sync(timeout=0.3))
        assert isinstance(error, am.AskTimeout)
        error = await in_thread(lambda: counter.add.tell_nowait(1))
        assert isinstance(error, am.WrongLoop)  # a remote ref refuses the thread too
        assert await counter.get() == 6

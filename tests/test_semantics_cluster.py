"""The messaging semantics again, with the agents in another node process.

The `world` fixture runs the whole messaging suite over real gRPC with both nodes in
this process (those tests reach into agent instances); this module checks what can be
seen from outside, against a head that is a separate process on loopback.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

import agentmesh as am

from .agents import CallsBackOnStart, Counter, Forever, Relay
from .conftest import start_daemon

pytestmark = pytest.mark.slow


@pytest.fixture
async def far() -> AsyncIterator[tuple[am.Mesh, str]]:
    """A driver joined to a head in another process; yields (driver, head node id)."""
    daemon = await start_daemon("head", "--listen", "127.0.0.1:0")
    try:
        async with am.Mesh(join=daemon.address, ask_timeout=10, shutdown_timeout=2) as mesh:
            head = next(n.id for n in await mesh.nodes() if n.role == "head")
            yield mesh, head
    finally:
        await daemon.stop()


async def test_order_of_tells_and_asks_from_one_sender(far: tuple[am.Mesh, str]) -> None:
    mesh, head = far
    counter = await mesh.spawn(Counter, node=head)
    for i in range(300):
        if i % 3 == 0:
            await counter.record(i)
        elif i % 3 == 1:
            await counter.record.tell(i)
        else:
            try:
                counter.record.tell_nowait(i)
            except am.MailboxFull:
                await counter.record.tell(i)
    assert await counter.items() == list(range(300))


async def test_errors_come_back_typed(far: tuple[am.Mesh, str]) -> None:
    mesh, head = far
    counter = await mesh.spawn(Counter, 3, node=head, name="calc")
    with pytest.raises(am.RemoteError) as caught:
        await counter.fail("far away")
    assert (caught.value.remote_type, caught.value.remote_message) == ("ValueError", "far away")
    assert "in fail" in caught.value.remote_traceback
    with pytest.raises(am.UnknownMethod):
        await counter.nosuch()
    with pytest.raises(am.BadArguments):
        await counter.add(1, 2, 3)
    with pytest.raises(am.SerializationError):
        await counter.record(threading.Lock())  # cannot travel: refused at the sender
    assert await counter.add(1) == 4  # it carried on


async def test_timeouts_per_call_and_default(far: tuple[am.Mesh, str]) -> None:
    mesh, head = far
    forever = await mesh.spawn(Forever, node=head, concurrency=4)
    with pytest.raises(am.AskTimeout) as caught:
        await forever.hang.ask(timeout=0.2)
    assert isinstance(caught.value, TimeoutError)
    assert await forever.ping() == "pong"


async def test_reentrancy_across_nodes(far: tuple[am.Mesh, str]) -> None:
    mesh, head = far
    near = await mesh.spawn(Relay, node=mesh.node_id)
    remote = await mesh.spawn(Relay, node=head)
    assert await near.ask_back(remote, 6) == 6  # near -> far -> near -> ... no deadlock
    calls_back = await mesh.spawn(CallsBackOnStart, remote, node=mesh.node_id)
    assert await calls_back.result() == "pong"  # on_start asked afar, and was called back


async def test_a_crash_in_a_tell_handler_is_seen_from_afar(far: tuple[am.Mesh, str]) -> None:
    mesh, head = far
    counter = await mesh.spawn(Counter, node=head)
    ended = asyncio.create_task(mesh.wait_terminated(counter))
    await counter.divide.tell(0)
    notice = await asyncio.wait_for(ended, 10)
    assert (notice.reason, notice.error) == ("crash", "ZeroDivisionError: division by zero")
    with pytest.raises(am.AgentUnavailable):
        await counter.get()


async def test_stop_from_afar(far: tuple[am.Mesh, str]) -> None:
    mesh, head = far
    forever = await mesh.spawn(Forever, node=head)
    stuck = asyncio.create_task(forever.hang())
    async with asyncio.timeout(10):
        await forever.stop(timeout=0.2)
    with pytest.raises(am.AgentUnavailable):
        await asyncio.wait_for(stuck, 10)
    with pytest.raises(am.AgentUnavailable):
        await forever.ping()

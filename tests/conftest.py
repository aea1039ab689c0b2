"""Shared fixtures: the `world` fixture runs a test on every transport we have."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import cloudpickle
import pytest

import agentmesh as am
from agentmesh._private.kernel.transport import MemoryNetwork
from agentmesh._private.transport.grpc_transport import GrpcTransport

T = TypeVar("T")

#: A small stream window, so tests see cross-node flow control without filling 1,024.
GRPC_WINDOW = 8


class World:
    """Where a test's agents live, seen from the test (the driver).

    ``local``: the agents share the driver's node. ``memory``: they live on another
    node of an in-process `MemoryNetwork`, so every message is pickled across.
    """

    def __init__(self, kind: str, driver: am.Mesh, host: am.Mesh) -> None:
        self.kind = kind
        self.driver = driver
        self.host = host

    async def spawn(self, cls: Any, *args: Any, **options: Any) -> am.AgentRef:
        ref = await self.host.spawn(cls, *args, **options)
        return self.seen_by_driver(ref)

    def seen_by_driver(self, ref: am.AgentRef) -> am.AgentRef:
        if self.host is self.driver:
            return ref
        with self.driver._node.bind_refs():
            copy: am.AgentRef = cloudpickle.loads(cloudpickle.dumps(ref))
        return copy

    @property
    def in_flight(self) -> int:
        """How many tells the way to the host can hold beyond the host's mailbox."""
        return GRPC_WINDOW if self.kind == "grpc" else 0

    def sender_blocked(self, ref: am.AgentRef) -> bool:
        """Whether a sender waits for room on the way to ``ref``'s agent."""
        if self.kind == "grpc":
            link = self.driver._node.transport.links.get(self.host.node_id)  # type: ignore[union-attr]
            return link is not None and bool(link._room)
        return bool(self.host._node.cells[ref.id].mailbox.putters)

    def instance(self, ref: am.AgentRef) -> Any:
        """The live agent object behind ``ref`` (tests only: to open gates)."""
        return self.host._node.cells[ref.id].instance

    async def info(self, ref: am.AgentRef) -> am.AgentInfo:
        cell = self.host._node.cells.get(ref.id)
        if cell is None:
            with self.host._node.bind_refs():
                ref = cloudpickle.loads(cloudpickle.dumps(ref))
        return await self.host.info(ref)


#: No test may take longer (setup and teardown included): a hang fails the test
#: instead of holding CI until its own limit.
TEST_TIMEOUT = int(os.environ.get("AGENTMESH_TEST_TIMEOUT", "120"))


class TestTimeout(BaseException):
    """Raised into a test that ran past TEST_TIMEOUT (BaseException: nothing swallows it)."""


def _expired(signum: int, frame: Any) -> None:
    raise TestTimeout(f"the test ran past {TEST_TIMEOUT} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["local", "memory", "grpc"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    options = {"ask_timeout": 5.0, "shutdown_timeout": 2.0}
    if request.param == "local":
        async with am.Mesh(**options) as mesh:
            yield World("local", mesh, mesh)
        return
    if request.param == "grpc":
        near, far = GrpcTransport(window=GRPC_WINDOW), GrpcTransport(window=GRPC_WINDOW)
        async with (
            am.Mesh(**options, _transport=near) as driver,
            am.Mesh(**options, _transport=far) as host,
        ):
            near.add_peer(host.node_id, far.address)
            far.add_peer(driver.node_id, near.address)
            yield World("grpc", driver, host)
        return
    network = MemoryNetwork()
    async with (
        am.Mesh(**options, _transport=network.transport()) as driver,
        am.Mesh(**options, _transport=network.transport()) as host,
    ):
        yield World("memory", driver, host)


@pytest.fixture
async def mesh() -> AsyncIterator[am.Mesh]:
    async with am.Mesh(ask_timeout=5.0, shutdown_timeout=2.0) as m:
        yield m


async def recorded(recorder: am.AgentRef, count: int) -> list[Any]:
    """What a `Recorder` agent logged, once it holds at least ``count`` events."""

    async def enough() -> bool:
        return len(await recorder.all()) >= count

    await wait_for(enough, what=f"{count} recorded events")
    events: list[Any] = await recorder.all()
    return events


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = ""
) -> None:
    """Wait until ``condition()`` holds, checking at every loop turn; fail after timeout."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = condition()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"condition never held within {timeout}s: {what}") from None

"""Shared fixtures: the `world` fixture runs a test on every transport we have."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import cloudpickle
import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon
from agentmesh._private.kernel.transport import MemoryNetwork
from agentmesh._private.transport.grpc_transport import DEFAULT_WINDOW, GrpcTransport

from .agents import Probe

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")

#: A small stream window, so tests see cross-node flow control without filling 1,024.
GRPC_WINDOW = 8


class World:
    """Where a test's agents live, seen from the test (the driver).

    ``local``: the agents share the driver's node. ``memory``: they live on another
    node of an in-process `MemoryNetwork`, so every message is pickled across.
    ``grpc``: on another node of this process, over real gRPC on loopback.
    ``process``: on a head in another process (a `Probe` agent there reads and pokes
    them for the test).
    """

    def __init__(
        self,
        kind: str,
        driver: am.Mesh,
        host: am.Mesh | None,
        *,
        far_node: str | None = None,
        probe: am.AgentRef | None = None,
    ) -> None:
        self.kind = kind
        self.driver = driver
        self._host = host
        self.far_node = far_node
        self.probe = probe
        self._seen: dict[str, Any] = {}  # host cells by agent id, kept after they end

    @property
    def host(self) -> am.Mesh:
        """The mesh hosting the agents, when it is in this process."""
        assert self._host is not None, "the agents live in another process"
        return self._host

    async def spawn(self, cls: Any, *args: Any, **options: Any) -> am.AgentRef:
        if self.probe is not None:
            ref = await self.driver.spawn(cls, *args, node=self.far_node, **options)
            await self.probe.track(ref.id)
            return ref
        ref = await self.host.spawn(cls, *args, **options)
        self._seen[ref.id] = self.host._node.cells[ref.id]
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
        if self.kind == "process":
            return DEFAULT_WINDOW
        return GRPC_WINDOW if self.kind == "grpc" else 0

    def sender_blocked(self, ref: am.AgentRef) -> bool:
        """Whether a sender waits for room on the way to ``ref``'s agent."""
        if self.kind in ("grpc", "process"):
            peer = self.far_node if self.probe is not None else self.host.node_id
            link = self.driver._node.transport.links.get(peer)  # type: ignore[union-attr]
            return link is not None and link.held_senders > 0
        return bool(self.host._node.cells[ref.id].mailbox.putters)

    def _cell(self, ref: am.AgentRef) -> Any:
        """The agent's runtime cell on the host, also after it ended."""
        return self.host._node.cells.get(ref.id) or self._seen[ref.id]

    def _instance(self, ref: am.AgentRef) -> Any:
        return self._cell(ref).instance

    async def attr(self, ref: am.AgentRef, name: str) -> Any:
        """An attribute of the live agent object behind ``ref`` (tests only)."""
        if self.probe is not None:
            return await self.probe.attr(ref.id, name)
        return getattr(self._instance(ref), name)

    async def open_gate(self, ref: am.AgentRef) -> None:
        """Let a `Gate` agent's waiting handlers go on."""
        if self.probe is not None:
            await self.probe.open_gate(ref.id)
        else:
            self._instance(ref).gate.set()

    async def cell_value(self, ref: am.AgentRef, name: str) -> Any:
        """A field of the agent's runtime cell (``rejected``, ``state`` ...)."""
        if self.probe is not None:
            return await self.probe.cell_value(ref.id, name)
        value = getattr(self._cell(ref), name)
        return getattr(value, "value", value)

    async def busy(self, ref: am.AgentRef) -> bool:
        if self.probe is not None:
            busy: bool = await self.probe.busy(ref.id)
            return busy
        return bool(self._cell(ref).busy() != [])

    async def asks_given_up(self, ref: am.AgentRef) -> bool:
        """Whether every ask queued in the agent's mailbox has been given up."""
        if self.probe is not None:
            given_up: bool = await self.probe.asks_given_up(ref.id)
            return given_up
        mailbox = self._cell(ref).mailbox
        return all(e.reply.done() for e in mailbox.items or () if e.reply)

    async def dead_letters(self) -> int:
        """Dead letters counted on the hosting node."""
        if self.probe is not None:
            count: int = await self.probe.dead_letters()
            return count
        return self.host.bus_statistics().dead_letters

    async def info(self, ref: am.AgentRef) -> am.AgentInfo:
        if self.probe is not None:
            info: am.AgentInfo = await self.probe.info(ref.id)
            return info
        return await self.host.info(self._cell(ref).ref)  # the host's own ref


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


async def start_daemon(*args: str, netns: str | None = None) -> Daemon:
    """``agentmesh *args`` in a process of its own (inside network namespace ``netns``,
    if given), its stderr kept in ``log``; returns once it has printed its address."""
    wrapper = ("ip", "netns", "exec", netns) if netns is not None else ()
    return await Daemon.start(*args, stderr=asyncio.subprocess.PIPE, wrapper=wrapper, cwd=ROOT)


@pytest.fixture(scope="session")
def far_head() -> Iterator[str]:
    """A head in another process, shared by the session's ``process`` worlds (each
    test joins it with a driver of its own, whose agents stop when it leaves).

    It outlives every test's event loop, so it is started, watched and stopped on a
    loop of its own, in a thread.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="far-head", daemon=True)
    thread.start()

    def run(work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, loop).result(60)

    try:
        head = run(start_daemon("head", "--listen", "127.0.0.1:0"))
        try:
            yield head.address
        finally:
            run(head.stop())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.worlds("memory", ...)``: a test of a behaviour some worlds do not
    have (one that only crossing a wire shows) is not collected in the others."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("worlds")
        world = getattr(item, "callspec", None) and item.callspec.params.get("world")
        if marker is not None and world and world not in marker.args:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=["local", "memory", "grpc", "process"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    options = {"ask_timeout": 5.0, "shutdown_timeout": 2.0}
    if request.param == "local":
        async with am.Mesh(**options) as mesh:
            yield World("local", mesh, mesh)
        return
    if request.param == "process":
        address = request.getfixturevalue("far_head")
        async with am.Mesh(join=address, **options) as driver:
            head = next(n.id for n in await driver.nodes() if n.role == "head")
            probe = await driver.spawn(Probe, node=head)
            yield World("process", driver, None, far_node=head, probe=probe)
        return
    if request.param == "grpc":
        async with open_grpc_pair(window=GRPC_WINDOW, **options) as pair:
            yield World("grpc", pair.driver, pair.host)
        return
    network = MemoryNetwork()
    async with (
        am.Mesh._over(network.transport(), **options) as driver,
        am.Mesh._over(network.transport(), **options) as host,
    ):
        yield World("memory", driver, host)


class GrpcPair(NamedTuple):
    """Two meshes of this process over real gRPC, and their transports."""

    driver: am.Mesh
    host: am.Mesh
    near: GrpcTransport  # the driver's
    far: GrpcTransport  # the host's


@asynccontextmanager
async def open_grpc_pair(
    *,
    window: int = DEFAULT_WINDOW,
    tokens: tuple[str | None, str | None] = (None, None),
    **options: Any,
) -> AsyncIterator[GrpcPair]:
    """A driver and a host, each a mesh of this process with a `GrpcTransport` on
    loopback and each told the other's address (no head: they dial each other).
    ``window`` is both streams' flow-control window, ``tokens`` the driver's and the
    host's cluster tokens; ``options`` go to both meshes."""
    near = GrpcTransport(window=window, token=tokens[0])
    far = GrpcTransport(window=window, token=tokens[1])
    async with (
        am.Mesh._over(near, **options) as driver,
        am.Mesh._over(far, **options) as host,
    ):
        near.add_peer(host.node_id, far.address)
        far.add_peer(driver.node_id, near.address)
        yield GrpcPair(driver, host, near, far)


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


def docs_example(page: str, heading: str = "") -> tuple[str, str]:
    """Run the first ``python`` block of ``docs/<page>`` after ``heading`` as a user
    would; return (what it printed, what the page's "It prints:" block says)."""
    text = (ROOT / "docs" / page).read_text()
    section = text[text.index(heading) :] if heading else text
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    promised = section.split("It prints:\n\n```text\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, promised

"""Cross-node behaviour on the in-memory transport: copies, refs, payload errors."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import cloudpickle
import pytest

import agentmesh as am
from agentmesh._private.kernel.transport import MemoryNetwork

from .agents import Counter, Relay


def seen_from(mesh: am.Mesh, ref: am.AgentRef) -> am.AgentRef:
    """``ref`` as a program on ``mesh``'s node gets it: through a pickle, as on a wire."""
    with mesh._node.bind_refs():
        copy: am.AgentRef = cloudpickle.loads(cloudpickle.dumps(ref))
    return copy


#: Two meshes of this process on one MemoryNetwork: every message pickled across.
MemoryNodes = tuple[am.Mesh, am.Mesh]


@pytest.fixture
async def memory_nodes() -> AsyncIterator[MemoryNodes]:
    network = MemoryNetwork()
    async with (
        am.Mesh._over(network.transport(), ask_timeout=5) as left,
        am.Mesh._over(network.transport(), ask_timeout=5) as right,
    ):
        yield left, right


async def test_agents_on_two_nodes_call_each_other(memory_nodes: MemoryNodes) -> None:
    left, right = memory_nodes
    relay = await left.spawn(Relay)
    counter = seen_from(left, await right.spawn(Counter, 1))
    assert counter.node == right.node_id
    assert await relay.call(counter, "add", 2) == 3  # left's relay asks right's counter
    other = seen_from(left, await right.spawn(Relay))
    assert await relay.ask_back(other, 4) == 4  # reentrant across nodes


async def test_arguments_are_copied_like_on_a_wire(memory_nodes: MemoryNodes) -> None:
    left, right = memory_nodes
    counter = seen_from(left, await right.spawn(Counter))
    relay = await left.spawn(Relay)
    payload = {"k": [1, 2]}
    await relay.call(counter, "record", payload)
    seen = await relay.call(counter, "items")
    assert seen == [payload]
    assert seen[0] is not payload


async def test_unpicklable_arguments_are_a_typed_error(memory_nodes: MemoryNodes) -> None:
    left, right = memory_nodes
    counter = seen_from(left, await right.spawn(Counter))
    relay = await left.spawn(Relay)
    with pytest.raises(am.RemoteError, match="SerializationError"):
        await relay.call(counter, "record", threading.Lock())
    assert await relay.call(counter, "get") == 0  # nothing lost, nobody crashed


async def test_remote_stop_and_errors(memory_nodes: MemoryNodes) -> None:
    left, right = memory_nodes
    counter = seen_from(left, await right.spawn(Counter))
    relay = await left.spawn(Relay)
    with pytest.raises(am.RemoteError) as caught:
        await relay.call(counter, "fail", "remote boom")
    assert "remote boom" in str(caught.value)
    await counter.stop()
    with pytest.raises(am.RemoteError, match="AgentUnavailable"):
        await relay.call(counter, "get")

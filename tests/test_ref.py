"""AgentRef: identity, hashing, ordering, pickling, and no public constructor."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

import agentmesh as am

from .agents import Counter


async def test_refs_compare_and_hash_by_agent(mesh: am.Mesh) -> None:
    a = await mesh.spawn(Counter, name="a")
    b = await mesh.spawn(Counter)
    again = await mesh.get("a")
    assert a == again
    assert hash(a) == hash(again)
    assert a != b
    assert len({a, b, again}) == 2
    assert sorted([b, a]) == sorted([a, b])
    assert a.name == "a"
    assert b.name is None
    assert a.node == mesh.node_id
    assert "a@" in repr(a)


async def test_refs_pickle_and_still_work(mesh: am.Mesh) -> None:
    counter = await mesh.spawn(Counter, 1)
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(counter))
        assert copy == counter
        assert await copy.add(1) > 1


async def test_users_cannot_construct_refs() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        am.AgentRef("x")


async def test_item_access_reaches_methods_the_ref_shadows(mesh: am.Mesh) -> None:
    class Named(am.Agent):
        async def stop(self) -> str:  # a user method the ref's own stop() shadows
            return "user stop"

    named = await mesh.spawn(Named)
    assert await named["stop"]() == "user stop"
    await named.stop()
    with pytest.raises(am.AgentUnavailable):
        await named["stop"]()


async def test_method_refs_are_cached_and_dunder_lookups_fail_normally(mesh: am.Mesh) -> None:
    counter = await mesh.spawn(Counter)
    assert counter.add is counter.add
    assert not hasattr(counter, "__wrapped__")
    with pytest.raises(am.UnknownMethod):
        _ = counter.missing

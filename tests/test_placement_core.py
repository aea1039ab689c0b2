"""Placement decisions on synthetic clusters: no sockets, no agents."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agentmesh as am
from agentmesh._private.kernel.placing import make_request
from agentmesh._private.placement.core import ClusterView, NodeView, choose, choose_gang, explain
from agentmesh._private.placement.scheduler import Scheduler


def _cluster() -> ClusterView:
    return ClusterView(
        [
            NodeView("head", "head", {"cpu": 4}, {"zone": "eu"}),
            NodeView("eu1", "worker", {"cpu": 8, "gpu": 1}, {"zone": "eu", "tier": "gpu"}),
            NodeView("us1", "worker", {"cpu": 8}, {"zone": "us"}),
            NodeView("drv", "driver", {}, {}),
        ]
    )


def _ids(
    view: ClusterView, **selectors: am.In | am.NotIn | am.Exists | am.DoesNotExist | str
) -> set[str]:
    """Every node some placement with these selectors can land on."""
    request = make_request(labels=selectors)
    return {n.id for n in view.candidates(request)}


def test_label_selectors() -> None:
    view = _cluster()
    assert _ids(view, zone="eu") == {"head", "eu1"}
    assert _ids(view, zone=am.In("us", "ap")) == {"us1"}
    assert _ids(view, zone=am.NotIn("eu")) == {"us1"}
    assert _ids(view, tier=am.Exists()) == {"eu1"}
    assert _ids(view, tier=am.DoesNotExist()) == {"head", "us1"}
    assert _ids(view, zone="eu", tier=am.DoesNotExist()) == {"head"}
    assert _ids(view) == {"head", "eu1", "us1"}  # drivers host only when named


def test_bad_requests_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="gpu"):
        make_request({"gpu": -1})
    with pytest.raises(ValueError, match="cpu"):
        make_request({"cpu": float("nan")})
    with pytest.raises(TypeError, match="zone"):
        make_request(labels={"zone": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="strategy"):
        make_request(strategy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="In"):
        am.In()
    with pytest.raises(TypeError, match="Near"):
        am.Near(42)


def _place(view: ClusterView, n: int, **options: object) -> list[str]:
    """Place ``n`` agents one after the other, holding what each takes."""
    scheduler = Scheduler()
    scheduler.view = view
    placed = []
    for _ in range(n):
        ticket = scheduler.try_reserve(make_request(**options))  # type: ignore[arg-type]
        assert ticket is not None
        placed.append(ticket.node)
    return placed


def test_pack_fills_one_node_before_the_next() -> None:
    view = ClusterView([NodeView(f"w{i}", "worker", {"cpu": 2}) for i in range(3)])
    assert _place(view, 5, resources={"cpu": 1}, strategy="pack") == [
        "w0",
        "w0",
        "w1",
        "w1",
        "w2",
    ]


def test_spread_and_balanced_share_the_load() -> None:
    view = ClusterView([NodeView(f"w{i}", "worker", {"cpu": 4}) for i in range(3)])
    placed = _place(view, 6, strategy="spread")
    assert sorted(placed.count(f"w{i}") for i in range(3)) == [2, 2, 2]
    view = ClusterView([NodeView(f"w{i}", "worker", {"cpu": 4}) for i in range(3)])
    view.nodes["w0"].used["cpu"] = 3  # busy already
    placed = _place(view, 4, resources={"cpu": 1})
    assert placed.count("w0") == 0  # the least loaded first: w0 is the hot spot
    assert sorted(placed) == ["w1", "w1", "w2", "w2"]


def test_balanced_keeps_the_head_for_when_workers_are_full() -> None:
    view = ClusterView([NodeView("head", "head", {"cpu": 8}), NodeView("w", "worker", {"cpu": 1})])
    assert _place(view, 2, resources={"cpu": 1}) == ["w", "head"]


def test_node_rules() -> None:
    view = _cluster()
    assert set(_place(view, 3, strategy=am.OnNode("us1"))) == {"us1"}
    assert set(_place(_cluster(), 3, strategy=am.Near("eu1"))) == {"eu1"}
    assert "eu1" not in _place(_cluster(), 6, strategy=am.AwayFrom("eu1"))
    assert _place(_cluster(), 1, strategy=am.OnNode("drv")) == ["drv"]  # named: a driver
    # Soft rules fall back to the default when their node cannot take the agent.
    soft = _place(_cluster(), 1, resources={"gpu": 1}, strategy=am.Near("us1", soft=True))
    assert soft == ["eu1"]
    strict = make_request({"gpu": 1}, strategy=am.Near("us1"))
    assert choose(strict, _cluster()) is None


def test_an_infeasible_request_names_what_each_node_lacks() -> None:
    view = _cluster()
    never, reasons = explain(make_request({"gpu": 2}, {"zone": "eu"}), view)
    assert never
    assert reasons["eu1"] == "gpu 1 in all of 2"
    assert reasons["head"] == "gpu 0 in all of 2"
    assert reasons["us1"] == "label zone = 'eu': zone='us'"
    assert "drv" not in reasons  # a driver hosts only when named: not worth a line
    view.nodes["eu1"].used["gpu"] = 1
    never, reasons = explain(make_request({"gpu": 1}), view)
    assert not never
    assert reasons["eu1"] == "gpu 0 free of 1"


async def test_infeasible_fails_at_once_and_busy_waits_for_room() -> None:
    scheduler = Scheduler(timeout=30)
    scheduler.node_up("a", "worker", {"gpu": 1}, {})
    with pytest.raises(am.PlacementError, match=r"ever host.*\n.*node a \(worker\): gpu 1 in all"):
        await scheduler.reserve(make_request({"gpu": 2}))
    first = await scheduler.reserve(make_request({"gpu": 1}))
    waiting = asyncio.ensure_future(scheduler.reserve(make_request({"gpu": 1})))
    await asyncio.sleep(0)  # let it queue (it cannot be admitted before a release)
    assert len(scheduler.waiting) == 1
    assert not waiting.done()
    scheduler.release(first.key)
    second = await asyncio.wait_for(waiting, 5)
    assert second.node == "a"
    assert scheduler.view.nodes["a"].used["gpu"] == 1
    with pytest.raises(am.PlacementError, match=r"no node had room.*within 0.05s"):
        await scheduler.reserve(make_request({"gpu": 1}), timeout=0.05)
    assert not scheduler.waiting
    assert scheduler.failures  # kept for `agentmesh status`


async def test_a_joining_node_admits_waiting_spawns_in_arrival_order() -> None:
    scheduler = Scheduler()
    scheduler.node_up("a", "worker", {"cpu": 1}, {})
    await scheduler.reserve(make_request({"cpu": 1}))
    order: list[str] = []

    async def spawn(tag: str) -> None:
        ticket = await scheduler.reserve(make_request({"cpu": 1}))
        order.append(f"{tag}@{ticket.node}")

    tasks = [asyncio.ensure_future(spawn(tag)) for tag in ("first", "second")]
    await asyncio.sleep(0)
    assert len(scheduler.waiting) == 2
    scheduler.node_up("b", "worker", {"cpu": 1}, {})
    await asyncio.wait_for(tasks[0], 5)
    assert order == ["first@b"]
    assert len(scheduler.waiting) == 1
    scheduler.node_up("c", "worker", {"cpu": 1}, {})
    await asyncio.gather(*tasks)
    assert order == ["first@b", "second@c"]


async def test_a_waiting_spawn_fails_at_once_when_its_only_node_leaves() -> None:
    scheduler = Scheduler()
    scheduler.node_up("a", "worker", {"gpu": 1}, {})
    await scheduler.reserve(make_request({"gpu": 1}))
    waiting = asyncio.ensure_future(scheduler.reserve(make_request({"gpu": 1})))
    await asyncio.sleep(0)
    scheduler.node_down("a")
    with pytest.raises(am.PlacementError, match="ever host"):
        await asyncio.wait_for(waiting, 5)
    assert not scheduler.held  # the node's reservations went with it


def test_gangs() -> None:
    view = ClusterView([NodeView(f"w{i}", "worker", {"cpu": 4}) for i in range(3)])
    two = [make_request({"cpu": 2}), make_request({"cpu": 2})]
    packed = choose_gang(two, "strict_pack", view)
    assert packed is not None
    assert len({n.id for n in packed}) == 1
    spread = choose_gang([*two, make_request({"cpu": 1})], "strict_spread", view)
    assert spread is not None
    assert len({n.id for n in spread}) == 3
    assert choose_gang([*two, *two], "strict_spread", view) is None  # 4 members, 3 nodes
    assert choose_gang([make_request({"cpu": 5})], "pack", view) is None
    assert not any(n.used for n in view.nodes.values())  # deciding holds nothing


async def test_a_gang_is_reserved_all_or_nothing() -> None:
    scheduler = Scheduler()
    for i in range(2):
        scheduler.node_up(f"w{i}", "worker", {"cpu": 2}, {})
    with pytest.raises(am.PlacementError, match="gang of 3"):
        await scheduler.reserve_gang([make_request({"cpu": 1})] * 3, "strict_spread")
    assert not scheduler.held
    tickets = await scheduler.reserve_gang([make_request({"cpu": 1})] * 2, "strict_spread")
    assert {t.node for t in tickets} == {"w0", "w1"}
    # Fits the cluster, not its free capacity: waits, and gets none of it meanwhile.
    with pytest.raises(am.PlacementError, match=r"within 0\.05s"):
        await scheduler.reserve_gang([make_request({"cpu": 2})] * 2, "spread", timeout=0.05)
    assert len(scheduler.held) == 2
    for ticket in tickets:
        scheduler.release(ticket.key)
    assert all(not any(n.used.values()) for n in scheduler.view.nodes.values())


def test_a_large_cluster_decides_by_sampling_and_respects_every_rule() -> None:
    rng = random.Random(7)
    nodes = [
        NodeView(f"n{i}", "worker", {"cpu": 16, "gpu": rng.choice([0, 0, 1])}, {"zone": z})
        for i, z in enumerate(rng.choice(["eu", "us", "ap"]) for _ in range(1000))
    ]
    view = ClusterView(nodes)
    request = make_request({"gpu": 1}, {"zone": am.In("eu")})
    for _ in range(200):
        node = choose(request, view)
        if node is None:
            break
        assert node.labels["zone"] == "eu"
        assert node.free("gpu") >= 1
        node.used["gpu"] = 1
    assert choose(request, view) is None  # every eu gpu node taken, none overcommitted
    assert explain(request, view)[0] is False


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reserve", "reserve", "gang", "release"]),
            st.integers(0, 3),
            st.integers(1, 4),
        ),
        max_size=60,
    )
)
def test_no_node_is_ever_overcommitted(ops: list[tuple[str, int, int]]) -> None:
    async def run() -> None:
        scheduler = Scheduler(timeout=0.01)
        for i in range(3):
            scheduler.node_up(f"w{i}", "worker", {"cpu": 4, "mem": 8}, {})
        held: list[str] = []
        pending: list[asyncio.Future[object]] = []

        async def reserve(amount: int, gang: bool) -> None:
            request = make_request({"cpu": amount, "mem": amount})
            try:
                if gang:
                    tickets = await scheduler.reserve_gang([request] * 2, "spread", 0.01)
                    held.extend(t.key for t in tickets)
                else:
                    held.append((await scheduler.reserve(request)).key)
            except am.PlacementError:
                pass

        for op, index, amount in ops:
            if op == "release" and held:
                scheduler.release(held.pop(index % len(held)))
            elif op != "release":
                pending.append(asyncio.ensure_future(reserve(amount, op == "gang")))
            await asyncio.sleep(0)
            for node in scheduler.view.nodes.values():
                for key, total in node.total.items():
                    assert node.used.get(key, 0.0) <= total + 1e-9
        await asyncio.gather(*pending)
        expected: dict[str, float] = {}
        for node_id, amounts in scheduler.held.values():
            for key, amount in amounts:
                expected[f"{node_id}.{key}"] = expected.get(f"{node_id}.{key}", 0) + amount
        for node in scheduler.view.nodes.values():
            for key in node.total:
                assert node.used.get(key, 0.0) == pytest.approx(
                    expected.get(f"{node.id}.{key}", 0.0)
                )

    asyncio.run(run())


async def test_a_new_head_adopts_the_reservations_nodes_report() -> None:
    scheduler = Scheduler()
    held = {"old.1": (("gpu", 1.0),), "old.2": (("cpu", 2.0),)}
    scheduler.node_up("a", "worker", {"gpu": 1, "cpu": 4}, {}, held)
    assert scheduler.view.nodes["a"].used == {"gpu": 1.0, "cpu": 2.0}
    scheduler.node_up("a", "worker", {"gpu": 1, "cpu": 4}, {}, held)  # registered again
    assert scheduler.view.nodes["a"].used == {"gpu": 1.0, "cpu": 2.0}  # not twice
    with pytest.raises(am.PlacementError, match="gpu 0 free of 1"):
        await scheduler.reserve(make_request({"gpu": 1}), timeout=0)
    scheduler.release("old.1")  # the agent that held it ends: released as usual
    assert (await scheduler.reserve(make_request({"gpu": 1}))).node == "a"

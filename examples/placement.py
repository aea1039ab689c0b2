"""Placement: a planner on the GPU node, tools near their data, a team spread out.

One process plays a whole cluster on loopback: a head, a GPU worker in zone eu and a
CPU worker in zone us (in real life: ``agentmesh head`` / ``agentmesh node`` on other
machines), and a driver that spawns agents with resources, label selectors,
strategies and a gang. Run: ``python examples/placement.py``.
"""

from __future__ import annotations

import asyncio

import agentmesh as am


class Planner(am.Agent):
    async def plan(self, goal: str) -> list[str]:
        return [f"{goal}: step {i}" for i in range(1, 4)]


class Tool(am.Agent):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def run(self, step: str) -> str:
        return f"{self.kind} did {step!r}"


async def main() -> None:
    async with (
        am.Mesh(listen="127.0.0.1:0", resources={"cpu": 2}) as head,
        am.Mesh(
            join=str(head.address),
            resources={"cpu": 8, "gpu": 1},
            labels={"zone": "eu", "accelerator": "a100"},
            role="worker",
        ) as eu,
        am.Mesh(
            join=str(head.address), resources={"cpu": 8}, labels={"zone": "us"}, role="worker"
        ) as us,
        am.Mesh(join=str(head.address)) as driver,
    ):
        where = {head.node_id: "head", eu.node_id: "eu-gpu", us.node_id: "us-cpu"}

        # Resources and label selectors: the planner needs the GPU.
        planner = await driver.spawn(
            Planner, resources={"gpu": 1}, labels={"accelerator": am.Exists()}
        )
        print("planner on", where[planner.node])
        # A tool next to the planner, another kept away from it.
        near = await driver.spawn(Tool, "search", strategy=am.Near(planner))
        away = await driver.spawn(Tool, "browser", strategy=am.AwayFrom(planner))
        print("search tool on", where[near.node], "| browser tool on", where[away.node])

        # No node could ever host this: it fails at once, saying what each node lacks.
        try:
            await driver.spawn(Tool, "trainer", resources={"gpu": 2})
        except am.PlacementError as exc:
            print("PlacementError:", str(exc).splitlines()[0])
            lines = str(exc).splitlines()[1:]
            for node_id, name in where.items():
                lines = [line.replace(node_id, name) for line in lines]
            for line in sorted(lines):
                print("  ", line.strip())

        # The GPU is taken: a second GPU spawn waits for it, and gets it when freed.
        waiting = asyncio.ensure_future(driver.spawn(Planner, resources={"gpu": 1}))
        queued = 0
        while not queued:  # until its request is in the head's queue
            queued, _ = await driver.placement_report()
        print("second planner waiting:", not waiting.done(), "| spawns queued at the head:", queued)
        await planner.stop()
        second = await waiting
        print("second planner on", where[second.node], "after the first stopped")

        # A gang: three reviewers on three distinct nodes, all placed or none.
        team = await driver.spawn_gang(
            [am.ChildSpec(Tool, f"reviewer{i}", resources={"cpu": 1}) for i in range(3)],
            strategy="strict_spread",
        )
        print("reviewers on", sorted(where[ref.node] for ref in team))
        print(await team[0].run((await second.plan("ship it"))[0]))

        used = {where[n.id]: n.used for n in await driver.nodes() if n.id in where}
        print("reserved:", dict(sorted(used.items())))


if __name__ == "__main__":
    am.run(main())

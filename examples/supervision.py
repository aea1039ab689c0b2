"""Supervision: a tree of workers that survives a poisoned job without losing work.

The tree, started by one spawn:

    root      Supervisor, one_for_one
      audit   Auditor: counts every finished job
      team    Supervisor, rest_for_one
        w1, w2, w3   Workers, checkpointing after every job (checkpoint_every=1)

The driver deals jobs round-robin to the workers with tells. Job 5 is poisoned: w2's
handler raises, so w2 crashes. Its supervisor, ``team`` (rest_for_one), stops w3 (the
child started after w2), then restarts w2 and w3 in start order. Each new instance is
restored from its last checkpoint, the poisoned job is not redelivered, and the jobs
still queued in the mailboxes go to the new instances, so every other job is counted
exactly once. The refs the driver holds keep working. Then it prints the tree from
``await sup.children()``: each child's state, restart count and last error.

    python examples/supervision.py --jobs 30
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import agentmesh as am

POISONED = 5  # dealt to w2, the second of three workers
WORKERS = ("w1", "w2", "w3")


@dataclass(frozen=True)
class Job:
    id: int
    size: int


class Auditor(am.Agent):
    """Counts finished jobs, independently of the workers' own state."""

    def __init__(self) -> None:
        self.finished: set[int] = set()

    async def finished_job(self, job_id: int) -> None:
        self.finished.add(job_id)

    async def count(self) -> int:
        return len(self.finished)


class Worker(am.Agent):
    """Adds up job sizes; its totals survive restarts through snapshot/restore."""

    def __init__(self) -> None:
        self.jobs = 0
        self.total = 0

    def snapshot(self) -> tuple[int, int]:
        return self.jobs, self.total

    def restore(self, state: tuple[int, int]) -> None:
        self.jobs, self.total = state
        print(f"{self.name} restarted; restored from its checkpoint: jobs={self.jobs}")

    async def process(self, job: Job) -> None:  # a tell handler: raising crashes the agent
        if job.id == POISONED:
            raise ValueError(f"job {job.id} is poisoned")
        self.jobs += 1
        self.total += job.size
        audit = await self.mesh.get("audit")
        await audit.finished_job.tell(job.id)

    async def totals(self) -> tuple[int, int]:
        return self.jobs, self.total


def tree_spec() -> am.SupervisorSpec:
    team = am.SupervisorSpec(
        strategy="rest_for_one",
        intensity=3,
        period=5.0,
        children=[am.ChildSpec(Worker, name=n, checkpoint_every=1) for n in WORKERS],
    )
    return am.SupervisorSpec(
        strategy="one_for_one",
        children=[
            am.ChildSpec(Auditor, name="audit"),
            am.ChildSpec(am.Supervisor, team, name="team"),
        ],
    )


def show(children: list[am.ChildInfo], indent: str) -> None:
    for child in children:
        error = f"  last error: {child.last_error}" if child.last_error else ""
        print(
            f"{indent}{child.name:<6} {child.agent_class:<11} {child.restart:<10} "
            f"{child.state:<8} restarts={child.restarts}{error}"
        )


async def main(jobs: int) -> None:
    async with am.Mesh() as mesh:
        root = await mesh.spawn(am.Supervisor, tree_spec(), name="root")
        workers = [await mesh.get(n) for n in WORKERS]
        for i in range(1, jobs + 1):
            await workers[(i - 1) % len(workers)].process.tell(Job(i, size=i))

        # Each ask queues behind that worker's jobs, so it answers once they are done.
        done = [await w.totals() for w in workers]
        team = await mesh.get("team")
        team_children = await team.children()  # queued behind team's restart: all running
        audited = await (await mesh.get("audit")).count()

        expected = jobs * (jobs + 1) // 2 - POISONED
        total = sum(t for _, t in done)
        count = sum(n for n, _ in done)
        same_refs = workers == [await mesh.get(n) for n in WORKERS]
        print(f"jobs: {jobs} sent, 1 poisoned, {count} done")
        print(f"total: {total} (expected {expected}) {'ok' if total == expected else 'WRONG'}")
        print(f"audit: {audited} jobs finished {'ok' if audited == count == jobs - 1 else 'WRONG'}")
        print(f"refs unchanged after the restarts: {same_refs}")
        print("tree:")
        print("  root   Supervisor  one_for_one")
        for child in await root.children():
            show([child], "    ")
            if child.name == "team":
                show(team_children, "      ")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help=f"jobs to deal (>= {POISONED})")
    options = parser.parse_args()
    if options.jobs < POISONED:
        parser.error(f"--jobs must be at least {POISONED}, so that job {POISONED} is dealt")
    # The supervisor logs each restart (WARNING); the crash itself is also in the tree
    # below (last error), so keep the agent's traceback out of the way.
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s: %(message)s")
    logging.getLogger("agentmesh.agent").setLevel(logging.CRITICAL)
    am.run(main(options.jobs))

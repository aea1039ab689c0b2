"""Fault figures: what membership changes cost, counted on real processes.

    python -m benchmarks.faults [--restarts 3] [--pauses 3]

- **head restart**: a head and two workers; an agent on one worker asks a counter on
  the other without pause while the head is SIGKILLed and started again at the same
  address, ``--restarts`` times. Reports asks that failed (target 0) and supervised
  agents restarted or stopped by mistake (target 0).
- **pause**: a worker hosting a supervised agent is SIGSTOPped past ``dead_after``
  (its agent is restarted on the other worker), then SIGCONTed. Reports, after it
  rejoined, how many instances of the agent are live (target 1) and whether the old
  ref still answers (target: no).

Counts, not timings: they say whether the semantics hold, run after run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import agentmesh as am

DEAD_AFTER = "1.5"
FAST = ("--heartbeat", "0.25")


class Counter(am.Agent):
    def __init__(self) -> None:
        self.value = 0

    async def add(self, n: int) -> int:
        self.value += n
        return self.value


class Pinger(am.Agent):
    """Asks its target over and over from a task of its own, counting outcomes."""

    def __init__(self, target: am.AgentRef) -> None:
        self.target = target
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.target.add.ask(1, timeout=30)
                self.ok += 1
            except am.AgentmeshError as exc:
                self.failed += 1
                error = f"{type(exc).__name__}: {exc}"
                self.errors[error] = self.errors.get(error, 0) + 1
            await asyncio.sleep(0.001)

    async def on_stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def report(self) -> tuple[int, int]:
        return self.ok, self.failed

    async def errors_seen(self) -> dict[str, int]:
        return self.errors


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    address: str

    @classmethod
    async def start(cls, *args: str) -> Daemon:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmesh", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        return cls(process, line.decode().strip())

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            await self.process.wait()


async def head_at(address: str) -> Daemon:
    return await Daemon.start("head", "--listen", address, "--dead-after", DEAD_AFTER, *FAST)


async def until(check: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if await check():  # type: ignore[operator]
                    return
            except am.AgentmeshError:
                pass
            await asyncio.sleep(0.05)  # polling the cluster's view


@contextlib.asynccontextmanager
async def three_nodes() -> AsyncIterator[tuple[list[Daemon], list[Daemon]]]:
    """([head], [worker, worker]), each its own process; all stopped on the way out
    (the head in a list: a restart replaces it)."""
    heads = [await head_at("127.0.0.1:0")]
    workers: list[Daemon] = []
    try:
        for _ in range(2):
            workers.append(await Daemon.start("node", "--join", heads[0].address, *FAST))
        yield heads, workers
    finally:
        for daemon in (*workers, *heads):
            await daemon.stop()


async def node_ids(mesh: am.Mesh, daemons: list[Daemon]) -> list[str]:
    by_address = {n.address: n.id for n in await mesh.nodes()}
    return [by_address[d.address] for d in daemons]


async def head_restarts(restarts: int) -> None:
    async with (
        three_nodes() as (heads, workers),
        am.Mesh(join=heads[0].address, ask_timeout=20) as mesh,
    ):
        n1, n2 = await node_ids(mesh, workers)
        spec = am.SupervisorSpec(children=[am.ChildSpec(Counter, name="target", node=n2)])
        sup = await mesh.spawn(am.Supervisor, spec, node=mesh.node_id)
        target = await mesh.get("target")
        pinger = await mesh.spawn(Pinger, target, node=n1, detached=True)

        async def started() -> bool:  # n1 has found n2 (through the first head)
            return bool((await pinger.report())[0] > 100)

        await until(started)
        for _ in range(restarts):
            heads[0].process.kill()
            await heads[0].process.wait()
            heads[0] = await head_at(heads[0].address)

            async def registered() -> bool:
                return len([n for n in await mesh.nodes() if n.alive]) == 4

            await until(registered)
            ok, _ = await pinger.report()

            async def flowing(base: int = ok) -> bool:
                return bool((await pinger.report())[0] > base + 500)

            with contextlib.suppress(TimeoutError):  # report what happened anyway
                await until(flowing)
        ok, failed = await pinger.report()
        for error, times in (await pinger.errors_seen()).items():
            print(f"  {times} x {error}")
        [child] = await sup.children()
        print(
            f"head restart x{restarts}: {ok} asks between the workers, {failed} failed "
            f"(target 0); supervised agent {child.state}, restarts={child.restarts} "
            "(target: running, 0)"
        )


async def pauses(count: int) -> None:
    outcomes = [await pause_once() for _ in range(count)]
    print(
        f"pause past dead_after x{count}: live instances after the heal "
        f"{[live for live, _ in outcomes]} (target 1 each); the old ref answered "
        f"{sum(answered for _, answered in outcomes)} time(s) (target 0)"
    )


async def pause_once() -> tuple[int, bool]:
    """(live instances of the agent once the paused node is back, old ref answered)."""
    async with (
        three_nodes() as (heads, workers),
        am.Mesh(join=heads[0].address, ask_timeout=5) as mesh,
    ):
        n1, n2 = await node_ids(mesh, workers)
        spec = am.SupervisorSpec(children=[am.ChildSpec(Counter, name="c", node=n1)])
        await mesh.spawn(am.Supervisor, spec, node=mesh.node_id)
        old = await mesh.get("c")
        workers[0].process.send_signal(signal.SIGSTOP)

        async def moved() -> bool:
            return (await mesh.get("c")).node == n2

        await until(moved)
        workers[0].process.send_signal(signal.SIGCONT)

        async def back() -> bool:
            probe = await mesh.spawn(Counter, node=n1)  # reachable again?
            await probe.add(0)
            return True

        await until(back)
        try:
            await old.add(0)
            answered = True
        except am.AgentmeshError:
            answered = False

        # Counts come with heartbeats: once n1 counts the probe, the count is
        # from after it rejoined (so after any fence).
        async def reported() -> bool:
            nodes = {n.id: n.agents for n in await mesh.nodes()}
            return nodes[n1] >= 1 and nodes[n2] >= 1

        await until(reported)
        nodes = {n.id: n.agents for n in await mesh.nodes()}
        return nodes[n1] - 1 + nodes[n2], answered


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--pauses", type=int, default=3)
    args = parser.parse_args()
    await head_restarts(args.restarts)
    await pauses(args.pauses)


if __name__ == "__main__":
    am.run(main())

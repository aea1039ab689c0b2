"""A rolling update: a worker gets SIGTERM (as Kubernetes sends) and hands its
supervised agent over to another worker before it leaves.

    python examples/rolling_update.py

Starts a head in this process and two worker daemons, supervises a counter on the
first worker, drains that worker, and shows the counter running on the second,
restarted once, its ref found again by name.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import agentmesh as am


class Counter(am.Agent):
    def __init__(self, start: int) -> None:
        self.value = start

    async def add(self, n: int) -> int:
        self.value += n
        return self.value


async def start_worker(head: str) -> tuple[asyncio.subprocess.Process, str]:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh", "node", "--join", head, stdout=asyncio.subprocess.PIPE
    )
    assert worker.stdout is not None
    address = (await worker.stdout.readline()).decode().strip()  # its first line
    return worker, address


async def find_on(mesh: am.Mesh, name: str, node: str) -> am.AgentRef:
    """The agent registered as ``name`` once it runs on ``node`` (its supervisor is
    starting it there; meanwhile the name may be free or still the old instance's)."""
    while True:
        try:
            ref = await mesh.get(name)
            if ref.node == node:
                return ref
        except am.AgentNotFound:
            pass
        await asyncio.sleep(0.05)


async def main() -> None:
    async with am.Mesh(listen="127.0.0.1:0") as head:
        assert head.address is not None
        workers = [await start_worker(head.address) for _ in range(2)]
        try:
            ids = {n.address: n.id for n in await head.nodes()}
            (old, old_address), (_, new_address) = workers
            first, second = ids[old_address], ids[new_address]
            spec = am.SupervisorSpec(children=[am.ChildSpec(Counter, 10, name="c", node=first)])
            sup = await head.spawn(am.Supervisor, spec, name="tree")
            counter = await head.get("c")
            print("on the first worker:", counter.node == first, await counter.add(1))

            old.send_signal(signal.SIGTERM)  # drain: hand over, then leave
            print("the first worker exited with", await old.wait())
            moved = await find_on(head, "c", second)
            print("on the second worker:", moved.node == second, await moved.add(1))
            [child] = await sup.children()
            print("state:", child.state, "restarts:", child.restarts)
            try:
                await counter.add(1)
            except am.AgentUnavailable:
                print("the old ref: AgentUnavailable")
            await sup.stop()  # before the second worker goes too
        finally:
            for worker, _ in workers:
                if worker.returncode is None:
                    worker.terminate()
                await worker.wait()


if __name__ == "__main__":
    am.run(main())

"""Idle memory per agent, measured in a fresh process (python -m benchmarks.memory N)."""

from __future__ import annotations

import gc
import json
import sys

import agentmesh as am

from .local import Idle


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize()


async def _measure(n: int) -> dict[str, float]:
    async with am.Mesh() as mesh:
        await mesh.spawn(Idle, -1)  # warm up the class tables and the loop
        gc.collect()
        before = _rss_bytes()
        refs = [await mesh.spawn(Idle, i) for i in range(n)]
        assert await refs[-1].poke() == n - 1
        gc.collect()
        after = _rss_bytes()
        tasks = len(mesh._node.cells)
    return {"agents": n, "bytes_per_agent": (after - before) / n, "live": tasks}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(json.dumps(am.run(_measure(n))))


if __name__ == "__main__":
    main()

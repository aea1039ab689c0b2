"""Instructions per unit of work, counted by valgrind: a measure this machine's noise
does not move (wall-clock ratios here move by up to 0.4 between two runs).

``python -m benchmarks.instructions [WORKLOAD ...]`` runs each workload under
``valgrind --tool=callgrind`` at two sizes, in fresh processes, and prints the
difference in instructions divided by the difference in units: imports, start-up and
teardown cancel out. Each process leaves with ``os._exit`` once its work is done, so
that shutting the mesh down is not counted either. Needs ``valgrind`` on the PATH.
A run takes about a minute per workload (valgrind is ~50x slower than the code).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import agentmesh as am

from . import local, raw, savina
from . import sim as simulation


async def _fork_join(n: int) -> None:
    # As savina.fork_join, without stopping the agents at the end (not counted).
    mesh = am.Mesh()
    await mesh.__aenter__()
    refs = [await mesh.spawn(savina.Leaf) for _ in range(n)]
    assert sum(await asyncio.gather(*(ref.answer() for ref in refs))) == n


async def _spawn(n: int) -> None:
    mesh = am.Mesh()
    await mesh.__aenter__()
    for _ in range(n):
        await mesh.spawn(savina.Leaf)


async def _ignore(work: Awaitable[object]) -> None:
    await work


#: name: (what one unit is, the two sizes, the work for a size)
WORKLOADS: dict[str, tuple[str, tuple[int, int], Callable[[int], Coroutine[Any, Any, None]]]] = {
    "forkjoin": ("agent spawned and asked", (5_000, 10_000), _fork_join),
    "spawn": ("agent spawned", (5_000, 10_000), _spawn),
    "forkjoin-raw": (
        "task created and asked",
        (5_000, 10_000),
        lambda n: _ignore(raw.task_fork_join(n)),
    ),
    "big": ("message of Big (100 agents)", (100, 300), lambda n: _ignore(savina.big(100, n))),
    "big-raw": ("message of raw Big", (100, 300), lambda n: _ignore(raw.queue_big(100, n))),
    "tell": ("local tell", (50_000, 100_000), lambda n: _ignore(local.tell_throughput(n))),
    "ask": ("sequential local ask", (2_000, 4_000), lambda n: _ignore(local.ask_latencies(n))),
    "ring": ("thread ring hop", (50_000, 100_000), lambda n: _ignore(savina.thread_ring(100, n))),
    "sim-each": (
        "agent-step, one policy agent per agent (2,000 agents)",
        (20, 40),
        lambda n: _ignore(simulation.runner(2_000, n, 1)),
    ),
    "sim-each-raw": (
        "agent-step of the plain loop (2,000 agents)",
        (20, 40),
        lambda n: _ignore(simulation.plain_loop(2_000, n, 1)),
    ),
}
UNITS_PER_SIZE = {"big": 200, "big-raw": 200, "sim-each": 2_000, "sim-each-raw": 2_000}


def _run_one(name: str, size: int) -> None:
    """The child process: one workload at one size, then leave at once."""
    work = WORKLOADS[name][2]
    am.run(work(size))
    sys.stdout.flush()
    os._exit(0)


def _count(name: str, size: int) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        name,
        str(size),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : ([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run of {name} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description="Instructions per unit of work (valgrind).")
    parser.add_argument("workloads", nargs="*", help=f"some of: {', '.join(WORKLOADS)}")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _run_one(args.child[0], int(args.child[1]))
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    for name in args.workloads or list(WORKLOADS):
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
        unit, (small, large), _ = WORKLOADS[name]
        per = UNITS_PER_SIZE.get(name, 1)
        diff = _count(name, large) - _count(name, small)
        print(f"{name:14s} {diff / ((large - small) * per):>12,.0f} instructions per {unit}")


if __name__ == "__main__":
    main()

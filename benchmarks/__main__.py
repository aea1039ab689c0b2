"""Run the benchmark suite: ``python -m benchmarks [--scale S] [--repeat R]``.

Each workload runs alternately with its raw limit, ``--repeat`` times, and the medians
are compared: the ratio is what to read. Results go to stdout as a table and to
``benchmarks/results/<timestamp>.jsonl``, one JSON object per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import agentmesh as am

from . import local, placement, raw, ray_compare, remote, remote_fanout, savina
from . import sim as simulation

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    system: str
    workload: str
    size: int
    seconds: float
    rate: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    peak_rss_mb: float | None = None
    limit: str | None = None
    ratio: float | None = None
    target: str | None = None


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Run = Callable[[], Coroutine[Any, Any, Any]]
#: A Ray equivalent to run beside a workload: its name and its measurement.
Rival = tuple[str, Run] | None


def _alternate(repeat: int, *runs: Run) -> list[list[Any]]:
    """Run the measurements alternately so all see the same machine noise."""
    results: list[list[Any]] = [[] for _ in runs]
    for _ in range(repeat):
        for run, out in zip(runs, results, strict=True):
            out.append(am.run(run()))
    return results


def throughput(
    workload: str,
    limit_name: str,
    units: int,
    mine: Callable[[], Coroutine[Any, Any, float]],
    limit: Callable[[], Coroutine[Any, Any, float]],
    repeat: int,
    target: str | None = None,
    ray: Rival = None,
) -> list[Figure]:
    """A throughput workload beside its raw limit: ``units`` (messages, hops,
    deliveries) over the median seconds of each, and the ratio of the rates. With
    ``ray``, its Ray equivalent runs in the same alternation, against the same limit."""
    runs = _alternate(repeat, mine, limit, *([ray[1]] if ray else []))
    mine_s, limit_s = statistics.median(runs[0]), statistics.median(runs[1])
    rival = []
    if ray:
        ray_s = statistics.median(runs[2])
        rival = [
            Figure(
                "ray", ray[0], units, ray_s, units / ray_s, limit=limit_name, ratio=limit_s / ray_s
            )
        ]
    return [
        Figure("raw", limit_name, units, limit_s, units / limit_s),
        Figure(
            "agentmesh",
            workload,
            units,
            mine_s,
            units / mine_s,
            peak_rss_mb=_peak_mb(),
            limit=limit_name,
            ratio=limit_s / mine_s,
            target=target,
        ),
        *rival,
    ]


def speedup(
    workload: str,
    units: int,
    mine: Callable[[], Coroutine[Any, Any, float]],
    other_name: str,
    other_units: int,
    other: Callable[[], Coroutine[Any, Any, float]],
    repeat: int,
    target: str | None = None,
) -> list[Figure]:
    """A workload beside another way of doing the same work in the same run, each at
    its own size (the other way may be too slow for the full size): their rates per
    unit, and the ratio of ``mine``'s rate to the other's (how many times faster)."""
    runs = _alternate(repeat, mine, other)
    mine_s, other_s = statistics.median(runs[0]), statistics.median(runs[1])
    mine_rate, other_rate = units / mine_s, other_units / other_s
    return [
        Figure("agentmesh", other_name, other_units, other_s, other_rate),
        Figure(
            "agentmesh",
            workload,
            units,
            mine_s,
            mine_rate,
            peak_rss_mb=_peak_mb(),
            limit=other_name,
            ratio=mine_rate / other_rate,
            target=target,
        ),
    ]


def ask_latency(
    size: int,
    repeat: int,
    mine: Callable[[], Coroutine[Any, Any, list[float]]],
    limit: Callable[[], Coroutine[Any, Any, list[float]]],
    workload: str,
    limit_name: str,
    target: str,
    ray: Rival = None,
) -> list[Figure]:
    """Sequential round trips beside their raw limit; the ratio compares the p50s."""
    runs = _alternate(repeat, mine, limit, *([ray[1]] if ray else []))
    mine_runs, limit_runs = runs[0], runs[1]
    # Medians over repeats of each run's p50 / p99.
    p50 = statistics.median(_percentile(s, 0.50) for s in mine_runs)
    p99 = statistics.median(_percentile(s, 0.99) for s in mine_runs)
    raw50 = statistics.median(_percentile(s, 0.50) for s in limit_runs)
    raw99 = statistics.median(_percentile(s, 0.99) for s in limit_runs)
    mine_s = statistics.median(sum(s) for s in mine_runs)
    rival = []
    if ray:
        ray50 = statistics.median(_percentile(s, 0.50) for s in runs[2])
        ray_s = statistics.median(sum(s) for s in runs[2])
        rival = [
            Figure(
                "ray",
                ray[0],
                size,
                ray_s,
                size / ray_s,
                p50_us=ray50 * 1e6,
                p99_us=statistics.median(_percentile(s, 0.99) for s in runs[2]) * 1e6,
                limit=limit_name,
                ratio=ray50 / raw50,
            )
        ]
    return [
        Figure(
            "raw",
            limit_name,
            size,
            statistics.median(sum(s) for s in limit_runs),
            p50_us=raw50 * 1e6,
            p99_us=raw99 * 1e6,
        ),
        Figure(
            "agentmesh",
            workload,
            size,
            mine_s,
            size / mine_s,
            p50_us=p50 * 1e6,
            p99_us=p99 * 1e6,
            peak_rss_mb=_peak_mb(),
            limit=limit_name,
            ratio=p50 / raw50,
            target=target,
        ),
        *rival,
    ]


def idle_memory(size: int) -> list[Figure]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", str(size)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    elapsed = time.perf_counter() - start
    data = json.loads(out.strip().splitlines()[-1])
    per_agent = data["bytes_per_agent"]
    return [
        Figure(
            "agentmesh",
            "idle memory per agent (bytes, RSS)",
            size,
            elapsed,
            rate=per_agent,
            limit="1,500 bytes",
            ratio=per_agent / 1500,
            target="<= 1.0 (at most 1.5 KB per agent)",
        )
    ]


def _row(f: Figure) -> str:
    if f.p50_us is not None:
        value = f"p50 {f.p50_us:8.1f} us  p99 {f.p99_us:8.1f} us"
    elif "memory" in f.workload:
        value = f"{f.rate:10.0f} B/agent"
    else:
        value = f"{f.rate:12,.0f} /s"
    if f.ratio is None:
        ratio = ""
    else:  # two significant digits for the tiny ratios of some Ray rows
        ratio = f"{f.ratio:6.2f}" if f.ratio >= 0.1 else f"{f.ratio:6.2g}"
    return f"{f.system:9} {f.workload:44} {f.size:>9,} {value:36} {ratio:>6}  {f.target or ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size")
    parser.add_argument("--repeat", type=int, default=5, help="alternations per workload")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument(
        "--ray", action="store_true", help="also run Ray equivalents (needs agentmesh[ray])"
    )
    args = parser.parse_args()
    scale = args.scale
    r = args.repeat

    def n(size: int) -> int:
        return max(1, int(size * scale))

    mailbox = am.DEFAULT_MAILBOX_SIZE
    workloads: dict[str, Callable[[], list[Figure]]] = {
        "tell": lambda: throughput(
            "tell throughput (Savina Counting)",
            "asyncio.Queue producer/consumer",
            n(200_000),
            lambda: local.tell_throughput(n(200_000)),
            lambda: raw.queue_throughput(n(200_000), mailbox),
            r,
            ">= 0.50 of the raw rate",
        ),
        "ask": lambda: ask_latency(
            n(5_000),
            r,
            lambda: local.ask_latencies(n(5_000)),
            lambda: raw.queue_round_trips(n(5_000)),
            "ask latency (sequential)",
            "asyncio.Queue round trip",
            "p50 <= 3x the raw round trip",
        ),
        "askmany": lambda: throughput(
            "asks with 1,000 outstanding",
            "queue requests, 1,000 in flight",
            n(20_000),
            lambda: local.ask_throughput(n(20_000), 1000),
            lambda: raw.queue_requests(n(20_000), 1000),
            r,
        ),
        "pingpong": lambda: throughput(
            "ping-pong round trips (Savina PingPong)",
            "two tasks, two asyncio.Queues",
            n(20_000),
            lambda: savina.ping_pong(n(20_000)),
            lambda: raw.queue_ping_pong(n(20_000)),
            r,
        ),
        "ring": lambda: throughput(
            "thread ring hops, 100 agents",
            "100 tasks in a ring of asyncio.Queues",
            n(100_000),
            lambda: savina.thread_ring(100, n(100_000)),
            lambda: raw.queue_ring(100, n(100_000)),
            r,
        ),
        "forkjoin": lambda: throughput(
            "fork-join: create and ask agents",
            "create tasks, one request each",
            n(10_000),
            lambda: savina.fork_join(n(10_000)),
            lambda: raw.task_fork_join(n(10_000)),
            r,
        ),
        "big": lambda: throughput(
            "Big: 100 agents ping random peers",
            "100 tasks with asyncio.Queues",
            100 * n(500) * 2,
            lambda: savina.big(100, n(500)),
            lambda: raw.queue_big(100, n(500)),
            r,
        ),
        "fanout": lambda: throughput(
            "pub/sub fan-out to 100 agents",
            "asyncio.Queue fan-out to 100",
            100 * n(2_000),
            lambda: local.fan_out(100, n(2_000)),
            lambda: raw.queue_fan_out(100, n(2_000), mailbox),
            r,
            ">= 0.40 of the raw rate",
        ),
        "memory": lambda: idle_memory(n(100_000)),
        "sim": lambda: throughput(
            "sim lockstep, 10,000 agents, 100 per policy",
            "plain loop over the same policies",
            n(10_000) * 100,
            lambda: simulation.runner(n(10_000), 100, 100),
            lambda: simulation.plain_loop(n(10_000), 100, 100),
            r,
            ">= 0.50 (overhead under 2x the loop)",
        ),
        "sim-each": lambda: throughput(
            "sim lockstep, 10,000 agents, 1 per policy",
            "plain loop over the same policies",
            n(10_000) * 100,
            lambda: simulation.runner(n(10_000), 100, 1),
            lambda: simulation.plain_loop(n(10_000), 100, 1),
            r,
        ),
        "sim-each-remote": lambda: throughput(
            "sim lockstep, 10,000 agents, 1 per policy, 2 node procs",
            "plain loop over the same policies",
            n(10_000) * 100,
            lambda: simulation.runner(n(10_000), 100, 1, nodes=2),
            lambda: simulation.plain_loop(n(10_000), 100, 1),
            r,
            ">= 0.30 (one policy agent per agent, on 2 node processes)",
        ),
        "sim-remote": lambda: throughput(
            "sim lockstep, 10,000 agents, 2 node procs",
            "plain loop over the same policies",
            n(10_000) * 100,
            lambda: simulation.runner(n(10_000), 100, 100, nodes=2),
            lambda: simulation.plain_loop(n(10_000), 100, 100),
            r,
        ),
        "remote-ask": lambda: ask_latency(
            n(2_000),
            r,
            lambda: remote.ask_latencies(n(2_000)),
            lambda: remote.raw_unary_latencies(n(2_000)),
            "ask latency, two node processes",
            "grpc.aio unary round trip",
            "p50 <= 1x a raw unary round trip",
        ),
        "remote-tell": lambda: throughput(
            "tell throughput, two node processes",
            "grpc.aio bidi stream, 100 per write",
            n(50_000),
            lambda: remote.tell_throughput(n(50_000)),
            lambda: remote.raw_stream_seconds(n(50_000), 100),
            r,
            ">= 0.50 of the raw batched stream",
        ),
        "remote-streaming": lambda: throughput(
            "streamed items, two node processes (window 256)",
            "grpc.aio bidi stream, 100 per write",
            n(50_000),
            lambda: remote.stream_throughput(n(50_000), 256),
            lambda: remote.raw_stream_seconds(n(50_000), 100),
            r,
        ),
        "remote-streaming-w16": lambda: throughput(
            "streamed items, two node processes (window 16)",
            "grpc.aio bidi stream, 100 per write",
            n(50_000),
            lambda: remote.stream_throughput(n(50_000), 16),
            lambda: remote.raw_stream_seconds(n(50_000), 100),
            r,
        ),
        "remote-tell-rr": lambda: throughput(
            "tells round-robin to 1,000 agents on a 2nd node",
            "tells to one agent on the 2nd node (remote-tell)",
            n(100_000),
            lambda: remote.tell_round_robin(n(100_000), 1000),
            lambda: remote.tell_throughput(n(100_000)),
            r,
            ">= 0.50 of the rate to one agent",
        ),
        "remote-stream1": lambda: throughput(
            "tell throughput, two node processes",
            "grpc.aio bidi stream, 1 per write",
            n(20_000),
            lambda: remote.tell_throughput(n(20_000)),
            lambda: remote.raw_stream_seconds(n(20_000), 1),
            r,
        ),
        "remote-pingpong": lambda: throughput(
            "ping-pong round trips, two node processes",
            "grpc.aio bidi stream, one message each way",
            n(5_000),
            lambda: remote.ping_pong(n(5_000)),
            lambda: remote.raw_stream_ping_pong(n(5_000)),
            r,
        ),
        "remote-askmany": lambda: throughput(
            "asks with 1,000 outstanding, two nodes",
            "grpc.aio unary, 1,000 outstanding",
            n(20_000),
            lambda: remote.ask_throughput(n(20_000), 1000),
            lambda: remote.raw_unary_throughput(n(20_000), 1000),
            r,
        ),
        "remote-fanout": lambda: throughput(
            "pub/sub fan-out to 100 agents on a 2nd node",
            "grpc.aio stream, 100/write, + queue fan-out",
            100 * n(2_000),
            lambda: remote_fanout.fan_out(100, n(2_000)),
            lambda: remote_fanout.raw_fan_out(100, n(2_000), 100, mailbox),
            r,
        ),
        "placement": lambda: throughput(
            "placement decisions, 1,000 nodes",
            "scan every node, first fit",
            n(50_000),
            lambda: _sync(placement.decisions, 1_000, n(50_000)),
            lambda: _sync(placement.naive_decisions, 1_000, n(50_000)),
            r,
            "rate >= 20,000/s",
        ),
        "spawn-cluster": lambda: throughput(
            "spawns with resources, 3-node cluster",
            "grpc.aio unary round trip",
            n(1_000),
            lambda: placement.spawn_rate(n(1_000)),
            lambda: placement.raw_round_trips(n(1_000)),
            r,
        ),
        "spawn-many": lambda: speedup(
            "spawn_many with resources, 3-node cluster",
            n(10_000),
            lambda: placement.spawn_many_rate(n(10_000)),
            "one spawn at a time, the same cluster",
            n(1_000),
            lambda: placement.spawn_rate(n(1_000)),
            r,
            ">= 10x one spawn at a time",
        ),
    }
    if args.ray:
        if ray_compare.available():
            workloads.update(_ray_workloads(n, r, mailbox))
        else:
            print("--ray: Ray is not installed (pip install 'agentmesh[ray]'); skipping it")
    loop = "uvloop" if "uvloop" in sys.modules or _has_uvloop() else "asyncio"
    print(f"agentmesh {am.__version__} on {platform.node()}: Python {platform.python_version()}, ")
    print(f"{loop}, {platform.machine()}, scale {scale}, {args.repeat} alternations, medians")
    print(f"{'system':9} {'workload':44} {'size':>9} {'figure':36} {'ratio':>6}  target")
    figures: list[Figure] = []
    for name, run in workloads.items():
        if args.only and args.only not in name:
            continue
        for figure in run():
            figures.append(figure)
            print(_row(figure), flush=True)
    ray_compare.stop()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("%Y%m%d-%H%M%S.jsonl")
    with path.open("w") as out:
        for figure in figures:
            out.write(json.dumps(asdict(figure)) + "\n")
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def _ray_workloads(
    n: Callable[[int], int], r: int, mailbox: int
) -> dict[str, Callable[[], list[Figure]]]:
    """Ray equivalents, each beside agentmesh and the raw limit at the same (smaller)
    size: a Ray actor is a process of its own, so the limits are the cross-process
    ones, and the agentmesh rows run the agents in a second node process (fork-join
    excepted, which has no cross-node form and runs embedded)."""
    rc = ray_compare
    return {
        "ray-ask": lambda: ask_latency(
            n(1_000),
            r,
            lambda: remote.ask_latencies(n(1_000)),
            lambda: remote.raw_unary_latencies(n(1_000)),
            "ask latency, two node processes",
            "grpc.aio unary round trip",
            "",
            ray=(
                "ask latency, ray.get(actor.m.remote())",
                lambda: _sync(rc.ask_latencies, n(1_000)),
            ),
        ),
        "ray-askmany": lambda: throughput(
            "asks with 1,000 outstanding, two nodes",
            "grpc.aio unary, 1,000 outstanding",
            n(5_000),
            lambda: remote.ask_throughput(n(5_000), 1000),
            lambda: remote.raw_unary_throughput(n(5_000), 1000),
            r,
            ray=(
                "calls with 1,000 outstanding (ray.wait)",
                lambda: _sync(rc.ask_throughput, n(5_000), 1000),
            ),
        ),
        "ray-tell": lambda: throughput(
            "tell throughput, two node processes",
            "grpc.aio bidi stream, 100 per write",
            n(5_000),
            lambda: remote.tell_throughput(n(5_000)),
            lambda: remote.raw_stream_seconds(n(5_000), 100),
            r,
            ray=(
                "fire-and-forget .remote(), one final get",
                lambda: _sync(rc.tell_throughput, n(5_000)),
            ),
        ),
        "ray-pingpong": lambda: throughput(
            "ping-pong round trips, two node processes",
            "grpc.aio bidi stream, one message each way",
            n(1_000),
            lambda: remote.ping_pong(n(1_000)),
            lambda: remote.raw_stream_ping_pong(n(1_000)),
            r,
            ray=("ping-pong round trips, two async actors", lambda: _sync(rc.ping_pong, n(1_000))),
        ),
        "ray-forkjoin": lambda: throughput(
            "fork-join: create and ask agents",
            "create tasks, one request each",
            n(10),
            lambda: savina.fork_join(n(10)),
            lambda: raw.task_fork_join(n(10)),
            r,
            ray=("fork-join: create and call actors", lambda: _sync(rc.fork_join, n(10))),
        ),
        "ray-fanout": lambda: throughput(
            "pub/sub fan-out to 10 agents on a 2nd node",
            "grpc.aio stream, 100/write, + queue fan-out",
            10 * n(200),
            lambda: remote_fanout.fan_out(10, n(200)),
            lambda: remote_fanout.raw_fan_out(10, n(200), 100, mailbox),
            r,
            ray=("fan-out: a call per actor, 10 actors", lambda: _sync(rc.fan_out, 10, n(200))),
        ),
    }


async def _sync(work: Callable[..., Any], *args: int) -> Any:
    return work(*args)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()

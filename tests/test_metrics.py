"""Metrics for Prometheus: what a node serves at ``/metrics``, scraped over real HTTP.

The counts are checked against what the test sent; the labels carry the node and the
agent class, never an agent's id. A real head and worker run as processes in the
slow test; the others run a mesh in this process.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

import agentmesh as am
from agentmesh._private.daemon import Daemon
from agentmesh._private.kernel.timing import TurnTimer
from agentmesh._private.metrics.prometheus import METRICS

from .conftest import ROOT, start_daemon, wait_for
from .metrics_agents import Flooder, Holder, Napper, Sink, Worker
from .test_cli import _mesh_options

#: The labels a metric of agentmesh may carry (``le``: a histogram bucket's bound).
LABELS = {"node", "agent_class", "peer", "le"}


@dataclass
class Scrape:
    """The samples of one scrape, by name and labels."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample ``name`` whose labels include ``labels``."""
        found = [
            value
            for (sample, have), value in self.samples.items()
            if sample == name and set(labels.items()) <= have
        ]
        assert len(found) == 1, f"{len(found)} samples {name}{labels}"
        return found[0]

    def has(self, name: str) -> bool:
        return any(sample == name for sample, _ in self.samples)

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets (bound, count), in order of the bound."""
        return sorted(
            (float(dict(have)["le"]), value)
            for (sample, have), value in self.samples.items()
            if sample == f"{name}_bucket" and set(labels.items()) <= have
        )

    def check_labels(self, node: str, never: set[str]) -> None:
        """Every agentmesh sample is labelled by node (``node``) and the like, and no
        label holds any of ``never`` (agents' ids)."""
        ours = [(s, dict(have)) for s, have in self.samples if s.startswith("agentmesh_")]
        assert ours
        for sample, labels in ours:
            assert set(labels) <= LABELS, (sample, labels)
            assert labels["node"] == node, (sample, labels)
            assert not set(labels.values()) & never, (sample, labels)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return str(response.read().decode())


async def scrape(url: str) -> Scrape:
    """GET ``url`` (off the loop: the node answers on it) and parse the exposition."""
    text = await asyncio.to_thread(_get, url)
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples)


async def test_an_embedded_mesh_serves_its_metrics() -> None:
    async with am.Mesh(metrics_port=0) as mesh:
        url = mesh.metrics_url
        assert url is not None
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/metrics")
        assert not url.endswith(":0/metrics")
        node = mesh.node_id
        worker = await mesh.spawn(Worker, restart="permanent")
        asks, tells = 40, 25
        for i in range(asks):
            assert await worker.work(i) == i
        for i in range(tells):
            await worker.note.tell(i)
        await worker.boom.tell()  # crashes it; its supervisor restarts it
        await worker.note.tell(1, 2, 3)  # bad arguments: refused, a dead letter
        assert await worker.count() == 0  # the new instance, after the restart
        gone = await mesh.spawn(Worker)
        for i in range(5):
            await gone.work(i)
        await gone.stop()  # an ended agent's messages still count

        holder = await mesh.spawn(Holder)
        entered, gate = asyncio.Event(), asyncio.Event()
        await holder.hold.tell(entered, gate)
        await entered.wait()
        for i in range(7):
            await holder.note.tell(i)
        try:
            seen = await scrape(url)
        finally:
            gate.set()
        assert await holder.done()

    w = {"node": node, "agent_class": "Worker"}
    assert seen.value("agentmesh_messages_in_total", **w) == asks + tells + 2 + 5
    assert seen.value("agentmesh_messages_rejected_total", **w) == 1
    assert seen.value("agentmesh_agent_crashes_total", **w) == 1
    assert seen.value("agentmesh_agent_restarts_total", **w) == 1
    assert seen.value("agentmesh_agents", **w) == 1  # the stopped one is gone
    assert seen.value("agentmesh_dead_letters_total", node=node) == 1
    h = {"node": node, "agent_class": "Holder"}
    assert seen.value("agentmesh_mailbox_depth", **h) == 7
    assert seen.value("agentmesh_mailbox_depth_max", **h) == 7
    assert seen.value("agentmesh_messages_in_total", **h) == 1  # hold, still running
    assert seen.value("agentmesh_placement_waiting", node=node) == 0
    # Turns are sampled (about one in 16, never more than 31 apart): 40 asks in a row
    # are 40 slices, so some were timed.
    count = seen.value("agentmesh_turn_duration_seconds_count", **w)
    assert 1 <= count <= asks + tells + 2 + 5
    buckets = seen.buckets("agentmesh_turn_duration_seconds", **w)
    assert buckets[-1] == (float("inf"), count)
    assert [c for _, c in buckets] == sorted(c for _, c in buckets)  # cumulative
    assert seen.value("agentmesh_turn_duration_seconds_sum", **w) > 0
    seen.check_labels(node, {worker.id, gone.id, holder.id})
    assert seen.has("process_cpu_seconds_total")  # the process's own, beside ours


async def test_a_turn_timer_that_samples_every_turn_counts_them_all() -> None:
    mesh = am.Mesh()
    timer = TurnTimer(every=1)
    mesh._node.turn_timer = timer  # what metrics_port sets, sampling every turn
    async with mesh:
        worker = await mesh.spawn(Worker)
        for i in range(10):
            await worker.work(i)  # a slice of one turn each, none suspends
        for i in range(40):
            await worker.note.tell(i)  # queued together: slices of many turns
        await worker.count()
        serial = await mesh.spawn(Napper)
        for _ in range(5):
            await serial.nap()  # suspends: timed until the slice ends
        concurrent = await mesh.spawn(Napper, concurrency=4)
        await asyncio.gather(*(concurrent.nap() for _ in range(6)))  # a task per turn
        # A round of asks as the simulation makes them: turns run from one batch.
        idle = [await mesh.spawn(Worker) for _ in range(70)]
        loop = asyncio.get_running_loop()
        answers = mesh._node.ask_each(idle, "work", list(range(70)), loop.time() + 10)
        await answers.wait(loop.time() + 10)
        assert answers.left == 0
    assert sum(timer.by_class["Worker"].counts) == 10 + 40 + 1 + 70
    assert sum(timer.by_class["Napper"].counts) == 5 + 6
    assert timer.by_class["Napper"].total > 0


def test_without_a_metrics_port_nothing_is_loaded_or_set() -> None:
    script = textwrap.dedent(
        """
        import sys
        import agentmesh as am

        async def main():
            async with am.Mesh() as mesh:
                ref = await mesh.spawn(am.Agent)
                assert mesh.metrics_url is None
                assert mesh._node.turn_timer is None
                assert mesh._node.ended_hooks == []
                await ref.stop()
            loaded = [m for m in sys.modules if "prometheus" in m or "metrics.prom" in m]
            assert not loaded, loaded
            print("clean")

        am.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


@pytest.mark.parametrize("port", [-1, 65536, True, "9100", 1.5])
def test_a_bad_metrics_port_is_refused(port: object) -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        am.Mesh(metrics_port=port)  # type: ignore[arg-type]


async def test_a_taken_metrics_port_fails_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mesh = am.Mesh(metrics_port=taken.getsockname()[1])
        with pytest.raises(OSError):
            await mesh.__aenter__()
        assert mesh._node.closed  # nothing left running


def test_the_daemons_take_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in (("head",), ("node", "--join", "127.0.0.1:7470")):
        assert _mesh_options(monkeypatch, *argv)["metrics_port"] is None
        assert _mesh_options(monkeypatch, *argv, "--metrics-port", "0")["metrics_port"] == 0
    with pytest.raises(SystemExit) as exited:
        _mesh_options(monkeypatch, "head", "--metrics-port", "70000")
    assert exited.value.code == 2


def test_the_docs_list_every_metric() -> None:
    docs = (ROOT / "docs" / "observability.md").read_text()
    for name, kind, labels in METRICS:
        row = f"| `{name}` | {kind} | {', '.join(f'`{label}`' for label in labels)} |"
        assert row in docs, row


async def _metrics_line(daemon: Daemon) -> str:
    """The daemon's second line of output: ``metrics URL``."""
    assert daemon.process.stdout is not None
    line = await asyncio.wait_for(daemon.process.stdout.readline(), 30)
    said, _, url = line.decode().strip().partition(" ")
    assert said == "metrics", line
    assert url.startswith("http://127.0.0.1:"), line
    return url


@dataclass
class Cluster:
    head: Daemon
    worker: Daemon
    head_url: str
    worker_url: str


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    head = await start_daemon("head", "--listen", "127.0.0.1:0", "--metrics-port", "0")
    worker = None
    try:
        head_url = await _metrics_line(head)
        worker = await start_daemon(
            "node", "--join", head.address, "--resources", "slot=1", "--metrics-port", "0"
        )
        yield Cluster(head, worker, head_url, await _metrics_line(worker))
    finally:
        if worker is not None:
            await worker.stop()
        await head.stop()


@pytest.mark.slow
async def test_node_processes_serve_their_metrics(cluster: Cluster) -> None:
    async with am.Mesh(join=cluster.head.address, ask_timeout=30) as mesh:
        nodes = await mesh.nodes()
        head = next(n.id for n in nodes if n.role == "head")
        node = next(n.id for n in nodes if n.role == "worker")

        # Messages in, a crash and its restart, dead letters: on the worker.
        worker = await mesh.spawn(Worker, node=node, restart="permanent")
        asks, tells = 30, 20
        for i in range(asks):
            assert await worker.work(i) == i
        for i in range(tells):
            await worker.note.tell(i)
        await worker.boom.tell()
        await worker.note.tell(1, 2, 3)  # bad arguments
        await worker.unknown.tell()  # no such method
        assert await worker.count() == 0  # restarted

        # Messages out and stream credit: one turn on the worker tells more than the
        # stream's window (4,096) to an agent on the head, so it waits for credit.
        sink = await mesh.spawn(Sink, node=head)
        flooder = await mesh.spawn(Flooder, node=node)
        flood = 4_200
        assert await flooder.flood(sink, flood) == flood

        async def sink_took_all() -> bool:
            seen = await scrape(cluster.head_url)
            taken = seen.value("agentmesh_messages_in_total", node=head, agent_class="Sink")
            return taken == flood

        await wait_for(sink_took_all, 30, "the sink's messages counted on the head")
        on_worker = await scrape(cluster.worker_url)

        # The placement queue, on the head: the worker has one slot.
        first = await mesh.spawn(Worker, resources={"slot": 1}, placement_timeout=60)
        second = asyncio.ensure_future(
            mesh.spawn(Worker, resources={"slot": 1}, placement_timeout=60)
        )
        try:

            async def waiting(count: int) -> bool:
                seen = await scrape(cluster.head_url)
                return seen.value("agentmesh_placement_waiting", node=head) == count

            await wait_for(lambda: waiting(1), 30, "one spawn waiting for room")
            with pytest.raises(am.PlacementError):
                await mesh.spawn(Worker, resources={"slot": 2})  # never fits
            await first.stop()
            await wait_for(lambda: waiting(0), 30, "the waiting spawn placed")
            placed = await second
        finally:
            second.cancel()
        on_head = await scrape(cluster.head_url)

    w = {"node": node, "agent_class": "Worker"}
    assert on_worker.value("agentmesh_messages_in_total", **w) == asks + tells + 2
    assert on_worker.value("agentmesh_messages_rejected_total", **w) == 2
    assert on_worker.value("agentmesh_agent_crashes_total", **w) == 1
    assert on_worker.value("agentmesh_agent_restarts_total", **w) == 1
    assert on_worker.value("agentmesh_agents", **w) == 1
    assert on_worker.value("agentmesh_dead_letters_total", node=node) == 2
    assert on_worker.value("agentmesh_messages_in_total", node=node, agent_class="Flooder") == 1
    out = {"node": node, "peer": head}
    assert on_worker.value("agentmesh_messages_out_total", **out) == flood
    assert on_worker.value("agentmesh_stream_frames_sent_total", **out) >= 1
    assert on_worker.value("agentmesh_stream_credit_waits_total", **out) >= 1
    assert on_worker.value("agentmesh_stream_credit_wait_seconds_total", **out) > 0
    assert on_worker.value("agentmesh_stream_senders_waiting", **out) == 0
    assert not on_worker.has("agentmesh_placement_waiting")  # the head holds the queue
    on_worker.check_labels(node, {worker.id, flooder.id, sink.id})

    s = {"node": head, "agent_class": "Sink"}
    assert on_head.value("agentmesh_messages_in_total", **s) == flood
    assert on_head.value("agentmesh_agents", **s) == 1
    assert on_head.value("agentmesh_turn_duration_seconds_count", **s) >= 1
    assert on_head.value("agentmesh_placement_waiting", node=head) == 0
    assert on_head.value("agentmesh_placement_failures_total", node=head) == 1
    on_head.check_labels(head, {sink.id, first.id, placed.id})


def test_the_docs_example_prints_what_the_docs_say() -> None:
    docs = (ROOT / "docs" / "observability.md").read_text()
    section = docs[docs.index("## Metrics") :]
    program = section.split("```python\n", 1)[1].split("```", 1)[0]
    promised = section.split("```text\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == promised

"""Prometheus exposition of one node's metrics: a collector and its HTTP server.

The one module that imports prometheus_client, and only a mesh with metrics on imports
it. The server is prometheus_client's own (a thread); a scrape asks the node's event
loop for a `Snapshot` and waits for it there, so the node's state is only ever read
on its loop, and the text is built in the server's thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ..kernel.timing import BUCKETS, SAMPLE_EVERY
from .snapshot import ClassStats, NodeMetrics, Snapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["METRICS", "MetricsServer", "NodeCollector", "families"]

log = logging.getLogger("agentmesh.metrics")

#: Seconds a scrape waits for the node's loop to read its metrics.
SCRAPE_TIMEOUT = 10.0

_CLASS = ("node", "agent_class")
_PEER = ("node", "peer")
_NODE = ("node",)

#: Every metric: (name, type, labels, help, how to read it from a `Snapshot`). Counters
#: are named without ``_total``, which the exposition adds.
_ByClass = Callable[[ClassStats], float]
_CLASS_METRICS: tuple[tuple[str, str, str, _ByClass], ...] = (
    ("agentmesh_agents", "gauge", "Live agents.", lambda c: c.agents),
    (
        "agentmesh_messages_in",
        "counter",
        "Messages whose handler ran (asks, tells, topic messages, framework notices).",
        lambda c: c.handled,
    ),
    (
        "agentmesh_messages_rejected",
        "counter",
        "Messages refused before their handler ran: unknown method or bad arguments.",
        lambda c: c.rejected,
    ),
    (
        "agentmesh_mailbox_depth",
        "gauge",
        "Messages queued in the mailboxes of the class's agents, in all.",
        lambda c: c.mailbox_depth,
    ),
    (
        "agentmesh_mailbox_depth_max",
        "gauge",
        "Messages queued in the fullest mailbox of the class's agents.",
        lambda c: c.mailbox_depth_max,
    ),
    ("agentmesh_agent_crashes", "counter", "Crashes of agents.", lambda c: c.crashes),
    (
        "agentmesh_agent_restarts",
        "counter",
        "Restarts of agents by their supervisors.",
        lambda c: c.restarts,
    ),
)
_TURNS = (
    "agentmesh_turn_duration_seconds",
    "Duration of agents' turns (a handler's run, awaits included), sampled: about one "
    f"turn in {SAMPLE_EVERY} is timed, so _count is a sample, not every turn.",
)
_ByPeer = Callable[[Snapshot, str], float]
_PEER_METRICS: tuple[tuple[str, str, str, _ByPeer], ...] = (
    (
        "agentmesh_messages_out",
        "counter",
        "Messages (asks and tells to agents) sent to agents on the peer node.",
        lambda s, p: s.peers[p].envelopes_sent,
    ),
    (
        "agentmesh_stream_frames_sent",
        "counter",
        "Frames written on streams to the peer node (messages_out over this: the batching).",
        lambda s, p: s.peers[p].frames_sent,
    ),
    (
        "agentmesh_stream_credit_waits",
        "counter",
        "Times a send to the peer node waited for flow-control credit (the stream's "
        "window, or its agent's).",
        lambda s, p: s.peers[p].credit_waits,
    ),
    (
        "agentmesh_stream_credit_wait_seconds",
        "counter",
        "Seconds sends to the peer node spent waiting for flow-control credit.",
        lambda s, p: s.peers[p].credit_wait_seconds,
    ),
    (
        "agentmesh_stream_senders_waiting",
        "gauge",
        "Sends to the peer node waiting for flow-control credit now.",
        lambda s, p: s.peers[p].senders_waiting,
    ),
)
_ByNode = Callable[[Snapshot], float | None]
_NODE_METRICS: tuple[tuple[str, str, str, _ByNode], ...] = (
    (
        "agentmesh_dead_letters",
        "counter",
        "Messages nobody could handle, published on agentmesh.dead_letters.",
        lambda s: s.dead_letters,
    ),
    ("agentmesh_published", "counter", "Topic messages published here.", lambda s: s.published),
    (
        "agentmesh_topic_deliveries",
        "counter",
        "Topic messages delivered to subscribers here.",
        lambda s: s.deliveries,
    ),
    (
        "agentmesh_stream_parked",
        "gauge",
        "Messages from other nodes waiting for room in full mailboxes here.",
        lambda s: s.parked,
    ),
    (
        "agentmesh_stream_refused",
        "counter",
        "Handshakes and frames from other nodes refused.",
        lambda s: s.refused,
    ),
    (
        "agentmesh_placement_waiting",
        "gauge",
        "Spawns waiting for room in the cluster (on the head, or an embedded mesh).",
        lambda s: s.placement_waiting,
    ),
    (
        "agentmesh_placement_failures",
        "counter",
        "Spawns that found no node (on the head, or an embedded mesh).",
        lambda s: s.placement_failed,
    ),
)

#: Every metric's name, as exposed, its type and labels (the docs list them all).
METRICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    *((n + ("_total" if t == "counter" else ""), t, _CLASS) for n, t, _, _ in _CLASS_METRICS),
    (_TURNS[0], "histogram", _CLASS),
    *((n + ("_total" if t == "counter" else ""), t, _PEER) for n, t, _, _ in _PEER_METRICS),
    *((n + ("_total" if t == "counter" else ""), t, _NODE) for n, t, _, _ in _NODE_METRICS),
)

_BOUNDS = [repr(float(bound)) for bound in BUCKETS]


def _family(
    name: str, kind: str, doc: str, labels: tuple[str, ...]
) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The Prometheus metric families of ``snapshot``."""
    node = snapshot.node
    classes = sorted(snapshot.classes.items())
    for name, kind, doc, read in _CLASS_METRICS:
        family = _family(name, kind, doc, _CLASS)
        for cls_name, stats in classes:
            family.add_metric([node, cls_name], read(stats))
        yield family
    turns = HistogramMetricFamily(_TURNS[0], _TURNS[1], labels=_CLASS)
    for cls_name, histogram in sorted(snapshot.turns.items()):
        buckets: list[tuple[str, float]] = []
        seen = 0
        for bound, count in zip(_BOUNDS, histogram.counts, strict=False):
            seen += count
            buckets.append((bound, seen))
        buckets.append(("+Inf", seen + histogram.counts[-1]))
        turns.add_metric([node, cls_name], buckets, histogram.total)
    yield turns
    peers = sorted(snapshot.peers)
    for name, kind, doc, read_peer in _PEER_METRICS:
        family = _family(name, kind, doc, _PEER)
        for peer in peers:
            family.add_metric([node, peer], read_peer(snapshot, peer))
        yield family
    for name, kind, doc, read_node in _NODE_METRICS:
        value = read_node(snapshot)
        if value is not None:
            family = _family(name, kind, doc, _NODE)
            family.add_metric([node], value)
            yield family


class NodeCollector:
    """A Prometheus collector of one node's metrics, read on the node's event loop."""

    def __init__(self, metrics: NodeMetrics, loop: asyncio.AbstractEventLoop) -> None:
        self._metrics = metrics
        self._loop = loop

    def collect(self) -> Iterable[Metric]:
        """Called in the server's thread: wait for a snapshot taken on the node's loop."""
        future = asyncio.run_coroutine_threadsafe(self._metrics.snapshot(), self._loop)
        try:
            snapshot = future.result(SCRAPE_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"node {self._metrics.node.id}'s event loop did not answer a scrape within "
                f"{SCRAPE_TIMEOUT:g}s"
            ) from None
        return list(families(snapshot))


class MetricsServer:
    """Serves one node's metrics (and the process's: CPU, memory, GC) over HTTP, in
    Prometheus' text format, at ``url`` once `start` returns."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host or "0.0.0.0"
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        """Bind (port 0: the OS chooses) and serve; raises `OSError` if it cannot bind.
        Called on the node's loop."""
        registry = CollectorRegistry()
        registry.register(NodeCollector(self._metrics, asyncio.get_running_loop()))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._server, self._thread = start_http_server(self._port, self._host, registry)
        host = self._host
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._server.server_port}/metrics"
        log.info("node %s: metrics on %s", self._metrics.node.id, self.url)

    async def aclose(self) -> None:
        """Stop serving (waits for the server's thread, off the loop); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

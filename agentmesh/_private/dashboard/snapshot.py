"""`Collector`: what the dashboard shows, gathered from a cluster through one `Mesh` as
a JSON-ready dict (its format is documented in docs/observability.md#dashboard).

Each snapshot asks the head for the nodes and the placement report, and every live
node for its agents, its crashes and its finished spans, all at once. The collector
remembers what earlier snapshots saw: agents' handled counts (for message rates), the
crashes and spans already taken (each node is asked only for newer ones), and the
latest traces, all bounded.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import Any

from ..kernel.errors import AgentmeshError
from ..kernel.info import AgentInfo, AgentListing, CrashReport
from ..kernel.listing import ask_node, recent_crashes
from ..mesh import Mesh, node_of
from ..tracing import spans_since

__all__ = ["FORMAT_VERSION", "Collector"]

#: The version of the snapshot's format; it changes when a field changes meaning.
FORMAT_VERSION = 1
#: Seconds over which an agent's message rate is measured (the snapshots in that span).
RATE_WINDOW = 5.0
#: Crashes the dashboard keeps, of all nodes, and asks of one node at a time.
CRASHES_KEPT = 100
#: Spans asked of one node at a time; traces kept; spans kept of one trace.
SPANS_ASKED = 1000
TRACES_KEPT = 200
SPANS_PER_TRACE = 200
#: Traces a snapshot holds: the latest of each kind (the name of its root span), so
#: a flood of one kind of request does not hide the others; the latest first.
TRACES_PER_KIND = 5
TRACES_SHOWN = 50


class Collector:
    """Builds dashboard snapshots of the cluster ``mesh`` belongs to (or of ``mesh``
    alone if embedded). Every node has ``timeout`` seconds to answer; one that does
    not is named in ``unreachable`` and the snapshot goes on without it. A node lists
    its oldest ``agents_limit`` agents at most. One snapshot at a time (the caller
    serializes them)."""

    def __init__(self, mesh: Mesh, *, timeout: float = 2.0, agents_limit: int = 1000) -> None:
        self.mesh = mesh
        self.timeout = timeout
        self.agents_limit = agents_limit
        # (monotonic time, handled by agent id) of the snapshots within RATE_WINDOW.
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque()
        self._crashes: collections.deque[dict[str, Any]] = collections.deque(maxlen=CRASHES_KEPT)
        self._crashes_seen: dict[str, int] = {}  # node -> number of its latest crash taken
        self._spans_seen: dict[str, int] = {}  # node -> number of its latest span taken
        self._traces: collections.OrderedDict[str, _Trace] = collections.OrderedDict()

    async def snapshot(self) -> dict[str, Any]:
        """The cluster now, as the dashboard's JSON endpoint serves it."""
        mesh = self.mesh
        nodes = await mesh.nodes()  # the head's view; raises if it cannot be reached
        live = [n.id for n in nodes if n.alive]
        listing, placement, crashes, spans = await asyncio.gather(
            self._agents(),
            self._placement(),
            asyncio.gather(*(self._ask_crashes(n) for n in live), return_exceptions=True),
            asyncio.gather(*(self._ask_spans(n) for n in live), return_exceptions=True),
        )
        # A node that did not answer, or answered what is no answer (a peer's bad
        # message costs its part of the snapshot, nothing more).
        unreachable = dict(listing.unreachable)
        for node, failed in zip(live, crashes, strict=True):
            if isinstance(failed, BaseException):
                unreachable.setdefault(node, _why(_reraised(failed)))
        tracing: dict[str, dict[str, bool]] = {}
        for node, state in zip(live, spans, strict=True):
            if isinstance(state, BaseException):
                unreachable.setdefault(node, _why(_reraised(state)))
            else:
                tracing[node] = state

        rates = self._rates(listing.agents)
        agents = [dict(dataclasses.asdict(a), rate=rates.get(a.id)) for a in listing.agents]
        node_rates: dict[str, float] = {}
        for agent in listing.agents:
            node_rates[agent.node] = node_rates.get(agent.node, 0.0) + (rates.get(agent.id) or 0.0)
        waiting, placement_failures, placement_error = placement
        return {
            "version": FORMAT_VERSION,
            "time": time.time(),
            "dashboard_node": mesh.node_id,
            "nodes": [
                dict(
                    dataclasses.asdict(n),
                    state=("drain" if n.draining else "up") if n.alive else "down",
                    rate=node_rates.get(n.id, 0.0),
                )
                for n in nodes
            ],
            "agents": agents,
            "unreachable": unreachable,
            "truncated": listing.truncated,
            "failures": {
                "crashes": sorted(self._crashes, key=lambda c: -c["time"]),
                "placement": list(reversed(placement_failures)),
                "placement_waiting": waiting,
                "placement_error": placement_error,
            },
            "tracing": {"nodes": tracing, "traces": self._latest_traces()},
        }

    async def _agents(self) -> AgentListing:
        return await self.mesh.list_agents(timeout=self.timeout, limit=self.agents_limit)

    async def _placement(self) -> tuple[int, list[str], str | None]:
        """(spawns waiting for room, the latest placement failures, why the head did
        not say, if it did not)."""
        try:
            async with asyncio.timeout(self.timeout):
                waiting, failures = await self.mesh.placement_report()
        except (AgentmeshError, TimeoutError) as exc:
            return 0, [], _why(exc)
        return waiting, failures, None

    async def _ask(self, node: str, method: str, seen: int, limit: int) -> Any:
        return await ask_node(node_of(self.mesh), node, method, (seen, limit), self.timeout)

    async def _ask_crashes(self, node: str) -> None:
        """Take ``node``'s crashes newer than those taken before."""
        seen = self._crashes_seen.get(node, 0)
        if node == self.mesh.node_id:
            answer = recent_crashes(node_of(self.mesh), seen, CRASHES_KEPT)
        else:
            answer = await self._ask(node, "!node.crashes", seen, CRASHES_KEPT)
        last, reports = answer
        self._crashes_seen[node] = last
        for report in reports:
            if isinstance(report, CrashReport):
                self._crashes.append(dataclasses.asdict(report))

    async def _ask_spans(self, node: str) -> dict[str, bool]:
        """Take the spans ``node``'s process finished since those taken before; returns
        whether tracing is on there (``enabled``) and its spans kept (``recorded``)."""
        seen = self._spans_seen.get(node, 0)
        if node == self.mesh.node_id:
            answer = spans_since(seen, SPANS_ASKED)
        else:
            answer = await self._ask(node, "!node.spans", seen, SPANS_ASKED)
        self._spans_seen[node] = answer["last"]
        for span in answer["spans"]:
            self._add_span(node, span)
        return {"enabled": bool(answer["enabled"]), "recorded": bool(answer["recorded"])}

    def _add_span(self, node: str, span: dict[str, Any]) -> None:
        trace_id = span["trace_id"]
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = _Trace()
        else:
            self._traces.move_to_end(trace_id)
        if span["span_id"] in trace.spans:
            return  # two meshes of one process both answered for it
        if len(trace.spans) >= SPANS_PER_TRACE:
            trace.dropped += 1
            return
        where = span["attributes"].get("agentmesh.node")
        trace.spans[span["span_id"]] = dict(span, node=where if isinstance(where, str) else node)
        trace.root = None  # found again when asked
        if len(self._traces) > TRACES_KEPT:
            self._forget_a_trace()

    def _forget_a_trace(self) -> None:
        """Forget the least recently added to trace of the kind most traces are of."""
        by_kind: dict[str, list[str]] = {}
        for trace_id, trace in self._traces.items():  # least recently added to first
            by_kind.setdefault(trace.root_span()["name"], []).append(trace_id)
        commonest = max(by_kind.values(), key=len)
        del self._traces[commonest[0]]

    def _latest_traces(self) -> list[dict[str, Any]]:
        """The latest traces of each kind (`TRACES_PER_KIND`), the latest first."""
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for trace_id, trace in self._traces.items():
            spans = sorted(trace.spans.values(), key=lambda s: s["start"])
            if not spans:
                continue
            start = spans[0]["start"]
            end = max(s["start"] + s["duration"] for s in spans)
            root = trace.root_span()["name"]
            by_kind.setdefault(root, []).append(
                {
                    "trace_id": trace_id,
                    "root": root,
                    "start": start,
                    "duration": end - start,
                    "errors": sum(1 for s in spans if s["status"] == "error"),
                    "nodes": sorted({s["node"] for s in spans}),
                    "dropped": trace.dropped,
                    "spans": spans,
                }
            )
        traces = []
        for kind in by_kind.values():
            kind.sort(key=lambda t: -t["start"])
            traces.extend(kind[:TRACES_PER_KIND])
        traces.sort(key=lambda t: -t["start"])
        return traces[:TRACES_SHOWN]

    def _rates(self, agents: list[AgentInfo]) -> dict[str, float | None]:
        """Messages handled per second by each agent over the last `RATE_WINDOW`
        seconds (None for an agent first seen now)."""
        now = time.monotonic()
        samples = self._samples
        while len(samples) > 1 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()  # keep one sample at least the window old, if any
        rates: dict[str, float | None] = {}
        for agent in agents:
            rate = None
            for when, handled in samples:
                before = handled.get(agent.id)
                if before is not None and now > when:
                    rate = max(0, agent.handled - before) / (now - when)
                    break
            rates[agent.id] = rate
        samples.append((now, {a.id: a.handled for a in agents}))
        return rates


@dataclasses.dataclass
class _Trace:
    """The spans of one trace the dashboard has seen, by span id."""

    spans: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    dropped: int = 0  # spans past SPANS_PER_TRACE, not kept
    root: dict[str, Any] | None = None  # (cached) `root_span`

    def root_span(self) -> dict[str, Any]:
        """The earliest span whose parent is not among the trace's (the request's)."""
        if self.root is None:
            spans = self.spans
            tops = [s for s in spans.values() if s["parent_id"] not in spans]
            self.root = min(tops or spans.values(), key=lambda s: s["start"])
        return self.root


def _reraised(exc: BaseException) -> Exception:
    """``exc`` if it is an error; a cancellation or an exit goes on up."""
    if not isinstance(exc, Exception):
        raise exc
    return exc


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

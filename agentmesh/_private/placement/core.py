"""The placement decision: pure functions over a view of the nodes.

Nothing here awaits, sends or sleeps, so every rule is testable on a synthetic
cluster. A decision is either a node, or an explanation per node of what it lacks,
split into "never" (its totals, labels or the strategy rule it out) and "not now"
(its free capacity).

Large clusters: a request's candidate nodes (labels and node rules) are computed once
per membership change and cached; ``balanced`` and ``spread`` then look at up to
`SAMPLE` nodes that have room, starting where the previous decision stopped (the
power of d choices), which keeps a decision O(1) in the cluster's size and spreads
load; ``pack`` takes the first node, in a stable order, with room (first fit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..kernel.placing import AwayFrom, GangStrategy, Near, OnNode, PlacementRequest

__all__ = ["SAMPLE", "ClusterView", "NodeView", "choose", "choose_gang", "explain"]

#: How many nodes with room ``balanced`` and ``spread`` compare in a large cluster.
SAMPLE = 8
_SHAPES_KEPT = 4096
_EPS = 1e-9


@dataclass(slots=True)
class NodeView:
    """A node as placement sees it: capacity, what is reserved, labels, role."""

    id: str
    role: str = "worker"  # "head", "worker" or "driver" (drivers host only on request)
    total: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    agents: int = 0  # agents placed here and not yet released

    def free(self, key: str) -> float:
        return self.total.get(key, 0.0) - self.used.get(key, 0.0)

    def has_room(self, resources: Iterable[tuple[str, float]]) -> bool:
        total, used = self.total, self.used
        for key, amount in resources:
            if total.get(key, 0.0) - used.get(key, 0.0) < amount - _EPS:
                return False
        return True

    def load_after(self, resources: Iterable[tuple[str, float]]) -> float:
        """The largest fraction of any of ``resources`` in use once they are held
        (0 for a request of no resources: its cost is the agent itself)."""
        load = 0.0
        total, used = self.total, self.used
        for key, amount in resources:
            capacity = total.get(key, 0.0)
            if capacity > 0:
                load = max(load, (used.get(key, 0.0) + amount) / capacity)
        return load


class ClusterView:
    """The live nodes, in a stable order, with the candidates of each request shape
    cached until the membership changes."""

    def __init__(self, nodes: Iterable[NodeView] = ()) -> None:
        self.nodes: dict[str, NodeView] = {}
        self._candidates: dict[object, list[NodeView]] = {}
        self._cursor = 0
        for node in nodes:
            self.add(node)

    def add(self, node: NodeView) -> None:
        self.nodes[node.id] = node
        self._candidates.clear()

    def remove(self, node_id: str) -> NodeView | None:
        self._candidates.clear()
        return self.nodes.pop(node_id, None)

    def candidates(self, request: PlacementRequest) -> list[NodeView]:
        """Nodes whose labels, role, the strategy's node rule and total capacity admit
        ``request`` (what is free aside)."""
        strategy = request.strategy
        rule = strategy if isinstance(strategy, OnNode | Near | AwayFrom) else None
        shape = (request.labels, rule, request.resources)
        found = self._candidates.get(shape)
        if found is None:
            resources = request.resources
            found = [
                n
                for n in self.nodes.values()
                if _admits(request, n, hard=True)
                and all(n.total.get(k, 0.0) >= amount - _EPS for k, amount in resources)
            ]
            if len(self._candidates) >= _SHAPES_KEPT:
                self._candidates.clear()
            self._candidates[shape] = found
        return found

    def next_start(self, size: int) -> int:
        self._cursor += 1
        return self._cursor % size if size else 0


def _admits(request: PlacementRequest, node: NodeView, *, hard: bool) -> bool:
    return _rule_out(request, node, hard=hard) is None


def _rule_out(request: PlacementRequest, node: NodeView, *, hard: bool) -> str | None:
    """Why ``node`` may never host ``request`` whatever its load (labels, role,
    node rules; with ``hard``, soft rules count too), or None."""
    strategy = request.strategy
    if isinstance(strategy, OnNode | Near) and (hard or not strategy.soft):
        if node.id != strategy.node:
            what = "asked for" if isinstance(strategy, OnNode) else "near the agent on"
            return f"not node {strategy.node} ({what})"
    elif node.role == "driver":
        return "a driver (hosts agents only when named)"
    if isinstance(strategy, AwayFrom) and (hard or not strategy.soft) and node.id == strategy.node:
        return "hosts the agent to keep away from"
    for key, matcher in request.labels:
        value = node.labels.get(key)
        if not matcher.matches(value):
            shown = "no such label" if value is None else f"{key}={value!r}"
            return f"label {key} {matcher}: {shown}"
    return None


def _short(node: NodeView, resources: Sequence[tuple[str, float]], *, now: bool) -> str | None:
    missing = []
    for key, amount in resources:
        have = node.free(key) if now else node.total.get(key, 0.0)
        if have < amount - _EPS:
            word = "free" if now else "in all"
            missing.append(f"{key} {have:g} {word} of {amount:g}")
    return ", ".join(missing) or None


def explain(
    request: PlacementRequest, view: ClusterView, exclude: frozenset[str] = frozenset()
) -> tuple[bool, dict[str, str]]:
    """Why no node takes ``request``: (never, reason per node). ``never`` is true when
    no node could host it even empty."""
    reasons: dict[str, str] = {}
    could = False
    for node in view.nodes.values():
        if node.id in exclude:
            reasons[node.id] = "excluded (it was lost)"
            continue
        why = _rule_out(request, node, hard=True) or _short(node, request.resources, now=False)
        if why is not None and node.role == "driver" and not isinstance(request.strategy, OnNode):
            continue  # a driver hosts only what is sent to it by name: not worth a line
        if why is None:
            could = True
            why = _short(node, request.resources, now=True) or "has room"
        reasons[node.id] = why
    return not could, reasons


def choose(
    request: PlacementRequest, view: ClusterView, exclude: frozenset[str] = frozenset()
) -> NodeView | None:
    """The node that should host ``request`` now, or None if none has room."""
    strategy = request.strategy
    found = _choose_in(view.candidates(request), request, view, exclude)
    if found is None and isinstance(strategy, OnNode | Near | AwayFrom) and strategy.soft:
        fallback = PlacementRequest(request.resources, request.labels, "balanced")
        found = _choose_in(view.candidates(fallback), fallback, view, exclude)
    return found


def _choose_in(
    nodes: list[NodeView],
    request: PlacementRequest,
    view: ClusterView,
    exclude: frozenset[str],
) -> NodeView | None:
    resources = request.resources
    size = len(nodes)
    if request.strategy == "pack":
        # First fit in a stable order: nodes fill one after the other.
        best: NodeView | None = None
        for node in nodes:
            if node.id not in exclude and node.has_room(resources):
                if node.role != "head":
                    return node
                best = best or node  # the head last, as a worker would do as well
        return best
    start = view.next_start(size) if size > SAMPLE else 0
    fitting: list[NodeView] = []
    for i in range(size):
        node = nodes[(start + i) % size]
        if node.id not in exclude and node.has_room(resources):
            fitting.append(node)
            if len(fitting) == SAMPLE:
                break
    if not fitting:
        return None
    if request.strategy == "spread":
        return min(fitting, key=lambda n: (n.agents, n.load_after(resources), n.id))
    return min(
        fitting,
        key=lambda n: (n.role == "head", n.load_after(resources), n.agents, n.id),
    )


def hold(node: NodeView, resources: Iterable[tuple[str, float]]) -> None:
    for key, amount in resources:
        node.used[key] = node.used.get(key, 0.0) + amount
    node.agents += 1


def unhold(node: NodeView, resources: Iterable[tuple[str, float]]) -> None:
    for key, amount in resources:
        left = node.used.get(key, 0.0) - amount
        node.used[key] = left if left > _EPS else 0.0
    node.agents = max(0, node.agents - 1)


def choose_gang(
    requests: Sequence[PlacementRequest],
    strategy: GangStrategy,
    view: ClusterView,
    *,
    empty: bool = False,
) -> list[NodeView] | None:
    """A node for each of ``requests`` (in order), all at once, or None.

    Members are placed largest first, each taking the reservations of those before
    it into account. ``empty``: as if nothing were reserved (to tell "never" from
    "not now"). Nothing in ``view`` is changed.
    """
    saved = {n.id: (dict(n.used), n.agents) for n in view.nodes.values()}
    if empty:
        for node in view.nodes.values():
            node.used, node.agents = {}, 0
    try:
        return _choose_gang(requests, strategy, view)
    finally:
        for node in view.nodes.values():
            node.used, node.agents = saved[node.id]


def _choose_gang(
    requests: Sequence[PlacementRequest], strategy: GangStrategy, view: ClusterView
) -> list[NodeView] | None:
    if strategy == "strict_pack":
        total: dict[str, float] = {}
        for request in requests:
            for key, amount in request.resources:
                total[key] = total.get(key, 0.0) + amount
        together = tuple(total.items())
        for node in view.nodes.values():
            if node.has_room(together) and all(_admits(r, node, hard=True) for r in requests):
                return [node] * len(requests)
        return None
    order = sorted(range(len(requests)), key=lambda i: -sum(a for _, a in requests[i].resources))
    chosen: dict[int, NodeView] = {}
    used_by_gang: list[NodeView] = []
    try:
        for i in order:
            request = requests[i]
            fitting = [n for n in view.candidates(request) if n.has_room(request.resources)]
            if strategy in ("spread", "strict_spread"):
                fresh = [n for n in fitting if n not in used_by_gang]
                if fresh or strategy == "strict_spread":
                    fitting = fresh
            elif strategy == "pack":
                mine = [n for n in fitting if n in used_by_gang]
                fitting = mine or fitting
            if not fitting:
                return None
            if strategy == "pack":
                node = max(fitting, key=lambda n: (n.load_after(request.resources), n.id))
            else:
                node = min(fitting, key=lambda n: (n.agents, n.load_after(request.resources)))
            hold(node, request.resources)
            chosen[i] = node
            used_by_gang.append(node)
    finally:
        for i, node in chosen.items():
            unhold(node, requests[i].resources)
    return [chosen[i] for i in range(len(requests))]

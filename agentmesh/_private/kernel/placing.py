"""What a spawn asks of the node that will host it: resources, label selectors and a
strategy — and the `Placer` seam through which a node gets a node chosen.

The kernel only defines the request and the seam; the placement layer decides, and
the cluster layer carries requests to the head. Every invalid value is refused when
the request is built, with a message that names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

__all__ = [
    "AwayFrom",
    "DoesNotExist",
    "Exists",
    "GangStrategy",
    "In",
    "Near",
    "NotIn",
    "OnNode",
    "PlacementRequest",
    "Placer",
    "Selector",
    "Strategy",
    "Ticket",
    "make_request",
]


# -- label selectors -------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class In:
    """The node's label has one of these values: ``labels={"zone": am.In("eu", "us")}``."""

    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        if not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"In() takes one or more strings, got {values!r}")
        object.__setattr__(self, "values", tuple(values))

    def matches(self, value: str | None) -> bool:
        return value is not None and value in self.values

    def __str__(self) -> str:
        return f"in {list(self.values)}"


@dataclass(frozen=True, init=False)
class NotIn:
    """The node's label is absent or has none of these values."""

    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        if not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"NotIn() takes one or more strings, got {values!r}")
        object.__setattr__(self, "values", tuple(values))

    def matches(self, value: str | None) -> bool:
        return value is None or value not in self.values

    def __str__(self) -> str:
        return f"not in {list(self.values)}"


@dataclass(frozen=True)
class Exists:
    """The node has the label, whatever its value."""

    def matches(self, value: str | None) -> bool:
        return value is not None

    def __str__(self) -> str:
        return "exists"


@dataclass(frozen=True)
class DoesNotExist:
    """The node does not have the label."""

    def matches(self, value: str | None) -> bool:
        return value is None

    def __str__(self) -> str:
        return "does not exist"


@dataclass(frozen=True)
class _Equals:
    value: str

    def matches(self, value: str | None) -> bool:
        return value == self.value

    def __str__(self) -> str:
        return f"= {self.value!r}"


#: A label selector: a plain string means equality.
Selector = str | In | NotIn | Exists | DoesNotExist
_Matcher = _Equals | In | NotIn | Exists | DoesNotExist


# -- strategies ------------------------------------------------------------------------


@dataclass(frozen=True)
class OnNode:
    """On this node (by id). ``soft=True``: elsewhere if it cannot host the agent."""

    node: str
    soft: bool = False


@dataclass(frozen=True, init=False)
class Near:
    """On the node of another agent (a ref, or a node id); ``soft=True`` falls back to
    the default strategy when that node cannot host it."""

    node: str
    soft: bool

    def __init__(self, agent: Any, *, soft: bool = False) -> None:
        object.__setattr__(self, "node", _node_of(agent, "Near"))
        object.__setattr__(self, "soft", soft)


@dataclass(frozen=True, init=False)
class AwayFrom:
    """On any node but the one of another agent (a ref, or a node id)."""

    node: str
    soft: bool

    def __init__(self, agent: Any, *, soft: bool = False) -> None:
        object.__setattr__(self, "node", _node_of(agent, "AwayFrom"))
        object.__setattr__(self, "soft", soft)


def _node_of(agent: Any, what: str) -> str:
    if isinstance(agent, str) and agent:
        return agent
    node = getattr(agent, "node", None)
    if isinstance(node, str) and node:
        return node
    raise TypeError(f"{what}() takes an AgentRef or a node id, got {agent!r}")


#: ``balanced`` (default): the node left least loaded, workers before the head.
#: ``pack``: fill nodes one after the other. ``spread``: the node hosting the fewest
#: placed agents. Or a node constraint: `OnNode`, `Near`, `AwayFrom`.
Strategy = Literal["balanced", "pack", "spread"] | OnNode | Near | AwayFrom
_NAMED = ("balanced", "pack", "spread")

#: How a gang's members share nodes: ``pack`` (few nodes, best effort),
#: ``spread`` (distinct nodes, best effort), ``strict_pack`` (one node),
#: ``strict_spread`` (each on its own node).
GangStrategy = Literal["pack", "spread", "strict_pack", "strict_spread"]


# -- the request -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlacementRequest:
    """Resources (amounts, fractions allowed), label selectors and a strategy."""

    resources: tuple[tuple[str, float], ...] = ()
    labels: tuple[tuple[str, _Matcher], ...] = ()
    strategy: Strategy = "balanced"
    #: Seconds to wait for free capacity (None: the mesh's placement timeout).
    timeout: float | None = None

    @property
    def is_default(self) -> bool:
        """Asks nothing: any node will do."""
        return not self.resources and not self.labels and self.strategy == "balanced"

    def describe(self) -> str:
        parts = []
        if self.resources:
            parts.append("resources " + ", ".join(f"{k}={v:g}" for k, v in self.resources))
        if self.labels:
            parts.append("labels " + ", ".join(f"{k} {m}" for k, m in self.labels))
        if self.strategy != "balanced":
            parts.append(f"strategy {self.strategy}")
        return "; ".join(parts) or "nothing"


def make_request(
    resources: Mapping[str, float] | None = None,
    labels: Mapping[str, Selector] | None = None,
    strategy: Strategy | None = None,
    timeout: float | None = None,
) -> PlacementRequest:
    """Check and normalise what a spawn asks for."""
    if resources is None and labels is None and strategy is None and timeout is None:
        return _DEFAULT_REQUEST  # most spawns: nothing to check
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"placement_timeout must be 0 or more, got {timeout!r}")
    amounts: list[tuple[str, float]] = []
    for key, amount in sorted((resources or {}).items()):
        if not isinstance(key, str) or not key:
            raise ValueError(f"resource names must be non-empty strings, got {key!r}")
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not math.isfinite(amount)
            or amount < 0
        ):
            raise ValueError(f"resource {key!r} needs a finite amount >= 0, got {amount!r}")
        if amount > 0:
            amounts.append((key, float(amount)))
    matchers: list[tuple[str, _Matcher]] = []
    for key, selector in sorted((labels or {}).items()):
        if not isinstance(key, str) or not key:
            raise ValueError(f"label names must be non-empty strings, got {key!r}")
        if isinstance(selector, str):
            matchers.append((key, _Equals(selector)))
        elif isinstance(selector, In | NotIn | Exists | DoesNotExist):
            matchers.append((key, selector))
        else:
            raise TypeError(
                f"label {key!r}: a selector is a string, In, NotIn, Exists or DoesNotExist, "
                f"got {selector!r}"
            )
    if strategy is None:
        strategy = "balanced"
    if not (strategy in _NAMED or isinstance(strategy, OnNode | Near | AwayFrom)):
        raise ValueError(
            f"strategy must be one of {_NAMED}, OnNode, Near or AwayFrom, got {strategy!r}"
        )
    return PlacementRequest(tuple(amounts), tuple(matchers), strategy, timeout)


def check_gang_strategy(strategy: str) -> None:
    if strategy not in get_args(GangStrategy):
        raise ValueError(f"gang strategy must be one of {get_args(GangStrategy)}, got {strategy!r}")


# -- the seam --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """A reservation: ``key`` holds ``resources`` on node ``node`` until released."""

    key: str
    node: str
    resources: tuple[tuple[str, float], ...] = ()


class Placer(Protocol):
    """Chooses nodes and holds reservations (the placement layer implements it)."""

    async def reserve(
        self,
        request: PlacementRequest,
        *,
        exclude: frozenset[str] = frozenset(),
        timeout: float | None = None,
    ) -> Ticket:
        """Choose a node for ``request`` and hold its resources; wait up to ``timeout``
        (None: the mesh's placement timeout) for room; `PlacementError` if none."""
        ...

    async def reserve_gang(
        self, requests: list[PlacementRequest], strategy: GangStrategy, timeout: float | None
    ) -> list[Ticket]:
        """Reserve for all of ``requests`` at once, or for none."""
        ...

    async def reserve_many(
        self, requests: list[PlacementRequest], timeout: float | None = None
    ) -> list[Ticket]:
        """Choose a node for each of ``requests`` (each by its own strategy, in order)
        and hold them all in one step, or wait up to ``timeout`` until all fit; raises
        `PlacementError` and holds nothing otherwise (a batch of spawns)."""
        ...

    def release(self, key: str) -> None: ...


_DEFAULT_REQUEST = PlacementRequest((), (), "balanced", None)

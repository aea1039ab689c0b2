"""Child and supervisor specifications, with OTP's names and defaults.

Every invalid value is refused when the spec is built, with a message that names it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ..kernel.agent import Agent, check_agent_class
from ..kernel.placing import PlacementRequest, Selector, make_request
from ..kernel.placing import Strategy as PlacementStrategy

__all__ = ["Backoff", "ChildSpec", "Restart", "Strategy", "SupervisorSpec"]

#: ``permanent``: always restarted (after a crash, or after it stopped itself).
#: ``transient``: restarted only after a crash. ``temporary``: never restarted.
#: An agent stopped by something else (``ref.stop()``, its supervisor, the mesh
#: closing) is never restarted, whatever its type (OTP's ``terminate_child``).
Restart = Literal["permanent", "transient", "temporary"]
_RESTARTS = get_args(Restart)

#: ``one_for_one``: restart the child that exited. ``one_for_all``: restart all
#: children. ``rest_for_one``: restart the child that exited and those started after
#: it. Siblings are stopped in reverse start order and restarted in start order.
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between restarts (Akka's BackoffSupervisor).

    The n-th restart within the supervisor's ``period`` waits
    ``min(maximum, minimum * factor ** (n - 1))`` seconds, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``. Messages keep queueing in the child's mailbox.
    """

    minimum: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.maximum:
            raise ValueError(f"Backoff needs 0 < minimum <= maximum, got {self}")
        if self.factor < 1:
            raise ValueError(f"Backoff factor must be at least 1, got {self.factor}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"Backoff jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based)."""
        base = min(self.maximum, self.minimum * self.factor ** max(0, attempt - 1))
        return base * (1 + self.jitter * rng.uniform(-1.0, 1.0))


@dataclass(frozen=True, init=False, slots=True)
class ChildSpec:
    """How a supervisor starts, and restarts, one child.

    ``ChildSpec(AgentClass, *args, name=None, restart="permanent", shutdown=None,
    mailbox_size=None, concurrency=None, checkpoint_every=0)``. The agent's own
    arguments are positional, as in `Mesh.spawn`; constructor keywords go through
    ``functools.partial``. ``shutdown`` is the child's stop timeout in seconds (None:
    the mesh's shutdown timeout). ``checkpoint_every`` > 0 saves the agent's
    ``snapshot()`` after every that many handled messages. ``node`` (in a cluster)
    starts the child on that node; if that node dies, the child is restarted on
    another live node (its restart type permitting). ``resources``, ``labels`` (label
    selectors), ``strategy`` and ``placement_timeout`` choose the node as for
    `Mesh.spawn`, and again when the child is restarted after its node died.
    """

    agent_class: Callable[..., Agent]
    args: tuple[Any, ...]
    name: str | None
    restart: Restart
    shutdown: float | None
    mailbox_size: int | None
    concurrency: int | None
    checkpoint_every: int
    node: str | None
    placement: PlacementRequest
    # A virtual agent's (`Mesh.agent`): its name claimed before it is built, and
    # passivated after that many idle seconds. Set only through `_replaced`.
    _claim_first: bool = field(repr=False, compare=False)
    _idle_after: float | None = field(repr=False, compare=False)

    def __init__(
        self,
        agent_class: Callable[..., Agent],
        /,
        *args: Any,
        name: str | None = None,
        restart: Restart = "permanent",
        shutdown: float | None = None,
        mailbox_size: int | None = None,
        concurrency: int | None = None,
        checkpoint_every: int = 0,
        node: str | None = None,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, Selector] | None = None,
        strategy: PlacementStrategy | None = None,
        placement_timeout: float | None = None,
    ) -> None:
        cls = agent_class.func if isinstance(agent_class, functools.partial) else agent_class
        check_agent_class(cls)
        if restart not in _RESTARTS:
            raise ValueError(f"restart must be one of {_RESTARTS}, got {restart!r}")
        if shutdown is not None and shutdown <= 0:
            raise ValueError(f"shutdown must be a positive number of seconds, got {shutdown}")
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 or more, got {checkpoint_every}")
        if node is not None and strategy is not None:
            raise ValueError("give node= or strategy=, not both")
        # Frozen: fields set past __setattr__ (one call each, no loop: a spawn makes one).
        put = object.__setattr__
        put(self, "agent_class", agent_class)
        put(self, "args", args)
        put(self, "name", name)
        put(self, "restart", restart)
        put(self, "shutdown", shutdown)
        put(self, "mailbox_size", mailbox_size)
        put(self, "concurrency", concurrency)
        put(self, "checkpoint_every", checkpoint_every)
        put(self, "node", node)
        put(self, "placement", make_request(resources, labels, strategy, placement_timeout))
        put(self, "_claim_first", False)
        put(self, "_idle_after", None)

    def on_node(self, node: str | None) -> ChildSpec:
        """The same spec, started on ``node`` (None: where its supervisor is)."""
        if node == self.node:
            return self
        return self._replaced(node=node)

    def _replaced(self, **changes: Any) -> ChildSpec:
        """The same spec with ``changes`` (fields, already checked): what a batch of
        agents sharing options but not arguments or names is made of, cheaply."""
        spec = object.__new__(ChildSpec)
        for key in self.__slots__:
            object.__setattr__(spec, key, changes.get(key, getattr(self, key)))
        return spec

    @property
    def class_name(self) -> str:
        cls = self.agent_class
        cls = cls.func if isinstance(cls, functools.partial) else cls
        return getattr(cls, "__qualname__", repr(cls))


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor's strategy, restart intensity and children (OTP's sup_flags).

    Defaults are OTP's: ``one_for_one``, at most ``intensity=1`` restart in
    ``period=5.0`` seconds. One more restart than ``intensity`` within ``period``
    makes the supervisor stop all its children (in reverse start order) and exit
    with `RestartIntensityExceeded`, which its own supervisor then handles. Children
    start in list order. ``backoff`` (default None: restart at once) spaces restarts.
    """

    strategy: Strategy = "one_for_one"
    intensity: int = 1
    period: float = 5.0
    children: tuple[ChildSpec, ...] = field(default_factory=tuple)
    backoff: Backoff | None = None

    def __init__(
        self,
        strategy: Strategy = "one_for_one",
        intensity: int = 1,
        period: float = 5.0,
        children: Iterable[ChildSpec] = (),
        backoff: Backoff | None = None,
    ) -> None:
        if strategy not in get_args(Strategy):
            raise ValueError(f"strategy must be one of {get_args(Strategy)}, got {strategy!r}")
        if intensity < 0:
            raise ValueError(f"intensity must be 0 or more, got {intensity}")
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        kids = tuple(children)
        for child in kids:
            if not isinstance(child, ChildSpec):
                raise TypeError(f"children must be ChildSpec objects, got {child!r}")
        names = [c.name for c in kids if c.name is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"child names must be unique, got {names}")
        object.__setattr__(self, "strategy", strategy)
        object.__setattr__(self, "intensity", intensity)
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "children", kids)
        object.__setattr__(self, "backoff", backoff)

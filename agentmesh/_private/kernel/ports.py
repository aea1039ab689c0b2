"""What the kernel asks of the layers above it, declared: the node's pub/sub bus, the
requests other nodes make of a node (``!node.*``), and a supervisor's children, here
or on other nodes. The layers above fill these in (`Node.bus`, `Node.serve`,
`Node.remote_children`); the kernel calls nothing else of theirs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .cell import Cell
    from .envelope import Envelope
    from .exits import ExitReason
    from .lifecycle import State
    from .placing import Ticket
    from .ref import AgentRef

__all__ = [
    "FRAMEWORK_PREFIX",
    "BusPort",
    "ChildHandle",
    "NodeRequest",
    "RemoteChildHandle",
    "RemoteChildrenPort",
    "Rest",
]

#: Ids of the framework's own agents start so (``sys.<what>.<node>``): their traffic
#: is control traffic, never queued behind user messages nor flow-controlled.
FRAMEWORK_PREFIX = "sys."

#: What finishes a delivery that must wait for room (awaited by the transport).
Rest = Callable[[], Awaitable[None]]


class BusPort(Protocol):
    """The node's pub/sub bus as the kernel uses it (the pubsub layer's `Bus`)."""

    async def publish(
        self, topic: str, payload: Any, sender: str | None = None, *, local_only: bool = False
    ) -> int:
        """Deliver ``payload`` to every subscription matching ``topic``."""

    def subscribe_handler(
        self, cell: Cell, pattern: str, handler: Callable[..., Any], overflow: Any
    ) -> None:
        """A runtime subscription of one agent instance (``self.subscribe``)."""

    def unsubscribe_handler(
        self, cell: Cell, pattern: str, handler: Callable[..., Any] | None
    ) -> int:
        """End an agent's runtime subscriptions to ``pattern``."""

    def register_agent(self, cell: Cell) -> None:
        """Subscribe a new agent's ``@subscribe`` handlers (before it starts)."""

    async def sync_interest(self) -> None:
        """Share this node's topic interest with the cluster, if it changed."""

    def instance_ended(self, cell: Cell) -> None:
        """An agent's instance ended (it may restart): its buffers go."""

    def agent_ended(self, cell: Cell) -> None:
        """An agent ended for good: its subscriptions go."""

    def dead_letter(
        self,
        topic: str | None,
        payload: Any,
        reason: str,
        subscriber: str | None = None,
        sender: str | None = None,
        method: str | None = None,
    ) -> None:
        """Count, log and publish an undeliverable message."""


@dataclass(frozen=True, slots=True)
class NodeRequest:
    """A request other nodes make of this node (``!node.<what>``), served by
    ``serve(env)``: None when done, else what finishes it, waiting for room.

    ``ordered`` requests are user traffic (a publication): they keep their order and
    flow control with the sender's other messages. The others are control traffic,
    served at once, never queued.
    """

    serve: Callable[[Envelope], Rest | None]
    ordered: bool = False


class ChildHandle(Protocol):
    """What a supervisor holds of one child: its `Cell` when it lives on this node,
    or a stand-in when it lives on another (the cluster layer's `RemoteCell`)."""

    #: True for a child on another node (then it is a `RemoteChildHandle`).
    remote: bool
    ref: AgentRef
    state: State
    restarts: int
    last_error: str | None

    @property
    def name(self) -> str | None: ...

    @property
    def label(self) -> str: ...

    async def stop(self, timeout: float | None) -> None: ...

    async def suspend(self, timeout: float) -> None: ...

    async def restart(self) -> bool: ...

    def end(self, state: State = ..., reason: str | None = None) -> None: ...


class RemoteChildHandle(ChildHandle, Protocol):
    """A child on another node: what it said of its exit, and its node's death, are
    news to its stand-in (a local child's cell knows both first-hand)."""

    def exited(
        self, reason: ExitReason, error: str | None, taken: bool, traceback: str | None = None
    ) -> None:
        """Its exit, as its node told it (with the traceback of a crash)."""

    def node_lost(self, error: str | None) -> None: ...


class RemoteChildrenPort(Protocol):
    """Starts and stops a supervisor's children on other nodes (the cluster layer's
    `RemoteChildren`); ``spec`` is the supervision layer's `ChildSpec`."""

    async def spawn(
        self, spec: Any, supervisor: AgentRef, key: int, node_id: str, ticket: Ticket | None
    ) -> RemoteChildHandle: ...

    async def spawn_many(
        self,
        node_id: str,
        specs: list[Any],
        supervisor: AgentRef,
        keys: list[int],
        tickets: list[Ticket | None],
    ) -> Sequence[RemoteChildHandle | Exception]: ...

    async def stop_many(self, cells: list[Any]) -> None:
        """Stop children on other nodes (their `RemoteChildHandle`s), one request a node."""

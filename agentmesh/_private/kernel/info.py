"""`AgentInfo`: a frozen snapshot of one agent's state, for programs and status views;
`AgentListing`: those of many agents across a cluster; `CrashReport`: one crash, as
its node remembers it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cell import Cell
    from .lifecycle import Lifecycle

__all__ = ["TRACEBACK_KEPT", "AgentInfo", "AgentListing", "CrashReport"]

#: Characters of a crash's traceback a `CrashReport` keeps (its end, where the error is).
TRACEBACK_KEPT = 16_000


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What an agent is doing now and has done.

    ``state`` is one of ``starting``, ``running``, ``stopping``, ``crashing``,
    ``suspending``, ``restarting``, ``stopped``, ``crashed`` (see `State`).
    ``handled`` counts messages whose handler ran, ``rejected`` calls refused as
    unknown or ill-typed, ``crashes`` crashes so far, ``restarts`` restarts by its
    supervisor, ``last_error`` the latest crash as ``"Type: message"``,
    ``exit_reason`` why the agent ended, if it did. ``agent_class`` is the class's
    qualified name; ``supervisor`` the id of the supervisor that owns the agent, on
    this node or another (``sys.root.<node>`` for a plain spawn), None if none does.
    """

    id: str
    name: str | None
    node: str
    agent_class: str
    state: str
    mailbox_depth: int
    mailbox_size: int
    running: int
    concurrency: int
    handled: int
    rejected: int
    crashes: int
    restarts: int
    last_error: str | None
    exit_reason: str | None
    supervisor: str | None = None

    @classmethod
    def of(cls, cell: Cell) -> AgentInfo:
        return cls(
            id=cell.id,
            name=cell.name,
            node=cell.node.id,
            agent_class=cell.methods.cls_name,
            state=cell.state.value,
            mailbox_depth=len(cell.mailbox),
            mailbox_size=cell.mailbox.capacity,
            running=len(cell.busy()),
            concurrency=cell.concurrency,
            handled=cell.handled,
            rejected=cell.rejected,
            crashes=cell.crashes,
            restarts=cell.restarts,
            last_error=cell.last_error,
            exit_reason=cell.exit_reason,
            # Supervisors' exit listeners name them (`ExitListener`); the root's not.
            supervisor=getattr(cell.exit_listener, "supervisor_id", None),
        )


@dataclass(frozen=True, slots=True)
class AgentListing:
    """The agents of many nodes (`Mesh.list_agents`), as each node answered.

    ``agents`` are ordered by node, then oldest first. ``unreachable`` maps each node
    that did not answer to why (the listing goes on without it); ``truncated`` maps
    each node that had more matching agents than the listing's ``limit`` to how many
    it had (it sent the oldest ``limit``).
    """

    agents: list[AgentInfo]
    unreachable: dict[str, str] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CrashReport:
    """One crash of an agent (an exception out of a tell handler or a hook), as the
    node it crashed on recorded it: ``time`` (seconds since the epoch, this node's
    clock), the agent's ``agent_id``, ``name``, ``agent_class`` and ``supervisor``,
    ``where`` it crashed (``turn``, ``on_start`` ...), ``error`` (``"Type: message"``)
    and ``traceback`` (its last `TRACEBACK_KEPT` characters)."""

    time: float
    node: str
    agent_id: str
    name: str | None
    agent_class: str
    where: str
    error: str
    traceback: str
    supervisor: str | None = None

    @classmethod
    def of(cls, cell: Lifecycle, when: float, where: str) -> CrashReport:
        text = cell.last_traceback or ""
        if len(text) > TRACEBACK_KEPT:
            text = "...\n" + text[-TRACEBACK_KEPT:]
        return cls(
            time=when,
            node=cell.node.id,
            agent_id=cell.id,
            name=cell.name,
            agent_class=cell.cls.__qualname__,
            where=where,
            error=cell.last_error or "",
            traceback=text,
            supervisor=getattr(cell.exit_listener, "supervisor_id", None),
        )

"""`AgentInfo`: a frozen snapshot of one agent's state, for programs and status views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cell import Cell

__all__ = ["AgentInfo"]


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What an agent is doing now and has done.

    ``state`` is one of ``starting``, ``running``, ``stopping``, ``crashing``,
    ``suspending``, ``restarting``, ``stopped``, ``crashed`` (see `State`).
    ``handled`` counts messages whose handler ran, ``rejected`` calls refused as
    unknown or ill-typed, ``crashes`` crashes so far, ``restarts`` restarts by its
    supervisor, ``last_error`` the latest crash as ``"Type: message"``,
    ``exit_reason`` why the agent ended, if it did.
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
        )

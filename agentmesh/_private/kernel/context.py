"""Task-local context: which agent is running and on which call chain."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cell import Cell
    from .node import Node

__all__ = ["current_cell", "current_chain", "current_node"]

#: The agent whose handler (or hook) the running task belongs to; None in a driver.
current_cell: ContextVar[Cell | None] = ContextVar("agentmesh_cell", default=None)
#: The call chain of the message being handled; 0 outside any handler.
current_chain: ContextVar[int] = ContextVar("agentmesh_chain", default=0)
#: The node that refs unpickled in this context bind to.
current_node: ContextVar[Node | None] = ContextVar("agentmesh_node", default=None)

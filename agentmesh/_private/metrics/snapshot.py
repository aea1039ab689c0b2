"""`NodeMetrics`: a node's metrics, read from the counters it keeps anyway, at scrape time.

Nothing here runs per message: agents count what they handle (`Cell.handled` and the
rest), links what they send, the bus its dead letters, the scheduler its waiting
spawns. A scrape walks the node's cells on its event loop and sums them by agent
class, never by agent (a label per agent would grow without bound); the counters of
agents that ended are kept by class as they end, so totals never go down. Turn
durations come from the node's `TurnTimer`, which this sets. No prometheus here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..kernel.cell import Cell, State
from ..kernel.node import Node
from ..kernel.timing import Histogram, TurnTimer
from ..placement.scheduler import Scheduler
from ..pubsub.bus import Bus
from ..transport.grpc_transport import GrpcTransport, PeerTraffic

if TYPE_CHECKING:
    from ..kernel.transport import Transport

__all__ = ["ClassStats", "NodeMetrics", "Snapshot"]

#: Cells read between two yields to the event loop: a scrape of a node with a million
#: agents holds the loop a few milliseconds at a time, not a second.
_CHUNK = 10_000

_ENDED = (State.STOPPED, State.CRASHED)


@dataclass
class ClassStats:
    """One agent class on one node: live agents and their mailboxes now; messages,
    crashes and restarts since the node started (agents that ended included)."""

    agents: int = 0
    handled: int = 0
    rejected: int = 0
    crashes: int = 0
    restarts: int = 0
    mailbox_depth: int = 0
    mailbox_depth_max: int = 0

    def count(self, cell: Cell) -> None:
        """Add ``cell``'s counters."""
        self.handled += cell.handled
        self.rejected += cell.rejected
        self.crashes += cell.crashes
        self.restarts += cell.restarts


@dataclass(frozen=True)
class Snapshot:
    """A node's metrics at one moment. ``placement_*`` are None on a node that holds no
    placement queue (only the head, or an embedded mesh, does)."""

    node: str
    classes: dict[str, ClassStats]
    turns: dict[str, Histogram]
    peers: dict[str, PeerTraffic]
    parked: int
    refused: int
    published: int
    deliveries: int
    dead_letters: int
    placement_waiting: int | None = None
    placement_failed: int | None = None


class NodeMetrics:
    """Reads one node's metrics (`snapshot`, on the node's loop). Made by the mesh when
    metrics are on: it sets the node's `TurnTimer` and keeps ended agents' counters."""

    def __init__(self, node: Node, bus: Bus, scheduler: Scheduler | None) -> None:
        self.node = node
        self.bus = bus
        self.scheduler = scheduler  # the head's (or the embedded mesh's), else None
        self.ended: dict[str, ClassStats] = {}
        self.timer = TurnTimer()
        node.turn_timer = self.timer
        node.ended_hooks.append(self._agent_ended)

    def _agent_ended(self, cell: Cell) -> None:
        name = cell.methods.cls_name
        stats = self.ended.get(name)
        if stats is None:
            stats = self.ended[name] = ClassStats()
        stats.count(cell)

    async def snapshot(self) -> Snapshot:
        """The node's metrics now. Runs on the node's event loop, yielding to it every
        `_CHUNK` agents."""
        node = self.node
        # Copied together: an agent that ends from here on is counted once, live.
        cells = list(node.cells.values())
        classes = {name: replace(stats) for name, stats in self.ended.items()}
        turns = {name: h.copy() for name, h in self.timer.by_class.items()}
        transport: Transport | None = node.transport
        peers = transport.traffic() if isinstance(transport, GrpcTransport) else {}
        parked, refused = transport.counters() if transport is not None else (0, 0)
        bus = self.bus
        scheduler = self.scheduler
        snapshot = Snapshot(
            node.id,
            classes,
            turns,
            peers,
            parked,
            refused,
            bus.published,
            bus.deliveries,
            bus.dead_letters,
            None if scheduler is None else len(scheduler.waiting),
            None if scheduler is None else scheduler.failed,
        )
        for start in range(0, len(cells), _CHUNK):
            if start:
                await asyncio.sleep(0)
            for cell in cells[start : start + _CHUNK]:
                name = cell.methods.cls_name
                stats = classes.get(name)
                if stats is None:
                    stats = classes[name] = ClassStats()
                stats.count(cell)
                if cell.state in _ENDED:
                    continue  # ended during this scrape: counted, no longer live
                stats.agents += 1
                depth = len(cell.mailbox)
                stats.mailbox_depth += depth
                if depth > stats.mailbox_depth_max:
                    stats.mailbox_depth_max = depth
        return snapshot

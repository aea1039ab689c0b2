"""Explaining a timed-out ask: who is busy, waiting on whom, and whether that loops."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .node import Node

__all__ = ["describe_wait"]


def describe_wait(node: Node, target: str) -> str:
    """Follow the wait-for edges from agent ``target`` through this node's agents.

    Returns e.g. ``"wait cycle: a (in f()) -> b (in h()) -> a"`` when the agents wait
    on each other, ``"busy: b (in h()) -> waiting on c"`` for a plain chain, or ``""``
    when the target is idle or not local. Runs only when an ask times out.
    """
    steps: list[str] = []
    seen: dict[str, int] = {}
    current: str | None = target
    while current is not None and current not in seen:
        cell = node.cells.get(current)
        busy_with = [] if cell is None else cell.busy()
        if cell is None or not busy_with:
            break
        seen[current] = len(steps)
        busy = ", ".join(f"{env.method}()" for env in busy_with)
        steps.append(f"{cell.label} (in {busy})")
        waits = list((cell.waiting_on or {}).values())
        current = waits[0] if waits else None
    if current is not None and current in seen:
        start = seen[current]
        loop = [*steps[start:], steps[start].split(" (")[0]]
        return "wait cycle: " + " -> ".join(loop)
    if not steps:
        return ""
    tail = f" -> waiting on {current}" if current is not None else ""
    return "busy: " + " -> ".join(steps) + tail

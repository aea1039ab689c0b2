"""Tables the ``agentmesh`` command prints: nodes (``status``) and agents (``list
agents``), with durations a person reads at a glance (``4m12s``, ``3s ago``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster.directory import NodeInfo
    from .kernel.info import AgentInfo

__all__ = ["agent_table", "duration", "node_table"]


def duration(seconds: float) -> str:
    """``0.4s``, ``42s``, ``4m12s``, ``3h05m``, ``2d04h``: two units at most."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _amount(name: str, value: float) -> str:
    if name == "memory" and value >= 2**30:
        return f"{value / 2**30:.1f}GiB"
    return f"{value:g}"


def node_table(nodes: list[NodeInfo]) -> list[str]:
    """One line per node (and a header): state, uptime, when last heard from, load,
    resources used/total and labels."""
    lines = [
        f"{'node':10} {'role':7} {'state':5} {'address':22} {'uptime':>7} {'seen':>9} "
        f"{'agents':>6} {'queued':>6} {'held':>5} {'refused':>7}  resources used/total, labels"
    ]
    for n in nodes:
        state = ("drain" if n.draining else "up") if n.alive else "down"
        extra = ", ".join(
            f"{k}={_amount(k, n.used.get(k, 0.0))}/{_amount(k, v)}" for k, v in n.resources.items()
        )
        if n.labels:
            extra += "  " + ", ".join(f"{k}={v}" for k, v in n.labels.items())
        seen = f"{duration(n.last_seen)} ago"
        lines.append(
            f"{n.id:10} {n.role:7} {state:5} {n.address:22} {duration(n.uptime):>7} {seen:>9} "
            f"{n.agents:>6} {n.mailbox_depth:>6} {n.held:>5} {n.refused:>7}  {extra}"
        )
    return lines


def agent_table(agents: list[AgentInfo]) -> list[str]:
    """One line per agent (and a header): name (else id), class, node, state,
    messages queued, handled and restarts."""
    rows = [
        (a.name or a.id, a.agent_class, a.node, a.state, a.mailbox_depth, a.handled, a.restarts)
        for a in agents
    ]
    name_width = max([len("agent"), *(len(r[0]) for r in rows)])
    class_width = max([len("class"), *(len(r[1]) for r in rows)])
    lines = [
        f"{'agent':{name_width}} {'class':{class_width}} {'node':10} {'state':10} "
        f"{'queued':>6} {'handled':>8} {'restarts':>8}"
    ]
    for name, cls, node, state, depth, handled, restarts in rows:
        lines.append(
            f"{name:{name_width}} {cls:{class_width}} {node:10} {state:10} "
            f"{depth:>6} {handled:>8} {restarts:>8}"
        )
    return lines

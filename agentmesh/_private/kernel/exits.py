"""Why an agent's instance ended, and the notice monitors receive: `Terminated`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .ref import AgentRef

__all__ = ["ABNORMAL", "ExitReason", "Terminated"]

#: ``normal``: the agent stopped itself. ``shutdown``: something else stopped it (a
#: driver, another agent, its supervisor, the mesh closing). ``killed``: it was
#: cancelled because it did not stop within its shutdown timeout. ``crash``: a tell
#: handler, a hook or a checkpoint raised. ``node_down``: its node died or became
#: unreachable (only a watcher on another node can see this one).
ExitReason = Literal["normal", "shutdown", "killed", "crash", "node_down"]

#: Exits that restart a ``transient`` child (as in OTP, anything but normal/shutdown;
#: ``killed`` only happens while something is stopping the agent, so it never
#: restarts one).
ABNORMAL: frozenset[str] = frozenset({"crash", "node_down"})


@dataclass(frozen=True, slots=True)
class Terminated:
    """Notice that a monitored agent's instance ended.

    ``reason`` is an `ExitReason`; ``error`` is ``"Type: message"`` for a crash;
    ``restarting`` is True when its supervisor is restarting it, in which case
    ``ref`` keeps working and the monitor stays in place. Otherwise the agent is gone
    for good and the monitor is removed.
    """

    ref: AgentRef
    reason: ExitReason
    error: str | None = None
    restarting: bool = False

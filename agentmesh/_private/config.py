"""`MeshConfig`: everything a `Mesh` is configured with, typed and checked in one place.

``Mesh(ask_timeout=5, join="head:7470")`` builds one from its keywords (`MeshOptions`
types them); ``Mesh(config)`` takes one made before, to share or vary
(``dataclasses.replace(config, join=...)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal, TypedDict

from .cluster.directory import DEFAULT_DEAD_AFTER, DEFAULT_FORGET_DEAD_AFTER, DEFAULT_HEARTBEAT
from .kernel.mailbox import DEFAULT_MAILBOX_SIZE
from .kernel.node import DEFAULT_ASK_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_SLOW_TURN
from .kernel.placing import make_request
from .kernel.state import StateStore
from .placement.scheduler import DEFAULT_PLACEMENT_TIMEOUT
from .transport.grpc_transport import TLS

__all__ = ["TOKEN_VARIABLE", "MeshConfig", "MeshOptions", "Role"]

#: The environment variable a clustered mesh takes its token from when given none.
TOKEN_VARIABLE = "AGENTMESH_TOKEN"

#: What a node that joins a cluster does there: a ``driver`` (the default) runs the
#: program's own agents and places the others on workers; a ``worker`` hosts agents
#: placed by anyone (what ``agentmesh node`` runs).
Role = Literal["driver", "worker"]


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """How a mesh runs: timeouts, mailboxes, restarts, and (with ``listen`` or
    ``join``) its place in a cluster. Every field is documented on `Mesh`."""

    ask_timeout: float = DEFAULT_ASK_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    state_store: StateStore | None = None
    restart_intensity: int = 3
    restart_period: float = 5.0
    listen: str | None = None
    join: str | None = None
    advertise: str | None = None
    token: str | None = None
    resources: Mapping[str, float] | None = None
    labels: Mapping[str, str] | None = None
    tls: TLS | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    dead_after: float = DEFAULT_DEAD_AFTER
    forget_dead_after: float = DEFAULT_FORGET_DEAD_AFTER
    placement_timeout: float = DEFAULT_PLACEMENT_TIMEOUT
    node_id: str | None = None
    slow_turn: float | None = DEFAULT_SLOW_TURN
    role: Role | None = None
    metrics_port: int | None = None
    tracing: bool = False

    def __post_init__(self) -> None:
        if self.ask_timeout <= 0 or self.shutdown_timeout <= 0:
            raise ValueError("ask_timeout and shutdown_timeout must be positive")
        if self.mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, got {self.mailbox_size}")
        if not 0 < self.heartbeat < self.dead_after:
            raise ValueError(
                f"need 0 < heartbeat < dead_after, got {self.heartbeat}, {self.dead_after}"
            )
        if not self.forget_dead_after > 0:
            raise ValueError(
                f"forget_dead_after must be positive seconds, got {self.forget_dead_after}"
            )
        if self.placement_timeout < 0:
            raise ValueError(f"placement_timeout must be 0 or more, got {self.placement_timeout}")
        if self.slow_turn is not None and not self.slow_turn > 0:
            raise ValueError(f"slow_turn must be positive seconds or None, got {self.slow_turn}")
        if self.role is not None and self.role not in ("driver", "worker"):
            raise ValueError(f"role must be 'driver' or 'worker', got {self.role!r}")
        if self.role is not None and self.join is None:
            raise ValueError("role is for a node that joins a cluster (join=)")
        port = self.metrics_port
        if port is not None and (type(port) is not int or not 0 <= port <= 65535):
            raise ValueError(f"metrics_port must be a port (0: any) or None, got {port!r}")
        make_request(self.resources, self.labels)  # refuse bad names and amounts now

    @property
    def clustered(self) -> bool:
        """Whether the mesh takes part in a cluster (it listens or joins)."""
        return self.listen is not None or self.join is not None

    def cluster_token(self) -> str | None:
        """The token a clustered mesh proves: ``token``, else ``$AGENTMESH_TOKEN`` (the
        one place agentmesh reads the environment), else none."""
        return self.token if self.token is not None else os.environ.get(TOKEN_VARIABLE)


class MeshOptions(TypedDict, total=False):
    """`MeshConfig`'s fields, as keywords of `Mesh` (checked by type checkers)."""

    ask_timeout: float
    shutdown_timeout: float
    mailbox_size: int
    state_store: StateStore | None
    restart_intensity: int
    restart_period: float
    listen: str | None
    join: str | None
    advertise: str | None
    token: str | None
    resources: Mapping[str, float] | None
    labels: Mapping[str, str] | None
    tls: TLS | None
    heartbeat: float
    dead_after: float
    forget_dead_after: float
    placement_timeout: float
    node_id: str | None
    slow_turn: float | None
    role: Role | None
    metrics_port: int | None
    tracing: bool


def config_fields() -> list[str]:
    """The names of `MeshConfig`'s fields (`MeshOptions` has the same)."""
    return [f.name for f in fields(MeshConfig)]

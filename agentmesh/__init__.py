"""agentmesh: an asyncio-native distributed actor framework for multi-agent AI systems.

Agents are plain async classes; a `Mesh` hosts them and hands out `AgentRef`s through
which they ask, tell and stop each other. See README.md and docs/ for the concepts.
"""

import logging

from ._private.cluster.directory import NodeInfo
from ._private.config import MeshConfig
from ._private.kernel.agent import Agent
from ._private.kernel.asking import Ask
from ._private.kernel.errors import (
    AgentmeshError,
    AgentNotFound,
    AgentUnavailable,
    AskTimeout,
    AuthError,
    BadArguments,
    MailboxFull,
    NameRequired,
    NameTaken,
    PlacementError,
    RemoteError,
    RestartIntensityExceeded,
    SerializationError,
    SpawnError,
    SpawnManyError,
    StreamMismatch,
    UnknownMethod,
    WrongLoop,
)
from ._private.kernel.exits import Terminated
from ._private.kernel.info import AgentInfo, AgentListing
from ._private.kernel.mailbox import DEFAULT_MAILBOX_SIZE
from ._private.kernel.node import DEFAULT_ASK_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_SLOW_TURN
from ._private.kernel.placing import AwayFrom, DoesNotExist, Exists, In, Near, NotIn, OnNode
from ._private.kernel.ref import AgentRef, MethodRef
from ._private.kernel.reminders import Reminder
from ._private.kernel.state import MemoryStateStore, StateStore
from ._private.kernel.streams import Stream
from ._private.kernel.timers import Timer
from ._private.mesh import Mesh
from ._private.placement.scheduler import DEFAULT_PLACEMENT_TIMEOUT
from ._private.pubsub.bus import DEAD_LETTERS, BusStatistics
from ._private.pubsub.decorator import subscribe
from ._private.pubsub.subscriptions import DeadLetter, TopicStream
from ._private.running import run
from ._private.sqlite_store import SqliteStateStore
from ._private.supervision.spec import Backoff, ChildSpec, SupervisorSpec
from ._private.supervision.supervisor import ChildInfo, Supervisor
from ._private.transport.grpc_transport import TLS
from ._private.virtual import VirtualRef

# A library leaves its output to the application: with no logging configured, nothing
# logged under "agentmesh" reaches stderr through logging's last-resort handler.
logging.getLogger("agentmesh").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentListing",
    "AgentNotFound",
    "AgentRef",
    "AgentUnavailable",
    "AgentmeshError",
    "Ask",
    "AskTimeout",
    "AuthError",
    "AwayFrom",
    "Backoff",
    "BadArguments",
    "BusStatistics",
    "ChildInfo",
    "ChildSpec",
    "DEAD_LETTERS",
    "DEFAULT_ASK_TIMEOUT",
    "DEFAULT_MAILBOX_SIZE",
    "DEFAULT_PLACEMENT_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_SLOW_TURN",
    "DeadLetter",
    "DoesNotExist",
    "Exists",
    "In",
    "MailboxFull",
    "MemoryStateStore",
    "Mesh",
    "MeshConfig",
    "MethodRef",
    "NameRequired",
    "NameTaken",
    "Near",
    "NodeInfo",
    "NotIn",
    "OnNode",
    "PlacementError",
    "Reminder",
    "RemoteError",
    "RestartIntensityExceeded",
    "SerializationError",
    "SpawnError",
    "SpawnManyError",
    "SqliteStateStore",
    "StateStore",
    "Stream",
    "StreamMismatch",
    "Supervisor",
    "SupervisorSpec",
    "TLS",
    "Terminated",
    "Timer",
    "TopicStream",
    "UnknownMethod",
    "VirtualRef",
    "WrongLoop",
    "run",
    "subscribe",
]

"""The typed errors of agentmesh, all under `AgentmeshError`.

Every error pickles with its fields intact, because errors cross nodes inside reply
envelopes just as results do.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentNotFound",
    "AgentUnavailable",
    "AgentmeshError",
    "AskTimeout",
    "AuthError",
    "BadArguments",
    "MailboxFull",
    "NameRequired",
    "NameTaken",
    "PlacementError",
    "RemoteError",
    "RestartIntensityExceeded",
    "SerializationError",
    "SpawnError",
    "SpawnManyError",
    "StreamMismatch",
    "UnknownMethod",
    "WrongLoop",
]


class AgentmeshError(Exception):
    """Base class of every error agentmesh raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce replays only ``args``; keep the typed fields too.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[AgentmeshError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class AskTimeout(AgentmeshError, TimeoutError):
    """An ask got no reply within its timeout.

    The message names the target, the method and, when the agents are waiting on each
    other, the wait cycle. An ask that timed out before its handler started is never
    run; one that had started runs to completion, its result discarded.
    """


class RemoteError(AgentmeshError):
    """An agent's handler raised; carries the remote type, message and traceback.

    Attributes: ``remote_type`` (qualified name of the exception class), ``remote_message``
    (its ``str``), ``remote_traceback`` (the formatted traceback where it was raised), and
    ``agent`` (name or id of the agent whose code raised).
    """

    def __init__(
        self, agent: str, remote_type: str, remote_message: str, remote_traceback: str
    ) -> None:
        super().__init__(f"{remote_type} in agent {agent!r}: {remote_message}")
        self.agent = agent
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        head = super().__str__()
        if not self.remote_traceback:
            return head
        return f"{head}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"


class SpawnError(RemoteError):
    """The agent's constructor or ``on_start`` raised, so the agent never started."""


class SpawnManyError(ExceptionGroup[Exception], AgentmeshError):
    """Some agents of a `Mesh.spawn_many` batch did not start, so none was kept: those
    that had started were stopped before this was raised.

    An `ExceptionGroup` of the failures (``except* am.NameTaken`` works), each error
    once (one may stand for several agents: all those bound for a node that died, say)
    with a note naming their places in the batch; ``failed`` maps every place that
    failed (an index into ``args_list``) to its error, and ``started`` is how many
    agents had started and were stopped again.
    """

    failed: dict[int, Exception]
    started: int

    def __new__(
        cls, message: str, failed: dict[int, Exception], started: int = 0
    ) -> SpawnManyError:
        distinct = {id(exc): exc for exc in failed.values()}  # one may fail several
        self = super().__new__(cls, message, list(distinct.values()))
        self.failed = dict(failed)
        self.started = started
        return self

    def __init__(self, message: str, failed: dict[int, Exception], started: int = 0) -> None:
        super().__init__(message, list({id(exc): exc for exc in failed.values()}.values()))

    def derive(self, excs: Any) -> Any:
        # What `except*` splits off is a plain group (``failed`` would not match it).
        return ExceptionGroup(self.message, excs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.failed, self.started))


class AgentNotFound(AgentmeshError, LookupError):
    """No agent is registered under that name or id."""


class AgentUnavailable(AgentmeshError):
    """The agent is stopped, stopping, crashed, or its node is down.

    ``never_ran`` is True when the message surely reached no handler (the agent had
    ended or was stopping when it arrived, or ended with it still queued), so sending
    it again cannot run it twice; False when that is not known (its node went down,
    or it crashed while the call was running).
    """

    never_ran = False


def refused(reason: str) -> AgentUnavailable:
    """An `AgentUnavailable` for a message that reached no handler (``never_ran``)."""
    err = AgentUnavailable(reason)
    err.never_ran = True
    return err


class NameTaken(AgentmeshError, ValueError):
    """Another live agent already holds that name."""


class NameRequired(AgentmeshError, TypeError):
    """What was asked needs an agent with a name (a durable reminder is kept under
    its agent's name), and this agent has none."""


class UnknownMethod(AgentmeshError, AttributeError):
    """The agent has no public ``async def`` method of that name."""


class StreamMismatch(AgentmeshError, TypeError):
    """A streaming method (an ``async def`` that yields) was asked or told, or a plain
    one called with ``.stream``: the message names the call that fits. The agent did
    not run it. A `TypeError`, as Python's own ``await`` of an async generator is."""


class BadArguments(AgentmeshError, TypeError):
    """The arguments do not fit the method's signature, or fail the validation its
    annotations ask for; the agent did not run it."""


class MailboxFull(AgentmeshError):
    """``*_nowait`` found the target's mailbox (or its node's send window) full."""


class SerializationError(AgentmeshError, TypeError):
    """A payload, argument or result cannot be encoded for the wire (or decoded)."""


class RestartIntensityExceeded(AgentmeshError):
    """A supervisor restarted children more than ``intensity`` times within
    ``period`` seconds, so it stopped them all and exited (escalating to its parent)."""


class PlacementError(AgentmeshError):
    """No node can host the agent; the message says why, node by node."""


class AuthError(AgentmeshError):
    """A peer failed to prove the cluster token, or the token is missing."""


class WrongLoop(AgentmeshError, RuntimeError):
    """A ref (or its mesh) was used from a thread or event loop that is not its mesh's.

    A mesh, its agents and its refs belong to the one event loop the mesh runs on:
    ``await ref.method()`` (or ``tell``, ``tell_nowait``, ``stop``) from another
    thread, or from a loop of another thread's ``asyncio.run``, raises this before
    anything is sent, and leaves the mesh as it was. From another thread, call
    ``ref.method.ask_sync(...)`` or ``ref.method.tell_sync(...)`` instead. Those two
    raise it when called on the mesh's own loop thread, where blocking would deadlock:
    there, ``await`` the call. Also a `RuntimeError`, as asyncio's own "attached to a
    different loop" errors are.
    """

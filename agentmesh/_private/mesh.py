"""`Mesh`: the user's entry point — spawn, get, stop — wired onto one node."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from .kernel.agent import Agent
from .kernel.context import current_node
from .kernel.info import AgentInfo
from .kernel.mailbox import DEFAULT_MAILBOX_SIZE
from .kernel.node import DEFAULT_ASK_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, Node
from .kernel.ref import AgentRef
from .kernel.transport import Transport

__all__ = ["Mesh"]

A = TypeVar("A", bound=Agent)


class Mesh:
    """A mesh of agents; with no address, an embedded one inside this process.

    Use it as an async context manager. Leaving it stops every agent this mesh
    spawned, newest first, each within ``shutdown_timeout`` seconds.

    Options (all keyword-only): ``ask_timeout`` (default 30 s) bounds every ask that
    does not pass its own; ``shutdown_timeout`` (default 5 s) is how long a stopping
    agent may take before it is cancelled; ``mailbox_size`` (default 1000) is the
    capacity of a mailbox when neither the agent class nor `spawn` sets one.

    Example::

        async with am.Mesh() as mesh:
            counter = await mesh.spawn(Counter, 0, name="counter")
            assert await counter.add(2) == 2
    """

    def __init__(
        self,
        *,
        ask_timeout: float = DEFAULT_ASK_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        node_id: str | None = None,
        _transport: Transport | None = None,
    ) -> None:
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, got {mailbox_size}")
        self._node = Node(
            node_id=node_id,
            ask_timeout=ask_timeout,
            shutdown_timeout=shutdown_timeout,
            mailbox_size=mailbox_size,
            transport=_transport,
        )
        self._node.facade = self
        self._entered = False
        self._token: contextvars.Token[Node | None] | None = None

    @property
    def node_id(self) -> str:
        """Id of the node this mesh runs agents on."""
        return self._node.id

    async def __aenter__(self) -> Mesh:
        if self._entered:
            raise RuntimeError("a Mesh can be entered only once")
        self._entered = True
        self._token = current_node.set(self._node)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every agent, newest first; idempotent."""
        if self._node.closed:
            return
        try:
            await self._node.close()
        finally:
            if self._token is not None:
                # Closed from another task or context: nothing to restore there.
                with contextlib.suppress(ValueError):
                    current_node.reset(self._token)
                self._token = None

    def _check_open(self) -> None:
        if not self._entered:
            raise RuntimeError("use the Mesh as 'async with Mesh() as mesh:' before spawning")

    async def spawn(
        self,
        agent_class: type[A] | Callable[..., A],
        /,
        *args: Any,
        name: str | None = None,
        mailbox_size: int | None = None,
        concurrency: int | None = None,
    ) -> AgentRef:
        """Start an agent and return its ref once ``on_start`` has run.

        The agent's own arguments are positional; constructor keywords go through
        ``functools.partial(AgentClass, key=value)``. Options are keyword-only:
        ``name`` (unique in the mesh; `NameTaken` otherwise), ``mailbox_size`` and
        ``concurrency`` (override the class attributes). Raises `SpawnError` if the
        constructor or ``on_start`` raised.
        """
        self._check_open()
        return await self._node.spawn(
            agent_class, args, name=name, mailbox_size=mailbox_size, concurrency=concurrency
        )

    async def get(self, name: str) -> AgentRef:
        """The ref of the agent registered as ``name``; raises `AgentNotFound`."""
        return self._node.lookup(name)

    async def info(self, ref: AgentRef) -> AgentInfo:
        """A frozen snapshot of an agent's state and counters (also after it ended)."""
        return self._node.info(ref)

    async def agents(self) -> list[AgentInfo]:
        """Snapshots of every live agent on this mesh's node, oldest first."""
        return [AgentInfo.of(cell) for cell in self._node.cells.values()]

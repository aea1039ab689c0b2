"""Virtual agents (`Mesh.agent`): one agent per (class, key), activated on demand.

A virtual agent is a named agent whose name comes from its class and key. `Mesh.agent`
gets it, or creates it: the hosting node claims the name cluster-wide before it
builds the instance (`Node.spawn(claim_first=True)`), so of two creators only one
builds it and the other gets its ref. A `VirtualRef` stands for the key rather than
for one activation: when the agent it reached has passivated (stopped after
``idle_after`` idle seconds) or ended, the next call activates it again, wherever
placement puts it, restored from the state store under its name.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from .kernel.context import current_node
from .kernel.errors import (
    AgentmeshError,
    AgentNotFound,
    AgentUnavailable,
    AskTimeout,
    MailboxFull,
    NameTaken,
)
from .kernel.ref import AgentRef
from .kernel.streams import DEFAULT_WINDOW, Stream

if TYPE_CHECKING:
    from .kernel.exits import Terminated
    from .kernel.node import Node
    from .supervision.spec import ChildSpec

__all__ = ["Activations", "VirtualMethod", "VirtualRef", "virtual_name"]

log = logging.getLogger("agentmesh.agent")

#: Activations tried in a row for one call before it gives up (each after the agent
#: it reached has ended, or after another node won the name).
_ATTEMPTS = 8


class MeshPort(Protocol):
    """What virtual agents use of the `Mesh` (the layer above, which imports this)."""

    _node: Node
    _activations: Activations

    async def get(self, name: str) -> AgentRef: ...
    async def wait_terminated(self, ref: AgentRef) -> Terminated: ...
    async def _spawn_virtual(self, spec: ChildSpec) -> AgentRef: ...
    async def _release_name(self, name: str, ref: AgentRef) -> None: ...


def virtual_name(agent_class: Any, key: str) -> str:
    """The name of the virtual agent of ``agent_class`` (a class, or a partial of one)
    for ``key``: ``"<module>.<qualified name>/<key>"``."""
    cls = agent_class.func if isinstance(agent_class, functools.partial) else agent_class
    return f"{cls.__module__}.{cls.__qualname__}/{key}"


class VirtualRef:
    """A handle to the virtual agent of one class and key, from `Mesh.agent`.

    Used as an `AgentRef` is: ``await ref.method(...)``, ``ref.method.ask(...,
    timeout=)``, ``await ref.method.tell(...)``, ``ref.method.tell_nowait(...)``. It
    resolves the key to the agent's current activation, activating it if there is
    none (it passivated, or its node died): a call refused because the activation
    it reached was ending (so it never ran) is sent again to the next one. Refs
    compare and hash by ``name``, and pickle: a copy on another node activates the
    agent from there.
    """

    __slots__ = ("__dict__", "_mesh", "_spec")

    _spec: ChildSpec
    _mesh: MeshPort | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("VirtualRef has no public constructor: use await mesh.agent(Cls, key)")

    @classmethod
    def _create(cls, spec: ChildSpec, mesh: MeshPort | None) -> VirtualRef:
        ref = object.__new__(cls)
        ref._spec = spec
        ref._mesh = mesh
        return ref

    @property
    def name(self) -> str:
        """The agent's name: ``"<module>.<class>/<key>"``."""
        name = self._spec.name
        assert name is not None
        return name

    @property
    def key(self) -> str:
        """The key this ref stands for."""
        key: str = self._spec.args[0]
        return key

    def _bind(self) -> MeshPort:
        mesh = self._mesh
        if mesh is None:
            node = current_node.get()
            if node is None or node.facade is None:
                raise AgentUnavailable(f"{self!r} is not bound to a running mesh")
            mesh = self._mesh = cast("MeshPort", node.facade)
        return mesh

    async def resolve(self) -> AgentRef:
        """The ref of the agent's current activation, activating it if it has none."""
        mesh = self._bind()
        ref = mesh._activations.current.get(self.name)
        return ref if ref is not None else await mesh._activations.resolve(self._spec, None)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the current activation, if any (as `AgentRef.stop`); the next call
        activates the agent again."""
        mesh = self._bind()
        ref = mesh._activations.current.get(self.name)
        if ref is None:
            try:
                ref = await mesh.get(self.name)
            except AgentNotFound:
                return
        await ref.stop(timeout)

    def __getattr__(self, method: str) -> VirtualMethod:
        if method.startswith("__"):
            raise AttributeError(method)
        return self[method]

    def __getitem__(self, method: str) -> VirtualMethod:
        cached: dict[str, VirtualMethod] = self.__dict__
        mref = cached.get(method)
        if mref is None:
            mref = VirtualMethod(self, method)
            if method not in _OWN_NAMES:
                cached[method] = mref
        return mref

    async def _ask(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        mesh = self._bind()
        activations = mesh._activations
        name = self.name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (mesh._node.ask_timeout if timeout is None else timeout)
        ref = activations.current.get(name)
        stale: AgentRef | None = None
        for _ in range(_ATTEMPTS):
            if ref is None:
                ref = await activations.resolve(self._spec, stale, deadline - loop.time())
            left = deadline - loop.time()
            if left <= 0:
                raise AskTimeout(f"ask {name}.{method}() got no reply within its timeout")
            try:
                return await ref._bind().ask(ref, method, args, kwargs, left)
            except AgentUnavailable as exc:
                activations.evict(name, ref)
                if not exc.never_ran:
                    raise  # it may have run: not sent again
                await activations.ended(ref, deadline - loop.time(), exc)
                stale, ref = ref, None
        raise AgentUnavailable(f"virtual agent {name} could not be activated")

    async def _tell(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mesh = self._bind()
        activations = mesh._activations
        name = self.name
        ref = activations.current.get(name)
        stale: AgentRef | None = None
        for _ in range(_ATTEMPTS):
            if ref is None:
                ref = await activations.resolve(self._spec, stale)
            try:
                await ref[method].tell(*args, **kwargs)
                return
            except AgentUnavailable as exc:
                activations.evict(name, ref)
                if not exc.never_ran:
                    raise
                await activations.ended(ref, mesh._node.ask_timeout, exc)
                stale, ref = ref, None
        raise AgentUnavailable(f"virtual agent {name} could not be activated")

    async def _first_item(self, stream: VirtualStream) -> Any:
        """Open ``stream`` on the current activation and take its first item; a call
        refused before it ran goes to the next activation, as an ask does."""
        mesh = self._bind()
        activations = mesh._activations
        name = self.name
        ref = activations.current.get(name)
        stale: AgentRef | None = None
        for _ in range(_ATTEMPTS):
            if ref is None:
                ref = await activations.resolve(self._spec, stale)
            inner = ref[stream.method].stream(
                *stream.args, window=stream.window, item_timeout=stream.item_timeout,
                **stream.kwargs,
            )  # fmt: skip
            stream.inner = inner
            try:
                return await anext(inner)
            except AgentUnavailable as exc:
                activations.evict(name, ref)
                if not exc.never_ran:
                    raise
                await activations.ended(ref, mesh._node.ask_timeout, exc)
                stale, ref = ref, None
        raise AgentUnavailable(f"virtual agent {name} could not be activated")

    def _tell_nowait(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mesh = self._bind()
        ref = mesh._activations.current.get(self.name)
        if ref is None:
            raise MailboxFull(
                f"virtual agent {self.name} is not active here yet: tell() activates it"
            )
        try:
            ref[method].tell_nowait(*args, **kwargs)
        except AgentUnavailable:
            mesh._activations.evict(self.name, ref)
            raise

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VirtualRef):
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_virtual, (self._spec,))

    def __repr__(self) -> str:
        return f"<VirtualRef {self.name}>"


_OWN_NAMES = frozenset(dir(VirtualRef))


def _restore_virtual(spec: ChildSpec) -> VirtualRef:
    node = current_node.get()  # the node decoding it (set by transports), else on use
    facade = None if node is None else node.facade
    return VirtualRef._create(spec, cast("MeshPort | None", facade))


class VirtualMethod:
    """One method of a virtual agent: call it to ask, or ``ask`` / ``tell`` /
    ``tell_nowait``, as a `MethodRef`."""

    __slots__ = ("_method", "_ref")

    def __init__(self, ref: VirtualRef, method: str) -> None:
        self._ref = ref
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Ask with the mesh's default timeout."""
        return self._ref._ask(self._method, args, kwargs, None)

    def ask(
        self, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Ask, waiting at most ``timeout`` seconds in all (activation included)."""
        return self._ref._ask(self._method, args, kwargs, timeout)

    async def tell(self, *args: Any, **kwargs: Any) -> None:
        """Send without waiting for a result (activating the agent if needed)."""
        await self._ref._tell(self._method, args, kwargs)

    def tell_nowait(self, *args: Any, **kwargs: Any) -> None:
        """Send without waiting at all, to the current activation; `MailboxFull` if
        there is none known here yet (``tell()`` activates it) or no room."""
        self._ref._tell_nowait(self._method, args, kwargs)

    def stream(
        self,
        *args: Any,
        window: int = DEFAULT_WINDOW,
        item_timeout: float | None = None,
        **kwargs: Any,
    ) -> VirtualStream:
        """Call a streaming method, as `MethodRef.stream`: ``async for item in
        ref.method.stream(...)``; the agent is activated when iteration starts."""
        return VirtualStream(self._ref, self._method, args, kwargs, window, item_timeout)

    def __repr__(self) -> str:
        return f"<VirtualMethod {self._ref!r}.{self._method}>"


class VirtualStream:
    """A `Stream` from a virtual agent: it opens on the agent's activation when
    iteration starts (sent again to the next activation if refused before it ran),
    then is that activation's stream."""

    __slots__ = ("args", "inner", "item_timeout", "kwargs", "method", "ref", "window")

    def __init__(
        self,
        ref: VirtualRef,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        window: int,
        item_timeout: float | None,
    ) -> None:
        self.ref = ref
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.window = window
        self.item_timeout = item_timeout
        self.inner: Stream[Any] | None = None

    def __aiter__(self) -> VirtualStream:
        return self

    async def __anext__(self) -> Any:
        if self.inner is None:
            return await self.ref._first_item(self)
        return await anext(self.inner)

    async def aclose(self) -> None:
        """Stop the stream (and its producer), as `Stream.aclose`."""
        if self.inner is not None:
            await self.inner.aclose()

    async def __aenter__(self) -> VirtualStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Activations:
    """One mesh's view of the virtual agents it reached: the current activation of
    each name (forgotten when that agent ends), and activations under way."""

    def __init__(self, mesh: MeshPort) -> None:
        self.mesh = mesh
        self.current: dict[str, AgentRef] = {}
        self._pending: dict[str, asyncio.Future[AgentRef]] = {}

    def evict(self, name: str, ref: AgentRef) -> None:
        """Forget ``ref`` as ``name``'s activation (it ended, or is unreachable)."""
        if self.current.get(name) == ref:
            del self.current[name]

    async def ended(self, ref: AgentRef, timeout: float, error: AgentmeshError) -> None:
        """Wait until the activation ``ref`` has ended (it refused a message as it
        was ending); raise ``error`` if it has not within ``timeout``."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self.mesh.wait_terminated(ref)
        except TimeoutError:
            raise error from None

    async def resolve(
        self, spec: ChildSpec, stale: AgentRef | None, timeout: float | None = None
    ) -> AgentRef:
        """The current activation of ``spec``'s agent, got or created (one at a time
        per name here, in a task of its own: a caller that gives up after ``timeout``
        seconds, `AskTimeout`, leaves it to finish); ``stale`` is an activation that
        has ended, whose name may not be released yet."""
        name = spec.name
        assert name is not None
        task = self._pending.get(name)
        if task is None:
            # In a context of its own: the activation is no turn of the caller's.
            task = asyncio.get_running_loop().create_task(
                self._activate(spec, name, stale), context=contextvars.Context()
            )
            self._pending[name] = task
            task.add_done_callback(functools.partial(self._activated, name))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            if task.done():
                raise
            raise AskTimeout(
                f"virtual agent {name} was not activated within {timeout:g}s"
            ) from None

    def _activated(self, name: str, task: asyncio.Task[AgentRef]) -> None:
        if self._pending.get(name) is task:
            del self._pending[name]
        if not task.cancelled():
            task.exception()  # retrieved, even if every caller gave up

    async def _activate(self, spec: ChildSpec, name: str, stale: AgentRef | None) -> AgentRef:
        ref = await self._resolve(spec, name, stale)
        self._watch(name, ref)
        return ref

    async def _resolve(self, spec: ChildSpec, name: str, stale: AgentRef | None) -> AgentRef:
        mesh = self.mesh
        error: AgentmeshError | None = None
        for _ in range(_ATTEMPTS):
            try:
                holder: AgentRef | None = await mesh.get(name)
            except AgentNotFound:
                holder = None
            if holder is not None and holder != stale:
                return holder
            if holder is not None:
                # It has ended, but the head has not heard yet: release its name.
                await mesh._release_name(name, holder)
            try:
                return await mesh._spawn_virtual(spec)
            except NameTaken as exc:  # another node's activation won: look again
                error = exc
        raise AgentUnavailable(f"virtual agent {name} could not be activated: {error}")

    def _watch(self, name: str, ref: AgentRef) -> None:
        """Cache ``ref`` as ``name``'s activation until it ends."""
        if self.current.get(name) == ref:
            return
        self.current[name] = ref
        ended: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ended.add_done_callback(lambda _: self.evict(name, ref))
        try:
            self.mesh._node.monitor(ref, ended)
        except AgentmeshError as exc:  # its node is gone already
            log.debug("cannot watch %s: %s", ref, exc)
            self.evict(name, ref)

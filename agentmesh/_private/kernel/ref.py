"""`AgentRef`: the location-transparent handle to an agent, and `MethodRef`."""

from __future__ import annotations

from _thread import get_ident
from typing import TYPE_CHECKING, Any

from . import tracing
from .asking import Ask
from .context import current_cell, current_node
from .envelope import NO_KWARGS, Envelope, chains
from .errors import AgentUnavailable, MailboxFull, UnknownMethod
from .streams import DEFAULT_WINDOW, Stream
from .threads import THREAD_GRACE, call_from_thread

if TYPE_CHECKING:
    from .cell import Cell
    from .node import Node
    from .transport import Route

__all__ = ["AgentRef", "MethodRef"]

_new = object.__new__


class AgentRef:
    """A handle to one agent, wherever it lives; obtained from `spawn` or `get`.

    ``await ref.method(*args)`` asks (waits for the result, within the mesh's ask
    timeout); ``ref.method.ask(..., timeout=s)``, ``await ref.method.tell(...)`` and
    ``ref.method.tell_nowait(...)`` are the other ways to send, and ``async for item
    in ref.method.stream(...)`` takes the items of a method that yields. ``ref["name"]``
    reaches a method whose name the ref itself uses (``stop``, ``id``, ``name``, ``node``).

    Refs are hashable, ordered by agent id, and picklable: a ref sent inside a message
    to another node still reaches the same agent, also after that agent restarts.
    """

    # MethodRefs are cached in __dict__ (made on first use), so that after the first
    # ``ref.method`` the plain attribute lookup finds them: __getattr__ runs only after
    # a failed lookup, which costs an AttributeError each time.
    __slots__ = ("__dict__", "_cell", "_id", "_name", "_node", "_node_id", "_route")

    _id: str
    _name: str | None
    _node_id: str
    _node: Node | None
    _cell: Cell | None
    #: The transport's fast path to a remote agent, set by the node after a tell.
    _route: Route | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("AgentRef has no public constructor: use mesh.spawn() or mesh.get()")

    @classmethod
    def _create(cls, agent_id: str, name: str | None, node_id: str, node: Node | None) -> AgentRef:
        ref = object.__new__(cls)
        ref._id = agent_id
        ref._name = name
        ref._node_id = node_id
        ref._node = node
        ref._cell = None
        ref._route = None
        return ref

    @property
    def id(self) -> str:
        """The agent's unique id (stable across restarts)."""
        return self._id

    @property
    def name(self) -> str | None:
        """The agent's registered name, or None."""
        return self._name

    @property
    def node(self) -> str:
        """Id of the node the agent was last known to live on."""
        return self._node_id

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the agent: it handles what is already queued, then runs ``on_stop``.

        New messages are refused with `AgentUnavailable` from the moment the stop
        begins. After ``timeout`` seconds (default: the mesh's shutdown timeout) the
        agent is cancelled. Stopping a stopped agent does nothing.
        """
        await self._bind().stop_agent(self, timeout)

    def _bind(self) -> Node:
        node = self._node
        if node is None:
            node = current_node.get()
            if node is None:
                raise AgentUnavailable(f"{self!r} is not bound to a running mesh")
            self._node = node
        return node

    def __getattr__(self, method: str) -> MethodRef:
        if method.startswith("__"):
            raise AttributeError(method)
        return self[method]

    def __getitem__(self, method: str) -> MethodRef:
        cached: dict[str, MethodRef] = self.__dict__
        mref = cached.get(method)
        if mref is None:
            cell = self._cell
            if method.startswith("!"):
                raise UnknownMethod(f"{method!r} is the framework's, not a method to call")
            if cell is not None and not cell.methods.callable(method):
                raise cell.methods.unknown(method)
            mref = MethodRef(self, method)
            if method not in _OWN_NAMES:  # never shadow the ref's own stop(), id ...
                cached[method] = mref
        return mref

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AgentRef):
            return self._id == other._id
        return NotImplemented

    def __lt__(self, other: AgentRef) -> bool:
        return self._id < other._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_ref, (self._id, self._name, self._node_id))

    def __repr__(self) -> str:
        label = self._name if self._name is not None else self._id
        return f"<AgentRef {label}@{self._node_id}>"


_OWN_NAMES = frozenset(dir(AgentRef))


def _restore_ref(agent_id: str, name: str | None, node_id: str) -> AgentRef:
    # Bind to the node decoding this ref (set by transports), else on first use.
    return AgentRef._create(agent_id, name, node_id, current_node.get())


class MethodRef:
    """One method of one agent: call it to ask, or use ``ask``/``tell``/``tell_nowait``,
    or ``stream`` for a method that yields."""

    __slots__ = ("_cell", "_method", "_ref")

    def __init__(self, ref: AgentRef, method: str) -> None:
        self._ref = ref
        self._method = method
        # The agent's cell once the ref knows it (it never changes then): read here,
        # where the lookup is cached, rather than through the ref, whose __getattr__
        # makes every attribute read on it a slow one (CPython 3.11 does not
        # specialize attribute reads on a class with __getattr__).
        self._cell: Cell | None = ref._cell

    def __call__(self, *args: Any, **kwargs: Any) -> Ask:
        """Ask with the mesh's default timeout: ``await ref.method(*args, **kwargs)``.
        The call is sent now; see `ask`."""
        cell = self._cell
        if cell is None:
            ref = self._ref
            cell = self._cell = ref._cell
            if cell is None:
                return ref._bind().ask(ref, self._method, args, kwargs, None)
        return cell.node.ask(self._ref, self._method, args, kwargs, None, cell)

    def ask(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Ask:
        """Send the call now; the `Ask` returned gives its result when awaited, within
        ``timeout`` seconds (default: the mesh's ask timeout), else `AskTimeout`.

        An `Ask` is a future: ``asyncio.gather`` over many asks waits on them with no
        task each; ``create_task`` takes it too. Awaiting it raises `RemoteError` if
        the handler raised, `UnknownMethod` / `BadArguments` for a call the agent
        cannot take, `AgentUnavailable` if it stopped. Cancelling it (or the task
        awaiting it) cancels the call: never run if still queued, else its handler
        gets CancelledError.
        """
        cell = self._cell
        if cell is None:
            ref = self._ref
            cell = self._cell = ref._cell
            if cell is None:
                return ref._bind().ask(ref, self._method, args, kwargs, timeout)
        return cell.node.ask(self._ref, self._method, args, kwargs, timeout, cell)

    def stream(
        self,
        *args: Any,
        window: int = DEFAULT_WINDOW,
        item_timeout: float | None = None,
        **kwargs: Any,
    ) -> Stream[Any]:
        """Call a streaming method (an ``async def`` that yields) and take its items
        as they come: ``async for item in ref.method.stream(*args, **kwargs)``.

        The call is sent when the iteration starts. The producer is at most ``window``
        items ahead of the consumer (it waits at its ``yield`` meanwhile); each item is
        awaited at most ``item_timeout`` seconds (default: the mesh's ask timeout),
        else `AskTimeout`. Leaving the loop, ``aclose()`` or cancelling the consumer
        stops the producer. See `Stream` for the errors.
        """
        return Stream(self._ref, self._method, args, kwargs, window, item_timeout)

    def _offer_remote(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Queue a tell on the stream to the agent's node if that needs no waiting
        (the cached route's fast path); False if it goes the way of an envelope."""
        ref = self._ref
        route = ref._route
        if route is None or tracing.hooks is not None:  # a traced tell: an Envelope
            return False
        # The loop check, as in `tell`: the stream's buffer belongs to the loop too.
        sender = current_cell.get()
        node = ref._node
        if (
            node is not None
            and (sender is None or sender.node is not node)
            and get_ident() != node.thread
        ):
            node.wrong_loop("tell", ref, self._method)
        return route.offer_tell(
            ref._id, self._method, args, kwargs, None if sender is None else sender.id
        )

    async def tell(self, *args: Any, **kwargs: Any) -> None:
        """Send without waiting for a result; waits only for room in the mailbox."""
        cell = self._cell
        if cell is None:
            ref = self._ref
            cell = self._cell = ref._cell
            if cell is None:
                if not self._offer_remote(args, kwargs):
                    await ref._bind().tell(ref, self._method, args, kwargs)
                return
        # _tell_here, inlined: this runs once per local tell (see there).
        sender = current_cell.get()
        node = cell.node
        if (sender is None or sender.node is not node) and get_ident() != node.thread:
            node.wrong_loop("tell", self._ref, self._method)
        env: Envelope = _new(Envelope)
        env.target = cell.id
        env.method = self._method
        env.args = args
        env.kwargs = kwargs or NO_KWARGS
        env.reply = None
        env.chain = next(chains)
        env.sender = None if sender is None else sender.id
        env.deadline = 0.0
        if tracing.hooks is not None:
            env = tracing.hooks.tell(env, cell.label, node.id)
        if not cell.offer(env):
            await cell.post(env)

    def tell_nowait(self, *args: Any, **kwargs: Any) -> None:
        """Send without waiting at all; raises `MailboxFull` if there is no room."""
        cell = self._cell
        if cell is None:
            ref = self._ref
            cell = self._cell = ref._cell
            if cell is None:
                if not self._offer_remote(args, kwargs):
                    ref._bind().tell_nowait(ref, self._method, args, kwargs)
                return
        env = self._tell_here(cell, args, kwargs, "tell_nowait")
        if not cell.offer(env):
            raise MailboxFull(
                f"mailbox of {self._ref!r} is full ({cell.mailbox.capacity} messages)"
            )

    def _tell_here(
        self, cell: Cell, args: tuple[Any, ...], kwargs: dict[str, Any], what: str
    ) -> Envelope:
        """The envelope of a tell to an agent of this node, after the loop check."""
        # The loop check: another thread's tell would reach the mailbox behind the
        # loop's back (a wake-up on the wrong loop, or a lost one). An agent of this
        # node runs on its loop, so only a driver (or a thread: no agent there) pays
        # for asking the thread id, tens of ns on a tell of ~1 us.
        sender = current_cell.get()
        node = cell.node
        if (sender is None or sender.node is not node) and get_ident() != node.thread:
            node.wrong_loop(what, self._ref, self._method)
        # Field by field: cheaper than Envelope(...), whose __init__ is a Python call
        # (this runs once per tell).
        env = _new(Envelope)
        env.target = cell.id
        env.method = self._method
        env.args = args
        env.kwargs = kwargs or NO_KWARGS
        env.reply = None
        env.chain = next(chains)
        env.sender = None if sender is None else sender.id
        env.deadline = 0.0
        if tracing.hooks is not None:
            return tracing.hooks.tell(env, cell.label, node.id)
        return env

    def ask_sync(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Ask from another thread than the mesh's loop, blocking it until the result.

        For code that is not on the mesh's event loop: a web request handler (Flask,
        Django), a worker thread. The ask is made on the mesh's loop, as ``await
        ref.method.ask(...)`` would be, and this thread waits: same result, same errors
        (`RemoteError`, `AskTimeout` after ``timeout`` seconds, default the mesh's
        ``ask_timeout``, `AgentUnavailable` ...). Calls one thread makes one after the
        other arrive in that order. Thread-safe; raises `WrongLoop` on the mesh's own
        loop thread, where waiting would deadlock (``await`` there).

        Example::

            def handler(request):  # in a web server's thread
                return {"balance": alice.balance.ask_sync(timeout=2.0)}
        """
        ref = self._ref
        node = ref._bind()
        method = self._method
        wait = (node.ask_timeout if timeout is None else timeout) + THREAD_GRACE

        def ask() -> Ask:
            return node.ask(ref, method, args, kwargs, timeout)

        return call_from_thread(node, ask, wait, f"ask_sync {ref.name or ref.id}.{method}()")

    def tell_sync(self, *args: Any, **kwargs: Any) -> None:
        """Tell from another thread than the mesh's loop, blocking it until the message
        is in the agent's mailbox (as ``await ref.method.tell(...)``: it waits for room).

        Raises `AgentUnavailable` if the agent stopped (or the mesh ends meanwhile),
        `WrongLoop` on the mesh's own loop thread. Tells one thread makes one after the
        other are handled in that order.
        """
        ref = self._ref
        node = ref._bind()
        call = f"tell_sync {ref.name or ref.id}.{self._method}()"
        call_from_thread(node, lambda: self.tell(*args, **kwargs), None, call)

    def __repr__(self) -> str:
        return f"<MethodRef {self._ref!r}.{self._method}>"

"""Which methods of an agent class others may call, computed once per class."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from .arguments import resolved_hints, validating
from .errors import AgentmeshError, StreamMismatch, UnknownMethod

__all__ = ["STREAM_SUFFIX", "Handler", "MethodTable", "Producer"]

Handler = Callable[..., Coroutine[Any, Any, Any]]
#: A streaming method: an ``async def`` that yields.
Producer = Callable[..., AsyncGenerator[Any, None]]

#: A stream call's envelope names its method so (``generate.stream``): no handler has
#: such a name (it is no identifier), so a turn finds none, and a stream call never
#: runs a plain method, nor an ask a streaming one.
STREAM_SUFFIX = ".stream"


class MethodTable:
    """The public ``async def`` methods of one agent class, by name: ``handlers``
    (coroutine functions, asked and told) and ``streams`` (async generator functions,
    called with ``.stream``).

    Names starting with ``_`` are private, and names the `Agent` base class defines
    (hooks, ``ref``, ``publish`` …) belong to the framework: neither is callable.
    A method with parameters to validate (see arguments.py) is held as its validating
    wrapper; any other as the class's own function.
    """

    __slots__ = ("cls_name", "handlers", "plain", "reserved", "starts_now", "streams", "topics")

    def __reduce__(self) -> tuple[Any, ...]:
        # Kept on its class (`method_table`): a class pickled by value (cloudpickle, a
        # script's class sent to another node) takes None along, not its validators.
        return (type(None), ())

    def __init__(self, cls: type, reserved: frozenset[str]) -> None:
        self.cls_name = cls.__qualname__
        self.reserved = reserved
        self.handlers: dict[str, Handler] = {}
        self.streams: dict[str, Producer] = {}
        self.plain: set[str] = set()  # public methods that are not async
        self.topics = False  # some method takes publications (``@subscribe``)
        #: Nothing to await to start an instance (no on_start or restore): set by
        #: `method_table`, which knows the Agent base class.
        self.starts_now = False
        for name in dir(cls):
            attr = inspect.getattr_static(cls, name)
            if hasattr(attr, "__am_subscriptions__"):
                self.topics = True
            if name.startswith("_") and self.topics and hasattr(attr, "__am_subscriptions__"):
                # A private topic handler: reachable by its publications, not by asks.
                self.handlers["!" + name] = attr
                continue
            if name.startswith("_") or name in reserved:
                continue
            if isinstance(attr, staticmethod | classmethod):
                continue
            if inspect.isasyncgenfunction(attr):
                self.streams[name] = attr
            elif inspect.iscoroutinefunction(attr):
                self.handlers[name] = attr
            elif inspect.isfunction(attr):
                self.plain.add(name)
        validate = getattr(cls, "_am_validate", None)
        if validate is not False:
            calls = {**self.handlers, **self.streams}  # streaming methods are validated too
            for name, hints in resolved_hints(cls, calls, validate is True).items():
                table = self.streams if name in self.streams else self.handlers
                table[name] = validating(cls, name, table[name], hints)
        # Framework notices ("!terminated", ...) reach framework methods; a "!" name
        # is never a Python identifier, so no user method can collide with one.
        for notice, method in getattr(cls, "_am_notices", {}).items():
            self.handlers[notice] = getattr(cls, method)

    def __contains__(self, name: str) -> bool:
        return name in self.handlers

    def callable(self, name: str) -> bool:
        """Whether ``name`` is a method others may call (ask, tell or stream)."""
        return name in self.handlers or name in self.streams

    def unknown(self, name: str) -> AgentmeshError:
        """The error for calling ``name``, saying why it is not callable: `UnknownMethod`,
        or `StreamMismatch` for a streaming method asked or told, or a plain one
        streamed (``name`` ends with `STREAM_SUFFIX`)."""
        where = f"{self.cls_name}.{name}"
        if name in self.streams:
            return StreamMismatch(
                f"{where} is a streaming method (an async def that yields): iterate it "
                f"with 'async for item in ref.{name}.stream(...)', not await or tell it"
            )
        if name.endswith(STREAM_SUFFIX):
            plain = name[: -len(STREAM_SUFFIX)]
            if plain in self.handlers:
                return StreamMismatch(
                    f"{self.cls_name}.{plain} is not a streaming method (it does not "
                    f"yield): call it with 'await ref.{plain}(...)', not .stream()"
                )
            if plain in self.streams:  # a streaming method, but not called as a stream
                return UnknownMethod(f"{self.cls_name} has no public async method {name!r}")
            return self._unknown(plain)
        return self._unknown(name)

    def _unknown(self, name: str) -> UnknownMethod:
        where = f"{self.cls_name}.{name}"
        if name.startswith("_"):
            why = f"{where} is private: only public async methods can be called"
        elif name in self.plain:
            why = f"{where} is not async: only 'async def' methods can be called as messages"
        elif name in self.reserved:
            why = f"{where} belongs to the framework and cannot be called as a message"
        else:
            why = f"{self.cls_name} has no public async method {name!r}"
            public = sorted(n for n in [*self.handlers, *self.streams] if not n.startswith("!"))
            if public:
                why += f" (it has: {', '.join(public)})"
        return UnknownMethod(why)

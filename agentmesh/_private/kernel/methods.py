"""Which methods of an agent class others may call, computed once per class."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from .arguments import resolved_hints, validating
from .errors import UnknownMethod

__all__ = ["Handler", "MethodTable"]

Handler = Callable[..., Coroutine[Any, Any, Any]]


class MethodTable:
    """The public ``async def`` methods of one agent class, by name.

    Names starting with ``_`` are private, and names the `Agent` base class defines
    (hooks, ``ref``, ``publish`` …) belong to the framework: neither is callable.
    A method with parameters to validate (see arguments.py) is held as its validating
    wrapper; any other as the class's own function.
    """

    __slots__ = ("cls_name", "generators", "handlers", "plain", "reserved")

    def __init__(self, cls: type, reserved: frozenset[str]) -> None:
        self.cls_name = cls.__qualname__
        self.reserved = reserved
        self.handlers: dict[str, Handler] = {}
        self.plain: set[str] = set()  # public methods that are not async
        self.generators: set[str] = set()  # public async generators ('async def' + yield)
        for name in dir(cls):
            attr = inspect.getattr_static(cls, name)
            if name.startswith("_") and hasattr(attr, "__am_subscriptions__"):
                # A private topic handler: reachable by its publications, not by asks.
                self.handlers["!" + name] = attr
                continue
            if name.startswith("_") or name in reserved:
                continue
            if isinstance(attr, staticmethod | classmethod):
                continue
            if inspect.iscoroutinefunction(attr):
                self.handlers[name] = attr
            elif inspect.isasyncgenfunction(attr):
                self.generators.add(name)
            elif inspect.isfunction(attr):
                self.plain.add(name)
        validate = getattr(cls, "_am_validate", None)
        if validate is not False:
            for name, hints in resolved_hints(cls, self.handlers, validate is True).items():
                self.handlers[name] = validating(cls, name, self.handlers[name], hints)
        # Framework notices ("!terminated", ...) reach framework methods; a "!" name
        # is never a Python identifier, so no user method can collide with one.
        for notice, method in getattr(cls, "_am_notices", {}).items():
            self.handlers[notice] = getattr(cls, method)

    def __contains__(self, name: str) -> bool:
        return name in self.handlers

    def unknown(self, name: str) -> UnknownMethod:
        """The error for calling ``name``, saying why it is not callable."""
        where = f"{self.cls_name}.{name}"
        if name.startswith("_"):
            why = f"{where} is private: only public async methods can be called"
        elif name in self.plain:
            why = f"{where} is not async: only 'async def' methods can be called as messages"
        elif name in self.generators:
            why = (
                f"{where} is an async generator ('async def' with 'yield'): it cannot be "
                "called as an ask or a tell"
            )
        elif name in self.reserved:
            why = f"{where} belongs to the framework and cannot be called as a message"
        else:
            why = f"{self.cls_name} has no public async method {name!r}"
            public = sorted(n for n in self.handlers if not n.startswith("!"))
            if public:
                why += f" (it has: {', '.join(public)})"
        return UnknownMethod(why)

"""Validated arguments: an agent method whose parameters are annotated with pydantic
models (any annotated parameter, for a class spawned with ``validate=True``) gets a
wrapper, built once per class, that validates each call's arguments before it runs.

A method with nothing to validate keeps its own function in the method table, so an
unannotated handler pays nothing. The wrapper is a plain function returning the
method's coroutine: a failed validation raises `BadArguments` (a TypeError) where the
call is made, as a call that does not fit the signature does, so the cell refuses it
the same way (the asker gets the error, a tell becomes a dead letter) and the method's
code never runs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from .errors import BadArguments

__all__ = ["Check", "resolved_hints", "validating"]

#: Validates one argument (and says where it was in ``*args`` or ``**kwargs``): returns
#: the value to pass (a dict becomes its model), or raises `BadArguments`.
Check = Callable[[Any, int | str | None], Any]

_EMPTY = inspect.Parameter.empty
_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD
#: Types whose exact instances pydantic passes through unchanged.
_SCALARS = (int, float, str, bytes, bool)
log = logging.getLogger("agentmesh.agent")

#: How many of pydantic's errors a `BadArguments` message lists.
_MAX_ERRORS = 5
_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40


def resolved_hints(
    cls: type, handlers: Mapping[str, Callable[..., Any]], everything: bool
) -> dict[str, dict[str, Any]]:
    """The annotations to validate, by method and parameter, evaluated (strings too).

    Kept on the class itself (``_am_hints``, its own ``__dict__``), so a class that
    travels to another node by value (cloudpickle, from a script's ``__main__``)
    takes them along: there the names its annotations use may not exist. An
    annotation that cannot be evaluated (a name imported under TYPE_CHECKING only)
    is a TypeError with ``everything`` (the class asked for every argument to be
    checked); otherwise that parameter goes unchecked, with a warning.
    """
    hints: dict[str, dict[str, Any]] | None = cls.__dict__.get("_am_hints")
    if hints is not None:
        return hints
    hints = {}
    for name, func in handlers.items():
        if name.startswith("!"):
            continue  # framework notices and private topic handlers: no callers to check
        checked = {}
        for param, annotation in _annotations(cls, name, func, everything).items():
            if annotation is Any or annotation is object:
                continue  # takes anything
            if everything or _involves_model(annotation):
                checked[param] = annotation
        if checked:
            hints[name] = checked
    type.__setattr__(cls, "_am_hints", hints)
    return hints


def _annotations(cls: type, name: str, func: Callable[..., Any], strict: bool) -> dict[str, Any]:
    """Each annotated parameter's annotation (``self`` and the return excepted), strings
    and forward references evaluated where the method was defined (then, failing
    that, among the names of its class: a model nested in the agent class)."""
    params = list(inspect.signature(func).parameters.values())[1:]  # [0] is self
    annotated = {p.name: p.annotation for p in params if p.annotation is not _EMPTY}
    if not annotated:
        return annotated
    globalns = getattr(inspect.unwrap(func), "__globals__", {})
    owner = next((c for c in cls.__mro__ if c.__dict__.get(name) is func), cls)
    found = {}
    for param, annotation in annotated.items():
        holder = types.SimpleNamespace(__annotations__={param: annotation})
        try:
            try:
                hints = typing.get_type_hints(holder, globalns, None, include_extras=True)
            except NameError:
                scope = {**vars(owner), owner.__name__: owner}
                hints = typing.get_type_hints(holder, globalns, scope, include_extras=True)
        except Exception as exc:
            problem = (
                f"cannot evaluate the annotation {annotation!r} of parameter {param!r} of "
                f"{cls.__qualname__}.{name} ({type(exc).__name__}: {exc})"
            )
            if strict:
                raise TypeError(
                    f"{problem}, which agentmesh needs to validate its arguments "
                    "(validate=True): define that type at module level (not under "
                    "TYPE_CHECKING), or define the class with validate=False"
                ) from exc
            log.warning(
                "%s: that argument is not validated; define the type at module level (not "
                "under TYPE_CHECKING) to have it checked, or define the class with "
                "validate=False to say so",
                problem,
            )
            continue
        found[param] = hints[param]
    return found


def _involves_model(annotation: Any) -> bool:
    """Whether a pydantic model is in ``annotation``: ``Model``, ``list[Model]``,
    ``Model | None``, ``dict[str, Model]``, ``Annotated[Model, ...]`` ..."""
    if isinstance(annotation, type):
        return issubclass(annotation, pydantic.BaseModel)
    return any(_involves_model(arg) for arg in typing.get_args(annotation))


def validating(
    cls: type, name: str, func: Callable[..., Any], hints: dict[str, Any]
) -> Callable[..., Any]:
    """``func`` behind a function of the same signature that validates the parameters
    ``hints`` names, then calls it: each item of ``*args`` and each value of
    ``**kwargs`` one by one; a parameter left to its default is not checked.

    The function is generated (as `dataclasses` does): it costs one call and one
    check per validated argument. Having ``func``'s very signature, it refuses a call
    that does not fit it with the TypeError ``func`` itself would raise.
    """
    params = list(inspect.signature(func).parameters.values())
    taken = {param.name for param in params}
    scope: dict[str, Any] = {}

    def fresh(base: str, value: Any) -> str:
        """A name no parameter has, for ``value`` in the generated code's scope."""
        while base in taken:
            base += "_"
        taken.add(base)
        scope[base] = value
        return base

    target = fresh("_am_method", func)
    item = fresh("_am_item", None)
    key = fresh("_am_key", None)
    count = fresh("_am_enumerate", enumerate)
    signature: list[str] = []
    forward: list[str] = []
    body: list[str] = []
    star = False  # whether the signature has had its * (or *args)
    for index, param in enumerate(params):
        kind, text = param.kind, param.name
        if kind is _VAR_POSITIONAL:
            star, text = True, "*" + text
        elif kind is _VAR_KEYWORD:
            text = "**" + text
        elif kind is _KEYWORD_ONLY and not star:
            star = True
            signature.append("*")
        forward.append(f"{text}={text}" if kind is _KEYWORD_ONLY else text)
        default = None
        if param.default is not _EMPTY:
            default = fresh(f"_am_default_{index}", param.default)
            text += f"={default}"
        signature.append(text)
        if kind is _POSITIONAL_ONLY and (
            index + 1 == len(params) or params[index + 1].kind is not _POSITIONAL_ONLY
        ):
            signature.append("/")
        if index == 0 or param.name not in hints:
            continue  # [0] is self
        what = f"argument {param.name!r} of {cls.__qualname__}.{name}"
        check = fresh(f"_am_check_{index}", _checker(what, param.name, hints[param.name]))
        if kind is _VAR_POSITIONAL:
            pairs = f"{key}, {item} in {count}({param.name})"
            body.append(f"{param.name} = [{check}({item}, {key}) for {pairs}]")
        elif kind is _VAR_KEYWORD:
            pairs = f"{key}, {item} in {param.name}.items()"
            body.append(f"{param.name} = {{{key}: {check}({item}, {key}) for {pairs}}}")
        elif default is not None:
            body.append(f"if {param.name} is not {default}: {param.name} = {check}({param.name})")
        else:
            body.append(f"{param.name} = {check}({param.name})")
    source = "\n    ".join(
        [f"def call({', '.join(signature)}):", *body, f"return {target}({', '.join(forward)})"]
    )
    exec(compile(source, f"<validated {cls.__qualname__}.{name}>", "exec"), scope)
    call: Callable[..., Any] = scope["call"]
    code = call.__code__
    call.__code__ = code.replace(co_name=func.__name__, co_qualname=func.__qualname__)
    functools.update_wrapper(call, func)
    # What pub/sub reads of a handler: the evaluated annotations, also on a node where
    # the names they use do not exist (a class shipped by value).
    call.__annotations__ = {**getattr(func, "__annotations__", {}), **hints}
    return call


def _checker(what: str, param: str, annotation: Any) -> Check:
    """Validates one parameter's argument into ``annotation`` with a `TypeAdapter`
    built now, once. A value of the very type annotated, when pydantic would pass it
    as it is (a model it does not revalidate, a plain ``int`` ...), skips pydantic."""
    adapter = _adapter(what, annotation)
    validate = adapter.validate_python
    as_is: Any = None
    if any(annotation is scalar for scalar in _SCALARS) or (
        isinstance(annotation, type)
        and issubclass(annotation, pydantic.BaseModel)
        and annotation.model_config.get("revalidate_instances", "never") == "never"
    ):
        as_is = annotation
    described = _type_name(annotation)

    def check(value: Any, at: int | str | None = None) -> Any:
        """``at``: the position in ``*args``, or the key in ``**kwargs``."""
        if type(value) is as_is:
            return value
        try:
            return validate(value)
        except pydantic.ValidationError as exc:
            path = param if at is None else f"{param}[{at!r}]"
            raise BadArguments(_explain(what, path, described, exc)) from None
        except Exception as exc:  # a validator that raised something else
            raise BadArguments(
                f"{what} failed validation as {described}: {type(exc).__name__}: {exc}"
            ) from None

    return check


def _adapter(what: str, annotation: Any) -> pydantic.TypeAdapter[Any]:
    try:
        return pydantic.TypeAdapter(annotation)
    except pydantic.PydanticSchemaGenerationError:
        pass  # a class pydantic has no schema for: checked with isinstance
    except Exception as exc:
        raise _unusable(what, annotation, exc) from exc
    try:
        config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        return pydantic.TypeAdapter(annotation, config=config)
    except Exception as exc:
        raise _unusable(what, annotation, exc) from exc


def _unusable(what: str, annotation: Any, exc: Exception) -> TypeError:
    return TypeError(
        f"cannot validate {what} as {annotation!r} ({type(exc).__name__}: {exc}); "
        "change the annotation, or define the class with validate=False"
    )


def _explain(what: str, path: str, described: str, exc: pydantic.ValidationError) -> str:
    """``argument 'order' of Shop.place is not a valid Order: order.lines[0].qty: Input
    should be a valid integer (input: 'x')``: each error's path from the parameter,
    and pydantic's message."""
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:_MAX_ERRORS]:
        where = path + "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        )
        part = f"{where}: {error['msg']}"
        if error["type"] != "missing":
            part += f" (input: {_short.repr(error['input'])})"
        parts.append(part)
    if len(errors) > _MAX_ERRORS:
        parts.append(f"and {len(errors) - _MAX_ERRORS} more")
    return f"{what} is not a valid {described}: " + "; ".join(parts)


def _type_name(annotation: Any) -> str:
    """A short name for a type: ``Order``, ``list[Order]``, ``Order | None``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None and args:
        head = getattr(origin, "__qualname__", None) or repr(origin).removeprefix("typing.")
        return f"{head}[{', '.join(_type_name(arg) for arg in args)}]"
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).removeprefix("typing.")

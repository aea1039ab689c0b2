"""Codecs: how one value travels. Pydantic models as JSON, protobuf messages natively,
anything else with cloudpickle (which also ships classes defined in ``__main__``)."""

from __future__ import annotations

import importlib
from typing import Any

import cloudpickle
import pydantic
from google.protobuf import symbol_database
from google.protobuf.message import Message

from ...v1 import wire_pb2
from ..kernel import pickling
from ..kernel.errors import SerializationError

__all__ = ["MAX_VALUE_BYTES", "decode", "encode"]

#: The largest encoded value accepted, either way (a frame holds many of them).
MAX_VALUE_BYTES = 32 * 1024 * 1024


def encode(value: Any) -> wire_pb2.Value:
    """Encode one value; raises `SerializationError` if it cannot travel."""
    try:
        if isinstance(value, pydantic.BaseModel) and _importable(type(value)):
            kind = type(value)
            codec = f"json:{kind.__module__}:{kind.__qualname__}"
            data = value.model_dump_json().encode()
        elif isinstance(value, Message):
            codec = f"proto:{value.DESCRIPTOR.full_name}"
            data = value.SerializeToString()
        else:
            codec, data = "pickle", pickling.dumps(value)
    except Exception as exc:
        raise SerializationError(
            f"cannot encode {type(value).__qualname__}: {type(exc).__name__}: {exc}"
        ) from exc
    if len(data) > MAX_VALUE_BYTES:
        raise SerializationError(
            f"{type(value).__qualname__} encodes to {len(data):,} bytes, "
            f"more than the {MAX_VALUE_BYTES:,} allowed"
        )
    return wire_pb2.Value(codec=codec, data=data)


def _importable(kind: type) -> bool:
    # A class defined in a script's __main__ does not exist on the other side:
    # send it with cloudpickle, which ships the class by value.
    return kind.__module__ != "__main__" and "<locals>" not in kind.__qualname__


def decode(value: wire_pb2.Value) -> Any:
    """Decode one value; raises `SerializationError` if it cannot be decoded."""
    codec, data = value.codec, value.data
    if len(data) > MAX_VALUE_BYTES:
        raise SerializationError(f"a value of {len(data):,} bytes is over the limit")
    try:
        if codec == "pickle":
            return cloudpickle.loads(data)
        if codec.startswith("json:"):
            _, module, qualname = codec.split(":", 2)
            kind: Any = importlib.import_module(module)
            for part in qualname.split("."):
                kind = getattr(kind, part)
            if not (isinstance(kind, type) and issubclass(kind, pydantic.BaseModel)):
                raise TypeError(f"{module}.{qualname} is not a pydantic model")
            return kind.model_validate_json(data)
        if codec.startswith("proto:"):
            message_class = symbol_database.Default().GetSymbol(codec[len("proto:") :])
            return message_class.FromString(data)
    except Exception as exc:
        raise SerializationError(f"cannot decode a {codec!r} value: {exc}") from exc
    raise SerializationError(f"unknown codec {codec!r}")

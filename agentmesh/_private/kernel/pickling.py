"""`dumps`: cloudpickle, keeping the file names of code it ships by value.

cloudpickle ships functions and classes of a script's ``__main__`` by value, and
names their code ``"<dynamic-code>"`` (for a payload that does not depend on where
the code was defined). A traceback on another node then names no file; with this
pickler it names the script's path, at the right lines, as it would have at home.
Loading needs nothing of ours: ``cloudpickle.loads`` (``pickle.loads``) reads it.
"""

from __future__ import annotations

import io
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _implementation

__all__ = ["dumps"]

#: cloudpickle's reducer of code objects (private to it: if a version drops it, code
#: travels as cloudpickle makes it, without its file name).
_reduce_code: Callable[[types.CodeType], tuple[Any, tuple[Any, ...]]] | None = getattr(
    _implementation, "_code_reduce", None
)
_DYNAMIC = "<dynamic-code>"


def _code_with_filename(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
    assert _reduce_code is not None
    rebuild, args = _reduce_code(code)
    return rebuild, tuple(
        code.co_filename if isinstance(arg, str) and arg == _DYNAMIC else arg for arg in args
    )


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, but code objects keep their ``co_filename``."""

    if _reduce_code is not None:
        dispatch_table = ChainMap(
            {types.CodeType: _code_with_filename}, cloudpickle.Pickler.dispatch_table
        )


def dumps(obj: Any, protocol: int | None = None) -> bytes:
    """``cloudpickle.dumps``, code shipped by value keeping the file it came from."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=protocol).dump(obj)
        return file.getvalue()

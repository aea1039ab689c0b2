"""Stream calls over a link: the producer's sink, and how one item travels.

The callee's node runs the method into a `RemoteSink`, which queues each item on the
link it came by (`Link.stream_item`) while the caller's credit lasts; the caller's
node feeds its `Receiver` (`Link`'s ``streams``) and grants credit back as its
consumer takes items. Items are pickled one by one as they are yielded, so one that
cannot travel ends its stream at that item with `SerializationError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, Protocol

from ..kernel import pickling
from ..kernel.errors import SerializationError
from ..kernel.streams import CreditSink
from .codec import MAX_VALUE_BYTES

__all__ = ["RemoteSink", "StreamOut", "pack_item"]


class StreamOut(Protocol):
    """Where a remote sink's items go: the link the call came by."""

    def stream_item(self, corr: int, data: bytes) -> None: ...
    def stream_end(self, corr: int, error: BaseException | None) -> None: ...


class RemoteSink(CreditSink):
    """The callee's end of a stream call from another node (the envelope's reply)."""

    __slots__ = ("_corr", "_out")

    def __init__(
        self,
        out: StreamOut,
        corr: int,
        window: int,
        deadline: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(window, deadline, clock)
        self._out = out
        self._corr = corr

    def _send_item(self, item: Any) -> None:
        self._out.stream_item(self._corr, pack_item(item))

    def _send_end(self, error: BaseException | None) -> None:
        self._out.stream_end(self._corr, error)


def pack_item(item: Any) -> bytes:
    """One item as bytes: plain pickle when it can, cloudpickle for what it cannot
    take or would name by reference where the peer cannot find it (``__main__``).
    Raises `SerializationError`."""
    try:
        data = pickle.dumps(item, protocol=5)
        if b"__main__" in data:
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        try:
            data = pickling.dumps(item, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"a streamed {type(item).__qualname__} cannot be encoded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if len(data) > MAX_VALUE_BYTES:
        raise SerializationError(
            f"a streamed {type(item).__qualname__} encodes to {len(data):,} bytes, "
            f"more than the {MAX_VALUE_BYTES:,} allowed"
        )
    return data

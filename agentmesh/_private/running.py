"""`run`: `asyncio.run` on uvloop when it is installed."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``main`` to completion on a new event loop (uvloop if installed).

    Before starting, it moves every object alive so far (modules, classes, what the
    imports built) to the collector's permanent generation (`gc.freeze`), so full
    collections during the run scan only what the run allocates.
    """
    gc.freeze()
    with asyncio.Runner(loop_factory=_loop_factory(), debug=debug) as runner:
        return runner.run(main)

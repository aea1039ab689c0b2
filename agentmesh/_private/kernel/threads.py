"""Calls into a mesh from other threads: what `MethodRef.ask_sync` and `tell_sync` run.

A mesh's agents and refs belong to its event loop. A thread that is not that loop's
(a Flask or Django request handler, a worker thread) hands the call to the loop with
`asyncio.run_coroutine_threadsafe` and blocks until it is done, so the message is
sent by the loop itself, exactly as an ``await`` there would send it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from .context import current_cell, current_chain, current_node
from .errors import AgentmeshError, AgentUnavailable, AskTimeout, WrongLoop

if TYPE_CHECKING:
    from .node import Node

__all__ = ["call_from_thread"]

T = TypeVar("T")

#: Seconds a thread waits beyond an ask's timeout before it stops waiting for the
#: loop: normally the loop's own `AskTimeout`, which says more, comes first.
THREAD_GRACE = 0.5


def call_from_thread(
    node: Node, call: Callable[[], Awaitable[T]], wait: float | None, what: str
) -> T:
    """Run ``call()`` on ``node``'s loop and block this thread until it is done; return
    its result or raise its error as it is (`RemoteError`, `AskTimeout` ...).

    ``wait`` bounds the wait (None: unbounded); past it the call is cancelled and this
    raises `AskTimeout`. ``what`` names the call in errors. Raises `WrongLoop` on the
    loop's own thread (blocking there would deadlock), `AgentUnavailable` if the mesh
    is not running or its loop stops before the call is done.
    """
    loop = node.loop
    if loop is None or loop.is_closed():
        state = "has not started" if loop is None else "has ended (its event loop is closed)"
        raise AgentUnavailable(f"{what}: the mesh of node {node.id} {state}")
    if threading.get_ident() == node.thread:
        raise WrongLoop(
            f"{what} called on the thread of the mesh's own event loop, which it would "
            f"block for good (deadlock): there, await the call instead"
        )
    coro = _on_loop(node, call)
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the loop closed just now
        coro.close()
        raise AgentUnavailable(f"{what}: the mesh of node {node.id} has ended") from None
    try:
        return future.result(wait)
    except AgentmeshError:
        raise
    except TimeoutError:  # ours, not the call's: its own timeouts are AskTimeout
        future.cancel()
        raise AskTimeout(
            f"{what} got no reply within {wait:g}s: node {node.id}'s event loop did not "
            f"finish it (blocked, or not running?)"
        ) from None
    except concurrent.futures.CancelledError:  # the loop cancelled it (closing)
        raise AgentUnavailable(
            f"{what}: node {node.id}'s event loop stopped before the call was done"
        ) from None


async def _on_loop(node: Node, call: Callable[[], Awaitable[T]]) -> T:
    # This task's context is a copy of the calling thread's: if that thread is another
    # mesh's loop, it names that mesh's running agent. The call is a driver's.
    current_cell.set(None)
    current_chain.set(0)
    current_node.set(node)
    return await call()

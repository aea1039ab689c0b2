"""The slow-turn watchdog: a warning, naming the agent and method, while a turn blocks
the event loop.

A handler that blocks (``time.sleep``, a synchronous HTTP call, a long computation)
holds the whole node: no other agent runs, and heartbeats stop, so peers may declare
the node dead. Nothing on the loop can notice while it happens, so a thread watches.
Every ``threshold / 4`` seconds it hands the loop a tick (``call_soon_threadsafe``)
and the loop stamps it when it gets to it. A tick still unanswered ``threshold``
seconds after it was handed over means the loop is stuck in one callback, so the
thread reads the loop thread's Python stack (`sys._current_frames`) to find the turn
running there: the agent, its method and the line it is on. It logs one WARNING per
stall; the loop, answering the tick at last, logs how long it was blocked in all.

Reading the stack, rather than a "current turn" slot the kernel would set at every
turn, costs the message path nothing, and names exactly the handler that holds the
loop, also among an agent's concurrent or reentrant turns (which a slot would blur).
The ticks are not timers on the loop, so a loop on a virtual clock (`agentmesh.sim`)
neither sees its time sliced by them nor a false alarm while it computes at one
instant.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from types import CodeType, FrameType
from typing import Any

from .cell import Cell
from .lifecycle import Lifecycle

__all__ = ["Watchdog", "describe_turn"]

log = logging.getLogger("agentmesh.watchdog")

#: The kernel's frames a turn runs under, and the local naming what the turn runs:
#: an envelope (``env``), a lifecycle hook (``hook``), or the constructor (None).
_TURNS: dict[CodeType, str | None] = {
    Cell._turns_now.__code__: "env",
    Cell._drain_serial.__code__: "env",
    Cell._finish_turn.__code__: "env",
    Cell._turn.__code__: "env",
    Lifecycle._hook.__code__: "hook",
    Lifecycle._build.__code__: None,
}


class Watchdog:
    """Warns while the running loop is blocked longer than ``threshold`` seconds.

    `start` and `stop` on the loop; in between a daemon thread named
    ``agentmesh-watchdog-<node>`` ticks the loop every ``threshold / 4`` s.
    """

    def __init__(self, node_id: str, threshold: float) -> None:
        if not threshold > 0:
            raise ValueError(f"the slow-turn threshold must be positive, got {threshold}")
        self.node_id = node_id
        self.threshold = threshold
        self._period = threshold / 4
        self._lock = threading.Lock()  # between the loop's answer and the thread
        self._sent = 0.0  # when the pending tick was handed to the loop (monotonic)
        self._pending = False  # a tick is waiting for the loop
        self._stall: str | None = None  # what the warning named, while a stall lasts
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def start(self) -> None:
        """Start watching the running loop from a thread."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(
            target=self._watch, name=f"agentmesh-watchdog-{self.node_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and end the thread (it is joined: none is left behind)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._period + 5.0)
            self._thread = None

    def _answer(self) -> None:
        """The loop got to the tick: runs on the loop."""
        now = time.monotonic()
        with self._lock:
            self._pending = False
            late = now - self._sent
            stall, self._stall = self._stall, None
        if stall is not None:
            log.warning(
                "event loop of node %s ran again after being blocked for %.2fs (%s)",
                self.node_id,
                late,
                stall,
            )

    def _watch(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stopping.wait(self._period):
            with self._lock:
                now = time.monotonic()
                if not self._pending:
                    self._pending, self._sent = True, now
                    try:
                        loop.call_soon_threadsafe(self._answer)
                    except RuntimeError:  # the loop is closed: nothing left to watch
                        return
                    continue
                late = now - self._sent
                if late < self.threshold or self._stall is not None:
                    continue
                self._stall = turn = describe_turn(self._loop_thread)
                # Logged under the lock, so the loop's "ran again" line comes after it.
                log.warning(
                    "event loop of node %s blocked for %.2fs (slow_turn=%gs) by %s; "
                    "no other agent runs and heartbeats wait until it returns",
                    self.node_id,
                    late,
                    self.threshold,
                    turn,
                )


def describe_turn(thread_id: int) -> str:
    """What the thread ``thread_id`` runs now, for a log line: ``agent 'name'
    (Class) in method(), at file:line in function``, or where it is outside any turn."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "a thread that is gone"
    code = frame.f_code
    where = f"at {code.co_filename}:{frame.f_lineno} in {code.co_name}"
    try:
        turn = _turn_of(frame)
    except Exception as exc:  # reading another thread's frames is best effort
        return f"code {where} (its turn unknown: {type(exc).__name__}: {exc})"
    if turn is None:
        return f"code outside any agent's turn, {where}"
    return f"{turn}, {where}"


def _turn_of(frame: FrameType | None) -> str | None:
    innermost = frame
    while frame is not None:
        code = frame.f_code
        if code in _TURNS:
            names: dict[str, Any] = frame.f_locals
            cell = names.get("self")
            if isinstance(cell, Cell):
                agent = f"agent {cell.label!r} ({cell.cls.__qualname__})"
                method = _method(code, names)
                if frame is innermost:
                    # Between handlers, not in one: a long mailbox served in one go,
                    # each handler returning without a pause for the loop.
                    return f"{agent} serving its queued messages without a pause (last {method}())"
                return f"{agent} in {method}()"
        frame = frame.f_back
    return None


def _method(code: CodeType, names: dict[str, Any]) -> str:
    kind = _TURNS[code]
    if kind == "env":
        return str(getattr(names.get("env"), "method", "?"))
    if kind == "hook":
        return str(getattr(names.get("hook"), "__name__", "?"))
    return "__init__"

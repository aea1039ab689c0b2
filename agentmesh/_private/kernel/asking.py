"""`Ask`: the reply of one ask, which is sent when it is made.

``ref.method(...)`` sends the call at once and returns an `Ask`, an `asyncio.Future`
that is also a coroutine: ``await`` it, give it to ``asyncio.gather``, ``wait_for``
or ``wait`` (as a future: no task is made for it), or to ``create_task`` or a
``TaskGroup`` (as a coroutine). An ask in flight costs its envelope and this future:
no coroutine frame and no task of its own, which is most of what an ask cost when
it was sent at its first ``await``.

Whatever ends the ask (its reply, its error, its timeout, its cancellation) takes it
out of the node's books (its deadline, what its sender waits on), in the method that
ends it (`_settled`): no done callback, so no extra trip through the event loop. A
cancelled ask cancels its turn if it is running (`Cell.cancel_turn`) and never runs
if it is still queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cell import Cell
    from .deadlines import Deadlines
    from .envelope import Envelope

__all__ = ["Ask"]

_Future = asyncio.Future


class Ask(asyncio.Future[Any], Coroutine[Any, Any, Any]):
    """The pending reply of an ask that was sent (see the module's docstring)."""

    __slots__ = ("_callee", "_deadlines", "_env", "_sender", "_sending", "_timer")

    #: The envelope that carries the call (its ``reply`` is this future), until the
    #: ask ends: then None, so that the two make no reference cycle (which only the
    #: garbage collector would free).
    _env: Envelope | None
    #: How the ask expires: the node's shared `Deadlines` (the default timeout) ...
    _deadlines: Deadlines | None
    #: ... or a timer of its own (any other).
    _timer: asyncio.TimerHandle | None
    #: The agent that asked (None for a driver), whose ``waiting_on`` names this.
    _sender: Cell | None
    #: The callee's cell if it lives on this node: its turn is cancelled with this.
    _callee: Cell | None
    #: The task that waits for room to send the call, if it could not go at once.
    _sending: asyncio.Task[None] | None

    def set_result(self, result: Any, /) -> None:
        _Future.set_result(self, result)
        # _settled, inlined: this runs once per ask.
        deadlines = self._deadlines
        env = self._env
        if deadlines is not None:
            if env is not None:
                deadlines.entries.pop(env, None)
        else:
            timer = self._timer
            if timer is not None:
                timer.cancel()
        sender = self._sender
        if sender is not None:
            waiting = sender.waiting_on
            if waiting is not None:
                waiting.pop(self, None)
            self._sender = None
        self._env = self._callee = None

    def set_exception(self, exception: type | BaseException, /) -> None:
        _Future.set_exception(self, exception)
        self._settled()

    def cancel(self, msg: Any | None = None) -> bool:
        """Give up the ask: a queued call never runs, a running one is cancelled
        (across nodes, the transport tells the callee's node)."""
        if not _Future.cancel(self, msg):
            return False
        callee, env = self._callee, self._env
        self._settled()
        if callee is not None and env is not None:
            callee.cancel_turn(env)
        return True

    def _settled(self) -> None:
        sending = self._sending
        if sending is not None:  # it expired, or was cancelled, before it could go
            sending.cancel()
        deadlines = self._deadlines
        env = self._env
        if deadlines is not None:
            if env is not None:
                deadlines.discard(env)
        elif self._timer is not None:
            self._timer.cancel()
        sender = self._sender
        if sender is not None:
            waiting = sender.waiting_on
            if waiting is not None:
                waiting.pop(self, None)
            self._sender = None
        self._env = self._callee = None

    # -- as a coroutine (for create_task, TaskGroup, run_coroutine_threadsafe) ----

    def send(self, value: Any, /) -> Any:
        """Step as a coroutine would: yield this future until it is done (the task
        driving it waits on it), then return its result or raise its error."""
        if self.done():
            raise StopIteration(self.result())
        self._asyncio_future_blocking = True
        return self

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        """Whoever drives this gives up on it (a cancelled task): so does the ask."""
        error = typ if isinstance(typ, BaseException) else (typ() if val is None else val)
        self.cancel()
        raise error

    def close(self) -> None:
        """Drop the ask, as closing a coroutine drops it (cancels it if pending)."""
        self.cancel()

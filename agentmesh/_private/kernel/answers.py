"""`Answers`: where the answers of one `Node.ask_each` go, by position.

One object for a whole round of asks (the simulation's step asks thousands of
agents at once): no future, reply object or tuple per ask, so a round leaves the
garbage collector next to nothing to scan.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["PENDING", "Answers"]


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


#: In `Answers.values` where no answer has come (yet, or in time).
PENDING: Any = _Pending()


class Answers:
    """The answers of one round of asks, by position: ``values[i]`` is the result of
    ask ``i`` (`PENDING` until it comes), ``errors[i]`` the exception it raised.

    `wait` until all are in or a deadline passes; after `close` (which `wait` does)
    late answers are dropped and asks still in a task of their own are cancelled.
    """

    __slots__ = ("closed", "errors", "left", "tasks", "values", "waiter")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.values: list[Any] = [PENDING] * size
        self.errors: dict[int, BaseException] = {}
        self.left = size
        self.closed = False
        self.waiter: asyncio.Future[None] = loop.create_future()
        self.tasks: list[asyncio.Future[Any]] = []  # asks sent the ordinary way

    def put(self, i: int, value: Any) -> None:
        """Ask ``i`` answered ``value``."""
        if self.closed or self.values[i] is not PENDING or i in self.errors:
            return
        self.values[i] = value
        self._one_less()

    def fail(self, i: int, error: BaseException) -> None:
        """Ask ``i`` raised ``error`` (or could not be sent)."""
        if self.closed or self.values[i] is not PENDING or i in self.errors:
            return
        self.errors[i] = error
        self._one_less()

    def answered(self, n: int) -> None:
        """``n`` more asks answered, their values put in place by an `AskBatch` (which
        counts them once a slice)."""
        if n:
            self.left -= n
            if self.left == 0 and not self.waiter.done():
                self.waiter.set_result(None)

    def _one_less(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.waiter.done():
            self.waiter.set_result(None)

    def reply(self, i: int) -> _Slot:
        """A kernel `Reply` for ask ``i``: for an ask that goes through a mailbox."""
        return _Slot(self, i)

    async def wait(self, deadline: float) -> None:
        """Wait until every ask is answered or the loop's clock reaches ``deadline``,
        then `close`."""
        if self.left:
            loop = self.waiter.get_loop()
            timer = loop.call_at(deadline, _wake, self.waiter)
            try:
                await self.waiter
            finally:
                timer.cancel()
        self.close()

    def close(self) -> None:
        """Take no more answers; cancel the asks still waiting in tasks."""
        self.closed = True
        for task in self.tasks:
            task.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Slot:
    """The `Reply` of one ask of an `Answers` (see `Answers.reply`)."""

    __slots__ = ("answers", "i")

    def __init__(self, answers: Answers, i: int) -> None:
        self.answers = answers
        self.i = i

    def done(self) -> bool:
        answers = self.answers
        i = self.i
        return answers.closed or answers.values[i] is not PENDING or i in answers.errors

    def set_result(self, value: Any, /) -> None:
        self.answers.put(self.i, value)

    def set_exception(self, exception: BaseException, /) -> None:
        self.answers.fail(self.i, exception)

"""Agents and models of tests/test_validation.py (a module, so that a node in another
process imports them by name)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic
from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

import agentmesh as am


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    customer: str
    lines: list[Line] = []


class Picky(BaseModel):
    """A model whose validator raises something pydantic does not wrap."""

    name: str

    @pydantic.field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return {"ann": "Ann"}[name]  # KeyError for anyone else


class Shop(am.Agent):
    """Model-annotated methods (validated by default) beside plain ones (not)."""

    def __init__(self) -> None:
        self.calls = 0  # handlers run, bad calls excepted
        self.last: Any = None

    async def place(self, order: Order, note: str = "") -> str:
        self.calls += 1
        self.last = order
        return f"{type(order).__name__} {order.customer} {sum(x.qty for x in order.lines)} {note}"

    async def total(self, lines: list[Line]) -> list[str]:
        self.calls += 1
        return [f"{type(x).__name__} {x.qty}" for x in lines]

    async def maybe(self, order: Order | None = None, *, rush: Line | None = None) -> str:
        self.calls += 1
        return f"{type(order).__name__} {type(rush).__name__}"

    async def default(self, order: Order = Order(customer="house")) -> str:  # noqa: B008
        self.calls += 1
        return order.customer

    async def picky(self, who: Picky) -> str:
        self.calls += 1
        return who.name

    async def plain(self, n: int, anything) -> str:  # type: ignore[no-untyped-def]
        self.calls += 1
        return f"{type(n).__name__} {type(anything).__name__}"

    async def count(self) -> int:
        return self.calls

    async def stream(self, n: int):  # type: ignore[no-untyped-def]
        yield n


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Size:
    width: int
    height: int


class Strict(am.Agent, validate=True):
    """Opts in: every annotated parameter is validated, plain types included."""

    async def scale(self, n: int, factors: list[float], at: Point, size: Size) -> str:
        return f"{n!r} {factors!r} {at!r} {size!r}"

    async def anything(self, value: Any, other: object) -> str:
        return f"{type(value).__name__} {type(other).__name__}"


class StrictChild(Strict):
    """Inherits the opt-in of its base class."""

    async def half(self, n: int) -> str:
        return repr(n / 2)


class Lax(am.Agent, validate=False):
    """Opts out: a dict reaches a model-annotated parameter as sent."""

    async def place(self, order: Order) -> str:
        return type(order).__name__


class DeadLetterLog(am.Agent):
    """Keeps the dead letters published on its node."""

    def __init__(self) -> None:
        self.letters: list[tuple[str | None, str | None, str]] = []

    @am.subscribe(am.DEAD_LETTERS)
    async def on_dead_letter(self, letter: Any) -> None:
        self.letters.append((letter.subscriber, letter.method, letter.reason))

    async def reasons(self, subscriber: str) -> list[str]:
        return [reason for who, _, reason in self.letters if who == subscriber]

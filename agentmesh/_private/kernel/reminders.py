"""Durable reminders (`Agent.remind`): kept in the node's state store under the
agent's name, armed while an agent of that name lives, fired as messages.

A node arms a named agent's reminders when the agent starts (at its spawn, once its
name is its own cluster-wide: in a fresh mesh, or on another node after its own died)
and disarms them when the agent ends for good; a restart by its supervisor on the
same node changes nothing (the reminders keep firing into its mailbox meanwhile).

Each firing is a message to the agent carrying a `Reminder`, whose ``id`` is unique
(name, registration, number), so a handler can be idempotent. A firing counts as
done once its handler returned or raised; the store keeps how far the firings are
done. Those due while no agent of the name ran, and those delivered but not done
when it ended (its node died, say), are *missed*: at the next start they are
skipped, fired once, or all fired, as the reminder's ``missed`` says.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import secrets
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from .envelope import NO_KWARGS, Envelope, chains
from .errors import AgentUnavailable

if TYPE_CHECKING:
    from .cell import Cell
    from .node import Node

__all__ = ["FIRE", "Missed", "Reminder", "Reminders", "store_key"]

log = logging.getLogger("agentmesh.agent")

#: What to do with firings missed while no agent of the name ran (see module doc).
Missed = Literal["skip", "once", "all"]
_MISSED = get_args(Missed)

#: The framework notice a firing travels as (`Agent._am_reminder` receives it).
FIRE = "!reminder"


def store_key(name: str) -> str:
    """The state store key of the reminders of the agent called ``name``."""
    return f"!reminders:{name}"


@dataclass(frozen=True, slots=True)
class Reminder:
    """One firing of a durable reminder, as its handler receives it.

    ``number`` counts the firings of this registration from 1 (a periodic reminder's
    n-th firing was due at ``first due + (n - 1) * period``); ``due`` is when it was
    due, in seconds since the epoch (as `time.time`); ``skipped`` is how many firings
    just before it were dropped as missed (``missed="skip"``, or folded into this one
    by ``missed="once"``). ``id`` is unique across registrations: keep the ids handled
    to make a handler idempotent, as a firing may come again after a crash.
    """

    name: str
    number: int
    due: float
    skipped: int
    registration: str

    @property
    def id(self) -> str:
        """``"<name>:<registration>:<number>"``: the same for a firing delivered again."""
        return f"{self.name}:{self.registration}:{self.number}"


# Seconds since the epoch = the loop's clock + this offset, one per event loop, so that
# on a virtual clock (sim.run_virtual) reminders run on simulated time, as timers do.
_offsets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = weakref.WeakKeyDictionary()


def wall_clock() -> float:
    """Now, in seconds since the epoch, measured on the running loop's clock."""
    loop = asyncio.get_running_loop()
    offset = _offsets.get(loop)
    if offset is None:
        offset = _offsets[loop] = time.time() - loop.time()
    return loop.time() + offset


def due_time(due: float | datetime | timedelta) -> float:
    """``due`` (seconds from now, a timedelta, or a datetime) in seconds since the
    epoch; ValueError or TypeError for anything else."""
    if isinstance(due, datetime):
        return due.timestamp()  # a naive datetime is local time, as datetime says
    if isinstance(due, timedelta):
        due = due.total_seconds()
    if isinstance(due, bool) or not isinstance(due, int | float):
        raise TypeError(f"due takes seconds from now, a timedelta or a datetime, got {due!r}")
    if not (math.isfinite(due) and due >= 0):
        raise ValueError(f"due must be 0 or more seconds from now, got {due}")
    return wall_clock() + due


def period_seconds(period: float | timedelta | None) -> float | None:
    if period is None:
        return None
    if isinstance(period, timedelta):
        period = period.total_seconds()
    if isinstance(period, bool) or not isinstance(period, int | float):
        raise TypeError(f"period takes seconds, a timedelta or None, got {period!r}")
    if not (math.isfinite(period) and period > 0):
        raise ValueError(f"period must be positive seconds, got {period}")
    return float(period)


def check_missed(missed: str) -> Missed:
    if missed not in _MISSED:
        raise ValueError(f"missed must be one of {_MISSED}, got {missed!r}")
    return missed  # type: ignore[return-value]


class _Entry:
    """One registered reminder of one agent, and how far its firings are done."""

    __slots__ = (
        "done",
        "extra",
        "first",
        "method",
        "missed",
        "name",
        "next",
        "period",
        "skip_next",
        "task",
        "token",
    )

    def __init__(
        self,
        name: str,
        token: str,
        first: float,
        period: float | None,
        missed: Missed,
        method: str,
        done: int = 0,
        extra: set[int] | None = None,
    ) -> None:
        self.name = name
        self.token = token  # the registration
        self.first = first  # when firing 1 is due
        self.period = period
        self.missed = missed
        self.method = method
        self.done = done  # firings 1..done are done (handled, or skipped as missed)
        self.extra = extra or set()  # done beyond ``done`` (handlers ran out of order)
        self.next = done + 1  # the next firing to deliver
        self.skip_next = 0  # ``skipped`` of the next firing delivered
        self.task: asyncio.Task[None] | None = None

    def due(self, number: int) -> float:
        return self.first + (number - 1) * (self.period or 0.0)

    def pending(self, number: int) -> bool:
        return number > self.done and number not in self.extra

    def mark_done(self, number: int) -> None:
        if number == self.done + 1:
            self.done = number
            while self.done + 1 in self.extra:
                self.extra.discard(self.done + 1)
                self.done += 1
        elif number > self.done:
            self.extra.add(number)

    def finished(self) -> bool:
        """A one-shot reminder whose firing is done: nothing left to keep."""
        return self.period is None and self.done >= 1

    def catch_up(self, now: float) -> bool:
        """Apply ``missed`` to the firings due by ``now`` and not done; True if that
        changed what is done (to be saved)."""
        first = self.done + 1
        while first in self.extra:
            first += 1
        self.next = first
        if self.period is None:
            last = 1 if self.first <= now else 0
        else:
            last = math.floor((now - self.first) / self.period) + 1 if now >= self.first else 0
        if last < first:
            return False
        count = last - first + 1 - sum(1 for x in self.extra if first <= x <= last)
        if self.missed == "all" or count <= 0:
            return False
        if self.missed == "skip":
            self.done, keep = last, last
            self.skip_next = count
        else:  # "once": the latest of them stands for all
            latest = last
            while latest in self.extra:
                latest -= 1
            self.done, keep = latest - 1, latest - 1
            self.skip_next = count - 1
        self.extra = {x for x in self.extra if x > keep}
        self.next = self.done + 1
        while self.next in self.extra:
            self.next += 1
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "registration": self.token,
            "first": self.first,
            "period": self.period,
            "missed": self.missed,
            "method": self.method,
            "done": self.done,
            "extra": sorted(self.extra),
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> _Entry:
        return cls(
            str(item["name"]),
            str(item["registration"]),
            float(item["first"]),
            None if item["period"] is None else float(item["period"]),
            check_missed(item["missed"]),
            str(item["method"]),
            int(item["done"]),
            {int(x) for x in item["extra"]},
        )


def _encode(entries: dict[str, _Entry]) -> bytes:
    return json.dumps({"version": 1, "reminders": [e.to_json() for e in entries.values()]}).encode()


def _decode(data: bytes, name: str) -> dict[str, _Entry]:
    try:
        record = json.loads(data)
        entries = [_Entry.from_json(item) for item in record["reminders"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"the reminders of agent {name!r} in the state store cannot be read "
            f"({type(exc).__name__}: {exc}); delete the key {store_key(name)!r}"
        ) from exc
    return {e.name: e for e in entries}


class _Agent:
    """The reminders of one named agent of this node."""

    __slots__ = ("activated", "cell", "entries", "loaded", "lock")

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.entries: dict[str, _Entry] = {}
        self.loaded = False  # read from the store
        self.activated = False  # its loaded reminders caught up and armed
        self.lock = asyncio.Lock()  # one store access at a time, in order


class Reminders:
    """The durable reminders of one node's named agents (`Node.reminders`)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: Agents that have (or had, this run) reminders, by agent id.
        self.agents: dict[str, _Agent] = {}

    def armed(self, cell: Cell) -> bool:
        """Whether ``cell``'s agent has reminders armed here."""
        agent = self.agents.get(cell.id)
        return agent is not None and bool(agent.entries)

    async def _agent(self, cell: Cell) -> _Agent:
        """``cell``'s reminders, read from the store the first time."""
        agent = self.agents.get(cell.id)
        if agent is None:
            agent = self.agents[cell.id] = _Agent(cell)
        if not agent.loaded:
            async with agent.lock:
                if not agent.loaded:
                    assert cell.name is not None
                    data = await self.node.state_store.get(store_key(cell.name))
                    if data is not None:
                        agent.entries = {**_decode(data, cell.name), **agent.entries}
                    agent.loaded = True
        return agent

    async def activate(self, cell: Cell) -> None:
        """A named agent started here, its name its own: arm its stored reminders,
        missed firings handled as each says. One read of the store."""
        if cell.name is None:
            return
        if cell.id in self.agents:
            agent = await self._agent(cell)
        else:
            data = await self.node.state_store.get(store_key(cell.name))
            if data is None:
                return  # the common case: nothing stored, nothing to arm
            agent = self.agents.setdefault(cell.id, _Agent(cell))
            if not agent.loaded:
                agent.entries = {**_decode(data, cell.name), **agent.entries}
                agent.loaded = True
        if cell.state.value in ("stopped", "crashed"):  # ended meanwhile
            self.agent_ended(cell)
            return
        if agent.activated:
            return
        agent.activated = True
        now = wall_clock()
        changed = False
        for entry in list(agent.entries.values()):
            if entry.task is not None:
                continue  # registered by this instance already: armed
            if entry.finished():
                del agent.entries[entry.name]
                changed = True
                continue
            changed = entry.catch_up(now) or changed
            if entry.period is None and entry.done >= 1:  # a missed one-shot, skipped
                log.info("reminder %r of %s was missed and is skipped", entry.name, cell.label)
                del agent.entries[entry.name]
                continue
            self._arm(agent, entry)
        if changed:
            await self._save(agent)

    async def remind(
        self,
        cell: Cell,
        name: str,
        first: float,
        period: float | None,
        missed: Missed,
        method: str,
        replace: bool = True,
    ) -> bool:
        """Register reminder ``name`` of ``cell``'s agent (replacing one of that name,
        unless ``replace`` is False: then keep it and return False): saved, then
        armed."""
        agent = await self._agent(cell)
        old = agent.entries.get(name)
        if old is not None and not replace:
            return False
        entry = _Entry(name, secrets.token_hex(4), first, period, missed, method)
        agent.entries[name] = entry
        try:
            await self._save(agent)
        except BaseException:
            if agent.entries.get(name) is entry:
                if old is None:
                    del agent.entries[name]
                else:
                    agent.entries[name] = old
            raise
        if old is not None and old.task is not None:
            old.task.cancel()
        if agent.entries.get(name) is entry:
            self._arm(agent, entry)
        return True

    async def forget(self, cell: Cell, name: str) -> bool:
        """Cancel reminder ``name``; False if there was none."""
        agent = await self._agent(cell)
        entry = agent.entries.pop(name, None)
        if entry is None:
            return False
        if entry.task is not None:
            entry.task.cancel()
        await self._save(agent)
        return True

    def method_of(self, cell: Cell, fire: Reminder) -> str | None:
        """The method to run for ``fire``, or None if the firing is void: its reminder
        was forgotten or replaced, or this firing is done already."""
        agent = self.agents.get(cell.id)
        entry = None if agent is None else agent.entries.get(fire.name)
        if entry is None or entry.token != fire.registration or not entry.pending(fire.number):
            return None
        return entry.method

    async def handled(self, cell: Cell, fire: Reminder) -> None:
        """``fire``'s handler returned or raised: it is done, and saved so."""
        agent = self.agents.get(cell.id)
        entry = None if agent is None else agent.entries.get(fire.name)
        if agent is None or entry is None or entry.token != fire.registration:
            return
        entry.mark_done(fire.number)
        if entry.finished():
            del agent.entries[fire.name]
        await self._save(agent)

    def agent_ended(self, cell: Cell) -> None:
        """Disarm the reminders of an agent that ended for good (they stay stored)."""
        agent = self.agents.pop(cell.id, None)
        if agent is not None:
            for entry in agent.entries.values():
                if entry.task is not None:
                    entry.task.cancel()

    async def _save(self, agent: _Agent) -> None:
        """Write the agent's reminders as they are when the store is free (so writes
        land in order, the last one the latest)."""
        name = agent.cell.name
        assert name is not None
        async with agent.lock:
            store = self.node.state_store
            if agent.entries:
                await store.put(store_key(name), _encode(agent.entries))
            else:
                await store.delete(store_key(name))

    def _arm(self, agent: _Agent, entry: _Entry) -> None:
        # In a context of its own: firings come from no agent's turn.
        entry.task = asyncio.get_running_loop().create_task(
            self._deliver(agent.cell, entry), context=contextvars.Context()
        )

    async def _deliver(self, cell: Cell, entry: _Entry) -> None:
        """Put each firing in the agent's mailbox when it is due (at once if late),
        in order, waiting for room; until the agent takes no more messages."""
        try:
            while True:
                number = entry.next
                while number in entry.extra:
                    number += 1
                if entry.period is None and number > 1:
                    return
                due = entry.due(number)
                delay = due - wall_clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                fire = Reminder(entry.name, number, due, entry.skip_next, entry.token)
                entry.skip_next = 0
                env = Envelope(cell.id, FIRE, (fire,), NO_KWARGS, None, next(chains), cell.id)
                await cell.post(env)
                entry.next = number + 1
        except AgentUnavailable:
            return

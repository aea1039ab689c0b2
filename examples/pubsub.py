"""Pub/sub: venues publish typed ticks, subscribers match them by pattern.

Three `Venue` agents publish a pydantic `Tick` on ``market.<venue>.ticks`` every 50 ms.
Two agents subscribe with ``@am.subscribe``:

    trader   market.*.ticks   typed: each payload is validated into a Tick
    tape     market.**        untyped: every message on the market, as published

At step 7 the lse venue relays a tick from a broken upstream feed, as JSON text whose
price is "n/a". The tape records it as it came; for the trader it fails validation, so
it never reaches the trader's handler (which does not crash) and goes to
``agentmesh.dead_letters`` with the reason, where the driver is watching. Then the
program prints what each subscriber saw, the dead letters and the bus's counters.

    python examples/pubsub.py --steps 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

import agentmesh as am

VENUES = {"nyse": 101.0, "lse": 87.0, "tse": 42.0}  # venue: opening price
GLITCH = ("lse", 7)  # (venue, step) whose tick comes from the broken feed
INTERVAL = 0.05


class Tick(BaseModel):
    venue: str
    step: int
    price: float = Field(gt=0)


class Venue(am.Agent):
    """Publishes one tick per step on ``market.<venue>.ticks``."""

    def __init__(self, venue: str, price: float, seed: int) -> None:
        self.venue = venue
        self.price = price
        self.rng = random.Random(seed)

    async def run(self, steps: int) -> None:
        topic = f"market.{self.venue}.ticks"
        for step in range(steps):
            self.price = round(self.price * (1 + self.rng.gauss(0, 0.01)), 2)
            if (self.venue, step) == GLITCH:  # relayed as it came: JSON, no price
                raw = {"venue": self.venue, "step": step, "price": "n/a"}
                await self.publish(topic, json.dumps(raw))
            else:
                await self.publish(topic, Tick(venue=self.venue, step=step, price=self.price))
            await asyncio.sleep(INTERVAL)


class Trader(am.Agent):
    """Keeps each venue's last, lowest and highest price, and checks tick order."""

    def __init__(self) -> None:
        self.prices: dict[str, list[float]] = {}
        self.last_step: dict[str, int] = {}
        self.in_order = True

    @am.subscribe("market.*.ticks")
    async def on_tick(self, tick: Tick, topic: str) -> None:
        assert topic == f"market.{tick.venue}.ticks"  # tick is a Tick, validated
        self.in_order &= tick.step > self.last_step.get(tick.venue, -1)
        self.last_step[tick.venue] = tick.step
        self.prices.setdefault(tick.venue, []).append(tick.price)

    async def report(self) -> tuple[dict[str, list[float]], bool]:
        return self.prices, self.in_order


class Tape(am.Agent):
    """Records every message on the market, untyped: (topic, payload type) counts."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()

    @am.subscribe("market.**")
    async def _record(self, payload: Any, topic: str) -> None:  # private: not a message
        self.seen[topic, type(payload).__name__] += 1

    async def report(self) -> Counter[tuple[str, str]]:
        return self.seen


async def main(steps: int) -> None:
    async with am.Mesh() as mesh:
        trader = await mesh.spawn(Trader, name="trader")
        tape = await mesh.spawn(Tape, name="tape")
        venues = [
            await mesh.spawn(Venue, venue, price, seed, name=venue)
            for seed, (venue, price) in enumerate(VENUES.items())
        ]
        async with mesh.subscribe(am.DEAD_LETTERS) as dead:
            await asyncio.gather(*(venue.run(steps) for venue in venues))
            stats = mesh.bus_statistics()
        letters = [letter async for _, letter in dead]  # what was buffered before closing

        # The ticks were queued before run() returned, so these asks come after them.
        prices, in_order = await trader.report()
        seen = await tape.report()

    print("venue  ticks    last     low    high")
    for venue, series in prices.items():
        row = f"{venue:<6} {len(series):>5} {series[-1]:>7.2f} {min(series):>7.2f}"
        print(f"{row} {max(series):>7.2f}")
    print(f"trader: {sum(map(len, prices.values()))} ticks, each venue in order: {in_order}")
    kinds = Counter(kind for (_, kind) in seen.elements())
    topics = {topic for topic, _ in seen}
    print(f"tape: {seen.total()} messages on {len(topics)} topics, by type: {dict(kinds)}")
    print(f"dead letters: {len(letters)}")
    names = {venue.id: venue.name for venue in venues}  # a sender is an agent id
    for letter in letters:
        who = f"from {names.get(letter.sender or '')} to {letter.subscriber}"
        print(f"  {letter.topic} {who}: {letter.reason.splitlines()[0]}")
    print(
        f"bus: published={stats.published} deliveries={stats.deliveries} "
        f"dead_letters={stats.dead_letters} subscriptions={stats.subscriptions} "
        f"patterns={sorted(stats.patterns)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="ticks per venue (default 20)")
    am.run(main(parser.parse_args().steps))

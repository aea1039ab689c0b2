"""Market: traders and an exchange over pub/sub, event-driven on a virtual clock.

The exchange clears once per simulated second: it nets the orders received since the
last clearing, moves the price by the imbalance, fills every order at the new price
(telling each trader its fill) and publishes a `Tick` on ``market.ticks``. Each trader
subscribes to the ticks; on each one it decides (momentum or value, from its own
seeded random stream) whether to trade, then "thinks" for a random simulated delay
(`SimAgent.schedule`) before its order reaches the exchange: orders arrive at any
instant between clearings, and traders of different speeds compete.

Everything runs under `sim.run_virtual`: ten minutes of market take a second or two,
and since simulated time moves only when every agent is idle, the run is a function of
its seed alone. The program runs the market twice and checks that the two tapes (every
fill of every trader) are identical.

    python examples/market.py --traders 50 --seconds 600 --seed 7
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from dataclasses import dataclass

from pydantic import BaseModel

import agentmesh as am
from agentmesh import sim

IMPACT = 0.002  # log-price move per unit of net demand


class Tick(BaseModel):
    second: int
    price: float
    volume: int


@dataclass(frozen=True)
class Fill:
    second: int
    trader: str
    qty: int  # > 0 bought, < 0 sold
    price: float


class Exchange(sim.SimAgent):
    """Collects orders, clears them every simulated second, publishes the ticks."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.second = 0
        self.price = 100.0
        self.orders: list[tuple[str, int, am.AgentRef]] = []
        self.tape: list[Fill] = []

    async def on_start(self) -> None:
        self.schedule(1.0, "clear")

    async def order(self, trader: str, qty: int, ref: am.AgentRef) -> None:
        self.orders.append((trader, qty, ref))

    async def clear(self) -> None:
        self.second += 1
        # Sorted by trader: the clearing does not depend on arrival order within a second.
        orders = sorted(self.orders, key=lambda o: o[:2])
        self.orders = []
        net = sum(qty for _, qty, _ in orders)
        self.price = round(self.price * math.exp(IMPACT * net), 4)
        for trader, qty, ref in orders:
            fill = Fill(self.second, trader, qty, self.price)
            self.tape.append(fill)
            await ref.filled.tell(fill)
        volume = sum(abs(qty) for _, qty, _ in orders)
        await self.publish(
            "market.ticks", Tick(second=self.second, price=self.price, volume=volume)
        )
        if self.second < self.seconds:
            self.schedule(1.0, "clear")

    async def report(self) -> tuple[float, list[Fill]]:
        return self.price, self.tape


class Trader(sim.SimAgent):
    """Reacts to ticks after a think time; momentum or value."""

    def __init__(self, key: str, seed: int, exchange: am.AgentRef) -> None:
        self.key = key
        self.rng = sim.stream(seed, key)
        self.exchange = exchange
        self.momentum = self.rng.random() < 0.5
        self.speed = self.rng.uniform(0.05, 0.9)  # mean think time, simulated seconds
        self.last = 100.0
        self.cash = 10_000.0
        self.position = 0

    @am.subscribe("market.ticks")
    async def on_tick(self, tick: Tick) -> None:
        move = tick.price - self.last
        self.last = tick.price
        if self.rng.random() < 0.3:  # trades on about a third of the ticks
            if self.momentum:  # follow the last move
                direction = 1 if move >= 0 else -1
            else:  # bet on a return to the fundamental value, 100
                direction = 1 if tick.price < 100.0 else -1
            qty = direction * self.rng.randint(1, 5)
            self.schedule(self.rng.expovariate(1 / self.speed), "send", qty)

    async def send(self, qty: int) -> None:
        await self.exchange.order.tell(self.key, qty, self.ref)

    async def filled(self, fill: Fill) -> None:
        self.position += fill.qty
        self.cash -= fill.qty * fill.price

    async def worth(self, price: float) -> float:
        return self.cash + self.position * price


@dataclass(frozen=True)
class Outcome:
    price: float
    fills: int
    digest: str
    best: tuple[float, str]
    virtual: float
    wall: float


async def market(traders: int, seconds: int, seed: int) -> Outcome:
    wall = time.perf_counter()
    async with am.Mesh() as mesh:
        exchange = await mesh.spawn(Exchange, seconds, name="exchange")
        crowd = {
            f"t{i:04d}": await mesh.spawn(Trader, f"t{i:04d}", seed, exchange)
            for i in range(traders)
        }
        await sim.sleep_until(seconds + 1.0)
        price, tape = await exchange.report()
        worth = {k: await ref.worth(price) for k, ref in crowd.items()}
        virtual = sim.now()
    digest = hashlib.sha256(repr(tape).encode()).hexdigest()
    best = max((w, k) for k, w in worth.items())
    return Outcome(price, len(tape), digest, best, virtual, time.perf_counter() - wall)


def main(traders: int, seconds: int, seed: int) -> bool:
    first = sim.run_virtual(market(traders, seconds, seed))
    again = sim.run_virtual(market(traders, seconds, seed))
    print(f"market: {traders} traders, {seconds} simulated seconds (seed {seed})")
    print(f"  final price  {first.price:.4f}")
    print(f"  fills        {first.fills:,}")
    print(f"  best trader  {first.best[1]} worth {first.best[0]:,.2f} (all started at 10,000)")
    print(f"  clock        {first.virtual:,.1f} simulated s in {first.wall:.2f} wall s")
    same = first.digest == again.digest
    print(
        f"  replay       {'identical' if same else 'DIFFERENT'} (tape digest {first.digest[:16]})"
    )
    return same


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traders", type=int, default=50, help="traders (default 50)")
    parser.add_argument("--seconds", type=int, default=600, help="simulated seconds (default 600)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    raise SystemExit(0 if main(args.traders, args.seconds, args.seed) else 1)

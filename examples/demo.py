"""Demo: a market of a few hundred trader agents on the embedded mesh.

Every trader is an agent holding some cash. Each round a coordinator (itself an agent)
asks every trader to play; a trader pays a random share of its cash to a few random
peers, one tell per payment (`receive`), from its own seeded `random.Random`. Then the
coordinator asks every trader for its balance and checks conservation: payments move
cash between agents but never create or destroy it, and every tell sent was delivered.

It shows agents asking agents, tells fanned out to many mailboxes, and FIFO order: a
trader's `play` returns only once its tells sit in the peers' mailboxes, so the
coordinator's later `balance` asks queue behind them and see every payment.

    python examples/demo.py --agents 300 --rounds 20 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass

import agentmesh as am

START_CASH = 100
FANOUT = 3  # payments per trader per round


@dataclass(frozen=True)
class Balance:
    cash: int
    sent: int
    received: int


@dataclass(frozen=True)
class Report:
    rounds: int
    sent: int
    received: int
    asks: int
    conserved: bool
    richest: int


class Trader(am.Agent):
    """Holds cash; pays random peers when asked to play, counts what it receives."""

    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.cash = START_CASH
        self.rng = random.Random(f"{seed}:{index}")  # one reproducible stream per trader
        self.traders: list[am.AgentRef] = []
        self.sent = 0
        self.received = 0

    async def meet(self, traders: list[am.AgentRef]) -> None:
        self.traders = traders  # one list shared by all: in-process asks do not copy

    async def play(self) -> None:
        for pick in self.rng.sample(range(len(self.traders) - 1), FANOUT):
            peer = self.traders[pick + (pick >= self.index)]  # anyone but this trader
            amount = self.rng.randint(0, self.cash // FANOUT)
            self.cash -= amount
            await peer.receive.tell(amount)  # waits only for room in the peer's mailbox
            self.sent += 1

    async def receive(self, amount: int) -> None:
        self.cash += amount
        self.received += 1

    async def balance(self) -> Balance:
        return Balance(self.cash, self.sent, self.received)


class Coordinator(am.Agent):
    """Runs the rounds: everyone plays, then everyone reports; checks conservation."""

    def __init__(self, traders: list[am.AgentRef]) -> None:
        self.traders = traders

    async def run(self, rounds: int) -> Report:
        await asyncio.gather(*(t.meet(self.traders) for t in self.traders))
        asks = len(self.traders)
        total = START_CASH * len(self.traders)
        conserved = True
        balances: list[Balance] = []
        for _ in range(rounds):
            await asyncio.gather(*(t.play() for t in self.traders))
            balances = list(await asyncio.gather(*(t.balance() for t in self.traders)))
            asks += 2 * len(self.traders)
            conserved &= sum(b.cash for b in balances) == total
        sent = sum(b.sent for b in balances)
        received = sum(b.received for b in balances)
        richest = max((b.cash for b in balances), default=START_CASH)
        return Report(rounds, sent, received, asks, conserved and sent == received, richest)


async def main(agents: int, rounds: int, seed: int) -> bool:
    async with am.Mesh() as mesh:
        started = time.perf_counter()
        traders = [await mesh.spawn(Trader, i, seed) for i in range(agents)]
        coordinator = await mesh.spawn(Coordinator, traders, name="coordinator")
        report: Report = await coordinator.run.ask(rounds, timeout=600.0)
        elapsed = time.perf_counter() - started
    messages = report.sent + report.asks + 1  # + the driver's ask to the coordinator
    total = START_CASH * agents
    verdict = "ok" if report.conserved else "VIOLATED"
    print(f"agentmesh demo: a market of {agents} traders on the embedded mesh (seed {seed})")
    print(f"  rounds        {report.rounds}")
    print(f"  payments      {report.sent:,} tells sent, {report.received:,} delivered")
    print(f"  asks          {report.asks + 1:,}")
    print(f"  elapsed       {elapsed:.2f} s (spawning {agents + 1} agents included)")
    print(f"  throughput    {messages / elapsed:,.0f} messages/s")
    print(f"  richest       {report.richest} cash (everyone started with {START_CASH})")
    print(f"  conservation  {verdict}: {total:,} cash in total after every round")
    return report.conserved


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=300, help="traders (default 300)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args()
    if args.agents < FANOUT + 1:
        parser.error(f"--agents must be at least {FANOUT + 1}")
    if args.rounds < 0:
        parser.error("--rounds must not be negative")
    return args


if __name__ == "__main__":
    args = parse_args()
    raise SystemExit(0 if am.run(main(args.agents, args.rounds, args.seed)) else 1)

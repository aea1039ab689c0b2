"""Agent classes shared by the tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import agentmesh as am


class Counter(am.Agent):
    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.seen: list[Any] = []

    async def add(self, n: int = 1) -> int:
        self.value += n
        return self.value

    async def record(self, item: Any) -> None:
        self.seen.append(item)

    async def get(self) -> int:
        return self.value

    async def items(self) -> list[Any]:
        return self.seen

    async def fail(self, message: str) -> None:
        raise ValueError(message)

    async def divide(self, n: int) -> float:
        return self.value / n

    def not_async(self) -> int:
        return 1

    async def _secret(self) -> str:
        return "hidden"


class Sleeper(am.Agent):
    """Blocks the event loop on purpose (``time.sleep`` in a handler): the watchdog's prey."""

    async def nap(self, seconds: float) -> str:
        time.sleep(seconds)  # noqa: ASYNC251  (blocking on purpose: the watchdog names it)
        return "rested"


class Gate(am.Agent):
    """Handlers that wait until the test opens the gate (`World.open_gate`)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.calls: list[str] = []

    async def wait(self, label: str = "") -> str:
        self.calls.append(label)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return label

    async def wait_and_notify(self, label: str, who: am.AgentRef) -> str:
        await who.started.tell()
        return await self.wait(label)

    async def note(self, label: str) -> None:
        self.calls.append(label)

    async def calls_so_far(self) -> list[str]:
        return self.calls

    async def stats(self) -> tuple[int, int]:
        return self.running, self.peak


class Forever(am.Agent):
    async def hang(self) -> None:
        await asyncio.Event().wait()

    async def ping(self) -> str:
        return "pong"


class Relay(am.Agent):
    """Calls other agents given as refs inside messages."""

    async def call(self, target: am.AgentRef, method: str, *args: Any) -> Any:
        return await target[method](*args)

    async def ask_back(self, other: am.AgentRef, depth: int) -> int:
        if depth == 0:
            return 0
        return 1 + await other.ask_back(self.ref, depth - 1)

    async def cycle(self, gate: am.AgentRef, other: am.AgentRef, timeout: float) -> str:
        """Wait at the gate, then ask ``other``: two of these asking each other deadlock."""
        await gate.wait()
        return str(await other.cycle_leaf.ask(timeout=timeout))

    async def fan_back(self, others: list[am.AgentRef]) -> list[str]:
        """Ask several relays at once; each asks this agent back."""
        calls = (other.call(self.ref, "cycle_leaf") for other in others)
        return list(await asyncio.gather(*calls))

    async def cycle_leaf(self) -> str:
        return "leaf"

    async def me(self) -> am.AgentRef:
        return self.ref


class Recorder(am.Agent):
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def log(self, event: Any) -> None:
        self.events.append(event)

    async def all(self) -> list[Any]:
        return self.events


class Stoppable(am.Agent):
    """Reports to a recorder when it stops; counts handled work."""

    def __init__(self, recorder: am.AgentRef, label: str) -> None:
        self.recorder = recorder
        self.label = label
        self.done = 0

    async def work(self) -> None:
        self.done += 1

    async def stop_self(self) -> str:
        await self.ref.stop()
        return "stopping"

    async def on_stop(self) -> None:
        await self.recorder.log.tell((self.label, self.done))


class FanOut(am.Agent):
    """Sends two asks of one call chain to the same agent, the second once the first
    is running there."""

    concurrency = 2  # so that `started` can run while `fan` waits

    def __init__(self) -> None:
        self.first_running = asyncio.Event()

    async def fan(self, target: am.AgentRef) -> list[str]:
        first = asyncio.create_task(target.wait_and_notify("one", self.ref))
        await self.first_running.wait()
        second = await target.wait("two")
        return [await first, second]

    async def started(self) -> None:
        self.first_running.set()


class CallsBackOnStart(am.Agent):
    """Asks a relay during on_start; the relay asks this agent back."""

    def __init__(self, relay: am.AgentRef) -> None:
        self.relay = relay
        self.answer: Any = None

    async def on_start(self) -> None:
        self.answer = await self.relay.call(self.ref, "ping")

    async def ping(self) -> str:
        return "pong"

    async def result(self) -> Any:
        return self.answer


class Probe(am.Agent):
    """Reads and pokes the agents of its own node, for tests whose agents live in
    another process (the `world` fixture's ``process`` kind)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}  # cells by agent id, kept after they end

    def _cell(self, agent_id: str) -> Any:
        cell = self._am_cell.node.cells.get(agent_id) or self.seen[agent_id]
        self.seen[agent_id] = cell
        return cell

    async def track(self, agent_id: str) -> None:
        self._cell(agent_id)

    async def attr(self, agent_id: str, name: str) -> Any:
        return getattr(self._cell(agent_id).instance, name)

    async def open_gate(self, agent_id: str) -> None:
        self._cell(agent_id).instance.gate.set()

    async def cell_value(self, agent_id: str, name: str) -> Any:
        value = getattr(self._cell(agent_id), name)
        return getattr(value, "value", value)  # an enum's value (State)

    async def busy(self, agent_id: str) -> bool:
        return self._cell(agent_id).busy() != []

    async def asks_given_up(self, agent_id: str) -> bool:
        mailbox = self._cell(agent_id).mailbox
        return all(e.reply.done() for e in mailbox.items or () if e.reply)

    async def dead_letters(self) -> int:
        return int(self._am_cell.node.bus.statistics().dead_letters)

    async def info(self, agent_id: str) -> am.AgentInfo:
        return am.AgentInfo.of(self._cell(agent_id))


class Pinger(am.Agent):
    """Asks ``target.add(1)`` over and over from its own task, counting outcomes: the
    traffic between healthy nodes that a membership change must not break."""

    def __init__(self, target: am.AgentRef) -> None:
        self.target = target
        self.ok = 0
        self.failed: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.target.add.ask(1, timeout=30)
                self.ok += 1
            except am.AgentmeshError as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.002)  # pacing, so the node has time for the rest

    async def on_stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def report(self) -> tuple[int, list[str]]:
        return self.ok, self.failed


class Blocker(am.Agent):
    """Blocks its node's loop (a handler calling ``time.sleep``), as a careless
    synchronous LLM or tool call would."""

    async def block(self, seconds: float) -> None:
        time.sleep(seconds)  # noqa: ASYNC251 (the point of this agent)

    async def ping(self) -> str:
        return "pong"


class Picky(am.Agent):
    """Refuses to be built with an argument in ``refused`` (for batch spawns)."""

    def __init__(self, n: int, refused: tuple[int, ...] = ()) -> None:
        if n in refused:
            raise ValueError(f"will not be number {n}")
        self.n = n

    async def number(self) -> int:
        return self.n

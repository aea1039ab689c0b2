"""How agents take turns: no task per message, one task per turn that waits.

Run: python examples/turns.py

- A handler that waits (here on a timeout) keeps its own task from start to end, so
  asyncio.timeout() and TaskGroup work in handlers as anywhere else; meanwhile other
  agents go on handling their messages.
- Each agent has its own context variables: what one agent's handler sets, its later
  turns see, and no other agent does.
- A flooded agent takes at most 32 turns before the next agent gets one: another
  agent's turn comes long before the flood is through.
"""

from __future__ import annotations

import asyncio
import contextvars

import agentmesh as am

user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")


class Assistant(am.Agent):
    def __init__(self) -> None:
        self.handled = 0

    async def slow_tool(self, seconds: float) -> str:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.Event().wait()  # a tool that never answers
        except TimeoutError:
            return f"gave up after {seconds}s"
        return "answered"

    async def log_in(self, name: str) -> None:
        user.set(name)

    async def whoami(self) -> str:
        return user.get()

    async def work(self) -> None:
        self.handled += 1

    async def progress(self) -> int:
        return self.handled

    async def peek(self, other: am.AgentRef) -> int:
        """How many work messages ``other`` has handled, seen from this agent's turn."""
        return (await self.mesh.info(other)).handled - 2  # less its two asks above


async def main() -> None:
    async with am.Mesh() as mesh:
        alice = await mesh.spawn(Assistant, mailbox_size=20_000)
        bob = await mesh.spawn(Assistant)

        waiting = asyncio.ensure_future(alice.slow_tool(0.2))
        await bob.log_in("bob")  # bob is served while alice's turn waits
        print("alice:", await waiting)
        print("bob is", await bob.whoami(), "and alice is", await alice.whoami())

        for _ in range(10_000):
            alice.work.tell_nowait()
        seen = await bob.peek(alice)  # bob's turn comes after at most 32 of alice's
        print(f"bob's turn came when alice had handled {seen} of 10000")
        print("alice handled", await alice.progress(), "in all")


if __name__ == "__main__":
    am.run(main())

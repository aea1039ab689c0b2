"""Quickstart: define agents as async classes, spawn them, ask and tell.

Shows the embedded `Mesh`, an ask (`await ref.method(...)`), a tell that waits only for
mailbox room, and one agent calling another through the ref it was given.
"""

import agentmesh as am


class Counter(am.Agent):
    def __init__(self, start: int) -> None:
        self.value = start

    async def add(self, n: int) -> int:
        self.value += n
        return self.value


class Doubler(am.Agent):
    def __init__(self, counter: am.AgentRef) -> None:
        self.counter = counter

    async def double(self) -> int:
        current: int = await self.counter.add(0)  # an agent asking another agent
        doubled: int = await self.counter.add(current)
        return doubled


async def main() -> None:
    async with am.Mesh() as mesh:  # embedded: in this process, nothing listens
        counter = await mesh.spawn(Counter, 1, name="counter")
        doubler = await mesh.spawn(Doubler, counter)
        await counter.add.tell(2)  # tell: no reply, waits only for mailbox room
        print(await counter.add(3))  # ask: prints 6, since one sender's messages keep order
        print(await doubler.double())  # prints 12
    # leaving the block stopped both agents, newest first


am.run(main())

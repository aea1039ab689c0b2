"""The bounded mailbox on its own: FIFO, capacity, fair waiting senders."""

from __future__ import annotations

import asyncio

import pytest

import agentmesh as am
from agentmesh._private.kernel.mailbox import Mailbox

from .conftest import wait_for


def test_fifo_and_capacity() -> None:
    box: Mailbox[int] = Mailbox(3)
    for i in range(3):
        box.put_nowait(i)
    assert not box.has_room()
    with pytest.raises(am.MailboxFull):
        box.put_nowait(99)
    assert [box.popleft() for _ in range(3)] == [0, 1, 2]
    assert not box


def test_invalid_capacity() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Mailbox(0)


def test_an_empty_mailbox_holds_no_buffer() -> None:
    box: Mailbox[int] = Mailbox(2)
    assert box.items is None
    box.put_nowait(1)
    box.popleft()
    box.release()
    assert box.items is None


async def test_waiting_senders_are_served_in_order_and_not_overtaken() -> None:
    box: Mailbox[str] = Mailbox(1)
    box.put_nowait("first")
    waiters = [asyncio.create_task(box.put(f"w{i}")) for i in range(3)]
    await wait_for(lambda: box.putters is not None and len(box.putters) == 3, what="3 waiting")
    assert box.popleft() == "first"
    # The freed slot is reserved for w0: a nowait sender cannot take it.
    with pytest.raises(am.MailboxFull):
        box.put_nowait("sneaky")
    got = []
    for _ in range(3):
        await wait_for(lambda: bool(box), what="a waiter got in")
        got.append(box.popleft())
    await asyncio.gather(*waiters)
    assert got == ["w0", "w1", "w2"]


async def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    box: Mailbox[str] = Mailbox(1)
    box.put_nowait("first")
    w0 = asyncio.create_task(box.put("w0"))
    w1 = asyncio.create_task(box.put("w1"))
    await wait_for(lambda: box.putters is not None and len(box.putters) == 2, what="2 waiting")
    w0.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w0
    box.popleft()
    await asyncio.wait_for(w1, 1)
    assert box.popleft() == "w1"


async def test_fail_putters_refuses_waiting_senders() -> None:
    box: Mailbox[str] = Mailbox(1)
    box.put_nowait("first")
    waiter = asyncio.create_task(box.put("late"))
    await wait_for(lambda: bool(box.putters), what="waiting")
    box.fail_putters("agent is stopping")
    with pytest.raises(am.AgentUnavailable, match="stopping"):
        await waiter
    assert box.drain() == ["first"]

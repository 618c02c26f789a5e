"""The line's priority lock: urgent writes jump the poll queue, nothing starves or deadlocks."""

from __future__ import annotations

import asyncio

from drivers.bus_lock import ROUTINE, URGENT, PriorityLock


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_priority_lock__urgent_first_then_fifo() -> None:
    """A command's write would wait behind a whole round of routine polls."""
    lock = PriorityLock()
    order: list[str] = []
    release = asyncio.Event()

    async def user(name: str, priority: int, hold: asyncio.Event | None = None) -> None:
        async with lock.hold(priority):
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(user("poll-0", ROUTINE, release))
    await _settle()
    tasks = [asyncio.create_task(user(f"poll-{i}", ROUTINE)) for i in (1, 2)]
    await _settle()
    tasks.append(asyncio.create_task(user("write", URGENT)))
    await _settle()
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["poll-0", "write", "poll-1", "poll-2"]
    assert not lock.locked


async def test_priority_lock__cancelled_waiter_does_not_block_the_line() -> None:
    """A cancelled poll would leave the RS-485 line locked for ever."""
    lock = PriorityLock()
    release = asyncio.Event()

    async def holder() -> None:
        async with lock.hold(ROUTINE):
            await release.wait()

    async def waiter() -> None:
        async with lock.hold(URGENT):
            pass

    h = asyncio.create_task(holder())
    await _settle()
    w = asyncio.create_task(waiter())
    await _settle()
    w.cancel()
    release.set()
    await h
    await asyncio.wait_for(asyncio.create_task(waiter()), timeout=5)
    assert not lock.locked

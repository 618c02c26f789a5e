"""A lock that serves its waiters by priority, then in arrival order.

One RS-485 line carries many devices and one transaction at a time
(DESIGN.md, "Drivers, profiles and buses"): a command's write or a rule
waiting on a value must not queue behind a round of routine polls.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# Lower numbers go first.
URGENT = 0  # writes from commands and fail-safe rules
ROUTINE = 10  # periodic polls


class PriorityLock:
    """``async with lock.hold(priority):`` — FIFO within a priority level.

    ``slots`` holders at once (default 1, a lock): a Modbus TCP connection may carry
    several transactions in flight, still served writes first.
    """

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def locked(self) -> bool:
        return self._free == 0

    @asynccontextmanager
    async def hold(self, priority: int = ROUTINE) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted just as we were cancelled: pass the slot on.
                self._release()
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot passes directly; _free stays as it is
                return
        self._free += 1

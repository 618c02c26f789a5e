"""Injected time: wall clock, monotonic clock and sleep behind one interface.

Logic never calls ``time.time()`` or ``asyncio.sleep()`` directly (DESIGN.md,
"Time is injected"): it receives a :class:`Clock`. Production uses
:class:`SystemClock`; tests use :class:`FakeClock`, which only moves when the
test advances it, so a night of schedule runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """What time-dependent code may ask about time."""

    def wall(self) -> float:
        """Seconds since the Unix epoch (UTC). May jump (RTC reset, NTP)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of this clock's time."""


def wall_ms(clock: Clock) -> int:
    """Wall time in whole milliseconds, the unit of every timestamp on the wire."""
    return int(clock.wall() * 1000)


class SystemClock:
    """The real clocks of the machine."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when :meth:`advance` is called.

    Sleepers wake in deadline order as time is advanced past their deadline;
    ``advance`` yields to the loop after each wake so woken tasks run before
    time moves on, as they would in real time.
    """

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall0 = wall
        self._mono0 = monotonic
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def wall(self) -> float:
        return self._wall0 + self._elapsed

    def monotonic(self) -> float:
        return self._mono0 + self._elapsed

    def set_wall(self, wall: float) -> None:
        """Make the wall clock jump (an RTC reset or an NTP step); monotonic time is unaffected."""
        self._wall0 = wall - self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._ids), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock (useful to wait until a loop is parked)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline passes."""
        target = self._elapsed + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._elapsed = max(self._elapsed, deadline)
            if not fut.done():
                fut.set_result(None)
            await _settle()
        self._elapsed = target
        await _settle()


async def _settle(rounds: int = 20) -> None:
    # Give woken tasks a few loop iterations to run to their next await.
    for _ in range(rounds):
        await asyncio.sleep(0)

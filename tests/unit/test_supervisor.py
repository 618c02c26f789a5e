"""The supervisor keeps loops alive on the fake clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from agent.clock import FakeClock
from agent.supervisor import supervise


async def test_supervise__restarts_failed_loop_with_backoff() -> None:
    """One buggy loop would take the whole agent, and the street lighting logic, down."""
    clock = FakeClock()
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(clock.monotonic())
        raise RuntimeError("bug")

    task = asyncio.create_task(supervise("flaky", flaky, clock, restart_min=1, restart_max=4))
    await clock.advance(20)
    task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[:5] == [1, 2, 4, 4, 4]


async def test_supervise__cancellation_is_not_swallowed() -> None:
    """The agent could not shut down: a cancelled loop would be restarted."""
    clock = FakeClock()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("forever", forever, clock))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_supervise__backoff_resets_after_a_healthy_run() -> None:
    """A loop that failed a few times on boot and then ran for hours would, on its next
    failure, wait the capped minute instead of a second: the lamps' schedule stalled."""
    clock = FakeClock()
    starts: list[float] = []
    # Four quick failures raise the delay to its cap; the fifth run lasts an hour.
    runs = iter([0.0, 0.0, 0.0, 0.0, 3600.0, 0.0, 0.0])

    async def loop() -> None:
        starts.append(clock.monotonic())
        await clock.sleep(next(runs, 0.0))
        raise RuntimeError("bug")

    task = asyncio.create_task(supervise("loop", loop, clock, restart_min=1, restart_max=8))
    while len(starts) < 8:
        await clock.advance(1)
    task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 1, 2, 4, 8 between the quick failures; after the hour-long run it starts over at 1.
    assert gaps == [1, 2, 4, 8, 3600 + 1, 2, 4]

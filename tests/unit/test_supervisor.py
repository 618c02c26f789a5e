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

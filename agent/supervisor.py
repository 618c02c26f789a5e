"""Keeps the agent's long-running loops alive.

DESIGN.md, "Structured concurrency": tasks live in one ``asyncio.TaskGroup``;
a loop that fails with an unexpected exception is logged and restarted with
capped exponential backoff instead of taking the whole agent (and the street
lighting logic with it) down. Cancellation is never swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from agent.clock import Clock

log = logging.getLogger(__name__)

# First restart delay and cap, seconds: quick enough to recover from a transient
# bug, slow enough not to spin on a persistent one.
RESTART_MIN = 1.0
RESTART_MAX = 60.0
# A loop that ran this long before failing is considered healthy: backoff resets.
HEALTHY_AFTER = 300.0


async def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    clock: Clock,
    *,
    restart_min: float = RESTART_MIN,
    restart_max: float = RESTART_MAX,
) -> None:
    """Run ``loop()`` forever, restarting it with backoff whenever it fails or returns."""
    delay = restart_min
    restarts = 0
    while True:
        started = clock.monotonic()
        try:
            await loop()
            log.error("task %s returned unexpectedly; restarting in %.1f s", name, delay)
        except Exception:
            log.exception("task %s failed; restarting in %.1f s", name, delay)
        restarts += 1
        if clock.monotonic() - started >= HEALTHY_AFTER:
            delay = restart_min
        await clock.sleep(delay)
        delay = min(delay * 2, restart_max)

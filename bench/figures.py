"""What the latency benchmarks share: summarising measured delays, waiting for a condition.

Imported by the scripts beside it (``python bench/failsafe.py`` puts ``bench/`` on the path).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable


def ms_summary(seconds: list[float]) -> dict[str, float]:
    """Count, median, p99 and max of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "count": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def until(predicate: Callable[[], bool], within: float) -> float:
    """Poll every millisecond; the monotonic time the predicate became true."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)
    return time.monotonic()

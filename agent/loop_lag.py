"""Event-loop lag: how late the agent's loop runs what is due (status.json ``loop_lag``).

Everything the agent does shares one asyncio loop: a callback that blocks it delays polling,
hold expiry, keepalives. A probe sleeps `PERIOD` seconds again and again and records how much
later than asked it woke; the last `WINDOW` samples give the figures in status.json.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from agent.clock import Clock

PERIOD: Final = 0.05  # seconds between probes
WINDOW: Final = 1200  # samples kept: the last minute


class LoopLag:
    """Measures the loop's lag; `run` is a supervised task, `statistics` goes to status.json."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self.worst_ms = 0.0  # since start

    async def run(self) -> None:
        while True:
            start = self._clock.monotonic()
            await self._clock.sleep(PERIOD)
            lag = max(0.0, self._clock.monotonic() - start - PERIOD) * 1000
            self._samples.append(lag)
            self.worst_ms = max(self.worst_ms, lag)

    def statistics(self) -> dict[str, float]:
        """Lag in ms over the last `WINDOW` probes (p50, p99, max) and the worst since start."""
        ordered = sorted(self._samples)
        if not ordered:
            return {"samples": 0}

        def pct(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

        return {
            "samples": len(ordered),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1], 1),
            "worst_ms": round(self.worst_ms, 1),
        }

"""Bus health: what each device and each shared medium cost, counted by the transports.

Per device (:class:`DeviceHealth`): requests, timeouts, framing errors (CRC, MBAP),
exception responses, other bad replies, and the latency of its answers; per line
(:class:`LineHealth`): the time the medium was busy with transactions. Counters are
cumulative; :meth:`DeviceHealth.window` and :meth:`LineHealth.window` close the current
window and give its figures (latency percentiles, utilisation), which the agent sends
as telemetry at a low rate and shows in ``status.json``.

Transports measure with the event loop's clock (I/O timing, like their timeouts);
nothing here reads a clock: times are passed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# Latencies kept per window: a device polled every 50 ms for a minute gives 1,200
# answers; beyond this the oldest are dropped (the percentiles then cover the last
# 2,048 answers of the window), so memory per device stays bounded.
LATENCY_SAMPLES: Final = 2048


class Outcome(StrEnum):
    """How one transaction ended."""

    ANSWERED = "answered"
    TIMEOUT = "timeout"  # no reply, or a reply cut short
    FRAMING = "framing"  # CRC error, MBAP framing error
    EXCEPTION = "exception"  # a Modbus exception response (the device answered)
    OTHER = "other"  # wrong unit or function, malformed reply, busy line, lost link


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (not empty)."""
    # Rounded first: 0.99 * 100 is 99.00000000000001 in floating point.
    rank = math.ceil(round(fraction * len(sorted_values), 9))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceWindow:
    """One device's figures over a window: counts, and latency in seconds (None: no answer)."""

    requests: int
    timeouts: int
    framing_errors: int
    exceptions: int
    other_errors: int
    latency_p50: float | None
    latency_p99: float | None


class DeviceHealth:
    """The counters of one device on its bus, fed by its transport."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(Outcome, 0)
        self._at_window = dict(self.counts)
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.last: DeviceWindow | None = None

    def record(self, outcome: Outcome, latency: float | None = None) -> None:
        """One transaction ended with ``outcome``; ``latency``: request sent to reply in."""
        self.counts[outcome] += 1
        if latency is not None:
            self._latencies.append(latency)

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def window(self) -> DeviceWindow:
        """Close the current window: its figures (also kept as :attr:`last`)."""
        delta = {k: self.counts[k] - self._at_window[k] for k in Outcome}
        self._at_window = dict(self.counts)
        latencies = sorted(self._latencies)
        self._latencies.clear()
        self.last = DeviceWindow(
            requests=sum(delta.values()),
            timeouts=delta[Outcome.TIMEOUT],
            framing_errors=delta[Outcome.FRAMING],
            exceptions=delta[Outcome.EXCEPTION],
            other_errors=delta[Outcome.OTHER],
            latency_p50=percentile(latencies, 0.50) if latencies else None,
            latency_p99=percentile(latencies, 0.99) if latencies else None,
        )
        return self.last

    def statistics(self) -> dict[str, object]:
        """Cumulative counters and the last window's latency (``status.json``)."""
        last = self.last
        return {
            "requests": self.requests,
            "timeouts": self.counts[Outcome.TIMEOUT],
            "framing_errors": self.counts[Outcome.FRAMING],
            "exceptions": self.counts[Outcome.EXCEPTION],
            "other_errors": self.counts[Outcome.OTHER],
            "latency_p50_ms": _ms(last.latency_p50) if last else None,
            "latency_p99_ms": _ms(last.latency_p99) if last else None,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class LineHealth:
    """How busy a shared medium is: seconds spent in transactions, per window.

    The first :meth:`window` call only opens a window (it returns None).
    """

    def __init__(self) -> None:
        self.busy = 0.0
        self._window_start: float | None = None
        self._busy_at_window = 0.0
        self.utilisation: float | None = None

    def add_busy(self, seconds: float) -> None:
        self.busy += seconds

    def window(self, now: float) -> float | None:
        """Close the current window: the fraction of it the medium was busy (0..1)."""
        start, busy = self._window_start, self.busy - self._busy_at_window
        self._window_start, self._busy_at_window = now, self.busy
        if start is None:
            return None
        length = now - start
        self.utilisation = min(1.0, busy / length) if length > 0 else 0.0
        return self.utilisation


def percent(fraction: float | None) -> float | None:
    """A fraction as a percentage with one decimal (None stays None)."""
    return None if fraction is None else round(100 * fraction, 1)

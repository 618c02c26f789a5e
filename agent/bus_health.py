"""Bus health as telemetry: what each device and each line cost, at a low rate.

Every ``[polling] health_interval`` seconds (default 60) the transports' counters
(drivers/health.py) are closed into a window and written to the Points table, so the
reporter sends them like any reading and the control room sees a device that times
out or answers garbage before it fails outright:

- ``<device>/bus.requests``, ``bus.timeouts``, ``bus.framing_errors`` (CRC, MBAP),
  ``bus.exceptions`` (Modbus exception replies): counts over the window;
- ``<device>/bus.latency_p50``, ``bus.latency_p99``: ms from request to reply over the
  window (quality ``comm_fail`` when the device was asked and gave no answer; not
  updated for a window in which it was not polled);
- ``bus/<line>.utilisation``: % of the window the line (or TCP connection) spent in
  transactions.

Point names hold a ``.``, which no profile point may (``[a-z0-9_]``), so they never
collide with a device's own points.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Final

from agent.clock import Clock, wall_ms
from agent.points import Points, Quality, Sample, Value
from drivers.health import DeviceHealth, LineHealth, percent

GROUP: Final = "bus"
COUNTS: Final = (
    ("bus.requests", "requests"),
    ("bus.timeouts", "timeouts"),
    ("bus.framing_errors", "framing_errors"),
    ("bus.exceptions", "exceptions"),
)
LATENCIES: Final = (("bus.latency_p50", "latency_p50"), ("bus.latency_p99", "latency_p99"))
UTILISATION: Final = "utilisation"
_NOT_IN_A_NAME: Final = re.compile(r"[^a-z0-9_-]")


def line_point(key: str) -> str:
    """The utilisation point of the line or connection ``key`` (``bus/rs485_1.utilisation``)."""
    return f"{GROUP}/{_NOT_IN_A_NAME.sub('_', key.lower())}.{UTILISATION}"


class BusHealthPoints:
    """Publishes the bus health of ``devices`` (by device name) and ``lines`` (by key)."""

    def __init__(
        self,
        *,
        devices: Mapping[str, DeviceHealth],
        lines: Mapping[str, LineHealth],
        points: Points,
        clock: Clock,
        interval: float,
        io_time: Callable[[], float] | None = None,
    ) -> None:
        self._devices = devices
        self._lines = lines
        self._points = points
        self._clock = clock
        self._interval = interval
        # The transports measure busy time on the event loop's clock (I/O timing), so
        # utilisation windows are measured on it too.
        self._io_time = io_time or (lambda: asyncio.get_running_loop().time())
        self.windows = 0

    def units(self) -> dict[str, str]:
        """Every point this publishes, with its unit (for the Birth and the reporter)."""
        names = {}
        for device in self._devices:
            names.update({f"{device}/{point}": "" for point, _ in COUNTS})
            names.update({f"{device}/{point}": "ms" for point, _ in LATENCIES})
        names.update({line_point(key): "%" for key in self._lines})
        return names

    def publish(self) -> None:
        """Close the current window of every device and line and write its figures."""
        t_ms = wall_ms(self._clock)
        now = self._io_time()
        for device, health in self._devices.items():
            window = health.window()
            for point, field in COUNTS:
                self._update(f"{device}/{point}", getattr(window, field), t_ms)
            if not window.requests:
                # Not polled in this window (a slow poll period): no news, not silence,
                # which must not read as comm_fail (rules escalate that).
                continue
            for point, field in LATENCIES:
                seconds = getattr(window, field)
                value = None if seconds is None else round(seconds * 1000, 2)
                quality = Quality.COMM_FAIL if value is None else Quality.GOOD
                self._update(f"{device}/{point}", value, t_ms, quality)
        for key, line in self._lines.items():
            utilisation = line.window(now)
            if utilisation is not None:
                self._update(line_point(key), percent(utilisation), t_ms)
        self.windows += 1

    def _update(self, name: str, value: Value, t_ms: int, quality: Quality = Quality.GOOD) -> None:
        self._points.update(Sample(name=name, value=value, quality=quality, t_ms=t_ms))

    async def run(self) -> None:
        """Open the lines' first window now, then publish every interval, forever."""
        now = self._io_time()
        for line in self._lines.values():
            line.window(now)
        while True:
            await self._clock.sleep(self._interval)
            self.publish()

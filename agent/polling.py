"""Polls one device through its driver and keeps its points in the table.

One poller owns each device (STYLE.md, "Polling devices"): the schedule, the link
state (``online``, ``degraded``, ``comm_fail`` after N misses), the backoff of a dead
device, logging its loss and return once, and the quality of its values against their
specs. How a device is read is its driver's business (:class:`drivers.device.Device`);
the poller catches only :class:`~drivers.device.DriverError`. A driver whose device
also reports changes by itself (:meth:`~drivers.device.Device.watch`) has those
reports checked the same way.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from enum import StrEnum

from agent.arbiter import DeviceWriteError
from agent.clock import Clock, wall_ms
from agent.config import DeviceConfig, PollingConfig
from agent.points import Points, Quality, Sample, Value
from drivers.device import Device, DriverError, Reading
from drivers.point import PointSpec

log = logging.getLogger(__name__)

# Backoff jitter: spreads retries of several dead devices so they don't line up.
JITTER = 0.1


class LinkState(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"  # missed polls, not yet declared failed
    COMM_FAIL = "comm_fail"


def link_state(misses: int, miss_limit: int) -> LinkState:
    """The device link state as a function of consecutive missed polls."""
    if misses == 0:
        return LinkState.ONLINE
    if misses < miss_limit:
        return LinkState.DEGRADED
    return LinkState.COMM_FAIL


class DevicePoller:
    """Polls one device at its period; marks its points ``comm_fail`` after N misses."""

    def __init__(
        self,
        *,
        device: DeviceConfig,
        driver: Device,
        points: Points,
        clock: Clock,
        polling: PollingConfig,
        rng: random.Random | None = None,
        on_link_change: Callable[[str, LinkState], None] | None = None,
        assume_failed: bool = False,
    ) -> None:
        self.device = device
        self.driver = driver
        self._on_link_change = on_link_change
        self._points = points
        self._clock = clock
        self._polling = polling
        self._rng = rng or random.Random()
        self._specs: dict[str, PointSpec] = {spec.name: spec for spec in device.profile.points}
        self._names = {name: f"{device.name}/{name}" for name in self._specs}
        # A device whose comm_fail alarm is still active (from before a restart)
        # starts failed: answering clears the alarm, silence does not raise it again.
        self.misses = polling.miss_limit if assume_failed else 0
        self.state = link_state(self.misses, polling.miss_limit)
        self._points_failed = False
        self.polls = 0
        self.failures = 0
        # Wall-clock ms of the last poll and of the last answer (status, console).
        self.last_poll_ms: int | None = None
        self.last_answer_ms: int | None = None

    async def poll_once(self) -> bool:
        """Read the device's points once; returns whether it answered."""
        self.polls += 1
        t_ms = wall_ms(self._clock)
        self.last_poll_ms = t_ms
        try:
            readings = await self.driver.read()
        except DriverError as exc:
            self.failures += 1
            self._missed(exc)
            return False
        self._store(readings, t_ms)
        self.last_answer_ms = t_ms
        self._answered()
        return True

    def _store(self, readings: Mapping[str, Reading], t_ms: int) -> None:
        for point, value in readings.items():
            spec = self._specs.get(point)
            if spec is None:
                continue  # a driver reporting more than its model says: not ours to publish
            good = value is not None and spec.in_range(value)
            self._points.update(
                Sample(
                    name=self._names[point],
                    value=value,
                    quality=Quality.GOOD if good else Quality.OUT_OF_RANGE,
                    t_ms=t_ms,
                )
            )

    def report(self, readings: Mapping[str, Reading]) -> None:
        """Changes an event-driven device reported by itself (:meth:`Device.watch`)."""
        t_ms = wall_ms(self._clock)
        self._store(readings, t_ms)
        self.last_answer_ms = t_ms
        if self.state is not LinkState.ONLINE:
            self._answered()

    async def write(self, name: str, value: Value) -> None:
        """Write one point of this device; the Points table shows the value at once.

        Raises ``DeviceWriteError`` (with the driver's cause) if the device refuses or
        does not answer; the point's quality then shows ``comm_fail``.
        """
        spec = self._specs[name]
        full = self._names[name]
        problem = spec.write_problem(value, label=full)
        if problem is not None:
            raise DeviceWriteError(full, problem)
        try:
            held = await self.driver.write(name, value)
        except DriverError as exc:
            self._mark_failed(name, wall_ms(self._clock))
            raise DeviceWriteError(full, exc.reason) from exc
        self._points.update(
            Sample(name=full, value=held, quality=Quality.GOOD, t_ms=wall_ms(self._clock))
        )

    def _answered(self) -> None:
        failed = self.state is LinkState.COMM_FAIL
        self.misses = 0
        self.state = LinkState.ONLINE
        self._points_failed = False
        if failed:
            log.warning("%s back", self.device.name)
            if self._on_link_change is not None:
                self._on_link_change(self.device.name, LinkState.ONLINE)

    def _missed(self, exc: DriverError) -> None:
        self.misses += 1
        state = link_state(self.misses, self._polling.miss_limit)
        if state is LinkState.COMM_FAIL and not self._points_failed:
            self._points_failed = True
            t_ms = wall_ms(self._clock)
            for name in self._specs:
                self._mark_failed(name, t_ms)
        changed = state is not self.state
        self.state = state
        if changed and state is LinkState.COMM_FAIL:
            log.warning("%s unreachable (%s)", self.device.name, exc)
            if self._on_link_change is not None:
                self._on_link_change(self.device.name, state)

    def _mark_failed(self, point: str, t_ms: int) -> None:
        # The last known value stays, flagged: the device did not confirm it.
        name = self._names[point]
        last = self._points.get(name)
        self._points.update(
            Sample(
                name=name,
                value=None if last is None else last.value,
                quality=Quality.COMM_FAIL,
                t_ms=t_ms,
            )
        )

    def next_interval(self) -> float:
        """Seconds to the next poll: the period, or a jittered backoff while failed."""
        period = self.device.poll
        if self.state is not LinkState.COMM_FAIL:
            return period
        excess = self.misses - self._polling.miss_limit
        backoff: float = min(period * 2.0 ** min(excess + 1, 20), self._polling.backoff_max)
        return max(period, backoff * (1 + self._rng.uniform(-JITTER, JITTER)))

    async def run(self, *, offset: float = 0.0) -> None:
        """Poll forever at a fixed rate (deadline based, no drift), and take the
        device's own reports meanwhile.

        ``offset`` delays the first poll, so devices sharing a line and a period
        are spread over it instead of all queueing at the same instant.
        """
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name=f"driver[{self.device.name}].watch")
            await self._poll_loop(offset)

    async def _poll_loop(self, offset: float) -> None:
        await self._clock.sleep(offset)
        deadline = self._clock.monotonic()
        while True:
            await self.poll_once()
            deadline = max(deadline + self.next_interval(), self._clock.monotonic())
            await self._clock.sleep(deadline - self._clock.monotonic())

    async def _watch(self) -> None:
        """Run the device's watch; a watch that fails is started again after a poll
        interval (its loss shows through the polls)."""
        reported: str | None = None
        while True:
            try:
                await self.driver.watch(self.report)
                return  # a device without events
            except DriverError as exc:
                if exc.reason != reported:
                    log.warning("%s: watching stopped (%s); restarting it", self.device.name, exc)
                    reported = exc.reason
            await self._clock.sleep(self.next_interval())

"""Polls the devices of one serial line and keeps their points in the table.

One poller owns each device's I/O (STYLE.md, "Polling devices"); the line's
transport serialises transactions, so one slow or dead device costs the others
at most one response timeout per attempt, and a dead device is retried with
backoff so it does not keep doing that.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from enum import StrEnum

from agent.arbiter import DeviceWriteError
from agent.clock import Clock, wall_ms
from agent.config import DeviceConfig, PollingConfig
from agent.points import Points, Quality, Sample, Value
from drivers.bus_lock import URGENT
from drivers.modbus.codec import (
    LocalProtocolError,
    ReadHoldingRegisters,
    ReadInputRegisters,
    RegistersRead,
    RemoteProtocolError,
    WriteMultipleRegisters,
    WriteSingleRegister,
)
from drivers.modbus.transport import RtuTransport
from drivers.profile import PointSpec, ReadBlock, decode, encode, in_range, plan_reads

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
        transport: RtuTransport,
        points: Points,
        clock: Clock,
        polling: PollingConfig,
        rng: random.Random | None = None,
        on_link_change: Callable[[str, LinkState], None] | None = None,
        assume_failed: bool = False,
    ) -> None:
        self.device = device
        self._on_link_change = on_link_change
        self._transport = transport
        self._points = points
        self._clock = clock
        self._polling = polling
        self._rng = rng or random.Random()
        self._blocks = plan_reads(device.profile.points)
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

    def _name(self, spec: PointSpec) -> str:
        return f"{self.device.name}/{spec.name}"

    async def poll_once(self) -> bool:
        """Read every block of the device once; returns whether it answered."""
        self.polls += 1
        t_ms = wall_ms(self._clock)
        self.last_poll_ms = t_ms
        try:
            results = [(block, await self._read(block)) for block in self._blocks]
        except (RemoteProtocolError, OSError, LocalProtocolError) as exc:
            # OSError includes PortUnavailable: a line that is absent or being
            # reopened makes its devices miss polls like silent ones.
            self.failures += 1
            self._missed(exc)
            return False
        for block, values in results:
            for spec in block.points:
                offset = spec.address - block.address
                raw = values[offset : offset + spec.count]
                value: Value
                try:
                    value = decode(spec, raw)
                    quality = Quality.GOOD if in_range(spec, value) else Quality.OUT_OF_RANGE
                except ValueError:
                    value, quality = None, Quality.OUT_OF_RANGE
                self._points.update(
                    Sample(name=self._name(spec), value=value, quality=quality, t_ms=t_ms)
                )
        self.last_answer_ms = t_ms
        self._answered()
        return True

    async def _read(self, block: ReadBlock) -> tuple[int, ...]:
        unit = self.device.address
        request = (
            ReadHoldingRegisters(unit=unit, address=block.address, count=block.count)
            if block.table == "holding"
            else ReadInputRegisters(unit=unit, address=block.address, count=block.count)
        )
        response = await self._transport.transact(request)
        assert isinstance(response, RegistersRead)
        return response.values

    async def write(self, name: str, value: Value) -> None:
        """Write one point of this device; the Points table shows the value at once.

        Raises ``DeviceWriteError`` (with the Modbus cause) if the device refuses or
        does not answer; the point's quality then shows ``comm_fail``.
        """
        spec = self.device.profile.point(name)
        if value is None or isinstance(value, str):
            raise DeviceWriteError(f"{self.device.name}/{name}", f"cannot write {value!r}")
        try:
            registers = encode(spec, value)
        except ValueError as exc:
            raise DeviceWriteError(f"{self.device.name}/{name}", str(exc)) from exc
        unit = self.device.address
        request = (
            WriteSingleRegister(unit=unit, address=spec.address, value=registers[0])
            if len(registers) == 1
            else WriteMultipleRegisters(unit=unit, address=spec.address, values=registers)
        )
        full = self._name(spec)
        try:
            await self._transport.transact(request, priority=URGENT)
        except (RemoteProtocolError, OSError, LocalProtocolError) as exc:
            self._mark_failed(spec, wall_ms(self._clock))
            raise DeviceWriteError(full, str(exc)) from exc
        self._points.update(
            Sample(
                name=full,
                value=decode(spec, registers),
                quality=Quality.GOOD,
                t_ms=wall_ms(self._clock),
            )
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

    def _missed(self, exc: Exception) -> None:
        self.misses += 1
        state = link_state(self.misses, self._polling.miss_limit)
        if state is LinkState.COMM_FAIL and not self._points_failed:
            self._points_failed = True
            t_ms = wall_ms(self._clock)
            for spec in self.device.profile.points:
                self._mark_failed(spec, t_ms)
        changed = state is not self.state
        self.state = state
        if changed and state is LinkState.COMM_FAIL:
            log.warning("%s unreachable (%s)", self.device.name, exc)
            if self._on_link_change is not None:
                self._on_link_change(self.device.name, state)

    def _mark_failed(self, spec: PointSpec, t_ms: int) -> None:
        # The last known value stays, flagged: the device did not confirm it.
        name = self._name(spec)
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
        """Poll forever at a fixed rate (deadline based, no drift).

        ``offset`` delays the first poll, so devices sharing a line and a period
        are spread over it instead of all queueing at the same instant.
        """
        await self._clock.sleep(offset)
        deadline = self._clock.monotonic()
        while True:
            await self.poll_once()
            deadline = max(deadline + self.next_interval(), self._clock.monotonic())
            await self._clock.sleep(deadline - self._clock.monotonic())

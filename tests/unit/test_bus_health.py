"""Bus health: the counters' windows, and their publication as telemetry points."""

from __future__ import annotations

import asyncio

import pytest

from agent.bus_health import BusHealthPoints, line_point
from agent.clock import FakeClock
from agent.points import Points, Quality
from drivers.health import DeviceHealth, LineHealth, Outcome, percentile


def test_percentile__nearest_rank() -> None:
    """A p99 that is really a p50 would hide the slow answers the control room asks about."""
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_device_window__counts_since_the_last_window_and_latency_of_answers() -> None:
    """Each window must show what happened in it, not since the agent started."""
    health = DeviceHealth()
    for latency in (0.010, 0.020, 0.030):
        health.record(Outcome.ANSWERED, latency)
    health.record(Outcome.TIMEOUT)
    health.record(Outcome.FRAMING)
    health.record(Outcome.EXCEPTION, 0.005)
    first = health.window()
    assert (first.requests, first.timeouts, first.framing_errors, first.exceptions) == (6, 1, 1, 1)
    assert first.latency_p50 == 0.010
    assert first.latency_p99 == 0.030
    health.record(Outcome.TIMEOUT)
    second = health.window()
    assert (second.requests, second.timeouts, second.latency_p50) == (1, 1, None)
    assert health.statistics()["requests"] == 7
    assert health.statistics()["timeouts"] == 2


def test_line_window__busy_fraction_of_each_window() -> None:
    """Utilisation is what tells a saturated line from a dead device."""
    line = LineHealth()
    assert line.window(100.0) is None  # opens the first window
    line.add_busy(2.5)
    assert line.window(110.0) == pytest.approx(0.25)
    assert line.window(120.0) == 0.0


async def test_publish__points_every_interval_on_the_fake_clock() -> None:
    """The control room gets each device's and line's health, at the configured rate."""
    clock, points = FakeClock(), Points()
    device, line = DeviceHealth(), LineHealth()
    io_time = [0.0]
    publisher = BusHealthPoints(
        devices={"lamp-01": device},
        lines={"rs485_1": line},
        points=points,
        clock=clock,
        interval=60.0,
        io_time=lambda: io_time[0],
    )
    assert publisher.units() == {
        "lamp-01/bus.requests": "",
        "lamp-01/bus.timeouts": "",
        "lamp-01/bus.framing_errors": "",
        "lamp-01/bus.exceptions": "",
        "lamp-01/bus.latency_p50": "ms",
        "lamp-01/bus.latency_p99": "ms",
        "bus/rs485_1.utilisation": "%",
    }
    task = asyncio.create_task(publisher.run())
    try:
        await clock.advance(0)
        device.record(Outcome.ANSWERED, 0.0125)
        device.record(Outcome.TIMEOUT)
        line.add_busy(6.0)
        io_time[0] = 60.0
        await clock.advance(59.9)
        assert publisher.windows == 0
        await clock.advance(0.1)
        assert publisher.windows == 1

        def value(name: str) -> object:
            sample = points.get(name)
            assert sample is not None
            return sample.value

        assert value("lamp-01/bus.requests") == 2
        assert value("lamp-01/bus.timeouts") == 1
        assert value("lamp-01/bus.latency_p99") == 12.5
        assert value(line_point("rs485_1")) == 10.0
        # A window without a poll says nothing of latency...
        io_time[0] = 120.0
        await clock.advance(60)
        assert value("lamp-01/bus.requests") == 0
        assert value("lamp-01/bus.latency_p99") == 12.5
        # ... one whose polls all went unanswered says the device is silent.
        device.record(Outcome.TIMEOUT)
        await clock.advance(60)
        silent = points.get("lamp-01/bus.latency_p50")
        assert silent is not None
        assert (silent.value, silent.quality) == (None, Quality.COMM_FAIL)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_line_point__any_bus_key_gives_a_point_name() -> None:
    """A TCP server's key must not break the point's device/point form."""
    assert line_point("rs485_1") == "bus/rs485_1.utilisation"
    assert line_point("10.0.0.5:502") == "bus/10_0_0_5_502.utilisation"

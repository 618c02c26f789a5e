"""The poller over a real serial line: Modbus RTU through a pty to the simulator's lamp
controller (pymodbus, an implementation independent of ours), with the line's own fault
injection between them (sim/serial_line.py): a reply with a flipped bit, a slow device,
a cut cable. And a serial port that is not open. Each fault is one missed poll, the
device goes ``comm_fail`` after ``miss_limit`` of them, and nothing escapes the poller.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.arbiter import DeviceWriteError
from agent.clock import FakeClock
from agent.config import DeviceConfig, PollingConfig
from agent.points import Points, Quality
from agent.polling import DevicePoller, LinkState
from drivers.modbus import RtuTransport
from drivers.modbus.device import ModbusDevice
from drivers.profile import load_profile
from sim.cabinet import Cabinet, Scenario

RESPONSE_TIMEOUT = 0.2
POLLING = PollingConfig(
    response_timeout=RESPONSE_TIMEOUT, miss_limit=3, backoff_max=60.0, health_interval=60.0
)
LAMP = "lamp-01"
POINTS = ("level", "on", "failure", "power", "energy", "hours", "driver_temp")


@dataclass
class Line:
    cabinet: Cabinet
    transport: RtuTransport
    poller: DevicePoller
    points: Points
    changes: list[tuple[str, LinkState]]

    def quality(self, point: str) -> Quality:
        sample = self.points.get(f"{LAMP}/{point}")
        assert sample is not None, point
        return sample.quality

    def value(self, point: str) -> object:
        sample = self.points.get(f"{LAMP}/{point}")
        assert sample is not None, point
        return sample.value


def _poller(
    transport: RtuTransport, points: Points, changes: list[tuple[str, LinkState]], **kw: bool
) -> DevicePoller:
    profile = load_profile("lamp-ctl")
    return DevicePoller(
        device=DeviceConfig(
            name=LAMP, driver="modbus-rtu", profile=profile, poll=1.0, settings=None
        ),
        driver=ModbusDevice(LAMP, profile, 1, transport),
        points=points,
        clock=FakeClock(),
        polling=POLLING,
        rng=random.Random(1),
        on_link_change=lambda name, state: changes.append((name, state)),
        **kw,
    )


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[Line]:
    scenario = Scenario(
        lamps=1, meter=False, env=False, contactor=False, signal=False, iomodule=False
    )
    async with Cabinet(scenario, link_dir=tmp_path / "dev", line_name="rs485_1") as cabinet:
        transport = RtuTransport(
            cabinet.agent_port,
            baudrate=scenario.baudrate,
            parity="N",
            stopbits=2,
            response_timeout=RESPONSE_TIMEOUT,
        )
        await transport.open()
        points: Points = Points()
        changes: list[tuple[str, LinkState]] = []
        try:
            yield Line(cabinet, transport, _poller(transport, points, changes), points, changes)
        finally:
            await transport.close()


async def _miss_until_comm_fail(line: Line) -> None:
    """Poll through a fault: degraded, values kept good, then comm_fail at the third miss."""
    for miss in range(1, POLLING.miss_limit + 1):
        assert not await line.poller.poll_once()
        assert line.poller.misses == miss
        if miss < POLLING.miss_limit:
            assert line.poller.state is LinkState.DEGRADED
            assert line.quality("level") is Quality.GOOD
    assert line.poller.state is LinkState.COMM_FAIL
    assert line.changes == [(LAMP, LinkState.COMM_FAIL)]
    # The last known values stay, flagged as unconfirmed.
    assert {p: line.quality(p) for p in POINTS} == dict.fromkeys(POINTS, Quality.COMM_FAIL)
    assert line.value("level") == 100


async def _comes_back(line: Line, polls: int = 1) -> None:
    """The fault is gone: the device is online again within ``polls`` polls."""
    answered = [await line.poller.poll_once() for _ in range(polls)]
    assert answered[-1], answered
    assert line.poller.state is LinkState.ONLINE
    assert line.changes[-1] == (LAMP, LinkState.ONLINE)
    assert {p: line.quality(p) for p in POINTS} == dict.fromkeys(POINTS, Quality.GOOD)


async def test_poller_line__decodes_the_devices_registers_into_points(line: Line) -> None:
    """The control room would see wrong values: scaling, word order or types mixed up."""
    line.cabinet.set_level(LAMP, 40)
    assert await line.poller.poll_once()
    snap = line.cabinet.snapshot()[LAMP]
    assert line.value("level") == 40
    assert line.value("on") is True
    assert line.value("hours") == snap["hours"]  # above 65 535: two registers, in order
    assert {p: line.quality(p) for p in POINTS} == dict.fromkeys(POINTS, Quality.GOOD)
    assert line.poller.state is LinkState.ONLINE


async def test_poller_line__corrupted_replies_are_misses_then_comm_fail(line: Line) -> None:
    """A reply whose CRC fails must never be decoded into a value, nor stop the poller."""
    assert await line.poller.poll_once()
    line.cabinet.line.corrupt_next(POLLING.miss_limit)
    await _miss_until_comm_fail(line)
    assert line.transport.statistics()["crc_errors"] == POLLING.miss_limit
    assert line.cabinet.line.statistics().corrupted_replies == POLLING.miss_limit
    await _comes_back(line)


async def test_poller_line__slow_replies_are_misses_then_comm_fail(line: Line) -> None:
    """A device answering after the response timeout is as good as silent: its late
    reply must not be taken for the answer to the next poll."""
    assert await line.poller.poll_once()
    line.cabinet.line.delay(RESPONSE_TIMEOUT * 2)
    await _miss_until_comm_fail(line)
    stats = line.transport.statistics()
    # Each one a timeout, or a poll not sent while the late reply was still on the line.
    assert stats["timeouts"] >= 1
    assert stats["timeouts"] + stats["other_errors"] == POLLING.miss_limit
    line.cabinet.line.delay(0)
    # The late replies still held by the line arrive first; the last of them may spoil
    # the next poll: online again by the second one.
    async with asyncio.timeout(5):
        while line.cabinet.line.statistics().pending_bytes:  # noqa: ASYNC110 - the line's buffer
            await asyncio.sleep(0.01)
    await _comes_back(line, polls=2)
    line.cabinet.set_level(LAMP, 25)
    assert await line.poller.poll_once()
    assert line.value("level") == 25


async def test_poller_line__silent_line_is_misses_then_comm_fail(line: Line) -> None:
    """A cut cable must show as comm_fail in the control room, and its repair as the return."""
    assert await line.poller.poll_once()
    line.cabinet.line.silence(True)
    await _miss_until_comm_fail(line)
    line.cabinet.line.silence(False)
    await _comes_back(line)


async def test_poller_line__port_not_open_is_counted_as_misses(line: Line) -> None:
    """With the serial port closed (an unplugged adapter), polls must count as misses and
    raise comm_fail, not crash the poller's task over and over."""
    assert await line.poller.poll_once()
    await line.transport.close()
    await _miss_until_comm_fail(line)
    assert line.poller.failures == POLLING.miss_limit
    await line.transport.open()
    await _comes_back(line)


async def test_poller_line__device_failed_before_a_restart_starts_failed(line: Line) -> None:
    """A comm_fail alarm still active from before a restart: silence must not raise it a
    second time, and the first answer must clear it."""
    poller = _poller(line.transport, line.points, line.changes, assume_failed=True)
    assert poller.state is LinkState.COMM_FAIL
    line.cabinet.line.silence(True)
    assert not await poller.poll_once()
    assert poller.state is LinkState.COMM_FAIL
    assert line.changes == []  # not raised again
    line.cabinet.line.silence(False)
    assert await poller.poll_once()
    assert line.changes == [(LAMP, LinkState.ONLINE)]


async def test_poller_line__write_reaches_the_device_or_fails_as_comm_fail(line: Line) -> None:
    """A write the device never got would be reported done; one it took must show at once."""
    assert await line.poller.poll_once()
    await line.poller.write("level", 30)
    assert line.cabinet.snapshot()[LAMP]["level"] == 30
    assert (line.value("level"), line.quality("level")) == (30, Quality.GOOD)
    line.cabinet.line.silence(True)
    with pytest.raises(DeviceWriteError, match=f"{LAMP}/level"):
        await line.poller.write("level", 60)
    assert (line.value("level"), line.quality("level")) == (30, Quality.COMM_FAIL)
    assert line.cabinet.snapshot()[LAMP]["level"] == 30

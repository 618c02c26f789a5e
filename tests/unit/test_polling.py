"""The generic poller: link state, backoff, quality and writes, driven through a fake
Device on the fake clock (the driver seam, drivers/device.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.arbiter import DeviceWriteError
from agent.clock import FakeClock
from agent.config import DeviceConfig, PollingConfig, load_config
from agent.points import Points, Quality
from agent.polling import DevicePoller, LinkState, link_state
from drivers.device import DriverError, Reading, Report
from drivers.point import PointSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config"
POLLING = PollingConfig(response_timeout=0.3, miss_limit=3, backoff_max=60.0)


@dataclass(frozen=True)
class FakeModel:
    """A model whose points have no protocol addressing at all."""

    name: str
    points: Sequence[PointSpec]

    def point(self, name: str) -> PointSpec:
        return next(p for p in self.points if p.name == name)


MODEL = FakeModel(
    "fake",
    (
        PointSpec(name="temp", unit="degC", minimum=-40, maximum=85),
        PointSpec(name="door", kind="bool"),
        PointSpec(name="label", kind="text"),
        PointSpec(name="level", access="rw", minimum=0, maximum=100, default=0),
    ),
)


@dataclass
class FakeDevice:
    """Answers with ``answer`` or raises ``error``; records writes; reports on demand."""

    name: str = "dev"
    answer: dict[str, Reading] = field(default_factory=dict)
    error: Exception | None = None
    reads: int = 0
    writes: list[tuple[str, Reading]] = field(default_factory=list)
    report: Report | None = None

    async def read(self) -> Mapping[str, Reading]:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return dict(self.answer)

    async def write(self, point: str, value: Reading) -> Reading:
        if self.error is not None:
            raise self.error
        self.writes.append((point, value))
        return value

    async def action(self, action: str, args: Mapping[str, Reading]) -> object:
        raise DriverError(f"no action {action}")

    async def watch(self, report: Report) -> None:
        self.report = report
        await asyncio.Event().wait()  # an event-driven device: reports until cancelled

    async def close(self) -> None:
        return


def make_poller(
    device: FakeDevice, clock: FakeClock, points: Points
) -> tuple[DevicePoller, list[tuple[str, LinkState]]]:
    changes: list[tuple[str, LinkState]] = []
    config = DeviceConfig(name="dev", driver="fake", profile=MODEL, poll=1.0, settings=None)
    poller = DevicePoller(
        device=config,
        driver=device,
        points=points,
        clock=clock,
        polling=POLLING,
        rng=random.Random(1),
        on_link_change=lambda name, state: changes.append((name, state)),
    )
    return poller, changes


def quality(points: Points, name: str) -> tuple[Reading, Quality]:
    sample = points.get(f"dev/{name}")
    assert sample is not None
    return sample.value, sample.quality


@pytest.mark.parametrize(
    ("misses", "state"),
    [(0, LinkState.ONLINE), (1, LinkState.DEGRADED), (2, LinkState.DEGRADED),
     (3, LinkState.COMM_FAIL), (50, LinkState.COMM_FAIL)],
)  # fmt: skip
def test_link_state__table(misses: int, state: LinkState) -> None:
    """A device would be declared failed too early (one lost frame) or never."""
    assert link_state(misses, miss_limit=3) is state


def test_next_interval__backoff_grows_capped_and_jittered() -> None:
    """A dead device would steal the line from healthy ones, or never be retried."""
    config = load_config(FIXTURES / "good.toml")
    device = config.devices[0]
    poller = DevicePoller(
        device=device,
        driver=FakeDevice(),
        points=Points(),
        clock=FakeClock(),
        polling=config.polling,
        rng=random.Random(7),
    )
    assert poller.next_interval() == device.poll
    intervals = []
    for misses in range(3, 20):
        poller.misses, poller.state = misses, LinkState.COMM_FAIL
        intervals.append(poller.next_interval())
    cap = config.polling.backoff_max
    assert all(device.poll <= i <= cap * 1.1 for i in intervals)
    assert intervals[0] < intervals[3]
    assert max(intervals) > cap * 0.85


async def test_poll__values_checked_against_their_specs() -> None:
    """A reading outside its bounds, of the wrong kind or unusable must not pass as good."""
    points = Points()
    device = FakeDevice(
        answer={"temp": 21.5, "door": True, "label": 7, "level": None, "unknown": 1}
    )
    poller, _ = make_poller(device, FakeClock(), points)
    assert await poller.poll_once()
    assert quality(points, "temp") == (21.5, Quality.GOOD)
    assert quality(points, "door") == (True, Quality.GOOD)
    assert quality(points, "label") == (7, Quality.OUT_OF_RANGE)  # a number for a text point
    assert quality(points, "level") == (None, Quality.OUT_OF_RANGE)
    assert points.get("dev/unknown") is None  # not in the model: not published
    device.answer = {"temp": 85.1}
    assert await poller.poll_once()
    assert quality(points, "temp") == (85.1, Quality.OUT_OF_RANGE)


async def test_run__dead_device_fails_after_n_misses_backs_off_and_comes_back() -> None:
    """The control room must see comm_fail (with the last value) once, then the return."""
    clock, points = FakeClock(), Points()
    device = FakeDevice(answer={"temp": 20.0})
    poller, changes = make_poller(device, clock, points)
    task = asyncio.create_task(poller.run())
    try:
        await clock.advance(0)
        assert device.reads == 1
        assert poller.state is LinkState.ONLINE
        device.error = DriverError("no reply within 0.3 s", timeout=True)
        await clock.advance(2)  # misses 1 and 2
        assert poller.state is LinkState.DEGRADED
        assert quality(points, "temp") == (20.0, Quality.GOOD)
        await clock.advance(1)  # the third miss
        assert poller.state is LinkState.COMM_FAIL
        assert changes == [("dev", LinkState.COMM_FAIL)]
        assert quality(points, "temp") == (20.0, Quality.COMM_FAIL)
        # Backed off: far fewer polls than one a second, and a comm_fail raised once.
        reads = device.reads
        await clock.advance(120)
        assert device.reads - reads < 12
        assert changes == [("dev", LinkState.COMM_FAIL)]
        device.error = None
        device.answer = {"temp": 19.0}
        await clock.advance(POLLING.backoff_max * 1.1)
        assert poller.state is LinkState.ONLINE
        assert changes == [("dev", LinkState.COMM_FAIL), ("dev", LinkState.ONLINE)]
        assert quality(points, "temp") == (19.0, Quality.GOOD)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run__watch_reports_go_through_the_same_checks() -> None:
    """An event-driven device's reports are published with the poll's quality rules."""
    clock, points = FakeClock(), Points()
    device = FakeDevice(answer={"temp": 20.0})
    poller, _ = make_poller(device, clock, points)
    task = asyncio.create_task(poller.run())
    try:
        await clock.advance(0)
        assert device.report is not None
        device.report({"door": False, "temp": -41})
        assert quality(points, "door") == (False, Quality.GOOD)
        assert quality(points, "temp") == (-41, Quality.OUT_OF_RANGE)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_poll__only_driver_errors_are_misses() -> None:
    """A bug in a driver must surface (the supervisor restarts the task), not look like a
    silent device."""
    device = FakeDevice(error=RuntimeError("driver bug"))
    poller, _ = make_poller(device, FakeClock(), Points())
    with pytest.raises(RuntimeError, match="driver bug"):
        await poller.poll_once()


async def test_write__refused_before_the_device_or_failed_by_it() -> None:
    """A value the spec refuses never reaches the device; a device failure shows comm_fail."""
    points = Points()
    device = FakeDevice(answer={"level": 10})
    poller, _ = make_poller(device, FakeClock(), points)
    await poller.write("level", 40)
    assert device.writes == [("level", 40)]
    assert quality(points, "level") == (40, Quality.GOOD)
    with pytest.raises(DeviceWriteError, match=r"dev/level: 400 is outside 0\.\.100"):
        await poller.write("level", 400)
    with pytest.raises(DeviceWriteError, match="dev/level takes a number"):
        await poller.write("level", "x")
    with pytest.raises(DeviceWriteError, match="dev/temp is read-only"):
        await poller.write("temp", 1)
    assert device.writes == [("level", 40)]
    device.error = DriverError("exception 04 (server device failure)")
    with pytest.raises(DeviceWriteError, match="server device failure"):
        await poller.write("level", 50)
    assert quality(points, "level") == (40, Quality.COMM_FAIL)

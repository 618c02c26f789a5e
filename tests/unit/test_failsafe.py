"""The local fail-safe layer on the fake clock: dead-man and autonomous mode, clock trust,
the watchdog fed only while every critical loop lives, and the reboot cause."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.arbiter import Arbiter, Priority
from agent.autonomy import Autonomy, Mode
from agent.clock import FakeClock
from agent.clock_trust import BUILD_TIME, STABLE_AFTER, ClockQuality, ClockTrust
from agent.config import SiteConfig
from agent.lighting import DEFAULT_PROGRAM, LightingRunner, night
from agent.messages import MessageFactory, Reading
from agent.points import Points, Quality, Value
from agent.security.cose import Signer, decode_envelope
from agent.watchdog import (
    Liveness,
    Watchdog,
    previous_kernel,
    reboot_cause,
    sd_notify,
)

DIJON = SiteConfig(latitude=47.32, longitude=5.04, timezone="Europe/Paris")
# 2026-12-21 at 17:30 in Dijon: half an hour after sunset.
EVENING = dt.datetime(2026, 12, 21, 17, 30, tzinfo=DIJON.zone).timestamp()
NOON = dt.datetime(2026, 12, 21, 12, 0, tzinfo=DIJON.zone).timestamp()


# ------------------------------------------------------------------ autonomous mode


async def test_autonomy__enters_after_the_limit_and_reports_the_duration_on_leaving() -> None:
    """Ten minutes without the central post: autonomous; when it returns, the control room
    learns how long the cabinet was on its own."""
    clock = FakeClock()
    online = [False]
    reports: list[tuple[Mode, float]] = []
    autonomy = Autonomy(
        clock=clock, online=lambda: online[0], after=600, report=lambda m, s: reports.append((m, s))
    )
    online[0] = True
    autonomy.check()
    online[0] = False
    autonomy.check()
    for _ in range(599):
        await clock.advance(1)
        autonomy.check()
    assert autonomy.mode is Mode.NORMAL
    await clock.advance(1)
    assert autonomy.check() is Mode.AUTONOMOUS
    assert reports == [(Mode.AUTONOMOUS, 600.0)]
    await clock.advance(3000)
    online[0] = True
    assert autonomy.check() is Mode.NORMAL
    assert reports[-1] == (Mode.NORMAL, 3000.0)


async def test_autonomy__resumed_after_restart_is_not_entered_twice() -> None:
    """A reboot while isolated does not report a second entry; the exit is still reported."""
    clock = FakeClock()
    reports: list[tuple[Mode, float]] = []
    online = [False]
    autonomy = Autonomy(
        clock=clock,
        online=lambda: online[0],
        after=600,
        report=lambda m, s: reports.append((m, s)),
        resumed=True,
    )
    await clock.advance(900)
    autonomy.check()
    assert reports == []
    online[0] = True
    autonomy.check()
    assert [m for m, _ in reports] == [Mode.NORMAL]


@dataclasses.dataclass
class Lamp:
    """The device end of the arbiter: what the lamp was told last."""

    level: Value = None

    async def write(self, point: str, value: Value) -> None:
        self.level = value


async def test_link_lost_an_hour__central_hold_lapses_back_to_the_schedule() -> None:
    """The central post dims a lamp to 10 % for 30 minutes at dusk, then the link dies: the
    gateway goes autonomous and, when the hold lapses, the lamp returns to the schedule
    (full light) with no message from anyone."""
    clock = FakeClock(wall=EVENING)
    lamp = Lamp()
    arbiter = Arbiter(clock=clock, defaults={"lamp-01/level": 100}, write_device=lamp.write)
    runner = LightingRunner(
        programs=(dataclasses.replace(DEFAULT_PROGRAM, contactor=None),),
        site=DIJON,
        clock=clock,
        now=clock.wall,
        writable=arbiter.points,
        points=Points(),
        write=lambda p, v: arbiter.write(
            p, v, priority=Priority.SCHEDULE, source="schedule", hold=None
        ),
        relinquish=lambda p: arbiter.relinquish(p, priority=Priority.SCHEDULE, source="schedule"),
        tick=1.0,
    )
    modes: list[Mode] = []
    autonomy = Autonomy(
        clock=clock, online=lambda: False, after=600, report=lambda m, s: modes.append(m)
    )
    await arbiter.sync()
    await arbiter.write("lamp-01/level", 10, priority=10, source="central", hold=1800)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(t) for t in (arbiter.run(), runner.run(), autonomy.run())]
        await clock.advance(1)
        assert lamp.level == 10
        await clock.advance(1790)
        assert modes == [Mode.AUTONOMOUS]
        assert lamp.level == 10
        await clock.advance(20)
        assert lamp.level == 100
        assert arbiter.entries("lamp-01/level")[14].source == "schedule"
        await clock.advance(3600 - 1811)
        assert lamp.level == 100
        for task in tasks:
            task.cancel()


# ------------------------------------------------------------------ clock trust


def test_clock_trust__rtc_at_1970_uses_the_persisted_time_and_flags_messages(
    tmp_path: Path,
) -> None:
    """After a power cut the RTC reads 1970: messages carry clk = 2 and the schedule runs on
    the last persisted trusted time carried forward — lamps on at night, not at noon."""
    path = tmp_path / "clock.json"
    path.write_text(json.dumps({"trusted_wall": EVENING}))
    clock = FakeClock(wall=0.0)
    trust = ClockTrust(clock, path=path, max_jump=120, ntp_synced=lambda: None)
    assert trust.quality is ClockQuality.UNTRUSTED
    assert trust.now() == EVENING
    factory = MessageFactory(
        gw="gw-1",
        boot=1,
        signer=Signer(Ed25519PrivateKey.generate()),
        clock_quality=lambda: int(trust.quality),
    )
    payload = factory.telemetry(
        1, readings=[Reading(point="a/b", t_ms=0, value=1, quality=Quality.GOOD)]
    )
    body = cbor2.loads(decode_envelope(payload).payload)
    assert body["clk"] == 2
    level = _scheduled_level(clock, trust.now)
    assert level == 100  # 17:30 in December is night, whatever the RTC says


def _scheduled_level(clock: FakeClock, now: object) -> int | None:
    runner = LightingRunner(
        programs=(DEFAULT_PROGRAM,),
        site=DIJON,
        clock=clock,
        now=now,  # type: ignore[arg-type]
        writable=[],
        points=Points(),
        write=lambda p, v: asyncio.sleep(0),
        relinquish=lambda p: asyncio.sleep(0),
    )
    return runner.desired(DEFAULT_PROGRAM, runner._now())


async def test_clock_trust__a_jump_goes_to_holdover_then_back(tmp_path: Path) -> None:
    """A wall clock stepped back an hour is not believed: holdover carries the trusted time
    forward (clk = 1); a clock that comes back in line is trusted again."""
    clock = FakeClock(wall=NOON)
    trust = ClockTrust(clock, path=tmp_path / "clock.json", max_jump=120, ntp_synced=lambda: None)
    assert trust.quality is ClockQuality.TRUSTED
    assert json.loads((tmp_path / "clock.json").read_text())["trusted_wall"] == NOON
    await clock.advance(10)
    clock.set_wall(NOON + 10 - 3600)
    assert trust.check() is ClockQuality.HOLDOVER
    assert trust.now() == NOON + 10
    await clock.advance(10)
    clock.set_wall(NOON + 20)
    assert trust.check() is ClockQuality.TRUSTED


async def test_clock_trust__a_steady_step_is_believed_after_an_hour(tmp_path: Path) -> None:
    """An operator sets the clock 5 minutes ahead: after an hour of steady running it is the
    new truth (the agent does not stay in holdover forever)."""
    clock = FakeClock(wall=NOON)
    trust = ClockTrust(clock, path=None, max_jump=120, ntp_synced=lambda: None)
    clock.set_wall(NOON + 300)
    assert trust.check() is ClockQuality.HOLDOVER
    await clock.advance(STABLE_AFTER)
    assert trust.check() is ClockQuality.TRUSTED


def test_clock_trust__ntp_required_and_absent_is_untrusted() -> None:
    """With ntp = true and the kernel unsynchronised, the time is flagged untrusted."""
    clock = FakeClock(wall=NOON)
    trust = ClockTrust(clock, path=None, max_jump=120, require_ntp=True, ntp_synced=lambda: False)
    assert trust.quality is ClockQuality.UNTRUSTED
    assert trust.now() is None
    assert NOON > BUILD_TIME


def test_messages__trusted_clock_sends_no_clk_field() -> None:
    """With a trusted clock the header stays as small as before (clk absent means 0)."""
    factory = MessageFactory(gw="gw-1", boot=1, signer=Signer(Ed25519PrivateKey.generate()))
    body = cbor2.loads(decode_envelope(factory.death(0, t_ms=0)).payload)
    assert "clk" not in body
    birth = factory.birth(
        0,
        t_ms=0,
        agent_version="x",
        config_digest=bytes(32),
        points={},
        mode="autonomous",
        reboot="watchdog",
    )
    body = cbor2.loads(decode_envelope(birth).payload)
    assert (body["mode"], body["reboot"]) == ("autonomous", "watchdog")
    with pytest.raises(ValueError, match="mode"):
        factory.birth(0, t_ms=0, agent_version="x", config_digest=bytes(32), points={}, mode="x")


# ------------------------------------------------------------------ watchdog


@pytest.fixture
def notify_socket(tmp_path: Path) -> AsyncIterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path  # type: ignore[misc]
    sock.close()


def _datagrams(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(256))
        except BlockingIOError:
            return out


async def test_watchdog__a_hung_loop_stops_the_feeding(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """While every loop moves the board's watchdog and systemd are fed; one loop hangs past
    its deadline and the feeding stops, so the board resets the gateway."""
    sock, path = notify_socket
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    clock = FakeClock()
    counters = {"poll": 0, "rules": 0}
    liveness = Liveness(clock)
    liveness.watch("poll", lambda: counters["poll"], 30)
    liveness.watch("rules", lambda: counters["rules"], 30)
    dog = Watchdog(
        clock=clock,
        liveness=liveness,
        device=device,
        interval=10,
        environ={"NOTIFY_SOCKET": path},
    )
    dog.open()
    dog.ready()
    assert _datagrams(sock) == [b"READY=1"]

    async def alive(name: str) -> None:
        while True:
            counters[name] += 1
            await clock.sleep(1)

    async with asyncio.TaskGroup() as tg:
        feeder = tg.create_task(dog.run())
        loops = {n: tg.create_task(alive(n)) for n in counters}
        await clock.advance(60)
        fed = device.read_bytes().count(b"\0")
        assert fed == dog.feeds >= 6
        assert set(_datagrams(sock)) == {b"WATCHDOG=1"}
        loops["rules"].cancel()  # hung: no more progress
        await clock.advance(120)
        assert dog.starved == ["rules"]
        assert device.read_bytes().count(b"\0") <= fed + 4  # within the 30 s deadline only
        frozen = device.read_bytes().count(b"\0")
        await clock.advance(120)
        assert device.read_bytes().count(b"\0") == frozen
        feeder.cancel()
        loops["poll"].cancel()
    dog.close(clean=True)
    assert device.read_bytes().endswith(b"V")  # magic close on a clean stop


def test_sd_notify__without_systemd_is_a_no_op() -> None:
    """Outside systemd (no NOTIFY_SOCKET) the agent runs as before."""
    assert sd_notify("READY=1", {}) is False


@pytest.mark.parametrize(
    ("first", "clean", "watchdog", "same", "cause"),
    [
        (True, False, None, None, None),
        (False, True, None, True, "clean"),
        (False, False, True, True, "watchdog"),
        (False, False, False, True, "crash"),
        (False, False, None, False, "power"),
        (False, False, None, None, "unknown"),
    ],
)
def test_reboot_cause__from_marker_watchdog_and_kernel_boot(
    first: bool, clean: bool, watchdog: bool | None, same: bool | None, cause: str | None
) -> None:
    """The control room learns why the gateway restarted (PROTOCOL.md Birth reboot)."""
    assert (
        reboot_cause(first_run=first, clean=clean, watchdog_reset=watchdog, same_kernel=same)
        == cause
    )


def test_previous_kernel__remembers_the_boot_id(tmp_path: Path) -> None:
    """A new kernel boot id since the last run means the machine itself restarted."""
    assert previous_kernel(tmp_path, "aaa") is None
    assert previous_kernel(tmp_path, "aaa") is True
    assert previous_kernel(tmp_path, "bbb") is False


def test_night_helper_is_cached() -> None:
    """The runner asks for the same night every second: it is computed once."""
    before = night.cache_info().hits
    night(dt.date(2026, 12, 21), DIJON, DEFAULT_PROGRAM)
    night(dt.date(2026, 12, 21), DIJON, DEFAULT_PROGRAM)
    assert night.cache_info().hits > before

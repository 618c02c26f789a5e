"""The lighting schedule: Dijon's nights against an independent ephemeris, dimming steps,
exceptions, the photocell, and a whole night applied on the fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path

import ephem
import pytest

from agent.clock import FakeClock
from agent.config import SiteConfig
from agent.lighting import (
    DEFAULT_PROGRAM,
    CalendarException,
    DimStep,
    LightingRunner,
    Photocell,
    level_at,
    night,
    parse_lighting,
    with_photocell,
)
from agent.points import Points, Quality, Sample, Value
from drivers.profile import Problems, Section, read_toml

DIJON = SiteConfig(latitude=47.32, longitude=5.04, timezone="Europe/Paris")
PARIS = DIJON.zone
SUMMER = dt.date(2026, 6, 21)
WINTER = dt.date(2026, 12, 21)
# The acceptance tolerance of the issue: switching instants within 60 s of the ephemeris.
TOLERANCE_S = 60.0
PROFILE = dataclasses.replace(
    DEFAULT_PROGRAM,
    dimming=(DimStep(at=22 * 60 + 30, level=60), DimStep(at=5 * 60 + 30, level=100)),
)


def _ephem(day: dt.date, *, horizon: str, center: bool) -> tuple[dt.datetime, dt.datetime]:
    """Sunset on ``day`` and sunrise the morning after at Dijon, by PyEphem (its own VSOP87
    theory, independent of astral's NOAA formulas)."""
    obs = ephem.Observer()
    obs.lat, obs.lon, obs.elevation = "47.32", "5.04", 0
    obs.pressure = 0  # refraction is in the horizon, as in the almanacs' definition
    obs.horizon = horizon
    obs.date = ephem.Date(dt.datetime(day.year, day.month, day.day, 12))
    sunset = obs.next_setting(ephem.Sun(), use_center=center).datetime()
    sunrise = obs.next_rising(ephem.Sun(), use_center=center).datetime()
    return sunset.replace(tzinfo=dt.UTC), sunrise.replace(tzinfo=dt.UTC)


@pytest.mark.parametrize("day", [SUMMER, WINTER], ids=["summer", "winter"])
def test_night__official_sunset_sunrise_match_the_ephemeris(day: dt.date) -> None:
    """Dijon's lamps switch on at sunset and off at sunrise within a minute of PyEphem."""
    n = night(day, DIJON, DEFAULT_PROGRAM)
    sunset, sunrise = _ephem(day, horizon="-0:34", center=False)
    assert abs((n.on - sunset).total_seconds()) <= TOLERANCE_S
    assert abs((n.off - sunrise).total_seconds()) <= TOLERANCE_S


@pytest.mark.parametrize("day", [SUMMER, WINTER], ids=["summer", "winter"])
def test_night__civil_twilight_matches_the_ephemeris(day: dt.date) -> None:
    """With depression = "civil" the lamps follow the end and start of civil twilight."""
    program = dataclasses.replace(DEFAULT_PROGRAM, depression="civil")
    n = night(day, DIJON, program)
    dusk, dawn = _ephem(day, horizon="-6", center=True)
    assert abs((n.on - dusk).total_seconds()) <= TOLERANCE_S
    assert abs((n.off - dawn).total_seconds()) <= TOLERANCE_S


def test_night__summer_and_winter_instants_are_the_almanac_ones() -> None:
    """Sanity in local time: a short June night, a long December one."""
    summer, winter = night(SUMMER, DIJON, DEFAULT_PROGRAM), night(WINTER, DIJON, DEFAULT_PROGRAM)
    assert summer.on.astimezone(PARIS).strftime("%H:%M") in ("21:39", "21:40")
    assert summer.off.astimezone(PARIS).strftime("%H:%M") in ("05:43", "05:44")
    assert winter.on.astimezone(PARIS).strftime("%H:%M") in ("16:51", "16:52")
    assert (winter.off - winter.on) > dt.timedelta(hours=15)
    assert (summer.off - summer.on) < dt.timedelta(hours=8, minutes=10)


@pytest.mark.parametrize("day", [SUMMER, WINTER], ids=["summer", "winter"])
def test_night__dimming_steps_at_their_local_times(day: dt.date) -> None:
    """100 % at dusk, 60 % from 22:30, 100 % from 05:30 — when those fall within the night."""
    n = night(day, DIJON, PROFILE)
    local = [(t.astimezone(PARIS).strftime("%H:%M"), level) for t, level in n.steps]
    assert local[0][1] == 100
    assert local[1] == ("22:30", 60)
    if day == WINTER:
        assert local[2] == ("05:30", 100)
    else:  # the June dawn (05:43) comes after 05:30: the lamps are still dimmed... then off
        assert local[2] == ("05:30", 100)
    assert n.level_at(n.on) == 100
    half_past_eleven = dt.datetime.combine(day, dt.time(23, 30), tzinfo=PARIS)
    assert n.level_at(half_past_eleven.astimezone(dt.UTC)) == 60
    assert n.level_at(n.off) is None


def test_night__calendar_exception_burns_full_all_night() -> None:
    """The Fête de la musique (21 June) burns at 100 % all night, no dimming."""
    program = dataclasses.replace(
        PROFILE,
        exceptions=(
            CalendarException(first="2026-06-21", last="2026-06-21", weekdays=(), level=100),
        ),
    )
    assert [lvl for _, lvl in night(SUMMER, DIJON, program).steps] == [100]
    assert [lvl for _, lvl in night(SUMMER + dt.timedelta(days=1), DIJON, program).steps] == [
        100,
        60,
        100,
    ]


def test_level_at__day_is_off_night_is_on() -> None:
    """At noon the lamps are off; at 01:00 they burn at the dimmed level."""
    noon = dt.datetime(2026, 12, 21, 12, tzinfo=PARIS).astimezone(dt.UTC)
    one = dt.datetime(2026, 12, 22, 1, tzinfo=PARIS).astimezone(dt.UTC)
    assert level_at(noon, DIJON, PROFILE)[0] == 0
    assert level_at(one, DIJON, PROFILE)[0] == 60


def test_with_photocell__dark_storm_far_from_dusk_switches_on() -> None:
    """A storm darkens the sky two hours before dusk: the photocell wins, lamps on; 10 min
    before dusk (inside the margin) the schedule keeps its instant."""
    program = dataclasses.replace(
        DEFAULT_PROGRAM, photocell=Photocell(point="env/lux", dark_below=30, margin=1800)
    )
    n = night(WINTER, DIJON, program)
    early = n.on - dt.timedelta(hours=2)
    assert with_photocell(0, True, early, n, program) == 100
    assert with_photocell(0, True, n.on - dt.timedelta(minutes=10), n, program) == 0
    midnight = n.on + dt.timedelta(hours=6)
    assert with_photocell(100, False, midnight, n, program) == 0  # broad daylight says the cell
    assert with_photocell(100, None, midnight, n, program) == 100  # cell silent: schedule


def test_parse_lighting__reads_a_program_and_names_errors(tmp_path: Path) -> None:
    """A [[lighting]] program is read; a mistake comes with its path and a suggestion."""
    path = tmp_path / "gw.toml"
    path.write_text(
        '[[lighting]]\nname = "avenue"\nlamps = ["lamp-0*/level"]\ndepression = "civl"\n'
        'dimming = [{ at = "22:30", level = 60 }]\n'
        '[[lighting.exceptions]]\nfrom = "2026-07-14"\nto = "2026-07-14"\n'
    )
    problems = Problems("gw.toml")
    data = read_toml(path, problems)
    assert data is not None
    parse_lighting(Section(problems, "", data).tables("lighting"))
    assert problems.errors == [
        "gw.toml: lighting[0].depression: expected official, civil, nautical or degrees 0..18, "
        'got "civl"; did you mean "civil"?'
    ]


@dataclasses.dataclass
class Writes:
    clock: FakeClock
    log: list[tuple[float, str, Value]] = dataclasses.field(default_factory=list)

    async def write(self, point: str, value: Value) -> None:
        self.log.append((self.clock.wall(), point, value))

    async def relinquish(self, point: str) -> None:
        self.log.append((self.clock.wall(), point, None))


async def test_runner__a_whole_winter_night_on_the_fake_clock() -> None:
    """From noon to noon the lamps go on at dusk, dim at 22:30, come back at 05:30 and go
    off at dawn, each at the computed instant."""
    start = dt.datetime(2026, 12, 21, 12, tzinfo=PARIS).timestamp()
    clock = FakeClock(wall=start)
    writes = Writes(clock)
    tick = 10.0
    runner = LightingRunner(
        programs=(PROFILE,),
        site=DIJON,
        clock=clock,
        now=clock.wall,
        writable=["lamp-01/level", "lamp-02/level", "contactor/command", "lamp-01/on"],
        points=Points(),
        write=writes.write,
        relinquish=writes.relinquish,
        tick=tick,
    )
    task = asyncio.create_task(runner.run())
    try:
        await clock.advance(24 * 3600)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lamp = [(t, v) for t, p, v in writes.log if p == "lamp-01/level"]
    n = night(WINTER, DIJON, PROFILE)
    expected = (
        [(start, 0)] + [(s.timestamp(), lvl) for s, lvl in n.steps] + [(n.off.timestamp(), 0)]
    )
    assert [v for _, v in lamp] == [v for _, v in expected]
    for (t, _), (want, _) in zip(lamp[1:], expected[1:], strict=True):
        assert 0 <= t - want <= 0.01  # at the instant itself, not at the next tick
    contactor = [v for _, p, v in writes.log if p == "contactor/command"]
    assert contactor == [False, True, False]
    assert not any(p == "lamp-01/on" for _, p, _ in writes.log)


@pytest.mark.parametrize(
    ("writable", "driven"),
    [
        (["contactor/command", "cabinet/relay_lighting"], "contactor/command"),
        (["cabinet/relay_lighting"], "cabinet/relay_lighting"),
    ],
    ids=["modbus-contactor", "cabinet-relay"],
)
async def test_runner__lighting_relay_drives_where_no_modbus_contactor(
    writable: list[str], driven: str
) -> None:
    """A cabinet without a Modbus contactor still has its lighting switched: the schedule
    drives the cabinet's lighting relay (GPIO or I/O module) instead."""
    start = dt.datetime(2026, 12, 21, 12, tzinfo=PARIS).timestamp()
    clock = FakeClock(wall=start)
    writes = Writes(clock)
    runner = LightingRunner(
        programs=(DEFAULT_PROGRAM,),
        site=DIJON,
        clock=clock,
        now=clock.wall,
        writable=["lamp-01/level", *writable],
        points=Points(),
        write=writes.write,
        relinquish=writes.relinquish,
        tick=10.0,
    )
    task = asyncio.create_task(runner.run())
    try:
        await clock.advance(24 * 3600)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    switched = {p for _, p, _ in writes.log if p != "lamp-01/level"}
    assert switched == {driven}
    assert [v for _, p, v in writes.log if p == driven] == [False, True, False]


async def test_runner__no_trusted_time_leaves_lamps_to_their_lit_default() -> None:
    """Without any trustworthy time the schedule steps aside: the lamps fall back to their
    relinquish default (lit), never dark because the clock is lost."""
    clock = FakeClock()
    writes = Writes(clock)
    runner = LightingRunner(
        programs=(DEFAULT_PROGRAM,),
        site=DIJON,
        clock=clock,
        now=lambda: None,
        writable=["lamp-01/level"],
        points=Points(),
        write=writes.write,
        relinquish=writes.relinquish,
    )
    await runner.step()
    assert writes.log == [(clock.wall(), "lamp-01/level", None)]


async def test_runner__photocell_point_switches_on_in_a_storm() -> None:
    """A photocell reading 5 lux at 14:00 in December switches the lamps on."""
    start = dt.datetime(2026, 12, 21, 14, tzinfo=PARIS).timestamp()
    clock = FakeClock(wall=start)
    writes = Writes(clock)
    points = Points()
    program = dataclasses.replace(
        DEFAULT_PROGRAM, photocell=Photocell(point="env/lux", dark_below=30, margin=1800)
    )
    runner = LightingRunner(
        programs=(program,),
        site=DIJON,
        clock=clock,
        now=clock.wall,
        writable=["lamp-01/level"],
        points=points,
        write=writes.write,
        relinquish=writes.relinquish,
    )
    await runner.step()
    points.update(Sample(name="env/lux", value=5.0, quality=Quality.GOOD, t_ms=0))
    await runner.step()
    assert [v for _, _, v in writes.log] == [0, 100]
    assert runner.states["street"].photocell


def test_night__site_far_from_its_time_zone_has_a_night_shorter_than_a_day() -> None:
    """On the equator near the date line with UTC as time zone, each night still lasts
    about 12 hours (the first dawn after dusk), never a day and a half."""
    site = SiteConfig(latitude=0.0, longitude=-178.7, timezone="UTC")
    for day in (SUMMER, WINTER):
        n = night(day, site, DEFAULT_PROGRAM)
        assert dt.timedelta(hours=11) < n.off - n.on < dt.timedelta(hours=13)


async def test_runner__no_time_at_all_follows_the_photocell() -> None:
    """With no trustworthy time but a photocell, the lamps follow the sky: off in daylight,
    on when it gets dark — never lit all day because the clock was lost."""
    clock = FakeClock()
    writes = Writes(clock)
    points = Points()
    program = dataclasses.replace(
        DEFAULT_PROGRAM, photocell=Photocell(point="env/lux", dark_below=30, margin=1800)
    )
    runner = LightingRunner(
        programs=(program,),
        site=DIJON,
        clock=clock,
        now=lambda: None,
        writable=["lamp-01/level"],
        points=points,
        write=writes.write,
        relinquish=writes.relinquish,
    )
    points.update(Sample(name="env/lux", value=5000.0, quality=Quality.GOOD, t_ms=0))
    await runner.step()
    points.update(Sample(name="env/lux", value=3.0, quality=Quality.GOOD, t_ms=0))
    await runner.step()
    points.update(Sample(name="env/lux", value=None, quality=Quality.COMM_FAIL, t_ms=0))
    await runner.step()
    assert [v for _, _, v in writes.log] == [0, 100, None]

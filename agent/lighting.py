"""The local lighting schedule (DESIGN.md, "Fail safe, locally"; Arbiter level 14).

Each lighting group (``[[lighting]]``: lamp level points by name or glob, and the
lighting contactor) follows a program: on at dusk and off at dawn, computed with
``astral`` for the site (sun depression: ``official`` sunset/sunrise, ``civil``,
``nautical`` or a number of degrees; offsets in minutes), a dimming profile through the
night (``{ at = "22:30", level = 60 }``: local times), calendar exceptions (date ranges,
weekdays: a flat level for those nights, e.g. festival nights at full power) and an
optional photocell that wins when it disagrees with the schedule farther than a margin
from the scheduled switching instant.

:func:`night` and :func:`level_at` are pure functions of (date or instant, site,
program): the agent runs them, and so does ``armoire schedule`` to show a program
before it is deployed. :class:`LightingRunner` applies them at priority 14 on the
trusted time (:mod:`agent.clock_trust`), once per second.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final, Protocol
from zoneinfo import ZoneInfo

from astral import Observer, sun

from agent.arbiter import Priority
from agent.clock import Clock
from agent.points import Points, Quality, Value
from drivers.profile import Section, did_you_mean, show

log = logging.getLogger(__name__)

# Named sun depressions, degrees below the horizon. "official" is astral's
# sunrise/sunset (upper limb at the horizon with standard refraction, 0.833°).
DEPRESSIONS: Final[Mapping[str, float]] = {"official": 0.833, "civil": 6.0, "nautical": 12.0}
FULL: Final = 100  # lamp level, percent
TICK: Final = 1.0  # seconds between two checks of the program
# Offsets beyond two hours are a different program, not an adjustment.
MAX_OFFSET_MIN: Final = 120.0
_HHMM: Final = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_GROUP: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NOON: Final = 12 * 60  # a dimming step before noon belongs to the morning after


class Site(Hashable, Protocol):
    """Where the lamps stand: the configuration's ``[site]`` (``SiteConfig``, frozen)."""

    @property
    def latitude(self) -> float: ...
    @property
    def longitude(self) -> float: ...
    @property
    def zone(self) -> ZoneInfo: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DimStep:
    """From ``at`` (minutes after local midnight) the lamps burn at ``level`` percent."""

    at: int
    level: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CalendarException:
    """Nights (by the date of their evening) that burn at a flat ``level`` all night.

    ``first``/``last`` are ISO dates (inclusive, either may be open); ``weekdays`` (0 =
    Monday) narrows them; an empty exception matches nothing.
    """

    first: str | None
    last: str | None
    weekdays: tuple[int, ...]
    level: int

    def matches(self, day: dt.date) -> bool:
        iso = day.isoformat()
        if self.first is None and self.last is None and not self.weekdays:
            return False
        if self.first is not None and iso < self.first:
            return False
        if self.last is not None and iso > self.last:
            return False
        return not self.weekdays or day.weekday() in self.weekdays


@dataclass(frozen=True, slots=True, kw_only=True)
class Photocell:
    """A light sensor point: dark below ``dark_below`` (lux). It wins over the schedule
    when they disagree more than ``margin`` seconds away from a scheduled switch."""

    point: str
    dark_below: float
    margin: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Program:
    """One lighting group and its program."""

    name: str
    lamps: tuple[str, ...]  # level points, names or globs
    contactor: str | None  # the contactor's command point
    depression: str | float  # a name of DEPRESSIONS or degrees
    dusk_offset: float  # minutes, positive = later
    dawn_offset: float
    level: int  # at dusk, until the first dimming step
    dimming: tuple[DimStep, ...]
    exceptions: tuple[CalendarException, ...]
    photocell: Photocell | None


# Where a cabinet has no Modbus lighting contactor, its lighting relay (GPIO or I/O
# module, drivers/cabinet_model.py) switches the contactor's coil instead.
FALLBACK_RELAY: Final = "cabinet/relay_lighting"


def _contactor_points(program: Program, writable: Iterable[str]) -> list[str]:
    """The program's contactor points; none configured on the cabinet: its lighting relay."""
    writable = list(writable)
    if not program.contactor:
        return []
    found = [w for w in writable if fnmatchcase(w, program.contactor)]
    if not found and FALLBACK_RELAY in writable:
        return [FALLBACK_RELAY]
    return found


DEFAULT_PROGRAM: Final = Program(
    name="street",
    lamps=("lamp-*/level",),
    contactor="contactor/command",
    depression="official",
    dusk_offset=0.0,
    dawn_offset=0.0,
    level=FULL,
    dimming=(),
    exceptions=(),
    photocell=None,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Night:
    """One night of a program: lamps on at ``on``, off at ``off`` (UTC), and the level
    steps in between, the first one at ``on``."""

    evening: dt.date
    on: dt.datetime
    off: dt.datetime
    steps: tuple[tuple[dt.datetime, int], ...]
    exception: bool

    def level_at(self, t: dt.datetime) -> int | None:
        """The level at ``t`` if it falls in this night, else None."""
        if not self.on <= t < self.off:
            return None
        level = self.steps[0][1]
        for start, step_level in self.steps:
            if start <= t:
                level = step_level
        return level


# ------------------------------------------------------------------ the pure functions


def _degrees(program: Program) -> float:
    d = program.depression
    return DEPRESSIONS[d] if isinstance(d, str) else d


def _sun_edge(
    observer: Observer, day: dt.date, program: Program, zone: ZoneInfo, *, dusk: bool
) -> dt.datetime | None:
    """Dusk (evening) or dawn (morning) of local ``day``; None if the sun does not cross."""
    try:
        if program.depression == "official":
            edge = sun.sunset if dusk else sun.sunrise
            return edge(observer, day, tzinfo=zone)
        fn = sun.dusk if dusk else sun.dawn
        return fn(observer, day, tzinfo=zone, depression=_degrees(program))
    except ValueError:  # polar day or night: the sun stays on one side of the depression
        return None


@functools.lru_cache(maxsize=64)  # the runner asks every second for the same two nights
def night(day: dt.date, site: Site, program: Program) -> Night:
    """The night that begins on the evening of local date ``day``."""
    zone = site.zone
    observer = Observer(latitude=site.latitude, longitude=site.longitude)
    dusk = _sun_edge(observer, day, program, zone, dusk=True)
    dawn = None
    if dusk is not None:
        # The first dawn after this dusk: the next local day's, unless the time zone is
        # far from solar time (a calendar day then holds a dawn before its dusk).
        dawns = (
            _sun_edge(observer, day + dt.timedelta(days=n), program, zone, dusk=False)
            for n in (0, 1, 2)
        )
        dawn = next((d for d in dawns if d is not None and d > dusk), None)
    if dusk is None or dawn is None:
        # The sun stays up or down all day: decide by its height at local noon.
        noon = dt.datetime.combine(day, dt.time(12), tzinfo=zone)
        dark = sun.elevation(observer, noon) < -_degrees(program)
        noon_utc = noon.astimezone(dt.UTC)
        dusk = noon_utc if dark else noon_utc + dt.timedelta(days=1)
        dawn = noon_utc + dt.timedelta(days=1)
    on = dusk.astimezone(dt.UTC) + dt.timedelta(minutes=program.dusk_offset)
    off = dawn.astimezone(dt.UTC) + dt.timedelta(minutes=program.dawn_offset)
    exception = next((e for e in program.exceptions if e.matches(day)), None)
    steps: list[tuple[dt.datetime, int]] = [(on, program.level)]
    if exception is not None:
        steps = [(on, exception.level)]
    else:
        for step in sorted(program.dimming, key=lambda s: (s.at < NOON, s.at)):
            local_day = day if step.at >= NOON else day + dt.timedelta(days=1)
            local = dt.datetime.combine(
                local_day, dt.time(step.at // 60, step.at % 60), tzinfo=zone
            )
            at = local.astimezone(dt.UTC)
            if on < at < off:
                steps.append((at, step.level))
    return Night(
        evening=day,
        on=on,
        off=max(on, off),
        steps=tuple(steps),
        exception=exception is not None,
    )


def level_at(t: dt.datetime, site: Site, program: Program) -> tuple[int, Night]:
    """The scheduled level at instant ``t`` (0 = off) and the night it belongs to (or the
    coming one, in daytime)."""
    local_day = t.astimezone(site.zone).date()
    yesterday = night(local_day - dt.timedelta(days=1), site, program)
    level = yesterday.level_at(t)
    if level is not None:
        return level, yesterday
    tonight = night(local_day, site, program)
    level = tonight.level_at(t)
    if level is not None:
        return level, tonight
    if t >= tonight.off:  # after a night that ended before midnight (polar edge)
        tonight = night(local_day + dt.timedelta(days=1), site, program)
    return 0, tonight


def with_photocell(
    scheduled: int, dark: bool | None, t: dt.datetime, current: Night, program: Program
) -> int:
    """The level once the photocell has had its say: it wins when it disagrees with the
    schedule farther than its margin from the nearest scheduled switch."""
    cell = program.photocell
    if cell is None or dark is None or dark == (scheduled > 0):
        return scheduled
    distance = min(abs((t - current.on).total_seconds()), abs((t - current.off).total_seconds()))
    if distance <= cell.margin:
        return scheduled
    return (current.steps[0][1] or FULL) if dark else 0


def schedule(first: dt.date, days: int, site: Site, program: Program) -> list[Night]:
    """The nights of ``days`` evenings from ``first`` (for ``armoire schedule``)."""
    return [night(first + dt.timedelta(days=i), site, program) for i in range(days)]


# ------------------------------------------------------------------ configuration


def parse_lighting(sections: list[Section]) -> tuple[Program, ...]:
    """Programs from ``[[lighting]]`` tables; problems go to the sections' Problems."""
    programs: list[Program] = []
    names: set[str] = set()
    for sec in sections:
        mark = sec.problems.mark()
        name = sec.string("name", pattern=_GROUP, expected="a group name (a-z, 0-9, _ -)")
        if sec.ok("name") and name in names:
            sec.error("name", f"duplicate lighting group {show(name)}")
        names.add(name)
        lamps = _lamps(sec)
        contactor = sec.string("contactor", default="") or None
        depression = _depression(sec)
        program = Program(
            name=name,
            lamps=lamps,
            contactor=contactor,
            depression=depression,
            dusk_offset=sec.number("dusk_offset", -MAX_OFFSET_MIN, MAX_OFFSET_MIN, default=0.0),
            dawn_offset=sec.number("dawn_offset", -MAX_OFFSET_MIN, MAX_OFFSET_MIN, default=0.0),
            level=sec.integer("level", 1, FULL, default=FULL),
            dimming=tuple(_step(s) for s in sec.tables("dimming", required=False)),
            exceptions=tuple(_exception(s) for s in sec.tables("exceptions", required=False)),
            photocell=_photocell(sec),
        )
        sec.close()
        if sec.problems.clean_since(mark):
            programs.append(program)
    return tuple(programs)


def _lamps(sec: Section) -> tuple[str, ...]:
    value = sec.raw("lamps")
    if value is None:
        return DEFAULT_PROGRAM.lamps
    if not isinstance(value, list) or not all(isinstance(v, str) and "/" in v for v in value):
        sec.error("lamps", f'expected an array of level points or globs ("lamp-*/level"), '
                  f"got {show(value)}")  # fmt: skip
        return ()
    return tuple(value)


def _depression(sec: Section) -> str | float:
    value = sec.raw("depression")
    if value is None:
        return "official"
    if isinstance(value, str) and value in DEPRESSIONS:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 18:
        return float(value)
    hint = did_you_mean(value, DEPRESSIONS) if isinstance(value, str) else ""
    sec.error("depression", f"expected {', '.join(DEPRESSIONS)} or degrees 0..18, "
              f"got {show(value)}{hint}")  # fmt: skip
    return "official"


def _minutes(sec: Section, key: str) -> int:
    text = sec.string(key, pattern=_HHMM, expected='a local time "HH:MM"')
    m = _HHMM.fullmatch(text)
    return int(m.group(1)) * 60 + int(m.group(2)) if m else 0


def _step(sec: Section) -> DimStep:
    step = DimStep(at=_minutes(sec, "at"), level=sec.integer("level", 0, FULL))
    sec.close()
    return step


def _exception(sec: Section) -> CalendarException:
    first = sec.string("from", default="") or None
    last = sec.string("to", default="") or None
    for key, value in (("from", first), ("to", last)):
        if value is not None and not _valid_date(value):
            sec.error(key, f'expected a date "YYYY-MM-DD", got {show(value)}')
    weekdays: list[int] = []
    raw = sec.raw("weekdays")
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(d, str) and d in WEEKDAYS for d in raw):
            sec.error("weekdays", f"expected an array among {', '.join(WEEKDAYS)}, got {show(raw)}")
        else:
            weekdays = [WEEKDAYS.index(d) for d in raw]
    if first is None and last is None and not weekdays:
        sec.error("from", "an exception needs from/to dates or weekdays")
    exception = CalendarException(
        first=first,
        last=last,
        weekdays=tuple(weekdays),
        level=sec.integer("level", 0, FULL, default=FULL),
    )
    sec.close()
    return exception


def _valid_date(text: str) -> bool:
    if not _DATE.fullmatch(text):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _photocell(sec: Section) -> Photocell | None:
    if not sec.has("photocell"):
        return None
    sub = sec.table("photocell")
    cell = Photocell(
        point=sub.string("point", expected="the light sensor's point"),
        dark_below=sub.number("dark_below", 0, 100_000, default=30.0),
        margin=sub.number("margin", 0, 86400 / 60, default=30.0) * 60,
    )
    sub.close()
    return cell


# ------------------------------------------------------------------ the runner


@dataclass(frozen=True, slots=True)
class GroupState:
    """What a group is doing now (status, live view)."""

    group: str
    level: int  # 0 = off
    on: dt.datetime
    off: dt.datetime
    next_switch: dt.datetime | None
    photocell: bool  # the photocell overrides the schedule


class LightingRunner:
    """Applies each group's program at priority 14, on the trusted wall time.

    ``now`` returns the trusted wall time (seconds since the epoch) or None when the
    agent has no trustworthy time at all: then a photocell, if the group has one, decides
    alone; without one the schedule's entries are relinquished, so the lamps fall back to
    their relinquish default (lit), the safe side at night.
    ``write`` and ``relinquish`` are the Arbiter's, bound to level 14.
    """

    def __init__(
        self,
        *,
        programs: tuple[Program, ...],
        site: Site,
        clock: Clock,
        now: Callable[[], float | None],
        writable: Collection[str],
        points: Points,
        write: Callable[[str, Value], Awaitable[object]],
        relinquish: Callable[[str], Awaitable[object]],
        tick: float = TICK,
    ) -> None:
        self._tick = tick
        self.programs = programs
        self.site = site
        self._clock = clock
        self._now = now
        self._points = points
        self._write = write
        self._relinquish = relinquish
        self._targets = {
            p.name: (
                [w for w in writable if any(fnmatchcase(w, g) for g in p.lamps)],
                _contactor_points(p, writable),
            )
            for p in programs
        }
        self._applied: dict[str, int | None] = {}
        self._written: dict[str, Value | None] = {}  # per point, what level 14 holds
        self.states: dict[str, GroupState] = {}
        self.ticks = 0
        for program in programs:
            lamps, contactor = self._targets[program.name]
            if not lamps and not contactor:
                log.warning("lighting group %s matches no writable point", program.name)

    def desired(self, program: Program, t: float | None) -> int | None:
        """The level the group should be at (None: no time and no photocell to go by, leave
        the lamps to their lit defaults)."""
        if t is None:
            self.states.pop(program.name, None)
            dark = self._dark(program)  # without a clock, the sky itself decides
            return None if dark is None else (program.level if dark else 0)
        instant = dt.datetime.fromtimestamp(t, dt.UTC)
        level, current = level_at(instant, self.site, program)
        final = with_photocell(level, self._dark(program), instant, current, program)
        upcoming = [current.on, *(s for s, _ in current.steps[1:]), current.off]
        self.states[program.name] = GroupState(
            group=program.name,
            level=final,
            on=current.on,
            off=current.off,
            next_switch=next((s for s in upcoming if s > instant), None),
            photocell=final != level,
        )
        return final

    def _dark(self, program: Program) -> bool | None:
        cell = program.photocell
        if cell is None:
            return None
        sample = self._points.get(cell.point)
        if sample is None or sample.quality is Quality.COMM_FAIL:
            return None
        value = sample.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return value < cell.dark_below

    async def step(self) -> None:
        """Check every group once and write what changed."""
        t = self._now()
        for program in self.programs:
            level = self.desired(program, t)
            if program.name in self._applied and self._applied[program.name] == level:
                continue
            self._applied[program.name] = level
            lamps, contactor = self._targets[program.name]
            if level is None:
                log.warning("lighting %s: no trusted time, lamps left to their defaults",
                            program.name)  # fmt: skip
            else:
                log.info("lighting %s: level %d", program.name, level)
            wanted: list[tuple[str, Value | None]] = [
                *((p, None if level is None else level > 0) for p in contactor),
                *((p, level) for p in lamps),
            ]
            for point, value in wanted:
                if point in self._written and self._written[point] == value:
                    continue
                self._written[point] = value
                if value is None:
                    await self._guard(self._relinquish(point), point)
                else:
                    await self._guard(self._write(point, value), point)

    async def _guard(self, awaitable: Awaitable[object], point: str) -> None:
        try:
            await awaitable
        except Exception as exc:  # a device error: the arbiter retries it
            log.warning("lighting: writing %s failed: %s", point, exc)

    async def run(self) -> None:
        while True:
            await self.step()
            self.ticks += 1
            await self._clock.sleep(self._next_delay())

    def _next_delay(self) -> float:
        """Until the next tick, or the next switching instant if it comes sooner (so the
        lamps switch on the instant, not up to a tick later)."""
        now = self._now()
        upcoming = [s.next_switch for s in self.states.values() if s.next_switch is not None]
        if now is None or not upcoming:
            return self._tick
        until = min(upcoming).timestamp() - now
        return min(self._tick, max(until, 0.001))


SCHEDULE_PRIORITY: Final = int(Priority.SCHEDULE)

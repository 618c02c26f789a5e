"""Local fail-safe rules (DESIGN.md, "Rules"; STYLE.md, "State machines as tables").

Everything that decides *when* a rule fires lives in this file: the four phases of a rule
instance and the one table of transitions between them (:data:`TRANSITIONS`). A rule is
configuration (``[[rules]]``, parsed by :func:`parse_rules`; the default set is
``agent/default_rules.toml``):

- ``when``: terms that must all hold (a point compared with a value, a point's quality,
  the uplink state, night or day, a local time window);
- ``unless``: terms of which none may hold (``door open`` *unless* a maintenance session);
- ``hold_off``: seconds ``when`` must hold before the rule fires (debounce);
- ``clear``: terms of which any one clears the rule (hysteresis: state the way back
  beyond the threshold); absent, the rule clears when ``when`` stops holding;
  ``clear_after``: seconds that must hold first;
- actions: an alarm raised on firing and cleared on clearing, writes at a fail-safe
  priority (3–5; 1–2 for life safety) relinquished on clearing, a device action.

A rule whose first point term is a glob (``lamp-*/failure``) has one instance per
device it matches, each with its own phase and alarm ``src`` (the device). Evaluation is
synchronous and cheap: on every point change (the instances that point concerns) and on
a 1 s tick (every instance, for hold-off times and non-point terms). It never waits on
the uplink or the disk: it queues effects, which :meth:`RulesEngine.run` carries out.

An alarm is raised once per transition (the hold-off and the hysteresis keep noise
from flapping it) and is persisted by the outbox's active-alarm table: after a restart
an instance whose alarm is still active starts ``active`` (its fail-safe writes are
asserted again, the alarm is not repeated) and clears when its clear condition holds.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from importlib import resources
from typing import Final, Literal

from agent.clock import Clock
from agent.messages import Severity
from agent.points import Points, Quality, Sample, Value
from drivers.profile import Problems, SchemaError, Section, did_you_mean, read_toml, show

log = logging.getLogger(__name__)

# Seconds between evaluations of every instance (hold-off timers, uplink, time of day).
TICK: Final = 1.0
# Priorities a rule may write at (DESIGN.md, Arbiter): 1–2 life safety, 3–5 fail-safe.
RULE_PRIORITIES: Final = (1, 5)
# Longest hold-off / clear delay: a day. A rule slower than that is a report, not a fail-safe.
MAX_DELAY: Final = 86400.0
DEFAULT_RULES: Final = "default_rules.toml"
# Loop iterations given to fail-safe writes before an alarm is committed: the Arbiter's
# write spawns a shielded task that calls the driver, a few hops to the serial port.
WRITE_HEAD_START: Final = 4


# ------------------------------------------------------------------ the state machine


class Phase(StrEnum):
    """Where one rule instance stands."""

    IDLE = "idle"  # nothing to report
    PENDING = "pending"  # ``when`` holds, waiting out the hold-off
    ACTIVE = "active"  # fired: alarm raised, fail-safe writes in place
    CLEARING = "clearing"  # the clear condition holds, waiting out clear_after


class Signal(StrEnum):
    """What an evaluation saw, given the instance's phase."""

    TRIP = "trip"  # ``when`` holds, hold-off not over
    TRIP_HELD = "trip_held"  # ``when`` has held for the hold-off
    CALM = "calm"  # ``when`` does not hold
    CLEAR = "clear"  # the clear condition holds, clear_after not over
    CLEAR_HELD = "clear_held"  # the clear condition has held for clear_after
    STAY = "stay"  # the clear condition does not hold


class Effect(StrEnum):
    NONE = "none"
    TIMER = "timer"  # remember when the new phase began
    FIRE = "fire"  # raise the alarm, write, request the device action
    RELEASE = "release"  # clear the alarm, relinquish the writes


# Every transition; a (phase, signal) pair not listed leaves the instance as it is.
TRANSITIONS: Final[Mapping[tuple[Phase, Signal], tuple[Phase, Effect]]] = {
    (Phase.IDLE, Signal.TRIP): (Phase.PENDING, Effect.TIMER),
    (Phase.IDLE, Signal.TRIP_HELD): (Phase.ACTIVE, Effect.FIRE),  # hold_off = 0
    (Phase.PENDING, Signal.CALM): (Phase.IDLE, Effect.NONE),
    (Phase.PENDING, Signal.TRIP_HELD): (Phase.ACTIVE, Effect.FIRE),
    (Phase.ACTIVE, Signal.CLEAR): (Phase.CLEARING, Effect.TIMER),
    (Phase.ACTIVE, Signal.CLEAR_HELD): (Phase.IDLE, Effect.RELEASE),  # clear_after = 0
    (Phase.CLEARING, Signal.STAY): (Phase.ACTIVE, Effect.NONE),
    (Phase.CLEARING, Signal.CLEAR_HELD): (Phase.IDLE, Effect.RELEASE),
}


def signal(phase: Phase, *, tripped: bool, cleared: bool, held_for: float, rule: Rule) -> Signal:
    """The signal an evaluation gives: ``held_for`` is how long the phase has lasted."""
    if phase in (Phase.IDLE, Phase.PENDING):
        if not tripped:
            return Signal.CALM
        waited = held_for if phase is Phase.PENDING else 0.0
        return Signal.TRIP_HELD if waited >= rule.hold_off else Signal.TRIP
    if not cleared:
        return Signal.STAY
    waited = held_for if phase is Phase.CLEARING else 0.0
    return Signal.CLEAR_HELD if waited >= rule.clear_after else Signal.CLEAR


# ------------------------------------------------------------------ rules as data

Comparison = Literal["gt", "ge", "lt", "le", "eq", "ne"]
COMPARISONS: Final[tuple[Comparison, ...]] = ("gt", "ge", "lt", "le", "eq", "ne")
QUALITIES: Final = tuple(q.name.lower() for q in Quality)
_GLOB: Final = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True, kw_only=True)
class PointTerm:
    """``point`` (a name or a glob) compared with ``value``; false without a usable value."""

    point: str
    op: Comparison
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityTerm:
    """``point`` (name or glob) has this quality (``comm_fail``, ``stale``…)."""

    point: str
    quality: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkTerm:
    """The uplink to the central post is ``online`` or ``offline``."""

    uplink: Literal["online", "offline"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SunTerm:
    """It is ``night`` (lamps scheduled on) or ``day`` by the lighting schedule."""

    sun: Literal["night", "day"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeTerm:
    """Local time of day in [start, end) minutes after midnight (may wrap past midnight)."""

    start: int
    end: int


Term = PointTerm | QualityTerm | UplinkTerm | SunTerm | TimeTerm


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmAction:
    """Raise ``code`` at ``severity`` when the rule fires; clear it when the rule clears.

    ``kind = "event"`` reports a condition that is not a fault (a scheduled flash of a
    traffic signal): the same raised/cleared pair, sent as an event, not an alarm.
    """

    code: str
    severity: int
    msg: str
    kind: Literal["alarm", "event"] = "alarm"


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteAction:
    """Write ``value`` to every writable point matching ``point`` at ``priority``."""

    point: str
    value: Value
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceAction:
    """Ask ``device`` to perform ``name`` (e.g. a camera ``snapshot``) when the rule fires."""

    device: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One fail-safe rule (see the module docstring)."""

    name: str
    when: tuple[Term, ...]
    unless: tuple[Term, ...]
    hold_off: float
    clear: tuple[Term, ...]
    clear_after: float
    alarm: AlarmAction | None
    writes: tuple[WriteAction, ...]
    device_action: DeviceAction | None

    @property
    def subject(self) -> str | None:
        """The point pattern that names the rule's instances (its first point term)."""
        for term in self.when:
            if isinstance(term, PointTerm | QualityTerm):
                return term.point
        return None

    @property
    def per_device(self) -> bool:
        subject = self.subject
        return subject is not None and bool(_GLOB.search(subject))


# ------------------------------------------------------------------ configuration

_SEVERITIES: Final = {s.name.lower(): int(s) for s in Severity}
_RULE_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_CODE: Final = re.compile(r"[a-z0-9_]+\.[a-z0-9_.]+")
_HHMM: Final = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_TERM_KEYS: Final = ("point", *COMPARISONS, "quality", "uplink", "sun", "time")


def parse_rules(sections: list[Section]) -> tuple[Rule, ...]:
    """Rules from ``[[rules]]`` tables; every problem is recorded on the sections' Problems."""
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, sec in enumerate(sections):
        mark = sec.problems.mark()
        name = sec.string("name", pattern=_RULE_NAME, expected="a rule name (a-z, 0-9, . _ -)")
        if sec.ok("name") and name in names:
            sec.error("name", f"duplicate rule name {show(name)} (also rules[{names[name]}])")
        names.setdefault(name, index)
        when = _terms(sec, "when", required=True)
        unless = _terms(sec, "unless", required=False)
        clear = _terms(sec, "clear", required=False)
        hold_off = sec.number("hold_off", 0, MAX_DELAY, default=0.0)
        clear_after = sec.number("clear_after", 0, MAX_DELAY, default=0.0)
        alarm = _alarm(sec)
        writes = tuple(_write(s) for s in sec.tables("write", required=False))
        device_action = _device_action(sec)
        sec.close()
        if alarm is None and not writes and device_action is None and sec.ok("when"):
            sec.error("alarm", "a rule needs at least one action: alarm, write or device_action")
        if sec.problems.clean_since(mark):
            rules.append(
                Rule(
                    name=name,
                    when=when,
                    unless=unless,
                    hold_off=hold_off,
                    clear=clear,
                    clear_after=clear_after,
                    alarm=alarm,
                    writes=writes,
                    device_action=device_action,
                )
            )
    return tuple(rules)


def default_rules() -> tuple[Rule, ...]:
    """The rule set shipped with the agent (``agent/default_rules.toml``)."""
    text = resources.files("agent").joinpath(DEFAULT_RULES)
    problems = Problems(f"agent/{DEFAULT_RULES}")
    with resources.as_file(text) as path:
        data = read_toml(path, problems)
    if data is None:
        raise SchemaError(problems.errors)
    root = Section(problems, "", data)
    rules = parse_rules(root.tables("rules"))
    root.close()
    if problems.errors:  # a bug in the shipped file: the unit tests load it
        raise SchemaError(problems.errors)
    return rules


def _terms(sec: Section, key: str, *, required: bool) -> tuple[Term, ...]:
    terms: list[Term] = []
    subs = sec.tables(key, required=required)
    for sub in subs:
        term = _term(sub)
        if term is not None:
            terms.append(term)
    return tuple(terms)


def _term(sec: Section) -> Term | None:
    present = [k for k in _TERM_KEYS if sec.has(k)]
    ops = [k for k in COMPARISONS if k in present]
    term: Term | None = None
    if "point" in present:
        point = sec.string("point", expected='a point name or glob, e.g. "lamp-*/failure"')
        if "/" not in point and sec.ok("point"):
            sec.error("point", f'expected "device/point", got {show(point)}')
        if len(ops) + ("quality" in present) != 1:
            sec.error("point", "needs exactly one of " + ", ".join((*COMPARISONS, "quality")))
        elif ops:
            value = sec.raw(ops[0])
            if not isinstance(value, bool | int | float | str):
                sec.error(ops[0], f"expected a number, true/false or a string, got {show(value)}")
            elif ops[0] in ("gt", "ge", "lt", "le") and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                sec.error(ops[0], f"expected a number, got {show(value)}")
            else:
                term = PointTerm(point=point, op=ops[0], value=value)
        else:
            quality = sec.choice("quality", QUALITIES)
            term = QualityTerm(point=point, quality=quality)
    elif len(present) != 1:
        sec.error(
            present[0] if present else "point",
            "a term is one of: point with "
            + "/".join((*COMPARISONS, "quality"))
            + ", uplink, sun, time",
        )
    elif present[0] == "uplink":
        term = UplinkTerm(uplink=sec.choice("uplink", ("online", "offline")))
    elif present[0] == "sun":
        term = SunTerm(sun=sec.choice("sun", ("night", "day")))
    elif present[0] == "time":
        window = sec.raw("time")
        minutes = [_minutes(v) for v in window] if isinstance(window, list) else []
        if len(minutes) != 2 or None in minutes:
            sec.error("time", f'expected ["HH:MM", "HH:MM"] (local time), got {show(window)}')
        else:
            start, end = minutes
            assert start is not None
            assert end is not None
            term = TimeTerm(start=start, end=end)
    else:
        sec.error(present[0], "needs a point")
    sec.close()
    return term


def _minutes(value: object) -> int | None:
    if isinstance(value, str) and (m := _HHMM.fullmatch(value)):
        return int(m.group(1)) * 60 + int(m.group(2))
    return None


def severity_of(sec: Section, key: str, default: str) -> int:
    """A severity by name (``"error"``) or syslog number 0..7."""
    value = sec.raw(key)
    if value is None:
        return _SEVERITIES[default]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value
    if isinstance(value, str) and value in _SEVERITIES:
        return _SEVERITIES[value]
    hint = did_you_mean(value, _SEVERITIES) if isinstance(value, str) else ""
    sec.error(key, f"expected a severity 0..7 or one of {', '.join(_SEVERITIES)}, got "
              f"{show(value)}{hint}")  # fmt: skip
    return _SEVERITIES[default]


def _alarm(sec: Section) -> AlarmAction | None:
    if not sec.has("alarm"):
        return None
    sub = sec.table("alarm")
    alarm = AlarmAction(
        code=sub.string("code", pattern=_CODE, expected='an event code "area.what"'),
        severity=severity_of(sub, "severity", "error"),
        msg=sub.string("msg", default="{src}: {code}"),
        kind=sub.choice("kind", ("alarm", "event"), default="alarm"),
    )
    sub.close()
    return alarm


def _write(sec: Section) -> WriteAction:
    value = sec.raw("value")
    if not isinstance(value, bool | int | float):
        sec.error("value", f"expected a number or true/false, got {show(value)}")
        value = 0
    write = WriteAction(
        point=sec.string("point", expected='a writable point or glob, e.g. "lamp-*/level"'),
        value=value,
        priority=sec.integer("priority", *RULE_PRIORITIES),
    )
    sec.close()
    return write


def _device_action(sec: Section) -> DeviceAction | None:
    if not sec.has("device_action"):
        return None
    sub = sec.table("device_action")
    action = DeviceAction(device=sub.string("device"), name=sub.string("name"))
    sub.close()
    return action


# ------------------------------------------------------------------ evaluation


def _compare(op: Comparison, left: Value, right: Value) -> bool:
    if op in ("eq", "ne"):
        same = type(left) is type(right) or (
            not isinstance(left, bool | str)
            and not isinstance(right, bool | str)
            and isinstance(left, int | float)
        )
        equal = same and left == right
        return equal if op == "eq" else not equal
    if isinstance(left, bool) or not isinstance(left, int | float):
        return False
    assert isinstance(right, int | float)
    match op:
        case "gt":
            return left > right
        case "ge":
            return left >= right
        case "lt":
            return left < right
        case _:
            return left <= right


def _usable(sample: Sample) -> bool:
    # A value read from a device that stopped answering is history, not a measurement.
    return sample.value is not None and sample.quality is not Quality.COMM_FAIL


@dataclass(slots=True)
class Instance:
    """One rule applied to one device (or the rule itself when it names no glob)."""

    rule: Rule
    src: str
    phase: Phase = Phase.IDLE
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class Fire:
    instance: Instance


@dataclass(frozen=True, slots=True)
class Release:
    instance: Instance


@dataclass(frozen=True, slots=True)
class Restore:
    """Assert the writes of an instance found active at start (its alarm is not repeated)."""

    instance: Instance


Work = Fire | Release | Restore


@dataclass(frozen=True, slots=True, kw_only=True)
class Effects:
    """What the engine acts through (the runtime wires them to Events, Arbiter, drivers)."""

    alarm: Callable[[AlarmAction, str, bool, str], None]  # (action, src, raised, msg)
    write: Callable[[str, Value, int, str], Awaitable[object]]  # (point, value, prio, source)
    relinquish: Callable[[str, int, str], Awaitable[object]]  # (point, prio, source)
    device_action: Callable[[DeviceAction, str], Awaitable[object]] | None = None


@dataclass(slots=True, kw_only=True)
class Context:
    """The non-point inputs of the terms."""

    uplink_online: Callable[[], bool] = lambda: True
    night: Callable[[], bool | None] = lambda: None  # None: no schedule known
    local_minutes: Callable[[], int | None] = lambda: None  # None: no trusted time


@dataclass(slots=True)
class _Stats:
    fired: int = 0
    released: int = 0
    evaluations: int = 0


class RulesEngine:
    """Evaluates the rules on point changes and on a 1 s tick; carries out their effects.

    ``writable`` lists the points the Arbiter knows (a write glob expands over them);
    ``active`` is the outbox's active-alarm set, ``(code, src)``, at start.
    """

    def __init__(
        self,
        *,
        rules: Iterable[Rule],
        points: Points,
        clock: Clock,
        effects: Effects,
        writable: Collection[str],
        context: Context | None = None,
        active: Collection[tuple[str, str]] = (),
    ) -> None:
        self.rules = tuple(rules)
        self._points = points
        self._clock = clock
        self._effects = effects
        self._writable = tuple(writable)
        self._context = context or Context()
        self._instances: dict[tuple[str, str], Instance] = {}
        self._known: set[str] = set()
        self._matches: dict[tuple[str, str], list[str]] = {}  # (pattern, device) -> names
        # Which rules a point name concerns, computed once per new name.
        self._concerns: dict[str, list[Rule]] = {}
        # Of those, the rules that compare the point's value (not only its quality).
        self._by_value: dict[str, list[Rule]] = {}
        self._work: deque[Work] = deque()
        self._wake = asyncio.Event()
        self.stats = _Stats()
        self.ticks = 0
        for rule in self.rules:
            if not rule.per_device:
                self._instance(rule, _fixed_src(rule))
        self._restore(active)
        self._unsubscribe = points.subscribe(self._changed)
        for sample in points:
            self._changed(sample, None)

    # ---------------------------------------------------------------- queries

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def phase(self, rule: str, src: str) -> Phase:
        instance = self._instances.get((rule, src))
        return instance.phase if instance else Phase.IDLE

    def writes_for(self, action: WriteAction) -> list[str]:
        return [p for p in self._writable if fnmatchcase(p, action.point)]

    # ---------------------------------------------------------------- evaluation

    def evaluate_all(self) -> None:
        """Evaluate every instance now (the tick)."""
        for instance in list(self._instances.values()):
            self._evaluate(instance)

    def _changed(self, sample: Sample, previous: Sample | None) -> None:
        name = sample.name
        rules = self._concerns.get(name)
        if rules is None:
            rules = self._concerns[name] = [r for r in self.rules if _mentions(r, name)]
            self._by_value[name] = [r for r in rules if _mentions(r, name, values_only=True)]
            self._known.add(name)
            self._matches.clear()
            for rule in rules:
                if rule.per_device and rule.subject and fnmatchcase(name, rule.subject):
                    self._instance(rule, _device_of(name))
        if previous is not None and previous.quality == sample.quality:
            # Terms that look only at this point's quality cannot have changed: only
            # rules comparing its value need a look (timers are the tick's business).
            # This spares "*/*" quality rules an evaluation per reading.
            rules = self._by_value.get(name) or []
        device = _device_of(name)
        for rule in rules:
            instance = self._instances.get(
                (rule.name, device if rule.per_device else _fixed_src(rule))
            )
            if instance is not None:
                self._evaluate(instance)
            elif rule.per_device:  # a term of another device's instance: evaluate them all
                for inst in self._instances.values():
                    if inst.rule is rule:
                        self._evaluate(inst)

    def _instance(self, rule: Rule, src: str) -> Instance:
        key = (rule.name, src)
        if key not in self._instances:
            self._instances[key] = Instance(rule=rule, src=src)
        return self._instances[key]

    def _restore(self, active: Collection[tuple[str, str]]) -> None:
        now = self._clock.monotonic()
        for rule in self.rules:
            if rule.alarm is None:
                continue
            for code, src in active:
                if code != rule.alarm.code:
                    continue
                if not rule.per_device and (rule.name, src) not in self._instances:
                    continue
                instance = self._instance(rule, src)
                instance.phase, instance.since = Phase.ACTIVE, now
                log.info("rule %s: %s still active from the previous run", rule.name, src or "-")
                if rule.writes:
                    self._push(Restore(instance))

    def _evaluate(self, instance: Instance) -> None:
        self.stats.evaluations += 1
        rule = instance.rule
        now = self._clock.monotonic()
        for _ in range(2):  # a zero hold-off goes PENDING→ACTIVE in one evaluation
            if instance.phase in (Phase.IDLE, Phase.PENDING):
                tripped = self._all(rule.when, instance) and not (
                    rule.unless and self._any(rule.unless, instance)
                )
                cleared = False
            else:
                tripped = False
                cleared = (
                    self._any(rule.clear, instance)
                    if rule.clear
                    else not self._all(rule.when, instance)
                )
                # What ``unless`` excuses never raised the alarm, and stops it.
                cleared = cleared or bool(rule.unless and self._any(rule.unless, instance))
            sig = signal(
                instance.phase,
                tripped=tripped,
                cleared=cleared,
                held_for=now - instance.since,
                rule=rule,
            )
            step = TRANSITIONS.get((instance.phase, sig))
            if step is None:
                return
            instance.phase, effect = step
            match effect:
                case Effect.TIMER:
                    instance.since = now
                    continue
                case Effect.FIRE:
                    self.stats.fired += 1
                    self._push(Fire(instance))
                case Effect.RELEASE:
                    self.stats.released += 1
                    self._push(Release(instance))
                case Effect.NONE:
                    pass
            return

    def _all(self, terms: tuple[Term, ...], instance: Instance) -> bool:
        scope = instance.src if instance.rule.per_device else ""
        return all(self._holds(t, scope) for t in terms)

    def _any(self, terms: tuple[Term, ...], instance: Instance) -> bool:
        scope = instance.src if instance.rule.per_device else ""
        return any(self._holds(t, scope) for t in terms)

    def _holds(self, term: Term, src: str) -> bool:
        match term:
            case PointTerm(point=pattern, op=op, value=value):
                return any(
                    _usable(s) and _compare(op, s.value, value) for s in self._samples(pattern, src)
                )
            case QualityTerm(point=pattern, quality=quality):
                return any(s.quality.name.lower() == quality for s in self._samples(pattern, src))
            case UplinkTerm(uplink=state):
                return self._context.uplink_online() == (state == "online")
            case SunTerm(sun=sun):
                night = self._context.night()
                return night is not None and night == (sun == "night")
            case TimeTerm(start=start, end=end):
                minutes = self._context.local_minutes()
                if minutes is None:
                    return False
                if start <= end:
                    return start <= minutes < end
                return minutes >= start or minutes < end

    def _samples(self, pattern: str, src: str) -> list[Sample]:
        if not _GLOB.search(pattern):
            sample = self._points.get(pattern)
            return [sample] if sample is not None else []
        names = self._matches.get((pattern, src))
        if names is None:  # once per pattern and device, until a new point appears
            names = self._matches[(pattern, src)] = [
                n
                for n in self._known
                if (not src or _device_of(n) == src) and fnmatchcase(n, pattern)
            ]
        samples = []
        for name in names:
            sample = self._points.get(name)
            if sample is not None:
                samples.append(sample)
        return samples

    # ---------------------------------------------------------------- effects

    def _push(self, work: Work) -> None:
        self._work.append(work)
        self._wake.set()

    async def run(self) -> None:
        """Tick every second and carry out queued effects as soon as they are queued."""
        tick = asyncio.create_task(self._tick(), name="rules.tick")
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._work:
                    await self._carry_out(self._work.popleft())
        finally:
            tick.cancel()
            await asyncio.gather(tick, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            await self._clock.sleep(TICK)
            self.ticks += 1
            self.evaluate_all()

    async def _carry_out(self, work: Work) -> None:
        instance = work.instance
        rule, src = instance.rule, instance.src
        source = f"rule:{rule.name}"
        raised = not isinstance(work, Release)
        # The writes are started first: they reach the device while the alarm is committed.
        pending: list[asyncio.Task[object]] = []
        for action in rule.writes:
            for point in self.writes_for(action):
                coro = (
                    self._effects.write(point, action.value, action.priority, source)
                    if raised
                    else self._effects.relinquish(point, action.priority, source)
                )
                pending.append(asyncio.ensure_future(coro))
        # Let the writes reach their transports (arbiter task, then the driver's request on
        # the line) before the alarm's synchronous commit holds the loop for its fsync.
        for _ in range(WRITE_HEAD_START if pending else 0):
            await asyncio.sleep(0)
        if isinstance(work, Fire):
            log.warning("rule %s fired%s", rule.name, f" for {src}" if src else "")
        elif isinstance(work, Release):
            log.info("rule %s cleared%s", rule.name, f" for {src}" if src else "")
        if rule.alarm is not None and not isinstance(work, Restore):
            msg = _message(rule.alarm, src, raised)
            try:
                self._effects.alarm(rule.alarm, src, raised, msg)
            except Exception:
                log.exception("rule %s: could not record the alarm", rule.name)
        if isinstance(work, Fire) and rule.device_action and self._effects.device_action:
            pending.append(
                asyncio.ensure_future(self._effects.device_action(rule.device_action, src))
            )
        if pending:
            for result in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.warning("rule %s: action failed: %s", rule.name, result)

    def close(self) -> None:
        self._unsubscribe()


def _message(alarm: AlarmAction, src: str, raised: bool) -> str:
    try:
        text = alarm.msg.format(src=src or "cabinet", code=alarm.code)
    except (KeyError, IndexError, ValueError):
        text = alarm.msg
    return text if raised else f"{text} (cleared)"


def _fixed_src(rule: Rule) -> str:
    """The alarm ``src`` of a rule with a single instance: its subject's device, if any."""
    return _device_of(rule.subject) if rule.subject else ""


def _device_of(point: str) -> str:
    return point.partition("/")[0]


def _mentions(rule: Rule, name: str, *, values_only: bool = False) -> bool:
    kinds = PointTerm if values_only else PointTerm | QualityTerm
    return any(
        isinstance(t, kinds) and fnmatchcase(name, t.point)
        for t in (*rule.when, *rule.unless, *rule.clear)
    )


__all__ = [
    "TRANSITIONS",
    "AlarmAction",
    "Context",
    "DeviceAction",
    "Effects",
    "Phase",
    "PointTerm",
    "QualityTerm",
    "Rule",
    "RulesEngine",
    "SunTerm",
    "TimeTerm",
    "UplinkTerm",
    "WriteAction",
    "default_rules",
    "parse_rules",
]

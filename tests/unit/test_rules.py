"""The fail-safe rules on the fake clock: each default rule fires, does not flap, clears."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.events import Events
from agent.messages import MessageFactory
from agent.outbox import Outbox
from agent.points import Points, Quality, Sample, Value
from agent.rules import (
    TRANSITIONS,
    AlarmAction,
    Context,
    DeviceAction,
    Effects,
    Phase,
    RulesEngine,
    default_rules,
    parse_rules,
)
from agent.security.cose import Signer
from drivers.profile import Problems, Section, read_toml

LAMPS = [f"lamp-0{i}" for i in range(1, 4)]
WRITABLE = [f"{lamp}/level" for lamp in LAMPS] + ["contactor/command"]


@dataclass
class Record:
    """What the rules did, in order."""

    alarms: list[tuple[str, str, bool, str]] = field(default_factory=list)
    writes: list[tuple[str, Value, int, str]] = field(default_factory=list)
    relinquished: list[tuple[str, int]] = field(default_factory=list)
    actions: list[tuple[str, str]] = field(default_factory=list)
    action_srcs: list[str] = field(default_factory=list)
    # Where alarms also go (the real Events, in the restart test).
    sink: Callable[[AlarmAction, str, bool, str], None] | None = None

    def effects(self) -> Effects:
        async def write(point: str, value: Value, prio: int, source: str) -> None:
            self.writes.append((point, value, prio, source))

        async def relinquish(point: str, prio: int, source: str) -> None:
            self.relinquished.append((point, prio))

        async def device_action(action: DeviceAction, src: str) -> None:
            self.actions.append((action.device, action.name))
            self.action_srcs.append(src)

        def alarm(action: AlarmAction, src: str, raised: bool, msg: str) -> None:
            self.alarms.append((action.code, src, raised, msg))
            if self.sink is not None:
                self.sink(action, src, raised, msg)

        return Effects(alarm=alarm, write=write, relinquish=relinquish, device_action=device_action)

    def raised(self, code: str) -> list[str]:
        return [src for c, src, up, _ in self.alarms if c == code and up]

    def cleared(self, code: str) -> list[str]:
        return [src for c, src, up, _ in self.alarms if c == code and not up]


@dataclass
class Bench:
    clock: FakeClock
    points: Points
    record: Record
    engine: RulesEngine
    online: list[bool]

    def set(self, name: str, value: Value, quality: Quality = Quality.GOOD) -> None:
        self.points.update(Sample(name=name, value=value, quality=quality, t_ms=0))

    async def run_for(self, seconds: float) -> None:
        await self.clock.advance(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def _bench(
    clock: FakeClock,
    rules_toml: str | None = None,
    active: set[tuple[str, str]] | None = None,
    points: Points | None = None,
    record: Record | None = None,
    tmp: Path | None = None,
) -> tuple[Bench, asyncio.Task[None]]:
    points = points or Points()
    record = record or Record()
    online = [True]
    rules = default_rules() if rules_toml is None else _parse(rules_toml, tmp)
    engine = RulesEngine(
        rules=rules,
        points=points,
        clock=clock,
        effects=record.effects(),
        writable=WRITABLE,
        context=Context(uplink_online=lambda: online[0]),
        active=active or set(),
    )
    task = asyncio.create_task(engine.run())
    await clock.advance(0)
    return Bench(clock, points, record, engine, online), task


def _parse(text: str, tmp: Path | None) -> tuple:  # type: ignore[type-arg]
    assert tmp is not None
    path = tmp / "rules.toml"
    path.write_text(text)
    problems = Problems(str(path))
    data = read_toml(path, problems)
    assert data is not None
    rules = parse_rules(Section(problems, "", data).tables("rules"))
    assert not problems.errors, problems.errors
    return rules


@pytest.fixture
async def bench(clock: FakeClock) -> AsyncIterator[Bench]:
    b, task = await _bench(clock)
    yield b
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ------------------------------------------------------------------ the table


def test_transitions__every_phase_has_a_way_in_and_out() -> None:
    """A rule can always fire and always clear: no phase is a dead end."""
    sources = {phase for phase, _ in TRANSITIONS}
    targets = {target for target, _ in TRANSITIONS.values()}
    assert sources == targets == set(Phase)


def test_default_rules__load_and_cover_the_issue_hazards() -> None:
    """The shipped rule set parses and raises the codes the control room expects."""
    codes = {r.alarm.code for r in default_rules() if r.alarm}
    assert codes == {
        "lamp.failure",
        "device.offline",
        "cabinet.overtemp",
        "road.ice",
        "door.intrusion",
        "mains.lost",
        "ups.battery",
        "spd.tripped",
        "signal.fault_flash",
        "signal.mmu",
        "signal.offline",
        "signal.flash",
        "camera.tamper",
        "camera.offline",
    }


# ------------------------------------------------------------------ each default rule


async def test_lamp_failure__raised_naming_the_lamp_after_hold_off(bench: Bench) -> None:
    """A failed lamp is reported once, naming it, after the 10 s debounce."""
    bench.set("lamp-02/failure", False)
    bench.set("lamp-03/failure", True)
    await bench.run_for(9)
    assert bench.record.raised("lamp.failure") == []
    await bench.run_for(2)
    assert bench.record.raised("lamp.failure") == ["lamp-03"]
    assert "lamp-03" in bench.record.alarms[0][3]


async def test_lamp_failure__flicker_does_not_flap_then_clears(bench: Bench) -> None:
    """A failure bit flickering every few seconds stays one alarm; a minute of health clears it."""
    bench.set("lamp-01/failure", True)
    await bench.run_for(11)
    for _ in range(20):
        bench.set("lamp-01/failure", False)
        await bench.run_for(5)
        bench.set("lamp-01/failure", True)
        await bench.run_for(5)
    assert bench.record.raised("lamp.failure") == ["lamp-01"]
    assert bench.record.cleared("lamp.failure") == []
    bench.set("lamp-01/failure", False)
    await bench.run_for(61)
    assert bench.record.cleared("lamp.failure") == ["lamp-01"]


async def test_lamp_failure__blip_shorter_than_hold_off_is_ignored(bench: Bench) -> None:
    """A failure bit set for 5 s (a glitch) raises nothing."""
    bench.set("lamp-01/failure", True)
    await bench.run_for(5)
    bench.set("lamp-01/failure", False)
    await bench.run_for(60)
    assert bench.record.alarms == []


async def test_device_offline__after_five_minutes_of_comm_fail(bench: Bench) -> None:
    """A device silent for 5 minutes is escalated once; answering again clears it."""
    bench.set("lamp-01/level", 100)
    bench.set("lamp-01/failure", None, Quality.COMM_FAIL)
    bench.set("lamp-01/level", None, Quality.COMM_FAIL)
    await bench.run_for(299)
    assert bench.record.raised("device.offline") == []
    await bench.run_for(2)
    assert bench.record.raised("device.offline") == ["lamp-01"]
    bench.set("lamp-01/failure", False)
    bench.set("lamp-01/level", 100)
    await bench.run_for(11)
    assert bench.record.cleared("device.offline") == ["lamp-01"]


async def test_quality_rules__not_evaluated_for_a_new_value_of_the_same_quality(
    bench: Bench,
) -> None:
    """Every reading of a busy cabinet re-evaluating "*/*" quality rules cost the agent
    most of its CPU per reading (bench/same_load.py); the alarm still comes on time."""
    bench.set("meter/power", 1.0)
    before = bench.engine.stats.evaluations
    for watts in range(2, 50):
        bench.set("meter/power", float(watts))
    assert bench.engine.stats.evaluations == before  # only device-offline mentions it
    bench.set("meter/power", None, Quality.COMM_FAIL)
    assert bench.engine.stats.evaluations > before
    await bench.run_for(301)
    assert bench.record.raised("device.offline") == ["meter"]


async def test_cabinet_overtemp__alarm_and_lamps_dimmed_then_released(bench: Bench) -> None:
    """A hot cabinet dims every lamp to 50 % at priority 4; cooled below 50 °C it lets go."""
    bench.set("env/temperature", 56.0)
    await bench.run_for(61)
    assert bench.record.raised("cabinet.overtemp") == ["env"]
    assert sorted(bench.record.writes) == [
        (f"{lamp}/level", 50, 4, "rule:cabinet-overtemp") for lamp in LAMPS
    ]
    bench.set("env/temperature", 52.0)  # inside the hysteresis band: stays
    await bench.run_for(600)
    assert bench.record.cleared("cabinet.overtemp") == []
    bench.set("env/temperature", 49.0)
    await bench.run_for(301)
    assert bench.record.cleared("cabinet.overtemp") == ["env"]
    assert sorted(bench.record.relinquished) == [(f"{lamp}/level", 4) for lamp in LAMPS]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=50.1, max_value=70.0), min_size=5, max_size=40))
def test_cabinet_overtemp__noise_above_the_clear_threshold_raises_once(noise: list[float]) -> None:
    """However the temperature wanders above 50 °C, the alarm is raised at most once."""

    async def scenario() -> None:
        clock = FakeClock()
        b, task = await _bench(clock)
        for value in noise:
            b.set("env/temperature", value)
            await b.run_for(30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(b.record.raised("cabinet.overtemp")) <= 1
        assert b.record.cleared("cabinet.overtemp") == []

    asyncio.run(scenario())


async def test_road_ice__cold_and_wet_raises_a_warning_for_the_snow_desk(bench: Bench) -> None:
    """Road at 0.3 °C with 95 % humidity for two minutes gives road.ice; a thaw clears it."""
    bench.set("road/surface_temp", 0.3)
    bench.set("env/humidity", 80.0)
    await bench.run_for(300)
    assert bench.record.raised("road.ice") == []  # cold but dry
    bench.set("env/humidity", 95.0)
    await bench.run_for(121)
    assert bench.record.raised("road.ice") == ["road"]
    bench.set("road/surface_temp", 1.0)  # inside the band
    await bench.run_for(700)
    assert bench.record.cleared("road.ice") == []
    bench.set("road/surface_temp", 2.0)
    await bench.run_for(601)
    assert bench.record.cleared("road.ice") == ["road"]


async def test_door_intrusion__open_without_session_is_an_alert(bench: Bench) -> None:
    """The door opened with no maintenance session raises door.intrusion at severity 1."""
    bench.set("cabinet/door", True)
    await bench.run_for(3)
    assert bench.record.raised("door.intrusion") == ["cabinet"]
    rule = next(r for r in bench.engine.rules if r.name == "door-intrusion")
    assert rule.alarm is not None
    assert rule.alarm.severity == 1
    bench.set("cabinet/door", False)
    await bench.run_for(1)
    assert bench.record.cleared("door.intrusion") == ["cabinet"]


async def test_door_intrusion__not_raised_during_a_maintenance_session(bench: Bench) -> None:
    """A technician with an open session opens the door: no alarm."""
    bench.set("console/session", True)
    bench.set("cabinet/door", True)
    await bench.run_for(60)
    assert bench.record.alarms == []


async def test_mains_lost__raised_and_cleared(bench: Bench) -> None:
    """Mains lost for 2 s raises mains.lost; back for 10 s clears it."""
    bench.set("cabinet/mains", True)
    bench.set("cabinet/mains", False)
    await bench.run_for(3)
    assert bench.record.raised("mains.lost") == ["cabinet"]
    bench.set("cabinet/mains", True)
    await bench.run_for(11)
    assert bench.record.cleared("mains.lost") == ["cabinet"]


# ------------------------------------------------------------------ restart, custom rules


async def test_restart__active_alarm_not_repeated_writes_reasserted(clock: FakeClock) -> None:
    """After a restart an overtemp alarm still active is not raised again, the lamps are
    dimmed again, and the alarm clears when the cabinet has cooled."""
    b, task = await _bench(clock, active={("cabinet.overtemp", "env")})
    try:
        await b.run_for(1)
        assert b.record.alarms == []
        assert len(b.record.writes) == len(LAMPS)
        b.set("env/temperature", 58.0)
        await b.run_for(120)
        assert b.record.alarms == []
        b.set("env/temperature", 40.0)
        await b.run_for(301)
        assert b.record.cleared("cabinet.overtemp") == ["env"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_default_rules__camera_tamper_alarm_and_still_of_that_camera(bench: Bench) -> None:
    """A covered camera is a critical alarm at once, with a still of that very camera."""
    bench.set("cam-02/tamper", False)
    bench.set("cam-02/tamper", True)
    await bench.run_for(0)
    assert bench.record.raised("camera.tamper") == ["cam-02"]
    assert bench.record.actions == [("{src}", "snapshot")]
    assert bench.record.action_srcs == ["cam-02"]
    bench.set("cam-02/tamper", False)
    await bench.run_for(9)
    assert bench.record.cleared("camera.tamper") == []
    await bench.run_for(2)
    assert bench.record.cleared("camera.tamper") == ["cam-02"]


async def test_default_rules__door_intrusion_takes_stills(bench: Bench) -> None:
    """A forced door asks every camera for a still along with the alarm."""
    bench.set("console/session", False)
    bench.set("cabinet/door", True)
    await bench.run_for(3)
    assert bench.record.raised("door.intrusion") == ["cabinet"]
    assert ("cam-*", "snapshot") in bench.record.actions


async def test_default_rules__camera_offline_at_comm_fail(bench: Bench) -> None:
    """A camera declared comm_fail is a camera.offline alarm at once, cleared 5 s after it
    answers again."""
    bench.set("cam-01/online", True)
    bench.set("cam-01/online", True, Quality.COMM_FAIL)
    await bench.run_for(0)
    assert bench.record.raised("camera.offline") == ["cam-01"]
    bench.set("cam-01/online", True)
    await bench.run_for(4)
    assert bench.record.cleared("camera.offline") == []
    await bench.run_for(2)
    assert bench.record.cleared("camera.offline") == ["cam-01"]


async def test_custom_rule__uplink_offline_writes_and_device_action(
    clock: FakeClock, tmp_path: Path
) -> None:
    """A configured rule on the uplink state writes at its priority and asks for a snapshot."""
    text = """
[[rules]]
name = "link-lost"
when = [{ uplink = "offline" }]
hold_off = 600
write = [{ point = "contactor/command", value = true, priority = 5 }]
device_action = { device = "cam-1", name = "snapshot" }
"""
    b, task = await _bench(clock, text, tmp=tmp_path)
    try:
        b.online[0] = False
        await b.run_for(599)
        assert b.record.writes == []
        await b.run_for(2)
        assert b.record.writes == [("contactor/command", True, 5, "rule:link-lost")]
        assert b.record.actions == [("cam-1", "snapshot")]
        b.online[0] = True
        await b.run_for(1)
        assert b.record.relinquished == [("contactor/command", 5)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[[rules]]\nname = "x"\nwhen = [{ point = "a/b", eq = true }]\n'
            'alarm = { code = "a.b", severity = "eror" }\n',
            "rules[0].alarm.severity: expected a severity 0..7 or one of emergency, alert, "
            'critical, error, warning, notice, info, debug, got "eror"; did you mean "error"?',
        ),
        (
            '[[rules]]\nname = "x"\nwhen = [{ point = "a/b", eq = true }]\nhold_of = 3\n'
            'alarm = { code = "a.b" }\n',
            'rules[0].hold_of: unknown key; did you mean "hold_off"?',
        ),
        (
            '[[rules]]\nname = "x"\nwhen = [{ point = "a/b", gt = 1 }]\n'
            'write = [{ point = "lamp-*/level", value = 0, priority = 8 }]\n',
            "rules[0].write[0].priority: expected an integer 1..5, got 8",
        ),
        (
            '[[rules]]\nname = "x"\nwhen = [{ point = "a/b", gt = "hot" }]\n'
            'alarm = { code = "a.b" }\n',
            'rules[0].when[0].gt: expected a number, got "hot"',
        ),
        (
            '[[rules]]\nname = "x"\nwhen = [{ point = "a/b", eq = true }]\n',
            "rules[0].alarm: a rule needs at least one action: alarm, write or device_action",
        ),
    ],
    ids=["severity-typo", "key-typo", "priority-not-failsafe", "compare-string", "no-action"],
)
def test_parse_rules__errors_name_the_path(text: str, error: str, tmp_path: Path) -> None:
    """A mistake in [[rules]] is reported with its key path and a suggestion."""
    path = tmp_path / "rules.toml"
    path.write_text(text)
    problems = Problems("gw.toml")
    data = read_toml(path, problems)
    assert data is not None
    parse_rules(Section(problems, "", data).tables("rules"))
    assert f"gw.toml: {error}" in problems.errors, problems.errors


async def test_signal_fault_flash__critical_at_once_naming_the_junction(bench: Bench) -> None:
    """A junction in fault flash is a critical alarm at the first poll that shows it, with
    no hold-off; back to normal for 10 s clears it."""
    bench.set("signal-01/fault_flash", False)
    start = bench.clock.monotonic()
    bench.set("signal-01/fault_flash", True)
    await bench.run_for(0)
    assert bench.record.raised("signal.fault_flash") == ["signal-01"]
    assert bench.clock.monotonic() == start  # no time had to pass
    bench.set("signal-01/fault_flash", False)
    await bench.run_for(9)
    assert bench.record.cleared("signal.fault_flash") == []
    await bench.run_for(2)
    assert bench.record.cleared("signal.fault_flash") == ["signal-01"]


async def test_signal_mmu__critical_at_once(bench: Bench) -> None:
    """A conflict-monitor (MMU) fault is its own critical alarm, raised at once."""
    bench.set("tsc-north/mmu_fault", True)
    await bench.run_for(0)
    assert bench.record.raised("signal.mmu") == ["tsc-north"]


async def test_signal_offline__critical_when_the_controller_stops_answering(bench: Bench) -> None:
    """A controller whose points go comm_fail raises signal.offline at once (device.offline
    only after 5 minutes); answering again for 10 s clears it."""
    bench.set("signal-01/flash_status", 2)
    bench.set("signal-01/flash_status", None, Quality.COMM_FAIL)
    await bench.run_for(0)
    assert bench.record.raised("signal.offline") == ["signal-01"]
    assert bench.record.raised("device.offline") == []
    bench.set("signal-01/flash_status", 2)
    await bench.run_for(11)
    assert bench.record.cleared("signal.offline") == ["signal-01"]


async def test_signal_flash__scheduled_flash_is_an_event_not_a_fault(bench: Bench) -> None:
    """Flash by the time-base schedule is reported (kind event), and raises no alarm."""
    bench.set("signal-01/scheduled_flash", True)
    bench.set("signal-01/fault_flash", False)
    await bench.run_for(1)
    assert bench.record.raised("signal.flash") == ["signal-01"]
    assert bench.record.raised("signal.fault_flash") == []
    (rule,) = [r for r in bench.engine.rules if r.name == "signal-flash"]
    assert rule.alarm is not None
    assert rule.alarm.kind == "event"
    bench.set("signal-01/scheduled_flash", False)
    await bench.run_for(1)
    assert bench.record.cleared("signal.flash") == ["signal-01"]


async def test_restart__rule_alarm_persisted_by_the_outbox(tmp_path: Path) -> None:
    """A mains.lost alarm raised before a restart is still known after it: the new run
    neither raises it again nor forgets to clear it when the mains come back."""

    def run_with_outbox(clock: FakeClock) -> tuple[Outbox, Record]:
        box = Outbox.open(tmp_path, clock)
        events = Events(
            gw="gw-1",
            factory=MessageFactory(gw="gw-1", boot=box.boot, signer=Signer(key)),
            outbox=box,
            clock=clock,
        )

        def alarm(action: AlarmAction, src: str, raised: bool, msg: str) -> None:
            events.rule_alarm(
                code=action.code, severity=action.severity, src=src, raised=raised, msg=msg
            )

        return box, Record(sink=alarm)

    key = Ed25519PrivateKey.generate()
    clock = FakeClock()
    box, record = run_with_outbox(clock)
    b, task = await _bench(clock, active=box.active_alarms, record=record)
    b.set("cabinet/mains", False)
    await b.run_for(3)
    assert record.raised("mains.lost") == ["cabinet"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    b.engine.close()
    box.close()

    box, record = run_with_outbox(clock)
    assert ("mains.lost", "cabinet") in box.active_alarms
    b, task = await _bench(clock, active=box.active_alarms, record=record)
    try:
        b.set("cabinet/mains", False)
        await b.run_for(60)
        assert record.alarms == []  # not repeated
        b.set("cabinet/mains", True)
        await b.run_for(11)
        assert record.cleared("mains.lost") == ["cabinet"]
        assert ("mains.lost", "cabinet") not in box.active_alarms
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        box.close()


# Each default rule: the points that trip it and the points that calm it.
SCENARIOS: dict[str, tuple[dict[str, Value], dict[str, Value], str]] = {
    "lamp-failure": ({"lamp-01/failure": True}, {"lamp-01/failure": False}, "lamp-01"),
    "cabinet-overtemp": ({"env/temperature": 60.0}, {"env/temperature": 40.0}, "env"),
    "road-ice": (
        {"road/surface_temp": 0.0, "env/humidity": 95.0},
        {"road/surface_temp": 3.0, "env/humidity": 95.0},
        "road",
    ),
    "door-intrusion": ({"cabinet/door": True}, {"cabinet/door": False}, "cabinet"),
    "mains-lost": ({"cabinet/mains": False}, {"cabinet/mains": True}, "cabinet"),
    "ups-on-battery": ({"cabinet/ups_battery": True}, {"cabinet/ups_battery": False}, "cabinet"),
    "spd-tripped": ({"cabinet/spd": True}, {"cabinet/spd": False}, "cabinet"),
}
# The cabinet's contacts are debounced at their source (GPIO HAL, I/O module firmware):
# their rules fire at once, which is what a forced door or a lost supply needs.
AT_ONCE = {"door-intrusion", "mains-lost", "ups-on-battery", "spd-tripped"}


@pytest.mark.parametrize("name", sorted(AT_ONCE))
async def test_default_rule__cabinet_contact_raises_at_once_then_one_clear(
    name: str, bench: Bench
) -> None:
    """A cabinet hazard is an alarm at the next evaluation (no hold-off); its clearing is one
    clear after clear_after, however the contact chatters meanwhile."""
    rule = next(r for r in bench.engine.rules if r.name == name)
    assert rule.alarm is not None
    assert rule.hold_off == 0
    trip, calm, src = SCENARIOS[name]
    for point, value in trip.items():
        bench.set(point, value)
    await bench.run_for(0.01)
    assert bench.record.raised(rule.alarm.code) == [src]
    for point, value in calm.items():
        bench.set(point, value)
    await bench.run_for(rule.clear_after + 1)
    assert bench.record.raised(rule.alarm.code) == [src]
    assert bench.record.cleared(rule.alarm.code) == [src]


@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - AT_ONCE))
async def test_default_rule__noise_faster_than_hold_off_raises_nothing_then_one_cycle(
    name: str, bench: Bench
) -> None:
    """A trigger chattering faster than the rule's hold-off raises nothing; held, it raises
    exactly one alarm; calmed, exactly one clear."""
    rule = next(r for r in bench.engine.rules if r.name == name)
    assert rule.alarm is not None
    trip, calm, src = SCENARIOS[name]
    half = rule.hold_off / 2
    for _ in range(10):
        for point, value in trip.items():
            bench.set(point, value)
        await bench.run_for(half)
        for point, value in calm.items():
            bench.set(point, value)
        await bench.run_for(half)
    assert bench.record.alarms == []
    for point, value in trip.items():
        bench.set(point, value)
    await bench.run_for(rule.hold_off + 1)
    for point, value in calm.items():
        bench.set(point, value)
    await bench.run_for(rule.clear_after + 1)
    code = rule.alarm.code
    assert bench.record.raised(code) == [src]
    assert bench.record.cleared(code) == [src]

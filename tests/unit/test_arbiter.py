"""The Arbiter on the fake clock: who wins, when holds lapse, what the device sees."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.arbiter import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRY_INTERVAL,
    Arbiter,
    ArbiterError,
    DeviceWriteError,
    Entry,
    Outcome,
    Priority,
)
from agent.clock import FakeClock
from agent.points import Value

LEVEL = "lamp-01/level"
OTHER = "lamp-02/level"
FAN = "cabinet/fan"
DEFAULTS: dict[str, Value] = {LEVEL: 100, OTHER: 100, FAN: False}
T0 = 1000.0  # FakeClock's initial monotonic time

# How many loop iterations a poll may take before a test gives up: far more than the
# arbiter needs (a handful), far less than a second.
POLL_ROUNDS = 200


@dataclass
class Device:
    """A test double of the write callback: records every attempt, can fail or stall."""

    clock: FakeClock
    calls: list[tuple[float, str, Value]] = field(default_factory=list)
    state: dict[str, Value] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None  # when set, writes wait for it (a slow bus)
    busy: set[str] = field(default_factory=set)
    overlaps: int = 0

    async def __call__(self, point: str, value: Value) -> None:
        self.calls.append((self.clock.monotonic(), point, value))
        if point in self.busy:
            self.overlaps += 1
        self.busy.add(point)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if point in self.failing:
                raise DeviceWriteError(point, "no reply") from TimeoutError("3 tries")
            self.state[point] = value
        finally:
            self.busy.discard(point)

    def writes(self, point: str | None = None) -> list[tuple[float, Value]]:
        return [(t, v) for t, p, v in self.calls if point is None or p == point]


@dataclass
class Rig:
    clock: FakeClock
    device: Device
    arbiter: Arbiter


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds; fail after POLL_ROUNDS iterations."""
    for _ in range(POLL_ROUNDS):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def _waiting_for_wake() -> bool:
    return any(t.get_name() == "arbiter.wake" and not t.done() for t in asyncio.all_tasks())


async def settle() -> None:
    """Let every runnable task run to its next wait (loop iterations, not time)."""
    for _ in range(POLL_ROUNDS):
        await asyncio.sleep(0)


async def make_rig() -> Rig:
    """An arbiter after its start-up sync, with the sync's writes forgotten."""
    clock = FakeClock()
    device = Device(clock)
    arbiter = Arbiter(clock=clock, defaults=DEFAULTS, write_device=device)
    assert await arbiter.sync() == dict.fromkeys(DEFAULTS)
    device.calls.clear()
    return Rig(clock, device, arbiter)


@pytest.fixture
async def rig() -> Rig:
    return await make_rig()


@pytest.fixture
async def running(rig: Rig) -> AsyncIterator[Rig]:
    """The rig with ``run()`` parked on the clock."""
    task = asyncio.create_task(rig.arbiter.run(), name="arbiter.run")
    # Parked: run() waits for a wake-up (its "arbiter.wake" task), not merely "no sleeper on
    # the clock", which holds before run() has even started.
    await until(lambda: _waiting_for_wake() or task.done())
    assert not task.done(), task
    yield rig
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------ arbitration


async def test_arbiter__higher_priority_wins_and_relinquish_falls_back(rig: Rig) -> None:
    """A schedule would override the central post's command, or a lapsed command stick."""
    a, dev = rig.arbiter, rig.device
    out = await a.write(LEVEL, 40, priority=Priority.SCHEDULE, source="sched", hold=None)
    assert out == Outcome(point=LEVEL, effective=40, changed=True)
    out = await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="kid:0a1b/op", hold=600)
    assert out == Outcome(point=LEVEL, effective=0, changed=True)
    # A lower level changes under a higher one: no device write.
    out = await a.write(LEVEL, 60, priority=Priority.SCHEDULE, source="sched", hold=None)
    assert out == Outcome(point=LEVEL, effective=0, changed=False)
    assert a.entries(LEVEL) == {
        10: Entry(value=0, source="kid:0a1b/op", expires=T0 + 600),
        14: Entry(value=60, source="sched", expires=None),
    }
    assert [type(p) for p in a.entries(LEVEL)] == [int, int]
    out = await a.relinquish(LEVEL, priority=Priority.CENTRAL, source="kid:0a1b/op")
    assert out == Outcome(point=LEVEL, effective=60, changed=True)
    out = await a.relinquish(LEVEL, priority=Priority.SCHEDULE, source="sched")
    assert out == Outcome(point=LEVEL, effective=100, changed=True)
    assert dev.writes(LEVEL) == [(T0, 40), (T0, 0), (T0, 60), (T0, 100)]
    assert dev.writes(OTHER) == []


async def test_arbiter__equal_value_does_not_write_device(rig: Rig) -> None:
    """Every command would cost a bus transaction even when nothing changes."""
    a = rig.arbiter
    out = await a.write(LEVEL, 100, priority=Priority.CENTRAL, source="op", hold=60)
    assert out == Outcome(point=LEVEL, effective=100, changed=False)
    await a.write(LEVEL, 50, priority=Priority.CENTRAL, source="op", hold=60)
    out = await a.write(LEVEL, 50, priority=Priority.TECHNICIAN, source="tech", hold=60)
    assert out == Outcome(point=LEVEL, effective=50, changed=False)
    assert rig.device.writes() == [(T0, 50)]


async def test_arbiter__relinquish_default_when_array_empty(rig: Rig) -> None:
    """A lamp with no command would not return to its configured default."""
    a = rig.arbiter
    assert a.points == [LEVEL, OTHER, FAN]
    assert [a.effective(p) for p in a.points] == [100, 100, False]
    assert a.entries(FAN) == {}
    await a.write(FAN, True, priority=Priority.FAILSAFE, source="rule:heat", hold=None)
    assert a.effective(FAN) is True
    out = await a.relinquish(FAN, priority=Priority.FAILSAFE, source="rule:heat")
    assert out == Outcome(point=FAN, effective=False, changed=True)
    assert a.entries(FAN) == {}


async def test_arbiter__relinquish_absent_entry_is_not_an_error(rig: Rig) -> None:
    """A repeated relinquish (a retried command) would be acked as failed."""
    a = rig.arbiter
    await a.write(LEVEL, 30, priority=Priority.CENTRAL, source="op", hold=60)
    out = await a.relinquish(LEVEL, priority=Priority.TECHNICIAN, source="tech")
    assert out == Outcome(point=LEVEL, effective=30, changed=False)
    await a.relinquish(LEVEL, priority=Priority.CENTRAL, source="op")
    out = await a.relinquish(LEVEL, priority=Priority.CENTRAL, source="op")
    assert out == Outcome(point=LEVEL, effective=100, changed=False)
    assert rig.device.writes() == [(T0, 30), (T0, 100)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.write("lamp-99/level", 1, priority=10, source="op", hold=1), "unknown point"),
        (lambda a: a.write(LEVEL, 1, priority=0, source="op", hold=1), "priority must be 1..16"),
        (lambda a: a.write(LEVEL, 1, priority=17, source="op", hold=1), "priority must be 1..16"),
        (lambda a: a.write(LEVEL, 1, priority=True, source="op", hold=1), "priority"),
        (lambda a: a.write(LEVEL, 1, priority=10, source="op", hold=-1), "hold must be ≥ 0"),
        (lambda a: a.write(LEVEL, 1, priority=10, source="op", hold=math.nan), "finite"),
        (lambda a: a.write(LEVEL, 1, priority=10, source="op", hold=math.inf), "finite"),
        (lambda a: a.write(LEVEL, 1, priority=10, source="", hold=1), "source"),
        (lambda a: a.relinquish("nope", priority=10, source="op"), "unknown point 'nope'"),
        (lambda a: a.relinquish(LEVEL, priority=17, source="op"), "got 17"),
    ],
)
async def test_arbiter__rejects_misuse(
    rig: Rig, call: Callable[[Arbiter], object], message: str
) -> None:
    """A bad command would land in the array (a NaN hold would never lapse) or crash the agent."""
    with pytest.raises(ArbiterError, match=message):
        await call(rig.arbiter)  # type: ignore[misc]
    assert all(rig.arbiter.entries(p) == {} for p in rig.arbiter.points)
    assert rig.device.calls == []
    with pytest.raises(ArbiterError, match="unknown point"):
        rig.arbiter.effective("lamp-99/level")
    with pytest.raises(ArbiterError, match="unknown point"):
        rig.arbiter.entries("lamp-99/level")


def test_priority__named_levels() -> None:
    """Rules, technician and central post would write at levels other than DESIGN.md's."""
    assert (PRIORITY_MIN, PRIORITY_MAX) == (1, 16)
    assert [int(p) for p in Priority] == [1, 3, 8, 10, 14, 16]


# ------------------------------------------------------------------ holds and expiry


async def test_arbiter__expiry_falls_back_at_exact_instant(running: Rig) -> None:
    """A lapsed command would leave the street dark past its hold, or end early."""
    a, dev, clock = running.arbiter, running.device, running.clock
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=30)
    await clock.advance(30 - 0.001)
    assert a.effective(LEVEL) == 0
    assert dev.writes(LEVEL) == [(T0, 0)]
    await clock.advance(0.002)
    await until(lambda: len(dev.calls) == 2)
    assert dev.writes(LEVEL) == [(T0, 0), (T0 + 30, 100)]
    assert a.entries(LEVEL) == {}
    await clock.advance(3600)
    assert len(dev.calls) == 2


async def test_arbiter__deadline_itself_counts_as_expired(rig: Rig) -> None:
    """The hold boundary would be off by one instant between status and device."""
    a = rig.arbiter
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=30)
    await rig.clock.advance(30)
    assert a.effective(LEVEL) == 100


async def test_arbiter__expired_entry_ignored_before_loop_removes_it(rig: Rig) -> None:
    """A command would outlive its hold whenever the expiry loop is late or stopped."""
    a = rig.arbiter
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=10)
    await a.write(LEVEL, 70, priority=Priority.SCHEDULE, source="sched", hold=None)
    await rig.clock.advance(11)  # no run() task here
    assert a.effective(LEVEL) == 70
    assert list(a.entries(LEVEL)) == [14]
    # The next operation writes the device to the fallen-back value.
    out = await a.write(OTHER, 5, priority=Priority.CENTRAL, source="op", hold=10)
    assert out.changed
    out = await a.relinquish(LEVEL, priority=Priority.CENTRAL, source="op")
    assert out == Outcome(point=LEVEL, effective=70, changed=True)


async def test_arbiter__expiry_reveals_lower_entry(running: Rig) -> None:
    """The schedule would not take over again when the central post's command lapses."""
    a, dev, clock = running.arbiter, running.device, running.clock
    await a.write(LEVEL, 80, priority=Priority.SCHEDULE, source="sched", hold=None)
    await a.write(LEVEL, 20, priority=Priority.CENTRAL, source="op", hold=60)
    await a.write(LEVEL, 0, priority=Priority.TECHNICIAN, source="tech", hold=20)
    await clock.advance(100)
    await until(lambda: len(dev.calls) == 5)
    assert dev.writes(LEVEL) == [(T0, 80), (T0, 20), (T0, 0), (T0 + 20, 20), (T0 + 60, 80)]


async def test_arbiter__shorter_hold_wakes_sleeping_loop(running: Rig) -> None:
    """A short command written while the loop sleeps towards a later expiry would overstay."""
    a, dev, clock = running.arbiter, running.device, running.clock
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=600)
    await clock.advance(1)
    await until(lambda: clock.sleepers == 1)
    await a.write(OTHER, 0, priority=Priority.CENTRAL, source="op", hold=5)
    await clock.advance(10)
    await until(lambda: len(dev.calls) == 3)
    assert dev.writes(OTHER) == [(T0 + 1, 0), (T0 + 6, 100)]
    await clock.advance(600)
    await until(lambda: len(dev.calls) == 4)
    assert dev.writes(LEVEL) == [(T0, 0), (T0 + 600, 100)]


async def test_arbiter__hold_none_lasts_until_relinquished(running: Rig) -> None:
    """A fail-safe rule's write would lapse while its condition still holds."""
    a, clock = running.arbiter, running.clock
    await a.write(LEVEL, 100, priority=Priority.FAILSAFE, source="rule:mains", hold=None)
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=None)
    await clock.advance(10 * 365 * 86400)
    assert a.effective(LEVEL) == 100
    await a.relinquish(LEVEL, priority=Priority.FAILSAFE, source="rule:mains")
    assert a.effective(LEVEL) == 0


async def test_arbiter__hold_zero_clears_the_level(rig: Rig) -> None:
    """A zero hold would take effect (and stick) or leave the previous entry at that level."""
    a = rig.arbiter
    await a.write(LEVEL, 30, priority=Priority.CENTRAL, source="op", hold=60)
    out = await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=0)
    assert out == Outcome(point=LEVEL, effective=100, changed=True)
    assert a.entries(LEVEL) == {}
    assert rig.device.writes() == [(T0, 30), (T0, 100)]


@pytest.mark.parametrize("jump", [-1_700_000_000.0, +86400.0 * 365])
async def test_arbiter__wall_clock_jump_does_not_change_hold(running: Rig, jump: float) -> None:
    """An RTC reset to 1970 or an NTP step would end a hold early or make it last for years."""
    a, dev, clock = running.arbiter, running.device, running.clock
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=300)
    await clock.advance(100)
    clock.set_wall(clock.wall() + jump)
    await clock.advance(199.5)
    assert a.effective(LEVEL) == 0
    assert len(dev.calls) == 1
    await clock.advance(1)
    await until(lambda: len(dev.calls) == 2)
    assert dev.writes(LEVEL) == [(T0, 0), (T0 + 300, 100)]


# ------------------------------------------------------------------ device failures


async def test_arbiter__failed_device_write_raises_and_keeps_entry(rig: Rig) -> None:
    """A refused write would be acked as done, or the next change would not reach the device."""
    a, dev = rig.arbiter, rig.device
    dev.failing.add(LEVEL)
    with pytest.raises(DeviceWriteError) as caught:
        await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=60)
    assert caught.value.point == LEVEL
    assert isinstance(caught.value.cause, TimeoutError)
    assert a.effective(LEVEL) == 0  # the intent is kept
    assert list(a.entries(LEVEL)) == [10]
    dev.failing.clear()
    out = await a.write(LEVEL, 40, priority=Priority.TECHNICIAN, source="tech", hold=60)
    assert out == Outcome(point=LEVEL, effective=40, changed=True)
    assert dev.state[LEVEL] == 40
    assert a.statistics()["device_errors"] == 1
    assert a.statistics()["failing"] == []


async def test_arbiter__unknown_device_state_is_rewritten(rig: Rig) -> None:
    """After a failed write the lamp may hold either value; falling back must write anyway."""
    a, dev = rig.arbiter, rig.device
    dev.failing.add(LEVEL)
    with pytest.raises(DeviceWriteError):
        await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=60)
    dev.failing.clear()
    out = await a.relinquish(LEVEL, priority=Priority.CENTRAL, source="op")
    assert out == Outcome(point=LEVEL, effective=100, changed=True)
    assert dev.writes(LEVEL) == [(T0, 0), (T0, 100)]


async def test_arbiter__loop_retries_failed_device_and_logs_once(
    running: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A lamp unreachable when its hold lapsed would stay at the command's value for good."""
    a, dev, clock = running.arbiter, running.device, running.clock
    caplog.set_level(logging.INFO, logger="agent.arbiter")
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=10)
    dev.failing.add(LEVEL)
    await clock.advance(10 + 2 * RETRY_INTERVAL)
    await until(lambda: len(dev.calls) == 4)
    dev.failing.clear()
    await clock.advance(RETRY_INTERVAL)
    await until(lambda: len(dev.calls) == 5)
    step = RETRY_INTERVAL
    assert dev.writes(LEVEL) == [
        (T0, 0),
        (T0 + 10, 100),
        (T0 + 10 + step, 100),
        (T0 + 10 + 2 * step, 100),
        (T0 + 10 + 3 * step, 100),
    ]
    assert dev.state[LEVEL] == 100
    await clock.advance(10 * RETRY_INTERVAL)
    assert len(dev.calls) == 5
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert any("succeeded again" in r.getMessage() for r in caplog.records)
    assert a.statistics()["device_errors"] == 3


# ------------------------------------------------------------------ concurrency


async def test_arbiter__concurrent_writes_are_serialised(rig: Rig) -> None:
    """The expiry loop and a command writing one lamp at once could leave it at a stale value."""
    a, dev = rig.arbiter, rig.device
    dev.gate = asyncio.Event()
    ops = [
        asyncio.create_task(a.write(LEVEL, 10, priority=Priority.CENTRAL, source="a", hold=60)),
        asyncio.create_task(a.write(LEVEL, 20, priority=Priority.TECHNICIAN, source="b", hold=60)),
        asyncio.create_task(a.write(LEVEL, 30, priority=Priority.SCHEDULE, source="c", hold=None)),
        asyncio.create_task(a.relinquish(LEVEL, priority=Priority.TECHNICIAN, source="b")),
    ]
    await until(lambda: len(dev.calls) == 1)
    dev.gate.set()
    outcomes = await asyncio.gather(*ops)
    assert dev.overlaps == 0
    assert a.effective(LEVEL) == 10
    assert dev.state[LEVEL] == 10
    assert outcomes[-1].effective == 10
    assert dev.writes(LEVEL)[-1] == (T0, 10)


async def test_arbiter__cancelled_caller_does_not_cut_device_write(running: Rig) -> None:
    """A shutdown during a command would leave the lamp half-written."""
    a, dev = running.arbiter, running.device
    dev.gate = asyncio.Event()
    caller = asyncio.create_task(
        a.write(LEVEL, 0, priority=Priority.FAILSAFE, source="rule:x", hold=None)
    )
    await until(lambda: len(dev.calls) == 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert LEVEL in dev.busy  # still writing
    dev.gate.set()
    await until(lambda: dev.state.get(LEVEL) == 0)
    out = await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=5)
    assert out.changed is False


async def test_arbiter__run_cancel_waits_for_write_in_flight(rig: Rig) -> None:
    """Stopping the agent would abandon a fail-safe write halfway."""
    a, dev = rig.arbiter, rig.device
    loop = asyncio.create_task(a.run())
    dev.gate = asyncio.Event()
    writer = asyncio.create_task(
        a.write(LEVEL, 0, priority=Priority.FAILSAFE, source="rule:x", hold=None)
    )
    await until(lambda: len(dev.calls) == 1)
    loop.cancel()
    await settle()
    assert not loop.done()  # still waiting for the device
    assert not writer.done()
    dev.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert dev.state[LEVEL] == 0
    assert (await writer).changed


# ------------------------------------------------------------------ start-up


async def test_arbiter__sync_writes_every_point_once() -> None:
    """After a restart a lamp would keep a dead operator's hold instead of its default."""
    clock = FakeClock()
    dev = Device(clock)
    dev.failing.add(OTHER)
    a = Arbiter(clock=clock, defaults=DEFAULTS, write_device=dev)
    errors = await a.sync()
    assert sorted((p, v) for _, p, v in dev.calls) == sorted(DEFAULTS.items())
    assert errors[LEVEL] is None
    assert errors[FAN] is None
    error = errors[OTHER]
    assert isinstance(error, DeviceWriteError)
    assert error.point == OTHER
    # sync writes even what the device is believed to hold already.
    dev.failing.clear()
    dev.calls.clear()
    assert await a.sync() == dict.fromkeys(DEFAULTS)
    assert len(dev.calls) == len(DEFAULTS)


async def test_arbiter__statistics(running: Rig) -> None:
    """The console and the birth message would show wrong arbiter counters."""
    a, clock = running.arbiter, running.clock
    await a.write(LEVEL, 0, priority=Priority.CENTRAL, source="op", hold=5)
    await a.write(FAN, True, priority=Priority.FAILSAFE, source="rule", hold=None)
    assert a.statistics() == {
        "points": 3,
        "entries": 2,
        "device_writes": 5,  # 3 at start-up (sync) and 2 now
        "device_errors": 0,
        "expired": 0,
        "failing": [],
    }
    await clock.advance(5)
    await until(lambda: a.statistics()["device_writes"] == 6)
    assert a.statistics()["entries"] == 1
    assert a.statistics()["expired"] == 1


# ------------------------------------------------------------------ reference model

_POINTS = [LEVEL, FAN]
_values = st.integers(0, 3)
_holds = st.none() | st.integers(0, 40).map(lambda q: q / 4)  # exact binary fractions
_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.sampled_from(_POINTS),
            st.integers(PRIORITY_MIN, PRIORITY_MAX),
            _values,
            _holds,
        ),
        st.tuples(st.just("relinquish"), st.sampled_from(_POINTS), st.integers(PRIORITY_MIN, 16)),
        st.tuples(st.just("advance"), st.integers(0, 24).map(lambda q: q / 2)),
    ),
    max_size=30,
)


async def _check_against_model(ops: list[tuple[object, ...]]) -> None:
    clock = FakeClock()
    dev = Device(clock)
    defaults: dict[str, Value] = {LEVEL: 9, FAN: 8}
    a = Arbiter(clock=clock, defaults=defaults, write_device=dev)
    model: dict[str, dict[int, tuple[Value, float | None]]] = {p: {} for p in _POINTS}

    def expected(point: str) -> Value:
        now = clock.monotonic()
        live = [(p, v) for p, (v, exp) in model[point].items() if exp is None or exp > now]
        return min(live)[1] if live else defaults[point]

    await a.sync()
    loop = asyncio.create_task(a.run())
    try:
        for op in ops:
            match op:
                case ("write", str(point), int(prio), value, hold):
                    assert isinstance(hold, float | None)
                    before = dev.state[point]
                    expires = None if hold is None else clock.monotonic() + hold
                    model[point][prio] = (value, expires)  # type: ignore[assignment]
                    out = await a.write(point, value, priority=prio, source="s", hold=hold)  # type: ignore[arg-type]
                    assert out.effective == expected(point)
                    assert out.changed == (before != out.effective)
                case ("relinquish", str(point), int(prio)):
                    before = dev.state[point]
                    model[point].pop(prio, None)
                    out = await a.relinquish(point, priority=prio, source="s")
                    assert out.effective == expected(point)
                    assert out.changed == (before != out.effective)
                case ("advance", float(seconds)):
                    await clock.advance(seconds)
            for point in _POINTS:
                assert a.effective(point) == expected(point)
            await until(lambda: all(dev.state[p] == a.effective(p) for p in _POINTS))
        # The device was written only at changes: never the same value twice in a row.
        for point in _POINTS:
            values = [v for _, v in dev.writes(point)]
            assert all(x != y for x, y in itertools.pairwise(values))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_arbiter__matches_reference_model(ops: list[tuple[object, ...]]) -> None:
    """Some sequence of commands, relinquishes and lapses would leave a lamp at the wrong value."""
    asyncio.run(_check_against_model(ops))


def test_outcome_and_entry__validate() -> None:
    """A malformed entry (no source, endless expiry) would hide who holds a lamp, or how long."""
    with pytest.raises(ArbiterError, match="source"):
        Entry(value=1, source="", expires=None)
    with pytest.raises(ArbiterError, match="finite"):
        Entry(value=1, source="op", expires=math.nan)
    assert Entry(value=1, source="op", expires=T0).expired(T0)
    assert not Entry(value=1, source="op", expires=None).expired(1e18)

"""The Arbiter: a BACnet-style priority array for every writable point.

DESIGN.md, "Arbiter": each writable point (``lamp-03/level``) has 16 levels, 1 the
highest. Fail-safe rules, the technician, the central post and the local schedule
each write at their own level, every write with an expiry; the *effective* value is
the entry at the highest level that has not expired, else the point's relinquish
default. Drivers receive only changes of the effective value.

Time is the injected :class:`~agent.clock.Clock`'s monotonic clock only (DESIGN.md,
"Time is injected"): a wall-clock jump (RTC reset to 1970, NTP step) neither
shortens nor lengthens a hold.

Fail safe (DESIGN.md, "Principles"; STYLE.md, "Asyncio"): an expired entry is ignored
at once, even before :meth:`Arbiter.run` removes it; device writes run in a task of
their own, shielded from the caller's cancellation, so a shutdown never leaves a
device half-written; a device that refused a write is retried every
:data:`RETRY_INTERVAL` until it takes the effective value.

After a restart the arrays are empty (nothing is persisted on purpose): :meth:`sync`
returns every device to its default, so an operator's hold never outlives the agent.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from agent.clock import Clock
from agent.points import Value

log = logging.getLogger(__name__)

# The priority array's bounds: 16 levels, 1 the highest (BACnet, ASHRAE 135 §19.2;
# DESIGN.md, "Arbiter").
PRIORITY_MIN = 1
PRIORITY_MAX = 16

# Seconds between retries of a device write that failed. The bus scheduler already
# retries within a transaction (DESIGN.md, "Drivers"); this slower outer retry brings a
# device that was unreachable back to the effective value once it answers again. Short
# against command holds (minutes to hours), long enough not to load an RS-485 line on
# which the poller already probes the silent device with backoff.
RETRY_INTERVAL = 30.0


class Priority(IntEnum):
    """The named levels of the priority array (DESIGN.md, "Arbiter")."""

    LIFE_SAFETY = 1  # 1–2: life safety
    FAILSAFE = 3  # 3–5: local fail-safe rules
    TECHNICIAN = 8  # technician on site (console)
    CENTRAL = 10  # central post commands (PROTOCOL.md: "prio" default 10)
    SCHEDULE = 14  # local schedule (e.g. astronomical lighting)
    LOWEST = 16


class ArbiterError(Exception):
    """The caller misused the API: unknown point, priority outside 1..16, bad hold or source."""


class DeviceWriteError(Exception):
    """The device refused a write or did not answer; raised by the ``write_device`` callback.

    Drivers chain the underlying error (``raise DeviceWriteError(point, "no reply") from
    exc``); it is then available as :attr:`cause`.
    """

    def __init__(self, point: str, reason: str) -> None:
        super().__init__(f"{point}: {reason}")
        self.point = point
        self.reason = reason

    @property
    def cause(self) -> BaseException | None:
        """The driver's underlying error, if it chained one."""
        return self.__cause__


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One level of a point's array: who wrote what, and until when (monotonic, None = held)."""

    value: Value
    source: str
    expires: float | None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ArbiterError(f"an entry needs a source, got {self.source!r}")
        if self.expires is not None and not math.isfinite(self.expires):
            raise ArbiterError(f"an entry's expiry must be finite, got {self.expires!r}")

    def expired(self, now: float) -> bool:
        """Whether the entry has lapsed at monotonic time ``now`` (the deadline itself counts)."""
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """A point's effective value after an operation, and whether the device was written."""

    point: str
    effective: Value
    changed: bool


WriteDevice = Callable[[str, Value], Awaitable[None]]
"""Writes one point's value to its device; raises :class:`DeviceWriteError` on failure."""


class _Unknown:
    """What the device holds when the arbiter cannot tell (before :meth:`Arbiter.sync`,
    after a failed or interrupted write): any effective value differs from it."""

    def __repr__(self) -> str:
        return "<unknown>"


_UNKNOWN = _Unknown()


def _same(a: Value | _Unknown, b: Value) -> bool:
    # Same type too: True == 1 == 1.0 in Python, but a device told 1 instead of True
    # costs one idempotent write, whereas a missed write is a wrong lamp.
    return type(a) is type(b) and a == b


class Arbiter:
    """Priority arrays for the writable points, and the device writes that follow them.

    ``defaults`` names every writable point with its relinquish default.
    ``write_device(point, value)`` writes one value to its device and raises
    :class:`DeviceWriteError` when the device refuses or stays silent; it is
    bounded in time by the driver. Call :meth:`sync` once at start-up, then run
    :meth:`run` for as long as the agent lives.
    """

    def __init__(
        self, *, clock: Clock, defaults: Mapping[str, Value], write_device: WriteDevice
    ) -> None:
        self._clock = clock
        self._defaults = dict(defaults)
        self._write_device = write_device
        self._arrays: dict[str, dict[int, Entry]] = {p: {} for p in self._defaults}
        self._locks = {p: asyncio.Lock() for p in self._defaults}
        # What each device was last successfully set to, as far as we know.
        self._device: dict[str, Value | _Unknown] = dict.fromkeys(self._defaults, _UNKNOWN)
        self._failing: set[str] = set()  # points whose last device write failed (logged once)
        self._retry_at: dict[str, float] = {}  # monotonic time of each failed point's retry
        self._inflight: set[asyncio.Task[Outcome]] = set()
        self._wake = asyncio.Event()
        self._scheduled: float | None = None  # the deadline run() sleeps towards
        self._device_writes = 0
        self._writes: dict[str, int] = {}  # successful device writes, per point
        self._device_errors = 0
        self._expired = 0

    # ---------------------------------------------------------------- queries

    @property
    def points(self) -> list[str]:
        """The writable points, in configuration order."""
        return list(self._defaults)

    def effective(self, point: str) -> Value:
        """The value at the highest unexpired level, else the point's relinquish default."""
        array = self._array(point)
        now = self._clock.monotonic()
        for priority in sorted(array):
            entry = array[priority]
            if not entry.expired(now):
                return entry.value
        return self._defaults[point]

    def entries(self, point: str) -> dict[int, Entry]:
        """The unexpired entries of ``point`` by priority, highest first (console, status)."""
        array = self._array(point)
        now = self._clock.monotonic()
        return {p: array[p] for p in sorted(array) if not array[p].expired(now)}

    def statistics(self) -> dict[str, object]:
        """Counters for the console and the birth message."""
        now = self._clock.monotonic()
        return {
            "points": len(self._defaults),
            "entries": sum(
                not e.expired(now) for array in self._arrays.values() for e in array.values()
            ),
            "device_writes": self._device_writes,
            "device_errors": self._device_errors,
            "expired": self._expired,
            "failing": sorted(self._failing),
        }

    # ---------------------------------------------------------------- commands

    async def write(
        self, point: str, value: Value, *, priority: int, source: str, hold: float | None
    ) -> Outcome:
        """Set ``point``'s entry at ``priority`` for ``hold`` seconds (None: until relinquished).

        The entry replaces whatever that level held. ``hold=0`` records an entry that has
        already lapsed: it never becomes effective, so its only effect is to clear the
        level (like :meth:`relinquish`). If the effective value changes, the device is
        written before this returns. A :class:`DeviceWriteError` from the device is
        re-raised, and the entry stays recorded: the device's state is unknown (the
        write may have landed and only the reply been lost), and keeping the intent lets
        the retry, or the next change, bring the device to it; the hold still bounds it,
        and the caller may relinquish it.
        """
        self._check(point, priority)
        if not isinstance(source, str) or not source:
            raise ArbiterError(f"{point}: a write needs a source, got {source!r}")
        expires: float | None = None
        if hold is not None:
            if not math.isfinite(hold) or hold < 0:
                raise ArbiterError(f"{point}: hold must be ≥ 0 seconds and finite, got {hold!r}")
            expires = self._clock.monotonic() + hold
        # Plain int keys: entries() is shown by the console and sent in status messages.
        self._arrays[point][int(priority)] = Entry(value=value, source=source, expires=expires)
        log.debug("%s: %r at priority %d by %s, hold %s", point, value, priority, source, hold)
        self._reschedule()
        return await self._apply_shielded(point)

    async def relinquish(self, point: str, *, priority: int, source: str) -> Outcome:
        """Remove ``point``'s entry at ``priority``; an absent entry is not an error.

        Whoever may write a level may relinquish it (the source is only logged):
        authorisation is the Downlink's job. Device writes and errors as in :meth:`write`.
        """
        self._check(point, priority)
        removed = self._arrays[point].pop(int(priority), None)
        if removed is not None:
            log.debug("%s: priority %d relinquished by %s", point, priority, source)
            self._reschedule()
        return await self._apply_shielded(point)

    async def sync(self) -> dict[str, DeviceWriteError | None]:
        """Write every point's effective value once, whatever the device is believed to hold.

        At start-up the arrays are empty, so this returns every device to its default.
        Returns each point's error (None when written); failed points are retried by
        :meth:`run`.
        """
        tasks = {point: self._spawn(point, force=True) for point in self._defaults}
        if tasks:
            await asyncio.wait(tasks.values())
        errors: dict[str, DeviceWriteError | None] = {}
        for point, task in tasks.items():
            exc = task.exception()
            if exc is not None and not isinstance(exc, DeviceWriteError):
                raise exc
            errors[point] = exc
        return errors

    async def run(self) -> None:
        """Forever: at each expiry (or retry) bring the devices to their effective values.

        Sleeps on the Clock until the next expiry or retry, or until a write or
        relinquish changes that deadline. A :class:`DeviceWriteError` is logged once per
        failing point and retried every :data:`RETRY_INTERVAL`. When cancelled
        (shutdown), device writes still in flight are awaited before the cancellation
        propagates, so a fail-safe write is never cut short by the agent stopping.
        """
        try:
            while True:
                # Clear before computing the deadline: a write from here on sets it again.
                self._wake.clear()
                due = self._due(self._clock.monotonic())
                if due:
                    await self._apply_all(due)
                    continue
                self._scheduled = self._next_deadline()
                await self._sleep_until(self._scheduled)
        except asyncio.CancelledError:
            if self._inflight:
                await asyncio.wait(set(self._inflight))
            raise
        finally:
            self._scheduled = None

    # ---------------------------------------------------------------- internals

    def _array(self, point: str) -> dict[int, Entry]:
        try:
            return self._arrays[point]
        except KeyError:
            raise ArbiterError(f"unknown point {point!r} (not a writable point)") from None

    def _check(self, point: str, priority: int) -> None:
        self._array(point)
        if (
            not isinstance(priority, int)
            or isinstance(priority, bool)
            or not PRIORITY_MIN <= priority <= PRIORITY_MAX
        ):
            raise ArbiterError(
                f"{point}: priority must be {PRIORITY_MIN}..{PRIORITY_MAX}, got {priority!r}"
            )

    def _next_deadline(self) -> float | None:
        deadlines = [
            e.expires
            for array in self._arrays.values()
            for e in array.values()
            if e.expires is not None
        ]
        deadlines.extend(self._retry_at.values())
        return min(deadlines, default=None)

    def _reschedule(self) -> None:
        # Wake run() only when its next deadline moved; it recomputes everything.
        if self._next_deadline() != self._scheduled:
            self._wake.set()

    def _due(self, now: float) -> list[str]:
        """Drop the lapsed entries and due retries; return the points to bring up to date."""
        due: list[str] = []
        for point, array in self._arrays.items():
            lapsed = [p for p, e in array.items() if e.expired(now)]
            for priority in lapsed:
                entry = array.pop(priority)
                self._expired += 1
                log.info(
                    "%s: hold of %r at priority %d by %s lapsed",
                    point,
                    entry.value,
                    priority,
                    entry.source,
                )
            retry = point in self._retry_at and self._retry_at[point] <= now
            if retry:
                del self._retry_at[point]
            if lapsed or retry:
                due.append(point)
        return due

    async def _apply_all(self, points: list[str]) -> None:
        tasks = [self._spawn(point) for point in points]
        # asyncio.wait does not cancel the tasks if run() is cancelled meanwhile.
        await asyncio.wait(tasks)
        for task in tasks:
            exc = task.exception()
            if exc is not None and not isinstance(exc, DeviceWriteError):
                raise exc  # a bug in a driver: let the supervisor see it

    async def _sleep_until(self, deadline: float | None) -> None:
        waker = asyncio.create_task(self._wake.wait(), name="arbiter.wake")
        waiters: set[asyncio.Task[object]] = {waker}
        if deadline is not None:
            delay = deadline - self._clock.monotonic()
            waiters.add(asyncio.create_task(self._clock.sleep(delay), name="arbiter.sleep"))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.wait(waiters)

    async def _apply_shielded(self, point: str) -> Outcome:
        # If the caller is cancelled, the device write carries on in its own task.
        return await asyncio.shield(self._spawn(point))

    def _spawn(self, point: str, *, force: bool = False) -> asyncio.Task[Outcome]:
        # Device writes of this point so far: an apply that finds the device already
        # at the value because another one (e.g. run() handling a lapse) got the lock
        # first still reports the change its own operation caused.
        seen = self._writes.get(point, 0)
        task = asyncio.create_task(
            self._apply(point, force=force, seen=seen), name=f"arbiter.apply[{point}]"
        )
        self._inflight.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[Outcome]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            # Retrieved here so that a caller cancelled while the write failed does not
            # produce "exception never retrieved"; the failure itself is logged by _apply.
            task.exception()

    async def _apply(self, point: str, *, force: bool, seen: int = 0) -> Outcome:
        """Bring the device to the effective value, computed under the point's lock so
        that concurrent writers leave the device at the latest one."""
        async with self._locks[point]:
            value = self.effective(point)
            if not force and _same(self._device[point], value):
                changed = self._writes.get(point, 0) != seen
                return Outcome(point=point, effective=value, changed=changed)
            try:
                await self._write_device(point, value)
            except DeviceWriteError as exc:
                self._device[point] = _UNKNOWN
                self._failed(point, exc)
                raise
            except BaseException:
                # Cancelled mid-write (the loop is closing) or a driver bug: the device
                # may or may not hold the value, so the next change writes it again.
                self._device[point] = _UNKNOWN
                raise
            self._device[point] = value
            self._device_writes += 1
            self._writes[point] = self._writes.get(point, 0) + 1
            self._retry_at.pop(point, None)
            if point in self._failing:
                self._failing.discard(point)
                log.info("%s: device write succeeded again (%r)", point, value)
            return Outcome(point=point, effective=value, changed=True)

    def _failed(self, point: str, exc: DeviceWriteError) -> None:
        self._device_errors += 1
        if point not in self._failing:
            self._failing.add(point)
            log.warning(
                "%s: device write failed (%s); retrying every %.0f s", point, exc, RETRY_INTERVAL
            )
        self._retry_at[point] = self._clock.monotonic() + RETRY_INTERVAL
        self._reschedule()

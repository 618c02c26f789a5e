"""Decides what telemetry to send, commits it, and seals it into signed batches.

A point is reported when its value moves beyond its deadband or its quality
changes, and at least once per heartbeat period even when nothing moves, so the
central post can tell "steady" from "silent" (DESIGN.md, "Reporter").

Two clocks drive the batching. Every ``batch_interval`` (default 1 s) the new
readings are group-committed to the outbox's staging table: that bounds what a
power cut can cost. At most every ``telemetry_delay`` (default 10 s), or as soon
as ``batch_max`` readings wait, the staged readings are sealed into signed
Telemetry messages: a message's envelope and header (~130 bytes) are then
shared by many readings instead of the few of one second (bench/outbox.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import cbor2

from agent.clock import Clock
from agent.messages import MessageFactory, Reading, Topic, topic
from agent.outbox import MsgClass, Outbox, Pending
from agent.points import Points, Quality, Sample

log = logging.getLogger(__name__)


# Float slack for comparing clock differences with configured intervals.
_EPSILON = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportPolicy:
    """When to report one point: ``deadband`` in engineering units, ``heartbeat`` in seconds."""

    deadband: float
    heartbeat: float


@dataclass(slots=True)
class _Reported:
    sample: Sample
    at: float  # monotonic time of the report


def _moved(new: Sample, old: Sample, deadband: float) -> bool:
    if new.quality != old.quality:
        return True
    a, b = new.value, old.value
    if (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return abs(a - b) > deadband if deadband > 0 else a != b
    return a != b


class Reporter:
    """Observes the Points table; stages readings and seals them into Telemetry messages."""

    def __init__(
        self,
        *,
        points: Points,
        policies: Mapping[str, ReportPolicy],
        outbox: Outbox,
        factory: MessageFactory,
        clock: Clock,
        batch_interval: float,
        batch_max: int,
        telemetry_delay: float | None = None,
    ) -> None:
        self._policies = policies
        self._outbox = outbox
        self._factory = factory
        self._clock = clock
        self._interval = batch_interval
        self._delay = batch_interval if telemetry_delay is None else telemetry_delay
        self._batch_max = batch_max
        self._topic = topic(factory.gw, Topic.TELE)
        self._reported: dict[str, _Reported] = {}
        self._pending: list[Reading] = []
        self._points = points
        # When the oldest staged reading of this process was committed (monotonic);
        # readings staged by an earlier boot are sealed at the first tick.
        self._staged_since: float | None = float("-inf") if outbox.staged_rows else None
        self.readings_sent = 0
        self.batches_sent = 0
        self.cycles = 0  # run() iterations: the watchdog's sign of life
        self._unsubscribe = points.subscribe(self._observe)

    def _observe(self, sample: Sample, previous: Sample | None) -> None:
        policy = self._policies.get(sample.name)
        if policy is None:
            return
        last = self._reported.get(sample.name)
        if last is None or _moved(sample, last.sample, policy.deadband):
            self._report(sample)

    def _report(self, sample: Sample) -> None:
        self._reported[sample.name] = _Reported(sample, self._clock.monotonic())
        self._pending.append(
            Reading(point=sample.name, t_ms=sample.t_ms, value=sample.value, quality=sample.quality)
        )

    def heartbeat(self) -> None:
        """Re-report every point whose heartbeat period has passed without a report."""
        now = self._clock.monotonic()
        for name, last in list(self._reported.items()):
            if now - last.at >= self._policies[name].heartbeat:
                current = self._points.get(name)
                if current is not None:
                    self._report(current)

    def commit(self) -> int:
        """Group-commit the new readings to the outbox; returns how many."""
        if not self._pending:
            return 0
        readings, self._pending = self._pending, []
        body = cbor2.dumps([[r.point, r.t_ms, r.value, int(r.quality)] for r in readings])
        self._outbox.stage(body, readings=len(readings))
        if self._staged_since is None:
            self._staged_since = self._clock.monotonic()
        self.readings_sent += len(readings)
        return len(readings)

    def due(self) -> bool:
        """Whether staged readings (or an unreported loss) should be sealed now."""
        if self._outbox.staged_readings >= self._batch_max:
            return True
        if self._staged_since is not None:
            # Staged at the end of its first interval: seal when the next tick would be late.
            waited = self._clock.monotonic() - self._staged_since + self._interval
            return waited >= self._delay - _EPSILON
        return self._outbox.lost_pending > 0

    def seal(self) -> int:
        """Seal everything staged into signed Telemetry messages; returns how many."""
        self._staged_since = None
        if self._outbox.staged_rows:
            seqs = self._outbox.seal(self._build)
        elif self._outbox.lost_pending:
            seqs = self._outbox.append_many(self._build([]))
        else:
            return 0
        self.batches_sent += len(seqs)
        return len(seqs)

    def _build(self, bodies: list[bytes]) -> list[Pending]:
        readings = [
            Reading(point=p, t_ms=t, value=v, quality=Quality(q))
            for body in bodies
            for p, t, v, q in cbor2.loads(body)
        ]
        chunks = [
            readings[i : i + self._batch_max] for i in range(0, len(readings), self._batch_max)
        ] or [[]]
        lost = self._outbox.lost_pending
        items = []
        for i, chunk in enumerate(chunks):
            chunk_lost = lost if i == 0 else 0
            items.append(
                Pending(
                    cls=MsgClass.TELEMETRY,
                    topic=self._topic,
                    build=functools.partial(
                        self._factory.telemetry, readings=chunk, lost=chunk_lost
                    ),
                    readings=len(chunk),
                    lost=chunk_lost,
                )
            )
        return items

    def flush(self) -> int:
        """Commit and seal everything now (shutdown, tests); returns the readings committed."""
        committed = self.commit()
        self.seal()
        return committed

    async def run(self) -> None:
        """Every batch interval: heartbeats, one group commit, and a seal when due."""
        while True:
            await self._clock.sleep(self._interval)
            self.cycles += 1
            self.heartbeat()
            self.commit()
            if self.due():
                self.seal()

    def close(self) -> None:
        self._unsubscribe()

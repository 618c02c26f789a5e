"""Decides what telemetry to send and groups it into signed batches.

A point is reported when its value moves beyond its deadband or its quality
changes, and at least once per heartbeat period even when nothing moves, so the
central post can tell "steady" from "silent". Readings are grouped into one
Telemetry message per batch interval (DESIGN.md, "Reporter"), split when a batch
would exceed ``batch_max`` readings; the batch is the outbox's group commit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from agent.clock import Clock
from agent.messages import MessageFactory, Reading, Topic, topic
from agent.outbox import MsgClass, Outbox, Pending
from agent.points import Points, Sample

log = logging.getLogger(__name__)


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
    """Observes the Points table and appends Telemetry batches to the outbox."""

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
    ) -> None:
        self._policies = policies
        self._outbox = outbox
        self._factory = factory
        self._clock = clock
        self._interval = batch_interval
        self._batch_max = batch_max
        self._topic = topic(factory.gw, Topic.TELE)
        self._reported: dict[str, _Reported] = {}
        self._pending: list[Reading] = []
        self._points = points
        self.readings_sent = 0
        self.batches_sent = 0
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

    def flush(self) -> int:
        """Append what is pending as Telemetry batches; returns the readings written."""
        lost = self._outbox.lost_pending
        if not self._pending and not lost:
            return 0
        readings, self._pending = self._pending, []
        chunks = [
            readings[i : i + self._batch_max] for i in range(0, len(readings), self._batch_max)
        ] or [[]]
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
        self._outbox.append_many(items)
        self.readings_sent += len(readings)
        self.batches_sent += len(items)
        return len(readings)

    async def run(self) -> None:
        """Every batch interval: heartbeats, then one group commit."""
        while True:
            await self._clock.sleep(self._interval)
            self.heartbeat()
            self.flush()

    def close(self) -> None:
        self._unsubscribe()

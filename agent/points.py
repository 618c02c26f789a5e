"""The Points table: the latest value of every measured or commandable point.

A point is named ``device/point`` (``lamp-03/level``). Pollers write it;
everything else (reporter, rules, console) reads it or subscribes to changes.
Observers are called synchronously, in subscription order, and must not block:
they copy what they need and return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum

Value = float | int | bool | str | None


class Quality(IntEnum):
    """How far a value can be trusted; the numbers are the wire codes (PROTOCOL.md, Quality)."""

    GOOD = 0
    STALE = 1
    COMM_FAIL = 2
    OUT_OF_RANGE = 3
    OVERRIDDEN = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One point's value with its quality and the wall time (ms) it was measured."""

    name: str
    value: Value
    quality: Quality
    t_ms: int


Observer = Callable[[Sample, Sample | None], None]


class Points:
    """The live table. ``update`` stores a sample and notifies observers with (new, previous)."""

    def __init__(self) -> None:
        self._samples: dict[str, Sample] = {}
        self._observers: list[Observer] = []

    def update(self, sample: Sample) -> None:
        previous = self._samples.get(sample.name)
        self._samples[sample.name] = sample
        for observer in self._observers:
            observer(sample, previous)

    def get(self, name: str) -> Sample | None:
        return self._samples.get(name)

    def __iter__(self) -> Iterator[Sample]:
        return iter(list(self._samples.values()))

    def __len__(self) -> int:
        return len(self._samples)

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` on every update; returns a function that unsubscribes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

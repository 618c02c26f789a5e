"""Effective wall time for security decisions: never below the latest time known to be true.

A gateway's wall clock can go back: an RTC reset after a power cut, a bad NTP step. Replay and
expiry decisions taken on such a clock would re-accept a recorded command whose id was already
forgotten. `TimeFloor` keeps a *floor*: the highest wall time the gateway has good reason to
believe was already reached, persisted in ``DATA/time.floor`` (a file of its own, so that it
survives an outbox moved aside as corrupt). The effective time is

    max(wall clock, floor + monotonic time elapsed since the floor was last raised)

The floor rises only on evidence (`witness`): a command signed by the central post, whose
``iat`` is the central post's own clock, accepted while the gateway's clock agreed with its
validity window. Within one run the monotonic clock carries it forward; after a restart it
starts again from the persisted value.

(The clock-trust module of the fail-safe work may later become the source of ``witness``
calls; this class is the one place that knows the floor.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from agent.clock import Clock, wall_ms
from agent.durable import write_atomically

log = logging.getLogger(__name__)

TIME_FLOOR_FILE: Final = "time.floor"


class TimeFloor:
    """The effective wall time (ms) and its persisted floor; one instance per agent."""

    def __init__(self, clock: Clock, data_dir: Path) -> None:
        self._clock = clock
        self._path = data_dir / TIME_FLOOR_FILE
        self.floor_ms = _read(self._path)  # persisted: what the next run starts from
        # In memory: a time reached, and the monotonic reading then (carried forward).
        self._base_ms = self.floor_ms
        self._base_mono = clock.monotonic()

    def _carried(self) -> int:
        if not self._base_ms:
            return 0
        return self._base_ms + int((self._clock.monotonic() - self._base_mono) * 1000)

    def now_ms(self) -> int:
        """Wall time in ms, but never below the floor carried forward by the monotonic clock."""
        return max(wall_ms(self._clock), self._carried())

    def witness(self, t_ms: int) -> None:
        """``t_ms`` is known to have been reached: raise the floor (durably) if it is higher.

        If the file cannot be written the floor rises in memory only (logged): the persisted
        `floor_ms`, which callers purge by, stays where it was, which is the safe side.
        """
        if t_ms <= self.floor_ms:
            return
        self._base_ms, self._base_mono = max(t_ms, self._carried()), self._clock.monotonic()
        try:
            _write(self._path, t_ms)
        except OSError as exc:
            log.warning("cannot persist the time floor in %s: %s", self._path, exc)
            return
        self.floor_ms = t_ms


def _read(path: Path) -> int:
    try:
        text = path.read_bytes()[:32].strip()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("%s unreadable (%s): effective time follows the wall clock", path, exc)
        return 0
    if not text.isdigit():
        log.warning("%s holds no time: effective time follows the wall clock", path)
        return 0
    return int(text)


def _write(path: Path, t_ms: int) -> None:
    write_atomically(path, f"{t_ms}\n".encode())

"""Whether the wall clock can be trusted, and the best wall time when it cannot.

DESIGN.md, "Time is injected": a cabinet's RTC comes back at 1970 after a long power cut,
and NTP may be unreachable for days. The lighting schedule must still switch at dusk,
and the central post must know which timestamps to doubt (PROTOCOL.md, gw-header
``clk``). The wall clock is trusted when:

1. it is not before :data:`BUILD_TIME` (this agent did not exist then) nor before the
   last trusted time this gateway persisted;
2. it has not jumped against the monotonic clock by more than ``max_jump`` since the
   last check (a new reading that disagrees is believed only once it has run steadily
   for :data:`STABLE_AFTER`, or when NTP says it is synchronised);
3. with ``require_ntp``, the kernel says NTP keeps it synchronised (``adjtimex``).

When it is not, :meth:`ClockTrust.now` carries the last trusted time forward by the
monotonic clock: *holdover* if that time was trusted during this run, *untrusted* if it
comes from the file persisted by an earlier run (the outage between the two runs is
unknown) or if there is none at all (then ``now()`` is None).

Self-contained on purpose: one file, one small JSON state file, an API of
:meth:`check`, :attr:`quality`, :meth:`now` and :meth:`close`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import logging
import math
import os
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Final

from agent.clock import Clock

log = logging.getLogger(__name__)

# No wall time before this agent was built is true. Bumped with releases; a margin of a
# few months before the actual build date costs nothing.
BUILD_TIME: Final = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
STATE_FILE: Final = "clock.json"
# How often the last trusted time is written down: the schedule after a power cut is off
# by at most this plus the outage; every 15 minutes is ~100 small writes a day (flash).
PERSIST_EVERY: Final = 900.0
# A stepped wall clock that then runs steadily this long is believed (an operator set it;
# NTP stepped it without the kernel status being read).
STABLE_AFTER: Final = 3600.0
# Two readings of wall - monotonic closer than this are the same clock (slewing, jitter).
STEADY: Final = 2.0
# adjtimex(2): clock state returned; TIME_ERROR means "not synchronised".
_TIME_ERROR: Final = 5


class ClockQuality(IntEnum):
    """PROTOCOL.md, ClockQuality."""

    TRUSTED = 0
    HOLDOVER = 1
    UNTRUSTED = 2


def kernel_ntp_synced() -> bool | None:
    """Whether the kernel says the clock is NTP-synchronised (None: cannot tell)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0: read
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


class ClockTrust:
    """Tracks the trust of ``clock``'s wall time; ``path`` is the persisted state file."""

    def __init__(
        self,
        clock: Clock,
        *,
        path: Path | None,
        max_jump: float,
        build_time: float = BUILD_TIME,
        require_ntp: bool = False,
        ntp_synced: Callable[[], bool | None] | None = None,
    ) -> None:
        self._clock = clock
        self._path = path
        self._max_jump = max_jump
        self._build_time = build_time
        self._require_ntp = require_ntp
        self._ntp = ntp_synced or kernel_ntp_synced
        self.persisted = self._load()
        self._start_mono = clock.monotonic()
        # The last trusted (wall, monotonic) pair of this run.
        self._anchor: tuple[float, float] | None = None
        self._candidate: tuple[float, float] | None = None  # (offset, since) of a new reading
        self._last_saved: float | None = None
        self.quality = ClockQuality.UNTRUSTED
        self.reason = "not checked yet"
        self.check()

    # ---------------------------------------------------------------- queries

    def now(self) -> float | None:
        """The best wall time: the clock when trusted, else the last trusted time carried
        forward by the monotonic clock, else None."""
        mono = self._clock.monotonic()
        if self.quality is ClockQuality.TRUSTED:
            return self._clock.wall()
        if self._anchor is not None:
            wall, at = self._anchor
            return wall + (mono - at)
        if self.persisted is not None:
            return self.persisted + (mono - self._start_mono)
        return None

    # ---------------------------------------------------------------- checking

    def check(self) -> ClockQuality:
        """Look at the clocks once (every second from :meth:`run`)."""
        wall, mono = self._clock.wall(), self._clock.monotonic()
        trusted, reason = self._verdict(wall, mono)
        if trusted:
            self._anchor = (wall, mono)
            self._candidate = None
            quality = ClockQuality.TRUSTED
            if self._last_saved is None or mono - self._last_saved >= PERSIST_EVERY:
                self._save(wall)
                self._last_saved = mono
        else:
            quality = ClockQuality.HOLDOVER if self._anchor else ClockQuality.UNTRUSTED
        changed = quality is not self.quality
        if changed or (quality is not ClockQuality.TRUSTED and reason != self.reason):
            if quality is ClockQuality.TRUSTED:
                log.info("wall clock trusted (%s)", reason)
            else:
                log.warning("wall clock not trusted: %s (%s)", reason, quality.name.lower())
        self.quality, self.reason = quality, reason
        return quality

    def _verdict(self, wall: float, mono: float) -> tuple[bool, str]:
        if not math.isfinite(wall) or wall < self._build_time:
            return False, "before the agent's build date"
        if self.persisted is not None and wall < self.persisted - self._max_jump:
            return False, "before the last trusted time"
        ntp = self._ntp() if self._require_ntp else None
        if self._require_ntp and ntp is not True:
            return False, "NTP not synchronised"
        if ntp is True:
            return True, "NTP synchronised"
        if self._anchor is None:
            return True, "plausible at start"
        anchor_wall, anchor_mono = self._anchor
        drift = wall - (anchor_wall + (mono - anchor_mono))
        if abs(drift) <= self._max_jump:
            return True, "steady"
        # A step: believe it only after it has run steadily for a while.
        offset = wall - mono
        if self._candidate is None or abs(self._candidate[0] - offset) > STEADY:
            self._candidate = (offset, mono)
        if mono - self._candidate[1] >= STABLE_AFTER:
            return True, f"stepped by {drift:+.0f} s and steady since"
        return False, f"jumped by {drift:+.0f} s against the monotonic clock"

    async def run(self) -> None:
        while True:
            self.check()
            await self._clock.sleep(1.0)

    # ---------------------------------------------------------------- persistence

    def _load(self) -> float | None:
        if self._path is None:
            return None
        try:
            value = json.loads(self._path.read_text())["trusted_wall"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if isinstance(value, int | float) and math.isfinite(value) and value >= self._build_time:
            return float(value)
        return None

    def _save(self, wall: float) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"trusted_wall": wall}))
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot persist the last trusted time: %s", exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
        else:
            self.persisted = max(self.persisted or 0.0, wall)

    def close(self) -> None:
        """Persist the last trusted time (clean stop)."""
        if self.quality is ClockQuality.TRUSTED:
            self._save(self._clock.wall())
        elif self._anchor is not None:
            now = self.now()
            if now is not None:
                self._save(now)

    def statistics(self) -> dict[str, object]:
        return {"quality": self.quality.name.lower(), "reason": self.reason}

"""The dead-man: autonomous mode when the central post stays unreachable (DESIGN.md,
"Fail safe, locally"; PROTOCOL.md, ``link.autonomous`` and Birth ``mode``).

Nothing has to *do* anything for the street to fall back to its local behaviour: every
central command has a bounded hold that lapses on the monotonic clock, after which the
schedule (level 14) and the fail-safe rules (3–5) govern. This module only makes the
situation visible: after ``after`` seconds without the uplink the gateway says it is
*autonomous* (an event when it enters, one with the duration when the link returns, and
``mode`` in the Birth), and rules may test the uplink state themselves.

The mode survives a restart through the outbox's active-alarm table (code
``link.autonomous``), so a reboot while isolated neither repeats the entry nor loses
the exit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Final

from agent.clock import Clock

log = logging.getLogger(__name__)

CODE: Final = "link.autonomous"
TICK: Final = 1.0  # seconds between two looks at the uplink


class Mode(StrEnum):
    """PROTOCOL.md, Birth ``mode``."""

    NORMAL = "normal"
    AUTONOMOUS = "autonomous"


Report = Callable[[Mode, float], None]
"""Called on each change with the new mode and, on leaving, the seconds spent autonomous
(on entering: the seconds the uplink had been down)."""


class Autonomy:
    """Watches the uplink; enters autonomous mode after ``after`` seconds without it."""

    def __init__(
        self,
        *,
        clock: Clock,
        online: Callable[[], bool],
        after: float,
        report: Report,
        resumed: bool = False,
    ) -> None:
        self._clock = clock
        self._online = online
        self.after = after
        self._report = report
        now = clock.monotonic()
        # The agent starts without a link: the outage is counted from the start.
        self._offline_since: float | None = now
        self.mode = Mode.AUTONOMOUS if resumed else Mode.NORMAL
        self._entered = now
        self.ticks = 0

    def check(self) -> Mode:
        """Look at the uplink once; report and return the mode."""
        now = self._clock.monotonic()
        if self._online():
            self._offline_since = None
            if self.mode is Mode.AUTONOMOUS:
                self.mode = Mode.NORMAL
                duration = now - self._entered
                log.warning("central post reachable again after %.0f s of autonomous mode",
                            duration)  # fmt: skip
                self._report(Mode.NORMAL, duration)
            return self.mode
        if self._offline_since is None:
            self._offline_since = now
        offline = now - self._offline_since
        if self.mode is Mode.NORMAL and offline >= self.after:
            self.mode = Mode.AUTONOMOUS
            self._entered = now
            log.warning("central post unreachable for %.0f s: autonomous mode", offline)
            self._report(Mode.AUTONOMOUS, offline)
        return self.mode

    async def run(self) -> None:
        while True:
            self.check()
            self.ticks += 1
            await self._clock.sleep(TICK)

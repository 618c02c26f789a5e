"""The cameras' side of the agent: snapshots on demand and ``camera.motion`` events.

A snapshot is asked for by a signed command (``action snapshot``, ``args.device``
a camera or a pattern, default every camera), by a fail-safe rule's
``device_action`` (``device = "cam-*"`` for every camera, ``"{src}"`` for the
rule's own device: the default ``camera-tamper`` rule takes a still of the camera
that was covered) or by the console. Tamper and loss are alarms raised by the
default rules (``camera-tamper``, ``camera-offline``) from the camera points;
motion, which a busy street makes frequent, is an Event here, rate-limited per
camera (:data:`MOTION_MIN_INTERVAL`) with the suppressed count carried in the
next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Final

from agent.clock import Clock
from agent.commands import Command
from agent.downlink import ActionRefused
from agent.events import Events
from agent.messages import Severity
from agent.outbox import MsgClass
from agent.points import Quality, Sample
from agent.rules import DeviceAction
from agent.stills import Stills, Stored
from drivers.device import DriverError

log = logging.getLogger(__name__)

MOTION_CODE: Final = "camera.motion"
# At most one motion Event per camera per this many seconds: a street with traffic
# would otherwise fill the link with them. The point itself still goes in telemetry.
MOTION_MIN_INTERVAL: Final = 10.0
SNAPSHOT: Final = "snapshot"
# Longest one still may take, however many requests it needs (profiles, URI, the digest
# challenge and the GET, each with its own timeout): a signed command's Ack waits for it,
# and the downlink handles commands one at a time.
SNAPSHOT_DEADLINE: Final = 15.0


class Cameras:
    """Snapshots and motion events for the configured cameras (``names``)."""

    def __init__(
        self, *, names: tuple[str, ...], stills: Stills, events: Events, clock: Clock
    ) -> None:
        self.names = names
        self._stills = stills
        self._events = events
        self._clock = clock
        self._last_motion: dict[str, float] = {}
        self._suppressed: dict[str, int] = dict.fromkeys(names, 0)
        self._busy: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name in names}

    def select(self, pattern: str) -> list[str]:
        """The cameras a device name or pattern designates."""
        return [name for name in self.names if fnmatchcase(name, pattern)]

    async def snapshot(self, pattern: str, *, reason: str) -> dict[str, Stored | DriverError]:
        """A still from every camera ``pattern`` matches, concurrently; each result or error."""
        targets = self.select(pattern)

        async def one(name: str) -> Stored | DriverError:
            # One fetch at a time per camera: a rule and a command at the same instant
            # would otherwise ask a small camera for two full-size stills at once.
            async with self._busy[name]:
                try:
                    async with asyncio.timeout(SNAPSHOT_DEADLINE):
                        return await self._stills.take(name, reason=reason)
                except TimeoutError:
                    return DriverError(
                        f"{name}: no still within {SNAPSHOT_DEADLINE:g} s", timeout=True
                    )
                except DriverError as exc:
                    return exc

        results = await asyncio.gather(*(one(name) for name in targets))
        return dict(zip(targets, results, strict=True))

    async def command(self, cmd: Command) -> Any:
        """``action snapshot`` from the central post; the Ack value lists each still."""
        pattern = cmd.args.get("device", "*")
        if not isinstance(pattern, str) or not self.select(pattern):
            raise ActionRefused(
                f"snapshot: device {pattern!r} is not a camera ({', '.join(self.names) or 'none'})"
            )
        results = await self.snapshot(pattern, reason="command")
        stored = {n: r.summary() for n, r in results.items() if isinstance(r, Stored)}
        if not stored:
            raise DriverError(
                "; ".join(r.reason for r in results.values() if not isinstance(r, Stored))
            )
        failed = {n: r.reason for n, r in results.items() if isinstance(r, DriverError)}
        return {"stills": stored, **({"failed": failed} if failed else {})}

    async def rule_action(self, action: DeviceAction, src: str) -> None:
        """A rule's ``device_action``: ``device`` may be a pattern, or ``{src}``."""
        if action.name != SNAPSHOT:
            log.warning(
                "rule asks %s for %r: cameras only take snapshots", action.device, action.name
            )
            return
        pattern = action.device.replace("{src}", src) if src else action.device
        results = await self.snapshot(pattern, reason=f"rule {action.device} ({src or 'cabinet'})")
        if not results:
            log.warning("rule asks %s for a snapshot: no such camera", pattern)

    def observe(self, sample: Sample, previous: Sample | None) -> None:
        """Points observer: a camera's motion rising edge becomes a ``camera.motion`` Event."""
        device, _, point = sample.name.partition("/")
        if point != "motion" or device not in self._suppressed:
            return
        if sample.quality is not Quality.GOOD or sample.value is not True:
            return
        if previous is not None and previous.value is True and previous.quality is Quality.GOOD:
            return
        now = self._clock.monotonic()
        last = self._last_motion.get(device)
        if last is not None and now - last < MOTION_MIN_INTERVAL:
            self._suppressed[device] += 1
            return
        self._last_motion[device] = now
        suppressed, self._suppressed[device] = self._suppressed[device], 0
        self._events.append(
            MsgClass.EVENT,
            code=MOTION_CODE,
            severity=Severity.NOTICE,
            state="info",
            src=device,
            msg=f"{device}: motion",
            data={"motion": True, "suppressed": suppressed},
        )

    def statistics(self) -> dict[str, Any]:
        return {"cameras": list(self.names), "stills": self._stills.statistics()}


def actions(cameras: Cameras) -> Mapping[str, Any]:
    """The command actions cameras add (for the verifier and the downlink)."""
    return {SNAPSHOT: cameras.command}

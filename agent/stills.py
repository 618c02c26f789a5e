"""Camera stills: a snapshot becomes Blob parts in the outbox and a ``camera.snapshot`` Event.

PROTOCOL.md, Blob: the image travels in parts of at most 48 KiB, each a data
message with its own ``seq`` on the ``blob`` topic, all carrying the image's
SHA-256, content type and capture time; the Event that says why the still was
taken names the SHA-256 (``data.sha256``). The parts are stored as their own
outbox class, the first evicted, with a cap on the number of stills kept: a
burst of snapshots never pushes out an alarm.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.events import Events
from agent.messages import BLOB_PART_MAX, MessageFactory, Severity, Topic, topic
from agent.outbox import MsgClass, Outbox, Pending, StillSlot
from drivers.device import DriverError

log = logging.getLogger(__name__)

SNAPSHOT_CODE = "camera.snapshot"


def split(data: bytes, size: int = BLOB_PART_MAX) -> list[bytes]:
    """``data`` in consecutive parts of at most ``size`` bytes (none empty)."""
    if not data:
        raise ValueError("an empty object has no Blob parts")
    if not 1 <= size <= BLOB_PART_MAX:
        raise ValueError(f"part size must be in 1..{BLOB_PART_MAX}")
    return [data[i : i + size] for i in range(0, len(data), size)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """What a driver's ``snapshot`` action gives back (drivers.onvif.camera.Still fits)."""

    data: bytes
    ctype: str
    t_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Stored:
    """A still in the outbox: its digest, the seqs of its parts and of its Event."""

    sha256: bytes
    size: int
    parts: list[int]
    event: int

    def summary(self) -> dict[str, Any]:
        """The Ack ``value`` of a ``snapshot`` command."""
        return {"sha256": self.sha256, "bytes": self.size, "parts": len(self.parts)}


Snapshot = Callable[[str], Awaitable[object]]  # device name → the driver's snapshot result


class Stills:
    """Takes stills through a driver and stores them for the uplink."""

    def __init__(
        self,
        *,
        gw: str,
        factory: MessageFactory,
        outbox: Outbox,
        events: Events,
        keep: int,
        snapshot: Snapshot,
    ) -> None:
        self._topic = topic(gw, Topic.BLOB)
        self._factory = factory
        self._outbox = outbox
        self._events = events
        self.keep = keep
        self._snapshot = snapshot
        self.taken = 0
        self.failed = 0

    async def take(
        self, device: str, *, reason: str, data: Mapping[str, Any] | None = None
    ) -> Stored:
        """Fetch a still from ``device`` and store it; :class:`DriverError` if the camera fails.

        ``reason`` (``command``, ``tamper``, ``rule door-intrusion``…) goes in the Event.
        """
        try:
            result = await self._snapshot(device)
            image = _image(result)
        except DriverError as exc:
            self.failed += 1
            log.warning("%s: snapshot (%s) failed: %s", device, reason, exc.reason)
            raise
        return self.store(device, image, reason=reason, data=data)

    def store(
        self, device: str, image: Image, *, reason: str, data: Mapping[str, Any] | None = None
    ) -> Stored:
        """Append the Blob parts (one transaction) and then the ``camera.snapshot`` Event."""
        sha256 = hashlib.sha256(image.data).digest()
        chunks = split(image.data)
        items = [
            Pending(
                cls=MsgClass.STILL,
                topic=self._topic,
                build=self._part_builder(image, sha256, i, len(chunks), chunk),
            )
            for i, chunk in enumerate(chunks)
        ]
        seqs = self._outbox.append_many(items, still=StillSlot(sha256=sha256, keep=self.keep))
        event = self._events.append(
            MsgClass.EVENT,
            code=SNAPSHOT_CODE,
            severity=Severity.INFO,
            state="info",
            src=device,
            msg=f"{device}: still {sha256.hex()[:16]} ({len(image.data)} bytes, {reason})",
            data={
                "sha256": sha256,
                "ctype": image.ctype,
                "bytes": len(image.data),
                "parts": len(chunks),
                "t": image.t_ms,
                "reason": reason,
                **(data or {}),
            },
        )
        self.taken += 1
        log.info(
            "%s: still %s stored (%d bytes, %s)", device, sha256.hex()[:16], len(image.data), reason
        )
        return Stored(sha256=sha256, size=len(image.data), parts=seqs, event=event)

    def _part_builder(
        self, image: Image, sha256: bytes, part: int, parts: int, chunk: bytes
    ) -> Callable[[int], bytes]:
        def build(seq: int) -> bytes:
            return self._factory.blob(
                seq,
                t_ms=image.t_ms,
                sha256=sha256,
                ctype=image.ctype,
                part=part,
                parts=parts,
                data=chunk,
            )

        return build

    def statistics(self) -> dict[str, int]:
        return {
            "taken": self.taken,
            "failed": self.failed,
            "stored": self._outbox.stills(),
            "keep": self.keep,
        }


def _image(result: object) -> Image:
    data = getattr(result, "data", None)
    ctype = getattr(result, "ctype", None)
    t_ms = getattr(result, "t_ms", None)
    if (
        not isinstance(data, bytes)
        or not data
        or not isinstance(ctype, str)
        or not isinstance(t_ms, int)
    ):
        raise DriverError(f"snapshot gave {type(result).__name__}, not an image")
    return Image(data=data, ctype=ctype, t_ms=t_ms)

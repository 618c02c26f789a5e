"""Reassembly of gateways' Blob parts into whole objects (PROTOCOL.md, Blob), sans-IO.

Parts of one object share ``(gw, sha256)`` and arrive in any order, possibly
more than once, and some may never arrive (evicted by a full gateway outbox).
Memory is bounded whatever gateways send: at most :data:`MAX_PARTIAL` objects
in progress and :data:`MAX_PARTIAL_BYTES` held for them (the oldest partial
object is dropped to make room), an object may announce at most
:data:`MAX_PARTS` parts, and an object not complete :data:`EXPIRY_S` after its
first part is dropped. A completed object is checked against its SHA-256
before it is handed out; the last :data:`MAX_DONE` digests are remembered so
late duplicates are not reassembled again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["Assembler", "Blob", "BlobError"]

PART_MAX: Final = 49152  # PROTOCOL.md: "data" => bstr .size (1..49152)
# Largest object accepted: 16 MiB (a camera still is well under 1 MiB).
MAX_PARTS: Final = 16 * 1024 * 1024 // PART_MAX + 1
MAX_PARTIAL: Final = 64  # objects in progress, all gateways together
MAX_PARTIAL_BYTES: Final = 64 * 1024 * 1024
EXPIRY_S: Final = 600.0  # a gateway's outbox may hold parts through an outage: be patient
MAX_DONE: Final = 1024


class BlobError(Exception):
    """A part that contradicts its object (announced differently, or digest mismatch)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Blob:
    gw: str
    sha256: bytes
    ctype: str
    t_ms: int
    data: bytes = field(repr=False)


@dataclass(slots=True)
class _Partial:
    ctype: str
    t_ms: int
    parts: int
    first_seen: float
    received: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Assembler:
    """Feed checked Blob bodies with :meth:`add`; a :class:`Blob` comes out when complete."""

    def __init__(self) -> None:
        self._partial: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()
        self._done: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self.held_bytes = 0
        self.dropped = 0  # partial objects dropped (expired or pushed out)

    def add(self, gw: str, body: dict[str, Any], now: float) -> Blob | None:
        """One part; the whole object when this part completes it, else None."""
        self.expire(now)
        key = (gw, body["sha256"])
        if key in self._done:
            return None
        parts, part, data = body["parts"], body["part"], body["data"]
        if not 1 <= parts <= MAX_PARTS:
            raise BlobError(f"parts {parts} is not in 1..{MAX_PARTS}")
        if part >= parts:
            raise BlobError(f"part {part} of {parts}")
        partial = self._partial.get(key)
        if partial is None:
            partial = _Partial(ctype=body["ctype"], t_ms=body["t"], parts=parts, first_seen=now)
            self._partial[key] = partial
        elif (partial.parts, partial.ctype, partial.t_ms) != (parts, body["ctype"], body["t"]):
            raise BlobError("part disagrees with earlier parts on parts, ctype or t")
        if part in partial.received:
            return None
        partial.received[part] = data
        partial.size += len(data)
        self.held_bytes += len(data)
        if len(partial.received) == partial.parts:
            del self._partial[key]
            self.held_bytes -= partial.size
            whole = b"".join(partial.received[i] for i in range(partial.parts))
            if hashlib.sha256(whole).digest() != key[1]:
                raise BlobError("reassembled object does not match its sha256")
            self._done[key] = None
            while len(self._done) > MAX_DONE:
                self._done.popitem(last=False)
            return Blob(gw=gw, sha256=key[1], ctype=partial.ctype, t_ms=partial.t_ms, data=whole)
        self._bound(keep=key)
        return None

    def expire(self, now: float) -> None:
        """Drop partial objects older than :data:`EXPIRY_S`."""
        while self._partial:
            key, oldest = next(iter(self._partial.items()))
            if now - oldest.first_seen < EXPIRY_S:
                break
            self._drop(key)

    def _bound(self, keep: tuple[str, bytes]) -> None:
        while len(self._partial) > MAX_PARTIAL or self.held_bytes > MAX_PARTIAL_BYTES:
            key = next(k for k in self._partial if k != keep) if len(self._partial) > 1 else keep
            self._drop(key)
            if key == keep:
                break

    def _drop(self, key: tuple[str, bytes]) -> None:
        partial = self._partial.pop(key)
        self.held_bytes -= partial.size
        self.dropped += 1

    @property
    def in_progress(self) -> int:
        return len(self._partial)

"""Input nobody could authenticate: counted, never stored one by one (PROTOCOL.md,
"Unauthenticated input"), sans-IO.

Anyone on the broker can publish on a gateway's ``cmd`` and ``trust`` topics. A message whose
signature did not verify against a trusted key gets no Ack and no audit record of its own: a
`Tally` counts it per reason, remembers the first and last time and a few payload hashes, and
the downlink turns each interval's tally into one ``cmd.unauthenticated`` (or
``trust.unauthenticated``) audit Event. What a flood costs the flash is thus one small record per
interval, whatever its rate, and it cannot evict real records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

# How many payload hashes a summary carries: enough to match a capture, too few to matter.
MAX_SAMPLES: Final = 4
# A sample is the first bytes of SHA-256 over the whole MQTT payload. A hash rather than the
# command id the payload claims: the sender chose that id, it proves nothing.
SAMPLE_SIZE: Final = 8
# Distinct reasons kept per interval; the reasons are the verifier's own codes, a handful.
MAX_REASONS: Final = 16


@dataclass(slots=True)
class Tally:
    """What arrived unauthenticated since the last summary."""

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    first_ms: int = 0
    last_ms: int = 0
    samples: list[bytes] = field(default_factory=list)

    def add(self, reason: str, payload: bytes, now_ms: int, sample: bytes | None = None) -> bool:
        """Count one message; True if it is the first since the last summary (worth a log line).

        The sample kept is ``sample`` if given (e.g. the id of an authenticated command), else a
        hash of ``payload``. Constant work per message, except the hash of the first
        `MAX_SAMPLES` payloads.
        """
        first = self.count == 0
        if first:
            self.first_ms = now_ms
        self.count += 1
        self.last_ms = now_ms
        if reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        else:
            self.reasons["other"] = self.reasons.get("other", 0) + 1
        if len(self.samples) < MAX_SAMPLES:
            if sample is None:
                sample = hashlib.sha256(payload).digest()[:SAMPLE_SIZE]
            if sample not in self.samples:
                self.samples.append(sample)
        return first

    def take(self) -> dict[str, Any] | None:
        """The summary's ``data`` (PROTOCOL.md layout), or None if nothing arrived; resets."""
        if not self.count:
            return None
        data: dict[str, Any] = {
            "count": self.count,
            "reasons": dict(self.reasons),
            "first": self.first_ms,
            "last": self.last_ms,
        }
        if self.samples:
            data["samples"] = list(self.samples)
        self.count = 0
        self.reasons.clear()
        self.samples.clear()
        return data

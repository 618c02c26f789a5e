"""The bodies a gateway sends (PROTOCOL.md, "Bodies"), built as CBOR and signed.

A :class:`MessageFactory` knows the gateway header (``v``, ``gw``, ``boot``)
and the signer; callers give it the ``seq`` the outbox assigned. Keeping the
shapes here, and only here, makes the wire contract reviewable in one file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import cbor2

from agent.points import Quality, Value
from agent.security.cose import Signer

PROTOCOL_VERSION = 1
# PROTOCOL.md, Blob "data" => bstr .size (1..49152): one part carries at most 48 KiB.
BLOB_PART_MAX = 49152
SHA256_BYTES = 32  # Blob "sha256" => bstr .size 32
# PROTOCOL.md, Birth "reboot" and "mode".
REBOOT_CAUSES = ("clean", "crash", "watchdog", "power", "unknown")
MODES = ("normal", "autonomous")
TOPIC_ROOT = "armoire/v1"


class Topic(StrEnum):
    """Topic suffixes of PROTOCOL.md ("Transport")."""

    STATE = "state"
    TELE = "tele"
    EVT = "evt"
    ACK = "ack"
    BLOB = "blob"
    CMD = "cmd"
    TRUST = "trust"


def topic(gw: str, kind: Topic) -> str:
    return f"{TOPIC_ROOT}/{gw}/{kind.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """One entry of a Telemetry batch before encoding."""

    point: str
    t_ms: int
    value: Value
    quality: Quality


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxState:
    """The Birth's ``outbox``: what the gateway still holds when it connects."""

    depth: int  # stored records, not yet acknowledged by the broker
    inflight: int  # of which published and awaiting their PUBACK
    oldest_ms: int | None  # when the oldest of them was stored (epoch ms)


class Severity(int, Enum):
    """Syslog severities used in Events (PROTOCOL.md: 0 emergency … 7 debug)."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


_ABSENT: Any = object()  # marks an optional field that is not sent (None is a value)


def _wire_value(value: Value) -> Value:
    # An integral float travels as an int: 2 bytes instead of 9 for "100.0".
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class MessageFactory:
    """Builds and signs the gateway's messages for one boot."""

    def __init__(
        self,
        *,
        gw: str,
        boot: int,
        signer: Signer,
        clock_quality: Callable[[], int] | None = None,
    ) -> None:
        self.gw = gw
        self.boot = boot
        self._signer = signer
        # PROTOCOL.md, gw-header "clk": 0 trusted (then absent), 1 holdover, 2 untrusted.
        self._clock_quality = clock_quality

    def _header(self, seq: int) -> dict[str, Any]:
        header: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "gw": self.gw,
            "boot": self.boot,
            "seq": seq,
        }
        clk = self._clock_quality() if self._clock_quality is not None else 0
        if clk:
            header["clk"] = int(clk)
        return header

    def _seal(self, body: Mapping[str, Any]) -> bytes:
        return self._signer.sign(cbor2.dumps(body))

    def telemetry(self, seq: int, *, readings: Sequence[Reading], lost: int = 0) -> bytes:
        """A signed Telemetry batch; ``t0`` is the earliest reading's time."""
        t0 = min((r.t_ms for r in readings), default=0)
        body = self._header(seq)
        body["t0"] = t0
        body["r"] = [[r.point, r.t_ms - t0, _wire_value(r.value), int(r.quality)] for r in readings]
        if lost:
            body["lost"] = lost
        return self._seal(body)

    def event(
        self,
        seq: int,
        *,
        t_ms: int,
        kind: str,
        code: str,
        severity: Severity,
        state: str,
        src: str | None = None,
        msg: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A signed Event (alarm, event or audit record)."""
        if kind not in ("alarm", "event", "audit"):
            raise ValueError(f"event kind {kind!r} is not alarm, event or audit")
        if state not in ("raised", "cleared", "info"):
            raise ValueError(f"event state {state!r} is not raised, cleared or info")
        body = self._header(seq)
        body.update(t=t_ms, kind=kind, code=code, sev=int(severity), state=state)
        if src is not None:
            body["src"] = src
        if msg is not None:
            body["msg"] = msg
        if data is not None:
            body["data"] = dict(data)
        return self._seal(body)

    def ack(
        self,
        seq: int,
        *,
        t_ms: int,
        cmd: bytes,
        status: str,
        reason: str | None = None,
        value: Any = _ABSENT,
        msg: str | None = None,
    ) -> bytes:
        """A signed Ack: the result of one command (PROTOCOL.md, Ack); ``msg`` is the
        human-readable detail of a refusal or failure."""
        if status not in ("done", "rejected", "failed"):
            raise ValueError(f"ack status {status!r} is not done, rejected or failed")
        body = self._header(seq)
        body.update(t=t_ms, cmd=cmd, status=status)
        if reason is not None:
            body["reason"] = reason
        if msg is not None:
            body["msg"] = msg
        if value is not _ABSENT:
            body["value"] = _wire_value(value) if not isinstance(value, dict) else value
        return self._seal(body)

    def blob(
        self,
        seq: int,
        *,
        t_ms: int,
        sha256: bytes,
        ctype: str,
        part: int,
        parts: int,
        data: bytes,
    ) -> bytes:
        """One signed Blob part (PROTOCOL.md, Blob): a data message with its own seq."""
        if len(sha256) != SHA256_BYTES:
            raise ValueError(f"sha256 is {len(sha256)} bytes, not {SHA256_BYTES}")
        if not 1 <= len(data) <= BLOB_PART_MAX:
            raise ValueError(f"a Blob part carries 1..{BLOB_PART_MAX} bytes, not {len(data)}")
        if not 0 <= part < parts:
            raise ValueError(f"part {part} is not in 0..{parts - 1}")
        body = self._header(seq)
        body.update(t=t_ms, sha256=sha256, ctype=ctype, part=part, parts=parts, data=data)
        return self._seal(body)

    def birth(
        self,
        last_seq: int,
        *,
        t_ms: int,
        agent_version: str,
        config_digest: bytes,
        points: Mapping[str, tuple[str, bool]],
        mode: str | None = None,
        reboot: str | None = None,
        outbox: OutboxState | None = None,
    ) -> bytes:
        """The retained Birth; ``points`` maps each point to (unit, writable). ``mode``
        (normal / autonomous) and ``reboot`` (how the previous run ended) when known."""
        body = self._header(last_seq)
        body.update(
            t=t_ms,
            online=True,
            agent=agent_version,
            config=config_digest,
            points={name: {"unit": unit, "w": w} for name, (unit, w) in points.items()},
        )
        if reboot is not None:
            if reboot not in REBOOT_CAUSES:
                raise ValueError(f"reboot {reboot!r} is not one of {', '.join(REBOOT_CAUSES)}")
            body["reboot"] = reboot
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
            body["mode"] = mode
        if outbox is not None:
            body["outbox"] = {
                "depth": outbox.depth,
                "inflight": outbox.inflight,
                "oldest": outbox.oldest_ms,
            }
        return self._seal(body)

    def death(self, last_seq: int, *, t_ms: int) -> bytes:
        """The Death the broker sends as our Will; signed at connect time."""
        body = self._header(last_seq)
        body.update(t=t_ms, online=False)
        return self._seal(body)

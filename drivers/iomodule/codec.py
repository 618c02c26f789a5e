"""The cabinet I/O module's serial link, agent side, sans-IO (README, "Cabinet I/O module").

No I/O and no clock here: :class:`FrameDecoder` takes bytes in and hands frames (or
the news that bytes were thrown away) out; :func:`encode` turns a message into bytes.
The transport (:mod:`drivers.iomodule.device`) owns the serial port, timeouts and
retries. The firmware has its own implementation of the same format
(``board/iomodule/iolink.py``, MicroPython); golden frames in
``tests/fixtures/iomodule/golden.txt`` pin both to one wire format (STYLE.md, "The
simulator is an independent peer").

Frame::

    A5 5A | type | seq | len | payload (len bytes) | crc16 (big-endian)

``crc16`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over type, seq, len and the
payload. Each side numbers its own frames 0..255, wrapping. A corrupt frame (bad CRC,
length over :data:`MAX_PAYLOAD`, unknown type) costs the bytes up to the next sync
pattern and is reported as :class:`Discarded`; nothing else is lost, because every
module frame carries the module's whole state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeAlias

SYNC: Final = b"\xa5\x5a"
HEADER: Final = 5  # sync (2), type, seq, len
TRAILER: Final = 2  # crc16
# The largest message (STATUS) has 6 payload bytes; 32 leaves room for later types while
# keeping a module's receive buffer tiny (a few hundred bytes of RAM on the board).
MAX_PAYLOAD: Final = 32
MAX_FRAME: Final = HEADER + MAX_PAYLOAD + TRAILER
# STATUS temperature when the module has no (working) sensor: int16's minimum.
NO_TEMPERATURE: Final = -0x8000


class LocalProtocolError(ValueError):
    """We asked for something the protocol cannot say (a bug in the caller)."""


class RemoteProtocolError(Exception):
    """The module sent something unusable."""


class MsgType(enum.IntEnum):
    """Message types; agent→module below 0x80, module→agent from 0x80."""

    PING = 0x01  # keepalive; answered by STATUS
    SET_RELAYS = 0x02  # payload: mask, values; answered by STATUS
    STATUS = 0x81  # reply to the agent frame whose seq is in ``ack``
    CHANGE = 0x82  # unsolicited: an input changed (debounced)
    NAK = 0x83  # the module threw away a frame (reason)


class Input(enum.IntFlag):
    """STATUS ``inputs`` bits: the contacts, already as meanings (polarity is the module's)."""

    DOOR_OPEN = 0x01
    MAINS_PRESENT = 0x02
    UPS_ON_BATTERY = 0x04
    SPD_TRIPPED = 0x08


class Relay(enum.IntFlag):
    """Relay bits in SET_RELAYS and STATUS. Energised lighting relay = lamps fed."""

    LIGHTING = 0x01
    AUX = 0x02


class Flag(enum.IntFlag):
    """STATUS ``flags``."""

    SAFE_STATE = 0x01  # the agent went silent: relays were put in their safe state
    WATCHDOG_RESET = 0x02  # the module's last reset was its watchdog


class NakReason(enum.IntEnum):
    CORRUPT = 1  # bad CRC or length
    UNKNOWN_TYPE = 2
    BAD_PAYLOAD = 3


RELAY_MASK: Final = int(Relay.LIGHTING | Relay.AUX)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetRelays:
    """Set the relays in ``mask`` to the bits of ``values``; the others are left alone."""

    seq: int
    mask: Relay
    values: Relay

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if not self.mask or self.mask & ~RELAY_MASK or self.values & ~self.mask:
            raise LocalProtocolError(
                f"SET_RELAYS mask {int(self.mask):#x} / values {int(self.values):#x}: "
                f"mask must name relays of {RELAY_MASK:#x} and values stay within it"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """The module's whole state. ``solicited``: a STATUS answering agent frame ``ack``."""

    seq: int
    solicited: bool
    ack: int
    inputs: Input
    relays: Relay
    flags: Flag
    temperature: float | None  # °C, 0.1 resolution; None: no sensor


@dataclass(frozen=True, slots=True, kw_only=True)
class Nak:
    seq: int
    reason: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Discarded:
    """Bytes thrown away while looking for a frame (noise, a corrupt or truncated frame)."""

    count: int
    reason: str


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

Request: TypeAlias = Ping | SetRelays
Reply: TypeAlias = Status | Nak
Event: TypeAlias = Status | Nak | Discarded | NeedData


def _check_seq(seq: int) -> None:
    if not 0 <= seq <= 0xFF:
        raise LocalProtocolError(f"seq {seq} is outside 0..255")


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE: ``crc16(b"123456789") == 0x29B1``."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def frame(kind: int, seq: int, payload: bytes) -> bytes:
    """One frame of any type (the module side's encoder lives in the firmware)."""
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    _check_seq(seq)
    body = bytes((kind, seq, len(payload))) + payload
    crc = crc16(body)
    return SYNC + body + bytes((crc >> 8, crc & 0xFF))


def encode(request: Request) -> bytes:
    """The bytes of an agent request."""
    match request:
        case Ping(seq=seq):
            return frame(MsgType.PING, seq, b"")
        case SetRelays(seq=seq, mask=mask, values=values):
            return frame(MsgType.SET_RELAYS, seq, bytes((int(mask), int(values))))


# Payload lengths of the module's messages (a STATUS shorter than this is garbage; a
# longer one is from a newer firmware and its extra bytes are ignored).
STATUS_LENGTH: Final = 6
NAK_LENGTH: Final = 1


class FrameDecoder:
    """Bytes from the module in, :data:`Event` out (sans-IO, like h11's ``next_event``).

    Work is bounded by input size: every byte is examined as a sync candidate at most
    once, and a frame's CRC is computed at most once per candidate (≤ MAX_FRAME bytes).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.frames = 0
        self.discarded = 0  # bytes

    def receive_data(self, data: bytes) -> None:
        """Add bytes; the caller drains :meth:`next_event` to NEED_DATA before adding more,
        so the buffer holds at most one read plus a partial frame."""
        self._buffer += data

    def next_event(self) -> Event:
        buf = self._buffer
        start = buf.find(SYNC)
        if start < 0:
            # Keep a trailing A5: it may be the first half of the next sync.
            keep = 1 if buf[-1:] == SYNC[:1] else 0
            if len(buf) - keep:
                count = len(buf) - keep
                del buf[:count]
                return self._discard(count, "noise")
            return NEED_DATA
        if start:
            del buf[:start]
            return self._discard(start, "noise")
        if len(buf) < HEADER:
            return NEED_DATA
        kind, seq, length = buf[2], buf[3], buf[4]
        if length > MAX_PAYLOAD:
            del buf[:2]
            return self._discard(2, f"length {length} > {MAX_PAYLOAD}")
        end = HEADER + length + TRAILER
        if len(buf) < end:
            return NEED_DATA
        body = bytes(buf[2 : HEADER + length])
        crc = (buf[end - 2] << 8) | buf[end - 1]
        if crc16(body) != crc:
            # Resynchronise on the next sync pattern: this one may have been noise.
            del buf[:2]
            return self._discard(2, "bad CRC")
        del buf[:end]
        payload = body[3:]
        event = _message(kind, seq, payload)
        if isinstance(event, Discarded):
            self.discarded += event.count
        else:
            self.frames += 1
        return event

    def _discard(self, count: int, reason: str) -> Discarded:
        self.discarded += count
        return Discarded(count=count, reason=reason)


def _message(kind: int, seq: int, payload: bytes) -> Status | Nak | Discarded:
    size = HEADER + len(payload) + TRAILER
    if kind in (MsgType.STATUS, MsgType.CHANGE):
        if len(payload) < STATUS_LENGTH:
            return Discarded(count=size, reason=f"STATUS of {len(payload)} bytes")
        ack, inputs, relays, flags = payload[0], payload[1], payload[2], payload[3]
        raw = int.from_bytes(payload[4:6], "big", signed=True)
        return Status(
            seq=seq,
            solicited=kind == MsgType.STATUS,
            ack=ack,
            inputs=Input(inputs & 0x0F),
            relays=Relay(relays & RELAY_MASK),
            flags=Flag(flags & 0x03),
            temperature=None if raw == NO_TEMPERATURE else raw / 10,
        )
    if kind == MsgType.NAK:
        if len(payload) < NAK_LENGTH:
            return Discarded(count=size, reason="NAK without a reason")
        return Nak(seq=seq, reason=payload[0])
    return Discarded(count=size, reason=f"unknown type {kind:#04x}")

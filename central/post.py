"""The reference central post: verifies what gateways send, as PROTOCOL.md says.

It is written from PROTOCOL.md alone and shares no code with the agent (only
``agent.clock``, which carries no protocol): the COSE_Sign1 check and the CDDL
schema below are a second, independent reading of the wire contract, so a bug
in the agent's encoder cannot hide behind the same bug in its checker.

Two layers, sans-IO style:

- :func:`parse_topic`, :func:`open_sign1`, :func:`check_body` and
  :class:`Ledger` are pure: bytes and topics in, verdicts and records out.
  :class:`Ledger` de-duplicates by ``(gw, boot, seq)``, tracks ``seq`` gaps,
  and keeps readings, events, acks, states and rejections.
- :class:`CentralPost` is the MQTT adapter: it subscribes to
  ``armoire/v1/+/#`` (MQTT 5, QoS 1), feeds every message to its ledger,
  reconnects with capped, jittered backoff when the broker goes away, and lets
  tests wait for a condition on what it has received.

A rejection reason is a short code, optionally followed by ``": "`` and a
detail: ``bad-topic``, ``unknown-gateway``, ``malformed-cose``,
``bad-algorithm``, ``wrong-kid``, ``bad-signature``, ``malformed-body``,
``schema`` (e.g. ``schema: Telemetry.r[3][3]: quality 9 not in 0..4``),
``seq-reuse`` (same ``(gw, boot, seq)`` with a different body) and
``internal-error`` (a bug here; logged with its traceback).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import io
import logging
import random
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self
from urllib.parse import urlsplit

import aiomqtt
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.clock import Clock, SystemClock
from central.blobs import PART_MAX, Assembler, Blob, BlobError

__all__ = [
    "CentralPost",
    "GatewayKey",
    "Kind",
    "Ledger",
    "LocalProtocolError",
    "Outcome",
    "Reading",
    "RemoteProtocolError",
    "Verified",
    "check_body",
    "open_sign1",
    "parse_topic",
]

_log = logging.getLogger("armoire.central")

# -- constants from PROTOCOL.md ----------------------------------------------

TOPIC_ROOT = "armoire/v1"  # PROTOCOL.md, "Transport"
# The gateway → central topics only: commands on the shared broker (a flood of junk ones
# included) are none of the central post's business and never reach it.
SUBSCRIPTIONS = tuple(f"{TOPIC_ROOT}/+/{kind}" for kind in ("state", "tele", "evt", "ack", "blob"))
GATEWAY_ID = re.compile(r"[a-z0-9-]{1,64}")  # PROTOCOL.md, "Transport": `{gw}`
PROTOCOL_VERSION = 1  # "v" => 1

COSE_SIGN1_TAG = 18  # RFC 9052 §2, PROTOCOL.md "Envelope"
HEADER_ALG = 1  # RFC 9052 §3.1, common header parameter labels
HEADER_KID = 4
ALG_EDDSA = -8  # RFC 9053 §2.2: EdDSA; what senders use in this version
ALG_ED25519 = -19  # RFC 9864: fully specified Ed25519; receivers accept it too
ACCEPTED_ALGS = (ALG_EDDSA, ALG_ED25519)
KID_BYTES = 8  # PROTOCOL.md: first 8 bytes of SHA-256 of the raw public key
ED25519_PUBLIC_BYTES = 32  # RFC 8032 §5.1.5
ED25519_SIGNATURE_BYTES = 64  # RFC 8032 §5.1.6
CONFIG_DIGEST_BYTES = 32  # Birth "config": SHA-256
COMMAND_ID_BYTES = 16  # Ack "cmd"

QUALITY_MAX = 4  # Quality = &(good: 0, … overridden: 4)
CLOCK_QUALITY_MAX = 2  # ClockQuality = &(trusted: 0, holdover: 1, untrusted: 2)
REBOOT_CAUSES = ("clean", "crash", "watchdog", "power", "unknown")  # Birth "reboot"
MODES = ("normal", "autonomous")  # Birth "mode"
SEVERITY_MAX = 7  # syslog severities 0..7
UINT_MAX = 2**64 - 1  # CBOR major types 0/1 carry 64-bit arguments (RFC 8949 §3.1)
NINT_MIN = -(2**64)

EVENT_KINDS = ("alarm", "event", "audit")
EVENT_STATES = ("raised", "cleared", "info")
ACK_STATUSES = ("done", "rejected", "failed")
EVICTED_CODE = "outbox.evicted"  # PROTOCOL.md, "Sequence numbers"

# Nesting a legitimate body needs is small (Event "data" is free-form, so leave
# room); a bound keeps hostile input from recursing deep in the decoder.
MAX_CBOR_DEPTH = 64

# -- constants of the MQTT adapter (sim scale: a broker on loopback) --------

# Kept by the broker while we are away (e.g. while a test restarts it), so
# telemetry published meanwhile is queued for us rather than lost.
SESSION_EXPIRY_S = 300
KEEPALIVE_S = 30
MQTT_TIMEOUT_S = 5.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
CONNECT_TIMEOUT_S = 10.0
DEFAULT_MQTT_PORT = 1883  # IANA


# -- errors ------------------------------------------------------------------


class LocalProtocolError(Exception):
    """The central post was misused (bad key, bad URL): a bug of the caller."""


class RemoteProtocolError(Exception):
    """A gateway's message breaks PROTOCOL.md; it is counted and dropped."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        """``code`` or ``code: detail``, as recorded in rejections."""
        return f"{self.code}: {self.detail}" if self.detail else self.code


# -- keys --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayKey:
    """A gateway's Ed25519 public key and its ``kid``."""

    gw: str
    public: bytes

    def __post_init__(self) -> None:
        if not GATEWAY_ID.fullmatch(self.gw):
            raise LocalProtocolError(f"gateway id {self.gw!r} is not [a-z0-9-]{{1,64}}")
        if len(self.public) != ED25519_PUBLIC_BYTES:
            raise LocalProtocolError(
                f"public key of {self.gw} has {len(self.public)} bytes, "
                f"not {ED25519_PUBLIC_BYTES} (raw Ed25519)"
            )

    @property
    def kid(self) -> bytes:
        """First 8 bytes of SHA-256 over the raw public key (PROTOCOL.md, "Envelope")."""
        return hashlib.sha256(self.public).digest()[:KID_BYTES]

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def load_public_pem(path: Path) -> bytes:
    """The raw 32-byte Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise LocalProtocolError(f"{path}: cannot read a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise LocalProtocolError(f"{path}: not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- topics ------------------------------------------------------------------


class Kind(enum.StrEnum):
    """The gateway → central topics (PROTOCOL.md, "Transport")."""

    STATE = "state"
    TELE = "tele"
    EVT = "evt"
    ACK = "ack"
    BLOB = "blob"


# Topics that go central → gateway: valid, but not ours to check.
DOWNLINK_KINDS = ("cmd", "trust")


def parse_topic(topic: str) -> tuple[str, Kind]:
    """``armoire/v1/{gw}/{kind}`` → ``(gw, kind)``, or :class:`RemoteProtocolError`."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise RemoteProtocolError("bad-topic", f"{topic!r} is not {TOPIC_ROOT}/{{gw}}/{{kind}}")
    gw, kind = parts[2], parts[3]
    if not GATEWAY_ID.fullmatch(gw):
        raise RemoteProtocolError("bad-topic", f"gateway id {gw!r} is not [a-z0-9-]{{1,64}}")
    try:
        return gw, Kind(kind)
    except ValueError:
        raise RemoteProtocolError("bad-topic", f"unknown kind {kind!r}") from None


# -- CBOR and COSE -----------------------------------------------------------


def _decode_cbor(data: bytes, code: str, what: str) -> object:
    """Exactly one CBOR item, strictly decoded, or ``RemoteProtocolError(code)``."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            stream, max_depth=MAX_CBOR_DEPTH, allow_duplicate_keys=False
        ).decode()
    except Exception as exc:
        # Untrusted bytes: whatever the decoder trips on (CBORDecodeError,
        # ValueError from a semantic tag, ...) is the sender's fault.
        raise RemoteProtocolError(code, f"{what}: {exc}") from exc
    if stream.tell() != len(data):
        raise RemoteProtocolError(code, f"{what}: {len(data) - stream.tell()} trailing bytes")
    return item


def open_sign1(data: bytes, key: GatewayKey) -> bytes:
    """Check a tagged COSE_Sign1 made by ``key``; return its payload.

    PROTOCOL.md, "Envelope": tag 18; protected = {1: -8 or -19, 4: kid};
    unprotected = {}; payload a byte string; a 64-byte Ed25519 signature over
    ``["Signature1", protected, h'', payload]``.
    """
    item = _decode_cbor(data, "malformed-cose", "envelope")
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
        raise RemoteProtocolError("malformed-cose", "not a CBOR tag 18 (COSE_Sign1)")
    # cbor2 gives a tuple for an array inside a tag.
    if not isinstance(item.value, list | tuple) or len(item.value) != 4:
        raise RemoteProtocolError("malformed-cose", "COSE_Sign1 is not a 4-element array")
    protected, unprotected, payload, signature = item.value
    if not isinstance(protected, bytes):
        raise RemoteProtocolError("malformed-cose", "protected header is not a byte string")
    # cbor2 decodes maps inside a tag as immutable mappings (frozendict).
    if not isinstance(unprotected, Mapping) or unprotected:
        raise RemoteProtocolError("malformed-cose", "unprotected header is not an empty map")
    if not isinstance(payload, bytes):
        raise RemoteProtocolError("malformed-cose", "payload is not a byte string")
    if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_BYTES:
        raise RemoteProtocolError("malformed-cose", "signature is not 64 bytes")

    headers = _decode_cbor(protected, "malformed-cose", "protected header")
    if not isinstance(headers, Mapping):
        raise RemoteProtocolError("malformed-cose", "protected header is not a map")
    unexpected = set(headers) - {HEADER_ALG, HEADER_KID}
    if unexpected:
        raise RemoteProtocolError(
            "malformed-cose", f"unexpected protected header labels {sorted(map(repr, unexpected))}"
        )
    if HEADER_ALG not in headers:
        raise RemoteProtocolError("malformed-cose", "protected header has no alg (1)")
    alg = headers[HEADER_ALG]
    if type(alg) is not int or alg not in ACCEPTED_ALGS:
        raise RemoteProtocolError("bad-algorithm", f"alg {alg!r} is not -8 or -19")
    kid = headers.get(HEADER_KID)
    if not isinstance(kid, bytes) or len(kid) != KID_BYTES:
        raise RemoteProtocolError("malformed-cose", "kid (4) is not an 8-byte byte string")
    if kid != key.kid:
        raise RemoteProtocolError(
            "wrong-kid", f"kid {kid.hex()} is not {key.gw}'s key {key.kid.hex()}"
        )

    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    if not key.verify(signature, to_be_signed):
        raise RemoteProtocolError("bad-signature")
    return payload


# -- body schema (PROTOCOL.md, "Bodies") -------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(path: str, problem: str) -> NoReturn:
    raise RemoteProtocolError("schema", f"{path}: {problem}")


def _uint(value: object, path: str) -> int:
    # `type(...) is int`: CBOR true is a Python bool, and bool is an int.
    if type(value) is not int or not 0 <= value <= UINT_MAX:
        _fail(path, f"expected uint, got {_show(value)}")
    return value


def _int(value: object, path: str) -> int:
    if type(value) is not int or not NINT_MIN <= value <= UINT_MAX:
        _fail(path, f"expected int, got {_show(value)}")
    return value


def _ranged(value: object, path: str, what: str, high: int) -> int:
    if type(value) is not int:
        _fail(path, f"expected {what} 0..{high}, got {_show(value)}")
    if not 0 <= value <= high:
        _fail(path, f"{what} {value} not in 0..{high}")
    return value


def _tstr(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected tstr, got {_show(value)}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"expected bool, got {_show(value)}")
    return value


def _bstr(value: object, path: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        _fail(path, f"expected bstr .size {size}, got {_show(value)}")
    return value


def _choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        _fail(path, f"{_show(value)} not one of {', '.join(choices)}")
    return value


def _array(value: object, path: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        _fail(path, f"expected array, got {_show(value)}")
    return value


def _map(
    value: object, path: str, required: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, Any]:
    """A map with text keys, all ``required`` ones and no others than ``optional``."""
    if not isinstance(value, Mapping):
        _fail(path, f"expected map, got {_show(value)}")
    required = tuple(required)
    allowed = set(required) | set(optional)
    for key in value:
        if not isinstance(key, str):
            _fail(path, f"key {_show(key)} is not a text string")
        if key not in allowed:
            _fail(path, f"unexpected key {key!r}")
    for key in required:
        if key not in value:
            _fail(path, f"missing key {key!r}")
    return dict(value)


def _any_map(value: object, path: str) -> dict[str, Any]:
    """``{ * tstr => any }``."""
    return _map(value, path, (), value.keys() if isinstance(value, Mapping) else ())


def _number_bool_tstr_null(value: object, path: str) -> None:
    if value is None or isinstance(value, bool | str | float):
        return
    _int(value, path)


HEADER = ("v", "gw", "boot", "seq")
HEADER_OPTIONAL = ("clk",)


def _header(body: dict[str, Any], name: str, gw: str) -> tuple[int, int]:
    if type(body["v"]) is not int or body["v"] != PROTOCOL_VERSION:
        _fail(f"{name}.v", f"expected {PROTOCOL_VERSION}, got {_show(body['v'])}")
    if _tstr(body["gw"], f"{name}.gw") != gw:
        _fail(f"{name}.gw", f"{body['gw']!r} is not the topic's gateway {gw!r}")
    if "clk" in body:
        _ranged(body["clk"], f"{name}.clk", "clock quality", CLOCK_QUALITY_MAX)
    return _uint(body["boot"], f"{name}.boot"), _uint(body["seq"], f"{name}.seq")


def _check_telemetry(body: dict[str, Any]) -> None:
    _uint(body["t0"], "Telemetry.t0")
    for i, reading in enumerate(_array(body["r"], "Telemetry.r")):
        path = f"Telemetry.r[{i}]"
        reading = _array(reading, path)
        if len(reading) != 4:
            _fail(path, f"expected [point, dt, value, q], got {len(reading)} elements")
        _tstr(reading[0], f"{path}[0]")
        _int(reading[1], f"{path}[1]")
        _number_bool_tstr_null(reading[2], f"{path}[2]")
        _ranged(reading[3], f"{path}[3]", "quality", QUALITY_MAX)
    if "lost" in body:
        _uint(body["lost"], "Telemetry.lost")


def _check_event(body: dict[str, Any]) -> None:
    _uint(body["t"], "Event.t")
    _choice(body["kind"], "Event.kind", EVENT_KINDS)
    _tstr(body["code"], "Event.code")
    _ranged(body["sev"], "Event.sev", "severity", SEVERITY_MAX)
    _choice(body["state"], "Event.state", EVENT_STATES)
    for key in ("src", "msg"):
        if key in body:
            _tstr(body[key], f"Event.{key}")
    if "data" in body:
        data = _any_map(body["data"], "Event.data")
        if body["code"] in UNAUTHENTICATED_CODES:
            _check_unauthenticated(data)


# PROTOCOL.md, "Unauthenticated input": the summary of what a gateway could not authenticate.
UNAUTHENTICATED_CODES = ("cmd.unauthenticated", "trust.unauthenticated")


def _check_unauthenticated(data: dict[str, Any]) -> None:
    path = "Event.data"
    _map(data, path, ("count", "reasons", "first", "last"), ("samples",))
    _uint(data["count"], f"{path}.count")
    for reason, n in _any_map(data["reasons"], f"{path}.reasons").items():
        _uint(n, f"{path}.reasons[{reason!r}]")
    if _uint(data["first"], f"{path}.first") > _uint(data["last"], f"{path}.last"):
        _fail(f"{path}.first", "is after last")
    for i, sample in enumerate(_array(data.get("samples", []), f"{path}.samples")):
        if type(sample) is not bytes:
            _fail(f"{path}.samples[{i}]", f"expected bstr, got {_show(sample)}")


def _check_ack(body: dict[str, Any]) -> None:
    _uint(body["t"], "Ack.t")
    _bstr(body["cmd"], "Ack.cmd", COMMAND_ID_BYTES)
    _choice(body["status"], "Ack.status", ACK_STATUSES)
    for key in ("reason", "msg"):
        if key in body:
            _tstr(body[key], f"Ack.{key}")


def _check_birth(body: dict[str, Any]) -> None:
    _uint(body["t"], "Birth.t")
    _tstr(body["agent"], "Birth.agent")
    _bstr(body["config"], "Birth.config", CONFIG_DIGEST_BYTES)
    points = _any_map(body["points"], "Birth.points")
    for point, info in points.items():
        path = f"Birth.points[{point!r}]"
        info = _map(info, path, ("unit", "w"))
        _tstr(info["unit"], f"{path}.unit")
        _bool(info["w"], f"{path}.w")
    if "reboot" in body:
        _choice(body["reboot"], "Birth.reboot", REBOOT_CAUSES)
    if "mode" in body:
        _choice(body["mode"], "Birth.mode", MODES)
    if "outbox" in body:
        outbox = _map(body["outbox"], "Birth.outbox", ("depth", "inflight", "oldest"))
        depth = _uint(outbox["depth"], "Birth.outbox.depth")
        if _uint(outbox["inflight"], "Birth.outbox.inflight") > depth:
            _fail("Birth.outbox.inflight", f"{outbox['inflight']} in flight out of {depth}")
        if outbox["oldest"] is not None:
            _uint(outbox["oldest"], "Birth.outbox.oldest")
        elif depth:
            _fail("Birth.outbox.oldest", f"null with {depth} records stored")


SHA256_BYTES = 32  # Blob "sha256" => bstr .size 32
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def _check_blob(body: dict[str, Any]) -> None:
    _uint(body["t"], "Blob.t")
    _bstr(body["sha256"], "Blob.sha256", SHA256_BYTES)
    if not MEDIA_TYPE.fullmatch(_tstr(body["ctype"], "Blob.ctype")):
        _fail("Blob.ctype", f"{_show(body['ctype'])} is not a media type")
    parts = _uint(body["parts"], "Blob.parts")
    if _uint(body["part"], "Blob.part") >= parts:
        _fail("Blob.part", f"{body['part']} is not below parts {parts}")
    data = body["data"]
    if type(data) is not bytes or not 1 <= len(data) <= PART_MAX:
        _fail("Blob.data", f"expected bstr of 1..{PART_MAX} bytes, got {_show(data)[:40]}")


def _check_death(body: dict[str, Any]) -> None:
    _uint(body["t"], "Death.t")


# Per body: (required keys beyond the header, optional keys, checker).
_BODIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[dict[str, Any]], None]]] = {
    "Telemetry": (("t0", "r"), ("lost",), _check_telemetry),
    "Event": (("t", "kind", "code", "sev", "state"), ("src", "msg", "data"), _check_event),
    "Ack": (("t", "cmd", "status"), ("reason", "msg", "value"), _check_ack),
    "Birth": (
        ("t", "online", "agent", "config", "points"),
        ("reboot", "mode", "outbox"),
        _check_birth,
    ),
    "Death": (("t", "online"), (), _check_death),
    "Blob": (("t", "sha256", "ctype", "part", "parts", "data"), (), _check_blob),
}


def _body_name(kind: Kind, body: object) -> str:
    match kind:
        case Kind.TELE:
            return "Telemetry"
        case Kind.EVT:
            return "Event"
        case Kind.ACK:
            return "Ack"
        case Kind.BLOB:
            return "Blob"
        case Kind.STATE:
            # Birth and Death share the topic; "online" tells them apart.
            online = body.get("online") if isinstance(body, Mapping) else None
            if online is True:
                return "Birth"
            if online is False:
                return "Death"
            _fail("State.online", f"expected true (Birth) or false (Death), got {_show(online)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """A message that passed every check."""

    kind: Kind
    name: str  # "Telemetry", "Event", "Ack", "Blob", "Birth" or "Death"
    gw: str
    boot: int
    seq: int
    body: dict[str, Any]


def check_body(kind: Kind, gw: str, body: object) -> Verified:
    """Check a decoded body against the CDDL of PROTOCOL.md for ``kind``."""
    name = _body_name(kind, body)
    required, optional, check = _BODIES[name]
    checked = _map(body, name, (*HEADER, *required), (*HEADER_OPTIONAL, *optional))
    boot, seq = _header(checked, name, gw)
    check(checked)
    return Verified(kind=kind, name=name, gw=gw, boot=boot, seq=seq, body=checked)


# -- the ledger --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """One verified reading, with its absolute time (``t0 + dt``)."""

    gw: str
    boot: int
    seq: int
    point: str
    t_ms: int
    value: bool | int | float | str | None
    quality: int


class Outcome(enum.Enum):
    """What the ledger did with a message."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    IGNORED = "ignored"  # a central → gateway topic (cmd, trust)


class Ledger:
    """Everything the central post has received, checked and de-duplicated.

    Counters: ``received`` = ``verified`` + ``rejected``; ``verified`` =
    accepted + ``duplicates``. Topics ``cmd`` and ``trust`` (central →
    gateway, e.g. another central's commands) are ``ignored``, not received.
    """

    def __init__(
        self,
        keys: Mapping[str, bytes] | None = None,
        *,
        clock: Clock | None = None,
        on_blob: Callable[[Blob], str | None] | None = None,
    ) -> None:
        self._keys: dict[str, GatewayKey] = {}
        self._clock = clock or SystemClock()
        # Called with each completed, verified Blob; returns where it was stored.
        self._on_blob = on_blob
        self.assembler = Assembler()
        self.blobs: list[dict[str, Any]] = []  # {gw, sha256, ctype, t, bytes, path}
        for gw, public in (keys or {}).items():
            self.add_key(gw, public)
        self.rejections: list[tuple[str, str]] = []
        self.readings: list[Reading] = []
        self.latest: dict[str, Reading] = {}  # by "gw:point", latest t_ms
        self.events: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.state: dict[str, dict[str, Any]] = {}  # last Birth/Death body per gw
        self.evictions: list[dict[str, Any]] = []  # the "outbox.evicted" Events
        self.lost: dict[str, int] = {}  # Telemetry "lost" totals per gw
        self._digests: dict[tuple[str, int, int], bytes] = {}
        self._seqs: dict[str, dict[int, set[int]]] = {}
        self._received = 0
        self._duplicates = 0
        self._ignored = 0
        self._by_kind = dict.fromkeys(Kind, 0)

    def add_key(self, gw: str, public: bytes) -> GatewayKey:
        """Trust ``public`` (raw Ed25519) as gateway ``gw``'s key."""
        key = GatewayKey(gw=gw, public=bytes(public))
        self._keys[gw] = key
        return key

    @property
    def keys(self) -> dict[str, GatewayKey]:
        """The gateway keys, by gateway id."""
        return dict(self._keys)

    def receive(self, topic: str, payload: bytes) -> Outcome:
        """Check one message and record it; never raises for bad input."""
        try:
            verified = self._verify(topic, payload)
        except _Ignored:
            self._ignored += 1
            return Outcome.IGNORED
        except RemoteProtocolError as exc:
            self._received += 1
            self.rejections.append((topic, exc.reason))
            return Outcome.REJECTED
        except Exception as exc:
            # A bug here, not the sender's fault: say so loudly, keep going.
            _log.exception("central: internal error on %s", topic)
            self._received += 1
            self.rejections.append((topic, f"internal-error: {exc!r}"))
            return Outcome.REJECTED
        self._received += 1
        if verified is None:
            return Outcome.DUPLICATE
        self._record(verified)
        return Outcome.ACCEPTED

    def _verify(self, topic: str, payload: bytes) -> Verified | None:
        """The verified message, ``None`` for a duplicate, or an exception."""
        parts = topic.split("/")
        if len(parts) == 4 and parts[3] in DOWNLINK_KINDS:
            raise _Ignored
        gw, kind = parse_topic(topic)
        key = self._keys.get(gw)
        if key is None:
            raise RemoteProtocolError("unknown-gateway", gw)
        body = _decode_cbor(open_sign1(payload, key), "malformed-body", "payload")
        verified = check_body(kind, gw, body)
        if kind is Kind.STATE:
            return verified
        # PROTOCOL.md, "Sequence numbers": de-duplicate by (gw, boot, seq).
        # Ed25519 is deterministic, so a resend is byte-identical; a different
        # body under a seen number means the sender reused a number.
        digest = hashlib.sha256(payload).digest()
        number = (gw, verified.boot, verified.seq)
        seen = self._digests.get(number)
        if seen == digest:
            self._duplicates += 1
            return None
        if seen is not None:
            raise RemoteProtocolError(
                "seq-reuse",
                f"boot {verified.boot} seq {verified.seq} already seen with another body",
            )
        self._digests[number] = digest
        return verified

    def _record(self, message: Verified) -> None:
        self._by_kind[message.kind] += 1
        body = message.body
        if message.kind is not Kind.STATE:
            self._seqs.setdefault(message.gw, {}).setdefault(message.boot, set()).add(message.seq)
        match message.name:
            case "Telemetry":
                t0 = body["t0"]
                for point, dt, value, quality in body["r"]:
                    reading = Reading(
                        gw=message.gw,
                        boot=message.boot,
                        seq=message.seq,
                        point=point,
                        t_ms=t0 + dt,
                        value=value,
                        quality=quality,
                    )
                    self.readings.append(reading)
                    name = f"{message.gw}:{point}"
                    current = self.latest.get(name)
                    # Batches may arrive out of order: keep the newest reading.
                    if current is None or reading.t_ms >= current.t_ms:
                        self.latest[name] = reading
                if "lost" in body:
                    self.lost[message.gw] = self.lost.get(message.gw, 0) + body["lost"]
            case "Event":
                self.events.append(body)
                if body["code"] == EVICTED_CODE:
                    self.evictions.append(body)
            case "Ack":
                self.acks.append(body)
            case "Blob":
                self._blob_part(message.gw, body)
            case "Birth" | "Death":
                current_state = self.state.get(message.gw)
                # A retained state from an older boot (re-delivered on
                # resubscribe) must not hide the current one.
                if current_state is None or message.boot >= current_state["boot"]:
                    self.state[message.gw] = body

    def _blob_part(self, gw: str, body: dict[str, Any]) -> None:
        try:
            blob = self.assembler.add(gw, body, self._clock.monotonic())
        except BlobError as exc:
            # The part itself was authentic: its object is what is wrong.
            self.rejections.append((f"{TOPIC_ROOT}/{gw}/blob", f"blob: {exc}"))
            return
        if blob is None:
            return
        path = self._on_blob(blob) if self._on_blob is not None else None
        self.blobs.append(
            {
                "gw": gw,
                "sha256": blob.sha256,
                "ctype": blob.ctype,
                "t": blob.t_ms,
                "bytes": len(blob.data),
                "path": path,
            }
        )

    def gaps(
        self,
        gw: str,
        boot: int | None = None,
        *,
        start: int | None = None,
        end: int | None = None,
    ) -> list[tuple[int, int]]:
        """Missing ``seq`` ranges ``(first, last)``, inclusive, for ``gw``.

        ``boot=None`` looks across all boots, since ``seq`` keeps increasing
        across restarts (PROTOCOL.md, "Sequence numbers"); a given ``boot``
        looks at that boot only. The range checked runs from the lowest to the
        highest ``seq`` seen, unless ``start`` (the first ``seq`` expected) or
        ``end`` (the last expected, e.g. a Death's ``seq``) is given.
        """
        by_boot = self._seqs.get(gw, {})
        if boot is None:
            seqs: set[int] = set().union(*by_boot.values())
        else:
            seqs = by_boot.get(boot, set())
        if not seqs and (start is None or end is None):
            return []
        low = min(seqs) if start is None else start
        high = max(seqs) if end is None else end
        missing = []
        expected = low
        for seq in sorted(s for s in seqs if low <= s <= high):
            if seq > expected:
                missing.append((expected, seq - 1))
            expected = seq + 1
        if expected <= high:
            missing.append((expected, high))
        return missing

    def stats(self) -> dict[str, Any]:
        """Counters, as a plain dict (also used in timeout messages)."""
        rejected = len(self.rejections)
        return {
            "received": self._received,
            "verified": self._received - rejected,
            "rejected": rejected,
            "duplicates": self._duplicates,
            "ignored": self._ignored,
            "readings": len(self.readings),
            "points": len(self.latest),  # distinct (gw, point)
            "by_kind": {kind.value: n for kind, n in self._by_kind.items()},
            "lost": sum(self.lost.values()),
            "evictions": len(self.evictions),
            "blobs": len(self.blobs),
            "blobs_partial": self.assembler.in_progress,
        }


class _Ignored(Exception):
    """A central → gateway topic: not ours to check."""


# -- the MQTT adapter --------------------------------------------------------


def _parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise LocalProtocolError(f"broker URL {url!r} is not mqtt://HOST[:PORT]")
    return parts.hostname, parts.port or DEFAULT_MQTT_PORT


_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}


class CentralPost:
    """The reference central post on an MQTT broker.

    ``async with CentralPost(broker.url, keys={"gw-1": raw_pub}) as central:``
    returns once subscribed; the receive loop runs in a task owned by the
    block. What it saw is in :attr:`ledger` and the shortcuts below.
    """

    def __init__(
        self,
        broker_url: str,
        keys: Mapping[str, bytes] | None = None,
        *,
        client_id: str | None = None,
        clock: Clock | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        data_dir: Path | None = None,
    ) -> None:
        self._host, self._port = _parse_url(broker_url)
        # Completed blobs (camera stills) are written under DATA/blobs/{gw}/.
        self.data_dir = data_dir
        self.ledger = Ledger(keys, clock=clock, on_blob=self._write_blob if data_dir else None)
        self.client_id = client_id or f"central-{secrets.token_hex(4)}"
        self._clock = clock or SystemClock()
        self._connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._changed = asyncio.Condition()
        self.connections = 0  # successful (re)subscriptions, for tests and logs

    # -- keys ----------------------------------------------------------------

    def add_gateway_key(self, gw: str, public: bytes) -> None:
        """Trust the raw 32-byte Ed25519 ``public`` key for gateway ``gw``."""
        self.ledger.add_key(gw, public)

    def load_gateway_key(self, gw: str, pub_pem_path: Path) -> bytes:
        """Trust the public key in ``pub_pem_path`` (PEM) for ``gw``; return it raw."""
        public = load_public_pem(pub_pem_path)
        self.ledger.add_key(gw, public)
        return public

    def _write_blob(self, blob: Blob) -> str:
        """Write a verified object to DATA/blobs/{gw}/{t}-{sha256[:16]}.{ext}, atomically."""
        assert self.data_dir is not None
        folder = self.data_dir / "blobs" / blob.gw
        folder.mkdir(parents=True, exist_ok=True)
        ext = _EXTENSIONS.get(blob.ctype, "bin")
        path = folder / f"{blob.t_ms}-{blob.sha256.hex()[:16]}.{ext}"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(blob.data)
        tmp.replace(path)
        _log.info("central: %s still %s written to %s", blob.gw, blob.sha256.hex()[:16], path)
        return str(path)

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="central.receive")
        try:
            await self.wait_connected(self._connect_timeout)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Our own cancellation of the loop, unless we are being cancelled too.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    @property
    def connected(self) -> bool:
        """Whether the subscription is in place right now."""
        return self._subscribed.is_set()

    # A timeout argument rather than a caller's scope, so that the error can
    # say what was awaited (and, for wait_for, what was received instead).
    async def wait_connected(self, timeout: float = CONNECT_TIMEOUT_S) -> None:  # noqa: ASYNC109
        """Return once subscribed; ``TimeoutError`` if not within ``timeout`` seconds."""
        task = self._task
        if task is None:
            raise LocalProtocolError("the central post is not running (use `async with`)")
        waiter = asyncio.create_task(self._subscribed.wait(), name="central.wait_connected")
        try:
            done, _ = await asyncio.wait(
                (waiter, task), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if task in done:
            task.result()  # the loop ended: raise why
        if waiter not in done:
            raise TimeoutError(
                f"central post not subscribed on {self._host}:{self._port} within {timeout} s"
            )

    async def _run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        # Clean start false, always (as PROTOCOL.md asks of gateways too), so
        # reconnects resume the session and get what the broker queued for us
        # meanwhile. Not "first connect only": mosquitto 2.0 writes a session
        # to its persistence file only if it was opened with clean start
        # false, so a first-only session would not survive a broker restart.
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            keepalive=KEEPALIVE_S,
            timeout=MQTT_TIMEOUT_S,
        )
        backoff = BACKOFF_INITIAL_S
        was_connected = False
        while True:
            try:
                async with client:
                    # no_local: never hear our own publications (commands).
                    await client.subscribe(
                        [(t, SubscribeOptions(qos=1, noLocal=True)) for t in SUBSCRIPTIONS]
                    )
                    self.connections += 1
                    self._subscribed.set()
                    _log.info(
                        "central %s subscribed to %s", self.client_id, ", ".join(SUBSCRIPTIONS)
                    )
                    was_connected = True
                    backoff = BACKOFF_INITIAL_S
                    async for message in client.messages:
                        await self._handle(message.topic.value, message.payload)
            except aiomqtt.MqttError as exc:
                self._subscribed.clear()
                if was_connected:
                    _log.info("central %s lost the broker: %s", self.client_id, exc)
                    was_connected = False
            # Capped exponential backoff with jitter (STYLE.md, "Asyncio").
            await self._clock.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _handle(self, topic: str, payload: object) -> None:
        # paho gives bytes; anything else would be an aiomqtt change.
        data = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
        self.ledger.receive(topic, data)
        async with self._changed:
            self._changed.notify_all()

    # -- what was received ---------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[CentralPost], bool],
        timeout: float,  # noqa: ASYNC109 -- see wait_connected
    ) -> None:
        """Return once ``predicate(self)`` holds; re-checked on every message.

        Raises ``TimeoutError`` with the current stats after ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self))
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout} s; central stats: {self.stats()}; "
                f"last rejections: {self.rejections[-3:]}"
            ) from None

    def stats(self) -> dict[str, Any]:
        """``received``, ``verified``, ``rejected``, ``duplicates``, ``readings``,
        ``points``, ``by_kind`` and more: see :meth:`Ledger.stats`."""
        return self.ledger.stats()

    @property
    def rejections(self) -> list[tuple[str, str]]:
        """``(topic, reason)`` of every rejected message, in arrival order."""
        return self.ledger.rejections

    @property
    def readings(self) -> list[Reading]:
        """Every unique verified reading, in arrival order."""
        return self.ledger.readings

    @property
    def latest(self) -> dict[str, Reading]:
        """The newest reading of each point, by ``"gw:point"``."""
        return self.ledger.latest

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every unique verified Event body, in arrival order."""
        return self.ledger.events

    @property
    def acks(self) -> list[dict[str, Any]]:
        """Every unique verified Ack body, in arrival order."""
        return self.ledger.acks

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        """The last Birth or Death body of each gateway."""
        return self.ledger.state

    @property
    def lost(self) -> dict[str, int]:
        """Total of the Telemetry ``lost`` counts, per gateway."""
        return self.ledger.lost

    @property
    def blobs(self) -> list[dict[str, Any]]:
        """Every completed, verified Blob: gw, sha256, ctype, t, bytes, path."""
        return self.ledger.blobs

    @property
    def evictions(self) -> list[dict[str, Any]]:
        """The ``outbox.evicted`` Events, in arrival order."""
        return self.ledger.evictions

    def gaps(
        self,
        gw: str,
        boot: int | None = None,
        *,
        start: int | None = None,
        end: int | None = None,
    ) -> list[tuple[int, int]]:
        """Missing ``seq`` ranges of ``gw``: see :meth:`Ledger.gaps`."""
        return self.ledger.gaps(gw, boot, start=start, end=end)

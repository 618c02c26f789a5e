"""The trust store: which central keys the gateway accepts commands from (DESIGN.md, Security).

Two files in the gateway's data directory:

- ``trust-root.pub``: the pinned root key (SubjectPublicKeyInfo PEM), installed at provisioning.
  It signs nothing but trust updates and is never replaced over the air.
- ``trust.cose``: the current ``TrustUpdate`` (PROTOCOL.md, "Bodies") exactly as received, a
  COSE_Sign1 signed by the root key. It is re-verified against the root key at every start, so a
  file edited on disk is refused rather than trusted. Before the first update arrives there is
  no such file and the store holds no key (every command is refused as "unknown-kid").
- ``trust.serial``: the highest serial ever applied. Should ``trust.cose`` be lost, updates up to
  that serial are still refused as replays (an old update may list since-revoked keys).

`TrustStore` is immutable: `TrustStore.apply_update` returns a new store, and whoever holds the
store (the command verifier) swaps it. Verification of a trust update is pure
(`TrustStore.verify_update`); only `TrustStore.load` and `TrustStore.apply_update` touch files.

`decode_body` is the strict CBOR decoder shared by every signed body the gateway receives.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agent.durable import write_atomically
from agent.security import cbor_strict
from agent.security.cose import (
    KID_SIZE,
    MAX_MESSAGE_SIZE,
    PUBLIC_KEY_SIZE,
    CoseError,
    Signer,
    decode_envelope,
    kid_of,
    verify,
)
from agent.security.keys import KeyFileError, load_public_key, public_raw

ROLES: Final = ("operator", "maintenance", "admin")  # DESIGN.md, Security: roles of a key
TRUST_ROOT: Final = "trust-root.pub"
TRUST_FILE: Final = "trust.cose"
# The highest serial ever applied, kept apart from trust.cose: if that file is lost, an older
# root-signed update (which may list since-revoked keys) must still be refused as a replay.
TRUST_SERIAL_FILE: Final = "trust.serial"
TRUST_VERSION: Final = 1  # PROTOCOL.md, TrustUpdate: "v" => 1
ANY_GATEWAY: Final = "*"  # PROTOCOL.md, TrustUpdate: "gw" => gw-id / "*"
# Serial of a store that has no trust.cose yet: any uint serial is higher, so the first update
# is accepted whatever number the central post starts from.
NO_SERIAL: Final = -1
# How many keys one update may list. A real deployment has a few dozen central keys (operator
# desks, maintenance tokens, admins); the bound keeps a hostile-but-signed update from costing
# much, and is far from the ~3,000 keys the 256 KiB message cap would allow.
MAX_KEYS: Final = 1024
# Largest TrustUpdate accepted: MAX_KEYS keys of ~90 bytes each fit; checked before decoding.
MAX_TRUST_UPDATE_SIZE: Final = 128 * 1024
# Deepest CBOR nesting of a received body: a Command is map > args map > value; a TrustUpdate is
# map > keys array > key map > roles array. 8 leaves room for structured action arguments.
MAX_BODY_DEPTH: Final = 8
# PROTOCOL.md, Transport: the gateway id is a topic level.
_GATEWAY_ID: Final = re.compile(r"[a-z0-9-]{1,64}")
_FILE_MODE: Final = 0o644  # trust.cose is public data

TrustReason: TypeAlias = Literal[
    "bad-signature", "unknown-kid", "bad-request", "wrong-gateway", "replay", "not-provisioned"
]


class TrustError(Exception):
    """A trust update (received, or read back from ``trust.cose``) was refused, or the store
    cannot be loaded.

    ``reason`` is a PROTOCOL.md reason code: "bad-signature", "unknown-kid" (not signed by the
    root key), "bad-request" (malformed or schema violation), "wrong-gateway", "replay" (serial
    not higher than the current one); or "not-provisioned" when ``trust-root.pub`` is missing or
    unreadable. ``message`` says precisely what was wrong.

    ``authenticated`` is True when the update's root signature verified and a later check
    refused it (schema, gateway, serial): only such refusals are audited one by one
    (PROTOCOL.md, "Unauthenticated input").
    """

    def __init__(self, reason: TrustReason, message: str, authenticated: bool = False) -> None:
        super().__init__(reason, message, authenticated)  # all in args, so the error pickles
        self.reason: TrustReason = reason
        self.message = message
        self.authenticated = authenticated

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


# --- strict CBOR --------------------------------------------------------------------------------


class BodyError(ValueError):
    """A signed body is not exactly one well-formed, untagged CBOR item (see `decode_body`)."""


def decode_body(data: bytes) -> Any:
    """Decode a signed body strictly (`agent.security.cbor_strict`): exactly one CBOR item, no
    trailing bytes, no duplicate map keys, map keys text or byte strings only, no tags (not even
    bignums or self-described CBOR: a tagged value must not pass for the plain one the schema
    asks for), at most `MAX_BODY_DEPTH` levels.

    Maps come back as ``dict``, arrays as ``list``. Raises `BodyError` on anything else.
    """
    try:
        return cbor_strict.loads(data, max_size=MAX_MESSAGE_SIZE, max_depth=MAX_BODY_DEPTH)
    except cbor_strict.CborError as exc:
        raise BodyError(f"not accepted CBOR ({exc})") from exc


def is_uint(value: object) -> bool:
    """A CBOR uint as decoded (bool is an int in Python, and ``true`` is not a number)."""
    return type(value) is int and value >= 0


# --- the store ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedKey:
    """A central key from the trust store, with its roles and validity period (ms, inclusive).

    Validates when built (``ValueError``): a 32-byte public key whose kid is SHA-256(pub)[:8],
    at least one known role, and ``nbf <= exp`` when both are given.
    """

    kid: bytes
    public_raw: bytes
    roles: frozenset[str]
    nbf_ms: int | None
    exp_ms: int | None
    # The key object, built once: commands are verified thousands of times a second.
    public_key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.kid) is not bytes or len(self.kid) != KID_SIZE:
            raise ValueError(f"kid must be {KID_SIZE} bytes")
        if type(self.public_raw) is not bytes or len(self.public_raw) != PUBLIC_KEY_SIZE:
            raise ValueError(f"pub must be a {PUBLIC_KEY_SIZE}-byte Ed25519 public key")
        if kid_of(self.public_raw) != self.kid:
            raise ValueError(
                f"kid {self.kid.hex()} is not SHA-256(pub)[:{KID_SIZE}] "
                f"({kid_of(self.public_raw).hex()})"
            )
        if not self.roles:
            raise ValueError("a key needs at least one role")
        unknown = self.roles - set(ROLES)
        if unknown:
            shown = ", ".join(repr(r)[:40] for r in sorted(unknown)[:3])
            raise ValueError(f"unknown roles {shown} (known: {', '.join(ROLES)})")
        for name, value in (("nbf", self.nbf_ms), ("exp", self.exp_ms)):
            if value is not None and not is_uint(value):
                raise ValueError(f"{name} must be a time in ms (uint)")
        if self.nbf_ms is not None and self.exp_ms is not None and self.nbf_ms > self.exp_ms:
            raise ValueError(f"nbf {self.nbf_ms} is after exp {self.exp_ms}")
        object.__setattr__(self, "public_key", Ed25519PublicKey.from_public_bytes(self.public_raw))

    def valid_at(self, now_ms: int, skew_ms: int = 0) -> bool:
        """Whether the key may sign at ``now_ms``, with ``skew_ms`` of clock error either way."""
        if self.nbf_ms is not None and now_ms + skew_ms < self.nbf_ms:
            return False
        return self.exp_ms is None or now_ms - skew_ms <= self.exp_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustUpdate:
    """A TrustUpdate body (PROTOCOL.md), checked against its CDDL and with every key validated."""

    gw: str
    iat_ms: int
    serial: int
    keys: tuple[TrustedKey, ...]


_UPDATE_KEYS: Final = frozenset({"v", "gw", "iat", "serial", "keys"})
_KEY_KEYS: Final = frozenset({"kid", "pub", "roles", "nbf", "exp"})


def _unknown(found: Mapping[Any, Any], known: frozenset[str], where: str) -> None:
    extra = [k for k in found if k not in known]
    if extra:
        shown = ", ".join(repr(k)[:40] for k in extra[:3])
        raise TrustError("bad-request", f"{where}: unknown keys {shown}")


def _trusted_key(index: int, entry: object) -> TrustedKey:
    where = f"TrustUpdate keys[{index}]"
    if not isinstance(entry, dict):
        raise TrustError("bad-request", f"{where}: expected a map")
    _unknown(entry, _KEY_KEYS, where)
    kid, pub, roles = entry.get("kid"), entry.get("pub"), entry.get("roles")
    if type(kid) is not bytes or len(kid) != KID_SIZE:
        raise TrustError("bad-request", f"{where}: kid must be a {KID_SIZE}-byte bstr")
    if type(pub) is not bytes or len(pub) != PUBLIC_KEY_SIZE:
        raise TrustError("bad-request", f"{where}: pub must be a {PUBLIC_KEY_SIZE}-byte bstr")
    if type(roles) is not list or not roles or any(type(r) is not str for r in roles):
        raise TrustError("bad-request", f"{where}: roles must be a non-empty array of tstr")
    if len(set(roles)) != len(roles):
        raise TrustError("bad-request", f"{where}: roles repeats a role")
    times: dict[str, int | None] = {}
    for name in ("nbf", "exp"):
        value = entry.get(name)
        if value is not None and not is_uint(value):
            raise TrustError("bad-request", f"{where}: {name} must be a time in ms (uint)")
        times[name] = value
    try:
        return TrustedKey(
            kid=kid,
            public_raw=pub,
            roles=frozenset(roles),
            nbf_ms=times["nbf"],
            exp_ms=times["exp"],
        )
    except ValueError as exc:
        raise TrustError("bad-request", f"{where}: {exc}") from exc


def parse_trust_update(payload: bytes) -> TrustUpdate:
    """Decode and check a TrustUpdate body (strict CBOR, exact CDDL, every key well formed).

    Raises `TrustError` "bad-request". Does not check the signature, the gateway or the serial.
    """
    try:
        body = decode_body(payload)
    except BodyError as exc:
        raise TrustError("bad-request", f"TrustUpdate: {exc}") from exc
    if not isinstance(body, dict):
        raise TrustError("bad-request", "TrustUpdate: the body must be a map")
    _unknown(body, _UPDATE_KEYS, "TrustUpdate")
    missing = [k for k in ("v", "gw", "iat", "serial", "keys") if k not in body]
    if missing:
        raise TrustError("bad-request", f"TrustUpdate: missing {', '.join(missing)}")
    v, gw, iat, serial, keys = (body[k] for k in ("v", "gw", "iat", "serial", "keys"))
    if type(v) is not int or v != TRUST_VERSION:
        raise TrustError("bad-request", f"TrustUpdate: v must be {TRUST_VERSION}")
    if type(gw) is not str or not (gw == ANY_GATEWAY or _GATEWAY_ID.fullmatch(gw)):
        raise TrustError("bad-request", 'TrustUpdate: gw must be a gateway id or "*"')
    if not is_uint(iat):
        raise TrustError("bad-request", "TrustUpdate: iat must be a time in ms (uint)")
    if not is_uint(serial):
        raise TrustError("bad-request", "TrustUpdate: serial must be a uint")
    if type(keys) is not list:
        raise TrustError("bad-request", "TrustUpdate: keys must be an array")
    if len(keys) > MAX_KEYS:
        raise TrustError("bad-request", f"TrustUpdate: {len(keys)} keys, at most {MAX_KEYS}")
    trusted = tuple(_trusted_key(i, entry) for i, entry in enumerate(keys))
    kids = [k.kid for k in trusted]
    if len(set(kids)) != len(kids):
        raise TrustError("bad-request", "TrustUpdate: a kid is listed twice")
    return TrustUpdate(gw=gw, iat_ms=iat, serial=serial, keys=trusted)


def _verified_update(root: Ed25519PublicKey, root_kid: bytes, data: bytes) -> TrustUpdate:
    """Envelope, signer (the root key only) and signature, then the body schema."""
    if len(data) > MAX_TRUST_UPDATE_SIZE:
        raise TrustError(
            "bad-request", f"{len(data)} bytes, more than the {MAX_TRUST_UPDATE_SIZE} accepted"
        )
    try:
        msg = decode_envelope(data)
    except CoseError as exc:
        reason: TrustReason
        match exc.reason:
            case "bad-alg":
                reason = "bad-signature"
            case "bad-kid":
                reason = "unknown-kid"
            case _:
                reason = "bad-request"
        raise TrustError(reason, f"envelope {exc.reason}: {exc.message}") from exc
    # Only the root signs trust updates. Another kid (an operator key, even one the store
    # trusts for commands) is refused by name without trying its signature.
    if msg.kid != root_kid:
        raise TrustError(
            "unknown-kid",
            f"signed by kid {msg.kid.hex()}, not by the root key (kid {root_kid.hex()})",
        )
    try:
        verify(msg, root)
    except CoseError as exc:
        raise TrustError("bad-signature", "signature does not verify with the root key") from exc
    try:
        return parse_trust_update(msg.payload)
    except TrustError as exc:
        raise TrustError(exc.reason, exc.message, authenticated=True) from exc


def _read_file(path: Path) -> bytes | None:
    """The content of a small regular file, or None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path}: not a regular file")
        return f.read(MAX_MESSAGE_SIZE + 1)


def _read_serial(path: Path) -> int:
    """The serial in ``trust.serial``, or `NO_SERIAL` if there is none or it is unreadable text
    (its loss then only weakens replay protection back to what trust.cose says)."""
    data = _read_file(path)
    text = (data or b"").strip()
    return int(text) if text.isdigit() and len(text) <= 20 else NO_SERIAL


def _write_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=_FILE_MODE)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustStore:
    """The keys the gateway accepts commands from, as of the trust update numbered ``serial``.

    ``serial`` is `NO_SERIAL` (-1) and ``keys`` empty until the first update. ``gw`` is this
    gateway's id (an update naming another gateway is refused). Immutable: see `apply_update`.
    """

    root_kid: bytes
    serial: int
    gw: str
    keys: Mapping[bytes, TrustedKey]
    root_key: Ed25519PublicKey = field(repr=False, compare=False)
    iat_ms: int | None = None  # when the current update was issued (None before the first)

    @classmethod
    def empty(cls, root: Ed25519PublicKey, *, gw: str) -> TrustStore:
        """A store pinned to ``root`` with no key yet (what a newly provisioned gateway has)."""
        return cls(
            root_kid=kid_of(public_raw(root)),
            serial=NO_SERIAL,
            gw=gw,
            keys=MappingProxyType({}),
            root_key=root,
        )

    @classmethod
    def load(cls, data_dir: Path, *, gw: str) -> TrustStore:
        """Load the store from ``trust-root.pub`` and, if present, ``trust.cose`` in ``data_dir``.

        Raises `TrustError`: "not-provisioned" if the root key file is missing or unreadable;
        the verification reason if ``trust.cose`` does not verify against the root key or names
        another gateway (the message names the file and what to do).
        """
        root_path = data_dir / TRUST_ROOT
        try:
            root = load_public_key(root_path)
        except KeyFileError as exc:
            raise TrustError(
                "not-provisioned",
                f"{root_path}: {exc.reason}; install the central post's root public key "
                f"(SubjectPublicKeyInfo PEM) there when provisioning the gateway",
            ) from exc
        store = cls.empty(root, gw=gw)
        path = data_dir / TRUST_FILE
        try:
            data = _read_file(path)
            highest = _read_serial(data_dir / TRUST_SERIAL_FILE)
        except OSError as exc:
            raise TrustError("not-provisioned", f"{exc.filename}: cannot read: {exc}") from exc
        if data is None:
            # trust.cose lost (or never received): no key, but no going back below the highest
            # serial this gateway ever applied.
            return dataclasses.replace(store, serial=max(NO_SERIAL, highest))
        try:
            loaded = store.verify_update(data)
            if loaded.serial < highest:
                raise TrustError(
                    "replay",
                    f"serial {loaded.serial} is below {highest}, the highest ever applied "
                    f"({TRUST_SERIAL_FILE}): an older update must not come back",
                )
        except TrustError as exc:
            raise TrustError(
                exc.reason,
                f"{path}: {exc.message}; delete it and have the central post send a new trust "
                f"update (or, if {TRUST_ROOT} is the wrong root key, provision the right one)",
            ) from exc
        return loaded

    def key(self, kid: bytes) -> TrustedKey | None:
        """The trusted key with this kid, or None."""
        return self.keys.get(kid)

    def public_key(self, kid: bytes) -> Ed25519PublicKey:
        """The (cached) key object for ``kid``; raises ``KeyError`` if the store has no such kid."""
        return self.keys[kid].public_key

    def verify_update(self, data: bytes) -> TrustStore:
        """Check a received TrustUpdate and return the store it makes; pure, writes nothing.

        Checks, each with its reason: envelope ("bad-request"; "bad-signature" for another
        algorithm), signer is the root key ("unknown-kid"), signature ("bad-signature"), body
        schema and keys ("bad-request"), ``gw`` is this gateway or "*" ("wrong-gateway"),
        serial higher than the current one ("replay").
        """
        update = _verified_update(self.root_key, self.root_kid, data)
        if update.gw not in (self.gw, ANY_GATEWAY):
            raise TrustError(
                "wrong-gateway",
                f"update is for gateway {update.gw!r}, this is {self.gw!r}",
                authenticated=True,
            )
        if update.serial <= self.serial:
            raise TrustError(
                "replay",
                f"serial {update.serial} is not higher than the current {self.serial}",
                authenticated=True,
            )
        return TrustStore(
            root_kid=self.root_kid,
            serial=update.serial,
            gw=self.gw,
            keys=MappingProxyType({k.kid: k for k in update.keys}),
            root_key=self.root_key,
            iat_ms=update.iat_ms,
        )

    def apply_update(self, data: bytes, *, data_dir: Path, now_ms: int) -> TrustStore:
        """Verify a received TrustUpdate (`verify_update`), persist it as ``trust.cose`` and its
        serial as ``trust.serial``, each atomically (temporary file, fsync, rename, fsync of the
        directory), and return the new store. This store is left unchanged.

        ``now_ms`` is not used for a decision: trust updates are ordered by serial, not by time,
        so a gateway whose clock is wrong can still be re-keyed. An ``OSError`` from writing
        propagates (the update is then not applied: the caller keeps this store).
        """
        new = self.verify_update(data)
        _write_atomically(data_dir / TRUST_FILE, data)
        # After trust.cose: a crash in between leaves the higher serial in trust.cose, which
        # load() takes as the floor anyway.
        _write_atomically(data_dir / TRUST_SERIAL_FILE, f"{new.serial}\n".encode())
        return new


def sign_trust_update(
    root: Ed25519PrivateKey,
    *,
    serial: int,
    keys: Sequence[tuple[bytes, Sequence[str], int | None, int | None]],
    gw: str = ANY_GATEWAY,
    iat_ms: int,
) -> bytes:
    """A signed TrustUpdate, for tests and tools: ``keys`` are ``(pub_raw, roles, nbf, exp)``."""
    entries: list[dict[str, object]] = []
    for pub, roles, nbf, exp in keys:
        entry: dict[str, object] = {"kid": kid_of(pub), "pub": pub, "roles": list(roles)}
        if nbf is not None:
            entry["nbf"] = nbf
        if exp is not None:
            entry["exp"] = exp
        entries.append(entry)
    body = {"v": TRUST_VERSION, "gw": gw, "iat": iat_ms, "serial": serial, "keys": entries}
    return Signer(root).sign(cbor2.dumps(body))

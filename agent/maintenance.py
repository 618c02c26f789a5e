"""Verification of maintenance tokens (PROTOCOL.md, "Maintenance token (console)"), sans-IO.

A technician pastes a token on the console as one line of base64url; text and the current
(effective) time go in, a `Token` comes out, or `TokenRefused` with a reason. The checks follow
`agent.commands.CommandVerifier` and use the same restricted decoders and trust store: size,
base64url, COSE envelope, kid in the trust store and valid now, signature, then (only once the
signature verified) the body, strictly decoded: ``v``, ``role`` "maintenance", the key holds the
``maintenance`` role, ``gw`` is this gateway, ``iat``/``exp`` window.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from agent.security.cose import CoseError, decode_envelope, verify
from agent.security.trust import BodyError, TrustStore, decode_body, is_uint

TOKEN_VERSION: Final = 1  # PROTOCOL.md, Token: "v" => 1
MAINTENANCE: Final = "maintenance"  # the role, in the token and in the trust store
# A token is about 200 bytes (300 characters of base64url); anything much longer is not one,
# and is refused before any decoding.
MAX_TOKEN_CHARS: Final = 1024
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_SUB: Final = re.compile(r"[\x21-\x7e]{1,64}")  # shown on the console and audited
_KEYS: Final = frozenset({"v", "gw", "sub", "iat", "exp", "role"})

Reason: TypeAlias = Literal[
    "bad-request", "unknown-kid", "bad-signature", "not-authorised", "wrong-gateway", "expired",
    "not-yet-valid",
]  # fmt: skip


class TokenRefused(Exception):
    """A token was refused: ``reason`` (as for commands) and what exactly was wrong.
    ``sub`` is the technician id once the signature verified and the body has one."""

    def __init__(self, reason: Reason, detail: str, sub: str | None = None) -> None:
        super().__init__(reason, detail, sub)
        self.reason: Reason = reason
        self.detail = detail
        self.sub = sub

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Token:
    """A verified maintenance token: who (``sub``), until when (``exp``, ms), signed by ``kid``."""

    sub: str
    gw: str
    iat: int
    exp: int
    kid: bytes


def decode_text(text: str) -> bytes:
    """The bytes of a base64url token (padding optional); raises `TokenRefused`."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenRefused("bad-request", f"{len(text)} characters, more than {MAX_TOKEN_CHARS}")
    if not _B64URL.fullmatch(text):
        raise TokenRefused("bad-request", "not base64url (A-Z a-z 0-9 - _)")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRefused("bad-request", f"not base64url: {exc}") from exc


class TokenVerifier:
    """Checks maintenance tokens for gateway ``gw`` against a trust store (module docstring).

    ``skew_s`` is the clock error allowed on ``iat``/``exp`` and on key validity,
    ``max_validity_s`` the longest ``exp - iat`` accepted.
    """

    def __init__(self, *, gw: str, trust: TrustStore, skew_s: float, max_validity_s: float) -> None:
        self.gw = gw
        self.trust = trust
        self._skew_ms = round(skew_s * 1000)
        self._max_validity_ms = round(max_validity_s * 1000)

    def check_text(self, text: str, now_ms: int) -> Token:
        """Verify a pasted token at ``now_ms``; raises `TokenRefused`."""
        return self.check(decode_text(text), now_ms)

    def check(self, data: bytes, now_ms: int) -> Token:
        """Verify token bytes at ``now_ms``; never raises anything but `TokenRefused`."""
        try:
            msg = decode_envelope(data)
        except CoseError as exc:
            raise TokenRefused("bad-request", f"envelope {exc.reason}: {exc.message}") from exc
        key = self.trust.key(msg.kid)
        if key is None:
            raise TokenRefused("unknown-kid", f"kid {msg.kid.hex()} is not in the trust store")
        if not key.valid_at(now_ms, self._skew_ms):
            raise TokenRefused("unknown-kid", f"key {msg.kid.hex()} is not valid now")
        try:
            verify(msg, key.public_key)
        except CoseError as exc:
            detail = f"signature does not verify with key {msg.kid.hex()}"
            raise TokenRefused("bad-signature", detail) from exc
        try:
            body = decode_body(msg.payload)
        except BodyError as exc:
            raise TokenRefused("bad-request", f"body: {exc}") from exc
        if type(body) is not dict or set(body) != _KEYS:
            raise TokenRefused("bad-request", f"body must be a map of {', '.join(sorted(_KEYS))}")
        sub = body["sub"] if type(body["sub"]) is str and _SUB.fullmatch(body["sub"]) else None
        if sub is None:
            raise TokenRefused("bad-request", "sub must be 1 to 64 printable characters")
        if type(body["v"]) is not int or body["v"] != TOKEN_VERSION:
            raise TokenRefused("bad-request", f"v must be {TOKEN_VERSION}", sub)
        if MAINTENANCE not in key.roles:
            raise TokenRefused(
                "not-authorised",
                f"key {msg.kid.hex()} has roles {', '.join(sorted(key.roles))}, not maintenance",
                sub,
            )
        if body["role"] != MAINTENANCE:
            raise TokenRefused("not-authorised", "role is not maintenance", sub)
        if body["gw"] != self.gw:
            shown = repr(body["gw"])[:40]
            raise TokenRefused("wrong-gateway", f"for gateway {shown}, this is {self.gw!r}", sub)
        iat, exp = body["iat"], body["exp"]
        if not (is_uint(iat) and is_uint(exp)):
            raise TokenRefused("bad-request", "iat and exp must be uints (epoch ms)", sub)
        if exp < now_ms - self._skew_ms:
            raise TokenRefused("expired", f"expired {(now_ms - exp) // 1000} s ago", sub)
        if iat > now_ms + self._skew_ms:
            raise TokenRefused("not-yet-valid", "issued in the future (check the clock)", sub)
        if exp - iat > self._max_validity_ms:
            raise TokenRefused(
                "bad-request",
                f"valid {(exp - iat) // 1000} s, more than {self._max_validity_ms // 1000} s",
                sub,
            )
        return Token(sub=sub, gw=self.gw, iat=iat, exp=exp, kid=msg.kid)

"""The COSE_Sign1 envelope of every Armoire message (PROTOCOL.md, "Envelope"), sans-IO.

Bytes and key objects in, bytes and objects out: no files, no clocks, no logging.

Two layers:

- The **envelope profile** (`decode_envelope`, `verify`, `sign`, `Signer`): exactly what
  PROTOCOL.md allows, tagged COSE_Sign1 (RFC 9052 §4.2, CBOR tag 18) whose protected header is
  ``{1: -8, 4: kid}`` with an 8-byte kid, and an Ed25519 signature over
  ``["Signature1", protected, h'', payload]``.
- A small **generic COSE_Sign1 layer** (`decode_sign1_generic`, `verify_generic`) for messages
  that do not follow the profile (kid unprotected, extra headers, untagged, external_aad), used to
  check this code against the third-party cose-wg vectors. It verifies Ed25519 only.

Errors: `CoseError` (alias `RemoteProtocolError`) means the bytes we were given failed a check;
its ``reason`` says which one. `LocalProtocolError` means the caller misused the API (a bug).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.security import cbor_strict

# Algorithm identifiers, IANA "COSE Algorithms" registry.
ALG_EDDSA: Final = -8  # EdDSA (RFC 9053 §2.2); what senders use (PROTOCOL.md)
ALG_ED25519: Final = -19  # Ed25519, fully specified (RFC 9864); receivers accept it too
ACCEPTED_ALGS: Final = frozenset({ALG_EDDSA, ALG_ED25519})

# Header labels, IANA "COSE Header Parameters" registry (RFC 9052 §3.1).
HDR_ALG: Final = 1
HDR_KID: Final = 4

COSE_SIGN1_TAG: Final = 18  # RFC 9052 §2, CBOR tag of a COSE_Sign1
KID_SIZE: Final = 8  # PROTOCOL.md, Envelope: first 8 bytes of SHA-256 of the public key
SIGNATURE_SIZE: Final = 64  # RFC 8032 §5.1.6: an Ed25519 signature is R || S, 32 + 32 bytes
PUBLIC_KEY_SIZE: Final = 32  # RFC 8032 §5.1.5: an encoded Ed25519 public key

# Largest message we try to decode. Our biggest envelope is a Birth listing every point of a
# large cabinet (tens of KiB); 256 KiB leaves room for that and bounds what a hostile peer can
# make the decoder allocate.
MAX_MESSAGE_SIZE: Final = 256 * 1024
# Deepest CBOR nesting we decode. An envelope is array > header map > value; the deepest
# third-party vector (two countersignatures in an unprotected map) needs 5.
MAX_DEPTH: Final = 16

_SIG_CONTEXT: Final = "Signature1"  # RFC 9052 §4.4, context string of a COSE_Sign1
_EMPTY_MAP: Final = b"\xa0"  # CBOR encoding of {}

Reason: TypeAlias = Literal["malformed", "bad-tag", "bad-alg", "bad-kid", "bad-signature"]
Label: TypeAlias = int | str  # RFC 9052 §1.5: label = int / tstr


class LocalProtocolError(ValueError):
    """The caller misused this module (e.g. a kid that is not 8 bytes): a bug, not bad input."""


class CoseError(Exception):
    """A COSE message failed a check; ``reason`` names which (the receiver drops and audits it).

    ``reason`` is one of ``"malformed"``, ``"bad-tag"``, ``"bad-alg"``, ``"bad-kid"``,
    ``"bad-signature"``; the message says precisely what was wrong.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(reason, message)  # both in args, so the error pickles
        self.reason: Reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


# The remote-error root of this protocol (STYLE.md: LocalProtocolError / RemoteProtocolError).
RemoteProtocolError = CoseError


def kid_of(public_raw: bytes) -> bytes:
    """The key id of a raw 32-byte Ed25519 public key: SHA-256 of it, first 8 bytes."""
    if len(public_raw) != PUBLIC_KEY_SIZE:
        raise LocalProtocolError(
            f"kid_of needs a raw {PUBLIC_KEY_SIZE}-byte Ed25519 public key, got {len(public_raw)}"
        )
    return hashlib.sha256(public_raw).digest()[:KID_SIZE]


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes a COSE_Sign1 signature covers (RFC 9052 §4.4).

    ``["Signature1", protected, external_aad, payload]`` in CBOR. An empty protected map must
    travel as a zero-length bstr (RFC 9052 §3); a sender that put ``h'A0'`` there signed it as
    ``h''`` (cose-wg sign-pass-01), so ``h'A0'`` is normalised to ``h''``.
    """
    if protected == _EMPTY_MAP:
        protected = b""
    return cbor2.dumps([_SIG_CONTEXT, protected, external_aad, payload])


@dataclass(frozen=True, slots=True, kw_only=True)
class Sign1:
    """A COSE_Sign1 that follows the PROTOCOL.md envelope profile (not yet verified).

    ``protected`` is the raw serialized protected header: the signature covers those exact bytes.
    """

    protected: bytes
    alg: int
    kid: bytes
    payload: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if self.alg not in ACCEPTED_ALGS:
            raise LocalProtocolError(f"Sign1: alg {self.alg} is not EdDSA (-8) or Ed25519 (-19)")
        if len(self.kid) != KID_SIZE:
            raise LocalProtocolError(f"Sign1: kid must be {KID_SIZE} bytes, got {len(self.kid)}")
        if len(self.signature) != SIGNATURE_SIZE:
            raise LocalProtocolError(
                f"Sign1: signature must be {SIGNATURE_SIZE} bytes, got {len(self.signature)}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Sign1Generic:
    """Any COSE_Sign1 with an attached payload (RFC 9052 §4.2), headers as decoded maps."""

    protected: bytes
    protected_map: Mapping[Label, Any]
    unprotected: Mapping[Label, Any]
    payload: bytes
    signature: bytes

    @property
    def alg(self) -> Label | None:
        """The ``alg`` header, from whichever bucket holds it (None if neither does)."""
        alg: Label | None = self.protected_map.get(HDR_ALG, self.unprotected.get(HDR_ALG))
        return alg


# --- decoding ----------------------------------------------------------------------------------

_SHOWN_CHARS: Final = 40  # how much of a peer-supplied value an error message quotes


def _show(value: object) -> str:
    """A peer-supplied value for an error message, cut short: these messages end up in audits."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _loads(data: bytes, what: str, *, top_tag: bool = False) -> Any:
    """Decode exactly one CBOR item with the restricted decoder; every failure is "malformed"."""
    try:
        # Integer keys: COSE header labels. No tag but the outer one, duplicate keys refused
        # (two readers could otherwise disagree on a header), nesting bounded.
        return cbor_strict.loads(
            data, max_size=MAX_MESSAGE_SIZE, max_depth=MAX_DEPTH, int_keys=True, top_tag=top_tag
        )
    except cbor_strict.CborError as exc:
        raise CoseError("malformed", f"{what}: not accepted CBOR ({exc})") from exc


def _check_labels(header: Mapping[Any, Any], bucket: str) -> None:
    for label in header:
        # bool is an int subclass and True == 1: refuse it rather than read it as alg.
        if type(label) is not int and type(label) is not str:
            raise CoseError(
                "malformed", f"{bucket} header: label {_show(label)} is not an int or tstr"
            )


def _split(data: bytes, *, require_tag: bool) -> Sign1Generic:
    """Decode the outer structure and both header maps; checks shape and types only."""
    item = _loads(data, "COSE_Sign1", top_tag=True)
    if isinstance(item, cbor_strict.Tagged):
        if item.tag != COSE_SIGN1_TAG:
            raise CoseError("bad-tag", f"CBOR tag {item.tag}, expected {COSE_SIGN1_TAG}")
        item = item.value
    elif require_tag:
        raise CoseError("bad-tag", f"not tagged: a COSE_Sign1 needs CBOR tag {COSE_SIGN1_TAG}")
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise CoseError("malformed", "COSE_Sign1 must be a 4-element array")
    protected, unprotected, payload, signature = item
    if type(protected) is not bytes:
        raise CoseError("malformed", "protected header must be a bstr")
    if not isinstance(unprotected, Mapping):
        raise CoseError("malformed", "unprotected header must be a map")
    if payload is None:
        raise CoseError("malformed", "payload is nil: detached payloads are not supported")
    if type(payload) is not bytes:
        raise CoseError("malformed", "payload must be a bstr")
    if type(signature) is not bytes:
        raise CoseError("malformed", "signature must be a bstr")
    protected_map = _loads(protected, "protected header") if protected else {}
    if not isinstance(protected_map, Mapping):
        raise CoseError("malformed", "protected header must encode a map")
    _check_labels(protected_map, "protected")
    _check_labels(unprotected, "unprotected")
    # RFC 9052 §3: a label must not be in both buckets; refuse rather than pick one.
    both = protected_map.keys() & unprotected.keys()
    if both:
        raise CoseError(
            "malformed", f"labels {_show(sorted(both, key=repr))} in both header buckets"
        )
    return Sign1Generic(
        protected=protected,
        protected_map=protected_map,
        unprotected=unprotected,
        payload=payload,
        signature=signature,
    )


def decode_sign1_generic(data: bytes, *, require_tag: bool = True) -> Sign1Generic:
    """Decode any COSE_Sign1 with an attached payload; nothing is verified yet.

    With ``require_tag=False`` an untagged message is accepted (its type known from context,
    RFC 9052 §2); a tag other than 18 is always refused ("bad-tag").
    """
    return _split(data, require_tag=require_tag)


def decode_envelope(data: bytes) -> Sign1:
    """Decode an Armoire envelope, enforcing the PROTOCOL.md profile; nothing is verified yet.

    Raises `CoseError`: "malformed", "bad-tag" (tag missing or not 18), "bad-alg", "bad-kid".
    Extra labels in the unprotected header are tolerated and ignored.
    """
    msg = _split(data, require_tag=True)
    header = msg.protected_map
    if HDR_ALG not in header:
        raise CoseError("bad-alg", "protected header: no alg (label 1)")
    alg = header[HDR_ALG]
    if type(alg) is not int or alg not in ACCEPTED_ALGS:
        raise CoseError(
            "bad-alg", f"protected header: alg {_show(alg)} is not EdDSA (-8) or Ed25519 (-19)"
        )
    if HDR_KID not in header:
        raise CoseError("bad-kid", "protected header: no kid (label 4)")
    kid = header[HDR_KID]
    if type(kid) is not bytes or len(kid) != KID_SIZE:
        shown = f"{len(kid)} bytes" if type(kid) is bytes else type(kid).__name__
        raise CoseError(
            "bad-kid", f"protected header: kid must be a {KID_SIZE}-byte bstr, not {shown}"
        )
    extra = header.keys() - {HDR_ALG, HDR_KID}
    if extra:
        raise CoseError(
            "malformed",
            f"protected header: labels {_show(sorted(extra, key=repr))} beyond alg and kid",
        )
    if len(msg.signature) != SIGNATURE_SIZE:
        raise CoseError(
            "malformed",
            f"signature is {len(msg.signature)} bytes, an Ed25519 signature is {SIGNATURE_SIZE}",
        )
    return Sign1(
        protected=msg.protected, alg=alg, kid=kid, payload=msg.payload, signature=msg.signature
    )


# --- verifying ---------------------------------------------------------------------------------


def _verify_ed25519(
    key: Ed25519PublicKey, signature: bytes, protected: bytes, payload: bytes, aad: bytes
) -> None:
    try:
        key.verify(signature, sig_structure(protected, payload, aad))
    except InvalidSignature as exc:
        raise CoseError("bad-signature", "Ed25519 signature does not verify") from exc


def verify(msg: Sign1, public_key: Ed25519PublicKey) -> None:
    """Check an envelope's signature with the key its kid names; raises "bad-signature"."""
    _verify_ed25519(public_key, msg.signature, msg.protected, msg.payload, b"")


def verify_generic(msg: Sign1Generic, key: PublicKeyTypes, external_aad: bytes = b"") -> None:
    """Check a generic COSE_Sign1's signature; only EdDSA with an Ed25519 key is supported.

    Raises "bad-alg" for another algorithm, or for an Ed448 (or any non-Ed25519) key: such a key
    is never used as if it were Ed25519. Raises "bad-signature" if the signature does not verify.
    """
    alg = msg.alg
    if type(alg) is not int or alg not in ACCEPTED_ALGS:
        raise CoseError(
            "bad-alg", f"alg {_show(alg)} is not supported, only EdDSA (-8) / Ed25519 (-19)"
        )
    match key:
        case Ed25519PublicKey():
            _verify_ed25519(key, msg.signature, msg.protected, msg.payload, external_aad)
        case Ed448PublicKey():
            raise CoseError("bad-alg", "EdDSA with an Ed448 key is not supported, only Ed25519")
        case _:
            raise CoseError("bad-alg", f"{type(key).__name__} keys are not supported for EdDSA")


# --- signing -----------------------------------------------------------------------------------


def _protected_header(kid: bytes) -> bytes:
    if len(kid) != KID_SIZE:
        raise LocalProtocolError(f"kid must be {KID_SIZE} bytes, got {len(kid)}")
    # Canonical CBOR (RFC 8949 §4.2.1, keys sorted): a2 01 27 04 48 <kid>.
    return cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_KID: kid}, canonical=True)


def _assemble(protected: bytes, payload: bytes, private_key: Ed25519PrivateKey) -> bytes:
    signature = private_key.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


def sign(payload: bytes, private_key: Ed25519PrivateKey, kid: bytes) -> bytes:
    """Sign ``payload`` into a tagged envelope: protected ``{1: -8, 4: kid}``, unprotected ``{}``.

    ``kid`` must be `kid_of` the key's public half; use `Signer` to sign repeatedly.
    """
    if type(payload) is not bytes:
        raise LocalProtocolError(f"payload must be bytes, not {type(payload).__name__}")
    return _assemble(_protected_header(kid), payload, private_key)


class Signer:
    """Signs envelopes with one private key; the protected header is encoded once, here."""

    __slots__ = ("_key", "_protected", "kid", "public_raw")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_raw: bytes = private_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self.kid: bytes = kid_of(self.public_raw)
        self._protected = _protected_header(self.kid)

    def sign(self, payload: bytes) -> bytes:
        """Sign ``payload`` (the CBOR-encoded body) into a tagged COSE_Sign1 envelope."""
        if type(payload) is not bytes:
            raise LocalProtocolError(f"payload must be bytes, not {type(payload).__name__}")
        return _assemble(self._protected, payload, self._key)

    def __repr__(self) -> str:
        # Never show the key; the kid is what identifies it in logs.
        return f"Signer(kid={self.kid.hex()})"

"""The COSE_Sign1 envelope: our own round trips, crafted failures, third-party vectors, fuzzing."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import example, given
from hypothesis import strategies as st

from agent.security.cose import (
    ALG_ED25519,
    ALG_EDDSA,
    COSE_SIGN1_TAG,
    HDR_ALG,
    HDR_KID,
    KID_SIZE,
    MAX_MESSAGE_SIZE,
    SIGNATURE_SIZE,
    CoseError,
    LocalProtocolError,
    Sign1,
    Sign1Generic,
    Signer,
    decode_envelope,
    decode_sign1_generic,
    kid_of,
    sig_structure,
    sign,
    verify,
    verify_generic,
)

# shared/ sits beside the repository checkout (CI copies it there).
VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"

# RFC 8032 §7.1 TEST 1 key, also the Ed25519 key of the cose-wg vectors.
SEED_HEX = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
PUB_HEX = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"

# The files of vectors/cose/ and what the README says each must do.
EDDSA_PASS = [
    "eddsa-examples/eddsa-sig-01.json",
    "countersign/signed1-01.json",
    "countersign/signed1-02.json",
    "countersign1/signed1-01.json",
]
ED448 = "eddsa-examples/eddsa-sig-02.json"
ES256_PASS = [f"es256/sign1-tests/sign-pass-0{i}.json" for i in (1, 2, 3)]
ES256_FAIL = {
    "es256/sign1-tests/sign-fail-01.json": "bad-tag",
    "es256/sign1-tests/sign-fail-02.json": "bad-signature",
    "es256/sign1-tests/sign-fail-03.json": "bad-alg",
    "es256/sign1-tests/sign-fail-04.json": "bad-alg",
    "es256/sign1-tests/sign-fail-06.json": "bad-signature",
    "es256/sign1-tests/sign-fail-07.json": "bad-signature",
}
ALL_COSE_VECTORS = [*EDDSA_PASS, ED448, *ES256_PASS, *ES256_FAIL]
# Git blob SHA-1s from vectors/README.md: the copies are byte-for-byte the upstream files.
BLOB_SHA1 = {
    "eddsa-examples/eddsa-sig-01.json": "b7061c59033ee5b0c91fce2c08c946b3055bf93e",
    "eddsa-examples/eddsa-sig-02.json": "ee7d8328918516b5041482ee7fb73e122dcaaab7",
    "countersign/signed1-01.json": "7f343aa08105304e87bba06fecb17afd78f18532",
    "countersign/signed1-02.json": "c50d2ac211887041acf35b69df90ce392c3174e8",
    "countersign1/signed1-01.json": "925423986ee4a75692bffceb3836a948f2a74e42",
}

ES256 = -7  # IANA COSE Algorithms: ECDSA w/ SHA-256


# --- helpers -----------------------------------------------------------------------------------


def _vector_path(relative: str) -> Path:
    if not VECTORS.is_dir():
        pytest.fail(
            f"test vectors not found at {VECTORS}: the shared/ folder must sit beside the "
            "repository checkout (shared/vectors/...)"
        )
    path = VECTORS / relative
    if not path.exists():
        pytest.fail(f"test vector {path} is missing")
    return path


def _load_json(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_vector_path(relative).read_text())
    return data


def _cose_vector(relative: str) -> dict[str, Any]:
    return _load_json(f"cose/{relative}")


def _message(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["output"]["cbor"])


def _external_aad(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["input"]["sign0"].get("external", ""))


def _ed25519_key(vector: dict[str, Any]) -> Ed25519PublicKey:
    jwk = vector["input"]["sign0"]["key"]
    assert jwk["crv"] == "Ed25519"
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(jwk["x_hex"]))


def _b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _es256_key(vector: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    jwk = vector["input"]["sign0"]["key"]
    assert jwk["crv"] == "P-256"
    numbers = ec.EllipticCurvePublicNumbers(
        _b64url_int(jwk["x"]), _b64url_int(jwk["y"]), ec.SECP256R1()
    )
    return numbers.public_key()


def _verify_es256(
    msg: Sign1Generic, key: ec.EllipticCurvePublicKey, external_aad: bytes = b""
) -> None:
    """A test-only ES256 verifier on top of the generic layer (the agent only does EdDSA)."""
    if msg.alg != ES256:
        raise CoseError("bad-alg", f"alg {msg.alg!r} is not ES256")
    if len(msg.signature) != 64:
        raise CoseError("bad-signature", "an ES256 signature is r || s, 64 bytes")
    # COSE carries ECDSA signatures as raw r || s (RFC 9053 §2.1); cryptography wants DER.
    r = int.from_bytes(msg.signature[:32], "big")
    s = int.from_bytes(msg.signature[32:], "big")
    try:
        key.verify(
            encode_dss_signature(r, s),
            sig_structure(msg.protected, msg.payload, external_aad),
            ec.ECDSA(SHA256()),
        )
    except InvalidSignature as exc:
        raise CoseError("bad-signature", "ES256 signature does not verify") from exc


def _rfc_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED_HEX))


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _pub_of(signer: Signer) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(signer.public_raw)


def _envelope(
    protected: Any = None,
    unprotected: Any = None,
    payload: Any = b"body",
    signature: Any = b"\x00" * 64,
    tag: int | None = COSE_SIGN1_TAG,
) -> bytes:
    """Craft a COSE_Sign1 by hand; protected defaults to a valid profile header."""
    if protected is None:
        protected = cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_KID: b"k" * KID_SIZE})
    if unprotected is None:
        unprotected = {}
    body = [protected, unprotected, payload, signature]
    return cbor2.dumps(body if tag is None else cbor2.CBORTag(tag, body))


def _reason(data: bytes) -> str:
    with pytest.raises(CoseError) as info:
        decode_envelope(data)
    return info.value.reason


# --- our own envelopes -------------------------------------------------------------------------


def test_sign__round_trip_verifies() -> None:
    """A gateway's own telemetry would be rejected by the central post."""
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    envelope = signer.sign(b"\xa1avb1")
    msg = decode_envelope(envelope)
    assert msg.payload == b"\xa1avb1"
    assert msg.kid == signer.kid == kid_of(signer.public_raw)
    assert msg.alg == ALG_EDDSA
    verify(msg, key.public_key())


def test_sign__wire_layout_matches_protocol() -> None:
    """Another implementation of PROTOCOL.md could not read our envelopes."""
    key = _rfc_key()
    kid = hashlib.sha256(bytes.fromhex(PUB_HEX)).digest()[:8]
    payload = b"\xa1\x61v\x01"
    protected = bytes([0xA2, 0x01, 0x27, 0x04, 0x48]) + kid  # {1: -8, 4: h'<kid>'}
    to_be_signed = (
        b"\x84\x6aSignature1"
        + bytes([0x40 | len(protected)])
        + protected
        + b"\x40"
        + bytes([0x40 | len(payload)])
        + payload
    )
    expected = (
        b"\xd2\x84"
        + bytes([0x40 | len(protected)])
        + protected
        + b"\xa0"
        + bytes([0x40 | len(payload)])
        + payload
        + b"\x58\x40"
        + key.sign(to_be_signed)
    )
    assert sign(payload, key, kid) == expected
    assert Signer(key).sign(payload) == expected
    assert sig_structure(protected, payload) == to_be_signed


def test_sign__large_payload_round_trip() -> None:
    """A big Birth message (every point of a cabinet) would not survive signing."""
    signer = Signer(Ed25519PrivateKey.generate())
    payload = bytes(range(256)) * 400  # 100 KiB: multi-byte bstr length heads
    msg = decode_envelope(signer.sign(payload))
    assert msg.payload == payload
    verify(msg, _pub_of(signer))


def test_decode_envelope__accepts_alg_ed25519() -> None:
    """A central post using the RFC 9864 alg -19 would have its commands dropped."""
    key = _rfc_key()
    kid = kid_of(_raw(key.public_key()))
    protected = cbor2.dumps({HDR_ALG: ALG_ED25519, HDR_KID: kid})
    payload = b"\xa0"
    signature = key.sign(sig_structure(protected, payload))
    msg = decode_envelope(_envelope(protected=protected, payload=payload, signature=signature))
    assert msg.alg == ALG_ED25519
    verify(msg, key.public_key())


def test_decode_envelope__ignores_extra_unprotected_labels() -> None:
    """A harmless unprotected header from another implementation would drop its messages."""
    signer = Signer(_rfc_key())
    item = cbor2.loads(signer.sign(b"x"))
    protected, _, payload, signature = item.value
    data = _envelope(protected, {33: "note"}, payload, signature)
    verify(decode_envelope(data), _pub_of(signer))


def test_verify__wrong_key_is_bad_signature() -> None:
    """A message signed by an impostor would be accepted."""
    envelope = Signer(Ed25519PrivateKey.generate()).sign(b"x")
    with pytest.raises(CoseError) as info:
        verify(decode_envelope(envelope), Ed25519PrivateKey.generate().public_key())
    assert info.value.reason == "bad-signature"


def test_verify__tampered_payload_is_bad_signature() -> None:
    """A command altered in transit would be executed."""
    key = Ed25519PrivateKey.generate()
    msg = decode_envelope(Signer(key).sign(b"value=1"))
    forged = Sign1(
        protected=msg.protected,
        alg=msg.alg,
        kid=msg.kid,
        payload=b"value=9",
        signature=msg.signature,
    )
    with pytest.raises(CoseError) as info:
        verify(forged, key.public_key())
    assert info.value.reason == "bad-signature"


def test_kid_of__is_sha256_prefix() -> None:
    """Gateways and the central post would disagree on which key signed a message."""
    raw = bytes.fromhex(PUB_HEX)
    assert kid_of(raw) == hashlib.sha256(raw).digest()[:8]
    with pytest.raises(LocalProtocolError):
        kid_of(raw[:31])


def test_sign__rejects_bad_kid_length() -> None:
    """A wrong kid would make every message unverifiable at the central post."""
    with pytest.raises(LocalProtocolError, match="kid"):
        sign(b"x", _rfc_key(), b"short")


def test_sign1__validates_when_built() -> None:
    """A Sign1 built by hand with impossible fields would slip through unnoticed."""
    with pytest.raises(LocalProtocolError, match="alg"):
        Sign1(protected=b"", alg=-7, kid=b"k" * 8, payload=b"", signature=b"s" * 64)
    with pytest.raises(LocalProtocolError, match="kid"):
        Sign1(protected=b"", alg=-8, kid=b"k" * 7, payload=b"", signature=b"s" * 64)
    with pytest.raises(LocalProtocolError, match="signature"):
        Sign1(protected=b"", alg=-8, kid=b"k" * 8, payload=b"", signature=b"s" * 63)


def test_signer__repr_hides_the_key() -> None:
    """The private key could end up in a log line."""
    signer = Signer(_rfc_key())
    assert repr(signer) == f"Signer(kid={signer.kid.hex()})"
    assert SEED_HEX not in repr(signer)


# --- each CoseError reason on a crafted message ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "malformed", id="empty"),
        pytest.param(b"\xff\x00", "malformed", id="not-cbor"),
        pytest.param(_envelope() + b"\x00", "malformed", id="trailing-byte"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])), "malformed", id="3-items"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(18, {1: 2})), "malformed", id="not-array"),
        pytest.param(_envelope(protected={1: -8}), "malformed", id="protected-not-bstr"),
        pytest.param(_envelope(protected=b"\x01"), "malformed", id="protected-not-map"),
        pytest.param(_envelope(protected=b"\xa1\x01"), "malformed", id="protected-truncated"),
        pytest.param(
            _envelope(protected=cbor2.dumps({1: -8, 4: b"k" * 8}) + b"\x00"),
            "malformed",
            id="protected-trailing",
        ),
        pytest.param(
            _envelope(protected=bytes.fromhex("a3012704488181818181818181") + b"\x01\x27"),
            "malformed",
            id="protected-duplicate-label",
        ),
        pytest.param(
            _envelope(protected=cbor2.dumps({1: -8, 4: b"k" * 8, 3: 0})),
            "malformed",
            id="protected-extra-label",
        ),
        pytest.param(
            _envelope(protected=cbor2.dumps({True: -8, 4: b"k" * 8})),
            "malformed",
            id="protected-bool-label",
        ),
        pytest.param(_envelope(unprotected=[]), "malformed", id="unprotected-not-map"),
        pytest.param(_envelope(unprotected={1: -8}), "malformed", id="label-in-both-buckets"),
        pytest.param(_envelope(payload=None), "malformed", id="detached-payload"),
        pytest.param(_envelope(payload="text"), "malformed", id="payload-tstr"),
        pytest.param(_envelope(signature=b"\x00" * 63), "malformed", id="signature-63"),
        pytest.param(_envelope(signature=[b"\x00" * 64]), "malformed", id="signature-not-bstr"),
        pytest.param(_envelope(tag=None), "bad-tag", id="untagged"),
        pytest.param(_envelope(tag=998), "bad-tag", id="tag-998"),
        pytest.param(_envelope(tag=98), "bad-tag", id="tag-cose-sign"),
        pytest.param(_envelope(protected=b""), "bad-alg", id="protected-empty"),
        pytest.param(_envelope(protected=cbor2.dumps({4: b"k" * 8})), "bad-alg", id="no-alg"),
        pytest.param(
            _envelope(protected=cbor2.dumps({1: -999, 4: b"k" * 8})), "bad-alg", id="alg-999"
        ),
        pytest.param(
            _envelope(protected=cbor2.dumps({1: -7, 4: b"k" * 8})), "bad-alg", id="alg-es256"
        ),
        pytest.param(
            _envelope(protected=cbor2.dumps({1: "EdDSA", 4: b"k" * 8})), "bad-alg", id="alg-tstr"
        ),
        pytest.param(_envelope(protected=cbor2.dumps({1: -8})), "bad-kid", id="no-kid"),
        pytest.param(
            _envelope(protected=cbor2.dumps({1: -8, 4: b"k" * 7})), "bad-kid", id="kid-7-bytes"
        ),
        pytest.param(
            _envelope(protected=cbor2.dumps({1: -8, 4: "kkkkkkkk"})), "bad-kid", id="kid-tstr"
        ),
    ],
)
def test_decode_envelope__rejects_with_reason(data: bytes, reason: str) -> None:
    """A broken or foreign message would be accepted, or audited under the wrong reason."""
    assert _reason(data) == reason


def test_decode_envelope__reason_messages_are_precise() -> None:
    """An operator reading the audit log could not tell what was wrong with a message."""
    data = _envelope(protected=cbor2.dumps({1: -999, 4: b"k" * 8}))
    with pytest.raises(CoseError) as info:
        decode_envelope(data)
    assert info.value.message == "protected header: alg -999 is not EdDSA (-8) or Ed25519 (-19)"
    assert str(info.value).startswith("bad-alg: ")


def test_decode_envelope__rejects_oversized_input() -> None:
    """A peer could make the agent decode an arbitrarily large message."""
    data = _envelope(payload=b"\x00" * MAX_MESSAGE_SIZE)
    assert _reason(data) == "malformed"


def test_decode_envelope__rejects_deep_nesting() -> None:
    """A small, deeply nested message could crash the receiver with a RecursionError."""
    deep = b"\x81" * 100_000 + b"\x00"
    assert _reason(_envelope()[:-65] + deep) == "malformed"
    assert _reason(b"\xd2" + deep) == "malformed"
    assert _reason(b"\x9f" * 200_000) == "malformed"


def test_decode_envelope__rejects_absurd_lengths() -> None:
    """A header announcing a huge bstr or array could exhaust memory."""
    for head in ("5bffffffffffffffff", "9bffffffffffffffff", "bbffffffffffffffff", "5a7fffffff"):
        assert _reason(bytes.fromhex("d284" + head)) == "malformed"


# --- RFC 8032 Ed25519 vectors ------------------------------------------------------------------


def _rfc8032_vectors() -> list[dict[str, str]]:
    vectors: list[dict[str, str]] = _load_json("ed25519-rfc8032.json")["vectors"]
    return vectors


def test_rfc8032__all_vectors() -> None:
    """Our Ed25519 (through cryptography) would not be the one other implementations use."""
    vectors = _rfc8032_vectors()
    assert [v["name"] for v in vectors] == [
        "TEST 1",
        "TEST 2",
        "TEST 3",
        "TEST 1024",
        "TEST SHA(abc)",
    ]
    for vector in vectors:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key"]))
        public = key.public_key()
        message = bytes.fromhex(vector["message"])
        signature = bytes.fromhex(vector["signature"])
        assert _raw(public).hex() == vector["public_key"], vector["name"]
        assert key.sign(message) == signature, vector["name"]
        public.verify(signature, message)
        for bit in (0, 255, 511):
            flipped = bytearray(signature)
            flipped[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(InvalidSignature):
                public.verify(bytes(flipped), message)


def test_rfc8032__signer_uses_the_raw_key() -> None:
    """The kid we publish would not match the public key others derive from our seed."""
    vector = _rfc8032_vectors()[0]
    signer = Signer(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key"])))
    assert signer.public_raw.hex() == vector["public_key"]
    assert signer.kid == hashlib.sha256(bytes.fromhex(vector["public_key"])).digest()[:8]


# --- cose-wg vectors ---------------------------------------------------------------------------


def test_vectors__directory_holds_exactly_the_listed_files() -> None:
    """A vector added to shared/ would go untested without anyone noticing."""
    root = _vector_path("cose")
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*.json"))
    assert found == sorted(ALL_COSE_VECTORS)


@pytest.mark.parametrize("relative", sorted(BLOB_SHA1))
def test_vectors__files_are_the_upstream_bytes(relative: str) -> None:
    """A locally edited vector would make these tests prove nothing."""
    content = _vector_path(f"cose/{relative}").read_bytes()
    blob = hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()
    assert blob == BLOB_SHA1[relative]


def test_cose_vector__eddsa_sig_01_sig_structure_and_signature() -> None:
    """Our Sig_structure would differ from the COSE working group's, so no peer could verify."""
    vector = _cose_vector("eddsa-examples/eddsa-sig-01.json")
    msg = decode_sign1_generic(_message(vector))
    assert msg.payload == vector["input"]["plaintext"].encode()
    assert msg.protected_map == {1: -8, 3: 0}
    assert msg.unprotected == {4: b"11"}
    assert msg.alg == ALG_EDDSA
    to_be_signed = sig_structure(msg.protected, msg.payload, _external_aad(vector))
    assert to_be_signed.hex().upper() == vector["intermediates"]["ToBeSign_hex"]
    key = _ed25519_key(vector)
    assert key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == PUB_HEX
    verify_generic(msg, key)


@pytest.mark.parametrize("relative", EDDSA_PASS)
def test_cose_vector__eddsa_main_signature_verifies(relative: str) -> None:
    """A valid Ed25519 COSE_Sign1 from another implementation would be rejected."""
    vector = _cose_vector(relative)
    msg = decode_sign1_generic(_message(vector))
    verify_generic(msg, _ed25519_key(vector), _external_aad(vector))


@pytest.mark.parametrize("relative", EDDSA_PASS)
def test_cose_vector__eddsa_tampered_payload_is_rejected(relative: str) -> None:
    """The generic verifier would accept a message whose payload was changed."""
    vector = _cose_vector(relative)
    msg = decode_sign1_generic(_message(vector))
    tampered = Sign1Generic(
        protected=msg.protected,
        protected_map=msg.protected_map,
        unprotected=msg.unprotected,
        payload=msg.payload + b"!",
        signature=msg.signature,
    )
    with pytest.raises(CoseError) as info:
        verify_generic(tampered, _ed25519_key(vector))
    assert info.value.reason == "bad-signature"


def test_cose_vector__ed448_is_rejected_as_unsupported() -> None:
    """An Ed448 key could be mistaken for an Ed25519 one."""
    vector = _cose_vector(ED448)
    jwk = vector["input"]["sign0"]["key"]
    assert jwk["crv"] == "Ed448"
    msg = decode_sign1_generic(_message(vector))
    assert msg.alg == ALG_EDDSA
    assert len(msg.signature) == 114  # RFC 8032 §5.2.6: an Ed448 signature
    key = Ed448PublicKey.from_public_bytes(bytes.fromhex(jwk["x_hex"]))
    with pytest.raises(CoseError) as info:
        verify_generic(msg, key)
    assert info.value.reason == "bad-alg"
    assert "Ed448" in info.value.message


@pytest.mark.parametrize("relative", ES256_PASS)
def test_cose_vector__es256_pass(relative: str) -> None:
    """The generic layer (decode, Sig_structure) would disagree with the COSE reference suite."""
    vector = _cose_vector(relative)
    untagged = vector["input"].get("failures", {}).get("RemoveCBORTag") == 1
    msg = decode_sign1_generic(_message(vector), require_tag=not untagged)
    assert msg.payload == vector["input"]["plaintext"].encode()
    _verify_es256(msg, _es256_key(vector), _external_aad(vector))
    to_be_signed = sig_structure(msg.protected, msg.payload, _external_aad(vector))
    assert to_be_signed.hex().upper() == vector["intermediates"]["ToBeSign_hex"]
    # An Ed25519-only verifier refuses ES256 as an algorithm, before any key is used.
    with pytest.raises(CoseError) as info:
        verify_generic(msg, _ed25519_key(_cose_vector(EDDSA_PASS[0])))
    assert info.value.reason == "bad-alg"


def test_cose_vector__untagged_needs_require_tag_false() -> None:
    """An untagged message would pass where a tag is required (as in our envelope)."""
    data = _message(_cose_vector("es256/sign1-tests/sign-pass-03.json"))
    with pytest.raises(CoseError) as info:
        decode_sign1_generic(data)
    assert info.value.reason == "bad-tag"


def test_cose_vector__empty_protected_map_is_normalised() -> None:
    """sign-pass-01: a sender that encoded an empty protected map as h'A0' could not be verified."""
    vector = _cose_vector("es256/sign1-tests/sign-pass-01.json")
    msg = decode_sign1_generic(_message(vector))
    assert msg.protected == b"\xa0"
    assert sig_structure(msg.protected, msg.payload) == sig_structure(b"", msg.payload)


@pytest.mark.parametrize(("relative", "reason"), sorted(ES256_FAIL.items()))
def test_cose_vector__es256_fail(relative: str, reason: str) -> None:
    """A message the COSE reference suite marks as forged or broken would be accepted."""
    vector = _cose_vector(relative)
    assert vector["fail"] is True

    def decode_and_verify() -> None:
        msg = decode_sign1_generic(_message(vector))
        _verify_es256(msg, _es256_key(vector), _external_aad(vector))

    with pytest.raises(CoseError) as info:
        decode_and_verify()
    assert info.value.reason == reason


@pytest.mark.parametrize("relative", ALL_COSE_VECTORS)
def test_cose_vector__strict_envelope_rejects(relative: str) -> None:
    """A message outside the PROTOCOL.md profile (kid unprotected, no tag...) would be accepted."""
    with pytest.raises(CoseError):
        decode_envelope(_message(_cose_vector(relative)))


# --- property tests ----------------------------------------------------------------------------

_cbor_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=80)
    | st.text(max_size=10)
)
_cbor_values = st.recursive(
    _cbor_leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.integers(-30, 30) | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)
_almost_envelopes = st.builds(
    lambda tag, items: cbor2.dumps(cbor2.CBORTag(tag, items) if tag is not None else items),
    st.sampled_from([None, 18, 18, 18, 98, 0, 1]),
    st.lists(
        _cbor_values | st.builds(cbor2.dumps, _cbor_values) | st.binary(min_size=64, max_size=64),
        min_size=3,
        max_size=5,
    ),
)


@given(st.binary(max_size=300) | _almost_envelopes)
@example(b"\xd2\x84\x40\xa0\x40\x58\x40" + b"\x00" * 64)
@example(b"\xc5\x82\x1b\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # bigfloat, huge exponent
@example(b"\xd8\x1c\x81\xd8\x1d\x00")  # a list that contains itself (value sharing)
@example(b"\xd2\xd8\x1c\x84\x40\xa0\x40\xd8\x1d\x00")
@example(bytes.fromhex("d90100824361626364d81900"))  # string references
def test_decode__arbitrary_bytes_raise_only_cose_error(data: bytes) -> None:
    """A hostile or corrupted message could crash the receiver instead of being dropped."""
    for decode in (decode_envelope, decode_sign1_generic):
        try:
            decode(data)
        except CoseError:
            pass


_VALID_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED_HEX))
_VALID = Signer(_VALID_KEY).sign(b"\xa3avb\x01bgwecab-1cseq\x18\x2a")


@given(st.integers(0, len(_VALID) - 1), st.integers(1, 255))
def test_decode__any_single_byte_change_is_caught(position: int, mask: int) -> None:
    """A corrupted or altered envelope could be accepted as genuine."""
    data = bytearray(_VALID)
    data[position] ^= mask
    try:
        msg = decode_envelope(bytes(data))
    except CoseError:
        return
    with pytest.raises(CoseError) as info:
        verify(msg, _VALID_KEY.public_key())
    assert info.value.reason == "bad-signature"


@given(st.binary(max_size=2000))
def test_sign__any_payload_round_trips(payload: bytes) -> None:
    """Some body sizes would produce envelopes that do not decode or verify."""
    msg = decode_envelope(Signer(_VALID_KEY).sign(payload))
    assert msg.payload == payload
    assert len(msg.signature) == SIGNATURE_SIZE
    verify(msg, _VALID_KEY.public_key())


def test_decode__every_position_flipped_is_caught() -> None:
    """Some byte of the envelope could be altered without the receiver noticing."""
    public = _VALID_KEY.public_key()
    for position in range(len(_VALID)):
        for mask in (0x01, 0x80, 0xFF):
            data = bytearray(_VALID)
            data[position] ^= mask
            try:
                msg = decode_envelope(bytes(data))
            except CoseError:
                continue
            with pytest.raises(CoseError):
                verify(msg, public)

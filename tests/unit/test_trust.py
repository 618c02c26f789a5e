"""The trust store: provisioning, signed updates from the root key, and every way one is refused.

Envelopes are also built here with cbor2 + cryptography directly (``sign1``), so that the store is
held to PROTOCOL.md rather than to the agent's own signer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from agent.security.trust import (
    MAX_KEYS,
    MAX_TRUST_UPDATE_SIZE,
    NO_SERIAL,
    TRUST_FILE,
    TRUST_ROOT,
    TRUST_SERIAL_FILE,
    TrustedKey,
    TrustError,
    TrustStore,
    parse_trust_update,
    sign_trust_update,
)
from agent.uplink import MAX_PACKET_SIZE

GW = "cab-0001"
T0 = 1_700_000_000_000  # ms


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def kid(key: Ed25519PrivateKey) -> bytes:
    return hashlib.sha256(raw(key)).digest()[:8]


def sign1(key: Ed25519PrivateKey, payload: bytes, *, kid_: bytes | None = None) -> bytes:
    """A tagged COSE_Sign1 per PROTOCOL.md, built without agent code."""
    protected = cbor2.dumps({1: -8, 4: kid(key) if kid_ is None else kid_})
    signature = key.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))


def body(serial: int, keys: list[dict[str, Any]], *, gw: str = "*") -> dict[str, Any]:
    return {"v": 1, "gw": gw, "iat": T0, "serial": serial, "keys": keys}


def entry(key: Ed25519PrivateKey, *roles: str, **extra: Any) -> dict[str, Any]:
    return {"kid": kid(key), "pub": raw(key), "roles": list(roles or ("operator",)), **extra}


@pytest.fixture
def root() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def operator() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def data_dir(tmp_path: Path, root: Ed25519PrivateKey) -> Path:
    """A gateway data directory provisioned with the root key only."""
    data = tmp_path / "data"
    data.mkdir()
    pem = root.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (data / TRUST_ROOT).write_bytes(pem)
    return data


def refused(store: TrustStore, data: bytes) -> TrustError:
    with pytest.raises(TrustError) as info:
        store.verify_update(data)
    return info.value


# ------------------------------------------------------------------ loading


def test_load__provisioned_root_only_gives_an_empty_store(
    data_dir: Path, root: Ed25519PrivateKey
) -> None:
    """A newly provisioned gateway starts, trusts no command key, and takes the first update."""
    store = TrustStore.load(data_dir, gw=GW)
    assert store.root_kid == kid(root)
    assert store.serial == NO_SERIAL
    assert dict(store.keys) == {}
    assert store.key(kid(root)) is None


def test_load__reads_and_verifies_trust_cose(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """After a restart the gateway trusts exactly the keys of the last update it accepted."""
    (data_dir / TRUST_FILE).write_bytes(
        sign1(root, cbor2.dumps(body(7, [entry(operator, "operator", "admin", exp=T0 + 10)])))
    )
    store = TrustStore.load(data_dir, gw=GW)
    assert store.serial == 7
    assert store.iat_ms == T0
    key = store.key(kid(operator))
    assert key == TrustedKey(
        kid=kid(operator),
        public_raw=raw(operator),
        roles=frozenset({"operator", "admin"}),
        nbf_ms=None,
        exp_ms=T0 + 10,
    )
    assert store.public_key(kid(operator)) is store.public_key(kid(operator))  # built once
    message = b"x"
    store.public_key(kid(operator)).verify(operator.sign(message), message)


def test_load__missing_root_file_says_how_to_provision(tmp_path: Path) -> None:
    """A gateway set up without its root key stops with the file to install, not a traceback."""
    with pytest.raises(TrustError) as info:
        TrustStore.load(tmp_path, gw=GW)
    assert info.value.reason == "not-provisioned"
    assert str(tmp_path / TRUST_ROOT) in info.value.message
    assert "root public key" in info.value.message
    assert "provisioning" in info.value.message


def test_load__unreadable_root_file_is_refused(data_dir: Path) -> None:
    """A corrupted root key file is reported with its name, never half-trusted."""
    (data_dir / TRUST_ROOT).write_text("not a key\n", encoding="utf-8")
    with pytest.raises(TrustError) as info:
        TrustStore.load(data_dir, gw=GW)
    assert info.value.reason == "not-provisioned"
    assert TRUST_ROOT in info.value.message


def test_load__trust_file_edited_on_disk_is_refused(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """Someone adding a key to trust.cose on the gateway's disk does not get it trusted."""
    signed = bytearray(sign1(root, cbor2.dumps(body(1, [entry(operator)]))))
    signed[-70] ^= 0x01  # inside the payload
    (data_dir / TRUST_FILE).write_bytes(bytes(signed))
    with pytest.raises(TrustError) as info:
        TrustStore.load(data_dir, gw=GW)
    assert info.value.reason == "bad-signature"
    assert str(data_dir / TRUST_FILE) in info.value.message
    assert "delete it" in info.value.message


def test_load__trust_file_for_another_gateway_is_refused(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """A data directory copied from another cabinet does not bring that cabinet's keys."""
    (data_dir / TRUST_FILE).write_bytes(
        sign1(root, cbor2.dumps(body(1, [entry(operator)], gw="cab-0002")))
    )
    with pytest.raises(TrustError) as info:
        TrustStore.load(data_dir, gw=GW)
    assert info.value.reason == "wrong-gateway"


# ------------------------------------------------------------------ applying updates


def test_apply_update__higher_serial_is_persisted(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """A new key set from the central post survives a restart, and the old store is untouched."""
    store = TrustStore.load(data_dir, gw=GW)
    first = sign_trust_update(
        root, serial=3, keys=[(raw(operator), ["operator"], None, None)], iat_ms=T0
    )
    store3 = store.apply_update(first, data_dir=data_dir, now_ms=T0)
    assert (store3.serial, list(store3.keys)) == (3, [kid(operator)])
    assert (store.serial, dict(store.keys)) == (NO_SERIAL, {})

    other = Ed25519PrivateKey.generate()
    second = sign1(root, cbor2.dumps(body(4, [entry(other, "admin")], gw=GW)))
    store4 = store3.apply_update(second, data_dir=data_dir, now_ms=T0)
    assert list(store4.keys) == [kid(other)]  # a key left out of an update is no longer trusted

    reloaded = TrustStore.load(data_dir, gw=GW)
    assert reloaded == store4
    assert (data_dir / TRUST_FILE).read_bytes() == second  # stored exactly as received
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        [TRUST_FILE, TRUST_ROOT, TRUST_SERIAL_FILE]
    )  # no temp file


@pytest.mark.parametrize("serial", [2, 3], ids=["lower", "equal"])
def test_apply_update__serial_not_higher_is_a_replay(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey, serial: int
) -> None:
    """A recorded old trust update replayed by an attacker cannot bring back a revoked key."""
    store = TrustStore.load(data_dir, gw=GW).apply_update(
        sign1(root, cbor2.dumps(body(3, []))), data_dir=data_dir, now_ms=T0
    )
    before = (data_dir / TRUST_FILE).read_bytes()
    with pytest.raises(TrustError) as info:
        store.apply_update(
            sign1(root, cbor2.dumps(body(serial, [entry(operator)]))), data_dir=data_dir, now_ms=T0
        )
    assert info.value.reason == "replay"
    assert f"serial {serial} is not higher than the current 3" in info.value.message
    assert (data_dir / TRUST_FILE).read_bytes() == before


def test_load__lost_trust_file_still_refuses_older_updates(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """Losing trust.cose would let an attacker replay an old update listing a revoked key."""
    old = sign1(root, cbor2.dumps(body(3, [entry(operator)])))
    store = TrustStore.load(data_dir, gw=GW).apply_update(old, data_dir=data_dir, now_ms=T0)
    store.apply_update(sign1(root, cbor2.dumps(body(4, []))), data_dir=data_dir, now_ms=T0)
    (data_dir / TRUST_FILE).unlink()

    reloaded = TrustStore.load(data_dir, gw=GW)
    assert (reloaded.serial, dict(reloaded.keys)) == (4, {})
    error = refused(reloaded, old)
    assert (error.reason, error.authenticated) == ("replay", True)
    newer = sign1(root, cbor2.dumps(body(5, [entry(operator)])))
    assert reloaded.verify_update(newer).serial == 5


def test_load__older_trust_file_put_back_is_refused(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """A backup of trust.cose restored over a newer one would bring revoked keys back."""
    old = sign1(root, cbor2.dumps(body(3, [entry(operator)])))
    store = TrustStore.load(data_dir, gw=GW).apply_update(old, data_dir=data_dir, now_ms=T0)
    store.apply_update(sign1(root, cbor2.dumps(body(4, []))), data_dir=data_dir, now_ms=T0)
    (data_dir / TRUST_FILE).write_bytes(old)
    with pytest.raises(TrustError) as info:
        TrustStore.load(data_dir, gw=GW)
    assert info.value.reason == "replay"
    assert "below 4, the highest ever applied" in info.value.message


def test_verify_update__only_signed_refusals_are_authenticated(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """Junk on the trust topic would be audited one by one like a genuine refusal."""
    store = TrustStore.load(data_dir, gw=GW)
    assert refused(store, b"junk").authenticated is False
    assert refused(store, sign1(operator, cbor2.dumps(body(1, [])))).authenticated is False
    forged = sign1(operator, cbor2.dumps(body(1, [])), kid_=kid(root))
    assert refused(store, forged).authenticated is False
    bad_schema = sign1(root, cbor2.dumps({**body(1, []), "x": 1}))
    assert refused(store, bad_schema).authenticated is True
    other_gw = sign1(root, cbor2.dumps(body(1, [], gw="cab-9")))
    assert refused(store, other_gw).authenticated is True


def test_apply_update__first_update_may_have_serial_zero(
    data_dir: Path, root: Ed25519PrivateKey
) -> None:
    """A central post numbering from 0 can still provision a fresh gateway."""
    store = TrustStore.load(data_dir, gw=GW)
    assert store.verify_update(sign1(root, cbor2.dumps(body(0, [])))).serial == 0


def test_verify_update__operator_key_is_not_the_root(
    data_dir: Path, operator: Ed25519PrivateKey
) -> None:
    """A trusted command key cannot grant itself more keys: only the root signs trust updates.

    Decision: "unknown-kid" (the kid is not the root's; its signature is not even tried).
    """
    store = TrustStore.load(data_dir, gw=GW)
    error = refused(store, sign1(operator, cbor2.dumps(body(1, [entry(operator, "admin")]))))
    assert error.reason == "unknown-kid"
    assert kid(operator).hex() in error.message


def test_verify_update__root_kid_with_another_signature(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """Claiming the root's kid without its private key fails the signature check."""
    store = TrustStore.load(data_dir, gw=GW)
    forged = sign1(operator, cbor2.dumps(body(1, [entry(operator, "admin")])), kid_=kid(root))
    assert refused(store, forged).reason == "bad-signature"


def test_verify_update__every_tampered_byte_is_refused(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """No single corrupted byte of a trust update, wherever it is, gets through."""
    store = TrustStore.load(data_dir, gw=GW)
    good = sign1(root, cbor2.dumps(body(1, [entry(operator)])))
    assert store.verify_update(good).serial == 1
    for index in range(len(good)):
        tampered = bytearray(good)
        tampered[index] ^= 0x04
        with pytest.raises(TrustError):
            store.verify_update(bytes(tampered))


def test_verify_update__wrong_gateway(
    data_dir: Path, root: Ed25519PrivateKey, operator: Ed25519PrivateKey
) -> None:
    """Keys meant for another cabinet are not trusted here; "*" means every cabinet."""
    store = TrustStore.load(data_dir, gw=GW)
    error = refused(store, sign1(root, cbor2.dumps(body(1, [entry(operator)], gw="cab-0002"))))
    assert error.reason == "wrong-gateway"
    assert store.verify_update(sign1(root, cbor2.dumps(body(1, [], gw=GW)))).serial == 1


def test_verify_update__not_cose_is_a_bad_request(data_dir: Path) -> None:
    """Garbage on the trust topic is refused as a bad request, not as a signature problem."""
    store = TrustStore.load(data_dir, gw=GW)
    assert refused(store, b"\x00garbage").reason == "bad-request"


A, B = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
SCHEMA_CASES: list[Any] = [
    pytest.param({**body(1, []), "extra": 1}, "unknown keys 'extra'", id="unknown-key"),
    pytest.param({k: v for k, v in body(1, []).items() if k != "iat"}, "missing iat", id="no-iat"),
    pytest.param({**body(1, []), "v": 2}, "v must be 1", id="version"),
    pytest.param({**body(1, []), "serial": -1}, "serial must be a uint", id="negative-serial"),
    pytest.param({**body(1, []), "serial": True}, "serial must be a uint", id="bool-serial"),
    pytest.param({**body(1, []), "gw": "CAB 1"}, "gw must be a gateway id", id="gw-format"),
    pytest.param({**body(1, []), "keys": {}}, "keys must be an array", id="keys-not-array"),
    pytest.param(body(1, [entry(A), entry(A)]), "a kid is listed twice", id="duplicate-kid"),
    pytest.param(
        body(1, [{**entry(A), "kid": kid(B)}]), "is not SHA-256(pub)[:8]", id="kid-not-of-pub"
    ),
    pytest.param(
        body(1, [entry(A, "operator", "root")]), "unknown roles 'root'", id="unknown-role"
    ),
    pytest.param(body(1, [{**entry(A), "roles": []}]), "roles must be a non-empty", id="no-role"),
    pytest.param(
        body(1, [entry(A, "operator", "operator")]), "repeats a role", id="duplicate-role"
    ),
    pytest.param(body(1, [{**entry(A), "pub": raw(A)[:31]}]), "pub must be", id="short-pub"),
    pytest.param(body(1, [{**entry(A), "kid": kid(A)[:7]}]), "kid must be", id="short-kid"),
    pytest.param(body(1, [entry(A, nbf=T0 + 1, exp=T0)]), "is after exp", id="nbf-after-exp"),
    pytest.param(body(1, [entry(A, exp=-5)]), "exp must be a time", id="negative-exp"),
    pytest.param(body(1, [entry(A, comment="x")]), "unknown keys 'comment'", id="key-extra"),
    pytest.param(body(1, ["not a map"]), "keys[0]: expected a map", id="key-not-map"),
    pytest.param([1, 2], "the body must be a map", id="not-a-map"),
]


@pytest.mark.parametrize(("update", "problem"), SCHEMA_CASES)
def test_parse_trust_update__schema_violations(update: Any, problem: str) -> None:
    """A trust update that does not follow the CDDL exactly is refused, saying what is wrong."""
    with pytest.raises(TrustError) as info:
        parse_trust_update(cbor2.dumps(update))
    assert info.value.reason == "bad-request"
    assert problem in info.value.message


@pytest.mark.parametrize(
    "payload",
    [
        cbor2.dumps(body(1, [])) + b"\x00",  # trailing byte
        bytes.fromhex("a2617601617601"),  # {"v": 1, "v": 1}
        cbor2.dumps(cbor2.CBORTag(55799, body(1, []))),  # self-described CBOR
        cbor2.dumps({**body(1, []), "serial": cbor2.CBORTag(2, b"\x05")}),  # bignum
    ],
    ids=["trailing", "duplicate-key", "tag-55799", "bignum"],
)
def test_parse_trust_update__strict_cbor(payload: bytes) -> None:
    """Encodings two decoders could read differently are refused rather than interpreted."""
    with pytest.raises(TrustError) as info:
        parse_trust_update(payload)
    assert info.value.reason == "bad-request"


def test_sign_trust_update__matches_the_cddl(root: Ed25519PrivateKey) -> None:
    """The helper tools use writes exactly the TrustUpdate of PROTOCOL.md."""
    signed = sign_trust_update(
        root, serial=5, keys=[(raw(A), ["admin"], T0, T0 + 9)], gw=GW, iat_ms=T0
    )
    tag = cbor2.loads(signed)
    assert tag.tag == 18
    protected, _, payload, signature = tag.value
    assert cbor2.loads(protected) == {1: -8, 4: kid(root)}
    root.public_key().verify(signature, cbor2.dumps(["Signature1", protected, b"", payload]))
    assert cbor2.loads(payload) == {
        "v": 1,
        "gw": GW,
        "iat": T0,
        "serial": 5,
        "keys": [{"kid": kid(A), "pub": raw(A), "roles": ["admin"], "nbf": T0, "exp": T0 + 9}],
    }


# ------------------------------------------------------------------ keys and the store object


def test_trusted_key__validity_with_skew() -> None:
    """A key is used only inside its period, give or take the allowed clock error."""
    key = TrustedKey(
        kid=kid(A), public_raw=raw(A), roles=frozenset({"operator"}), nbf_ms=1000, exp_ms=2000
    )
    assert not key.valid_at(999)
    assert key.valid_at(1000)
    assert key.valid_at(2000)
    assert not key.valid_at(2001)
    assert [key.valid_at(t, skew_ms=100) for t in (899, 900, 2100, 2101)] == [
        False,
        True,
        True,
        False,
    ]
    forever = dataclasses.replace(key, nbf_ms=None, exp_ms=None)
    assert forever.valid_at(0)
    assert forever.valid_at(2**63)


def test_trusted_key__validates_when_built() -> None:
    """A key whose kid does not match its public key can never be put in a store."""
    with pytest.raises(ValueError, match="SHA-256"):
        TrustedKey(
            kid=kid(B), public_raw=raw(A), roles=frozenset({"admin"}), nbf_ms=None, exp_ms=None
        )


def test_trust_store__is_immutable(data_dir: Path, root: Ed25519PrivateKey) -> None:
    """No code path can slip a key into the store that the verifier is using."""
    store = TrustStore.load(data_dir, gw=GW).verify_update(
        sign1(root, cbor2.dumps(body(1, [entry(A)])))
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        store.serial = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        store.keys[kid(B)] = store.keys[kid(A)]  # type: ignore[index]


def test_apply_update__write_failure_propagates(
    data_dir: Path, root: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """An update that cannot be saved is not reported as applied (the caller keeps its store)."""
    store = TrustStore.load(data_dir, gw=GW)
    with pytest.raises(FileNotFoundError):
        store.apply_update(
            sign1(root, cbor2.dumps(body(1, []))), data_dir=tmp_path / "gone", now_ms=T0
        )
    assert not (tmp_path / "gone").exists()


@given(st.binary(max_size=512))
def test_verify_update__arbitrary_bytes_only_trust_error(data: bytes) -> None:
    """Whatever arrives on the trust topic, the receiver refuses it cleanly and carries on."""
    store = TrustStore.empty(Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key(), gw=GW)
    with pytest.raises(TrustError):
        store.verify_update(data)


def test_limits__largest_update_fits_the_size_and_packet_limits(
    data_dir: Path, root: Ed25519PrivateKey
) -> None:
    """A central post listing the most keys allowed could never re-key the gateway."""
    entries = [
        entry(Ed25519PrivateKey.generate(), "operator", "maintenance", nbf=T0, exp=T0 * 2)
        for _ in range(MAX_KEYS)
    ]
    data = sign1(root, cbor2.dumps(body(2**32, entries)))
    assert len(data) <= MAX_TRUST_UPDATE_SIZE
    assert TrustStore.load(data_dir, gw=GW).verify_update(data).serial == 2**32
    # The MQTT Maximum Packet Size the gateway declares leaves room for it and its topic.
    assert MAX_TRUST_UPDATE_SIZE + 1024 < MAX_PACKET_SIZE
    too_big = sign1(root, cbor2.dumps(body(1, [], gw=GW) | {"pad": bytes(MAX_TRUST_UPDATE_SIZE)}))
    error = refused(TrustStore.load(data_dir, gw=GW), too_big)
    assert (error.reason, error.authenticated) == ("bad-request", False)
    assert f"more than the {MAX_TRUST_UPDATE_SIZE} accepted" in error.message

"""Signed commands: what the gateway accepts, every reason it refuses one, and hostile input.

Commands are built here from the PROTOCOL.md CDDL with cbor2 + cryptography directly, never with
agent code, so that a bug shared by the signer and the verifier cannot hide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.commands import (
    DEFAULT_POLICIES,
    MAX_COMMAND_SIZE,
    REASONS,
    Command,
    CommandVerifier,
    Rejected,
    RolePolicy,
)
from agent.security.trust import TrustStore, sign_trust_update

GW = "cab-0001"
NOW = 1_700_000_000_000  # ms
SKEW_S = 30
MAX_VALIDITY_S = 3600
CMD_ID = bytes(range(16))
WRITABLE = frozenset({"lamp-01/level", "lamp-02/level", "contactor/state"})
ACTIONS = frozenset({"ping", "selftest"})


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def raw(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def kid(k: Ed25519PrivateKey) -> bytes:
    return hashlib.sha256(raw(k)).digest()[:8]


ROOT = key(1)
OPERATOR = key(2)
ADMIN = key(3)
MAINTENANCE = key(4)
BOTH = key(5)  # operator + admin
EXPIRED = key(6)  # operator, expired an hour ago
FUTURE = key(7)  # operator, valid from an hour from now
STRANGER = key(8)  # in no trust store
HOUR = 3_600_000


def trust_store() -> TrustStore:
    update = sign_trust_update(
        ROOT,
        serial=1,
        keys=[
            (raw(OPERATOR), ["operator"], None, None),
            (raw(ADMIN), ["admin"], None, None),
            (raw(MAINTENANCE), ["maintenance"], None, None),
            (raw(BOTH), ["admin", "operator"], None, None),
            (raw(EXPIRED), ["operator"], NOW - 2 * HOUR, NOW - HOUR),
            (raw(FUTURE), ["operator"], NOW + HOUR, None),
        ],
        gw=GW,
        iat_ms=NOW - HOUR,
    )
    return TrustStore.empty(ROOT.public_key(), gw=GW).verify_update(update)


TRUST = trust_store()


def verifier(
    seen: frozenset[bytes] = frozenset(), policies: Any = DEFAULT_POLICIES
) -> CommandVerifier:
    return CommandVerifier(
        gw=GW,
        trust=TRUST,
        seen=seen.__contains__,
        policies=policies,
        skew_s=SKEW_S,
        max_validity_s=MAX_VALIDITY_S,
        writable=WRITABLE.__contains__,
        actions=ACTIONS,
    )


# ------------------------------------------------------------- building commands (no agent code)


def body(**fields: Any) -> dict[str, Any]:
    """A valid write unless ``fields`` change it; a field set to ``...`` is left out."""
    base: dict[str, Any] = {
        "v": 1,
        "id": CMD_ID,
        "gw": GW,
        "iat": NOW - 1000,
        "exp": NOW + 60_000,
        "op": "write",
        "point": "lamp-01/level",
        "value": 40,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def sign1(
    signer: Ed25519PrivateKey,
    payload: bytes,
    *,
    kid_: bytes | None = None,
    alg: int = -8,
    tag: int | None = 18,
    protected_map: dict[Any, Any] | None = None,
) -> bytes:
    """A COSE_Sign1 per PROTOCOL.md (RFC 9052 §4.2, §4.4), variations for the failure cases."""
    header = {1: alg, 4: kid(signer) if kid_ is None else kid_}
    protected = cbor2.dumps(header if protected_map is None else protected_map)
    signature = signer.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    item: Any = [protected, {}, payload, signature]
    return cbor2.dumps(item if tag is None else cbor2.CBORTag(tag, item))


def signed(signer: Ed25519PrivateKey = OPERATOR, **fields: Any) -> bytes:
    return sign1(signer, cbor2.dumps(body(**fields)))


def rejected(data: bytes, *, now: int = NOW, v: CommandVerifier | None = None) -> Rejected:
    with pytest.raises(Rejected) as info:
        (v or verifier()).check(data, now)
    assert info.value.reason in REASONS
    return info.value


# ------------------------------------------------------------------ accepted commands


def test_check__write_with_defaults() -> None:
    """An operator's ordinary write reaches the arbiter at the central post's level, 10."""
    cmd = verifier().check(signed(), NOW)
    assert cmd == Command(
        id=CMD_ID,
        gw=GW,
        iat=NOW - 1000,
        nbf=None,
        exp=NOW + 60_000,
        op="write",
        point="lamp-01/level",
        value=40,
        prio=10,
        hold=None,
        name=None,
        args={},
        kid=kid(OPERATOR),
        role="operator",
    )


def test_check__write_with_every_optional_field() -> None:
    """Priority, hold, nbf and a non-numeric value all come through as sent."""
    cmd = verifier().check(signed(prio=12, hold=900, nbf=NOW - 10, value=None), NOW)
    assert (cmd.prio, cmd.hold, cmd.nbf, cmd.value) == (12, 900, NOW - 10, None)
    for value in (True, 12.5, "auto", -3):
        assert verifier().check(signed(value=value), NOW).value == value


def test_check__relinquish() -> None:
    """The central post can hand a point back to local control."""
    cmd = verifier().check(signed(op="relinquish", value=...), NOW)
    assert (cmd.op, cmd.point, cmd.value, cmd.prio) == ("relinquish", "lamp-01/level", None, 10)


def test_check__action_ignores_point() -> None:
    """An action runs by name with its arguments; a stray point does not make it a write."""
    cmd = verifier().check(
        signed(op="action", name="selftest", args={"deep": True}, value=...), NOW
    )
    assert (cmd.op, cmd.name, dict(cmd.args), cmd.point, cmd.value) == (
        "action",
        "selftest",
        {"deep": True},
        None,
        None,
    )


def test_check__alg_minus_19_is_accepted() -> None:
    """A central post using the fully specified Ed25519 id (RFC 9864) is understood."""
    data = sign1(OPERATOR, cbor2.dumps(body()), alg=-19)
    assert verifier().check(data, NOW).id == CMD_ID


def test_check__skew_allowed_both_sides() -> None:
    """A gateway clock off by up to the configured skew neither drops nor lets in too much."""
    skew = SKEW_S * 1000
    v = verifier()
    old = NOW - 60_000
    assert v.check(signed(iat=old, exp=NOW - skew), NOW).exp == NOW - skew
    assert rejected(signed(iat=old, exp=NOW - skew - 1)).reason == "expired"
    assert v.check(signed(nbf=NOW + skew), NOW).nbf == NOW + skew
    assert rejected(signed(nbf=NOW + skew + 1)).reason == "not-yet-valid"
    assert v.check(signed(iat=NOW + skew, exp=NOW + skew + 1), NOW).iat == NOW + skew
    assert rejected(signed(iat=NOW + skew + 1, exp=NOW + 2 * skew)).reason == "not-yet-valid"
    # A key's own validity period gets the same allowance.
    late = signed(EXPIRED, iat=NOW - HOUR, exp=NOW - HOUR + 60_000)
    assert v.check(late, NOW - HOUR + skew).kid == kid(EXPIRED)
    assert rejected(late, now=NOW - HOUR + skew + 1).reason == "unknown-kid"
    early = signed(FUTURE, iat=NOW + HOUR - 2 * skew, exp=NOW + HOUR)
    assert v.check(early, NOW + HOUR - skew).kid == kid(FUTURE)
    assert rejected(early, now=NOW + HOUR - skew - 1).reason == "unknown-kid"


def test_check__longest_validity_is_allowed() -> None:
    """A command valid exactly max_validity is accepted; a millisecond more is not."""
    limit = MAX_VALIDITY_S * 1000
    assert verifier().check(signed(iat=NOW, exp=NOW + limit), NOW).exp == NOW + limit
    error = rejected(signed(iat=NOW, exp=NOW + limit + 1))
    assert (error.reason, error.detail) == (
        "bad-request",
        f"valid {limit + 1} ms (exp - iat), more than the {limit} ms allowed",
    )


# ------------------------------------------------------------------ roles and priorities


def test_check__maintenance_key_cannot_command_over_mqtt() -> None:
    """A technician's key acts through the console only, never from afar."""
    error = rejected(signed(MAINTENANCE))
    assert (error.reason, error.detail) == ("not-authorised", "maintenance: no commands over MQTT")
    assert (error.cmd_id, error.gw, error.kid) == (CMD_ID, GW, kid(MAINTENANCE))


def test_check__operator_cannot_override_the_technician_level() -> None:
    """An operator cannot write above level 9 (8 is the technician, 3-5 the fail-safe rules)."""
    error = rejected(signed(prio=8))
    assert (error.reason, error.detail) == ("not-authorised", "operator: priority 8 outside 9..16")
    error = rejected(signed(op="relinquish", value=..., prio=3))
    assert error.reason == "not-authorised"


def test_check__operator_cannot_write_or_relinquish_the_schedule_level() -> None:
    """Level 14 belongs to the lighting schedule: an operator overrides it from above, never
    erases it (the street must return to its schedule when the hold lapses)."""
    error = rejected(signed(prio=14))
    assert (error.reason, error.detail) == (
        "not-authorised",
        "operator: priority 14 is reserved (14: the local lighting schedule)",
    )
    error = rejected(signed(op="relinquish", value=..., prio=14))
    assert error.reason == "not-authorised"
    for prio in (13, 15):
        assert verifier().check(signed(prio=prio), NOW).prio == prio


def test_check__admin_may_write_at_a_fail_safe_level() -> None:
    """An admin can override a fail-safe rule at level 3, and the command says who did."""
    cmd = verifier().check(signed(ADMIN, prio=3), NOW)
    assert (cmd.prio, cmd.role, cmd.kid) == (3, "admin", kid(ADMIN))


def test_check__key_with_two_roles_acts_with_the_least_privileged_that_suffices() -> None:
    """The audit shows "operator" for routine writes even from a key that is also admin."""
    assert verifier().check(signed(BOTH, prio=10), NOW).role == "operator"
    assert verifier().check(signed(BOTH, prio=2), NOW).role == "admin"


def test_check__configuration_narrows_points_and_actions() -> None:
    """An operator limited to the lamps cannot switch the contactor or run other actions."""
    narrowed = {
        **DEFAULT_POLICIES,
        "operator": RolePolicy((9, 16), frozenset({"write", "action"}), ("lamp-*/*",), ("ping",)),
    }
    v = verifier(policies=narrowed)
    assert v.check(signed(point="lamp-02/level"), NOW).point == "lamp-02/level"
    error = rejected(signed(point="contactor/state"), v=v)
    assert (error.reason, error.detail) == (
        "not-authorised",
        "operator: point 'contactor/state' not allowed",
    )
    error = rejected(signed(op="action", name="selftest"), v=v)
    assert error.detail == "operator: action 'selftest' not allowed"
    error = rejected(signed(op="relinquish", value=...), v=v)
    assert error.detail == "operator: op 'relinquish' not allowed"
    assert v.check(signed(ADMIN, point="contactor/state"), NOW).role == "admin"


def test_check__trust_store_can_be_swapped() -> None:
    """Once a trust update drops a key, its commands are refused at once."""
    v = verifier()
    assert v.check(signed(), NOW).kid == kid(OPERATOR)
    v.trust = TRUST.verify_update(
        sign_trust_update(ROOT, serial=2, keys=[(raw(ADMIN), ["admin"], None, None)], iat_ms=NOW)
    )
    assert rejected(signed(), v=v).reason == "unknown-kid"


# ------------------------------------------------------------------ one test per refusal

Make = Callable[[], bytes]
Readable = tuple[bytes | None, str | None]  # (cmd_id, gw) the refusal could report
BOTH_READABLE: Readable = (CMD_ID, GW)
UNREADABLE: Readable = (None, None)


def case(id_: str, make: Make, reason: str, detail: str, readable: Readable = BOTH_READABLE) -> Any:
    return pytest.param(make, reason, detail, readable, id=id_)


def _body(**fields: Any) -> Make:
    return lambda: signed(**fields)


def _payload(payload: bytes) -> Make:
    return lambda: sign1(OPERATOR, payload)


def _envelope(**options: Any) -> Make:
    return lambda: sign1(OPERATOR, cbor2.dumps(body()), **options)


BAD = "bad-request"
REJECT_CASES: list[Any] = [
    # envelope
    case(
        "size",
        _body(args={"blob": bytes(MAX_COMMAND_SIZE)}),
        BAD,
        f"{MAX_COMMAND_SIZE} accepted",
        UNREADABLE,
    ),
    case("junk", lambda: b"\xff\x00", BAD, "envelope malformed", UNREADABLE),
    case("untagged", _envelope(tag=None), BAD, "envelope bad-tag", UNREADABLE),
    # Tag 98 is COSE_Sign, another structure: not read at all.
    case("wrong-tag", _envelope(tag=98), BAD, "envelope bad-tag", UNREADABLE),
    case("es256-alg", _envelope(alg=-7), "bad-signature", "envelope bad-alg", UNREADABLE),
    case("no-kid", _envelope(protected_map={1: -8}), "unknown-kid", "envelope bad-kid", UNREADABLE),
    # signer
    case(
        "unknown-kid",
        lambda: signed(STRANGER),
        "unknown-kid",
        f"kid {kid(STRANGER).hex()} is not in the trust store (serial 1)",
        UNREADABLE,
    ),
    case("key-expired", lambda: signed(EXPIRED), "unknown-kid", f"not valid at {NOW}", UNREADABLE),
    case(
        "key-not-yet-valid",
        lambda: signed(FUTURE),
        "unknown-kid",
        f"not valid at {NOW}",
        UNREADABLE,
    ),
    case(
        "forged-kid",
        lambda: sign1(STRANGER, cbor2.dumps(body()), kid_=kid(OPERATOR)),
        "bad-signature",
        "signature does not verify",
        UNREADABLE,
    ),
    # body: strict CBOR
    case("trailing", _payload(cbor2.dumps(body()) + b"\x00"), BAD, "trailing bytes", UNREADABLE),
    case(
        "duplicate-key",
        _payload(bytes.fromhex("a2617601617601")),  # {"v": 1, "v": 1}
        BAD,
        "duplicate map key",
        UNREADABLE,
    ),
    case(
        "self-described",
        _payload(cbor2.dumps(cbor2.CBORTag(55799, body()))),
        BAD,
        "CBOR tag 55799 not accepted",
        UNREADABLE,
    ),
    case(
        "bignum-time",
        _payload(cbor2.dumps(body(iat=cbor2.CBORTag(2, b"\x01")))),
        BAD,
        "CBOR tag 2 not accepted",
        UNREADABLE,
    ),
    case(
        "tag-in-args",
        _payload(cbor2.dumps(body(args={"when": cbor2.CBORTag(1, 0)}))),
        BAD,
        "CBOR tag 1 not accepted",
        UNREADABLE,
    ),
    case("too-deep", _body(args={"a": [[[[[[[[1]]]]]]]]}), BAD, "nested deeper", UNREADABLE),
    case("array", _payload(cbor2.dumps([body()])), BAD, "must be a map", UNREADABLE),
    # body: the CDDL
    case("extra", _body(colour="red"), BAD, "unknown keys 'colour'"),
    case("no-exp", _body(exp=...), BAD, "missing exp"),
    case("version", _body(v=2), BAD, "v must be 1"),
    case("short-id", _body(id=CMD_ID[:15]), BAD, "id must be a 16-byte bstr", (None, GW)),
    case("gw-type", _body(gw=7), BAD, "gw must be a tstr", (CMD_ID, None)),
    case("bool-time", _body(iat=True), BAD, "iat must be a uint"),
    case("float-time", _body(exp=float(NOW)), BAD, "exp must be a uint"),
    case("op", _body(op="erase"), BAD, "op must be one of"),
    case("prio-0", _body(prio=0), BAD, "prio must be an integer 1..16"),
    case("prio-17", _body(prio=17), BAD, "prio must be an integer 1..16"),
    case("hold", _body(hold=-1), BAD, "hold must be a uint"),
    case("no-value", _body(value=...), BAD, "a write needs a value"),
    case("value-array", _body(value=[1, 2]), BAD, "value must be a number, bool, tstr or null"),
    case("value-nan", _body(value=math.nan), BAD, "value must be finite"),
    case("no-point", _body(point=...), BAD, "a write needs a point"),
    case("point-format", _body(point="lamp-01"), BAD, 'point must be a tstr "device/point"'),
    case("null-point", _body(point=None), BAD, 'point must be a tstr "device/point"'),
    case("no-name", _body(op="action", value=...), BAD, "an action needs a name"),
    case("null-name", _body(op="action", name=None), BAD, "name must be a tstr"),
    case("args", _body(op="action", name="ping", args=[1]), BAD, "args must be a map"),
    # target and time
    case(
        "gw", _body(gw="cab-0002"), "wrong-gateway", "for gateway 'cab-0002'", (CMD_ID, "cab-0002")
    ),
    case(
        "expired",
        _body(iat=NOW - 120_000, exp=NOW - 31_000),
        "expired",
        f"exp {NOW - 31_000} is before now",
    ),
    case("nbf", _body(nbf=NOW + 31_000), "not-yet-valid", f"nbf {NOW + 31_000} is after now"),
    case(
        "iat-future",
        _body(iat=NOW + 31_000, exp=NOW + 60_000),
        "not-yet-valid",
        f"iat {NOW + 31_000} is after now",
    ),
    case("exp-before-iat", _body(iat=NOW, exp=NOW - 1), BAD, "is before iat"),
    case("exp-before-nbf", _body(iat=NOW - 5, nbf=NOW, exp=NOW - 1), BAD, "never valid"),
    case("too-long", _body(exp=NOW + 3_600_000), BAD, "more than the 3600000 ms allowed"),
    # authorisation and what the command addresses
    case("maintenance", lambda: signed(MAINTENANCE), "not-authorised", "maintenance: no commands"),
    case("operator-prio", _body(prio=8), "not-authorised", "operator: priority 8 outside 9..16"),
    case("read-only", _body(point="lamp-01/power"), BAD, "unknown or read-only point"),
    case("unknown-action", _body(op="action", name="reboot"), BAD, "unknown action 'reboot'"),
]


@pytest.mark.parametrize(("make", "reason", "detail", "readable"), REJECT_CASES)
def test_check__each_refusal_has_its_reason(
    make: Make, reason: str, detail: str, readable: Readable
) -> None:
    """The central post learns why a command was refused, and gets an Ack whenever it can."""
    error = rejected(make())
    assert error.reason == reason
    assert detail in error.detail
    assert (error.cmd_id, error.gw) == readable
    assert str(error) == f"{reason}: {error.detail}"
    # Nothing is read from a payload whose signature did not verify with a trusted key.
    unauthenticated = reason in ("unknown-kid", "bad-signature") or "envelope" in error.detail
    unauthenticated = unauthenticated or "bytes, more than the" in error.detail  # oversized
    assert error.authenticated is not unauthenticated


def test_check__replay() -> None:
    """A command recorded and sent again is refused, even while still valid."""
    error = rejected(signed(), v=verifier(seen=frozenset({CMD_ID})))
    assert (error.reason, error.cmd_id, error.gw) == ("replay", CMD_ID, GW)


def test_check__does_not_remember_ids() -> None:
    """Only the caller decides that a command was accepted (and records it durably)."""
    v = verifier()
    assert v.check(signed(), NOW) == v.check(signed(), NOW)


def test_rejected__pickles() -> None:
    """A refusal can cross a process boundary (e.g. to a log worker) intact."""
    error = rejected(signed(prio=8))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.detail, copy.cmd_id, copy.gw, copy.kid, copy.authenticated) == (
        error.reason,
        error.detail,
        error.cmd_id,
        error.gw,
        error.kid,
        True,
    )


def test_every_reason_is_exercised() -> None:
    """Each PROTOCOL reason the verifier can give has a test case above."""
    covered = {case.values[1] for case in REJECT_CASES} | {"replay"}
    assert covered == set(REASONS)


# ------------------------------------------------------------------ hostile input

VALID = signed()

cbor_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
cbor_values = st.recursive(
    cbor_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.integers() | st.binary(max_size=4), children, max_size=4
        )
        | st.builds(cbor2.CBORTag, st.integers(min_value=0, max_value=2**32), children)
    ),
    max_leaves=20,
)
FIELDS = [
    "v",
    "id",
    "gw",
    "iat",
    "nbf",
    "exp",
    "op",
    "point",
    "value",
    "prio",
    "hold",
    "name",
    "args",
]


@settings(max_examples=300)
@given(st.binary(max_size=400))
@example(VALID[:-1])
@example(VALID + b"\x00")
def test_check__arbitrary_bytes_only_rejected(data: bytes) -> None:
    """No byte string on the command topic makes the verifier fail other than by refusing."""
    with pytest.raises(Rejected):
        verifier().check(data, NOW)


@settings(max_examples=300)
@given(cbor_values)
def test_check__arbitrary_cbor_only_rejected(value: Any) -> None:
    """Any CBOR structure, bare or signed by a trusted key, is refused cleanly."""
    payload = cbor2.dumps(value)
    for data in (payload, sign1(OPERATOR, payload), sign1(STRANGER, payload)):
        with pytest.raises(Rejected):
            verifier().check(data, NOW)


@settings(max_examples=300)
@given(st.sampled_from(FIELDS), cbor_values)
def test_check__any_field_value_never_crashes(field: str, value: Any) -> None:
    """A trusted signer's command with any value in any field is accepted or refused, no more."""
    data = signed(**{field: value})
    try:
        cmd = verifier().check(data, NOW)
    except Rejected:
        return
    assert isinstance(cmd, Command)


def test_check__every_byte_flipped_is_rejected() -> None:
    """No single corrupted byte anywhere in a signed command lets it through."""
    v = verifier()
    for index in range(len(VALID)):
        for mask in (0x01, 0x80, 0xFF):
            corrupted = bytearray(VALID)
            corrupted[index] ^= mask
            with pytest.raises(Rejected):
                v.check(bytes(corrupted), NOW)


@given(st.data())
def test_check__random_bit_flip_is_rejected(data: st.DataObject) -> None:
    """Hypothesis-chosen position and bit: the same guarantee, shrunk to a readable case."""
    index = data.draw(st.integers(min_value=0, max_value=len(VALID) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    corrupted = bytearray(VALID)
    corrupted[index] ^= 1 << bit
    with pytest.raises(Rejected):
        verifier().check(bytes(corrupted), NOW)


def test_command__validates_when_built() -> None:
    """Code that builds a Command by hand cannot make a write without a point."""
    cmd = verifier().check(signed(), NOW)
    with pytest.raises(ValueError, match="point is required"):
        dataclasses.replace(cmd, point=None)
    with pytest.raises(ValueError, match="prio 17"):
        dataclasses.replace(cmd, prio=17)

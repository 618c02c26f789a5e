"""The restricted CBOR decoder every untrusted byte goes through: subset, limits, linear cost."""

from __future__ import annotations

import math
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.security.cbor_strict import (
    MAX_INT_KEYED_ENTRIES,
    CborError,
    Decoder,
    Tagged,
    loads,
)

BIG = 1 << 20


def _loads(data: bytes, **kw: Any) -> Any:
    return loads(data, max_size=BIG, max_depth=kw.pop("max_depth", 16), **kw)


def _error(data: bytes, **kw: Any) -> str:
    with pytest.raises(CborError) as info:
        _loads(data, **kw)
    return str(info.value)


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=10)
)
_values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_values)
def test_loads__reads_what_cbor2_writes(value: Any) -> None:
    """A genuine body from the central post (any value our protocol uses) would be refused."""
    assert _loads(cbor2.dumps(value)) == value


@given(st.dictionaries(st.integers(-(2**63), 2**63 - 1), _leaves, max_size=8))
def test_loads__integer_keys_only_when_allowed(value: dict[int, Any]) -> None:
    """COSE header labels (integers) would not decode, or would be accepted in a body."""
    data = cbor2.dumps(value)
    assert _loads(data, int_keys=True) == value
    if value:
        assert "integer map key not accepted" in _error(data)


def test_loads__top_tag_only_when_allowed() -> None:
    """A COSE_Sign1 tag would be refused, or a tag would slip through where none belongs."""
    data = cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"x", b"s"]))
    assert _loads(data, top_tag=True) == Tagged(18, [b"", {}, b"x", b"s"])
    assert "CBOR tag 18 not accepted" in _error(data)
    nested = cbor2.dumps(cbor2.CBORTag(18, [cbor2.CBORTag(18, 0)]))
    assert "CBOR tag 18 not accepted" in _error(nested, top_tag=True)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        # tag 35, a regular expression cbor2 would compile (catastrophic backtracking)
        (cbor2.dumps(cbor2.CBORTag(35, "(a+)+$")), "CBOR tag 35"),
        (cbor2.dumps({"a": cbor2.CBORTag(35, "(a|a)*b")}), "CBOR tag 35"),
        (cbor2.dumps(cbor2.CBORTag(2, b"\x01" * 4000)), "CBOR tag 2"),  # bignum
        (cbor2.dumps(cbor2.CBORTag(4, [-2, 27315])), "CBOR tag 4"),  # decimal fraction
        (cbor2.dumps(cbor2.CBORTag(0, "2026-01-01T00:00:00Z")), "CBOR tag 0"),  # date
        (bytes.fromhex("d81c81d81d00"), "CBOR tag 28"),  # shared value, a list in itself
        (cbor2.dumps(cbor2.CBORTag(258, [1, 2])), "CBOR tag 258"),  # set
        (cbor2.dumps(cbor2.CBORTag(55799, {})), "CBOR tag 55799"),  # self-described CBOR
        (b"\x9f\x01\xff", "indefinite-length array"),
        (b"\x5f\x41\x00\xff", "indefinite-length bstr"),
        (b"\xf7", "simple value 23"),  # undefined
        (b"\xf0", "simple value 16"),
        (b"\xf8\x20", "simple value 24"),
        (b"\xff", "unexpected break"),
        (b"\x1c", "reserved additional information 28"),
        (b"\x62\xc3\x28", "not UTF-8"),
        (b"\xa2\x61a\x01\x61a\x02", "duplicate map key"),
        (b"\xa1\x81\x01\x02", "map key must be"),  # array key
        (b"\xa1\xf5\x02", "map key must be"),  # true as a key (it equals 1 in Python)
        (b"\xa1\xfb" + bytes(8) + b"\x01", "map key must be"),  # float key
        (b"\x01\x00", "1 trailing bytes"),
        (b"", "input ends"),
        (b"\x82\x01", "array of 2 announced"),
    ],
)
def test_loads__refuses_outside_the_subset(data: bytes, problem: str) -> None:
    """An attacker's semantic tag, odd encoding or ambiguous map would reach the agent's code."""
    assert problem in _error(data, int_keys=True, top_tag=False)


@pytest.mark.parametrize(
    "head",
    ["5bffffffffffffffff", "7a7fffffff", "9bffffffffffffffff", "bbffffffffffffffff", "5a7fffffff"],
)
def test_loads__huge_declared_length_fails_before_allocating(head: str) -> None:
    """A 9-byte header announcing gigabytes would make the gateway allocate them."""
    decoder = Decoder(bytes.fromhex(head) + b"\x00", max_depth=16, int_keys=False)
    with pytest.raises(CborError, match="announced"):
        decoder.decode(top_tag=False)
    assert decoder.work <= 2 * 10


def test_loads__depth_and_size_bounded() -> None:
    """A small deeply nested or oversized message would cost deep recursion or memory."""
    assert "nested deeper than 3" in _error(b"\x81\x81\x81\x81\x00", max_depth=3)
    assert _loads(b"\x81\x81\x81\x00", max_depth=3) == [[[0]]]
    with pytest.raises(CborError, match="more than the 4 accepted"):
        loads(b"\x45hello", max_size=4, max_depth=1)


def test_loads__integer_keyed_maps_are_small() -> None:
    """A header map of crafted colliding integers would cost quadratic hashing time."""
    # Python hashes an int modulo 2**61 - 1: these 17 keys (all that fit in 64 bits) share hash 0.
    colliding = {j * (2**61 - 1): j for j in range(-8, 9)}
    assert {hash(k) for k in colliding} == {0}
    assert _loads(cbor2.dumps(colliding), int_keys=True) == colliding
    too_many = {i: i for i in range(MAX_INT_KEYED_ENTRIES + 1)}
    assert "integer-keyed map" in _error(cbor2.dumps(too_many), int_keys=True)


def test_loads__integers_are_64_bit_and_floats_all_widths() -> None:
    """Values at the edges of CBOR's number encodings would be misread."""
    assert _loads(b"\x1b" + b"\xff" * 8) == 2**64 - 1
    assert _loads(b"\x3b" + b"\xff" * 8) == -(2**64)
    assert _loads(b"\xf9\x3c\x00") == 1.0
    assert _loads(b"\xfa\x3f\xc0\x00\x00") == 1.5
    assert math.isnan(_loads(b"\xf9\x7e\x00"))
    assert _loads(b"\xf6") is None


@given(st.binary(max_size=600))
@example(b"\x9b" + b"\xff" * 8)
@example(b"\x81" * 300)
@example(b"\xa1" * 300)
@example(b"\x58\x10" + b"\x00" * 300)
def test_decoder__work_is_linear_in_input_size(data: bytes) -> None:
    """Some small input would make the gateway work far more than its size (a frozen loop)."""
    decoder = Decoder(data, max_depth=16, int_keys=True)
    try:
        decoder.decode(top_tag=True)
    except CborError:
        pass
    assert decoder.work <= 2 * len(data) + 1


@given(_values)
def test_decoder__work_is_linear_on_valid_input(value: Any) -> None:
    """A large but valid body would cost more than its size to decode."""
    data = cbor2.dumps(value)
    decoder = Decoder(data, max_depth=64, int_keys=True)
    decoder.decode(top_tag=False)
    assert decoder.work <= 2 * len(data)


@given(st.binary(max_size=300))
def test_loads__arbitrary_bytes_raise_only_cbor_error(data: bytes) -> None:
    """Hostile bytes would crash the receiver with an exception nobody catches."""
    try:
        _loads(data, int_keys=True, top_tag=True)
    except CborError:
        pass

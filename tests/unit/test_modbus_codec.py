"""Modbus RTU codec: CRC, request encoding and validation, reply decoding.

Hex frames live in tests/fixtures/modbus/frames.toml. The property tests build
reply frames with a tiny encoder of their own (struct + a bitwise CRC), so a
bug shared by the codec's encoder and decoder cannot hide.
"""

from __future__ import annotations

import itertools
import re
import struct
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus import codec
from drivers.modbus.codec import (
    NEED_DATA,
    CrcError,
    ExceptionResponse,
    LocalProtocolError,
    MalformedResponse,
    ReadHoldingRegisters,
    ReadInputRegisters,
    RegistersRead,
    RegistersWritten,
    RegisterWritten,
    RemoteProtocolError,
    Request,
    Response,
    ResponseDecoder,
    WriteMultipleRegisters,
    WriteSingleRegister,
    crc16,
    encode_request,
)

FRAMES = tomllib.loads(
    (Path(__file__).parent.parent / "fixtures" / "modbus" / "frames.toml").read_text()
)


def _build(spec: dict[str, Any]) -> Any:
    """A codec object from a fixture table: {"type": class name, field: value...}."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "type"}
    return getattr(codec, spec["type"])(**fields)


def _decode_all(request: Request, data: bytes) -> Response | codec.NeedData:
    decoder = ResponseDecoder(request)
    decoder.receive_data(data)
    return decoder.next_event()


# --- An independent reference: bitwise CRC and struct-built replies ---------------------


def reference_crc(data: bytes) -> int:
    """CRC-16/MODBUS computed bit by bit, straight from the serial spec's description."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def reference_frame(body: bytes) -> bytes:
    return body + struct.pack("<H", reference_crc(body))


def reference_reply(request: Request, values: tuple[int, ...]) -> bytes:
    """The correct reply frame for ``request`` (``values`` used for reads only)."""
    if isinstance(request, ReadHoldingRegisters | ReadInputRegisters):
        body = struct.pack(
            f">BBB{len(values)}H", request.unit, request.function, 2 * len(values), *values
        )
    elif isinstance(request, WriteSingleRegister):
        body = struct.pack(">BBHH", request.unit, 6, request.address, request.value)
    else:
        body = struct.pack(">BBHH", request.unit, 16, request.address, len(request.values))
    return reference_frame(body)


units = st.integers(1, 247)
registers = st.integers(0, 0xFFFF)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["read_holding", "read_input", "write_single", "write_multiple"]))
    unit = draw(units)
    if kind == "write_single":
        return WriteSingleRegister(unit=unit, address=draw(registers), value=draw(registers))
    count = draw(st.integers(1, 125 if kind.startswith("read") else 123))
    address = draw(st.integers(0, 0x10000 - count))
    if kind == "read_holding":
        return ReadHoldingRegisters(unit=unit, address=address, count=count)
    if kind == "read_input":
        return ReadInputRegisters(unit=unit, address=address, count=count)
    values = tuple(draw(st.lists(registers, min_size=count, max_size=count)))
    return WriteMultipleRegisters(unit=unit, address=address, values=values)


@st.composite
def requests_and_replies(draw: st.DrawFn) -> tuple[Request, tuple[int, ...], bytes]:
    request = draw(requests())
    count = getattr(request, "count", 0)
    if isinstance(request, ReadHoldingRegisters | ReadInputRegisters):
        values = tuple(draw(st.lists(registers, min_size=count, max_size=count)))
    else:
        values = ()
    return request, values, reference_reply(request, values)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- CRC ----------------------------------------------------------------------------


def test_crc__spec_example() -> None:
    """A wrong CRC table would make every frame we send be rejected by every device."""
    frame = encode_request(ReadHoldingRegisters(unit=1, address=0, count=10))
    assert frame[-2:] == bytes.fromhex("C5 CD")
    assert crc16(bytes.fromhex("01 03 00 00 00 0A")) == 0xCDC5


def test_crc__catalogue_check_value() -> None:
    """CRC-16/MODBUS of "123456789" is 0x4B37 in every CRC catalogue."""
    assert crc16(b"123456789") == 0x4B37


def test_crc__empty_is_initial_value() -> None:
    """The CRC register starts at 0xFFFF (serial spec §6.2.2)."""
    assert crc16(b"") == 0xFFFF


@given(st.binary(max_size=300))
def test_crc__table_matches_bitwise_reference(data: bytes) -> None:
    """The fast table CRC must agree with the bit-by-bit definition on any input."""
    assert crc16(data) == reference_crc(data)


# --- Encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("case", FRAMES["encode"], ids=lambda c: c["case"])
def test_encode__matches_hand_checked_frame(case: dict[str, Any]) -> None:
    """A wrongly encoded request reads the wrong registers or writes wrong values in the field."""
    assert encode_request(_build(case["request"])) == bytes.fromhex(case["frame"])


@given(requests())
def test_encode__matches_independent_encoder(request: Request) -> None:
    """Every valid request encodes exactly as the spec's layout built with struct says."""
    match request:
        case ReadHoldingRegisters() | ReadInputRegisters():
            body = struct.pack(
                ">BBHH", request.unit, request.function, request.address, request.count
            )
        case WriteSingleRegister():
            body = struct.pack(">BBHH", request.unit, 6, request.address, request.value)
        case WriteMultipleRegisters():
            n = len(request.values)
            body = struct.pack(
                f">BBHHB{n}H", request.unit, 16, request.address, n, 2 * n, *request.values
            )
    assert encode_request(request) == reference_frame(body)


# --- Request validation -----------------------------------------------------------------

INVALID_REQUESTS: list[tuple[str, type, dict[str, Any], str]] = [
    ("unit_zero_broadcast", ReadHoldingRegisters, {"unit": 0, "address": 0, "count": 1}, "unit"),
    ("unit_reserved", ReadHoldingRegisters, {"unit": 248, "address": 0, "count": 1}, "unit"),
    ("unit_not_int", ReadHoldingRegisters, {"unit": "1", "address": 0, "count": 1}, "unit"),
    ("unit_bool", ReadHoldingRegisters, {"unit": True, "address": 0, "count": 1}, "unit"),
    ("address_negative", ReadInputRegisters, {"unit": 1, "address": -1, "count": 1}, "address"),
    ("address_too_big", ReadInputRegisters, {"unit": 1, "address": 65536, "count": 1}, "address"),
    ("read_count_zero", ReadHoldingRegisters, {"unit": 1, "address": 0, "count": 0}, "count"),
    ("read_count_126", ReadHoldingRegisters, {"unit": 1, "address": 0, "count": 126}, "count"),
    ("input_count_126", ReadInputRegisters, {"unit": 1, "address": 0, "count": 126}, "count"),
    (
        "read_past_address_space",
        ReadHoldingRegisters,
        {"unit": 1, "address": 65535, "count": 2},
        "address + count",
    ),
    ("write_value_negative", WriteSingleRegister, {"unit": 1, "address": 0, "value": -1}, "value"),
    (
        "write_value_too_big",
        WriteSingleRegister,
        {"unit": 1, "address": 0, "value": 65536},
        "value",
    ),
    ("write_unit_reserved", WriteSingleRegister, {"unit": 255, "address": 0, "value": 0}, "unit"),
    (
        "write_multiple_empty",
        WriteMultipleRegisters,
        {"unit": 1, "address": 0, "values": ()},
        "len(values)",
    ),
    (
        "write_multiple_124",
        WriteMultipleRegisters,
        {"unit": 1, "address": 0, "values": (0,) * 124},
        "len(values)",
    ),
    (
        "write_multiple_list",
        WriteMultipleRegisters,
        {"unit": 1, "address": 0, "values": [1, 2]},
        "values must be a tuple",
    ),
    (
        "write_multiple_bad_value",
        WriteMultipleRegisters,
        {"unit": 1, "address": 0, "values": (1, 70000)},
        "values[1]",
    ),
    (
        "write_multiple_past_address_space",
        WriteMultipleRegisters,
        {"unit": 1, "address": 65535, "values": (1, 2)},
        "address + count",
    ),
]


@pytest.mark.parametrize(
    ("cls", "fields", "field"),
    [case[1:] for case in INVALID_REQUESTS],
    ids=[case[0] for case in INVALID_REQUESTS],
)
def test_request__invalid_field_is_named(cls: type, fields: dict[str, Any], field: str) -> None:
    """A bad request must fail where it is built, naming the field, not on the wire."""
    with pytest.raises(LocalProtocolError, match=f"^{re.escape(field)}"):
        cls(**fields)


def test_request__limits_are_inclusive() -> None:
    """The largest requests the spec allows must be accepted."""
    ReadHoldingRegisters(unit=247, address=65536 - 125, count=125)
    ReadInputRegisters(unit=1, address=65535, count=1)
    WriteSingleRegister(unit=247, address=65535, value=65535)
    WriteMultipleRegisters(unit=1, address=65536 - 123, values=(65535,) * 123)


def test_request__is_frozen_and_keyword_only() -> None:
    """Requests are values: shared between tasks, they must not change under anyone."""
    request = ReadHoldingRegisters(unit=1, address=0, count=1)
    with pytest.raises(AttributeError):
        request.unit = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        ReadHoldingRegisters(1, 0, 1)  # type: ignore[call-arg]


# --- Decoding: the fixture table ------------------------------------------------------------

DECODE_OK = [c for c in FRAMES["decode"] if "response" in c]
DECODE_NEED = [c for c in FRAMES["decode"] if c.get("need_data")]
DECODE_ERR = [c for c in FRAMES["decode"] if "error" in c]


@pytest.mark.parametrize("case", DECODE_OK, ids=lambda c: c["case"])
def test_decode__good_reply(case: dict[str, Any]) -> None:
    """A valid reply must give exactly the values the device sent."""
    request = _build(case["request"])
    assert _decode_all(request, bytes.fromhex(case["reply"])) == _build(case["response"])


@pytest.mark.parametrize("case", DECODE_OK, ids=lambda c: c["case"])
def test_decode__good_reply_byte_by_byte(case: dict[str, Any]) -> None:
    """Bytes trickling in one at a time must give NEED_DATA until the last, then the response."""
    request = _build(case["request"])
    reply = bytes.fromhex(case["reply"])
    decoder = ResponseDecoder(request)
    for byte in reply[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_event() is NEED_DATA
    decoder.receive_data(reply[-1:])
    assert decoder.next_event() == _build(case["response"])


@pytest.mark.parametrize("case", DECODE_NEED, ids=lambda c: c["case"])
def test_decode__incomplete_reply_needs_data(case: dict[str, Any]) -> None:
    """A partial frame must not be mistaken for a reply, nor for an error yet."""
    assert _decode_all(_build(case["request"]), bytes.fromhex(case["reply"])) is NEED_DATA


@pytest.mark.parametrize("case", DECODE_ERR, ids=lambda c: c["case"])
def test_decode__bad_reply_gives_specific_error(case: dict[str, Any]) -> None:
    """Each fault must be reported as itself, so counters and logs tell noise from a bad device."""
    request = _build(case["request"])
    with pytest.raises(RemoteProtocolError) as info:
        _decode_all(request, bytes.fromhex(case["reply"]))
    assert type(info.value).__name__ == case["error"]
    assert info.value.unit == request.unit
    assert info.value.function == request.function
    for name, value in case.get("attrs", {}).items():
        assert getattr(info.value, name) == value, name


def test_decode__error_message_is_precise() -> None:
    """The log line must say which unit, which function, and what was wrong."""
    request = ReadHoldingRegisters(unit=0x11, address=0x6B, count=3)
    with pytest.raises(MalformedResponse) as info:
        _decode_all(request, bytes.fromhex("11 03 04 02 2B 00 00 9A 42"))
    assert str(info.value) == ("unit 17, function 0x03: byte count 4, expected 6 for 3 register(s)")
    with pytest.raises(ExceptionResponse) as exc_info:
        _decode_all(request, bytes.fromhex("11 83 02 C1 34"))
    assert "exception 0x02 (ILLEGAL_DATA_ADDRESS)" in str(exc_info.value)


def test_decode__error_is_sticky() -> None:
    """Once a reply is known bad, asking again must not turn it into a success."""
    decoder = ResponseDecoder(ReadInputRegisters(unit=0x11, address=8, count=1))
    decoder.receive_data(bytes.fromhex("11 04 02 00 0B F8 F4"))
    with pytest.raises(CrcError):
        decoder.next_event()
    with pytest.raises(CrcError):
        decoder.next_event()


def test_decode__bytes_after_a_returned_response_are_an_error() -> None:
    """A frame followed by more bytes is not a clean reply, even if we looked early."""
    decoder = ResponseDecoder(ReadInputRegisters(unit=0x11, address=8, count=1))
    decoder.receive_data(bytes.fromhex("11 04 02 00 0A F8 F4"))
    first = decoder.next_event()
    assert isinstance(first, RegistersRead)
    assert decoder.next_event() == first
    decoder.receive_data(b"\x00")
    with pytest.raises(MalformedResponse, match="after the end"):
        decoder.next_event()


def test_decode__length_known_from_header() -> None:
    """The decoder must frame by the header alone: an exception reply is complete at 5 bytes."""
    decoder = ResponseDecoder(WriteSingleRegister(unit=0x11, address=1, value=3))
    decoder.receive_data(bytes.fromhex("11 86 02 C2"))
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(bytes.fromhex("64"))
    with pytest.raises(ExceptionResponse):
        decoder.next_event()


# --- Decoding: properties -------------------------------------------------------------------


@given(requests(), st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_decode__arbitrary_bytes_only_give_protocol_outcomes(
    request: Request, data: bytes, cuts: list[int]
) -> None:
    """No byte sequence from the line may crash the poller with an unexpected exception."""
    decoder = ResponseDecoder(request)
    try:
        for chunk in chunked(data, cuts):
            decoder.receive_data(chunk)
            event = decoder.next_event()
            assert event is NEED_DATA or isinstance(
                event, RegistersRead | RegisterWritten | RegistersWritten
            )
    except RemoteProtocolError as exc:
        error = exc
    else:
        return
    assert (error.unit, error.function) == (request.unit, request.function)


@given(requests_and_replies(), st.lists(st.integers(0, 300), max_size=8))
def test_decode__round_trip_with_independent_encoder(
    case: tuple[Request, tuple[int, ...], bytes], cuts: list[int]
) -> None:
    """A correct reply, however it is chunked, must decode to exactly what the device said."""
    request, values, reply = case
    decoder = ResponseDecoder(request)
    event: object = NEED_DATA
    for chunk in chunked(reply, cuts):
        assert event is NEED_DATA
        decoder.receive_data(chunk)
        event = decoder.next_event()
    match request:
        case ReadHoldingRegisters() | ReadInputRegisters():
            expected: Response = RegistersRead(
                unit=request.unit,
                function=request.function,
                address=request.address,
                values=values,
            )
        case WriteSingleRegister():
            expected = RegisterWritten(
                unit=request.unit, address=request.address, value=request.value
            )
        case WriteMultipleRegisters():
            expected = RegistersWritten(
                unit=request.unit, address=request.address, count=len(request.values)
            )
    assert event == expected


@given(requests_and_replies(), st.data())
def test_decode__any_single_byte_corruption_is_rejected(
    case: tuple[Request, tuple[int, ...], bytes], data: st.DataObject
) -> None:
    """Line noise flipping one byte must never be taken for a valid reading."""
    request, _, reply = case
    index = data.draw(st.integers(0, len(reply) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    corrupted = bytearray(reply)
    corrupted[index] ^= flip
    decoder = ResponseDecoder(request)
    decoder.receive_data(bytes(corrupted))
    try:
        event = decoder.next_event()
    except CrcError:
        return
    except RemoteProtocolError:
        # Only a corrupted function or byte-count byte changes the frame's
        # length; the CRC then lands elsewhere, and the frame may even look
        # complete with a chance CRC match. Anything else is the CRC's job.
        assert index in (1, 2)
        return
    # A corrupted length byte may announce a longer frame: the decoder waits,
    # and the transport reports TruncatedResponse when the line stays silent.
    assert event is NEED_DATA
    assert index in (1, 2)

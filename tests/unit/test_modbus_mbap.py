"""Modbus TCP framing (MBAP): published frames, and properties of the stream decoder.

Frames live in tests/fixtures/modbus/mbap.toml. The property tests build frames with
struct, not with the codec's encoder, so a bug shared by both ends cannot hide.
"""

from __future__ import annotations

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
    LocalProtocolError,
    ReadHoldingRegisters,
    RegistersRead,
    RemoteProtocolError,
    parse_pdu,
)
from drivers.modbus.mbap import Adu, AduDecoder, FramingError, encode_adu

FIXTURES = tomllib.loads(
    (Path(__file__).parent.parent / "fixtures" / "modbus" / "mbap.toml").read_text()
)


def _build(spec: dict[str, Any]) -> Any:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "type"}
    return getattr(codec, spec["type"])(**fields)


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["case"] for case in cases]


def _events(decoder: AduDecoder) -> list[Adu]:
    adus = []
    while (event := decoder.next_event()) is not NEED_DATA:
        assert isinstance(event, Adu)
        adus.append(event)
    return adus


@pytest.mark.parametrize("case", FIXTURES["frame"], ids=_ids(FIXTURES["frame"]))
def test_encode__published_frame(case: dict[str, Any]) -> None:
    """A request the server cannot parse would never be answered."""
    frame = encode_adu(case["transaction_id"], _build(case["request"]))
    assert frame == bytes.fromhex(case["adu"])


@pytest.mark.parametrize("case", FIXTURES["frame"], ids=_ids(FIXTURES["frame"]))
def test_decode__published_reply_byte_by_byte(case: dict[str, Any]) -> None:
    """A reply split anywhere by TCP must still be read as the server meant it."""
    request = _build(case["request"])
    decoder = AduDecoder()
    reply = bytes.fromhex(case["reply"])
    adus: list[Adu] = []
    for i in range(len(reply)):
        decoder.receive_data(reply[i : i + 1])
        adus += _events(decoder)
    assert len(adus) == 1
    adu = adus[0]
    assert (adu.transaction_id, adu.unit) == (case["transaction_id"], request.unit)
    if "error" in case:
        with pytest.raises(getattr(codec, case["error"])) as caught:
            parse_pdu(request, adu.pdu)
        for name, value in case.get("attrs", {}).items():
            assert getattr(caught.value, name) == value
    else:
        assert parse_pdu(request, adu.pdu) == _build(case["response"])


@pytest.mark.parametrize("case", FIXTURES["bad_pdu"], ids=_ids(FIXTURES["bad_pdu"]))
def test_parse_pdu__bad_reply_gives_specific_error(case: dict[str, Any]) -> None:
    """A reply that does not fit its request must not become a reading."""
    with pytest.raises(getattr(codec, case["error"])):
        parse_pdu(_build(case["request"]), bytes.fromhex(case["pdu"]))


@pytest.mark.parametrize("case", FIXTURES["bad_stream"], ids=_ids(FIXTURES["bad_stream"]))
def test_decoder__not_mbap_is_refused_at_the_header_and_stays_refused(
    case: dict[str, Any],
) -> None:
    """A stream out of step would otherwise feed garbage to every later request."""
    decoder = AduDecoder()
    decoder.receive_data(bytes.fromhex(case["stream"]))
    with pytest.raises(FramingError):
        decoder.next_event()
    decoder.receive_data(bytes.fromhex("00 01 00 00 00 06 11 03 00 6B 00 03"))
    with pytest.raises(FramingError):
        decoder.next_event()


def test_decoder__several_frames_in_one_chunk_in_any_order() -> None:
    """Replies of transactions in flight arrive together and out of order."""
    decoder = AduDecoder()
    decoder.receive_data(
        bytes.fromhex("00 07 00 00 00 05 02 03 02 00 2A" + "00 03 00 00 00 05 01 03 02 00 01")
    )
    assert [(a.transaction_id, a.unit, a.pdu.hex()) for a in _events(decoder)] == [
        (7, 2, "0302002a"),
        (3, 1, "03020001"),
    ]


def test_encode__transaction_id_out_of_range_is_a_local_error() -> None:
    """A wrapped id counter is a bug in the transport, not a frame to send."""
    with pytest.raises(LocalProtocolError, match="transaction id"):
        encode_adu(0x10000, ReadHoldingRegisters(unit=1, address=0, count=1))


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_decoder__arbitrary_bytes_give_frames_need_data_or_framing_error(
    data: bytes, chunk: int
) -> None:
    """Hostile bytes cost what they weigh: frames, a wait, or a refusal; nothing else."""
    decoder = AduDecoder()
    try:
        for i in range(0, len(data), chunk):
            decoder.receive_data(data[i : i + chunk])
            for adu in _events(decoder):
                assert 1 <= len(adu.pdu) <= 253
    except FramingError:
        pass


@given(
    st.integers(min_value=1, max_value=125),
    st.binary(max_size=260),
)
def test_parse_pdu__arbitrary_pdu_gives_a_response_or_a_remote_error(
    count: int, pdu: bytes
) -> None:
    """Whatever a server sends back, the agent gets a reading or a counted device error."""
    request = ReadHoldingRegisters(unit=1, address=0, count=count)
    try:
        response = parse_pdu(request, pdu)
    except RemoteProtocolError:
        return
    assert isinstance(response, RegistersRead)
    assert len(response.values) == count


@given(
    st.integers(min_value=0, max_value=0xFFFF),
    st.integers(min_value=1, max_value=247),
    st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=125),
    st.integers(min_value=1, max_value=300),
)
def test_round_trip__reply_built_with_struct(
    transaction_id: int, unit: int, values: list[int], chunk: int
) -> None:
    """Any valid reply, however TCP splits it, gives back the registers the server sent."""
    pdu = struct.pack(f">BB{len(values)}H", 3, 2 * len(values), *values)
    frame = struct.pack(">HHHB", transaction_id, 0, 1 + len(pdu), unit) + pdu
    decoder = AduDecoder()
    adus: list[Adu] = []
    for i in range(0, len(frame), chunk):
        decoder.receive_data(frame[i : i + chunk])
        adus += _events(decoder)
    (adu,) = adus
    assert (adu.transaction_id, adu.unit) == (transaction_id, unit)
    request = ReadHoldingRegisters(unit=unit, address=0, count=len(values))
    assert parse_pdu(request, adu.pdu) == RegistersRead(
        unit=unit, function=3, address=0, values=tuple(values)
    )

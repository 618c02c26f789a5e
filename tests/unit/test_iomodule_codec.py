"""The I/O module link codec, agent side (drivers/iomodule/codec.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.iomodule.codec import (
    MAX_FRAME,
    NEED_DATA,
    Discarded,
    Event,
    Flag,
    FrameDecoder,
    Input,
    LocalProtocolError,
    MsgType,
    Nak,
    Ping,
    Relay,
    SetRelays,
    Status,
    crc16,
    encode,
    frame,
)

GOLDEN = Path(__file__).parent.parent / "fixtures" / "iomodule" / "golden.txt"


def golden() -> dict[str, bytes]:
    rows = (line.split() for line in GOLDEN.read_text().splitlines())
    return {row[0]: bytes.fromhex(row[1]) for row in rows if row and not row[0].startswith("#")}


def drain(decoder: FrameDecoder) -> list[Event]:
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def decode(data: bytes) -> list[Event]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return drain(decoder)


def test_crc16__check_value() -> None:
    """A CRC other than CCITT-FALSE would refuse every frame of the module."""
    assert crc16(b"123456789") == 0x29B1


def test_encode__golden_frames() -> None:
    """The agent's requests are the bytes the firmware's codec is tested with."""
    g = golden()
    assert encode(Ping(seq=0)) == g["ping_seq0"]
    assert (
        encode(SetRelays(seq=1, mask=Relay.LIGHTING, values=Relay.LIGHTING))
        == g["set_lighting_on_seq1"]
    )


def test_decode__golden_frames() -> None:
    """The module's frames, as its firmware writes them, decode to its state."""
    g = golden()
    assert decode(g["status_seq7_ack1"]) == [
        Status(
            seq=7,
            solicited=True,
            ack=1,
            inputs=Input.DOOR_OPEN | Input.MAINS_PRESENT | Input.SPD_TRIPPED,
            relays=Relay.LIGHTING,
            flags=Flag(0),
            temperature=21.5,
        )
    ]
    (change,) = decode(g["change_seq255_no_temp"])
    assert isinstance(change, Status)
    assert (change.seq, change.solicited, change.temperature) == (255, False, None)
    assert change.flags == Flag.SAFE_STATE
    (cold,) = decode(g["status_seq3_minus12_3"])
    assert isinstance(cold, Status)
    assert cold.temperature == -12.3
    assert decode(g["nak_corrupt_seq9"]) == [Nak(seq=9, reason=1)]


def test_decode__corrupt_frame_is_discarded_and_the_next_decodes() -> None:
    """One flipped bit costs that frame, never the one after it."""
    good = golden()["status_seq7_ack1"]
    bad = bytearray(good)
    bad[8] ^= 0x10
    events = decode(bytes(bad) + good)
    assert isinstance(events[0], Discarded)
    assert events[0].reason == "bad CRC"
    assert events[-1] == decode(good)[0]


def test_decode__oversized_length_does_not_wait_for_bytes() -> None:
    """A length byte past the limit is refused at once (no waiting for 255 bytes)."""
    events = decode(b"\xa5\x5a\x81\x00\xff" + golden()["nak_corrupt_seq9"])
    assert events == [
        Discarded(count=2, reason="length 255 > 32"),
        Discarded(count=3, reason="noise"),
        Nak(seq=9, reason=1),
    ]


def test_request__invalid_values_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="seq 256"):
        Ping(seq=256)
    with pytest.raises(LocalProtocolError, match="mask"):
        SetRelays(seq=0, mask=Relay.LIGHTING, values=Relay.AUX)


@given(st.binary(max_size=4 * MAX_FRAME))
def test_decode__arbitrary_bytes_only_give_events(data: bytes) -> None:
    """Line noise never raises and every byte is accounted for: a frame or discarded."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    events = drain(decoder)
    discarded = sum(e.count for e in events if isinstance(e, Discarded))
    assert discarded <= len(data)
    assert decoder.discarded == discarded


@given(
    st.lists(
        st.tuples(
            st.sampled_from([MsgType.STATUS, MsgType.CHANGE]),
            st.integers(0, 255),
            st.binary(min_size=6, max_size=6),
        ),
        max_size=8,
    ),
    st.binary(max_size=20),
    st.integers(1, 16),
)
def test_decode__frames_survive_noise_and_any_chunking(
    frames: list[tuple[MsgType, int, bytes]], noise: bytes, chunk: int
) -> None:
    """Frames after noise, cut anywhere by the serial port, all come out, in order."""
    wire = noise.replace(b"\xa5", b"") + b"".join(frame(k, s, p) for k, s, p in frames)
    decoder = FrameDecoder()
    events: list[Event] = []
    for i in range(0, len(wire), chunk):
        decoder.receive_data(wire[i : i + chunk])
        events += drain(decoder)
    statuses = [e for e in events if isinstance(e, Status)]
    assert [(s.seq, s.solicited) for s in statuses] == [
        (s, k == MsgType.STATUS) for k, s, _ in frames
    ]


@given(st.binary(min_size=1, max_size=2000))
def test_decode__work_is_bounded_by_input_size(data: bytes) -> None:
    """Hostile bytes cost what they weigh: events ≤ bytes, whatever the pattern."""
    wire = (b"\xa5\x5a" + data) * 3
    decoder = FrameDecoder()
    decoder.receive_data(wire)
    assert len(drain(decoder)) <= len(wire)

"""Modbus TCP framing (MBAP), sans-IO: requests to ADUs, a byte stream to ADUs.

The PDU is the RTU codec's (:func:`~drivers.modbus.codec.encode_pdu`,
:func:`~drivers.modbus.codec.parse_pdu`); TCP replaces the unit byte and the CRC by
a 7-byte MBAP header. Several requests may be outstanding on one connection: replies
are matched to requests by transaction id (the transport's job), not by order.

Reference: *MODBUS Messaging on TCP/IP Implementation Guide V1.0b* ("TCP guide"),
§3.1.3 (the MBAP header), §4.4.2 (the unit identifier behind a gateway).

Usage::

    adu = encode_adu(transaction_id, request)
    decoder = AduDecoder()
    decoder.receive_data(chunk)      # as bytes arrive, in any chunks
    event = decoder.next_event()     # an Adu, NEED_DATA, or raises FramingError
    response = parse_pdu(request, event.pdu)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from drivers.modbus.codec import (
    NEED_DATA,
    LocalProtocolError,
    NeedData,
    RemoteProtocolError,
    Request,
    encode_pdu,
)

__all__ = [
    "HEADER_LENGTH",
    "MAX_PDU_LENGTH",
    "MAX_TRANSACTION_ID",
    "Adu",
    "AduDecoder",
    "FramingError",
    "encode_adu",
]

# TCP guide §3.1.3: transaction id (2), protocol id (2), length (2), unit id (1).
HEADER_LENGTH: Final = 7
_HEADER: Final = struct.Struct(">HHHB")
# TCP guide §3.1.3: protocol identifier 0 is MODBUS.
PROTOCOL_ID: Final = 0
# App spec §4.1: a PDU is at most 253 bytes (the RS-485 ADU of 256 less unit and CRC).
MAX_PDU_LENGTH: Final = 253
# The length field counts the unit id and the PDU; a PDU has at least a function code.
MIN_LENGTH_FIELD: Final = 2
MAX_LENGTH_FIELD: Final = 1 + MAX_PDU_LENGTH
MAX_TRANSACTION_ID: Final = 0xFFFF


class FramingError(RemoteProtocolError):
    """The byte stream is not MBAP (wrong protocol id, impossible length).

    It belongs to no request: the stream is out of step, and the connection must be
    closed, failing every request outstanding on it.
    """

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.unit = 0
        self.function = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Adu:
    """One frame received: its transaction id, unit id and PDU (function code + data)."""

    transaction_id: int
    unit: int
    pdu: bytes


def encode_adu(transaction_id: int, request: Request) -> bytes:
    """The MBAP frame of ``request`` with ``transaction_id`` (0..65535)."""
    if not 0 <= transaction_id <= MAX_TRANSACTION_ID:
        raise LocalProtocolError(
            f"transaction id must be in 0..{MAX_TRANSACTION_ID}, got {transaction_id}"
        )
    pdu = encode_pdu(request)
    return _HEADER.pack(transaction_id, PROTOCOL_ID, 1 + len(pdu), request.unit) + pdu


class AduDecoder:
    """Splits the bytes a Modbus TCP server sends into :class:`Adu` frames.

    ``next_event()`` returns the next whole frame or :data:`NEED_DATA`; a header that
    cannot be MBAP raises :class:`FramingError`, and the decoder then keeps raising it
    (the stream has no way to find the next frame). The header is checked as soon as
    its 7 bytes are in, so garbage costs at most 7 bytes before it is refused, and a
    frame is never longer than 260 bytes: the buffer holds at most one frame plus the
    last chunk received.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: FramingError | None = None

    def receive_data(self, data: bytes) -> None:
        """Append bytes received from the connection."""
        self._buffer += data

    def next_event(self) -> Adu | NeedData:
        """The next frame, :data:`NEED_DATA`, or raise :class:`FramingError`."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if len(buffer) < HEADER_LENGTH:
            return NEED_DATA
        transaction_id, protocol_id, length, unit = _HEADER.unpack_from(buffer)
        if protocol_id != PROTOCOL_ID:
            self._error = FramingError(
                f"protocol id {protocol_id} in an MBAP header, expected {PROTOCOL_ID} "
                f"(header {bytes(buffer[:HEADER_LENGTH]).hex(' ')})"
            )
            raise self._error
        if not MIN_LENGTH_FIELD <= length <= MAX_LENGTH_FIELD:
            self._error = FramingError(
                f"MBAP length {length}, expected {MIN_LENGTH_FIELD}..{MAX_LENGTH_FIELD} "
                f"(header {bytes(buffer[:HEADER_LENGTH]).hex(' ')})"
            )
            raise self._error
        end = HEADER_LENGTH - 1 + length
        if len(buffer) < end:
            return NEED_DATA
        pdu = bytes(buffer[HEADER_LENGTH:end])
        del buffer[:end]
        return Adu(transaction_id=transaction_id, unit=unit, pdu=pdu)

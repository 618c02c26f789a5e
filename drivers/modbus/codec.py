"""Modbus RTU master framing, sans-IO: requests to bytes, bytes to responses.

This module builds request frames (ADUs) and parses the reply to one request
at a time. It does no I/O and reads no clock: the transport
(:mod:`drivers.modbus.transport`) owns the serial line, the inter-frame silence
and the timeouts, and reports a silent line with :class:`NoResponse` or
:class:`TruncatedResponse`, defined here so that every error a transaction can
end with has one root.

References:

- *MODBUS Application Protocol Specification V1.1b3* ("app spec"): function
  codes, quantity limits, exception codes.
- *MODBUS over Serial Line Specification and Implementation Guide V1.02*
  ("serial spec"): addresses, RTU framing, CRC.

Usage, one transaction::

    frame = encode_request(ReadHoldingRegisters(unit=3, address=0, count=2))
    decoder = ResponseDecoder(request)
    decoder.receive_data(chunk)          # as bytes arrive
    event = decoder.next_event()         # NEED_DATA, a response, or raises
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

__all__ = [
    "FC_READ_HOLDING_REGISTERS",
    "FC_READ_INPUT_REGISTERS",
    "FC_WRITE_MULTIPLE_REGISTERS",
    "FC_WRITE_SINGLE_REGISTER",
    "MAX_ADU_LENGTH",
    "MAX_READ_COUNT",
    "MAX_UNIT",
    "MAX_WRITE_COUNT",
    "MIN_UNIT",
    "NEED_DATA",
    "CrcError",
    "ExceptionCode",
    "ExceptionResponse",
    "LineBusy",
    "LocalProtocolError",
    "MalformedResponse",
    "ModbusError",
    "NeedData",
    "NoResponse",
    "ReadHoldingRegisters",
    "ReadInputRegisters",
    "RegisterWritten",
    "RegistersRead",
    "RegistersWritten",
    "RemoteProtocolError",
    "Request",
    "Response",
    "ResponseDecoder",
    "TruncatedResponse",
    "WriteMultipleRegisters",
    "WriteSingleRegister",
    "WrongFunction",
    "WrongUnit",
    "crc16",
    "encode_pdu",
    "encode_request",
    "parse_pdu",
]

# --- Limits -----------------------------------------------------------------

# Serial spec §2.2: individual slave addresses are 1..247; 0 is broadcast
# (never answered, so a master waiting for a reply cannot use it) and
# 248..255 are reserved.
MIN_UNIT: Final = 1
MAX_UNIT: Final = 247

# App spec §4.4: the data model addresses 0..65535 registers per table.
MAX_ADDRESS: Final = 0xFFFF
ADDRESS_SPACE: Final = 0x10000
# App spec §4.2: registers are 16-bit words.
MAX_REGISTER_VALUE: Final = 0xFFFF

# App spec §6.3 (FC 03) and §6.4 (FC 04): quantity of registers 1 to 125 (0x7D).
MAX_READ_COUNT: Final = 125
# App spec §6.12 (FC 16): quantity of registers 1 to 123 (0x7B).
MAX_WRITE_COUNT: Final = 123

# Serial spec §2.5.1: "The maximum size of a MODBUS RTU frame is 256 bytes."
MAX_ADU_LENGTH: Final = 256

# --- Function codes (app spec §5.1, §6) ---------------------------------------

FC_READ_HOLDING_REGISTERS: Final = 0x03
FC_READ_INPUT_REGISTERS: Final = 0x04
FC_WRITE_SINGLE_REGISTER: Final = 0x06
FC_WRITE_MULTIPLE_REGISTERS: Final = 0x10
# App spec §7: an exception response echoes the function code with its
# most significant bit set.
EXCEPTION_FLAG: Final = 0x80

# --- Frame shapes (app spec §6.3, §6.4, §6.6, §6.12, §7; serial spec §2.5.1) --

# unit + function + 2 CRC bytes surround every PDU body.
_CRC_LENGTH: Final = 2
# unit, function|0x80, exception code, CRC.
_EXCEPTION_FRAME_LENGTH: Final = 5
# unit, function, byte count, CRC; the register bytes come on top.
_READ_FRAME_OVERHEAD: Final = 5
# unit, function, address (2), value or quantity (2), CRC.
_WRITE_ECHO_FRAME_LENGTH: Final = 8
# Bytes needed before a read reply's length is known: unit, function, byte count.
_READ_HEADER_LENGTH: Final = 3

# --- CRC-16/MODBUS (serial spec §6.2.2, appendix B) -----------------------------

# Reflected form of the polynomial x^16 + x^15 + x^2 + 1 (0x8005).
CRC_POLYNOMIAL: Final = 0xA001
CRC_INITIAL: Final = 0xFFFF


def _build_crc_table() -> tuple[int, ...]:
    """Precompute the CRC of each byte value, so crc16 costs one lookup per byte."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC_POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _build_crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``; frames carry it low byte first (serial spec §2.5.1.2)."""
    crc = CRC_INITIAL
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(_CRC_LENGTH, "little")


# --- Errors -------------------------------------------------------------------


class ModbusError(Exception):
    """Root of every error this codec and its transport raise on purpose."""


class LocalProtocolError(ModbusError):
    """We misused the API: an invalid request, a closed transport. A bug, not a device fault."""


class RemoteProtocolError(ModbusError):
    """The device (or the line) did not give a valid reply to our request.

    ``unit`` and ``function`` are those of the *request* the error belongs to,
    so the caller can charge the failure to the device it addressed; what was
    actually received is in the subclass's own attributes and the message.
    """

    def __init__(self, message: str, *, unit: int, function: int) -> None:
        super().__init__(f"unit {unit}, function 0x{function:02X}: {message}")
        self.unit = unit
        self.function = function


class CrcError(RemoteProtocolError):
    """The frame's CRC does not match its content (noise, collision, garbage)."""

    def __init__(
        self, message: str, *, unit: int, function: int, received_crc: int, computed_crc: int
    ) -> None:
        super().__init__(message, unit=unit, function=function)
        self.received_crc = received_crc
        self.computed_crc = computed_crc


class WrongUnit(RemoteProtocolError):
    """A well-formed reply came from another unit than the one we asked."""

    def __init__(self, message: str, *, unit: int, function: int, received_unit: int) -> None:
        super().__init__(message, unit=unit, function=function)
        self.received_unit = received_unit


class WrongFunction(RemoteProtocolError):
    """A well-formed reply carries another function code than the request's."""

    def __init__(self, message: str, *, unit: int, function: int, received_function: int) -> None:
        super().__init__(message, unit=unit, function=function)
        self.received_function = received_function


class ExceptionCode(enum.IntEnum):
    """Modbus exception codes (app spec §7)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    ACKNOWLEDGE = 0x05
    SERVER_DEVICE_BUSY = 0x06
    MEMORY_PARITY_ERROR = 0x08
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND = 0x0B


class ExceptionResponse(RemoteProtocolError):
    """The device answered with a Modbus exception (app spec §7).

    ``exception_code`` is the raw code (1..255); ``exception_name`` its name
    from :class:`ExceptionCode`, or ``"UNKNOWN"`` for a code the spec does not define.
    """

    def __init__(self, *, unit: int, function: int, exception_code: int) -> None:
        try:
            name = ExceptionCode(exception_code).name
        except ValueError:
            name = "UNKNOWN"
        super().__init__(
            f"device replied with exception 0x{exception_code:02X} ({name})",
            unit=unit,
            function=function,
        )
        self.exception_code = exception_code
        self.exception_name = name


class MalformedResponse(RemoteProtocolError):
    """A reply whose CRC, unit and function are right but whose content is not.

    Byte count not matching the request, a write echo that differs from what we
    wrote, bytes after the end of the frame, an impossible length.
    """


class NoResponse(RemoteProtocolError):
    """Nothing at all arrived within the response timeout (raised by the transport)."""


class TruncatedResponse(RemoteProtocolError):
    """Part of a reply arrived, then the line fell silent (raised by the transport)."""


class LineBusy(RemoteProtocolError):
    """The line never fell silent long enough to send the request (raised by the transport).

    A device or transceiver stuck transmitting, or noise; the request was not sent.
    """


# --- Requests -----------------------------------------------------------------


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; a True unit is a bug, not unit 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise LocalProtocolError(f"{name} must be in {low}..{high}, got {value}")


def _check_span(address: int, count: int) -> None:
    if address + count > ADDRESS_SPACE:
        raise LocalProtocolError(
            f"address + count must be <= {ADDRESS_SPACE}, got {address} + {count}"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ReadHoldingRegisters:
    """FC 03: read ``count`` holding registers from ``address`` (app spec §6.3)."""

    function: ClassVar[int] = FC_READ_HOLDING_REGISTERS
    unit: int
    address: int
    count: int

    def __post_init__(self) -> None:
        _check_int("unit", self.unit, MIN_UNIT, MAX_UNIT)
        _check_int("address", self.address, 0, MAX_ADDRESS)
        _check_int("count", self.count, 1, MAX_READ_COUNT)
        _check_span(self.address, self.count)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReadInputRegisters:
    """FC 04: read ``count`` input registers from ``address`` (app spec §6.4)."""

    function: ClassVar[int] = FC_READ_INPUT_REGISTERS
    unit: int
    address: int
    count: int

    def __post_init__(self) -> None:
        _check_int("unit", self.unit, MIN_UNIT, MAX_UNIT)
        _check_int("address", self.address, 0, MAX_ADDRESS)
        _check_int("count", self.count, 1, MAX_READ_COUNT)
        _check_span(self.address, self.count)


@dataclass(frozen=True, kw_only=True, slots=True)
class WriteSingleRegister:
    """FC 06: write ``value`` to the register at ``address`` (app spec §6.6)."""

    function: ClassVar[int] = FC_WRITE_SINGLE_REGISTER
    unit: int
    address: int
    value: int

    def __post_init__(self) -> None:
        _check_int("unit", self.unit, MIN_UNIT, MAX_UNIT)
        _check_int("address", self.address, 0, MAX_ADDRESS)
        _check_int("value", self.value, 0, MAX_REGISTER_VALUE)


@dataclass(frozen=True, kw_only=True, slots=True)
class WriteMultipleRegisters:
    """FC 16: write ``values`` to consecutive registers from ``address`` (app spec §6.12)."""

    function: ClassVar[int] = FC_WRITE_MULTIPLE_REGISTERS
    unit: int
    address: int
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_int("unit", self.unit, MIN_UNIT, MAX_UNIT)
        _check_int("address", self.address, 0, MAX_ADDRESS)
        if not isinstance(self.values, tuple):
            raise LocalProtocolError(f"values must be a tuple, got {type(self.values).__name__}")
        _check_int("len(values)", len(self.values), 1, MAX_WRITE_COUNT)
        for index, value in enumerate(self.values):
            _check_int(f"values[{index}]", value, 0, MAX_REGISTER_VALUE)
        _check_span(self.address, len(self.values))

    @property
    def count(self) -> int:
        """Number of registers written."""
        return len(self.values)


Request: TypeAlias = (
    ReadHoldingRegisters | ReadInputRegisters | WriteSingleRegister | WriteMultipleRegisters
)


def encode_pdu(request: Request) -> bytes:
    """The PDU (function code and data, app spec §4.1) of ``request``: what RTU and TCP share."""
    match request:
        case ReadHoldingRegisters() | ReadInputRegisters():
            return struct.pack(">BHH", request.function, request.address, request.count)
        case WriteSingleRegister():
            return struct.pack(">BHH", request.function, request.address, request.value)
        case WriteMultipleRegisters():
            count = len(request.values)
            return struct.pack(
                f">BHHB{count}H",
                request.function,
                request.address,
                count,
                2 * count,
                *request.values,
            )


def encode_request(request: Request) -> bytes:
    """The complete RTU frame (unit, PDU, CRC) for ``request``."""
    return _with_crc(bytes((request.unit,)) + encode_pdu(request))


# --- Responses ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RegistersRead:
    """Reply to FC 03 / FC 04: ``values`` of the registers from ``address`` (the request's)."""

    unit: int
    function: int
    address: int
    values: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class RegisterWritten:
    """Reply to FC 06: the device echoed the address and value written."""

    unit: int
    address: int
    value: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RegistersWritten:
    """Reply to FC 16: the device confirmed ``count`` registers written from ``address``."""

    unit: int
    address: int
    count: int


Response: TypeAlias = RegistersRead | RegisterWritten | RegistersWritten


class NeedData(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Returned by :meth:`ResponseDecoder.next_event` until a whole frame is in."""


# --- Decoder ------------------------------------------------------------------------


class ResponseDecoder:
    """Parses the reply to one request, from bytes fed in any chunks.

    ``next_event()`` returns :data:`NEED_DATA` until the frame is complete,
    then the response, or raises a :class:`RemoteProtocolError` subclass. The
    frame length is known from the first 2 or 3 bytes (serial spec §2.5.1 has
    no length field: it follows from the function code and, for reads, the
    byte count; a function code of unknown shape is framed as the reply we
    expect, so that the CRC can still tell corruption from a real wrong
    function; a length over 256 bytes is rejected at once). Checks, in order:
    CRC (so a corrupted unit byte reads as a CRC error, not as another device),
    unit, function, exception code, byte count and write echoes, and no bytes
    past the end of the frame.

    Once it has given a result the decoder is finished: later calls return the
    same response or raise the same error, except that more bytes after a
    complete response turn it into a :class:`MalformedResponse`.
    """

    def __init__(self, request: Request) -> None:
        self._request = request
        self._buffer = bytearray()
        self._response: Response | None = None
        self._frame_length = 0
        self._error: RemoteProtocolError | None = None

    @property
    def request(self) -> Request:
        """The request whose reply this decoder parses."""
        return self._request

    def receive_data(self, data: bytes) -> None:
        """Append bytes received from the line."""
        self._buffer += data

    def next_event(self) -> Response | NeedData:
        """The response, :data:`NEED_DATA`, or raise why the reply is invalid."""
        if self._error is not None:
            raise self._error
        try:
            if self._response is not None:
                self._check_no_trailing(self._frame_length)
                return self._response
            return self._parse()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    # Internals --------------------------------------------------------------

    def _malformed(self, message: str) -> MalformedResponse:
        return MalformedResponse(message, unit=self._request.unit, function=self._request.function)

    def _expected_length(self) -> int | None:
        """Frame length implied by the bytes so far, or None if not yet known."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        function = buffer[1]
        if function & EXCEPTION_FLAG:
            return _EXCEPTION_FRAME_LENGTH
        if function in (FC_READ_HOLDING_REGISTERS, FC_READ_INPUT_REGISTERS):
            if len(buffer) < _READ_HEADER_LENGTH:
                return None
            return _READ_FRAME_OVERHEAD + buffer[2]
        if function in (FC_WRITE_SINGLE_REGISTER, FC_WRITE_MULTIPLE_REGISTERS):
            return _WRITE_ECHO_FRAME_LENGTH
        # A function code whose frame shape we do not know: most likely our own
        # reply with a corrupted function byte. Frame it as that reply would be,
        # so the CRC check can tell corruption from a device really answering
        # with another function.
        return self._length_of_expected_reply()

    def _length_of_expected_reply(self) -> int:
        match self._request:
            case ReadHoldingRegisters() | ReadInputRegisters():
                return _READ_FRAME_OVERHEAD + 2 * self._request.count
            case WriteSingleRegister() | WriteMultipleRegisters():
                return _WRITE_ECHO_FRAME_LENGTH

    def _check_no_trailing(self, length: int) -> None:
        if len(self._buffer) > length:
            extra = bytes(self._buffer[length:])
            raise self._malformed(
                f"{len(extra)} byte(s) after the end of a {length}-byte frame: {extra.hex(' ')}",
            )

    def _parse(self) -> Response | NeedData:
        length = self._expected_length()
        if length is None:
            return NEED_DATA
        if length > MAX_ADU_LENGTH:
            raise self._malformed(
                f"frame would be {length} bytes, over the RTU maximum of {MAX_ADU_LENGTH}: "
                f"starts {bytes(self._buffer[:_READ_HEADER_LENGTH]).hex(' ')}",
            )
        if len(self._buffer) < length:
            return NEED_DATA
        frame = bytes(self._buffer[:length])
        request = self._request
        unit, function = request.unit, request.function

        received_crc = int.from_bytes(frame[-_CRC_LENGTH:], "little")
        computed_crc = crc16(frame[:-_CRC_LENGTH])
        if received_crc != computed_crc:
            raise CrcError(
                f"CRC mismatch: frame carries 0x{received_crc:04X}, content gives "
                f"0x{computed_crc:04X} (frame {frame.hex(' ')})",
                unit=unit,
                function=function,
                received_crc=received_crc,
                computed_crc=computed_crc,
            )
        if frame[0] != unit:
            raise WrongUnit(
                f"reply comes from unit {frame[0]} (frame {frame.hex(' ')})",
                unit=unit,
                function=function,
                received_unit=frame[0],
            )
        try:
            outcome = parse_pdu(request, frame[1:-_CRC_LENGTH], frame=frame)
        except ExceptionResponse:
            # Bytes after an exception frame make the whole reply malformed.
            self._check_no_trailing(length)
            raise
        self._check_no_trailing(length)
        self._response = outcome
        self._frame_length = length
        return outcome


# Shapes of a reply's PDU (app spec §6.3, §6.4, §6.6, §6.12, §7): function + exception
# code; function + byte count + registers; function + address + value or quantity.
_EXCEPTION_PDU_LENGTH: Final = 2
_READ_PDU_OVERHEAD: Final = 2
_WRITE_ECHO_PDU_LENGTH: Final = 5


def parse_pdu(request: Request, pdu: bytes, *, frame: bytes | None = None) -> Response:
    """The response to ``request`` carried by ``pdu`` (function code and data).

    Shared by the RTU decoder and MBAP (TCP) framing; both have already checked that the
    frame is whole and comes from the request's unit. Raises :class:`ExceptionResponse`
    for a Modbus exception, :class:`WrongFunction`, or :class:`MalformedResponse` (wrong
    length or byte count, a write echo differing from what we wrote). ``frame``, the
    whole frame, is shown in messages (default: the PDU).
    """
    unit, function = request.unit, request.function
    shown = (pdu if frame is None else frame).hex(" ")

    def malformed(message: str) -> MalformedResponse:
        return MalformedResponse(message, unit=unit, function=function)

    if not pdu:
        raise malformed("empty PDU")
    if pdu[0] == function | EXCEPTION_FLAG:
        if len(pdu) != _EXCEPTION_PDU_LENGTH:
            raise malformed(f"exception PDU of {len(pdu)} bytes, expected 2 ({shown})")
        if pdu[1] == 0:
            raise malformed("exception response with exception code 0")
        raise ExceptionResponse(unit=unit, function=function, exception_code=pdu[1])
    if pdu[0] != function:
        raise WrongFunction(
            f"reply carries function 0x{pdu[0]:02X} (frame {shown})",
            unit=unit,
            function=function,
            received_function=pdu[0],
        )
    match request:
        case ReadHoldingRegisters() | ReadInputRegisters():
            byte_count = pdu[1] if len(pdu) > 1 else 0
            if byte_count != 2 * request.count:
                raise malformed(
                    f"byte count {byte_count}, expected {2 * request.count} "
                    f"for {request.count} register(s)",
                )
            if len(pdu) != _READ_PDU_OVERHEAD + byte_count:
                raise malformed(
                    f"PDU of {len(pdu)} bytes, expected {_READ_PDU_OVERHEAD + byte_count} ({shown})"
                )
            values = struct.unpack_from(f">{request.count}H", pdu, _READ_PDU_OVERHEAD)
            return RegistersRead(
                unit=unit, function=function, address=request.address, values=values
            )
        case WriteSingleRegister() | WriteMultipleRegisters():
            if len(pdu) != _WRITE_ECHO_PDU_LENGTH:
                raise malformed(f"write echo of {len(pdu)} bytes, expected 5 ({shown})")
            address, second = struct.unpack_from(">HH", pdu, 1)
            _check_echo(request, "address", address, request.address)
            if isinstance(request, WriteSingleRegister):
                _check_echo(request, "value", second, request.value)
                return RegisterWritten(unit=unit, address=address, value=second)
            _check_echo(request, "count", second, request.count)
            return RegistersWritten(unit=unit, address=address, count=second)


def _check_echo(request: Request, field: str, received: int, sent: int) -> None:
    if received != sent:
        raise MalformedResponse(
            f"write echo {field} is {received} (0x{received:04X}), we wrote {sent} (0x{sent:04X})",
            unit=request.unit,
            function=request.function,
        )

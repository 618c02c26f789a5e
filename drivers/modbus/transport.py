"""Modbus RTU master over an asyncio serial line: the only Modbus module that awaits.

It owns one serial port (an RS-485 line shared by several devices) and runs
one transaction at a time on it: wait for the inter-frame silence, send the
request frame built by :mod:`drivers.modbus.codec`, feed what comes back to a
:class:`~drivers.modbus.codec.ResponseDecoder` until it gives a response or an
error, or the response timeout elapses.

Timings use the event loop's clock (``loop.time()``): this is the I/O layer,
measuring the line, not application logic (DESIGN.md, "Time is injected").

The port is opened with pyserial-asyncio-fast. We open the ``serial.Serial``
ourselves and hand it to ``serial_asyncio_fast.connection_for_serial`` (what
``open_serial_connection`` does underneath) with our own small
``asyncio.Protocol`` instead of a ``StreamReader``: the protocol sees every
chunk when it arrives, so the silence rule holds even for bytes that come in
between transactions, and stale bytes can be dropped without reading them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import termios
from types import TracebackType
from typing import Final, Self

import serial
import serial_asyncio_fast

from drivers.bus_lock import ROUTINE, PriorityLock
from drivers.health import DeviceHealth, LineHealth, Outcome
from drivers.modbus.codec import (
    NEED_DATA,
    CrcError,
    ExceptionResponse,
    LineBusy,
    LocalProtocolError,
    NoResponse,
    RemoteProtocolError,
    Request,
    Response,
    ResponseDecoder,
    TruncatedResponse,
    WrongFunction,
    WrongUnit,
    encode_request,
)

__all__ = ["PortUnavailable", "RtuTransport", "inter_frame_gap"]

log = logging.getLogger(__name__)

# Serial spec §2.5.1.1: a character on an RTU line is 11 bits (start, 8 data,
# parity or a second stop bit, stop), and frames are separated by at least
# 3.5 character times of silence.
BITS_PER_CHARACTER: Final = 11
INTER_FRAME_CHARACTERS: Final = 3.5
# Serial spec §2.5.1.1: above 19200 baud, use a fixed 1.75 ms for t3.5.
FIXED_GAP_ABOVE_BAUD: Final = 19200
FIXED_INTER_FRAME_GAP: Final = 0.00175

# Serial spec §2.5.1: RTU uses 8 data bits; parity even (the default), odd or none.
RTU_BYTESIZE: Final = 8
PARITIES: Final = frozenset({"N", "E", "O"})
STOP_BITS: Final = frozenset({1, 2})

# Capacity of the receive buffer during a transaction. A valid reply is at most
# 256 bytes (serial spec §2.5.1) and the decoder rejects anything longer, so a
# few KiB is never reached by a device that respects framing; past it the
# oldest bytes are dropped (and counted) rather than growing without bound.
RX_BUFFER_CAPACITY: Final = 4096

# Reopening a port that is absent or went away (a USB-RS485 adapter unplugged):
# first retry after REOPEN_MIN, doubling up to REOPEN_MAX, +/- REOPEN_JITTER. A
# retry is one open() attempt, cheap; the cap bounds how long a port that came
# back stays unused.
REOPEN_MIN: Final = 1.0
REOPEN_MAX: Final = 30.0
REOPEN_JITTER: Final = 0.1


class PortUnavailable(ConnectionError):
    """The port is not open right now (absent, or lost and not yet reopened).

    A ``ConnectionError`` (so an ``OSError``): the device behind it counts as
    silent, and :meth:`RtuTransport.keep_open` brings the port back.
    """


def inter_frame_gap(baudrate: int) -> float:
    """Minimum silence between two frames, in seconds (serial spec §2.5.1.1, t3.5)."""
    if baudrate > FIXED_GAP_ABOVE_BAUD:
        return FIXED_INTER_FRAME_GAP
    return INTER_FRAME_CHARACTERS * BITS_PER_CHARACTER / baudrate


def _reason(exc: Exception | None) -> str:
    """A short why for a port that is not open: the OS's words when there are some
    (pyserial repeats the port's name twice in its own message)."""
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) if exc is not None else "closed"


class _Line(asyncio.Protocol):
    """Receives bytes from the serial transport and notes when the line last spoke.

    Bytes are kept only while a transaction is listening for its reply
    (``listening``); anything that arrives otherwise is stale by definition,
    so it is dropped on arrival and only counted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.buffer = bytearray()
        self.listening = False
        self.last_rx = -math.inf
        self.discarded_bytes = 0
        self.data_arrived = asyncio.Event()
        self.lost = False
        self.lost_reason: Exception | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        if self.listening:
            self.buffer += data
            overflow = len(self.buffer) - RX_BUFFER_CAPACITY
            if overflow > 0:
                del self.buffer[:overflow]
                self.discarded_bytes += overflow
        else:
            self.discarded_bytes += len(data)
        self.data_arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_reason = exc
        self.data_arrived.set()  # wake a transaction waiting for its reply
        if not self.closed.done():
            self.closed.set_result(None)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class RtuTransport:
    """A Modbus RTU master on one serial port; one transaction at a time.

    ``response_timeout`` bounds, from the moment the request has left the
    wire, the wait for a complete reply; it also bounds the wait for a busy
    line to fall silent before sending.

    Errors from :meth:`transact`: the reply's faults as
    :class:`~drivers.modbus.codec.RemoteProtocolError` subclasses (including
    ``NoResponse``, ``TruncatedResponse`` and ``LineBusy``);
    :class:`~drivers.modbus.codec.LocalProtocolError` if the transport is not
    open; :class:`ConnectionError` if the port went away (e.g. a USB adapter
    unplugged), after which the transport must be closed and opened again.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        parity: str,
        stopbits: int,
        response_timeout: float,
        bytesize: int = RTU_BYTESIZE,
    ) -> None:
        if baudrate <= 0:
            raise LocalProtocolError(f"baudrate must be positive, got {baudrate}")
        if bytesize != RTU_BYTESIZE:
            raise LocalProtocolError(f"bytesize must be {RTU_BYTESIZE} for RTU, got {bytesize}")
        if parity not in PARITIES:
            raise LocalProtocolError(f"parity must be one of N, E, O, got {parity!r}")
        if stopbits not in STOP_BITS:
            raise LocalProtocolError(f"stopbits must be 1 or 2, got {stopbits}")
        if not response_timeout > 0:
            raise LocalProtocolError(f"response_timeout must be positive, got {response_timeout}")
        self._port = port
        self._baudrate = baudrate
        self._bytesize = bytesize
        self._parity = parity
        self._stopbits = stopbits
        self._response_timeout = response_timeout
        self._gap = inter_frame_gap(baudrate)
        self._char_time = BITS_PER_CHARACTER / baudrate
        self._lock = PriorityLock()
        # Set while keep_open() looks after the port: a closed port is then a
        # condition of the line (PortUnavailable), not a bug of the caller.
        self._kept = False
        self._last_error: Exception | None = None
        self.reopens = 0
        self._transport: asyncio.Transport | None = None
        self._line: _Line | None = None
        # When the last byte we wrote is expected to have left the wire.
        self._last_tx_end = -math.inf
        self._health: dict[int, DeviceHealth] = {}
        self.line_health = LineHealth()
        self._sent_at = 0.0
        self._stats = {
            "transactions": 0,
            "responses": 0,
            "timeouts": 0,
            "crc_errors": 0,
            "exception_responses": 0,
            "other_errors": 0,
            "discarded_bytes": 0,
        }

    @property
    def port(self) -> str:
        """The serial port this transport drives."""
        return self._port

    @property
    def inter_frame_gap(self) -> float:
        """The silence, in seconds, kept before each request (t3.5 at this baud rate)."""
        return self._gap

    async def open(self) -> None:
        """Open the serial port.

        Raises ``serial.SerialException`` (an :class:`OSError` subclass) whose
        message names the port, when the port cannot be opened or does not
        accept the settings (for instance a pty asked for even parity: Linux
        ptys refuse PARENB).
        """
        if self._transport is not None:
            raise LocalProtocolError(f"{self._port} is already open")
        loop = asyncio.get_running_loop()
        instance = await loop.run_in_executor(None, self._open_serial)
        line = _Line(loop)
        try:
            transport, _ = await serial_asyncio_fast.connection_for_serial(
                loop, lambda: line, instance
            )
        except BaseException:
            instance.close()
            raise
        self._transport = transport
        self._line = line
        self._last_tx_end = -math.inf

    def _open_serial(self) -> serial.Serial:
        """Open and configure the port (blocking: runs in an executor)."""
        instance = serial.Serial()
        instance.port = self._port
        instance.baudrate = self._baudrate
        instance.bytesize = self._bytesize
        instance.parity = self._parity
        instance.stopbits = self._stopbits
        # Non-blocking, as the asyncio transport requires; set before opening
        # so the port is configured once.
        instance.timeout = 0
        instance.write_timeout = 0
        # flock(LOCK_EX): a second process on the same line (a stray agent, a technician's
        # tool) would interleave its frames with ours; it is refused at open instead.
        instance.exclusive = True
        try:
            instance.open()  # closes its descriptor itself if configuring fails
        except termios.error as exc:
            # pyserial lets termios.error (not an OSError) escape from tcsetattr.
            raise self._refused(exc) from exc
        try:
            self._check_framing(instance.fileno())
        except BaseException:
            instance.close()
            raise
        return instance

    def _check_framing(self, fd: int) -> None:
        """Fail unless the port really uses our character framing.

        tcsetattr succeeds when *some* of the requested changes were applied
        (POSIX), so a driver can silently drop one: Linux ptys drop PARENB when
        raw mode is set in the same call, then refuse it with EINVAL on the next
        (pyserial issue #196). A line with the wrong parity corrupts every frame.
        """
        try:
            cflag = termios.tcgetattr(fd)[2]
        except termios.error as exc:
            raise self._refused(exc) from exc
        applied = (
            cflag & termios.CSIZE == termios.CS8,
            bool(cflag & termios.PARENB) == (self._parity != "N"),
            self._parity == "N" or bool(cflag & termios.PARODD) == (self._parity == "O"),
            bool(cflag & termios.CSTOPB) == (self._stopbits == 2),
        )
        if not all(applied):
            raise self._refused("the driver did not apply the character framing")

    def _refused(self, reason: object) -> serial.SerialException:
        settings = f"{self._baudrate} {self._bytesize}{self._parity}{self._stopbits}"
        return serial.SerialException(
            f"could not configure port {self._port} ({settings}): {reason}"
        )

    @property
    def last_error(self) -> Exception | None:
        """Why the port is not open (None while it is, or before the first attempt)."""
        return self._last_error

    @property
    def closed_reason(self) -> str | None:
        """Why the port is not open, in a few words (None while it is open)."""
        return None if self.is_open else _reason(self._last_error)

    @property
    def is_open(self) -> bool:
        """Whether the port is open and has not been lost."""
        return self._line is not None and not self._line.lost

    async def try_open(self) -> bool:
        """Open the port unless it is open; on failure remember why and return False.

        From then on the port is looked after: a transaction on a closed port
        raises :class:`PortUnavailable`. Run :meth:`keep_open` to reopen it.
        """
        self._kept = True
        if self.is_open:
            return True
        await self.close()
        try:
            await self.open()
        except OSError as exc:
            self._last_error = exc
            return False
        self._last_error = None
        return True

    async def keep_open(
        self,
        *,
        reopen_min: float = REOPEN_MIN,
        reopen_max: float = REOPEN_MAX,
        rng: random.Random | None = None,
    ) -> None:
        """Forever: reopen the port whenever it is absent or lost, with capped backoff.

        Logs once when the port becomes unavailable (naming it and the OS error),
        again only if the error changes, and once when it is back.
        """
        rng = rng or random.Random()
        delay = reopen_min
        # A failure of try_open() before this started was reported by its caller.
        reported = None if self._last_error is None else str(self._last_error)
        while True:
            if await self.try_open():
                if reported is not None:
                    self.reopens += 1
                    log.warning("serial port %s open again", self._port)
                reported = None
                delay = reopen_min
                assert self._line is not None
                await asyncio.shield(self._line.closed)
                reason = self._line.lost_reason
                log.error("serial port %s lost (%s); reopening", self._port, reason or "closed")
                reported = f"lost: {reason}"
                self._last_error = ConnectionError(f"{self._port} was lost: {reason}")
                await self.close()
                continue
            error = str(self._last_error)
            if error != reported:
                log.error(
                    "serial port %s unavailable: %s; retrying with backoff up to %g s",
                    self._port,
                    error,
                    reopen_max,
                )
                reported = error
            # The line's own timing, like the rest of this module (I/O, not logic).
            await asyncio.sleep(delay * (1 + rng.uniform(-REOPEN_JITTER, REOPEN_JITTER)))
            delay = min(delay * 2, reopen_max)

    async def close(self) -> None:
        """Close the port; a transaction in progress fails with ConnectionError. Idempotent."""
        transport, line = self._transport, self._line
        self._transport = None
        self._line = None
        if transport is None or line is None:
            return
        transport.close()
        await line.closed
        self._stats["discarded_bytes"] += line.discarded_bytes

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def statistics(self) -> dict[str, int]:
        """Counters since creation.

        ``transactions`` requests sent; ``responses`` valid replies;
        ``timeouts`` no complete reply in time (NoResponse, TruncatedResponse);
        ``crc_errors``; ``exception_responses`` Modbus exceptions from devices;
        ``other_errors`` any other RemoteProtocolError (wrong unit or function,
        malformed reply, busy line); ``discarded_bytes`` bytes received outside
        a reply (late replies, noise) and dropped.
        """
        stats = dict(self._stats)
        if self._line is not None:
            stats["discarded_bytes"] += self._line.discarded_bytes
        return stats

    async def transact(self, request: Request, *, priority: int = ROUTINE) -> Response:
        """Send ``request`` and return the device's validated reply.

        Concurrent calls are served one after the other: by ``priority``
        (``URGENT`` writes before ``ROUTINE`` polls), then in arrival order.
        """
        async with self._lock.hold(priority):
            transport, line = self._transport, self._line
            if transport is None or line is None:
                if self._kept:
                    raise PortUnavailable(
                        f"serial port {self._port} is not open ({_reason(self._last_error)})"
                    )
                raise LocalProtocolError(f"{self._port} is not open")
            loop = asyncio.get_running_loop()
            started = loop.time()
            health = self.device_health(request.unit)
            try:
                response = await self._transact_locked(transport, line, request)
            except LineBusy:
                # Nothing was sent, and we just spent the timeout waiting for quiet.
                self._stats["other_errors"] += 1
                health.record(Outcome.OTHER)
                raise
            except RemoteProtocolError as exc:
                outcome = self._count(exc)
                health.record(
                    outcome,
                    loop.time() - self._sent_at if outcome is Outcome.EXCEPTION else None,
                )
                # Let the rest of a bad or late reply pass, so the next
                # transaction starts on a quiet line.
                await self._wait_for_silence(line)
                if isinstance(exc, WrongUnit | WrongFunction):
                    await self._let_reply_pass(line)
                raise
            except ConnectionError:
                health.record(Outcome.OTHER)
                raise
            finally:
                self.line_health.add_busy(loop.time() - started)
            self._stats["responses"] += 1
            health.record(Outcome.ANSWERED, loop.time() - self._sent_at)
            return response

    def device_health(self, unit: int) -> DeviceHealth:
        """The bus health of the device at ``unit`` on this line (created on first use)."""
        health = self._health.get(unit)
        if health is None:
            health = self._health[unit] = DeviceHealth()
        return health

    def _count(self, exc: RemoteProtocolError) -> Outcome:
        match exc:
            case NoResponse() | TruncatedResponse():
                self._stats["timeouts"] += 1
                return Outcome.TIMEOUT
            case CrcError():
                self._stats["crc_errors"] += 1
                return Outcome.FRAMING
            case ExceptionResponse():
                self._stats["exception_responses"] += 1
                return Outcome.EXCEPTION
            case _:
                self._stats["other_errors"] += 1
                return Outcome.OTHER

    async def _transact_locked(
        self, transport: asyncio.Transport, line: _Line, request: Request
    ) -> Response:
        loop = asyncio.get_running_loop()
        if not await self._wait_for_silence(line):
            raise LineBusy(
                f"line {self._port} did not stay silent for {self._gap * 1000:.2f} ms "
                f"within {self._response_timeout} s; request not sent",
                unit=request.unit,
                function=request.function,
            )
        self._check_alive(line)
        frame = encode_request(request)
        decoder = ResponseDecoder(request)
        line.buffer.clear()
        line.listening = True
        try:
            transport.write(frame)
            self._sent_at = loop.time()
            self._stats["transactions"] += 1
            # The UART still has to shift the frame out; the device cannot
            # answer before it has heard the last byte.
            self._last_tx_end = loop.time() + len(frame) * self._char_time
            received = 0
            try:
                async with asyncio.timeout_at(self._last_tx_end + self._response_timeout):
                    while True:
                        if line.buffer:
                            chunk = line.take()
                            received += len(chunk)
                            decoder.receive_data(chunk)
                            event = decoder.next_event()
                            if event is not NEED_DATA:
                                return event
                        self._check_alive(line)
                        line.data_arrived.clear()
                        await line.data_arrived.wait()
            except TimeoutError as exc:
                if received:
                    raise TruncatedResponse(
                        f"only {received} byte(s) of the reply arrived within "
                        f"{self._response_timeout} s",
                        unit=request.unit,
                        function=request.function,
                    ) from exc
                raise NoResponse(
                    f"no reply within {self._response_timeout} s",
                    unit=request.unit,
                    function=request.function,
                ) from exc
        finally:
            line.listening = False
            line.buffer.clear()

    def _check_alive(self, line: _Line) -> None:
        if line.lost:
            raise ConnectionError(f"serial port {self._port} is closed") from line.lost_reason

    async def _let_reply_pass(self, line: _Line) -> None:
        """After a reply to an earlier request (a device that answered late), let the
        answer to this one pass too, if it comes within the response timeout.

        Failing at once left that answer on the line, to be read by the next
        transaction as its own reply, and so on: one slow spell put every later
        transaction one reply behind, and the device never answered again.
        """
        loop = asyncio.get_running_loop()
        heard = line.last_rx
        deadline = self._last_tx_end + self._response_timeout
        while not line.lost and line.last_rx == heard and loop.time() < deadline:
            line.data_arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await line.data_arrived.wait()
        if line.last_rx != heard:
            await self._wait_for_silence(line)

    async def _wait_for_silence(self, line: _Line) -> bool:
        """Wait until neither side has spoken for the inter-frame gap.

        Bytes arriving meanwhile are dropped (``line.listening`` is false) and
        push the quiet moment back. Gives up after the response timeout and
        returns False if the line never fell quiet.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._response_timeout
        while not line.lost:
            quiet_at = max(line.last_rx, self._last_tx_end) + self._gap
            now = loop.time()
            if now >= quiet_at:
                return True
            if now >= give_up:
                return False
            # I/O timing, not logic: the silence itself is what we wait for.
            await asyncio.sleep(min(quiet_at, give_up) - now)
        return True

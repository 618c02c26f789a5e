"""Modbus TCP master transport: one asyncio connection, MBAP framing, replies by id.

The only file of the Modbus TCP driver that awaits. It owns one TCP connection to
a server (a device, or a gateway to a serial bus whose devices are told apart by
unit id), keeps it open with capped, jittered backoff, and carries up to
``inflight`` transactions at once on it (default 1: many devices and gateways
serve one request at a time and drop or confuse the others). Replies are matched to
requests by transaction id, so a late reply to a request that timed out is
recognised and dropped, not taken for the next one's.

Errors from :meth:`TcpTransport.transact`: the reply's faults as
:class:`~drivers.modbus.codec.RemoteProtocolError` subclasses (``NoResponse``,
``ExceptionResponse``, ``WrongUnit``, ``MalformedResponse``, ``FramingError``);
:class:`ConnectionError` when not connected or the connection drops meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Final

from drivers.bus_lock import ROUTINE, PriorityLock
from drivers.health import DeviceHealth, LineHealth, Outcome
from drivers.modbus.codec import (
    NEED_DATA,
    ExceptionResponse,
    LocalProtocolError,
    NoResponse,
    RemoteProtocolError,
    Request,
    Response,
    WrongUnit,
    parse_pdu,
)
from drivers.modbus.mbap import MAX_TRANSACTION_ID, AduDecoder, FramingError, encode_adu

log = logging.getLogger(__name__)

# Reconnection backoff: as for a serial line (drivers/modbus/transport.py), a server
# that restarts is back within seconds, one that is gone is tried twice a minute.
RECONNECT_MIN: Final = 1.0
RECONNECT_MAX: Final = 30.0
RECONNECT_JITTER: Final = 0.1
# TCP guide §4.3.1.2: a client may keep several transactions outstanding, but a server
# is only required to queue a few; 16 is well beyond what a field device accepts.
MAX_INFLIGHT: Final = 16


class _Connection(asyncio.Protocol):
    """Feeds received bytes to the owner; notes when the connection is lost."""

    def __init__(self, owner: TcpTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self.transport: asyncio.Transport | None = None
        self.decoder = AduDecoder()
        self.lost_reason: Exception | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._owner._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_reason = exc
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner._lost(self, exc)

    @property
    def lost(self) -> bool:
        return self.closed.done()


class TcpTransport:
    """A Modbus TCP client connection to ``host:port``."""

    def __init__(self, host: str, port: int, *, response_timeout: float, inflight: int = 1) -> None:
        if not 1 <= port <= 0xFFFF:
            raise LocalProtocolError(f"port must be in 1..65535, got {port}")
        if not response_timeout > 0:
            raise LocalProtocolError(f"response_timeout must be positive, got {response_timeout}")
        if not 1 <= inflight <= MAX_INFLIGHT:
            raise LocalProtocolError(f"inflight must be in 1..{MAX_INFLIGHT}, got {inflight}")
        self._host = host
        self._port = port
        self._response_timeout = response_timeout
        self._slots = PriorityLock(inflight)
        self._conn: _Connection | None = None
        self._pending: dict[int, tuple[Request, asyncio.Future[Response]]] = {}
        self._next_id = 0
        self._last_error: Exception | None = None
        self.reconnects = 0
        self._health: dict[int, DeviceHealth] = {}
        self.line_health = LineHealth()
        self._stats = {
            "transactions": 0,
            "responses": 0,
            "timeouts": 0,
            "exception_responses": 0,
            "framing_errors": 0,
            "other_errors": 0,
            "late_replies": 0,
        }

    @property
    def name(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._conn.lost

    @property
    def last_error(self) -> Exception | None:
        return self._last_error

    @property
    def closed_reason(self) -> str | None:
        if self.is_open:
            return None
        return str(self._last_error) if self._last_error is not None else "not connected"

    def device_health(self, unit: int) -> DeviceHealth:
        """The bus health of the unit id ``unit`` behind this connection."""
        health = self._health.get(unit)
        if health is None:
            health = self._health[unit] = DeviceHealth()
        return health

    def statistics(self) -> dict[str, int]:
        """Counters since creation; ``late_replies``: replies to requests that timed out."""
        return {**self._stats, "inflight": len(self._pending)}

    async def try_open(self) -> bool:
        """Connect unless connected; on failure remember why and return False."""
        if self.is_open:
            return True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._response_timeout * 10):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, loop), self._host, self._port
                )
        except (OSError, TimeoutError) as exc:
            self._last_error = (
                ConnectionError(f"connecting to {self.name} timed out")
                if isinstance(exc, TimeoutError)
                else exc
            )
            return False
        self._conn = conn
        self._last_error = None
        return True

    async def keep_open(
        self,
        *,
        reconnect_min: float = RECONNECT_MIN,
        reconnect_max: float = RECONNECT_MAX,
        rng: random.Random | None = None,
    ) -> None:
        """Forever: connect whenever not connected, with capped, jittered backoff.

        Logs once when the server becomes unreachable, again only if the error
        changes, and once when it is back.
        """
        rng = rng or random.Random()
        delay = reconnect_min
        reported = None if self._last_error is None else str(self._last_error)
        while True:
            if await self.try_open():
                if reported is not None:
                    self.reconnects += 1
                    log.warning("Modbus TCP server %s connected again", self.name)
                reported = None
                delay = reconnect_min
                conn = self._conn
                assert conn is not None
                await asyncio.shield(conn.closed)
                reason = conn.lost_reason
                log.error("Modbus TCP connection to %s lost (%s)", self.name, reason or "closed")
                reported = f"lost: {reason}"
                self._last_error = ConnectionError(f"connection to {self.name} lost: {reason}")
                continue
            error = str(self._last_error)
            if error != reported:
                log.error(
                    "Modbus TCP server %s unreachable: %s; retrying with backoff up to %g s",
                    self.name,
                    error,
                    reconnect_max,
                )
                reported = error
            # The connection's own timing, like the timeouts (I/O, not logic).
            await asyncio.sleep(delay * (1 + rng.uniform(-RECONNECT_JITTER, RECONNECT_JITTER)))
            delay = min(delay * 2, reconnect_max)

    async def close(self) -> None:
        """Close the connection; transactions in progress fail with ConnectionError."""
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            await conn.closed

    async def transact(self, request: Request, *, priority: int = ROUTINE) -> Response:
        """Send ``request`` and return the server's validated reply.

        Up to ``inflight`` transactions run at once; beyond that they wait by
        ``priority`` (writes first), then in arrival order.
        """
        async with self._slots.hold(priority):
            conn = self._conn
            if conn is None or conn.lost or conn.transport is None:
                raise ConnectionError(
                    f"not connected to Modbus TCP server {self.name} ({self.closed_reason})"
                )
            loop = asyncio.get_running_loop()
            health = self.device_health(request.unit)
            transaction_id = self._allocate_id()
            reply: asyncio.Future[Response] = loop.create_future()
            self._pending[transaction_id] = (request, reply)
            sent = loop.time()
            try:
                conn.transport.write(encode_adu(transaction_id, request))
                self._stats["transactions"] += 1
                try:
                    async with asyncio.timeout(self._response_timeout):
                        response = await reply
                except TimeoutError as exc:
                    self._stats["timeouts"] += 1
                    health.record(Outcome.TIMEOUT)
                    raise NoResponse(
                        f"no reply from {self.name} within {self._response_timeout} s",
                        unit=request.unit,
                        function=request.function,
                    ) from exc
                except ExceptionResponse:
                    self._stats["exception_responses"] += 1
                    health.record(Outcome.EXCEPTION, loop.time() - sent)
                    raise
                except FramingError:
                    self._stats["framing_errors"] += 1
                    health.record(Outcome.FRAMING)
                    raise
                except (RemoteProtocolError, ConnectionError):
                    self._stats["other_errors"] += 1
                    health.record(Outcome.OTHER)
                    raise
            finally:
                self._pending.pop(transaction_id, None)
                self.line_health.add_busy(loop.time() - sent)
            self._stats["responses"] += 1
            health.record(Outcome.ANSWERED, loop.time() - sent)
            return response

    def _allocate_id(self) -> int:
        # Ids cycle through 0..65535; at most MAX_INFLIGHT are pending, so a new id
        # never collides with one still awaited.
        while True:
            transaction_id = self._next_id
            self._next_id = (self._next_id + 1) & MAX_TRANSACTION_ID
            if transaction_id not in self._pending:
                return transaction_id

    def _received(self, conn: _Connection, data: bytes) -> None:
        if conn is not self._conn:
            return
        conn.decoder.receive_data(data)
        while True:
            try:
                adu = conn.decoder.next_event()
            except FramingError as exc:
                # Out of step: no later byte can be trusted. Fail what is pending and
                # start a new connection (keep_open reconnects).
                self._fail_all(exc)
                if conn.transport is not None:
                    conn.transport.abort()
                return
            if adu is NEED_DATA:
                return
            entry = self._pending.pop(adu.transaction_id, None)
            if entry is None:
                self._stats["late_replies"] += 1
                continue
            request, reply = entry
            if reply.done():
                continue
            if adu.unit != request.unit:
                reply.set_exception(
                    WrongUnit(
                        f"reply comes from unit {adu.unit}",
                        unit=request.unit,
                        function=request.function,
                        received_unit=adu.unit,
                    )
                )
                continue
            try:
                reply.set_result(parse_pdu(request, adu.pdu))
            except RemoteProtocolError as exc:
                reply.set_exception(exc)

    def _lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is self._conn:
            self._fail_all(ConnectionError(f"connection to {self.name} lost: {exc or 'closed'}"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for _, reply in pending.values():
            if not reply.done():
                reply.set_exception(exc)

"""The cabinet I/O module as a :class:`drivers.device.Device`, over its serial line.

The codec (:mod:`drivers.iomodule.codec`) does the bytes; this file owns the port, the
request/reply matching, timeouts and retries. :meth:`IoModule.watch` is the one reader
of the line: it reports every input change the module sends (CHANGE frames) as it
arrives, and resolves the replies that :meth:`read` (a PING) and :meth:`write` (a
SET_RELAYS) wait for. The agent's polls are also the module's keepalive: a module that
hears nothing for its ``safe_after_ms`` puts its relays in their safe state and says so
(``safe_state`` true); the next write, or the re-assertion done here when a STATUS shows
the safe state while the agent holds relay values, takes them back.

Lost and corrupt frames: every module frame carries the module's whole state, so a gap
in the module's sequence numbers or a discarded frame costs nothing but a PING, sent at
once so that a lost CHANGE is seen within one round trip rather than at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import serial
import serial_asyncio_fast

from drivers.device import DriverError, Reading, Report
from drivers.iomodule.codec import (
    NEED_DATA,
    Discarded,
    Flag,
    FrameDecoder,
    Input,
    Nak,
    Ping,
    Relay,
    Request,
    SetRelays,
    Status,
    encode,
)

log = logging.getLogger(__name__)

# A reply at 115200 baud is 13 bytes (~1.2 ms) plus the module's scan slice (10 ms); 250 ms
# leaves room for a loaded Unix-port module in CI without slowing a real failure much.
REPLY_TIMEOUT: Final = 0.25
ATTEMPTS: Final = 3  # a lost or corrupt request is retried; three in a row is a failure
READ_CHUNK: Final = 256  # bytes per read from the port: a few frames

INPUT_POINTS: Final = {
    "door": Input.DOOR_OPEN,  # true: the door is open
    "mains": Input.MAINS_PRESENT,  # true: mains present
    "ups_battery": Input.UPS_ON_BATTERY,  # true: the UPS runs on its battery
    "spd": Input.SPD_TRIPPED,  # true: the surge arrester tripped
}
RELAY_POINTS: Final = {"relay_lighting": Relay.LIGHTING, "relay_aux": Relay.AUX}
POINTS: Final = (*INPUT_POINTS, "temperature", *RELAY_POINTS, "safe_state")


def status_points(status: Status) -> dict[str, Reading]:
    """The module's state as point values (short names)."""
    values: dict[str, Reading] = {
        name: bool(status.inputs & bit) for name, bit in INPUT_POINTS.items()
    }
    values["temperature"] = status.temperature
    values.update({name: bool(status.relays & bit) for name, bit in RELAY_POINTS.items()})
    values["safe_state"] = bool(status.flags & Flag.SAFE_STATE)
    return values


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatistics:
    frames: int  # good frames from the module
    discarded_bytes: int  # noise and corrupt frames thrown away
    lost: int  # module frames missing from its sequence
    naks: int  # frames the module threw away (it said so)
    retries: int  # requests sent again
    safe_state_seen: int  # times the module was found in its safe state


class _Protocol(asyncio.Protocol):
    def __init__(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._queue = queue

    def data_received(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._queue.put_nowait(None)


class IoModule:
    """One I/O module on one serial port (``port``: the board's device path)."""

    def __init__(self, name: str, *, port: Path, baudrate: int = 115200) -> None:
        self.name = name
        self._port = port
        self._baudrate = baudrate
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._open_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._seq = 0
        self._pending: dict[int, asyncio.Future[Status]] = {}
        self._last_module_seq: int | None = None
        self._wanted: dict[str, bool] = {}  # relay values the agent asked for
        self._report: Report | None = None
        self._watching = False  # watch() is the line's reader
        self.last: Status | None = None
        self._lost = self._naks = self._retries = self._safe_seen = 0

    # ------------------------------------------------------------------ Device

    async def read(self) -> Mapping[str, Reading]:
        status = await self._request(lambda seq: Ping(seq=seq))
        return status_points(status)

    async def write(self, point: str, value: Reading) -> Reading:
        bit = RELAY_POINTS.get(point)
        if bit is None:
            raise DriverError(
                f"{self.name}/{point} is not writable (relays: {', '.join(RELAY_POINTS)})"
            )
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise DriverError(f"{self.name}/{point}: expected true or false, got {value!r}")
        on = bool(value)
        self._wanted[point] = on
        status = await self._request(
            lambda seq: SetRelays(seq=seq, mask=bit, values=bit if on else Relay(0))
        )
        return bool(status.relays & bit)

    async def action(self, action: str, args: Mapping[str, Reading]) -> object:
        raise DriverError(f"{self.name}: no action {action!r} (the I/O module has none)")

    async def watch(self, report: Report) -> None:
        """Read the line forever, reporting input changes as they come."""
        self._report = report
        self._watching = True
        try:
            while True:
                try:
                    await self._ensure_open()
                except DriverError:
                    await asyncio.sleep(1.0)  # the port comes back (USB adapter re-plugged)
                    continue
                self._take(await self._queue.get())
        finally:
            self._watching = False

    def _take(self, data: bytes | None) -> None:
        if data is None:  # the port went away
            self._close_transport()
        else:
            self._receive(data)

    async def close(self) -> None:
        self._close_transport()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            frames=self._decoder.frames,
            discarded_bytes=self._decoder.discarded,
            lost=self._lost,
            naks=self._naks,
            retries=self._retries,
            safe_state_seen=self._safe_seen,
        )

    # ------------------------------------------------------------------ inside

    async def _ensure_open(self) -> None:
        async with self._open_lock:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            try:
                instance = await loop.run_in_executor(None, self._open_serial)
                transport, _ = await serial_asyncio_fast.connection_for_serial(
                    loop, lambda: _Protocol(self._queue), instance
                )
            except (OSError, serial.SerialException) as exc:
                raise DriverError(f"{self._port}: {exc}", timeout=True) from exc
            self._transport = transport

    def _open_serial(self) -> serial.Serial:
        instance = serial.Serial()
        instance.port = str(self._port)
        instance.baudrate = self._baudrate
        instance.timeout = 0
        instance.write_timeout = 0
        instance.open()
        return instance

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _request(self, make: Callable[[int], Request]) -> Status:
        await self._ensure_open()
        failure = "no answer"
        async with self._send_lock:  # one request in flight: replies match by seq anyway
            for attempt in range(ATTEMPTS):
                if attempt:
                    self._retries += 1
                seq = self._take_seq()
                request = make(seq)
                future: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
                self._pending[seq] = future
                try:
                    if self._transport is None:
                        raise DriverError(f"{self._port}: closed", timeout=True)
                    self._transport.write(encode(request))
                    async with asyncio.timeout(REPLY_TIMEOUT):
                        # Before the poller starts watch() (the relays' defaults are
                        # written at start), the request reads its reply itself.
                        while not self._watching and not future.done():
                            self._take(await self._queue.get())
                        return await future
                except TimeoutError:
                    failure = "no answer"
                except _NakError as exc:
                    failure = f"refused: NAK reason {exc.reason}"
                finally:
                    self._pending.pop(seq, None)
        raise DriverError(
            f"{self.name}: {failure} after {ATTEMPTS} attempts", timeout=failure == "no answer"
        )

    def _receive(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        resync = False
        while (event := self._decoder.next_event()) is not NEED_DATA:
            match event:
                case Discarded(count=count, reason=reason):
                    log.debug("%s: %d bytes discarded (%s)", self.name, count, reason)
                    resync = True
                case Nak(seq=seq, reason=reason):
                    self._naks += 1
                    self._sequence(seq)
                    # A NAK names no request (the module could not read it): fail the
                    # one in flight so that it is sent again now, not after its timeout.
                    for future in self._pending.values():
                        if not future.done():
                            future.set_exception(_NakError(reason))
                case Status() as status:
                    resync |= self._sequence(status.seq)
                    self._status(status)
        if resync and not self._send_lock.locked():
            # A lost or corrupt frame may have been a CHANGE: ask for the state now.
            self._fire(Ping(seq=self._take_seq()))

    def _take_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) & 0xFF
        return seq

    def _fire(self, request: Request) -> None:
        if self._transport is not None:
            self._transport.write(encode(request))

    def _sequence(self, seq: int) -> bool:
        """Count frames missing before ``seq``; True if some were."""
        last, self._last_module_seq = self._last_module_seq, seq
        if last is None:
            return False
        gap = (seq - last - 1) & 0xFF
        self._lost += gap
        return gap > 0

    def _status(self, status: Status) -> None:
        previous, self.last = self.last, status
        if status.solicited:
            future = self._pending.get(status.ack)
            if future is not None and not future.done():
                future.set_result(status)
        if status.flags & Flag.SAFE_STATE:
            if previous is None or not previous.flags & Flag.SAFE_STATE:
                self._safe_seen += 1
                log.warning("%s: relays in their safe state (the module lost the agent)", self.name)
            self._reassert()
        if self._report is not None and (
            not status.solicited
            or previous is None
            or status_points(previous) != status_points(status)
        ):
            self._report(status_points(status))

    def _reassert(self) -> None:
        """Take the relays back after a safe-state spell, with the values the agent holds."""
        if not self._wanted:
            return
        mask = values = Relay(0)
        for point, on in self._wanted.items():
            mask |= RELAY_POINTS[point]
            if on:
                values |= RELAY_POINTS[point]
        self._fire(SetRelays(seq=self._take_seq(), mask=mask, values=values))


class _NakError(Exception):
    def __init__(self, reason: int) -> None:
        super().__init__(f"NAK {reason}")
        self.reason = reason

"""RtuTransport against a scripted device on the other end of a pseudo-terminal.

The transport opens the pty's slave side as its serial port; the test plays
the device on the master side with non-blocking reads from the event loop
(``loop.add_reader``), so both ends share one loop and one clock
(``loop.time()``) and timings can be compared directly.

Linux ptys refuse even/odd parity (tcsetattr fails with EINVAL on PARENB), so
these tests run the line as 8N2, the spec's no-parity framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import struct
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from drivers.modbus import (
    CrcError,
    ExceptionResponse,
    LineBusy,
    LocalProtocolError,
    NoResponse,
    PortUnavailable,
    ReadHoldingRegisters,
    ReadInputRegisters,
    RegistersRead,
    RegisterWritten,
    RtuTransport,
    TruncatedResponse,
    WriteSingleRegister,
    WrongFunction,
    inter_frame_gap,
)

# 2400 baud: a 16 ms inter-frame gap, roomy against scheduling jitter on a busy machine.
BAUDRATE = 2400
RESPONSE_TIMEOUT = 0.2
# How long the scripted device takes to answer when a test needs it to be
# slow; it shapes the device's behaviour, no test waits on it for a result.
DEVICE_TURNAROUND = 0.02


def crc(data: bytes) -> bytes:
    """CRC-16/MODBUS, bit by bit, low byte first: the device's own, not the codec's."""
    value = 0xFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return struct.pack("<H", value)


def read_reply(unit: int, function: int, *values: int) -> bytes:
    body = struct.pack(f">BBB{len(values)}H", unit, function, 2 * len(values), *values)
    return body + crc(body)


def request_length(buffer: bytes | bytearray) -> int | None:
    """Length of the request frame at the start of ``buffer``, once known."""
    if len(buffer) < 2:
        return None
    if buffer[1] == 0x10:
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return 8


class Device:
    """A scripted Modbus device on the master side of a pty."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._rx = bytearray()
        self._frame_start = 0.0
        self._requests: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        # ("rx" or "tx", loop time, bytes), in order.
        self.log: list[tuple[str, float, bytes]] = []
        self._reading = True
        self.loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            self.stop_reading()
            return
        now = self.loop.time()
        self.log.append(("rx", now, data))
        if not self._rx:
            self._frame_start = now
        self._rx += data
        while (length := request_length(self._rx)) is not None and len(self._rx) >= length:
            frame = bytes(self._rx[:length])
            del self._rx[:length]
            self._requests.put_nowait((frame, self._frame_start))
            self._frame_start = now

    def stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    async def next_request(self) -> tuple[bytes, float]:
        """The next complete request frame and when its first byte arrived."""
        async with asyncio.timeout(5):
            return await self._requests.get()

    def send(self, data: bytes) -> float:
        """Put ``data`` on the line now; returns the loop time it was written at."""
        os.write(self.fd, data)
        now = self.loop.time()
        self.log.append(("tx", now, data))
        return now

    def send_later(self, delay: float, data: bytes) -> None:
        self.loop.call_later(delay, self.send, data)


class Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.master_open = True

    def close_master(self) -> None:
        if self.master_open:
            os.close(self.master)
            self.master_open = False

    def close(self) -> None:
        self.close_master()
        os.close(self.slave)


@pytest.fixture
def pty_pair() -> Iterator[Pty]:
    pair = Pty()
    yield pair
    pair.close()


@pytest.fixture
async def device(pty_pair: Pty) -> AsyncIterator[Device]:
    dev = Device(pty_pair.master)
    yield dev
    dev.stop_reading()


@pytest.fixture
async def transport(pty_pair: Pty, device: Device) -> AsyncIterator[RtuTransport]:
    rtu = RtuTransport(
        pty_pair.path,
        baudrate=BAUDRATE,
        parity="N",
        stopbits=2,
        response_timeout=RESPONSE_TIMEOUT,
    )
    await rtu.open()
    yield rtu
    await rtu.close()


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        # Polling a public counter: the transport offers no event for it.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


READ = ReadHoldingRegisters(unit=0x11, address=0x6B, count=3)
READ_FRAME = bytes.fromhex("11 03 00 6B 00 03 76 87")
READ_REPLY = bytes.fromhex("11 03 06 02 2B 00 00 00 64 C8 BA")


async def test_transport__reads_registers(transport: RtuTransport, device: Device) -> None:
    """The basic poll must put the right frame on the wire and return the device's values."""
    task = asyncio.create_task(transport.transact(READ))
    frame, _ = await device.next_request()
    assert frame == READ_FRAME
    device.send(READ_REPLY)
    assert await task == RegistersRead(unit=0x11, function=3, address=0x6B, values=(555, 0, 100))
    stats = transport.statistics()
    assert stats["transactions"] == 1
    assert stats["responses"] == 1


async def test_transport__reply_in_two_chunks(transport: RtuTransport, device: Device) -> None:
    """A reply that arrives in pieces (USB adapters, slow devices) must still be read whole."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.send(READ_REPLY[:4])
    device.send_later(DEVICE_TURNAROUND, READ_REPLY[4:])
    result = await task
    assert isinstance(result, RegistersRead)
    assert result.values == (555, 0, 100)
    assert [d for kind, _, d in device.log if kind == "tx"] == [READ_REPLY[:4], READ_REPLY[4:]]


async def test_transport__late_reply_to_an_earlier_request_does_not_shift_the_next(
    transport: RtuTransport, device: Device
) -> None:
    """A device that answered one request late (a reply to a read of input registers
    arriving while a read of holding registers waits) would put every later transaction
    one reply behind, each reading the answer to the one before: the device lost for good."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.send(read_reply(0x11, 4, 7))  # the late answer to an earlier FC 04 read
    # Then, once the line has been quiet for a while (the request's own wire time and an
    # inter-frame gap, 52 ms at 2400 baud), the answer to this request.
    device.send_later(5 * DEVICE_TURNAROUND, READ_REPLY)
    with pytest.raises(WrongFunction):
        await task
    # The next transaction reads its own reply, not the one left over from the last.
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.send_later(7 * DEVICE_TURNAROUND, read_reply(0x11, 3, 1, 2, 3))
    result = await task
    assert isinstance(result, RegistersRead)
    assert result.values == (1, 2, 3)


async def test_transport__write_single_register(transport: RtuTransport, device: Device) -> None:
    """A write must be sent as FC 06 and confirmed by the device's echo."""
    task = asyncio.create_task(
        transport.transact(WriteSingleRegister(unit=0x11, address=1, value=3))
    )
    frame, _ = await device.next_request()
    assert frame == bytes.fromhex("11 06 00 01 00 03 9A 9B")
    device.send(frame)
    assert await task == RegisterWritten(unit=0x11, address=1, value=3)


async def test_transport__silence_is_no_response(transport: RtuTransport, device: Device) -> None:
    """A device that never answers must be reported as silent, and counted."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    with pytest.raises(NoResponse) as info:
        await task
    assert (info.value.unit, info.value.function) == (0x11, 3)
    assert transport.statistics()["timeouts"] == 1


async def test_transport__half_frame_is_truncated(transport: RtuTransport, device: Device) -> None:
    """A reply cut short must be told apart from silence: the device is there but failing."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.send(READ_REPLY[:5])
    with pytest.raises(TruncatedResponse, match="only 5 byte"):
        await task
    assert transport.statistics()["timeouts"] == 1


async def test_transport__exception_response(transport: RtuTransport, device: Device) -> None:
    """A Modbus exception from the device reaches the caller with its code."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.send(bytes.fromhex("11 83 02 C1 34"))
    with pytest.raises(ExceptionResponse) as info:
        await task
    assert info.value.exception_code == 2
    assert transport.statistics()["exception_responses"] == 1


async def test_transport__recovers_after_garbage(transport: RtuTransport, device: Device) -> None:
    """After noise on the line, the next poll must succeed: one bad frame cannot wedge the bus."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.send(b"\xff" * 7)
    device.loop.call_soon(device.send, b"\x00\x13\x37" * 5)
    with pytest.raises(CrcError):
        await task
    assert transport.statistics()["crc_errors"] == 1

    read_input = ReadInputRegisters(unit=0x11, address=8, count=1)
    task = asyncio.create_task(transport.transact(read_input))
    frame, _ = await device.next_request()
    assert frame == bytes.fromhex("11 04 00 08 00 01 B2 98")
    device.send(read_reply(0x11, 4, 10))
    result = await task
    assert isinstance(result, RegistersRead)
    assert result.values == (10,)


async def test_transport__late_reply_is_not_taken_for_the_next(
    transport: RtuTransport, device: Device
) -> None:
    """A reply arriving after its timeout must never be returned as the answer to the next poll."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    with pytest.raises(NoResponse):
        await task
    stale = read_reply(0x11, 3, 1, 2, 3)
    device.send(stale)
    await eventually(lambda: transport.statistics()["discarded_bytes"] >= len(stale))

    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.send(read_reply(0x11, 3, 7, 8, 9))
    result = await task
    assert isinstance(result, RegistersRead)
    assert result.values == (7, 8, 9)


async def test_transport__concurrent_transactions_are_serialised(
    transport: RtuTransport, device: Device
) -> None:
    """Two pollers sharing a line must not talk over each other: RS-485 is half duplex."""
    first = ReadHoldingRegisters(unit=1, address=0, count=1)
    second = ReadHoldingRegisters(unit=2, address=0, count=1)
    tasks = [asyncio.create_task(transport.transact(r)) for r in (first, second)]

    frame, _ = await device.next_request()
    assert frame[0] == 1
    reply_at: list[float] = []
    # A slow device: if the transport did not wait, the second request would
    # arrive during this turnaround.
    device.loop.call_later(
        DEVICE_TURNAROUND, lambda: reply_at.append(device.send(read_reply(1, 3, 111)))
    )
    frame, second_at = await device.next_request()
    assert frame[0] == 2
    assert reply_at
    assert second_at >= reply_at[0]
    device.send(read_reply(2, 3, 222))

    results = await asyncio.gather(*tasks)
    assert [r.values for r in results if isinstance(r, RegistersRead)] == [(111,), (222,)]


async def test_transport__waits_inter_frame_gap(transport: RtuTransport, device: Device) -> None:
    """Sending too soon after a reply merges frames on the wire and devices drop both."""
    gap = inter_frame_gap(BAUDRATE)
    assert transport.inter_frame_gap == gap
    requests: list[float] = []
    replies: list[float] = []
    for value in (1, 2, 3):
        task = asyncio.create_task(transport.transact(READ))
        _, request_at = await device.next_request()
        requests.append(request_at)
        replies.append(device.send(read_reply(0x11, 3, value, value, value)))
        await task
    for reply_at, next_request_at in zip(replies, requests[1:], strict=False):
        assert next_request_at - reply_at >= gap


async def test_transport__babbling_line_is_busy(pty_pair: Pty, device: Device) -> None:
    """A transceiver stuck transmitting must fail the poll in bounded time, not hang the bus."""
    # 300 baud: a 128 ms inter-frame gap, far longer than the babble's 5 ms pauses. On a
    # loaded machine the babble itself may pause longer than the gap (a timer late by
    # 128 ms): then the line *was* free and sending was right, so that attempt proves
    # nothing and is made again. The bound comes from what the test observed, not a guess.
    rtu = RtuTransport(pty_pair.path, baudrate=300, parity="N", stopbits=2, response_timeout=0.3)
    gap = inter_frame_gap(300)
    babbling = False

    def babble() -> None:
        if babbling:
            device.send(b"\x55")
            device.loop.call_later(0.005, babble)

    async with rtu:
        for _attempt in range(5):
            device.log.clear()
            babbling = True
            babble()
            try:
                await eventually(lambda: rtu.statistics()["discarded_bytes"] > 0)
                started = device.loop.time()
                outcome: Exception | None = None
                try:
                    await rtu.transact(READ)
                except LineBusy as exc:
                    outcome = exc
                ended = device.loop.time()
            finally:
                babbling = False
            sent = [t for kind, t, _ in device.log if kind == "tx" and started - gap <= t <= ended]
            pauses = [b - a for a, b in itertools.pairwise(sent)]
            if sent and max(pauses, default=0.0) < gap and ended - sent[-1] < gap:
                break  # the line never fell quiet for a gap while the transport waited
            await rtu.close()
            await rtu.open()
        else:
            pytest.fail(
                "the babble never held the line busy for a whole attempt (machine overloaded)"
            )
        stats = rtu.statistics()
    assert isinstance(outcome, LineBusy), outcome
    assert re.search("request not sent", str(outcome))
    assert stats["transactions"] == 0
    assert stats["other_errors"] >= 1
    assert not [d for kind, _, d in device.log if kind == "rx"]


def test_inter_frame_gap__spec_values() -> None:
    """t3.5 is 3.5 characters of 11 bits, and a fixed 1.75 ms above 19200 baud."""
    assert inter_frame_gap(9600) == pytest.approx(3.5 * 11 / 9600)
    assert inter_frame_gap(19200) == pytest.approx(0.002005, abs=1e-6)
    assert inter_frame_gap(38400) == 0.00175
    assert inter_frame_gap(115200) == 0.00175


async def test_transport__lost_port_is_connection_error(
    transport: RtuTransport, device: Device, pty_pair: Pty
) -> None:
    """An unplugged adapter must surface as an I/O failure, not as a silent device."""
    task = asyncio.create_task(transport.transact(READ))
    await device.next_request()
    device.stop_reading()
    pty_pair.close_master()
    with pytest.raises(ConnectionError, match=pty_pair.path):
        await task


# A valid line for the tests that do not exchange frames.
SETTINGS: Final[dict[str, Any]] = {
    "baudrate": 19200,
    "parity": "N",
    "stopbits": 1,
    "response_timeout": 0.3,
}


async def test_transport__not_open_is_local_error(pty_pair: Pty) -> None:
    """Using a transport before opening it is a bug in the caller, reported as such."""
    rtu = RtuTransport(pty_pair.path, **SETTINGS)
    with pytest.raises(LocalProtocolError, match="not open"):
        await rtu.transact(READ)


async def test_transport__context_manager_closes(pty_pair: Pty, device: Device) -> None:
    """Leaving the ``async with`` block must release the port."""
    async with RtuTransport(pty_pair.path, **{**SETTINGS, "response_timeout": 0.05}) as rtu:
        with pytest.raises(NoResponse):
            await rtu.transact(READ)
    with pytest.raises(LocalProtocolError):
        await rtu.transact(READ)
    await rtu.close()  # idempotent


async def test_transport__missing_port_names_it() -> None:
    """A wrong port in the board file must say which port could not be opened."""
    rtu = RtuTransport("/dev/armoire-no-such-port", **SETTINGS)
    with pytest.raises(OSError, match="/dev/armoire-no-such-port"):
        await rtu.open()


async def test_transport__a_line_already_held_by_another_process_is_refused(
    transport: RtuTransport, pty_pair: Pty
) -> None:
    """Two masters on one RS-485 line (a stray agent still holding it) interleave frames
    and both read garbage; the second is refused at open, naming the port."""
    second = RtuTransport(
        pty_pair.path,
        baudrate=BAUDRATE,
        parity="N",
        stopbits=2,
        response_timeout=RESPONSE_TIMEOUT,
    )
    with pytest.raises(OSError, match=f"lock port {pty_pair.path}"):
        await second.open()
    assert transport.is_open


async def test_transport__refused_settings_raise_oserror(pty_pair: Pty) -> None:
    """Settings the port refuses (ptys refuse parity) fail as OSError naming the port."""
    rtu = RtuTransport(pty_pair.path, **{**SETTINGS, "parity": "E"})
    # Linux ptys refuse PARENB (EINVAL): the agent runs on Linux, so this is the real path, and
    # a transport that swallowed the refusal would poll on a line framed other than configured.
    with pytest.raises(OSError, match=re.escape(pty_pair.path)):
        await rtu.open()
    await rtu.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"baudrate": 0}, "baudrate"),
        ({"bytesize": 7}, "bytesize"),
        ({"parity": "M"}, "parity"),
        ({"stopbits": 3}, "stopbits"),
        ({"response_timeout": 0}, "response_timeout"),
    ],
)
def test_transport__invalid_settings_rejected(kwargs: dict[str, object], field: str) -> None:
    """A line configured with settings RTU cannot use must fail at construction."""
    with pytest.raises(LocalProtocolError, match=field):
        RtuTransport("/dev/null", **{**SETTINGS, **kwargs})  # type: ignore[arg-type]


async def _answer_one(device: Device) -> None:
    await device.next_request()
    device.send(READ_REPLY)


async def test_transport__absent_port_reopened_when_it_appears_and_after_it_vanishes(
    tmp_path: Path,
) -> None:
    """A USB-RS485 adapter missing at start, or unplugged and plugged back, would leave its
    devices unreachable until the agent is restarted."""
    link = tmp_path / "ttyUSB-rs485"
    rtu = RtuTransport(
        str(link), baudrate=BAUDRATE, parity="N", stopbits=2, response_timeout=RESPONSE_TIMEOUT
    )
    assert not await rtu.try_open()
    with pytest.raises(PortUnavailable, match=str(link)):
        await rtu.transact(READ)
    keeper = asyncio.create_task(rtu.keep_open(reopen_min=0.01, reopen_max=0.05))
    pairs: list[Pty] = []
    try:
        for _ in range(2):
            pair = Pty()
            pairs.append(pair)
            link.symlink_to(pair.path)
            await eventually(lambda: rtu.is_open, within=5.0)
            device = Device(pair.master)
            answer = asyncio.create_task(_answer_one(device))
            assert (await rtu.transact(READ)).values == (555, 0, 100)
            await answer
            # Unplugged: the node disappears and the other end hangs up.
            device.stop_reading()
            link.unlink()
            pair.close_master()
            await eventually(lambda: not rtu.is_open, within=5.0)
            with pytest.raises(ConnectionError):
                await rtu.transact(READ)
        assert rtu.reopens == 2
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        await rtu.close()
        for pair in pairs:
            os.close(pair.slave)

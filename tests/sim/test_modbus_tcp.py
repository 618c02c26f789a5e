"""The modbus-tcp driver against the simulator's pymodbus TCP server, and the TCP
transport against small hand-written servers for what pymodbus does not do
(answering several transactions at once, out of order, late, or with garbage)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from drivers.device import DriverError
from drivers.driver import BuildContext, Bus
from drivers.modbus.codec import NoResponse, ReadHoldingRegisters
from drivers.modbus.device import ModbusDevice
from drivers.modbus.mbap import FramingError
from drivers.modbus.tcp import DRIVER, TcpServer, TcpSettings
from drivers.modbus.tcp_transport import TcpTransport
from drivers.profile import load_profile
from sim.devices.bank import REGISTERS, RegisterBank, bank_profile, bank_value
from sim.modbus_tcp import TcpDevices

TIMEOUT = 0.3


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    path = tmp_path / "bank-10.toml"
    path.write_text(bank_profile())
    return path


def check_bank(unit: int, values: dict[str, object]) -> int:
    """The poll number of a bank's reading, after checking every register against it."""
    n = values["r0"]
    assert isinstance(n, int)
    for i in range(1, REGISTERS):
        assert values[f"r{i}"] == bank_value(unit, n, i), f"unit {unit} r{i}"
    return n


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            # Polling public state: the transport offers no event for it.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"not {what} within {within} s")


async def test_driver__devices_behind_one_server_share_a_connection(profile_path: Path) -> None:
    """Unit ids behind a TCP gateway would get each other's values, or a socket each."""
    banks = [RegisterBank(name=f"bank-{u}", unit=u) for u in (1, 2, 7)]
    async with TcpDevices(banks) as server:
        buses: dict[str, Bus] = {}
        ctx = BuildContext(buses=buses, response_timeout=TIMEOUT)
        profile = load_profile(str(profile_path))
        devices = [
            DRIVER.build(
                bank.name,
                profile,
                TcpSettings(host=server.host, port=server.port, address=bank.unit, inflight=1),
                ctx,
            )
            for bank in banks
        ]
        assert list(buses) == [f"{server.host}:{server.port}"]
        (bus,) = buses.values()
        await bus.start()
        try:
            for _ in range(3):
                for bank, device in zip(banks, devices, strict=True):
                    check_bank(bank.unit, dict(await device.read()))
            assert [bank.reads for bank in banks] == [3, 3, 3]
            assert isinstance(devices[0], ModbusDevice)
            assert devices[0].health.requests == 3
            assert devices[0].health.last is None
            window = devices[0].health.window()
            assert window.requests == 3
            assert window.latency_p50 is not None
        finally:
            await bus.close()


async def test_driver__silent_unit_times_out_alone(profile_path: Path) -> None:
    """A powered-off device behind a gateway must not take the others down with it."""
    banks = [RegisterBank(name="a", unit=1), RegisterBank(name="b", unit=2)]
    banks[1].powered = False
    async with TcpDevices(banks) as server:
        transport = TcpTransport(server.host, server.port, response_timeout=TIMEOUT)
        profile = load_profile(str(profile_path))
        alive = ModbusDevice("a", profile, 1, transport)
        dead = ModbusDevice("b", profile, 2, transport)
        assert await transport.try_open()
        try:
            with pytest.raises(DriverError) as caught:
                await dead.read()
            assert caught.value.timeout
            check_bank(1, dict(await alive.read()))
            assert dead.health.window().timeouts == 1
            assert alive.health.window().timeouts == 0
        finally:
            await transport.close()


async def test_transport__server_restart_reconnects_with_backoff(profile_path: Path) -> None:
    """A PLC rebooting must not leave its points comm_fail until the agent restarts."""
    bank = RegisterBank(name="a", unit=1)
    async with TcpDevices([bank]) as server:
        port = server.port
        bus = TcpServer(TcpTransport(server.host, port, response_timeout=TIMEOUT))
        device = ModbusDevice("a", load_profile(str(profile_path)), 1, bus.transport)
        keeper = asyncio.create_task(bus.transport.keep_open(reconnect_min=0.05, reconnect_max=0.2))
        try:
            await until(lambda: bus.transport.is_open, "connected")
            check_bank(1, dict(await device.read()))
            await server.close()
            await until(lambda: not bus.transport.is_open, "connection lost")
            with pytest.raises(DriverError, match="not connected"):
                await device.read()
            assert bus.status()["open"] is False
            async with TcpDevices([bank], port=port):
                await until(lambda: bus.transport.is_open, "reconnected")
                check_bank(1, dict(await device.read()))
            assert bus.transport.reconnects == 1
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await bus.close()


# -- hand-written servers ---------------------------------------------------------------

Handler = Callable[[list[tuple[int, int, bytes]], asyncio.StreamWriter], Awaitable[None]]


def reply(transaction_id: int, unit: int, values: list[int]) -> bytes:
    pdu = struct.pack(f">BB{len(values)}H", 3, 2 * len(values), *values)
    return struct.pack(">HHHB", transaction_id, 0, 1 + len(pdu), unit) + pdu


@contextlib.asynccontextmanager
async def server_of(
    handle: Callable[[tuple[int, int, bytes], asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, int, list[int]]]:
    """A server that calls ``handle`` for each request (tid, unit, pdu) as it arrives;
    yields host, port and the most requests ever outstanding at once."""
    outstanding = [0]
    peak = [0]
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                outstanding[0] += 1
                peak[0] = max(peak[0], outstanding[0])

                async def one(request: tuple[int, int, bytes] = (tid, unit, pdu)) -> None:
                    await handle(request, writer)
                    outstanding[0] -= 1

                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", listener.sockets[0].getsockname()[1], peak
    finally:
        for task in list(tasks):
            task.cancel()
        listener.close()
        for writer in writers:
            writer.close()
        await listener.wait_closed()


def read(unit: int) -> ReadHoldingRegisters:
    return ReadHoldingRegisters(unit=unit, address=0, count=1)


@pytest.mark.parametrize("inflight", [1, 4])
async def test_transport__replies_matched_by_id_never_more_in_flight_than_allowed(
    inflight: int,
) -> None:
    """Out-of-order replies must reach their own request; a device that takes one request
    at a time must never get two."""
    release = asyncio.Event()

    async def handle(request: tuple[int, int, bytes], writer: asyncio.StreamWriter) -> None:
        tid, unit, _ = request
        # Later requests answer first: unit 1 waits for the others to be answered.
        if unit == 1 and inflight > 1:
            await release.wait()
        writer.write(reply(tid, unit, [unit * 100]))
        if unit == inflight:
            release.set()

    async with server_of(handle) as (host, port, peak):
        transport = TcpTransport(host, port, response_timeout=1.0, inflight=inflight)
        assert await transport.try_open()
        try:
            results = await asyncio.gather(*(transport.transact(read(u)) for u in range(1, 9)))
        finally:
            await transport.close()
    assert [r.values for r in results] == [(u * 100,) for u in range(1, 9)]
    assert peak[0] == inflight


async def test_transport__late_reply_is_dropped_not_taken_for_the_next() -> None:
    """A reply arriving after its timeout must not be read as the next request's answer."""
    late = asyncio.Event()

    async def handle(request: tuple[int, int, bytes], writer: asyncio.StreamWriter) -> None:
        tid, unit, _ = request
        if tid == 0:
            await late.wait()  # answered only once the agent gave up on it
        writer.write(reply(tid, unit, [tid]))

    async with server_of(handle) as (host, port, _):
        transport = TcpTransport(host, port, response_timeout=0.1)
        assert await transport.try_open()
        try:
            with pytest.raises(NoResponse):
                await transport.transact(read(1))
            late.set()
            await until(lambda: transport.statistics()["late_replies"] == 1, "late reply")
            second = await transport.transact(read(1))
            assert second.values == (1,)  # its own transaction id, not the late 0
        finally:
            await transport.close()


async def test_transport__garbage_stream_fails_pending_and_drops_the_connection() -> None:
    """A server speaking something else must cost a counted error, not wrong values."""

    async def handle(request: tuple[int, int, bytes], writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async with server_of(handle) as (host, port, _):
        transport = TcpTransport(host, port, response_timeout=1.0)
        assert await transport.try_open()
        try:
            with pytest.raises(FramingError, match="protocol id"):
                await transport.transact(read(1))
            await until(lambda: not transport.is_open, "connection dropped")
            assert transport.statistics()["framing_errors"] == 1
            assert transport.device_health(1).window().framing_errors == 1
        finally:
            await transport.close()

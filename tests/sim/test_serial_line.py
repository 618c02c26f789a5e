"""The virtual RS-485 line: bytes cross intact and in order, and faults act as documented."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sim.serial_line import BITS_PER_CHAR, VirtualSerialLine

# Generous bound for anything that should happen "at once"; only reached on failure.
DEADLINE = 5.0


class PortEnd:
    """One opened end of the line, as a program using the port would hold it."""

    def __init__(
        self, reader: asyncio.StreamReader, transports: list[asyncio.BaseTransport]
    ) -> None:
        self.reader = reader
        self._transports = transports

    def write(self, data: bytes) -> None:
        writer = self._transports[1]
        assert isinstance(writer, asyncio.WriteTransport)
        writer.write(data)

    async def read(self, n: int) -> bytes:
        async with asyncio.timeout(DEADLINE):
            return await self.reader.readexactly(n)

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


@asynccontextmanager
async def open_port(path: str) -> AsyncIterator[PortEnd]:
    """Open a pty slave for reading and writing through the event loop."""
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    wfd = os.dup(fd)
    reader = asyncio.StreamReader(limit=1 << 22)
    rtransport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    wtransport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(wfd, "wb", buffering=0)
    )
    end = PortEnd(reader, [rtransport, wtransport])
    try:
        yield end
    finally:
        end.close()


async def test_line__relays_both_ways_intact() -> None:
    """Bytes written on one end arrive unchanged on the other; otherwise nothing can talk."""
    async with (
        VirtualSerialLine() as line,
        open_port(line.agent_port) as agent,
        open_port(line.device_port) as device,
    ):
        agent.write(b"\x01\x03\x00\x00\x00\x02\xc4\x0b")
        assert await device.read(8) == b"\x01\x03\x00\x00\x00\x02\xc4\x0b"
        device.write(b"\x01\x03\x04\x00\x64\x00\x01\x3b\xf8")
        assert await agent.read(9) == b"\x01\x03\x04\x00\x64\x00\x01\x3b\xf8"
        stats = line.statistics()
        assert stats.agent_to_device_bytes == 8
        assert stats.device_to_agent_bytes == 9
        assert stats.pending_bytes == 0


async def test_line__large_bursts_both_ways_in_order() -> None:
    """Bursts larger than the pty buffers arrive complete and in order, concurrently both ways."""
    rng = random.Random(7)
    up = rng.randbytes(300_000)
    down = rng.randbytes(200_000)
    async with (
        VirtualSerialLine() as line,
        open_port(line.agent_port) as agent,
        open_port(line.device_port) as device,
    ):
        # Write in many pieces so the kernel splits and merges chunks freely.
        for i in range(0, len(up), 7_777):
            agent.write(up[i : i + 7_777])
        for i in range(0, len(down), 5_555):
            device.write(down[i : i + 5_555])
        got_up, got_down = await asyncio.gather(device.read(len(up)), agent.read(len(down)))
        assert got_up == up
        assert got_down == down
        assert line.statistics().overrun_bytes == 0


async def test_line__silence_drops_both_ways() -> None:
    """A silenced line delivers nothing either way and counts it; a cut cable must look cut."""
    async with (
        VirtualSerialLine() as line,
        open_port(line.agent_port) as agent,
        open_port(line.device_port) as device,
    ):
        line.silence(True)
        agent.write(b"lost-request")
        device.write(b"lost-reply")
        # The line offers counters, not events: poll them, bounded by the deadline.
        async with asyncio.timeout(DEADLINE):
            while line.statistics().dropped_bytes < len(b"lost-request") + len(b"lost-reply"):  # noqa: ASYNC110
                await asyncio.sleep(0)
        line.silence(False)
        agent.write(b"req")
        device.write(b"rep")
        # The first bytes through are the ones sent after the silence ended.
        assert await device.read(3) == b"req"
        assert await agent.read(3) == b"rep"
        assert line.statistics().dropped_bytes == 22


async def test_line__corrupt_next_flips_one_bit_of_the_reply() -> None:
    """The reply after a request gets one bit flipped, the next is clean; CRC tests rely on it."""
    reply = bytes.fromhex("0103040064000173f8")
    async with (
        VirtualSerialLine() as line,
        open_port(line.agent_port) as agent,
        open_port(line.device_port) as device,
    ):
        line.corrupt_next(1)
        agent.write(b"request")
        await device.read(7)
        device.write(reply)
        got = await agent.read(len(reply))
        flipped = sum(bin(a ^ b).count("1") for a, b in zip(got, reply, strict=True))
        assert flipped == 1
        agent.write(b"request")
        await device.read(7)
        device.write(reply)
        assert await agent.read(len(reply)) == reply
        assert line.statistics().corrupted_replies == 1


async def test_line__corrupt_next_spares_unsolicited_bytes() -> None:
    """Only replies to a request are corrupted, so the fault hits the exchange it was set for."""
    async with (
        VirtualSerialLine() as line,
        open_port(line.agent_port) as agent,
        open_port(line.device_port) as device,
    ):
        line.corrupt_next(1)
        device.write(b"noise")
        assert await agent.read(5) == b"noise"
        assert line.statistics().corrupted_replies == 0


async def test_line__delay_holds_replies_only() -> None:
    """With a delay, replies arrive late while requests go straight through (a slow device)."""
    loop = asyncio.get_running_loop()
    async with (
        VirtualSerialLine() as line,
        open_port(line.agent_port) as agent,
        open_port(line.device_port) as device,
    ):
        line.delay(0.2)
        start = loop.time()
        agent.write(b"ping")
        assert await device.read(4) == b"ping"
        assert loop.time() - start < 0.2
        start = loop.time()
        device.write(b"pong")
        assert await agent.read(4) == b"pong"
        assert loop.time() - start >= 0.2
        line.delay(0.0)
        device.write(b"fast")
        assert await agent.read(4) == b"fast"


async def test_line__baudrate_paces_delivery() -> None:
    """At 9600 baud, 96 bytes take at least 96 × 11 / 9600 s; the agent's timing is tested on it."""
    loop = asyncio.get_running_loop()
    payload = bytes(range(96))
    async with (
        VirtualSerialLine(baudrate=9600) as line,
        open_port(line.agent_port) as agent,
        open_port(line.device_port) as device,
    ):
        start = loop.time()
        agent.write(payload)
        assert await device.read(len(payload)) == payload
        assert loop.time() - start >= len(payload) * BITS_PER_CHAR / 9600


async def test_line__port_can_be_reopened() -> None:
    """The agent may close and reopen its port (a restart) and the line still relays."""
    async with VirtualSerialLine() as line, open_port(line.device_port) as device:
        async with open_port(line.agent_port) as agent:
            agent.write(b"one")
            assert await device.read(3) == b"one"
        async with open_port(line.agent_port) as agent:
            agent.write(b"two")
            assert await device.read(3) == b"two"
            device.write(b"back")
            assert await agent.read(4) == b"back"


async def test_line__symlink_names_agent_port(tmp_path: Path) -> None:
    """``link_dir/name`` points at the agent's port while the line is open, for configs."""
    link = tmp_path / "rs485_lamps"
    async with VirtualSerialLine(link_dir=tmp_path, name="rs485_lamps") as line:
        assert line.link == link
        assert os.readlink(link) == line.agent_port
    assert not link.exists()
    assert not link.is_symlink()


async def test_line__ports_need_start() -> None:
    """Asking for a port before start fails clearly instead of returning an empty path."""
    line = VirtualSerialLine()
    with pytest.raises(RuntimeError, match="not started"):
        _ = line.agent_port

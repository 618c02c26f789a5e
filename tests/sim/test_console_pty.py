"""The simulated console port (sim/console_pty.py): a terminal on one end reaches the agent's."""

from __future__ import annotations

import asyncio
import os
import tty
from pathlib import Path

from sim.console_pty import ConsolePty


async def _read(fd: int, want: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        got.extend(os.read(fd, 100))
        if want in got and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(10):
            await done
    finally:
        loop.remove_reader(fd)
    return bytes(got)


async def test_console_pty__bytes_cross_both_ways(tmp_path: Path) -> None:
    """picocom on DATA/dev/console-tech would not reach the agent's console, or not hear it."""
    async with ConsolePty(tmp_path / "dev") as pty:
        agent = os.open(pty.agent_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tech = os.open(pty.tech_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(agent)
            tty.setraw(tech)
            os.write(tech, b"status\r")
            assert await _read(agent, b"status\r") == b"status\r"
            os.write(agent, b"armoire> ")
            assert await _read(tech, b"armoire> ") == b"armoire> "
        finally:
            os.close(agent)
            os.close(tech)
    assert not pty.agent_path.exists()

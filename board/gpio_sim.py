"""The simulated board's GPIO (``chip = "sim"`` in ``board/sim.toml``).

Lines live in memory. Tests drive inputs in-process with :meth:`SimGpio.drive`; another
process (the simulator's live view: open the door, cut the mains) sends one datagram
per change, ``b"<role> <0|1>"`` (logical value), to the Unix socket named
``socket_path`` (the simulator uses ``DATA/dev/gpio.sock``). Outputs are written to
``state_file`` as JSON (``{"relay_lighting": true, ...}``) for the simulator to show.
Edges carry the injected clock's monotonic time, so debouncing runs on the fake clock
in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Final

from agent.board import GpioLine
from agent.clock import Clock
from board.hal import Edge, GpioError

log = logging.getLogger(__name__)

# A datagram is one role and a digit; anything longer is not ours.
MAX_DATAGRAM: Final = 64
# Edges queued for the reader; beyond this a flood (or nobody reading) drops the newest
# and counts it: the line's level is kept anyway, so nothing is lost but bounces.
EDGE_QUEUE: Final = 256


class SimGpio:
    """Simulated lines by role; inputs start inactive, outputs inactive."""

    def __init__(
        self,
        lines: Mapping[str, GpioLine],
        *,
        clock: Clock,
        socket_path: Path | None = None,
        state_file: Path | None = None,
    ) -> None:
        self._lines = dict(lines)
        self._clock = clock
        self._values = dict.fromkeys(lines, False)
        self._queue: asyncio.Queue[Edge] = asyncio.Queue(EDGE_QUEUE)
        self._socket_path = socket_path
        self._state_file = state_file
        self.dropped = 0
        self.refused = 0
        self._publish()

    def get(self, role: str) -> bool:
        self._check(role)
        return self._values[role]

    def set(self, role: str, active: bool) -> None:
        self._check(role)
        if self._lines[role].direction != "output":
            raise GpioError(f"{role} is an input")
        self._values[role] = active
        self._publish()

    def drive(self, role: str, active: bool) -> None:
        """Change an input line (a contact opening or closing, or one bounce of it)."""
        self._check(role)
        if self._lines[role].direction != "input":
            raise GpioError(f"{role} is an output")
        if self._values[role] == active:
            return
        self._values[role] = active
        try:
            self._queue.put_nowait(Edge(role=role, active=active, t=self._clock.monotonic()))
        except asyncio.QueueFull:
            self.dropped += 1

    async def edges(self) -> AsyncIterator[Edge]:
        transport = None
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=str(self._socket_path), family=socket.AF_UNIX
            )
        try:
            while True:
                yield await self._queue.get()
        finally:
            if transport is not None:
                transport.close()
                with contextlib.suppress(OSError):
                    os.unlink(str(self._socket_path))

    def close(self) -> None:
        pass

    def datagram(self, data: bytes) -> None:
        """One change from another process: ``b"door_contact 1"``."""
        try:
            role, value = data.decode("ascii").split()
            if value not in ("0", "1") or len(data) > MAX_DATAGRAM:
                raise ValueError(value)
            self.drive(role, value == "1")
        except (ValueError, UnicodeDecodeError, GpioError) as exc:
            self.refused += 1
            log.warning("simulated GPIO: refused %r (%s)", data[:MAX_DATAGRAM], exc)

    def _check(self, role: str) -> None:
        if role not in self._lines:
            raise GpioError(f"no GPIO role {role!r} (roles: {', '.join(self._lines)})")

    def _publish(self) -> None:
        if self._state_file is None:
            return
        outputs = {r: v for r, v in self._values.items() if self._lines[r].direction == "output"}
        tmp = self._state_file.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(outputs))
            tmp.replace(self._state_file)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, gpio: SimGpio) -> None:
        self._gpio = gpio

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._gpio.datagram(data)

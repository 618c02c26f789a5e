"""Simulated Modbus TCP devices: a pymodbus TCP server on a free loopback port.

Behind one server (a device, or a TCP gateway to a serial bus), several simulated
devices are told apart by unit id. As on the cabinet's RS-485 lines, a request for a
unit the server does not hold, or whose device is powered off, gets no answer at all.
pymodbus is an implementation independent of the agent's codec (STYLE.md).

::

    async with TcpDevices([RegisterBank(name="b1", unit=1)]) as server:
        ...  # point the agent at server.host, server.port
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer

from sim.devices.base import Device

HOST = "127.0.0.1"


class TcpDevices:
    """A Modbus TCP server for ``devices``; ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(self, devices: Sequence[Device], *, host: str = HOST, port: int = 0) -> None:
        self.devices = {device.unit: device for device in devices}
        if len(self.devices) != len(devices):
            raise ValueError("two devices share a unit id")
        self.host = host
        self._requested_port = port
        self.port = port
        self._server: ModbusTcpServer | None = None
        self.requests = 0

    async def start(self) -> None:
        server = ModbusTcpServer(
            [device.simdevice() for device in self.devices.values()],
            address=(self.host, self._requested_port),
            trace_pdu=self._admit_request,
        )
        await server.serve_forever(background=True)
        self._server = server
        listener = server.transport
        sockets = getattr(listener, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop serving and drop the connections. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _admit_request(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        # As in sim/cabinet.py: pymodbus skips a request this returns falsy for.
        if sending:
            return pdu
        self.requests += 1
        device = self.devices.get(pdu.dev_id)
        if device is None or not device.powered:
            return None  # type: ignore[return-value]
        return pdu

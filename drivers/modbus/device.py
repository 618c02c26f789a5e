"""A Modbus device behind the seam (:class:`~drivers.device.Device`), over RTU or TCP.

Reads are planned once per model (:func:`~drivers.profile.plan_reads`) into as few
FC03/FC04 requests as possible; every Modbus error becomes a
:class:`~drivers.device.DriverError`. The transport (a serial line, a TCP
connection) is shared with the other devices on it and counts each device's bus
health (:attr:`ModbusDevice.health`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from drivers.bus_lock import ROUTINE, URGENT
from drivers.device import DriverError, Reading, Report
from drivers.health import DeviceHealth
from drivers.modbus.codec import (
    LocalProtocolError,
    NoResponse,
    ReadHoldingRegisters,
    ReadInputRegisters,
    RegistersRead,
    RemoteProtocolError,
    Request,
    Response,
    TruncatedResponse,
    WriteMultipleRegisters,
    WriteSingleRegister,
)
from drivers.profile import (
    Profile,
    ReadBlock,
    RegisterSpec,
    decode,
    decode_block,
    encode,
    plan_reads,
)


class Transport(Protocol):
    """What a Modbus device needs of its transport (RtuTransport, TcpTransport)."""

    async def transact(self, request: Request, *, priority: int = ROUTINE) -> Response: ...

    def device_health(self, unit: int) -> DeviceHealth: ...


class ModbusDevice:
    """One Modbus device (unit ``unit``) on a shared transport."""

    def __init__(self, name: str, profile: Profile, unit: int, transport: Transport) -> None:
        self.name = name
        self._profile = profile
        self._unit = unit
        self._transport = transport
        self._blocks: Sequence[ReadBlock] = plan_reads(profile.points)
        self.health = transport.device_health(unit)

    async def read(self) -> Mapping[str, Reading]:
        values: dict[str, Reading] = {}
        for block in self._blocks:
            request = (
                ReadHoldingRegisters(unit=self._unit, address=block.address, count=block.count)
                if block.table == "holding"
                else ReadInputRegisters(unit=self._unit, address=block.address, count=block.count)
            )
            response = await self._transact(request)
            assert isinstance(response, RegistersRead)  # the decoder checked the function
            values.update(decode_block(block, response.values))
        return values

    async def write(self, point: str, value: Reading) -> Reading:
        spec = self._profile.point(point)
        assert isinstance(spec, RegisterSpec)
        if value is None or isinstance(value, str):
            raise DriverError(f"cannot write {value!r}")
        try:
            registers = encode(spec, value)
        except ValueError as exc:
            raise DriverError(str(exc)) from exc
        request = (
            WriteSingleRegister(unit=self._unit, address=spec.address, value=registers[0])
            if len(registers) == 1
            else WriteMultipleRegisters(unit=self._unit, address=spec.address, values=registers)
        )
        await self._transact(request, priority=URGENT)
        return decode(spec, registers)

    async def action(self, action: str, args: Mapping[str, Reading]) -> object:
        raise DriverError(f"{self.name}: a Modbus device has no action {action!r}")

    async def watch(self, report: Report) -> None:
        return  # polled only

    async def close(self) -> None:
        return  # the transport is its bus's, shared with other devices

    async def _transact(self, request: Request, *, priority: int = ROUTINE) -> Response:
        try:
            return await self._transport.transact(request, priority=priority)
        except (NoResponse, TruncatedResponse) as exc:
            raise DriverError(str(exc), timeout=True) from exc
        except (RemoteProtocolError, LocalProtocolError, OSError) as exc:
            # OSError includes PortUnavailable and a lost TCP connection: a medium that
            # is absent or being reopened makes its devices miss polls like silent ones.
            raise DriverError(str(exc)) from exc

"""The ``modbus-rtu`` driver: devices on an RS-485 line, one :class:`RtuTransport` per line.

Reads are planned once per model (:func:`~drivers.profile.plan_reads`) into as few
FC03/FC04 requests as possible; every Modbus error becomes a
:class:`~drivers.device.DriverError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from drivers.bus_lock import ROUTINE, URGENT
from drivers.device import DriverError, Reading, Report
from drivers.driver import BuildContext, Driver, ParseContext
from drivers.modbus.codec import (
    MAX_UNIT,
    MIN_UNIT,
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
from drivers.modbus.transport import RTU_BYTESIZE, RtuTransport
from drivers.point import Model
from drivers.profile import (
    Profile,
    ReadBlock,
    RegisterSpec,
    Section,
    decode,
    decode_block,
    encode,
    load_profile,
    plan_reads,
    show,
)

if TYPE_CHECKING:
    from agent.board import SerialPort

log = logging.getLogger(__name__)

NAME: Final = "modbus-rtu"


@dataclass(frozen=True, slots=True, kw_only=True)
class RtuSettings:
    """Where a Modbus RTU device is: the board's serial port and its unit address."""

    line: SerialPort
    address: int


def parse(sec: Section, ctx: ParseContext) -> RtuSettings | None:
    role = sec.string("line", expected="a serial role of the board")
    address = sec.integer("address", MIN_UNIT, MAX_UNIT)
    port = ctx.serial_port(sec, role) if sec.ok("line") else None
    if port is not None and port.bytesize != RTU_BYTESIZE:
        sec.error(
            "line",
            f"Modbus RTU needs {RTU_BYTESIZE} data bits; serial role {show(role)} "
            f"has bytesize = {port.bytesize}",
        )
        port = None
    if port is not None and sec.ok("address"):
        ctx.claim(
            sec, "address", (NAME, port.role, address), f"address {address} on line {show(role)}"
        )
    if port is None or not sec.ok("address"):
        return None
    return RtuSettings(line=port, address=address)


def _load_profile(ref: str, base_dir: Path) -> Model:
    return load_profile(ref, base_dir=base_dir)


class RtuLine:
    """The :class:`~drivers.driver.Bus` of one serial line: its transport, kept open."""

    def __init__(self, role: str, transport: RtuTransport) -> None:
        self._role = role
        self.transport = transport

    @property
    def name(self) -> str:
        return self._role

    async def start(self) -> None:
        # One attempt now, so the defaults written at start reach the devices that are
        # there; run() keeps retrying. Meanwhile its devices are missed (comm_fail).
        if not await self.transport.try_open():
            log.error(
                "serial line %s unavailable at start: %s; its devices count as silent "
                "until it opens",
                self._role,
                self.transport.last_error,
            )

    async def run(self) -> None:
        await self.transport.keep_open()

    async def close(self) -> None:
        await self.transport.close()

    def status(self) -> dict[str, Any]:
        return {
            "port": self.transport.port,
            "open": self.transport.is_open,
            "error": self.transport.closed_reason,
        }


class RtuDevice:
    """One Modbus RTU device (a :class:`~drivers.device.Device`) on a shared line."""

    def __init__(self, name: str, profile: Profile, unit: int, transport: RtuTransport) -> None:
        self.name = name
        self._profile = profile
        self._unit = unit
        self._transport = transport
        self._blocks: Sequence[ReadBlock] = plan_reads(profile.points)

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
        return  # the line is the agent's (RtuLine), shared with other devices

    async def _transact(self, request: Request, *, priority: int = ROUTINE) -> Response:
        try:
            return await self._transport.transact(request, priority=priority)
        except (NoResponse, TruncatedResponse) as exc:
            raise DriverError(str(exc), timeout=True) from exc
        except (RemoteProtocolError, LocalProtocolError, OSError) as exc:
            # OSError includes PortUnavailable: a line that is absent or being reopened
            # makes its devices miss polls like silent ones.
            raise DriverError(str(exc)) from exc


def build(name: str, model: Model, settings: object, ctx: BuildContext) -> RtuDevice:
    assert isinstance(settings, RtuSettings)
    assert isinstance(model, Profile)
    port = settings.line
    bus = ctx.buses.get(port.role)
    if bus is None:
        bus = RtuLine(
            port.role,
            RtuTransport(
                str(port.device),
                baudrate=port.baudrate,
                bytesize=port.bytesize,
                parity=port.parity,
                stopbits=port.stopbits,
                response_timeout=ctx.response_timeout,
            ),
        )
        ctx.buses[port.role] = bus
    assert isinstance(bus, RtuLine)
    return RtuDevice(name, model, settings.address, bus.transport)


def _bus_of(settings: object) -> str:
    assert isinstance(settings, RtuSettings)
    return settings.line.role


DRIVER: Final = Driver(
    name=NAME, parse=parse, load_profile=_load_profile, build=build, bus_of=_bus_of
)

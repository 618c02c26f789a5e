"""The ``modbus-rtu`` driver: devices on an RS-485 line, one :class:`RtuTransport` per line.

Its ``[[devices]]`` keys are ``line`` (a serial role of the board) and ``address`` (the
unit, unique on its line); the devices themselves are :class:`ModbusDevice`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from drivers.driver import BuildContext, Driver, ParseContext
from drivers.health import LineHealth, percent
from drivers.modbus.codec import (
    MAX_UNIT,
    MIN_UNIT,
)
from drivers.modbus.device import ModbusDevice
from drivers.modbus.transport import RTU_BYTESIZE, RtuTransport
from drivers.point import Model
from drivers.profile import (
    Profile,
    Section,
    load_profile,
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
            "utilisation_pct": percent(self.transport.line_health.utilisation),
        }

    @property
    def health(self) -> LineHealth:
        return self.transport.line_health


def build(name: str, model: Model, settings: object, ctx: BuildContext) -> ModbusDevice:
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
    return ModbusDevice(name, model, settings.address, bus.transport)


def _bus_of(settings: object) -> str:
    assert isinstance(settings, RtuSettings)
    return settings.line.role


DRIVER: Final = Driver(
    name=NAME, parse=parse, load_profile=_load_profile, build=build, bus_of=_bus_of
)

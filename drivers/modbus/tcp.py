"""The ``modbus-tcp`` driver: devices on the cabinet LAN, one connection per server.

Its ``[[devices]]`` keys are ``host`` and ``port`` (default 502) of the server,
``address``, the unit id (a device behind a TCP gateway; unique per server), and
``inflight``, the transactions the server accepts at once (default 1; devices on one
server must agree). Devices naming the same ``host:port`` share one connection.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from drivers.driver import BuildContext, Driver, ParseContext
from drivers.health import LineHealth, percent
from drivers.modbus.codec import MAX_UNIT, MIN_UNIT
from drivers.modbus.device import ModbusDevice
from drivers.modbus.tcp_transport import MAX_INFLIGHT, TcpTransport
from drivers.point import Model
from drivers.profile import Profile, Section, load_profile

log = logging.getLogger(__name__)

NAME: Final = "modbus-tcp"
# TCP guide §4.1: the registered port of Modbus over TCP.
DEFAULT_PORT: Final = 502
# A host name (RFC 1123 labels), an IPv4 address or an IPv6 address in its usual forms.
_HOST: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})|[0-9A-Fa-f:.]{2,45}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSettings:
    """Where a Modbus TCP device is: its server's host and port, and its unit id."""

    host: str
    port: int
    address: int
    inflight: int

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"


def parse(sec: Section, ctx: ParseContext) -> TcpSettings | None:
    host = sec.string("host", pattern=_HOST, expected="a host name or an IP address")
    port = sec.integer("port", 1, 0xFFFF, default=DEFAULT_PORT)
    address = sec.integer("address", MIN_UNIT, MAX_UNIT)
    inflight = sec.integer("inflight", 1, MAX_INFLIGHT, default=1)
    if not (sec.ok("host") and sec.ok("port")):
        return None
    server = f"{host}:{port}"
    if sec.ok("address"):
        ctx.claim(sec, "address", (NAME, host, port, address), f"unit {address} on {server}")
    if sec.ok("inflight"):
        ctx.agree(sec, "inflight", (NAME, host, port, "inflight"), inflight)
    if not (sec.ok("address") and sec.ok("inflight")):
        return None
    return TcpSettings(host=host, port=port, address=address, inflight=inflight)


def _load_profile(ref: str, base_dir: Path) -> Model:
    return load_profile(ref, base_dir=base_dir)


class TcpServer:
    """The :class:`~drivers.driver.Bus` of one Modbus TCP server: its connection."""

    def __init__(self, transport: TcpTransport) -> None:
        self.transport = transport

    @property
    def name(self) -> str:
        return self.transport.name

    async def start(self) -> None:
        if not await self.transport.try_open():
            log.error(
                "Modbus TCP server %s unreachable at start: %s; its devices count as silent "
                "until it answers",
                self.name,
                self.transport.last_error,
            )

    async def run(self) -> None:
        await self.transport.keep_open()

    async def close(self) -> None:
        await self.transport.close()

    def status(self) -> dict[str, Any]:
        return {
            "port": self.name,
            "open": self.transport.is_open,
            "error": self.transport.closed_reason,
            "utilisation_pct": percent(self.transport.line_health.utilisation),
        }

    @property
    def health(self) -> LineHealth:
        return self.transport.line_health


def build(name: str, model: Model, settings: object, ctx: BuildContext) -> ModbusDevice:
    assert isinstance(settings, TcpSettings)
    assert isinstance(model, Profile)
    bus = ctx.buses.get(settings.server)
    if bus is None:
        bus = TcpServer(
            TcpTransport(
                settings.host,
                settings.port,
                response_timeout=ctx.response_timeout,
                inflight=settings.inflight,
            )
        )
        ctx.buses[settings.server] = bus
    assert isinstance(bus, TcpServer)
    return ModbusDevice(name, model, settings.address, bus.transport)


def _bus_of(settings: object) -> str:
    assert isinstance(settings, TcpSettings)
    return settings.server


DRIVER: Final = Driver(
    name=NAME, parse=parse, load_profile=_load_profile, build=build, bus_of=_bus_of
)

"""The drivers a ``[[devices]]`` table can name with ``driver = "..."``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from drivers.driver import Driver
from drivers.gpio import driver as gpio
from drivers.iomodule import driver as iomodule
from drivers.modbus import rtu, tcp
from drivers.onvif import driver as onvif
from drivers.snmp import driver as snmp

DRIVERS: Final[Mapping[str, Driver]] = MappingProxyType(
    {
        d.name: d
        for d in (rtu.DRIVER, tcp.DRIVER, snmp.DRIVER, iomodule.DRIVER, gpio.DRIVER, onvif.DRIVER)
    }
)

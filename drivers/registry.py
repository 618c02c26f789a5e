"""The drivers a ``[[devices]]`` table can name with ``driver = "..."``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from drivers.driver import Driver
from drivers.modbus import rtu

DRIVERS: Final[Mapping[str, Driver]] = MappingProxyType({d.name: d for d in (rtu.DRIVER,)})

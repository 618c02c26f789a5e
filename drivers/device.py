"""The seam between the agent and its device drivers (DESIGN.md, "Drivers, profiles and buses").

Every protocol (Modbus RTU/TCP, SNMP signal controllers, the cabinet I/O module,
ONVIF cameras, the board's GPIO) is a :class:`Device`: the agent's poller keeps what
is generic (schedule, link state, backoff, quality, the Points table) and a driver
only says how to read, write and act on one device. Drivers raise
:class:`DriverError`, never their protocol's own exceptions, so the agent has one
thing to catch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

Reading = float | int | bool | str | None
"""A point's value as the device gave it; ``None``: it answered but the value is unusable."""

Report = Callable[[Mapping[str, Reading]], None]
"""Where an event-driven device reports point changes as they happen (point name → value)."""


class DriverError(Exception):
    """The device did not answer, answered garbage, or refused.

    ``timeout``: it did not answer at all (the poller counts a miss either way; bus
    health tells the two apart).
    """

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


class Device(Protocol):
    """One field device behind its driver. Point names are the profile's short names."""

    name: str

    async def read(self) -> Mapping[str, Reading]:
        """Read every polled point once; raises :class:`DriverError` if the device fails."""
        ...

    async def write(self, point: str, value: Reading) -> Reading:
        """Write one point; returns the value the device now holds. :class:`DriverError`."""
        ...

    async def action(self, action: str, args: Mapping[str, Reading]) -> object:
        """Run a named action (a camera's ``snapshot``); :class:`DriverError` if unknown."""
        ...

    async def watch(self, report: Report) -> None:
        """Report changes as they happen, forever; devices without events return at once."""
        ...

    async def close(self) -> None:
        """Release the device's resources (connections, subscriptions)."""
        ...


@runtime_checkable
class HasStatistics(Protocol):
    """A device whose link keeps counters worth showing (frames, lost, corrupt...):
    ``status.json`` shows them under the device as ``link``."""

    def statistics(self) -> object:
        """A dataclass of counters."""
        ...

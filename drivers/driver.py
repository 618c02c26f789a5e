"""What a driver plugs into the agent: its configuration keys, its profiles, its devices.

``[[devices]] driver = "..."`` selects a :class:`Driver` from :mod:`drivers.registry`.
The configuration reads the keys every device has (name, driver, profile, poll) and
hands the table to the driver, which validates its own keys (``line``/``address`` for
Modbus RTU, ``host``/``port`` for Modbus TCP...) in the same ``file: key.path: problem``
style. At start the agent asks the driver for each device's :class:`~drivers.device.Device`;
devices sharing a medium (an RS-485 line, a TCP connection to a gateway) share one
:class:`Bus`, which the agent keeps open and shows in ``status.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drivers.device import Device
from drivers.point import Model
from drivers.profile import Section, show

if TYPE_CHECKING:
    from agent.board import SerialPort


@dataclass(kw_only=True)
class ParseContext:
    """What a driver's key parser may use besides the device's table.

    ``serial_port(sec, role)`` resolves a serial role of the board (reporting a
    problem under ``sec.path.line`` and returning None when it cannot). ``claims``
    maps what a device occupies (``("modbus-rtu", role, address)``) to the first
    device that did, as ``(name, index)``, so two devices cannot claim the same.
    """

    name: str
    index: int
    here: Path
    serial_port: Callable[[Section, str], SerialPort | None]
    claims: dict[tuple[object, ...], tuple[str, int]] = field(default_factory=dict)

    def claim(self, sec: Section, key: str, what: tuple[object, ...], text: str) -> None:
        """Report ``key`` if another device already claimed ``what`` (``text`` says what)."""
        other = self.claims.setdefault(what, (self.name, self.index))
        if other[1] != self.index:
            sec.error(key, f"{text} is already used by {show(other[0])} (devices[{other[1]}])")


class Bus(Protocol):
    """A medium that several devices may share; the agent keeps it open."""

    @property
    def name(self) -> str:
        """How logs and ``status.json`` name it (the serial role, ``host:port``)."""
        ...

    async def start(self) -> None:
        """One attempt to open it now; a failure is logged and left to :meth:`run`."""
        ...

    async def run(self) -> None:
        """Forever: reopen it whenever it is absent or lost, with backoff."""
        ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """What ``status.json`` shows of it (open or not, why, counters)."""
        ...


@dataclass(kw_only=True)
class BuildContext:
    """What a driver gets to build a device: the buses built so far (by key) and the
    agent's polling settings."""

    buses: dict[str, Bus]
    response_timeout: float


@dataclass(frozen=True, kw_only=True)
class Driver:
    """One protocol: how its devices are configured and built.

    ``parse(sec, ctx)`` reads the driver's own keys of a ``[[devices]]`` table and
    returns its settings (a frozen dataclass), or None after reporting problems.
    ``load_profile(ref, base_dir)`` loads a model of this driver (raises
    ``SchemaError`` listing the problems). ``build(name, model, settings, ctx)`` makes
    the device, creating or reusing its bus in ``ctx.buses``.
    """

    name: str
    parse: Callable[[Section, ParseContext], object | None]
    load_profile: Callable[[str, Path], Model]
    build: Callable[[str, Model, object, BuildContext], Device]
    bus_of: Callable[[object], str]
    """The key of the bus a device's settings put it on (its line, its host)."""

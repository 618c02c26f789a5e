"""The ``iomodule`` driver: the cabinet I/O module on a serial role of the board.

``[[devices]] name = "cabinet", driver = "iomodule", profile = "iomodule", line = "iomodule"``.
The module owns its line (no other device may share it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from drivers.cabinet_model import builtin_only, model
from drivers.driver import BuildContext, Driver, ParseContext
from drivers.iomodule.device import POINTS, IoModule
from drivers.point import Model
from drivers.profile import Section, show

if TYPE_CHECKING:
    from agent.board import SerialPort

NAME: Final = "iomodule"
MODEL: Final = model(NAME, POINTS)


@dataclass(frozen=True, slots=True, kw_only=True)
class IoModuleSettings:
    line: SerialPort


def parse(sec: Section, ctx: ParseContext) -> IoModuleSettings | None:
    role = sec.string("line", expected="a serial role of the board")
    port = ctx.serial_port(sec, role) if sec.ok("line") else None
    if port is None:
        return None
    ctx.claim(sec, "line", ("serial", port.role), f"serial line {show(role)}")
    return IoModuleSettings(line=port)


def _load_profile(ref: str, base_dir: Path) -> Model:
    builtin_only(ref, NAME)
    return MODEL


def build(name: str, model: Model, settings: object, ctx: BuildContext) -> IoModule:
    assert isinstance(settings, IoModuleSettings)
    return IoModule(name, port=settings.line.device, baudrate=settings.line.baudrate)


def _bus_of(settings: object) -> str:
    assert isinstance(settings, IoModuleSettings)
    return settings.line.role


DRIVER: Final = Driver(
    name=NAME, parse=parse, load_profile=_load_profile, build=build, bus_of=_bus_of
)

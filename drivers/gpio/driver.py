"""The ``gpio`` driver: the gateway's own GPIO lines, every role of the board file.

``[[devices]] name = "cabinet", driver = "gpio", profile = "gpio"``. Lines on chip
``sim`` (``board/sim.toml``) are the simulated HAL; any other chip is a Linux GPIO
character device through libgpiod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agent.clock import SystemClock
from board.hal import Gpio
from drivers.cabinet_model import builtin_only, model
from drivers.driver import BuildContext, Driver, ParseContext
from drivers.gpio.device import GpioDevice, point_of
from drivers.point import Model
from drivers.profile import Section

if TYPE_CHECKING:
    from agent.board import GpioLine

NAME: Final = "gpio"
SIM_CHIP: Final = "sim"
SIM_SOCKET: Final = "dev/gpio.sock"  # under the board's base_dir
SIM_STATE: Final = "dev/gpio.json"
MODEL: Final = model(NAME, ("door", "mains", "ups_battery", "spd", "relay_lighting", "relay_aux"))


@dataclass(frozen=True, slots=True, kw_only=True)
class GpioSettings:
    lines: Mapping[str, GpioLine]
    base_dir: Path | None


def parse(sec: Section, ctx: ParseContext) -> GpioSettings | None:
    if ctx.board is None:
        return None  # the board's own problems are reported under board.file
    known = {p.name for p in MODEL.points}
    lines = {role: line for role, line in ctx.board.gpio.items() if point_of(role) in known}
    if not lines:
        sec.error("driver", f"board {ctx.board.name!r} has no GPIO line this driver knows")
        return None
    for role in lines:
        ctx.claim(sec, "driver", ("gpio", role), f"GPIO role {role!r}")
    return GpioSettings(lines=lines, base_dir=ctx.board.base_dir)


def _load_profile(ref: str, base_dir: Path) -> Model:
    builtin_only(ref, NAME)
    return MODEL


def build(name: str, model: Model, settings: object, ctx: BuildContext) -> GpioDevice:
    assert isinstance(settings, GpioSettings)
    clock = SystemClock()
    lines = settings.lines

    def open_gpio() -> Gpio:
        if all(line.chip == SIM_CHIP for line in lines.values()):
            from board.gpio_sim import SimGpio

            base = settings.base_dir or Path()
            return SimGpio(
                lines, clock=clock, socket_path=base / SIM_SOCKET, state_file=base / SIM_STATE
            )
        from board.gpio_linux import LinuxGpio  # needs the gpiod bindings, not the simulator

        return LinuxGpio(lines)

    return GpioDevice(name, open_gpio=open_gpio, lines=lines, clock=clock)


def _bus_of(settings: object) -> str:
    return "gpio"


DRIVER: Final = Driver(
    name=NAME, parse=parse, load_profile=_load_profile, build=build, bus_of=_bus_of
)

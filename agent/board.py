"""Board files: what the gateway hardware offers, named by role (DESIGN.md, "Board support").

A board file (``board/<name>.toml``) lists the serial ports (``[serial.rs485_1]``), the
GPIO lines (``[gpio.door_contact]``, polarity included), the watchdog and the console
port. Agent code only ever names roles; device paths and line numbers live here, so
the same agent runs on the real gateway (``armoire-gw1``) and on the simulated one
(``sim``), which has the same roles pointing at the simulator's ptys.

Relative device paths (the simulator's ``dev/rs485_1``) are resolved against the
``base_dir`` given to :func:`load_board`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

import board as board_package
from drivers.profile import (
    Problems,
    SchemaError,
    Section,
    did_you_mean,
    is_builtin_ref,
    read_toml,
    show,
)

Parity = Literal["N", "E", "O"]
Direction = Literal["input", "output"]

BOARDS_DIR: Final = Path(board_package.__file__).parent

_ROLE: Final = re.compile(r"[a-z0-9_]{1,32}")
_ROLE_TEXT: Final = 'a role name: 1 to 32 of a-z, 0-9, "_"'
_BOARD_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_BOARD_NAME_TEXT: Final = 'a board name: 1 to 64 of a-z, 0-9, "-"'
PARITIES: Final[tuple[Parity, ...]] = ("N", "E", "O")
DIRECTIONS: Final[tuple[Direction, ...]] = ("input", "output")
# The termios B* rates (POSIX and Linux <asm-generic/termbits.h>) that UART drivers
# accept; any other number is a typo rather than a custom divisor.
BAUDRATES: Final = (
    300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600,
    115200, 230400, 460800, 500000, 576000, 921600, 1000000,
)  # fmt: skip
# GPIO line offsets are u32 in the kernel's uapi (gpio.h); beyond 65535 is surely a typo.
MAX_GPIO_LINE: Final = 0xFFFF
# Linux watchdog drivers take whole seconds (WDIOC_SETTIMEOUT); an hour is far beyond
# what any hardware watchdog holds (i.MX's imx2_wdt: 128 s).
MAX_WATCHDOG_TIMEOUT: Final = 3600.0


class BoardError(SchemaError):
    """A board file could not be loaded; each line names the file, the key path and the problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialPort:
    """A serial port, by role. ``rs485`` asks the driver to enable the kernel's RS-485 mode."""

    role: str
    device: Path
    baudrate: int
    parity: Parity
    bytesize: int
    stopbits: int
    rs485: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class GpioLine:
    """A GPIO line, by role. ``active_low``: the electrical low level means "active"."""

    role: str
    chip: str
    line: int
    direction: Direction
    active_low: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Board:
    """A validated board file. ``console`` is the serial role of the technician console."""

    name: str
    description: str
    serial: Mapping[str, SerialPort]
    gpio: Mapping[str, GpioLine]
    watchdog: Path | None
    watchdog_timeout: float | None
    console: str | None
    source: Path
    # Where relative device paths resolved (the simulator's data directory); the
    # simulated GPIO chip keeps its control socket there (board/gpio_sim.py).
    base_dir: Path | None = None


def builtin_boards() -> list[str]:
    """Names of the board files shipped in the ``board`` package."""
    return sorted(path.stem for path in BOARDS_DIR.glob("*.toml"))


def load_board(ref: str | Path, base_dir: Path | None = None) -> Board:
    """Load a board: a built-in name (``"sim"``, ``"armoire-gw1"``) or a path to a file.

    Relative device paths are resolved against ``base_dir`` (left relative without one).
    Raises :class:`BoardError` listing every problem.
    """
    if isinstance(ref, str) and is_builtin_ref(ref):
        path = BOARDS_DIR / f"{ref}.toml"
        if not path.is_file():
            known = builtin_boards()
            raise BoardError(
                [
                    f"no built-in board {show(ref)}{did_you_mean(ref, known)} "
                    f"(built-in: {', '.join(known)}; or give a path to a .toml file)"
                ]
            )
        label = f"board/{ref}.toml"
    else:
        path = Path(ref)
        label = str(ref)
    problems = Problems(label)
    data = read_toml(path, problems)
    if data is None:
        raise BoardError(problems.errors)
    root = Section(problems, "", data)
    meta = root.table("board")
    name = meta.string("name", pattern=_BOARD_NAME, expected=_BOARD_NAME_TEXT)
    description = meta.string("description", default="")
    meta.close()

    serial = {
        role: _serial_port(role, section, base_dir)
        for role, section in _roles(root.table("serial", required=False))
    }
    gpio = {
        role: _gpio_line(role, section)
        for role, section in _roles(root.table("gpio", required=False))
    }

    watchdog: Path | None = None
    watchdog_timeout: float | None = None
    if root.has("watchdog"):
        section = root.table("watchdog")
        watchdog = _device(section.string("device", expected="a device path"), base_dir)
        watchdog_timeout = section.number("timeout", 1, MAX_WATCHDOG_TIMEOUT)
        section.close()

    console: str | None = None
    if root.has("console"):
        section = root.table("console")
        console = section.string("serial", expected="a role under [serial]")
        if section.ok("serial") and console not in serial:
            section.error(
                "serial",
                f"no serial role {show(console)} on this board{did_you_mean(console, serial)}",
            )
        section.close()
    root.close()

    if not problems.errors:  # placeholders left by other errors would clash spuriously
        _check_claims(problems, serial, gpio, watchdog)
    if problems.errors:
        raise BoardError(problems.errors)
    return Board(
        name=name,
        description=description,
        serial=MappingProxyType(serial),
        gpio=MappingProxyType(gpio),
        watchdog=watchdog,
        watchdog_timeout=watchdog_timeout,
        console=console,
        source=path,
        base_dir=base_dir,
    )


def _roles(section: Section) -> list[tuple[str, Section]]:
    roles = section.subtables()
    for role, _ in roles:
        if not _ROLE.fullmatch(role):
            section.error(role, f"expected {_ROLE_TEXT}")
    return roles


def _device(text: str, base_dir: Path | None) -> Path:
    path = Path(text)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return path


def _serial_port(role: str, sec: Section, base_dir: Path | None) -> SerialPort:
    port = SerialPort(
        role=role,
        device=_device(sec.string("device", expected="a device path"), base_dir),
        baudrate=_baudrate(sec),
        # 8N1 is every UART's default; Modbus lines state their parity explicitly.
        parity=sec.choice("parity", PARITIES, default="N"),
        bytesize=sec.integer("bytesize", 5, 8, default=8),
        stopbits=sec.integer("stopbits", 1, 2, default=1),
        rs485=sec.boolean("rs485", default=False),
    )
    sec.close()
    return port


def _baudrate(sec: Section) -> int:
    baudrate = sec.integer("baudrate", BAUDRATES[0], BAUDRATES[-1])
    if sec.ok("baudrate") and baudrate not in BAUDRATES:
        sec.error(
            "baudrate",
            f"{baudrate} is not a standard rate{did_you_mean(str(baudrate), map(str, BAUDRATES))}",
        )
    return baudrate


def _gpio_line(role: str, sec: Section) -> GpioLine:
    line = GpioLine(
        role=role,
        chip=sec.string("chip", pattern=re.compile(r".+"), expected="a GPIO chip name or path"),
        line=sec.integer("line", 0, MAX_GPIO_LINE),
        direction=sec.choice("direction", DIRECTIONS),
        active_low=sec.boolean("active_low", default=False),
    )
    sec.close()
    return line


def _check_claims(
    problems: Problems,
    serial: Mapping[str, SerialPort],
    gpio: Mapping[str, GpioLine],
    watchdog: Path | None,
) -> None:
    """No device node and no GPIO line may be used by two roles."""
    devices: dict[str, str] = {}
    claims = [(f"serial.{role}.device", port.device) for role, port in serial.items()]
    if watchdog is not None:
        claims.append(("watchdog.device", watchdog))
    for path, device in claims:
        key = os.path.normpath(device)
        if key in devices:
            problems.add(path, f"{show(str(device))} is already claimed by {devices[key]}")
        else:
            devices[key] = path.removesuffix(".device")
    lines: dict[tuple[str, int], str] = {}
    for role, gpio_line in gpio.items():
        key2 = (gpio_line.chip, gpio_line.line)
        if key2 in lines:
            problems.add(
                f"gpio.{role}.line",
                f"{gpio_line.chip} line {gpio_line.line} is already claimed by {lines[key2]}",
            )
        else:
            lines[key2] = f"gpio.{role}"

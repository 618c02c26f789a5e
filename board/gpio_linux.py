"""The board HAL on Linux: GPIO character devices through libgpiod v2 (PyPI ``gpiod``).

Lines are requested once, grouped by chip (one request per chip, so one file descriptor
per chip carries all its edges). ``active_low`` from the board file goes to the kernel
(``LineSettings.active_low``), so values read and driven are logical; the kernel also
timestamps edges on the monotonic clock, and where the GPIO driver supports it, debounces
in hardware (``debounce_period``); :class:`board.hal.Debouncer` debounces again in any
case, so a driver without debounce support behaves the same.

:func:`plan_requests` (which lines go to which chip with which settings) is pure and
tested without hardware; the rest needs a GPIO chip (``gpio-sim`` in a kernel that has it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import gpiod
from gpiod.line import Direction, Value
from gpiod.line import Edge as GpiodEdge

from agent.board import GpioLine
from board.hal import DEFAULT_DEBOUNCE, Edge, GpioError

CONSUMER: Final = "armoire"
DEV: Final = Path("/dev")
# Edge events the kernel keeps per request before dropping the oldest (the uapi's
# default is 16 per line); a bouncing contact may emit dozens in a few ms.
EVENT_BUFFER: Final = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class ChipRequest:
    """What to ask of one chip: its device path and, per line offset, the settings."""

    path: Path
    roles: Mapping[int, str]  # offset -> role
    settings: Mapping[int, gpiod.LineSettings]


def chip_path(chip: str) -> Path:
    """``gpiochip0`` -> ``/dev/gpiochip0``; a path is kept as it is."""
    return Path(chip) if "/" in chip else DEV / chip


def line_settings(line: GpioLine, debounce: float) -> gpiod.LineSettings:
    if line.direction == "input":
        return gpiod.LineSettings(
            direction=Direction.INPUT,
            edge_detection=GpiodEdge.BOTH,
            active_low=line.active_low,
            debounce_period=timedelta(seconds=debounce),
        )
    # Requested inactive: a relay is never switched on by the agent merely starting;
    # the Arbiter drives it as soon as its value is decided.
    return gpiod.LineSettings(
        direction=Direction.OUTPUT, active_low=line.active_low, output_value=Value.INACTIVE
    )


def plan_requests(
    lines: Mapping[str, GpioLine], debounce: float = DEFAULT_DEBOUNCE
) -> list[ChipRequest]:
    """One request per chip, in the order chips first appear in the board file."""
    by_chip: dict[Path, tuple[dict[int, str], dict[int, gpiod.LineSettings]]] = {}
    for role, line in lines.items():
        roles, settings = by_chip.setdefault(chip_path(line.chip), ({}, {}))
        roles[line.line] = role
        settings[line.line] = line_settings(line, debounce)
    return [ChipRequest(path=p, roles=r, settings=s) for p, (r, s) in by_chip.items()]


class LinuxGpio:
    """The board's lines on ``/dev/gpiochip*``."""

    def __init__(self, lines: Mapping[str, GpioLine], debounce: float = DEFAULT_DEBOUNCE) -> None:
        self._lines = dict(lines)
        self._requests: list[tuple[ChipRequest, gpiod.LineRequest]] = []
        self._where: dict[str, tuple[gpiod.LineRequest, int]] = {}
        try:
            for plan in plan_requests(lines, debounce):
                config: dict[Iterable[int | str] | int | str, gpiod.LineSettings | None] = dict(
                    plan.settings.items()
                )
                request = gpiod.request_lines(
                    str(plan.path),
                    consumer=CONSUMER,
                    config=config,
                    event_buffer_size=EVENT_BUFFER,
                )
                self._requests.append((plan, request))
                for offset, role in plan.roles.items():
                    self._where[role] = (request, offset)
        except OSError as exc:
            self.close()
            raise GpioError(f"GPIO lines {', '.join(lines)}: {exc}") from exc

    def get(self, role: str) -> bool:
        request, offset = self._line(role)
        try:
            return bool(request.get_value(offset) == Value.ACTIVE)
        except OSError as exc:
            raise GpioError(f"{role}: {exc}") from exc

    def set(self, role: str, active: bool) -> None:
        if self._lines[role].direction != "output":
            raise GpioError(f"{role} is an input")
        request, offset = self._line(role)
        try:
            request.set_value(offset, Value.ACTIVE if active else Value.INACTIVE)
        except OSError as exc:
            raise GpioError(f"{role}: {exc}") from exc

    async def edges(self) -> AsyncIterator[Edge]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[tuple[ChipRequest, gpiod.LineRequest]] = asyncio.Queue()
        watched = [(plan, req) for plan, req in self._requests if _has_inputs(plan)]
        for plan, request in watched:
            loop.add_reader(request.fd, ready.put_nowait, (plan, request))
        try:
            while True:
                plan, request = await ready.get()
                # The reader callback may have queued this request more than once: read
                # only what is there (read_edge_events blocks on an empty request).
                while request.wait_edge_events(timedelta(0)):
                    for event in request.read_edge_events():
                        yield Edge(
                            role=plan.roles[event.line_offset],
                            # Logical edges: with active_low the kernel inverts them too.
                            active=event.event_type is gpiod.EdgeEvent.Type.RISING_EDGE,
                            t=event.timestamp_ns / 1e9,
                        )
        finally:
            for _, request in watched:
                loop.remove_reader(request.fd)

    def close(self) -> None:
        requests, self._requests = self._requests, []
        for _, request in requests:
            request.release()

    def _line(self, role: str) -> tuple[gpiod.LineRequest, int]:
        try:
            return self._where[role]
        except KeyError:
            raise GpioError(f"no GPIO role {role!r} (roles: {', '.join(self._where)})") from None


def _has_inputs(plan: ChipRequest) -> bool:
    return any(s.direction is Direction.INPUT for s in plan.settings.values())

"""The board's GPIO lines as one :class:`drivers.device.Device` (README, "Cabinet I/O").

Each GPIO role of the board file becomes a point of the device (configured as
``cabinet``): ``door_contact`` -> ``cabinet/door`` (true: open), ``mains_sense`` ->
``cabinet/mains`` (true: present), ``spd_fault`` -> ``cabinet/spd`` (true: tripped),
``ups_battery`` -> ``cabinet/ups_battery``, and the outputs ``relay_lighting``,
``relay_aux`` under their own names, written through the Arbiter like any writable
point. :meth:`GpioDevice.watch` turns the HAL's raw edges into debounced changes,
reported once each, :attr:`board.hal.DEFAULT_DEBOUNCE` after the last bounce.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Final

from agent.board import GpioLine
from agent.clock import Clock
from board.hal import DEFAULT_DEBOUNCE, Debouncer, Gpio, GpioError
from drivers.device import DriverError, Reading, Report

# Board roles whose point has a shorter name; any other role is its own point name.
ROLE_POINTS: Final = {
    "door_contact": "door",
    "mains_sense": "mains",
    "spd_fault": "spd",
    "ups_battery": "ups_battery",
}


def point_of(role: str) -> str:
    return ROLE_POINTS.get(role, role)


class GpioDevice:
    """The board's GPIO ``lines`` (roles) as points, through the HAL ``open_gpio`` makes.

    The HAL is opened on first use and again after a failure, so a chip that is absent
    (or busy: another program holds a line) makes the device miss its polls, with the
    same ``comm_fail`` and alarm as any silent device, instead of stopping the agent.
    """

    def __init__(
        self,
        name: str,
        *,
        open_gpio: Callable[[], Gpio],
        lines: Mapping[str, GpioLine],
        clock: Clock,
        debounce: float = DEFAULT_DEBOUNCE,
    ) -> None:
        self.name = name
        self._open_gpio = open_gpio
        self._gpio_now: Gpio | None = None
        self._clock = clock
        self._debounce = debounce
        self._roles = {point_of(role): role for role in lines}
        self._inputs = {role for role, line in lines.items() if line.direction == "input"}
        self._debouncers: dict[str, Debouncer] = {}

    @property
    def _gpio(self) -> Gpio:
        if self._gpio_now is None:
            try:
                gpio = self._open_gpio()
                self._debouncers = {
                    role: Debouncer(gpio.get(role), self._debounce) for role in self._inputs
                }
            except GpioError as exc:
                raise DriverError(str(exc)) from exc
            self._gpio_now = gpio
        return self._gpio_now

    @property
    def points(self) -> list[str]:
        return list(self._roles)

    async def read(self) -> Mapping[str, Reading]:
        values: dict[str, Reading] = {}
        gpio = self._gpio
        try:
            for point, role in self._roles.items():
                # Inputs: the debounced state, never a bounce caught mid-flight.
                debouncer = self._debouncers.get(role)
                values[point] = debouncer.state if debouncer else gpio.get(role)
        except GpioError as exc:
            raise DriverError(str(exc)) from exc
        return values

    async def write(self, point: str, value: Reading) -> Reading:
        role = self._roles.get(point)
        if role is None or role in self._inputs:
            raise DriverError(f"{self.name}/{point} is not a GPIO output")
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise DriverError(f"{self.name}/{point}: expected true or false, got {value!r}")
        gpio = self._gpio
        try:
            gpio.set(role, bool(value))
            return gpio.get(role)
        except GpioError as exc:
            raise DriverError(str(exc)) from exc

    async def action(self, action: str, args: Mapping[str, Reading]) -> object:
        raise DriverError(f"{self.name}: no action {action!r} (GPIO lines have none)")

    async def watch(self, report: Report) -> None:
        timers: dict[str, asyncio.Task[None]] = {}

        async def settle_at(role: str, deadline: float) -> None:
            await self._clock.sleep(max(0.0, deadline - self._clock.monotonic()))
            value = self._debouncers[role].settle(self._clock.monotonic())
            if value is not None:
                report({point_of(role): value})

        gpio = self._gpio
        try:
            async for edge in gpio.edges():
                debouncer = self._debouncers.get(edge.role)
                if debouncer is None:
                    continue
                deadline = debouncer.edge(edge.active, edge.t)
                old = timers.pop(edge.role, None)
                if old is not None:
                    old.cancel()  # a bounce: the quiet time starts again
                timers[edge.role] = asyncio.create_task(
                    settle_at(edge.role, deadline), name=f"gpio[{edge.role}].debounce"
                )
        finally:
            for task in timers.values():
                task.cancel()

    async def close(self) -> None:
        gpio, self._gpio_now = self._gpio_now, None
        if gpio is not None:
            gpio.close()

"""Lamp controller, model ``lamp-ctl``: one dimmable street lamp.

Register map (the device manual; the agent's profile is written from it):

=====  ========  ====================  ==========================  =========
table  address   point                 encoding                    unit
=====  ========  ====================  ==========================  =========
HR     0         level                 u16, 0..100                 %
HR     1         on                    u16, 0/1                    -
IR     0         failure               u16, 0/1                    -
IR     1         power                 u16, raw = W × 10           W
IR     2–3       energy                u32 ABCD                    Wh
IR     4–5       hours (burning)       u32 CDAB                    h
IR     6         driver_temp           s16, raw = °C × 10          °C
=====  ========  ====================  ==========================  =========

Writes outside the ranges above are refused with exception 3 (ILLEGAL DATA
VALUE) and change nothing; writes are never clamped.

Settings (level, on) apply as soon as they are written; measurements (power,
energy, hours, driver temperature, failure flag) are refreshed on each model
tick, as a real controller refreshes them on its measurement cycle.
"""

from __future__ import annotations

import random

from pymodbus.constants import ExcCodes

from sim.devices.base import (
    U32_MOD,
    Device,
    Snapshot,
    clamp_s16,
    clamp_u16,
    s16,
    scaled,
    u16,
    u32_abcd,
    u32_cdab,
)

MAX_LEVEL = 100  # percent (lamp-ctl manual, HR 0)

POWER_PER_W = 10  # IR 1 counts per watt
TEMP_PER_C = 10  # IR 6 counts per °C

SECONDS_PER_HOUR = 3600.0

# Driver heating: °C above ambient per watt drawn. A 90 W LED driver in a
# closed luminaire head runs ~20 °C above the air around it.
DRIVER_C_PER_W = 0.25
# Relative standard deviation of the power reading: a cheap metering IC (±1 %)
# plus the mains voltage wobbling under the driver (another ±1 %).
POWER_NOISE = 0.02
DRIVER_TEMP_NOISE_C = 0.3  # NTC on the driver board, unfiltered


class Lamp(Device):
    """One lamp and its controller.

    ``rated_w`` is the power at level 100. ``hours`` and ``energy_wh`` are the
    counters at start (a lamp installed years ago).
    """

    model = "lamp-ctl"
    holding_count = 2
    input_count = 7

    def __init__(
        self,
        *,
        name: str,
        unit: int,
        rated_w: float,
        rng: random.Random,
        hours: float = 0.0,
        energy_wh: float = 0.0,
        ambient_c: float = 25.0,
    ) -> None:
        super().__init__(name=name, unit=unit)
        if rated_w <= 0:
            raise ValueError(f"{name}: rated_w must be positive, got {rated_w}")
        self.rated_w = rated_w
        self._rng = rng
        # Settings: what the master (or a local switch) asked for.
        self.level = MAX_LEVEL
        self.on = True
        # Physical truth: is the lamp itself broken.
        self.failed = False
        # Measurements, as of the last tick.
        self._failure_flag = False
        self._power_w = 0.0
        self._energy_wh = energy_wh
        # Burning time in seconds: sums of tick lengths stay exact in a float.
        self._burn_s = hours * SECONDS_PER_HOUR
        self._driver_temp_c = ambient_c

    @property
    def power_w(self) -> float:
        """Power drawn, as of the last tick (what the meter sees)."""
        return self._power_w

    @property
    def lit(self) -> bool:
        """Whether the lamp gives light with its current settings and health."""
        return self.powered and self.on and self.level > 0 and not self.failed

    def tick(self, dt: float, *, ambient_c: float) -> None:
        """Advance the lamp by ``dt`` seconds in air at ``ambient_c``."""
        if self.lit:
            nominal = self.rated_w * self.level / MAX_LEVEL
            self._power_w = max(0.0, nominal * (1.0 + self._rng.gauss(0.0, POWER_NOISE)))
            self._burn_s += dt
        else:
            self._power_w = 0.0
        self._energy_wh += self._power_w * dt / SECONDS_PER_HOUR
        self._driver_temp_c = (
            ambient_c + DRIVER_C_PER_W * self._power_w + self._rng.gauss(0.0, DRIVER_TEMP_NOISE_C)
        )
        # The driver reports a failure when it is asked for light and gets no load.
        self._failure_flag = self.failed and self.powered

    # -- registers ---------------------------------------------------------

    def _raw(self) -> tuple[int, int, int, int, int]:
        # (failure, power, energy, hours, temperature) as the registers hold
        # them; registers and snapshot both come from here so they agree.
        return (
            int(self._failure_flag),
            clamp_u16(scaled(self._power_w, POWER_PER_W)),
            int(self._energy_wh) % U32_MOD,
            int(self._burn_s // SECONDS_PER_HOUR) % U32_MOD,
            clamp_s16(scaled(self._driver_temp_c, TEMP_PER_C)),
        )

    def holding_registers(self) -> list[int]:
        return [*u16(self.level), *u16(int(self.on))]

    def input_registers(self) -> list[int]:
        failure, power, energy, hours, temp = self._raw()
        return [*u16(failure), *u16(power), *u32_abcd(energy), *u32_cdab(hours), *s16(temp)]

    def write_holding(self, address: int, values: list[int]) -> ExcCodes | None:
        new_level, new_on = self.level, self.on
        for register, value in enumerate(values, start=address):
            # HR 0 is the level, HR 1 on/off (register map above).
            match register:
                case 0 if 0 <= value <= MAX_LEVEL:
                    new_level = value
                case 1 if value in (0, 1):
                    new_on = bool(value)
                case 0 | 1:
                    return ExcCodes.ILLEGAL_VALUE
                case _:
                    return ExcCodes.ILLEGAL_ADDRESS
        # Every value is checked before any is applied: a refused write changes nothing.
        self.level, self.on = new_level, new_on
        return None

    def snapshot(self) -> Snapshot:
        failure, power, energy, hours, temp = self._raw()
        return {
            "level": self.level,
            "on": self.on,
            "failure": bool(failure),
            "power": power / POWER_PER_W,
            "energy": energy,
            "hours": hours,
            "driver_temp": temp / TEMP_PER_C,
        }

"""Cabinet environment sensor, model ``env-sensor``: air temperature and humidity.

Register map (the device manual; the agent's profile is written from it):

=====  ========  ============  ==========================  ===
table  address   point         encoding                    unit
=====  ========  ============  ==========================  ===
IR     0         temperature   s16, raw = °C × 10          °C
IR     1         humidity      u16, raw = %RH × 10         %RH
=====  ========  ============  ==========================  ===

The object also models the cabinet air itself, which the lamps' drivers sit
in: the air keeps changing while the sensor is powered off, only the sensor's
readings freeze.
"""

from __future__ import annotations

import math
import random

from sim.devices.base import Device, Snapshot, clamp_s16, clamp_u16, s16, scaled, u16

TEMP_PER_C = 10  # IR 0 counts per °C
RH_PER_PERCENT = 10  # IR 1 counts per %RH

# Weather: a mean-reverting random walk around the scenario's ambient, with
# this time constant, step size and bound.
DRIFT_TAU_S = 600.0
DRIFT_STEP_C_PER_SQRT_S = 0.02
DRIFT_MAX_C = 5.0
# Heat from the cabinet's load: °C above ambient per watt switched (the
# contactors and supplies warm the cabinet a few degrees at full load).
LOAD_C_PER_W = 0.005
# Relative humidity falls as the same air warms (about 2 %RH per °C near 50 %RH).
BASE_RH = 50.0
RH_PER_C = 2.0
MIN_RH, MAX_RH = 5.0, 95.0


class EnvSensor(Device):
    """Temperature/humidity sensor and the cabinet air it measures."""

    model = "env-sensor"
    input_count = 2

    def __init__(
        self, *, name: str, unit: int, rng: random.Random, ambient_c: float = 25.0
    ) -> None:
        super().__init__(name=name, unit=unit)
        self._rng = rng
        self._ambient_c = ambient_c
        self._drift_c = 0.0
        self._air_c = ambient_c
        self._air_rh = BASE_RH
        self._temp_c = ambient_c
        self._rh = BASE_RH

    @property
    def air_temperature_c(self) -> float:
        """True temperature of the cabinet air (whether or not the sensor is powered)."""
        return self._air_c

    def tick(self, dt: float, *, load_w: float) -> None:
        """Advance by ``dt`` seconds with ``load_w`` drawn by the cabinet's loads."""
        step = DRIFT_STEP_C_PER_SQRT_S * math.sqrt(max(dt, 0.0))
        drift = self._drift_c
        drift += -drift * min(dt / DRIFT_TAU_S, 1.0) + self._rng.gauss(0.0, step)
        self._drift_c = min(max(drift, -DRIFT_MAX_C), DRIFT_MAX_C)
        self._air_c = self._ambient_c + self._drift_c + LOAD_C_PER_W * max(load_w, 0.0)
        rh = BASE_RH - RH_PER_C * (self._air_c - self._ambient_c)
        self._air_rh = min(max(rh, MIN_RH), MAX_RH)
        if self.powered:
            self._temp_c, self._rh = self._air_c, self._air_rh

    def _raw(self) -> tuple[int, int]:
        return (
            clamp_s16(scaled(self._temp_c, TEMP_PER_C)),
            clamp_u16(scaled(self._rh, RH_PER_PERCENT)),
        )

    def input_registers(self) -> list[int]:
        temp, rh = self._raw()
        return [*s16(temp), *u16(rh)]

    def snapshot(self) -> Snapshot:
        temp, rh = self._raw()
        return {"temperature": temp / TEMP_PER_C, "humidity": rh / RH_PER_PERCENT}

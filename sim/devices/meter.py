"""Three-phase energy meter, model ``meter-3ph``, on the cabinet's incoming supply.

Register map (the device manual; the agent's profile is written from it):

=====  ========  ==========================  ======================  ====
table  address   point                       encoding                unit
=====  ========  ==========================  ======================  ====
IR     0, 2, 4   voltage_l1 / _l2 / _l3      f32 IEEE-754 ABCD       V
IR     6, 8, 10  current_l1 / _l2 / _l3      f32 IEEE-754 ABCD       A
IR     12–13     power (total active)        s32 ABCD, < 0 = export  W
IR     14–15     energy (active import)      u32 ABCD                Wh
=====  ========  ==========================  ======================  ====

The meter has no holding registers. Measurements are refreshed on each tick;
while it is powered off it measures nothing (its energy counter stops).
"""

from __future__ import annotations

import math
import random

from sim.devices.base import (
    U32_MOD,
    Device,
    Snapshot,
    as_f32,
    clamp_s32,
    f32_abcd,
    s32_abcd,
    u32_abcd,
)

PHASES = 3
SECONDS_PER_HOUR = 3600.0

# Nominal phase voltage of European low-voltage mains (EN 50160: 230 V ± 10 %).
NOMINAL_V = 230.0
# The supply wanders a few volts with the neighbourhood's load: a mean-reverting
# random walk with this time constant, step size and bound.
VOLTAGE_TAU_S = 60.0
VOLTAGE_STEP_V_PER_SQRT_S = 0.3
VOLTAGE_SWING_V = 6.0


class Meter(Device):
    """The supply meter; the cabinet tells it the power drawn on each phase."""

    model = "meter-3ph"
    input_count = 16

    def __init__(self, *, name: str, unit: int, rng: random.Random, energy_wh: float = 0.0) -> None:
        super().__init__(name=name, unit=unit)
        self._rng = rng
        self._offset_v = [0.0] * PHASES
        self._voltage_v = [NOMINAL_V] * PHASES
        self._current_a = [0.0] * PHASES
        self._power_w = 0.0
        self._energy_wh = energy_wh

    def tick(self, dt: float, *, phase_power_w: tuple[float, float, float]) -> None:
        """Advance by ``dt`` seconds with ``phase_power_w`` drawn on L1, L2, L3."""
        if not self.powered:
            return
        step = VOLTAGE_STEP_V_PER_SQRT_S * math.sqrt(max(dt, 0.0))
        for phase in range(PHASES):
            offset = self._offset_v[phase]
            offset += -offset * min(dt / VOLTAGE_TAU_S, 1.0) + self._rng.gauss(0.0, step)
            self._offset_v[phase] = min(max(offset, -VOLTAGE_SWING_V), VOLTAGE_SWING_V)
            volts = NOMINAL_V + self._offset_v[phase]
            self._voltage_v[phase] = volts
            # Resistive loads (LED drivers with PFC): current in phase with voltage.
            self._current_a[phase] = abs(phase_power_w[phase]) / volts
        self._power_w = sum(phase_power_w)
        # An import register only counts energy drawn from the grid.
        self._energy_wh += max(self._power_w, 0.0) * dt / SECONDS_PER_HOUR

    def _power_raw(self) -> int:
        return clamp_s32(round(self._power_w))

    def _energy_raw(self) -> int:
        return int(self._energy_wh) % U32_MOD

    def input_registers(self) -> list[int]:
        registers: list[int] = []
        for volts in self._voltage_v:
            registers += f32_abcd(volts)
        for amps in self._current_a:
            registers += f32_abcd(amps)
        return [*registers, *s32_abcd(self._power_raw()), *u32_abcd(self._energy_raw())]

    def snapshot(self) -> Snapshot:
        values: Snapshot = {}
        for phase in range(PHASES):
            values[f"voltage_l{phase + 1}"] = as_f32(self._voltage_v[phase])
        for phase in range(PHASES):
            values[f"current_l{phase + 1}"] = as_f32(self._current_a[phase])
        values["power"] = self._power_raw()
        values["energy"] = self._energy_raw()
        return values

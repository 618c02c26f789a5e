"""Simulated Modbus RTU devices: each holds its physical state and serves it through pymodbus."""

from sim.devices.base import Device, Snapshot
from sim.devices.contactor import Contactor
from sim.devices.envsensor import EnvSensor
from sim.devices.lamp import Lamp
from sim.devices.meter import Meter

__all__ = ["Contactor", "Device", "EnvSensor", "Lamp", "Meter", "Snapshot"]

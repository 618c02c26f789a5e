"""Simulated Modbus RTU devices: each holds its physical state and serves it through pymodbus."""

from sim.devices.base import Device, Snapshot
from sim.devices.envsensor import EnvSensor
from sim.devices.lamp import Lamp
from sim.devices.meter import Meter

__all__ = ["Device", "EnvSensor", "Lamp", "Meter", "Snapshot"]

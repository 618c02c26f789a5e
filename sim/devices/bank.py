"""A bank of holding registers whose values change on every read, and can be checked.

The load of the same-load race (``bench/same_load.py``) and of the Modbus TCP tests:
register 0 counts the reads of the bank (a poll number, 0..65535, wrapping), and
register ``i`` of read ``n`` holds :func:`bank_value` of (unit, n, i). Whoever
receives a reading of register ``i`` next to the reading of register 0 from the same
poll can check it was neither mixed up with another unit's nor with another poll's,
and gaps in the poll numbers show lost polls.
"""

from __future__ import annotations

from typing import ClassVar

from sim.devices.base import Device, Snapshot

REGISTERS = 10
MODEL = "bank-10"


def bank_value(unit: int, n: int, index: int) -> int:
    """Register ``index`` (1..) of unit ``unit`` at read number ``n``: changes every read."""
    return (n * 7919 + unit * 104_729 + index * 1_299_709) & 0xFFFF


class RegisterBank(Device):
    """Ten holding registers, read-only, new values at every read."""

    model: ClassVar[str] = MODEL
    holding_count: ClassVar[int] = REGISTERS
    input_count: ClassVar[int] = 0

    def __init__(self, *, name: str, unit: int) -> None:
        super().__init__(name=name, unit=unit)
        self.reads = 0

    def holding_registers(self) -> list[int]:
        # pymodbus renders the block once per request: one request, one new poll number.
        self.reads += 1
        n = self.reads & 0xFFFF
        return [n] + [bank_value(self.unit, n, i) for i in range(1, REGISTERS)]

    def input_registers(self) -> list[int]:
        return []

    def snapshot(self) -> Snapshot:
        return {"reads": self.reads}


def bank_profile() -> str:
    """The agent's profile of a bank (TOML): every register a point reported on change."""
    lines = [
        "[model]",
        f'name = "{MODEL}"',
        'description = "the same-load bench: registers that change on every read"',
        "deadband = 0",
        "",
    ]
    for i in range(REGISTERS):
        lines += ["[[points]]", f'name = "r{i}"', 'table = "holding"', f"address = {i}"]
        lines += ['type = "u16"', ""]
    return "\n".join(lines)

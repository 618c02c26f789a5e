"""What every simulated Modbus device has: a name, a unit id, registers, a snapshot.

A device keeps its physical state in plain attributes and renders it into
pymodbus register blocks when the server touches them (pymodbus's ``SimDevice``
``action`` hook, called on every access before the reply is built). Settings
written by the master (holding registers) are validated and applied to the
state in the same hook, so a write takes effect at once and a bad value gets
a Modbus exception reply.

This module deliberately encodes registers with :mod:`struct` rather than
anything in ``drivers/``: the simulator is an independent peer of the agent
(STYLE.md), so a decoding bug shared by both ends cannot hide.
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from typing import ClassVar

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

Snapshot = dict[str, float | int | bool]

# Individual slave addresses on a Modbus serial line are 1..247; 0 is broadcast
# and 248..255 are reserved (Modbus over Serial Line V1.02 §2.2).
MIN_UNIT = 1
MAX_UNIT = 247

# Function codes that reach a register block (Modbus Application Protocol V1.1b3 §6).
FC_READ_HOLDING = 3
FC_READ_INPUT = 4
FC_WRITE_SINGLE = 6
FC_WRITE_MULTIPLE = 16
FC_MASK_WRITE = 22
FC_READ_WRITE_MULTIPLE = 23
HOLDING_FUNCTIONS = frozenset(
    {FC_READ_HOLDING, FC_WRITE_SINGLE, FC_WRITE_MULTIPLE, FC_MASK_WRITE, FC_READ_WRITE_MULTIPLE}
)

U16_MAX = 0xFFFF
S16_MIN, S16_MAX = -0x8000, 0x7FFF
U32_MOD = 1 << 32
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1


# -- register encodings (16-bit registers, big-endian bytes within a register) --


def _words(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def clamp_u16(value: int) -> int:
    """``value`` saturated to 0..65535, as a transducer pins an out-of-range reading."""
    return min(max(value, 0), U16_MAX)


def clamp_s16(value: int) -> int:
    """``value`` saturated to the s16 range."""
    return min(max(value, S16_MIN), S16_MAX)


def clamp_s32(value: int) -> int:
    """``value`` saturated to the s32 range."""
    return min(max(value, S32_MIN), S32_MAX)


def u16(value: int) -> list[int]:
    """One register, unsigned; saturates at 0 and 65535."""
    return [clamp_u16(value)]


def s16(value: int) -> list[int]:
    """One register, two's complement; saturates at the s16 range."""
    return _words(struct.pack(">h", clamp_s16(value)))


def u32_abcd(value: int) -> list[int]:
    """Two registers, high word first. Counters roll over at 2**32."""
    return _words(struct.pack(">I", value % U32_MOD))


def u32_cdab(value: int) -> list[int]:
    """Two registers, low word first ("word-swapped"). Counters roll over at 2**32."""
    high, low = u32_abcd(value)
    return [low, high]


def s32_abcd(value: int) -> list[int]:
    """Two registers, two's complement, high word first; saturates at the s32 range."""
    return _words(struct.pack(">i", clamp_s32(value)))


def f32_abcd(value: float) -> list[int]:
    """Two registers holding an IEEE-754 single, high word first."""
    return _words(struct.pack(">f", value))


def as_f32(value: float) -> float:
    """``value`` rounded to the nearest IEEE-754 single, as a device stores it."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


def scaled(value: float, per_unit: int) -> int:
    """The raw integer a device reports for ``value`` at ``per_unit`` counts per unit."""
    if not math.isfinite(value):
        return 0
    return round(value * per_unit)


# -- the device ---------------------------------------------------------------


class Device(ABC):
    """A simulated Modbus RTU slave.

    Subclasses hold their physical state, say which registers they have, and
    render registers from the state. ``powered`` is read by the cabinet's
    request filter: an unpowered device does not answer at all.
    """

    model: ClassVar[str]
    """Model name, the same string the agent's device profiles use."""

    holding_count: ClassVar[int] = 0
    """Number of holding registers from address 0 (0: the device has none)."""

    input_count: ClassVar[int] = 0
    """Number of input registers from address 0 (0: the device has none)."""

    def __init__(self, *, name: str, unit: int) -> None:
        if not MIN_UNIT <= unit <= MAX_UNIT:
            raise ValueError(f"{name}: unit {unit} outside {MIN_UNIT}..{MAX_UNIT}")
        self.name = name
        self.unit = unit
        self.powered = True

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """True values in engineering units, exactly as the registers encode them."""

    def holding_registers(self) -> list[int]:
        """Current image of the holding registers from address 0."""
        return []

    @abstractmethod
    def input_registers(self) -> list[int]:
        """Current image of the input registers from address 0."""

    def write_holding(self, address: int, values: list[int]) -> ExcCodes | None:
        """Apply a write of ``values`` at ``address``; return an exception code to refuse it.

        Called before pymodbus stores the values; addresses are already known
        to be inside the holding block.
        """
        return ExcCodes.ILLEGAL_ADDRESS

    def simdevice(self) -> SimDevice:
        """The pymodbus description of this device, wired to this object's state."""
        # Separate blocks per table (the tuple form), so holding register 0 and
        # input register 0 are different registers. pymodbus needs at least
        # one entry per table; tables the device lacks get one INVALID cell
        # (any access answers ILLEGAL DATA ADDRESS) and coils/discrete inputs,
        # which must be BITS, are refused in the action with ILLEGAL FUNCTION.
        coils = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        discretes = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        holding = [self._block(self.holding_count, readonly=False)]
        inputs = [self._block(self.input_count, readonly=True)]
        return SimDevice(
            id=self.unit,
            simdata=(coils, discretes, holding, inputs),
            action=self._action,
        )

    @staticmethod
    def _block(count: int, *, readonly: bool) -> SimData:
        if count == 0:
            return SimData(address=0, datatype=DataType.INVALID)
        return SimData(
            address=0, count=count, values=0, datatype=DataType.REGISTERS, readonly=readonly
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # pymodbus calls this on every access to a block, after its own
        # address checks; ``registers`` is the whole block, changed in place.
        if function_code in HOLDING_FUNCTIONS:
            if set_values is not None:
                refused = self.write_holding(address, [int(v) for v in set_values])
                if refused is not None:
                    return refused
            self._render(registers, start_address, self.holding_registers())
            return None
        if function_code == FC_READ_INPUT:
            self._render(registers, start_address, self.input_registers())
            return None
        return ExcCodes.ILLEGAL_FUNCTION

    @staticmethod
    def _render(registers: list[int], start_address: int, image: list[int]) -> None:
        offset = -start_address
        registers[offset : offset + len(image)] = image

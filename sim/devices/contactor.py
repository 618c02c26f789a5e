"""Lighting-circuit contactor, model ``contactor``: a Modbus RTU relay module.

The module drives the coil of the contactor that switches the cabinet's
lighting circuit, and reads back the contactor's auxiliary contact.

Register map (the device manual; the agent's profile is written from it):

=====  ========  ==========  ===========================  ====
table  address   point       encoding                     unit
=====  ========  ==========  ===========================  ====
HR     0         command     u16, 0/1 (1 = close)         -
IR     0         closed      u16, 0/1 (auxiliary contact)  -
IR     1         operations  u16, rolls over at 65 536    -
=====  ========  ==========  ===========================  ====

Writes other than 0 or 1 to HR 0 are refused with exception 3 (ILLEGAL DATA
VALUE) and change nothing.

The command applies to the coil at once; the contacts (and with them the
auxiliary contact, the circuit and the operations counter) follow on the next
model tick, as a real contactor pulls in or drops out tens of milliseconds
after its coil changes. While the module is powered off it does not answer and
its relay releases the coil: the contactor opens. Its command is kept, so the
contactor closes again once the module is powered back on.
"""

from __future__ import annotations

from pymodbus.constants import ExcCodes

from sim.devices.base import U16_MAX, Device, Snapshot, u16

# IR 1 is a 16-bit counter (manual above): it rolls over after 65 535.
OPERATIONS_MOD = U16_MAX + 1


class Contactor(Device):
    """The lighting circuit's contactor and the relay module that drives it.

    ``operations`` is the counter at start (a contactor installed years ago).
    Starts closed: the circuit is energised, the street is lit.
    """

    model = "contactor"
    holding_count = 1
    input_count = 2

    def __init__(self, *, name: str, unit: int, operations: int = 0) -> None:
        super().__init__(name=name, unit=unit)
        if not 0 <= operations <= U16_MAX:
            raise ValueError(f"{name}: operations must be 0..{U16_MAX}, got {operations}")
        # Setting: what the master asked for (HR 0).
        self.command = True
        # Physical truth: the position of the main contacts.
        self._closed = True
        self._operations = operations

    @property
    def closed(self) -> bool:
        """Whether the main contacts are closed, i.e. the lighting circuit is energised."""
        return self._closed

    @property
    def operations(self) -> int:
        """Changes of state counted so far (as IR 1 reports it)."""
        return self._operations

    def tick(self, dt: float) -> None:
        """Advance by ``dt`` seconds: the contacts follow the coil."""
        # An unpowered module releases its relay, and with it the contactor's coil.
        coil = self.command and self.powered
        if coil != self._closed:
            self._closed = coil
            self._operations = (self._operations + 1) % OPERATIONS_MOD

    # -- registers ---------------------------------------------------------

    def holding_registers(self) -> list[int]:
        return u16(int(self.command))

    def input_registers(self) -> list[int]:
        return [*u16(int(self._closed)), *u16(self._operations)]

    def write_holding(self, address: int, values: list[int]) -> ExcCodes | None:
        # One holding register (HR 0, the command), so pymodbus has already
        # refused any write reaching past it.
        match address, values:
            case 0, [0 | 1 as value]:
                self.command = bool(value)
                return None
            case 0, [_]:
                return ExcCodes.ILLEGAL_VALUE
            case _:
                return ExcCodes.ILLEGAL_ADDRESS

    def snapshot(self) -> Snapshot:
        return {"command": self.command, "closed": self._closed, "operations": self._operations}

"""The lighting-circuit contactor, checked with pymodbus's own RTU client.

Registers are decoded straight from the device manual in
``sim/devices/contactor.py``, so a map that drifts from its manual fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient

from agent.clock import FakeClock
from drivers.profile import load_profile
from sim.cabinet import Cabinet, Scenario

# Long enough for any real answer at 19200 baud on a loaded CI machine.
CLIENT_TIMEOUT = 0.5
# Modbus Application Protocol V1.1b3 §7: exception 3, ILLEGAL DATA VALUE.
ILLEGAL_DATA_VALUE = 3

# Four lamps cover the three phases and the wrap-around to L1.
SCENARIO = Scenario(lamps=4, other_load_w=20.0)


@pytest.fixture
async def cabinet() -> AsyncIterator[Cabinet]:
    async with Cabinet(SCENARIO, clock=FakeClock()) as cab:
        yield cab


@pytest.fixture
async def client(cabinet: Cabinet) -> AsyncIterator[AsyncModbusSerialClient]:
    client = AsyncModbusSerialClient(
        cabinet.agent_port,
        framer=FramerType.RTU,
        baudrate=cabinet.scenario.baudrate,
        timeout=CLIENT_TIMEOUT,
        retries=0,
    )
    assert await client.connect()
    yield client
    client.close()


async def read_contactor(client: AsyncModbusSerialClient, unit: int) -> dict[str, Any]:
    """Contactor manual: HR 0 command 0/1; IR 0 closed 0/1, IR 1 u16 operations."""
    holding = await client.read_holding_registers(0, count=1, device_id=unit)
    inputs = await client.read_input_registers(0, count=2, device_id=unit)
    assert not holding.isError(), holding
    assert not inputs.isError(), inputs
    return {
        "command": bool(holding.registers[0]),
        "closed": bool(inputs.registers[0]),
        "operations": inputs.registers[1],
    }


async def lamp_power_w(client: AsyncModbusSerialClient, unit: int) -> float:
    """Lamp controller manual: IR 1 is the power, raw = W × 10."""
    response = await client.read_input_registers(1, count=1, device_id=unit)
    assert not response.isError(), response
    return float(response.registers[0]) / 10


async def meter_power_w(client: AsyncModbusSerialClient, unit: int) -> int:
    """Meter manual: IR 12–13 is the total power, s32 ABCD."""
    response = await client.read_input_registers(12, count=2, device_id=unit)
    assert not response.isError(), response
    high, low = response.registers
    return int.from_bytes(((high << 16) | low).to_bytes(4, "big"), "big", signed=True)


def lamp_units(cabinet: Cabinet) -> list[int]:
    return [d.unit for d in cabinet.devices.values() if d.model == "lamp-ctl"]


async def test_contactor__starts_closed_and_matches_snapshot(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """At start the circuit is closed (street lit) and the registers decode to the snapshot."""
    unit = cabinet.scenario.contactor_unit
    assert unit == 40
    got = await read_contactor(client, unit)
    assert got == cabinet.snapshot()["contactor"]
    assert got["command"] is True
    assert got["closed"] is True


async def test_contactor__opening_darkens_every_lamp_and_closing_restores(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """Opening the circuit must cut every lamp and the meter's load; closing brings them back."""
    unit = cabinet.scenario.contactor_unit
    meter = cabinet.scenario.meter_unit
    lit_meter = await meter_power_w(client, meter)
    assert lit_meter > 100  # four lamps of 60..90 W
    start = (await read_contactor(client, unit))["operations"]

    response = await client.write_register(0, 0, device_id=unit)
    assert not response.isError(), response
    # The coil is released at once; the contacts follow on the next tick.
    assert await read_contactor(client, unit) == {
        "command": False,
        "closed": True,
        "operations": start,
    }
    cabinet.tick(1.0)
    assert await read_contactor(client, unit) == {
        "command": False,
        "closed": False,
        "operations": start + 1,
    }
    for lamp in lamp_units(cabinet):
        assert await lamp_power_w(client, lamp) == 0.0
    # Only the load besides the lamps is left on the meter.
    assert await meter_power_w(client, meter) == round(SCENARIO.other_load_w)
    # The lamps keep their settings: closing again must give the same light back.
    snap = cabinet.snapshot()
    assert all(snap[n]["level"] == 100 and snap[n]["on"] is True for n in snap if "lamp" in n)

    response = await client.write_register(0, 1, device_id=unit)
    assert not response.isError(), response
    cabinet.tick(1.0)
    assert await read_contactor(client, unit) == {
        "command": True,
        "closed": True,
        "operations": start + 2,
    }
    for lamp in lamp_units(cabinet):
        assert await lamp_power_w(client, lamp) > 50
    assert await meter_power_w(client, meter) == pytest.approx(lit_meter, rel=0.1)


async def test_contactor__bad_value_is_refused(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """A command other than 0/1 gets exception 3 and switches nothing, as the manual says."""
    unit = cabinet.scenario.contactor_unit
    before = await read_contactor(client, unit)
    response = await client.write_register(0, 2, device_id=unit)
    assert response.isError()
    assert response.exception_code == ILLEGAL_DATA_VALUE
    cabinet.tick(1.0)
    assert await read_contactor(client, unit) == before


async def test_contactor__same_command_counts_no_operation(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """Re-sending "closed" must not count an operation; else wear reports inflate."""
    unit = cabinet.scenario.contactor_unit
    before = await read_contactor(client, unit)
    response = await client.write_register(0, 1, device_id=unit)
    assert not response.isError(), response
    cabinet.tick(1.0)
    assert await read_contactor(client, unit) == before


def test_contactor__module_power_loss_opens_the_circuit() -> None:
    """A dead relay module drops the coil: the street goes dark, and relights with its supply."""
    cab = Cabinet(SCENARIO)
    cab.power_off("contactor")
    cab.tick(1.0)
    snap = cab.snapshot()
    assert snap["contactor"]["closed"] is False
    assert snap["contactor"]["command"] is True
    assert snap["meter"]["power"] == round(SCENARIO.other_load_w)
    cab.power_on("contactor")
    cab.tick(1.0)
    assert cab.snapshot()["contactor"]["closed"] is True
    assert cab.snapshot()["lamp-01"]["power"] > 50


def test_contactor__scenario_without_contactor_keeps_lamps_lit() -> None:
    """Without a contactor the lamps are wired to the supply; the device table omits it."""
    cab = Cabinet(Scenario(lamps=2, contactor=False))
    cab.tick(1.0)
    assert "contactor" not in cab.snapshot()
    assert all(row["model"] != "contactor" for row in cab.device_table())
    assert cab.snapshot()["lamp-01"]["power"] > 50
    with pytest.raises(ValueError, match="no contactor"):
        _ = cab.contactor


def test_contactor__profile_matches_the_manual() -> None:
    """The agent's profile reads the same registers the device serves; else commands miss."""
    profile = load_profile("contactor")
    assert {(p.name, p.table, p.address, p.type, p.access) for p in profile.points} == {
        ("command", "holding", 0, "bool", "rw"),
        ("closed", "input", 0, "bool", "r"),
        ("operations", "input", 1, "u16", "r"),
    }
    assert profile.point("command").default is True
    assert set(Cabinet(SCENARIO).snapshot()["contactor"]) == {p.name for p in profile.points}

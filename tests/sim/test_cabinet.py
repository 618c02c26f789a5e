"""The virtual cabinet, checked with pymodbus's own RTU client (independent of our codec).

Registers are decoded here with :mod:`struct` straight from the device manuals
in ``sim/devices/*.py``, so a map that drifts from its manual fails here.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer.rtu import FramerRTU

from agent.clock import FakeClock
from sim.cabinet import Cabinet, Scenario

# Client timeout: long enough for any real answer at 19200 baud on a loaded CI
# machine, short enough that each deliberate "no answer" costs little.
CLIENT_TIMEOUT = 0.5

COLD_EXPORT = Scenario(lamps=4, ambient_c=-20.0, other_load_w=-2000.0, seed=3)
"""Winter with a solar panel: negative temperatures (s16) and export (negative s32)."""


def _u32(high: int, low: int) -> int:
    return int(struct.unpack(">I", struct.pack(">HH", high, low))[0])


def _s32(high: int, low: int) -> int:
    return int(struct.unpack(">i", struct.pack(">HH", high, low))[0])


def _f32(high: int, low: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", high, low))[0])


def _s16(raw: int) -> int:
    return int(struct.unpack(">h", struct.pack(">H", raw))[0])


def decode_lamp(holding: list[int], inputs: list[int]) -> dict[str, Any]:
    """Lamp controller manual: HR 0 level, HR 1 on; IR 0..6 as in sim/devices/lamp.py."""
    return {
        "level": holding[0],
        "on": bool(holding[1]),
        "failure": bool(inputs[0]),
        "power": inputs[1] / 10,
        "energy": _u32(inputs[2], inputs[3]),  # ABCD: high word first
        "hours": _u32(inputs[5], inputs[4]),  # CDAB: low word first
        "driver_temp": _s16(inputs[6]) / 10,
    }


def decode_meter(inputs: list[int]) -> dict[str, Any]:
    """Meter manual: f32 ABCD voltages at 0/2/4, currents at 6/8/10, s32 power, u32 energy."""
    values: dict[str, Any] = {}
    for phase in range(3):
        values[f"voltage_l{phase + 1}"] = _f32(inputs[2 * phase], inputs[2 * phase + 1])
    for phase in range(3):
        values[f"current_l{phase + 1}"] = _f32(inputs[6 + 2 * phase], inputs[7 + 2 * phase])
    values["power"] = _s32(inputs[12], inputs[13])
    values["energy"] = _u32(inputs[14], inputs[15])
    return values


def decode_env(inputs: list[int]) -> dict[str, Any]:
    """Environment sensor manual: IR 0 s16 °C × 10, IR 1 u16 %RH × 10."""
    return {"temperature": _s16(inputs[0]) / 10, "humidity": inputs[1] / 10}


def decode_contactor(holding: list[int], inputs: list[int]) -> dict[str, Any]:
    """Contactor manual: HR 0 command 0/1; IR 0 closed 0/1, IR 1 u16 operations."""
    return {"command": bool(holding[0]), "closed": bool(inputs[0]), "operations": inputs[1]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def scenario() -> Scenario:
    return Scenario()


@pytest.fixture
async def cabinet(scenario: Scenario, clock: FakeClock) -> AsyncIterator[Cabinet]:
    async with Cabinet(scenario, clock=clock) as cab:
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


async def read_inputs(client: AsyncModbusSerialClient, unit: int, count: int) -> list[int]:
    response = await client.read_input_registers(0, count=count, device_id=unit)
    assert not response.isError(), response
    return list(response.registers)


async def read_holding(client: AsyncModbusSerialClient, unit: int, count: int) -> list[int]:
    response = await client.read_holding_registers(0, count=count, device_id=unit)
    assert not response.isError(), response
    return list(response.registers)


async def read_lamp(client: AsyncModbusSerialClient, cab: Cabinet, name: str) -> dict[str, Any]:
    unit = cab.devices[name].unit
    return decode_lamp(await read_holding(client, unit, 2), await read_inputs(client, unit, 7))


@pytest.mark.parametrize("scenario", [Scenario(), COLD_EXPORT], ids=["default", "cold_export"])
async def test_registers__every_point_decodes_to_snapshot(
    cabinet: Cabinet, client: AsyncModbusSerialClient, scenario: Scenario
) -> None:
    """Every register decodes, per its manual, to the true value; else profiles go unchecked."""
    if scenario is COLD_EXPORT:
        cabinet.set_level("lamp-02", 0)  # a dark lamp's driver sits at (sub-zero) ambient
    cabinet.tick(1.0)
    for name, device in cabinet.devices.items():
        match device.model:
            case "lamp-ctl":
                got = await read_lamp(client, cabinet, name)
            case "meter-3ph":
                got = decode_meter(await read_inputs(client, device.unit, 16))
            case "env-sensor":
                got = decode_env(await read_inputs(client, device.unit, 2))
            case "contactor":
                got = decode_contactor(
                    await read_holding(client, device.unit, 1),
                    await read_inputs(client, device.unit, 2),
                )
            case other:
                raise AssertionError(f"unexpected model {other}")
        assert got == device.snapshot(), name
    snap = cabinet.snapshot()
    # Values that make word order and sign visible really occur.
    assert snap["lamp-01"]["hours"] > 0xFFFF
    assert snap["lamp-01"]["energy"] > 0xFFFF
    if scenario is COLD_EXPORT:
        assert snap["lamp-02"]["driver_temp"] < 0
        assert snap["env"]["temperature"] < 0
        assert snap["meter"]["power"] < 0


async def test_lamp__level_write_scales_power(
    cabinet: Cabinet, client: AsyncModbusSerialClient, clock: FakeClock
) -> None:
    """Writing level 40 makes the lamp draw 40 % of its power by the next tick; dimming saves."""
    lamp = cabinet.lamp("lamp-03")
    full = (await read_lamp(client, cabinet, "lamp-03"))["power"]
    assert full == pytest.approx(lamp.rated_w, rel=0.03)

    response = await client.write_register(0, 40, device_id=lamp.unit)
    assert not response.isError(), response
    assert lamp.level == 40

    async with asyncio.TaskGroup() as tg:
        model = tg.create_task(cabinet.run(), name="sim.cabinet")
        await clock.advance(cabinet.scenario.tick)
        model.cancel()
    dimmed = await read_lamp(client, cabinet, "lamp-03")
    assert dimmed["level"] == 40
    assert dimmed["power"] == pytest.approx(0.4 * full, rel=0.05)


async def test_lamp__write_above_100_is_refused(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """A level above 100 % gets exception 3 and changes nothing, as the manual says."""
    response = await client.write_register(0, 101, device_id=1)
    assert response.isError()
    assert response.exception_code == 3
    on_response = await client.write_register(1, 2, device_id=1)
    assert on_response.exception_code == 3
    # A multi-register write with one bad value is refused whole.
    both = await client.write_registers(0, [50, 7], device_id=1)
    assert both.exception_code == 3
    assert (await read_holding(client, 1, 2)) == [100, 1]


async def test_lamp__failed_lamp_reports_failure_and_no_power(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """A failed lamp shows failure=1 and ~0 W and the meter sees the drop; else failures hide."""
    before = cabinet.snapshot()
    cabinet.fail_lamp("lamp-04")
    cabinet.tick(1.0)
    got = await read_lamp(client, cabinet, "lamp-04")
    assert got["failure"] is True
    assert got["power"] == pytest.approx(0.0, abs=0.5)
    meter = decode_meter(await read_inputs(client, cabinet.devices["meter"].unit, 16))
    drop = before["meter"]["power"] - meter["power"]
    assert drop == pytest.approx(before["lamp-04"]["power"], abs=10)

    cabinet.repair_lamp("lamp-04")
    cabinet.tick(1.0)
    got = await read_lamp(client, cabinet, "lamp-04")
    assert got["failure"] is False
    assert got["power"] > 50


async def test_power_off__device_is_silent_while_others_answer(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """A powered-off device sends nothing, not even an exception; else comm_fail is untestable."""
    cabinet.power_off("lamp-05")
    sent_before = cabinet.line.statistics().device_to_agent_bytes
    with pytest.raises(ModbusIOException):
        await client.read_input_registers(0, count=2, device_id=5)
    assert cabinet.line.statistics().device_to_agent_bytes == sent_before
    assert len(await read_inputs(client, 4, 7)) == 7
    assert len(await read_inputs(client, cabinet.devices["meter"].unit, 16)) == 16

    cabinet.power_on("lamp-05")
    assert len(await read_inputs(client, 5, 7)) == 7


async def test_unknown_unit__gets_no_answer(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """A unit not on the line stays silent, as on a real bus (bare pymodbus would answer)."""
    sent_before = cabinet.line.statistics().device_to_agent_bytes
    with pytest.raises(ModbusIOException):
        await client.read_input_registers(0, count=1, device_id=99)
    assert cabinet.line.statistics().device_to_agent_bytes == sent_before


async def test_line__corrupt_next_makes_client_see_bad_crc(cabinet: Cabinet) -> None:
    """A corrupted reply reaches the client with a failing CRC; CRC handling is tested on it."""
    received: list[bytes] = []

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending:
            received.append(data)
        return data

    client = AsyncModbusSerialClient(
        cabinet.agent_port, timeout=CLIENT_TIMEOUT, retries=0, trace_packet=trace
    )
    assert await client.connect()
    try:
        cabinet.line.corrupt_next(1)
        with pytest.raises(ModbusIOException):
            await client.read_input_registers(0, count=7, device_id=1)
        frame = received[-1]  # the client's whole receive buffer when it gave up on the frame
        assert len(frame) == 5 + 2 * 7  # address, function, count, 14 data bytes, CRC
        assert not FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))
        assert cabinet.line.statistics().corrupted_replies == 1
        assert len(await read_inputs(client, 1, 7)) == 7
    finally:
        client.close()


async def test_line__silence_gives_timeouts(
    cabinet: Cabinet, client: AsyncModbusSerialClient
) -> None:
    """A silenced line times every request out, and the bus recovers when it ends."""
    cabinet.line.silence(True)
    with pytest.raises(ModbusIOException):
        await client.read_input_registers(0, count=1, device_id=1)
    assert cabinet.line.statistics().dropped_bytes > 0
    cabinet.line.silence(False)
    assert len(await read_inputs(client, 1, 1)) == 1


async def test_model__an_hour_integrates_energy_and_hours() -> None:
    """An hour at full power adds ~rated Wh and one burning hour; energy reports rely on it."""
    clock = FakeClock()
    cab = Cabinet(Scenario(lamps=3, tick=60.0, other_load_w=0.0), clock=clock)
    start = cab.snapshot()
    async with asyncio.TaskGroup() as tg:
        model = tg.create_task(cab.run(), name="sim.cabinet")
        await clock.advance(3600.0)
        model.cancel()
    end = cab.snapshot()
    lamp = cab.lamp("lamp-01")
    assert end["lamp-01"]["energy"] - start["lamp-01"]["energy"] == pytest.approx(
        lamp.rated_w, abs=2
    )
    assert end["lamp-01"]["hours"] - start["lamp-01"]["hours"] == 1
    total_rated = sum(cab.lamp(f"lamp-0{i}").rated_w for i in (1, 2, 3))
    assert end["meter"]["energy"] - start["meter"]["energy"] == pytest.approx(total_rated, abs=3)


def test_scenario__same_seed_same_run() -> None:
    """Two cabinets from one scenario evolve identically; a failing scenario must be replayable."""
    a, b = Cabinet(Scenario(seed=5)), Cabinet(Scenario(seed=5))
    c = Cabinet(Scenario(seed=6))
    for cab in (a, b, c):
        for _ in range(10):
            cab.tick(0.5)
    assert a.snapshot() == b.snapshot()
    assert a.snapshot() != c.snapshot()


def test_scenario__rejects_shared_unit() -> None:
    """Two devices on one unit id are refused when the scenario is built, not found on the wire."""
    with pytest.raises(ValueError, match="share a unit"):
        Scenario(lamps=25, env_unit=20)


def test_cabinet__device_table_lists_every_device() -> None:
    """The device table gives each device's name, model and unit, for the agent's config."""
    table = Cabinet(Scenario(lamps=2)).device_table()
    line = "rs485_lamps"
    assert table == [
        {"name": "lamp-01", "model": "lamp-ctl", "unit": 1, "line": line},
        {"name": "lamp-02", "model": "lamp-ctl", "unit": 2, "line": line},
        {"name": "meter", "model": "meter-3ph", "unit": 20, "line": line},
        {"name": "env", "model": "env-sensor", "unit": 30, "line": line},
        {"name": "contactor", "model": "contactor", "unit": 40, "line": line},
    ]


@given(lines=st.integers(1, 4), data=st.data())
def test_scenario__any_lamp_count_a_line_can_carry_gets_unit_ids(
    lines: int, data: st.DataObject
) -> None:
    """`armoire sim --lamps 20` died with "two devices share a unit id": the meter, sensor
    and contactor sat on units 20, 30 and 40."""
    limit = Scenario(lines=lines, lamps=lines).max_lamps()
    assert limit == 247 * lines - 3
    lamps = data.draw(st.integers(lines if lines > 1 else 0, limit))
    scenario = Scenario(lamps=lamps, lines=lines)
    units, line_of = scenario.units(), scenario.line_of()
    assert sum(name.startswith("lamp-") for name in units) == lamps
    assert all(1 <= unit <= 247 for unit in units.values())
    assert len({(line_of[n], u) for n, u in units.items()}) == len(units)
    # Even shares, unless the first line (which also carries 3 devices) is full.
    shares = [scenario.lamp_lines().count(i) for i in range(lines)]
    assert max(shares) - min(shares) <= 1 or (shares[0] == 244 and min(shares[1:]) >= 244)


@pytest.mark.parametrize(
    ("lamps", "lines", "match"),
    [
        (245, 1, r"lamps must be 0\.\.244 on 1 line\(s\)"),
        (492, 2, r"lamps must be 0\.\.491 on 2 line\(s\)"),
        (2, 3, "3 lines need at least as many lamps"),
        (8, 0, "lines must be 1"),
    ],
)
def test_scenario__more_lamps_than_the_lines_carry_is_a_clear_error(
    lamps: int, lines: int, match: str
) -> None:
    """Past what the lines can address, the simulator must say so, not crash later."""
    with pytest.raises(ValueError, match=match):
        Scenario(lamps=lamps, lines=lines)


async def test_cabinet__devices_answer_on_their_own_line(clock: FakeClock) -> None:
    """With --lines 2, a lamp would answer on the wrong line, or the second line not at all."""
    async with Cabinet(Scenario(lamps=4, lines=2), clock=clock) as cab:
        table = {row["name"]: row for row in cab.device_table()}
        assert table["lamp-03"]["line"] == "rs485_lamps-2"
        for index, line in enumerate(cab.lines):
            client = AsyncModbusSerialClient(
                line.agent_port,
                framer=FramerType.RTU,
                baudrate=cab.scenario.baudrate,
                timeout=CLIENT_TIMEOUT,
                retries=0,
            )
            assert await client.connect()
            try:
                here = [n for n, row in table.items() if row["line"] == cab.line_names[index]]
                for name in here:
                    unit = int(table[name]["unit"])
                    assert len(await read_inputs(client, unit, 1)) == 1
                if index == 1:
                    # lamp-03 is unit 1 on line 2; unit 20 (the meter) is not on this line.
                    assert table["lamp-03"]["unit"] == 1
                    with pytest.raises(ModbusIOException):
                        await client.read_input_registers(0, count=1, device_id=20)
            finally:
                client.close()


def test_env__load_warms_the_cabinet_and_dries_the_air() -> None:
    """Full load warms the cabinet and dries its air versus dark lamps, so alarms can fire."""
    lit, dark = Cabinet(Scenario(seed=9)), Cabinet(Scenario(seed=9))
    for name in dark.devices:
        if name.startswith("lamp-"):
            dark.set_level(name, 0)
    for cab in (lit, dark):
        for _ in range(5):
            cab.tick(1.0)
    assert lit.snapshot()["env"]["temperature"] > dark.snapshot()["env"]["temperature"]
    assert lit.snapshot()["env"]["humidity"] < dark.snapshot()["env"]["humidity"]

"""Sixteen devices on one RS-485 line, one dead and one answering garbage: the healthy
ones must not pay for them more than one response timeout per polling cycle, and bus
health must say which device costs what."""

from __future__ import annotations

import asyncio

from agent.clock import SystemClock
from agent.config import DeviceConfig, PollingConfig
from agent.points import Points
from agent.polling import DevicePoller, LinkState
from drivers.modbus.device import ModbusDevice
from drivers.modbus.transport import RtuTransport
from drivers.profile import load_profile, plan_reads
from sim.cabinet import Cabinet, Scenario

DEVICES = 16
DEAD, BABBLER = "lamp-05", "lamp-09"
CYCLES = 5
TIMEOUT = 0.1
POLLING = PollingConfig(
    response_timeout=TIMEOUT, miss_limit=3, backoff_max=60.0, health_interval=60
)
# What a device with a broken firmware might send: no valid frame, no end.
GARBAGE = bytes(range(0x55, 0x55 + 40))


async def test_line__dead_and_babbling_devices_cost_at_most_one_timeout_per_cycle() -> None:
    """A junction of lamps must keep being polled at its pace while one controller is dead
    and another spews garbage."""
    scenario = Scenario(lamps=DEVICES, meter=False, env=False, contactor=False)
    async with Cabinet(scenario, clock=SystemClock()) as cabinet:
        cabinet.power_off(DEAD)
        cabinet.power_off(BABBLER)  # the relay answers for it, with garbage
        cabinet.line.babble(cabinet.lamp(BABBLER).unit, GARBAGE)
        transport = RtuTransport(
            cabinet.agent_port,
            baudrate=scenario.baudrate,
            parity="N",
            stopbits=2,
            response_timeout=TIMEOUT,
        )
        profile = load_profile("lamp-ctl")
        points = Points()
        pollers = {}
        for row in cabinet.device_table():
            name, unit = str(row["name"]), int(row["unit"])
            config = DeviceConfig(
                name=name, driver="modbus-rtu", profile=profile, poll=1.0, settings=None
            )
            pollers[name] = DevicePoller(
                device=config,
                driver=ModbusDevice(name, profile, unit, transport),
                points=points,
                clock=SystemClock(),
                polling=POLLING,
            )
        assert len(pollers) == DEVICES
        await transport.open()
        try:
            timeouts = []
            for _ in range(CYCLES):
                before = transport.statistics()["timeouts"]
                # One cycle: every device polled once, the line serving them in turn.
                answered = await asyncio.gather(*(p.poll_once() for p in pollers.values()))
                timeouts.append(transport.statistics()["timeouts"] - before)
                assert sum(answered) == DEVICES - 2
        finally:
            await transport.close()

    assert timeouts == [1] * CYCLES  # the dead device's, and nothing more
    for name, poller in pollers.items():
        window = poller.driver.health.window()  # type: ignore[attr-defined]
        if name == DEAD:
            # One request per cycle: a poll gives up at the first silent block.
            assert (window.requests, window.timeouts) == (CYCLES, CYCLES)
            assert poller.state is LinkState.COMM_FAIL
        elif name == BABBLER:
            # Refused for what it is (not a timeout), as soon as it is recognised.
            assert window.requests == CYCLES
            assert window.timeouts == 0
            assert window.framing_errors + window.other_errors == CYCLES
            assert poller.state is LinkState.COMM_FAIL
        else:
            # Every request of every poll answered (a poll reads each register block).
            requests = CYCLES * len(plan_reads(profile.points))
            assert (window.requests, window.timeouts, window.framing_errors) == (requests, 0, 0)
            assert window.latency_p99 is not None
            assert poller.state is LinkState.ONLINE
            assert poller.failures == 0

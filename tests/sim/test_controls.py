"""The simulator's single-key controls act on the simulated world."""

from __future__ import annotations

import asyncio

import pytest

from agent.clock import FakeClock
from sim.broker import Mosquitto
from sim.cabinet import Cabinet, Scenario
from sim.controls import Controls
from sim.proxy import LinkProxy, LinkState

pytestmark = pytest.mark.integration


async def test_controls__keys_cut_restore_and_switch_devices(broker: Mosquitto) -> None:
    """A demo user pressing a key would see nothing happen in the simulated cabinet."""
    quit_requested = asyncio.Event()
    async with (
        Cabinet(Scenario(lamps=3), clock=FakeClock()) as cabinet,
        LinkProxy("127.0.0.1", broker.port) as link,
    ):
        controls = Controls(cabinet=cabinet, link=link, broker=broker, quit=quit_requested.set)
        controls.handle("2")
        assert not cabinet.devices["lamp-02"].powered
        assert controls.last == "lamp-02 switched off"
        controls.handle("2")
        assert cabinet.devices["lamp-02"].powered
        controls.handle("f")
        assert cabinet.lamp("lamp-01").failed
        controls.handle("c")
        async with asyncio.timeout(5):
            while controls.last != "uplink cut":  # noqa: ASYNC110 - the action is a task
                await asyncio.sleep(0.01)
        assert link.state is LinkState.CUT
        controls.handle("r")
        async with asyncio.timeout(5):
            while link.state is not LinkState.UP:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        controls.handle("x")  # unbound keys do nothing
        controls.handle("q")
        assert quit_requested.is_set()

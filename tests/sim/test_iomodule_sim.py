"""The simulated cabinet's I/O module: real firmware, and lamps on its lighting relay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.clock import FakeClock
from drivers.device import DriverError
from drivers.iomodule.device import IoModule
from sim.cabinet import Cabinet, Scenario
from sim.iomodule import firmware_lib_ready, micropython_binary

pytestmark = pytest.mark.skipif(
    micropython_binary() is None or not firmware_lib_ready(),
    reason="micropython or board/iomodule/lib missing: run `make iomodule-lib`",
)


async def test_cabinet__without_contactor_the_lighting_relay_feeds_the_lamps(
    tmp_path: Path,
) -> None:
    """A cabinet with no Modbus contactor: opening the module's lighting relay darkens the
    street, closing it lights it again."""
    async with Cabinet(
        Scenario(lamps=2, contactor=False), clock=FakeClock(), link_dir=tmp_path
    ) as cabinet:
        assert cabinet.iomodule_line is not None
        device = IoModule("cabinet", port=Path(cabinet.iomodule_line.agent_port))
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    await device.write("relay_lighting", False)
                    break
                except DriverError:  # the firmware is still booting
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            cabinet.tick(0.0)
            assert not cabinet.lamp("lamp-01").lit
            await device.write("relay_lighting", True)
            cabinet.tick(0.0)
            assert cabinet.lamp("lamp-01").lit
        finally:
            await device.close()

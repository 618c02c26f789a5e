"""The simulator's single-key controls act on the simulated world."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

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
        Cabinet(Scenario(lamps=3, signal=False), clock=FakeClock()) as cabinet,
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
        controls.handle("x")  # no signal controller in this cabinet: nothing
        controls.handle("z")  # unbound keys do nothing
        controls.handle("q")
        assert quit_requested.is_set()


async def test_controls__cabinet_keys_drive_the_io_module(tmp_path: Path) -> None:
    """d, m, u and p open the door, cut the mains, put the UPS on battery and trip the
    surge arrester at the I/O module's inputs; pressed again, they undo it."""
    async with Cabinet(Scenario(lamps=1), clock=FakeClock(), link_dir=tmp_path) as cabinet:
        module = cabinet.iomodule
        assert module is not None
        controls = Controls(cabinet=cabinet, link=None, broker=None, quit=lambda: None)  # type: ignore[arg-type]
        inputs = tmp_path / "iomodule-hw" / "inputs.json"
        for key, contact, words in (
            ("d", "door", "cabinet door opened"),
            ("m", "mains", "mains cut"),
            ("u", "ups", "UPS on battery"),
            ("p", "spd", "surge arrester tripped"),
        ):
            before = json.loads(inputs.read_text())[contact]
            controls.handle(key)
            assert controls.last == words
            assert json.loads(inputs.read_text())[contact] == 1 - before  # the pin's level
        controls.handle("d")
        assert controls.last == "cabinet door shut"
        assert module.contacts["door"] is False


async def test_controls__cabinet_keys_drive_the_simulated_gpio(tmp_path: Path) -> None:
    """With an agent using the gpio driver, the same keys reach its simulated HAL's socket."""
    async with Cabinet(
        Scenario(lamps=1, iomodule=False), clock=FakeClock(), link_dir=tmp_path
    ) as cabinet:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as hal:
            hal.bind(str(tmp_path / "gpio.sock"))
            hal.settimeout(5)
            controls = Controls(cabinet=cabinet, link=None, broker=None, quit=lambda: None)  # type: ignore[arg-type]
            controls.handle("d")
            controls.handle("m")
            controls.handle("p")
            received = [hal.recv(64) for _ in range(3)]
    assert received == [b"door_contact 1", b"mains_sense 0", b"spd_fault 1"]


async def test_controls__signal_keys_inject_faults_the_driver_reads(broker: Mosquitto) -> None:
    """x, g and n put the junction in fault flash, MMU fault and scheduled flash, as its SNMP
    agent then answers; pressed again, they clear it. Switching it off silences it."""
    async with (
        Cabinet(Scenario(lamps=1), clock=FakeClock()) as cabinet,
        LinkProxy("127.0.0.1", broker.port) as link,
    ):
        controls = Controls(cabinet=cabinet, link=link, broker=broker, quit=lambda: None)
        signal = cabinet.traffic_signal()
        controls.handle("x")
        assert controls.last == "signal-01 fault flash on"
        assert signal.junction.flash_status() == 5
        controls.handle("g")
        assert signal.junction.flash_status() == 6
        controls.handle("x")
        controls.handle("g")
        controls.handle("n")
        assert controls.last == "signal-01 scheduled flash on"
        assert signal.junction.flash_status() == 3
        controls.handle("n")
        assert signal.junction.flash_status() == 2
        assert cabinet.snapshot()["signal-01"]["answering"] is True
        cabinet.power_off("signal-01")
        assert cabinet.snapshot()["signal-01"]["answering"] is False
        cabinet.power_on("signal-01")
        assert signal.running

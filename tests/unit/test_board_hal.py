"""The board HAL: debouncing, the Linux HAL's line plan, the simulated GPIO as a device.

The kernel of the development machine has no ``gpio-sim`` module (no loadable modules,
no configfs), so the Linux HAL's requests are not run against a chip here; what it asks
the kernel for (chips, offsets, direction, active_low, edges, debounce) is checked.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import pytest
from gpiod.line import Direction, Edge, Value

from agent.board import GpioLine, load_board
from agent.clock import FakeClock
from board.gpio_linux import chip_path, plan_requests
from board.gpio_sim import SimGpio
from board.hal import Debouncer, GpioError
from drivers.device import DriverError, Reading
from drivers.gpio.device import GpioDevice


def test_debouncer__bounces_make_one_change_after_the_quiet_time() -> None:
    """A bouncing door switch is one 'door open', 50 ms after its last bounce."""
    d = Debouncer(False, 0.05)
    assert d.edge(True, 10.000) == pytest.approx(10.05)
    d.edge(False, 10.003)
    d.edge(True, 10.007)
    assert d.settle(10.05) is None  # only 43 ms since the last bounce
    assert d.settle(10.057) is True
    assert d.settle(10.2) is None  # once


def test_debouncer__a_glitch_that_returns_is_no_change() -> None:
    d = Debouncer(False, 0.05)
    d.edge(True, 1.0)
    d.edge(False, 1.01)
    assert d.settle(2.0) is None
    assert d.state is False


def test_linux_plan__lines_grouped_by_chip_with_polarity_and_edges() -> None:
    """The reference board's lines: inputs active-low with both edges, relays active-high."""
    board = load_board("armoire-gw1")
    plans = {plan.path: plan for plan in plan_requests(board.gpio, debounce=0.02)}
    assert set(plans) == {Path("/dev/gpiochip0"), Path("/dev/gpiochip3")}
    inputs, relays = plans[Path("/dev/gpiochip0")], plans[Path("/dev/gpiochip3")]
    assert dict(inputs.roles) == {5: "door_contact", 6: "mains_sense", 7: "spd_fault"}
    assert dict(relays.roles) == {20: "relay_lighting", 21: "relay_aux"}
    door = inputs.settings[5]
    assert door.direction is Direction.INPUT
    assert door.active_low is True
    assert door.edge_detection is Edge.BOTH
    assert door.debounce_period == timedelta(milliseconds=20)
    relay = relays.settings[20]
    assert relay.direction is Direction.OUTPUT
    assert relay.active_low is False
    assert relay.output_value is Value.INACTIVE  # starting the agent switches nothing on


def test_chip_path__name_or_path() -> None:
    assert chip_path("gpiochip2") == Path("/dev/gpiochip2")
    assert chip_path("/dev/gpiochip9") == Path("/dev/gpiochip9")


# ------------------------------------------------------------------ simulated GPIO


def sim_lines() -> Mapping[str, GpioLine]:
    return load_board("sim").gpio


async def test_gpio_device__door_opening_is_reported_once_after_debounce() -> None:
    """Opening the cabinet door (with bounces) reaches the agent as one cabinet/door = true."""
    clock = FakeClock()
    gpio = SimGpio(sim_lines(), clock=clock)
    device = GpioDevice(
        "cabinet", open_gpio=lambda: gpio, lines=sim_lines(), clock=clock, debounce=0.05
    )
    reports: list[Mapping[str, Reading]] = []
    task = asyncio.create_task(device.watch(reports.append))
    await clock.advance(0)
    gpio.drive("door_contact", True)
    await clock.advance(0.003)
    gpio.drive("door_contact", False)
    await clock.advance(0.003)
    gpio.drive("door_contact", True)
    await clock.advance(0.049)
    assert reports == []
    await clock.advance(0.002)
    assert reports == [{"door": True}]
    assert (await device.read())["door"] is True
    await clock.advance(1.0)
    assert reports == [{"door": True}]
    task.cancel()


async def test_gpio_device__points_and_relay_writes() -> None:
    """Every role is a point; a relay write drives the line; inputs refuse writes."""
    clock = FakeClock()
    gpio = SimGpio(sim_lines(), clock=clock)
    device = GpioDevice("cabinet", open_gpio=lambda: gpio, lines=sim_lines(), clock=clock)
    assert set(await device.read()) == {"door", "mains", "spd", "relay_lighting", "relay_aux"}
    assert await device.write("relay_lighting", True) is True
    assert gpio.get("relay_lighting") is True
    with pytest.raises(DriverError, match="not a GPIO output"):
        await device.write("door", True)
    with pytest.raises(DriverError, match="expected true or false"):
        await device.write("relay_aux", 7)


async def test_sim_gpio__another_process_drives_inputs_over_its_socket(tmp_path: Path) -> None:
    """The simulator's live view opens the door through the socket; junk is refused, counted."""
    clock = FakeClock()
    sock_path = tmp_path / "gpio.sock"
    gpio = SimGpio(sim_lines(), clock=clock, socket_path=sock_path, state_file=tmp_path / "o.json")
    edges = gpio.edges()
    first = asyncio.ensure_future(edges.__anext__())
    for _ in range(100):
        if sock_path.exists():
            break
        await asyncio.sleep(0.01)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"\xff garbage", str(sock_path))
        s.sendto(b"relay_aux 1", str(sock_path))  # an output: not the view's to drive
        s.sendto(b"door_contact 1", str(sock_path))
    edge = await asyncio.wait_for(first, 5)
    assert (edge.role, edge.active) == ("door_contact", True)
    assert gpio.refused == 2
    await edges.aclose()
    assert not sock_path.exists()


def test_sim_gpio__outputs_published_for_the_simulator(tmp_path: Path) -> None:
    state = tmp_path / "gpio.json"
    gpio = SimGpio(sim_lines(), clock=FakeClock(), state_file=state)
    gpio.set("relay_lighting", True)
    assert state.read_text() == '{"relay_lighting": true, "relay_aux": false}'
    with pytest.raises(GpioError, match="is an input"):
        gpio.set("door_contact", True)


async def test_gpio_device__absent_chip_is_a_driver_error_not_a_crash() -> None:
    """A gateway whose GPIO chip is missing runs on: the device misses its polls."""
    lines = load_board("armoire-gw1").gpio

    def absent() -> SimGpio:
        raise GpioError("GPIO lines door_contact: [Errno 2] No such file: /dev/gpiochip0")

    device = GpioDevice("cabinet", open_gpio=absent, lines=lines, clock=FakeClock())
    with pytest.raises(DriverError, match="gpiochip0"):
        await device.read()
    with pytest.raises(DriverError, match="gpiochip0"):
        await device.watch(lambda r: None)

"""The cabinet's own hazards end to end: I/O module firmware (or the gateway's GPIO) →
agent (Points, rules, Arbiter) → outbox → broker → central post, and relays back.

The simulated cabinet runs the I/O module's real firmware in the MicroPython Unix port as
the device ``cabinet``; this module also configures the simulated board's GPIO lines as
a device ``gateway-io`` (driver ``gpio``), driven through the simulated HAL's socket as the
simulator's live view does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from typing import Any

import pytest

from sim.iomodule import firmware_lib_ready, micropython_binary
from tests.integration.conftest import Site

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        micropython_binary() is None or not firmware_lib_ready(),
        reason="micropython or board/iomodule/lib missing: run `make iomodule-lib`",
    ),
]

WAIT_S = 30.0


@pytest.fixture
def whole_cabinet() -> bool:
    """The site has the signal controller and the I/O module (conftest.py)."""
    return True


@pytest.fixture
def agent_extra_config() -> str:
    return '\n[[devices]]\nname = "gateway-io"\ndriver = "gpio"\nprofile = "gpio"\n'


def _latest(site: Site, point: str) -> Any:
    reading = site.central.latest.get(f"{site.gw}:{point}")
    return None if reading is None else reading.value


def _alarms(site: Site, code: str) -> list[dict[str, Any]]:
    return [e for e in site.central.events if e["kind"] == "alarm" and e["code"] == code]


async def _cli(site: Site, *args: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "central", "send", "--data", str(site.central_dir),
        "--gw", site.gw, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert out, err.decode()[-2000:]
    assert proc.returncode is not None
    return proc.returncode, json.loads(out.decode().strip().splitlines()[-1])


async def _until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_cabinet__door_forced_and_mains_lost_reach_the_control_room(site: Site) -> None:
    """A door opened without a maintenance session, a lost mains supply, the UPS on its
    battery and a tripped surge arrester each become the point and the alarm upstream."""
    module = site.cabinet.iomodule
    assert module is not None
    await site.central.wait_for(lambda c: _latest(site, "cabinet/door") is False, WAIT_S)
    opened = time.monotonic()
    module.set_contact("door", True)
    await site.central.wait_for(lambda c: bool(_alarms(site, "door.intrusion")), WAIT_S)
    print(f"door opened -> door.intrusion at the central post: {time.monotonic() - opened:.2f} s")
    await site.central.wait_for(lambda c: _latest(site, "cabinet/door") is True, WAIT_S)
    for contact, active, code in (
        ("mains", False, "mains.lost"),
        ("ups", True, "ups.battery"),
        ("spd", True, "spd.tripped"),
    ):
        module.set_contact(contact, active)
        await site.central.wait_for(lambda c, code=code: bool(_alarms(site, code)), WAIT_S)
    (alarm,) = _alarms(site, "door.intrusion")
    assert alarm["src"] == "cabinet"


async def test_cabinet__relay_command_reaches_the_module(site: Site) -> None:
    """The control room switches the spare relay: the module's output follows."""
    module = site.cabinet.iomodule
    assert module is not None
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    status, ack = await _cli(site, "write", "cabinet/relay_aux", "true", "--hold", "60")
    assert (status, ack["value"]) == (0, True)
    await _until(lambda: module.relay("relay_aux") is True, "the module's aux relay on")
    await site.central.wait_for(lambda c: _latest(site, "cabinet/relay_aux") is True, WAIT_S)

    def link() -> dict[str, Any]:
        try:
            status = json.loads((site.data / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return dict(status["devices"]["cabinet"].get("link", {}))

    # The technician sees the module's link counters in `armoire status --json`.
    await _until(lambda: link().get("frames", 0) > 0, "the I/O link's counters in status.json")
    assert set(link()) == {
        "frames",
        "discarded_bytes",
        "lost",
        "naks",
        "retries",
        "safe_state_seen",
    }


async def test_cabinet__module_feeds_the_lamps_when_the_agent_is_killed(site: Site) -> None:
    """The agent dies while the lamps are switched off: the module feeds them on its own."""
    module = site.cabinet.iomodule
    assert module is not None
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    status, ack = await _cli(site, "write", "cabinet/relay_lighting", "false", "--hold", "600")
    assert (status, ack["value"]) == (0, False)
    await _until(lambda: module.relay("relay_lighting") is False, "lamps switched off")
    assert site.agent.proc is not None
    os.killpg(site.agent.proc.pid, signal.SIGKILL)
    await site.agent.proc.wait()
    await _until(lambda: module.relay("relay_lighting") is True, "safe state: lamps fed")
    assert module.relay("relay_aux") is False


async def test_gpio__contacts_and_relays_through_the_simulated_hal(site: Site) -> None:
    """The gateway's own GPIO lines are a device of the running agent: a contact driven on
    the simulated board reaches the central post, and a relay write drives the line."""
    await site.central.wait_for(lambda c: _latest(site, "gateway-io/door") is False, WAIT_S)
    sock = site.data / "dev" / "gpio.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"door_contact 1", str(sock))
        s.sendto(b"spd_fault 1", str(sock))
    await site.central.wait_for(lambda c: _latest(site, "gateway-io/door") is True, WAIT_S)
    await site.central.wait_for(lambda c: _latest(site, "gateway-io/spd") is True, WAIT_S)
    status, ack = await _cli(site, "write", "gateway-io/relay_aux", "true", "--hold", "60")
    assert (status, ack["value"]) == (0, True)
    state = site.data / "dev" / "gpio.json"
    await _until(
        lambda: state.exists() and json.loads(state.read_text()).get("relay_aux") is True,
        "the simulated relay line driven",
    )

"""A serial line that vanishes and returns: the gateway stays up and takes it back.

The cabinet's line is a pty pair behind the board's stable name ``dev/rs485_1``
(a symlink, like /dev/serial/by-id on a gateway). Closing the cabinet removes the
symlink and hangs up the ptys, as unplugging a USB-RS485 adapter does; a new
cabinet on the same name is the adapter plugged back in (a new tty node).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from agent.clock import SystemClock
from central.post import CentralPost
from sim.cabinet import Cabinet, Scenario
from sim.run import LINE_ROLE
from tests.integration.conftest import Site

pytestmark = pytest.mark.integration

# Generous: 3 missed 1 s polls to comm_fail, reopen backoff 1, 2, 4, 8 s; on a
# loaded two-core machine a pass takes some 30 s.
WAIT_S = 60.0


def _link_alarms(central: CentralPost, state: str) -> set[str]:
    return {
        e["src"] for e in central.events if e["code"] == "device.comm_fail" and e["state"] == state
    }


def _good_after(central: CentralPost, gw: str, boot: int, point: str) -> bool:
    return any(
        r.gw == gw and r.boot == boot and r.point == point and r.quality == 0
        for r in central.readings
    )


def _birth(central: CentralPost, gw: str) -> dict[str, Any]:
    return central.state.get(gw) or {}


async def test_serial__line_lost_absent_at_start_and_back_without_restart(site: Site) -> None:
    """An unplugged or late USB-RS485 adapter would crash the agent at start, or leave its
    devices unreachable until someone restarts it."""
    central, gw = site.central, site.gw
    names = set(site.cabinet.devices)
    await central.wait_for(lambda c: _good_after(c, gw, 1, "lamp-01/level"), WAIT_S)

    # Unplugged while running: every device on the line raises comm_fail; the uplink runs on.
    await site.cabinet.close()
    await central.wait_for(lambda c: names <= _link_alarms(c, "raised"), WAIT_S)
    assert _birth(central, gw).get("online") is True

    # Restarted while the adapter is still absent: it starts, reaches the broker, and the
    # devices' alarms stay active (not raised a second time).
    assert await site.agent.stop() == 0
    await site.agent.start()
    await central.wait_for(
        lambda c: _birth(c, gw).get("boot") == 2 and _birth(c, gw).get("online"), WAIT_S
    )
    assert site.agent.running, site.log()

    # Plugged back in (a new tty behind the same name): reopened, devices back, alarms cleared.
    async with contextlib.AsyncExitStack() as stack:
        cabinet = await stack.enter_async_context(
            Cabinet(
                Scenario(), clock=SystemClock(), link_dir=site.data / "dev", line_name=LINE_ROLE
            )
        )
        await central.wait_for(lambda c: names <= _link_alarms(c, "cleared"), WAIT_S)
        await central.wait_for(lambda c: _good_after(c, gw, 2, "lamp-01/level"), WAIT_S)
        assert cabinet.line.statistics().agent_to_device_bytes > 0
    log = site.log()
    assert "Traceback" not in log
    assert "open again" in log

"""What a technician types at a running cabinet: status, the logs, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from typing import Any

import pytest

from central.commander import make_command
from sim.cabinet import IOMODULE_NAME
from tests.integration.conftest import Site

pytestmark = pytest.mark.integration


WAIT_S = 30.0
# How often the agent's log or `armoire status` is re-read while waiting.
POLL_S = 0.2


async def _armoire(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _until(check: Any, what: str) -> Any:
    """Re-run the async ``check`` until it returns something truthy; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


async def test_status__shows_link_devices_and_a_hold_counting_down(site: Site) -> None:
    """A technician could not see whether the cabinet is online, which devices answer, or
    which operator hold keeps a lamp at a level and for how long."""
    config = str(site.data / "agent.toml")
    await site.central.wait_for(lambda c: bool(c.readings), WAIT_S)
    body = make_command(
        gw=site.gw, op="write", point="lamp-02/level", value=30, hold=600,
        now_ms=int(time.time() * 1000),
    )  # fmt: skip
    ack = await site.commander.send(site.gw, body, timeout=WAIT_S)
    assert ack["status"] == "done"

    async def shown() -> str | None:
        rc, out, err = await _armoire("status", "--config", config)
        assert rc == 0, err
        return out if "holds (1):" in out and "link: online" in out else None

    out = await _until(shown, "the hold in `armoire status`")
    assert re.search(r"agent: running \(pid \d+\), gateway cab-sim-0001", out)
    assert re.search(r"lamp-02/level = 30 at prio 10 by cmd:\S+ \S+, 0:(09|10):\d\d left", out)
    assert re.search(r"lamp-01\s+online\s+last answer \d+ s ago", out)
    assert "active alarms: none" in out

    rc, out, _ = await _armoire("status", "--data", str(site.data), "--json")
    assert rc == 0
    status = json.loads(out)
    # The Modbus devices (and the signal controller and the I/O module, the agent's
    # "cabinet", when the site has them).
    module = [IOMODULE_NAME] if site.cabinet.scenario.iomodule else []
    assert set(status["devices"]) == {*site.cabinet.device_names, *module}
    assert status["holds"][0]["point"] == "lamp-02/level"
    assert 0 < status["holds"][0]["left_s"] <= 600
    assert status["running"] == status["pid"]


async def test_logs__accepted_commands_hold_lapse_and_ctrl_c(site: Site) -> None:
    """Accepted commands and lapsed holds left no trace in the log, and Ctrl-C ended the
    agent with status 130 and no `stopped:` line."""
    await site.central.wait_for(lambda c: bool(c.readings), WAIT_S)
    body = make_command(
        gw=site.gw, op="write", point="lamp-03/level", value=20, hold=1,
        now_ms=int(time.time() * 1000),
    )  # fmt: skip
    ack = await site.commander.send(site.gw, body, timeout=WAIT_S)
    assert ack["status"] == "done"

    async def lapsed() -> bool:
        return "lamp-03/level: hold of 20 at priority 10" in site.log()

    await _until(lapsed, "the hold lapse in the log")
    log = site.log()
    assert re.search(
        rf"command {body['id'].hex()[:8]} accepted from \w+ \(operator\): write lamp-03/level = 20 "
        r"prio 10 hold 1 s -> done",
        log,
    )
    proc = site.agent.proc
    assert proc is not None
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(WAIT_S):
        assert await proc.wait() == 0
    assert "stopped:" in site.log()
    assert "Traceback" not in site.log()

"""The agent's start-up and shutdown, as its own process against the virtual cabinet.

The README promises that no hold outlives the agent: after any restart, however the last
run ended, every writable point is back at its default before the control room commands
anything. And a deliberate stop (SIGTERM) commits the last telemetry and drains it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from typing import Any

import pytest

from central.commander import load_key, make_command, sign
from tests.integration.conftest import Site

pytestmark = pytest.mark.integration

WAIT_S = 30.0
POLL_S = 0.05


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _until(what: str, condition: Any) -> None:
    """Poll a condition on another process's state (the cabinet's registers) until it holds."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():  # noqa: ASYNC110 - the cabinet's registers, no event
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT_S} s: {what}") from None


async def _write(site: Site, point: str, value: int, hold: int) -> None:
    body = make_command(
        gw=site.gw, op="write", point=point, value=value, hold=hold, now_ms=_now_ms(),
        validity_s=120,
    )  # fmt: skip
    await site.commander.send_raw(site.gw, sign(load_key(site.central_dir / "operator.key"), body))
    await site.central.wait_for(
        lambda c: any(a["cmd"] == body["id"] and a["status"] == "done" for a in c.acks), WAIT_S
    )


async def test_runtime__no_hold_outlives_a_killed_agent(site: Site) -> None:
    """A lamp dimmed for an hour by the control room would stay dimmed for ever after the agent
    crashed (or was killed) and restarted: nothing lapses a hold the new process never knew."""
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    await _write(site, "lamp-06/level", 30, hold=3600)
    assert site.cabinet.snapshot()["lamp-06"]["level"] == 30
    proc = site.agent.proc
    assert proc is not None
    proc.kill()  # no shutdown code runs
    await proc.wait()
    # While the agent is down, a lamp is also changed by hand in the cabinet.
    site.cabinet.set_level("lamp-07", 55)
    await site.agent.start()
    # Both go back to their relinquish default (full light) without any command.
    await _until(
        "lamp-06 back at its default", lambda: site.cabinet.snapshot()["lamp-06"]["level"] == 100
    )
    await _until(
        "lamp-07 back at its default", lambda: site.cabinet.snapshot()["lamp-07"]["level"] == 100
    )
    await site.central.wait_for(lambda c: any(r.boot == 2 for r in c.readings), WAIT_S)
    status = json.loads((site.data / "status.json").read_text())
    assert status["holds"] == [], status["holds"]


async def test_runtime__sigterm_commits_and_drains_the_last_telemetry(site: Site) -> None:
    """A stop would leave the last readings in the outbox until some later start, or lose them:
    the control room would see the cabinet's last minutes only hours later, if ever."""
    await site.central.wait_for(lambda c: c.stats()["readings"] >= 66, WAIT_S)
    assert await site.agent.stop() == 0
    # Nothing was left behind: the outbox file holds no record, and every seq arrived.
    db = sqlite3.connect(site.data / "outbox.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM staged").fetchone() == (0,)
    finally:
        db.close()
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is False, WAIT_S)
    assert site.central.gaps(site.gw) == []
    death = site.central.state[site.gw]
    assert max(r.seq for r in site.central.readings) <= death["seq"]


def _outbox_status(site: Site) -> dict[str, Any]:
    try:
        status = json.loads((site.data / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return {}
    outbox: dict[str, Any] = status["outbox"]
    return outbox


async def test_runtime__sigterm_while_the_link_comes_back_drains_the_outbox(site: Site) -> None:
    """Stopped just as the link recovers (a technician's reboot after an outage), the agent
    would leave the outage's readings for its next start instead of sending them."""
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    await site.link.stall()  # half-open: the agent does not know yet that nothing gets through
    await _until(
        "records held by the stalled link",
        lambda: _outbox_status(site).get("inflight", 0) > 0,
    )
    proc = site.agent.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    # The link comes back once the agent is on its way out.
    await _until("the agent is stopping", lambda: "stopping:" in site.log())
    await site.link.restore()
    assert await site.agent.stop() == 0
    db = sqlite3.connect(site.data / "outbox.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone() == (0,)
    finally:
        db.close()
    assert "records left in the outbox" not in site.log()
    assert site.central.gaps(site.gw) == []

"""Store-and-forward end to end: outages, a full outbox, a damaged file, a broker restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from typing import Any

import pytest

from central.post import CentralPost
from sim.run import agent_config
from tests.integration.conftest import NO_SCHEDULE, Site

pytestmark = pytest.mark.integration

WAIT_S = 30.0


def _status(site: Site) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((site.data / "status.json").read_text())
    return loaded


def _online(site: Site, value: bool) -> Any:
    return lambda c: c.state.get(site.gw, {}).get("online") is value


def _events(central: CentralPost, code: str) -> list[dict[str, Any]]:
    return [e for e in central.events if e["code"] == code]


async def _stop_drained(site: Site) -> dict[str, Any]:
    """Stop the agent cleanly once everything it stored has left; return its last status."""
    await site.central.wait_for(_online(site, True), WAIT_S)
    assert await site.agent.stop() == 0
    status = _status(site)
    assert sum(status["outbox"]["depth"].values()) == 0, status["outbox"]
    return status


async def test_outbox__outage_delivers_every_reading_without_gap(site: Site) -> None:
    """Readings taken during a cellular outage would be lost or arrive with holes."""
    await site.central.wait_for(lambda c: c.stats()["readings"] >= 66, WAIT_S)
    await site.link.cut()
    await site.central.wait_for(_online(site, False), WAIT_S)
    before = site.central.stats()["readings"]
    # The outage lasts while the cabinet keeps producing: wait until the agent has
    # stored a good number of readings that nobody has received.
    site.cabinet.set_level("lamp-06", 55)
    await _wait_status(site, lambda s: s["outbox"]["depth"]["telemetry"] >= 2)
    assert site.central.stats()["readings"] == before  # nothing leaks through a cut link
    await site.link.restore()
    status = await _stop_drained(site)
    await site.central.wait_for(lambda c: c.stats()["readings"] >= status["reporter"]["readings"],
                                WAIT_S)  # fmt: skip
    # Every reading the agent reported reached the control room exactly once.
    assert site.central.stats()["readings"] == status["reporter"]["readings"]
    keys = Counter((r.boot, r.seq, r.point, r.t_ms) for r in site.central.readings)
    assert max(keys.values()) == 1
    assert site.central.gaps(site.gw) == []
    assert site.central.stats()["rejected"] == 0


async def test_outbox__small_capacity_evicts_telemetry_keeps_alarms_and_counts(
    site: Site,
) -> None:
    """A full outbox would drop the alarm raised during the outage, or lose data silently."""
    await site.agent.stop()
    config = site.agent.config
    config.write_text(
        agent_config(site.cabinet, site.link.url, capacity_mb=0.004, root_extra=NO_SCHEDULE)
    )
    await site.link.cut()
    await site.agent.start()
    site.cabinet.power_off("lamp-05")  # an alarm during the outage
    await _wait_status(site, lambda s: s["outbox"]["evicted"]["readings"] > 0)
    await _wait_status(site, lambda s: s["outbox"]["depth"]["alarm"] >= 1)
    await site.link.restore()
    status = await _stop_drained(site)
    evicted = status["outbox"]["evicted"]
    # The order: only telemetry was evicted; the alarm made it.
    assert {k for k, v in evicted["messages"].items() if v} == {"telemetry"}
    raised = [e for e in _events(site.central, "device.comm_fail") if e["state"] == "raised"]
    assert [e["src"] for e in raised] == ["lamp-05"]
    # The counts: the evicted-reports explain exactly the gaps the central post sees,
    # and the "lost" fields add up to the evicted readings.
    reports = _events(site.central, "outbox.evicted")
    assert reports
    reported = sorted(tuple(r) for e in reports for r in e["data"]["ranges"])
    assert sorted(site.central.gaps(site.gw)) == _merge(reported)
    assert sum(e["data"]["readings"] for e in reports) == evicted["readings"]
    # Evicted readings not yet reported in a "lost" field wait, persisted, for the next batch.
    assert site.central.lost.get(site.gw, 0) + evicted["lost_pending"] == evicted["readings"]


async def test_outbox__corrupt_file_at_start_is_replaced_and_alarmed(site: Site) -> None:
    """A damaged outbox file after a power cut would keep the cabinet offline for good."""
    await site.central.wait_for(lambda c: c.stats()["readings"] >= 66, WAIT_S)
    await site.agent.stop()
    db = site.data / "outbox.sqlite"
    db.write_bytes(db.read_bytes()[:2048] + b"\xde\xad\xbe\xef" * 1024)
    await site.agent.start()
    await site.central.wait_for(lambda c: bool(_events(c, "outbox.corrupt")), WAIT_S)
    (alarm,) = _events(site.central, "outbox.corrupt")
    assert alarm["kind"] == "alarm"
    assert alarm["state"] == "raised"
    assert (site.data / alarm["data"]["moved_to"]).exists()
    # The agent keeps running and numbering stays above everything sent before.
    first_boot = max(r.seq for r in site.central.readings if r.boot == 1)
    await site.central.wait_for(lambda c: any(r.boot == 2 for r in c.readings), WAIT_S)
    assert min(r.seq for r in site.central.readings if r.boot == 2) > first_boot
    ok = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchall()
    assert ok == [("ok",)]


async def test_outbox__broker_restart_loses_nothing(site: Site) -> None:
    """A restart of the central broker would lose the messages in flight at that moment."""
    await site.central.wait_for(lambda c: c.stats()["readings"] >= 66, WAIT_S)
    await site.broker.restart()
    await site.central.wait_connected(WAIT_S)
    site.cabinet.set_level("lamp-07", 30)
    await site.central.wait_for(
        lambda c: (r := c.latest.get(f"{site.gw}:lamp-07/level")) is not None and r.value == 30,
        WAIT_S,
    )
    status = await _stop_drained(site)
    await site.central.wait_for(
        lambda c: c.stats()["readings"] >= status["reporter"]["readings"], WAIT_S
    )
    assert site.central.gaps(site.gw) == []


def _merge(ranges: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


async def _wait_status(site: Site, predicate: Any) -> None:
    """Poll the agent's status file (rewritten every 2 s) until ``predicate`` holds."""
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                if predicate(_status(site)):
                    return
            except (OSError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)  # polling a file with a deadline

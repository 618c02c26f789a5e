"""The walking skeleton end to end: devices → agent → mosquitto → central post."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from central.post import CentralPost
from drivers.iomodule.device import POINTS as IO_POINTS
from sim.broker import Mosquitto
from sim.cabinet import SIGNAL_NAME
from sim.lifetime import tied_to_parent
from tests.integration.conftest import NO_SCHEDULE, Site, open_site

pytestmark = pytest.mark.integration

# Generous: CI machines are slow and share two cores; a pass is usually seconds.
WAIT_S = 30.0


BUS_POINTS = (
    "requests", "timeouts", "framing_errors", "exceptions", "latency_p50", "latency_p99"
)  # fmt: skip


def _points_seen(central: CentralPost, gw: str) -> set[str]:
    return {r.point for r in central.latest.values() if r.gw == gw}


def _expected_points(site: Site) -> set[str]:
    names = {
        "lamp-ctl": ["level", "on", "failure", "power", "energy", "hours", "driver_temp"],
        "meter-3ph": [
            "voltage_l1", "voltage_l2", "voltage_l3",
            "current_l1", "current_l2", "current_l3", "power", "energy",
        ],
        "env-sensor": ["temperature", "humidity"],
        "contactor": ["command", "closed", "operations"],
    }  # fmt: skip
    cabinet = {f"cabinet/{p}" for p in IO_POINTS} if site.cabinet.scenario.iomodule else set()
    table = site.cabinet.device_table()
    modbus = {f"{d['name']}/{p}" for d in table for p in names[str(d["model"])]}
    if site.cabinet.signal is None:
        return cabinet | modbus
    signal = {
        f"{SIGNAL_NAME}/{p}"
        for p in ["control_mode", "flash_status", "alarm_status2", "alarm_status1",
                  "short_alarm", "reds", "yellows", "greens", "detector_alarms",
                  "fault_flash", "scheduled_flash", "mmu_fault", "critical_alarm",
                  "detector_fault"]
    }  # fmt: skip
    return cabinet | modbus | signal


def _latest(site: Site, point: str) -> tuple[object, int] | None:
    reading = site.central.latest.get(f"{site.gw}:{point}")
    return None if reading is None else (reading.value, reading.quality)


async def test_e2e__every_point_verified_by_central_post(tmp_path: Path, broker: Mosquitto) -> None:
    """The control room would be missing values from the cabinet, or see unverifiable ones."""
    async with open_site(
        tmp_path, broker, root_extra=NO_SCHEDULE, signal=True, iomodule=True
    ) as site:
        await _every_point_verified(site)


async def _every_point_verified(site: Site) -> None:
    expected = _expected_points(site)
    assert len(expected) == 69 + 14 + len(IO_POINTS)  # Modbus, signal controller, I/O module
    await site.central.wait_for(lambda c: expected <= _points_seen(c, site.gw), WAIT_S)
    assert site.central.stats()["rejected"] == 0, site.central.rejections
    # Values are the simulated devices' values, with good quality.
    snap = site.cabinet.snapshot()
    assert _latest(site, "lamp-01/level") == (snap["lamp-01"]["level"], 0)
    assert _latest(site, "lamp-01/on") == (True, 0)
    assert _latest(site, "lamp-05/hours") == (snap["lamp-05"]["hours"], 0)
    # The Birth is retained and lists every point with its unit and writability.
    birth = site.central.state[site.gw]
    assert birth["online"] is True
    # ... and the bus health points of every polled device (the I/O module's link has its
    # own counters in status.json) and of the RS-485 line and the SNMP exchanges.
    polled = {n.split("/")[0] for n in expected} - {"cabinet"}
    health = {f"{d}/bus.{p}" for d in polled for p in BUS_POINTS}
    lines = {"bus/rs485_1.utilisation", "bus/snmp.utilisation"}
    assert set(birth["points"]) == expected | health | lines
    assert birth["points"]["lamp-01/bus.latency_p99"] == {"unit": "ms", "w": False}
    assert birth["points"]["lamp-01/level"] == {"unit": "%", "w": True}
    assert birth["points"]["meter/voltage_l1"] == {"unit": "V", "w": False}


async def test_e2e__device_switched_off_goes_comm_fail_and_comes_back(site: Site) -> None:
    """A dead lamp controller would look healthy in the control room, or never recover."""
    await site.central.wait_for(lambda c: _latest(site, "lamp-03/power") is not None, WAIT_S)
    site.cabinet.power_off("lamp-03")
    lamp3 = [f"lamp-03/{p}" for p in ("level", "on", "power", "driver_temp")]
    await site.central.wait_for(
        lambda c: all((_latest(site, p) or (None, 0))[1] == 2 for p in lamp3), WAIT_S
    )
    # Its neighbours on the same line keep reporting good values.
    assert _latest(site, "lamp-04/level") == (100, 0)
    site.cabinet.power_on("lamp-03")
    await site.central.wait_for(
        lambda c: all((_latest(site, p) or (None, 2))[1] == 0 for p in lamp3), WAIT_S
    )
    log = site.log()
    assert log.count("lamp-03 unreachable") == 1, log
    assert log.count("lamp-03 back") == 1, log


async def test_e2e__stop_publishes_death_and_no_gap(site: Site) -> None:
    """After a clean stop the control room would think the cabinet is still online, or see a gap."""
    await site.central.wait_for(lambda c: c.stats()["readings"] >= 66, WAIT_S)
    assert await site.agent.stop() == 0
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is False, WAIT_S)
    death = site.central.state[site.gw]
    assert site.central.gaps(site.gw) == []
    assert site.central.stats()["rejected"] == 0
    # Death carries the last seq, so the central post knows what to expect.
    status = json.loads((site.data / "status.json").read_text())
    assert death["seq"] == status["outbox"]["last_seq"]
    assert status["outbox"]["depth"]["telemetry"] == 0


async def test_e2e__restart_increments_boot_and_seq_continues(site: Site) -> None:
    """A rebooted gateway would reuse message numbers and its data would be de-duplicated away."""
    await site.central.wait_for(lambda c: c.stats()["readings"] >= 66, WAIT_S)
    await site.agent.stop()
    first = max(r.seq for r in site.central.readings)
    await site.agent.start()
    await site.central.wait_for(lambda c: any(r.boot == 2 for r in c.readings), WAIT_S)
    second = min(r.seq for r in site.central.readings if r.boot == 2)
    assert second > first
    assert site.central.gaps(site.gw) == []


async def test_e2e__link_cut_then_restored_delivers_the_outage(site: Site) -> None:
    """Readings taken while the cellular link was down would never reach the control room."""
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    await site.link.cut()
    # The broker publishes the Will: the control room sees the cabinet go offline.
    await site.central.wait_for(lambda c: c.state[site.gw]["online"] is False, WAIT_S)
    during = len(site.central.readings)
    site.cabinet.set_level("lamp-02", 40)  # a change made while nobody can hear it
    await site.link.restore()
    await site.central.wait_for(lambda c: c.state[site.gw]["online"] is True, WAIT_S)
    await site.central.wait_for(lambda c: _latest(site, "lamp-02/level") == (40, 0), WAIT_S)
    assert len(site.central.readings) > during
    assert site.central.gaps(site.gw) == []
    assert site.central.stats()["rejected"] == 0


async def test_sim_cli__duration_prints_figures(tmp_path: Path) -> None:
    """`armoire sim --duration` would hang, or end without the figures a user reads."""
    proc = await asyncio.create_subprocess_exec(
        *tied_to_parent([sys.executable, "-m", "agent", "sim", "--data", str(tmp_path)]),
        "--duration", "6",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    text = out.decode()
    last = json.loads(text.strip().splitlines()[-1])
    assert set(last) == {
        "agent_published", "agent_outbox_left", "central_verified", "central_by_kind",
        "central_rejected", "central_duplicates", "readings", "points",
    }  # fmt: skip
    assert last["central_rejected"] == 0
    assert last["points"] == 69 + 14 + len(IO_POINTS) + 4  # + signal, I/O module, camera
    # A fresh data directory: nothing retained from an earlier run, so the figures agree.
    assert last["central_verified"] == last["agent_published"] > 0
    assert last["central_verified"] == sum(last["central_by_kind"].values())
    assert f"agent: published {last['agent_published']} messages in its last run" in text
    # The keys stay in the data folder, and `armoire keys show` prints them.
    show = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "keys", "show", "--data", str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    keys = json.loads((await show.communicate())[0])
    assert keys["gw"] == "cab-sim-0001"
    assert len(bytes.fromhex(keys["pub"])) == 32


async def test_e2e__alarm_state_survives_agent_restart(site: Site) -> None:
    """After a reboot the control room would get a repeated alarm for a still-dead device,
    or never see the alarm of a device repaired meanwhile cleared."""

    def alarms(c: CentralPost, src: str, state: str) -> int:
        return sum(
            1
            for e in c.events
            if e["code"] == "device.comm_fail" and e.get("src") == src and e["state"] == state
        )

    site.cabinet.power_off("lamp-05")
    site.cabinet.power_off("lamp-06")
    await site.central.wait_for(
        lambda c: alarms(c, "lamp-05", "raised") == 1 and alarms(c, "lamp-06", "raised") == 1,
        WAIT_S,
    )
    await site.agent.stop()
    site.cabinet.power_on("lamp-05")  # repaired while the agent was down
    await site.agent.start()
    await site.central.wait_for(lambda c: alarms(c, "lamp-05", "cleared") == 1, WAIT_S)
    # lamp-06 is still dead: its points are comm_fail again, but no second alarm.
    await site.central.wait_for(
        lambda c: any(
            r.boot == 2 and r.point == "lamp-06/level" and r.quality == 2 for r in c.readings
        ),
        WAIT_S,
    )
    assert alarms(site.central, "lamp-06", "raised") == 1
    assert alarms(site.central, "lamp-05", "raised") == 1


async def test_e2e__bus_health_reaches_the_control_room(tmp_path: Path, broker: Mosquitto) -> None:
    """The control room would not see a device that times out before it fails outright."""
    async with open_site(tmp_path, broker, root_extra=NO_SCHEDULE, health_interval=2) as site:
        site.cabinet.power_off("lamp-03")
        await site.central.wait_for(
            lambda c: (
                (_latest(site, "lamp-03/bus.timeouts") or (0, 0))[0] >= 1
                and _latest(site, "bus/rs485_1.utilisation") is not None
            ),
            WAIT_S,
        )
        requests = _latest(site, "lamp-01/bus.requests")
        assert requests is not None
        assert requests[0] >= 1
        assert _latest(site, "lamp-01/bus.timeouts") == (0, 0)
        utilisation = _latest(site, "bus/rs485_1.utilisation")
        assert utilisation is not None
        assert 0 < utilisation[0] <= 100
        status = json.loads((site.data / "status.json").read_text())
        assert status["devices"]["lamp-03"]["bus"]["timeouts"] >= 1
        assert status["devices"]["lamp-01"]["bus"]["latency_p99_ms"] > 0
        assert status["lines"]["rs485_1"]["utilisation_pct"] > 0

"""Signed commands end to end: central post → broker → agent → device, and the Ack back."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pytest

from central.commander import load_key, make_command, sign
from central.post import CentralPost
from tests.integration.conftest import Site

pytestmark = pytest.mark.integration

WAIT_S = 30.0


@pytest.fixture
def agent_extra_config() -> str:
    # Summaries of unauthenticated input every 2 s rather than every minute.
    return "\n[commands]\nunauthenticated_summary = 2\n"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _latest(site: Site, point: str) -> Any:
    reading = site.central.latest.get(f"{site.gw}:{point}")
    return None if reading is None else reading.value


def _audits(central: CentralPost, cmd_hex: str) -> list[dict[str, Any]]:
    return [e for e in central.events if e["kind"] == "audit" and e["data"].get("cmd") == cmd_hex]


async def _online(site: Site) -> None:
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)


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


async def test_commands__cli_dims_a_lamp_until_the_hold_lapses(site: Site) -> None:
    """An operator's dimming would not reach the lamp, or would outlast the hold they chose."""
    await _online(site)
    status, ack = await _cli(site, "write", "lamp-03/level", "40", "--hold", "6")
    assert status == 0, ack
    assert ack["status"] == "done"
    assert ack["value"] == 40
    assert site.cabinet.snapshot()["lamp-03"]["level"] == 40  # the device took it
    # Telemetry shows it (readings are batched, so look at every reading, not the latest).
    await site.central.wait_for(
        lambda c: any(r.point == "lamp-03/level" and r.value == 40 for r in c.readings), WAIT_S
    )
    audit = _audits(site.central, ack["cmd"])
    assert audit[0]["data"]["role"] == "operator"
    assert audit[0]["data"]["status"] == "done"
    # The hold lapses: the lamp goes back to its default (full light) by itself.
    await site.central.wait_for(lambda c: _latest(site, "lamp-03/level") == 100, WAIT_S)
    assert site.cabinet.snapshot()["lamp-03"]["level"] == 100


async def test_commands__relinquish_and_selftest(site: Site) -> None:
    """An operator could not give control back early, or check the cabinet's devices."""
    await _online(site)
    status, ack = await _cli(site, "write", "lamp-02/level", "20", "--hold", "600")
    assert (status, ack["value"]) == (0, 20)
    status, ack = await _cli(site, "relinquish", "lamp-02/level")
    assert (status, ack["status"], ack["value"]) == (0, "done", 100)
    assert site.cabinet.snapshot()["lamp-02"]["level"] == 100
    site.cabinet.power_off("lamp-08")
    status, ack = await _cli(site, "action", "selftest")
    assert status == 0
    assert ack["value"]["devices"]["lamp-08"] == "no-answer"
    assert ack["value"]["devices"]["lamp-01"] == "ok"


async def test_commands__contactor_darkens_the_circuit(site: Site) -> None:
    """Switching a lighting circuit off from the control room would not cut the lamps."""
    await _online(site)
    status, ack = await _cli(site, "write", "contactor/command", "false", "--hold", "30")
    assert (status, ack["value"]) == (0, False)
    await site.central.wait_for(lambda c: _latest(site, "contactor/closed") is False, WAIT_S)
    await site.central.wait_for(lambda c: _latest(site, "lamp-01/power") == 0, WAIT_S)


async def test_commands__device_error_gives_failed_ack(site: Site) -> None:
    """A write to a dead lamp controller would be reported as done."""
    await _online(site)
    site.cabinet.power_off("lamp-04")
    status, ack = await _cli(site, "write", "lamp-04/level", "50")
    assert status == 1
    assert (ack["status"], ack["reason"]) == ("failed", "device-error")
    await site.central.wait_for(lambda c: bool(_audits(c, ack["cmd"])), WAIT_S)
    assert _audits(site.central, ack["cmd"])[0]["data"]["reason"] == "device-error"


async def test_commands__maintenance_key_refused_over_mqtt(site: Site) -> None:
    """A maintenance token stolen from a technician would let anyone drive the cabinet."""
    await _online(site)
    status, ack = await _cli(site, "--key", "maintenance", "write", "lamp-01/level", "10")
    assert status == 1
    assert (ack["status"], ack["reason"]) == ("rejected", "not-authorised")
    assert ack["msg"] == "maintenance: no commands over MQTT"  # PROTOCOL.md, Ack "msg"
    await site.central.wait_for(lambda c: bool(_audits(c, ack["cmd"])), WAIT_S)
    (audit,) = _audits(site.central, ack["cmd"])
    assert audit["code"] == "cmd.rejected"
    assert audit["data"]["reason"] == "not-authorised"
    assert site.cabinet.snapshot()["lamp-01"]["level"] == 100


async def test_commands__replay_refused_after_agent_restart(site: Site) -> None:
    """A recorded command replayed by an attacker after a reboot would be obeyed again."""
    await _online(site)
    body = make_command(
        gw=site.gw, op="write", point="lamp-05/level", value=30, hold=600, now_ms=_now_ms(),
        validity_s=120,
    )  # fmt: skip
    payload = sign(load_key(site.central_dir / "operator.key"), body)
    await site.commander.send_raw(site.gw, payload)
    await site.central.wait_for(lambda c: any(a["cmd"] == body["id"] for a in c.acks), WAIT_S)
    await site.agent.stop()
    await site.agent.start()
    await _online(site)
    await site.central.wait_for(lambda c: any(r.boot == 2 for r in c.readings), WAIT_S)
    await site.commander.send_raw(site.gw, payload)
    await site.central.wait_for(
        lambda c: sum(1 for a in c.acks if a["cmd"] == body["id"]) == 2, WAIT_S
    )
    first, second = [a for a in site.central.acks if a["cmd"] == body["id"]]
    assert first["status"] == "done"
    assert (second["status"], second["reason"]) == ("rejected", "replay")


async def test_commands__garbage_on_the_command_topic_never_stops_the_agent(site: Site) -> None:
    """Anyone able to publish on the broker could crash the cabinet's agent."""
    await _online(site)
    for junk in (b"", b"\x00" * 10, b"\xd2\x84" + b"\xff" * 50, b"not cbor at all"):
        await site.commander.send_raw(site.gw, junk)
    status, ack = await _cli(site, "action", "ping")
    assert (status, ack["status"]) == (0, "done")

    def counted(c: CentralPost) -> int:
        return sum(e["data"]["count"] for e in c.events if e["code"] == "cmd.unauthenticated")

    # No Ack and no record per junk message: one summary counts them (PROTOCOL.md).
    await site.central.wait_for(lambda c: counted(c) >= 4, WAIT_S)
    assert site.agent.running
    assert counted(site.central) == 4
    assert [e for e in site.central.events if e["code"] == "cmd.rejected"] == []
    assert [a for a in site.central.acks if a["status"] == "rejected"] == []

"""The agent's start-up and shutdown, as its own process against the virtual cabinet.

The README promises that no hold outlives the agent: after any restart, however the last
run ended, every writable point is back at its default before the control room commands
anything. And a deliberate stop (SIGTERM) commits the last telemetry and drains it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.commander import load_key, make_command, public_raw, sign, sign_trust_update
from tests.integration.conftest import Site

pytestmark = pytest.mark.integration

WAIT_S = 30.0
POLL_S = 0.05


@pytest.fixture
def agent_extra_config() -> str:
    # Summaries of unauthenticated input every 2 s rather than every minute.
    return "\n[commands]\nunauthenticated_summary = 2\n"


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


async def _send(site: Site, key: Ed25519PrivateKey, value: int) -> tuple[bytes, bytes]:
    """Send a write of lamp-04/level signed by ``key``: (command id, payload)."""
    body = make_command(
        gw=site.gw, op="write", point="lamp-04/level", value=value, now_ms=_now_ms(),
        validity_s=120,
    )  # fmt: skip
    payload = sign(key, body)
    await site.commander.send_raw(site.gw, payload)
    return body["id"], payload


async def _acked(site: Site, key: Ed25519PrivateKey, value: int) -> dict[str, Any]:
    cmd_id, _ = await _send(site, key, value)
    await site.central.wait_for(lambda c: any(a["cmd"] == cmd_id for a in c.acks), WAIT_S)
    return next(a for a in site.central.acks if a["cmd"] == cmd_id)


async def _refused_unheard(site: Site, key: Ed25519PrivateKey, value: int) -> None:
    """Send a command the agent must not authenticate: no Ack, but counted in a
    ``cmd.unauthenticated`` summary whose samples carry the payload's hash."""
    cmd_id, payload = await _send(site, key, value)
    sample = hashlib.sha256(payload).digest()[:8]
    await site.central.wait_for(
        lambda c: any(
            e["code"] == "cmd.unauthenticated"
            and e["boot"] == _status_boot(site)
            and sample in e["data"].get("samples", [])
            and "unknown-kid" in e["data"]["reasons"]
            for e in c.events
        ),
        WAIT_S,
    )
    assert not [a for a in site.central.acks if a["cmd"] == cmd_id]


def _status_boot(site: Site) -> int | None:
    try:
        boot: int = json.loads((site.data / "status.json").read_text())["boot"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return boot


async def test_runtime__trust_update_over_mqtt_replaces_the_keys_and_survives_restart(
    site: Site,
) -> None:
    """The control room could not rotate a compromised operator key without a site visit, or
    the rotation would be forgotten at the next reboot (the old key trusted again)."""
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    old = load_key(site.central_dir / "operator.key")
    new = Ed25519PrivateKey.generate()
    update = sign_trust_update(
        load_key(site.central_dir / "root.key"),
        serial=1000,
        keys=[{"pub": public_raw(new), "roles": ["operator"]}],
        now_ms=_now_ms(),
    )
    async with aiomqtt.Client("127.0.0.1", site.broker.port, identifier="rotator") as mqtt:
        await mqtt.publish(f"armoire/v1/{site.gw}/trust", update, qos=1)
    await site.central.wait_for(
        lambda c: any(
            e["code"] == "trust.updated" and e["data"]["serial"] == 1000 for e in c.events
        ),
        WAIT_S,
    )
    ack = await _acked(site, new, 35)
    assert ack["status"] == "done", ack
    await _refused_unheard(site, old, 36)  # no longer trusted: no Ack at all
    assert site.cabinet.snapshot()["lamp-04"]["level"] == 35
    # After a restart the rotation still holds (trust.cose was replaced on disk).
    assert await site.agent.stop() == 0
    await site.agent.start()
    await site.central.wait_for(lambda c: any(r.boot == 2 for r in c.readings), WAIT_S)
    await _refused_unheard(site, old, 37)
    ack = await _acked(site, new, 38)
    assert ack["status"] == "done", ack


async def test_runtime__without_a_trust_store_every_command_is_refused(site: Site) -> None:
    """A gateway installed without its trust material would obey anyone, or crash."""
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    assert await site.agent.stop() == 0
    (site.data / "trust.cose").unlink()
    (site.data / "trust-root.pub").unlink()
    await site.agent.start()
    await site.central.wait_for(lambda c: any(r.boot == 2 for r in c.readings), WAIT_S)
    await _refused_unheard(site, load_key(site.central_dir / "operator.key"), 20)
    assert site.agent.running
    assert "no usable trust store, all commands will be refused" in site.log()
    assert site.cabinet.snapshot()["lamp-04"]["level"] == 100


async def test_runtime__command_value_outside_the_points_range_is_refused(site: Site) -> None:
    """The agent's own check of a commanded value against the device model (not the
    stand-in the unit tests give the downlink): 250 % on a dimmer would reach the device."""
    await site.central.wait_for(lambda c: c.state.get(site.gw, {}).get("online") is True, WAIT_S)
    operator = load_key(site.central_dir / "operator.key")
    ack = await _acked(site, operator, 250)
    assert (ack["status"], ack["reason"]) == ("rejected", "bad-request")
    assert "lamp-04/level" in ack["msg"]
    assert site.cabinet.snapshot()["lamp-04"]["level"] == 100
    ack = await _acked(site, operator, 100)  # the bound itself is a valid value
    assert ack["status"] == "done"

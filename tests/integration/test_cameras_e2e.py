"""Cameras end to end: the agent process, two simulated ONVIF cameras, mosquitto and the
reference central post. A covered camera is an alarm with a picture of the moment."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from central.commander import make_command
from sim.broker import Mosquitto
from tests.integration.conftest import NO_SCHEDULE, Site, open_site

pytestmark = pytest.mark.integration

# Tamper alarms clear 10 s after the camera is uncovered (agent/default_rules.toml).
TIMEOUT = 30.0


@pytest.fixture
async def site(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Site]:
    async with open_site(tmp_path, broker, root_extra=NO_SCHEDULE, cameras=2) as started:
        yield started


def _events(site: Site, code: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in site.central.events
        if e["code"] == code and all(e.get(k) == v for k, v in match.items())
    ]


async def _wait(site: Site, what: str, predicate: Any) -> None:
    try:
        await site.central.wait_for(lambda c: bool(predicate()), timeout=TIMEOUT)
    except TimeoutError:
        pytest.fail(f"{what} not seen; agent log:\n{site.log()}")


async def test_cameras__tamper_alarm_with_the_still_of_that_moment(site: Site) -> None:
    """Covering cam-02 raises camera.tamper for cam-02, and the central post receives and
    writes the still cam-02 served, named by the camera.snapshot Event; cam-01 is left alone."""
    cam1, cam2 = site.cabinet.cameras["cam-01"], site.cabinet.cameras["cam-02"]
    # Before or after the agent subscribed: a new subscription starts with the current state.
    cam2.set_tamper(True)
    await _wait(site, "camera.tamper", lambda: _events(site, "camera.tamper", state="raised"))
    [alarm] = _events(site, "camera.tamper", state="raised")
    assert (alarm["kind"], alarm["src"], alarm["sev"]) == ("alarm", "cam-02", 2)
    await _wait(site, "the still", lambda: site.central.blobs and _events(site, "camera.snapshot"))
    [blob] = site.central.blobs
    [snap] = _events(site, "camera.snapshot")
    assert snap["data"]["sha256"] == blob["sha256"]
    assert snap["src"] == "cam-02"
    image = await asyncio.to_thread(Path(blob["path"]).read_bytes)
    assert hashlib.sha256(image).digest() == blob["sha256"]
    assert image[:2] == b"\xff\xd8"  # SOI
    assert image[-2:] == b"\xff\xd9"  # EOI
    assert (cam1.snapshots, cam2.snapshots) == (0, 1)
    assert site.central.rejections == []
    cam2.set_tamper(False)
    await _wait(site, "tamper cleared", lambda: _events(site, "camera.tamper", state="cleared"))


async def test_cameras__signed_snapshot_command_and_motion(site: Site) -> None:
    """An operator's `action snapshot` on cam-01 is acknowledged with the still's SHA-256,
    which the central post then holds; motion in front of cam-01 is a camera.motion Event."""
    cam1 = site.cabinet.cameras["cam-01"]
    # Subscribed (its Birth is out): a command sent before would find no session.
    await _wait(site, "Birth", lambda: site.central.state.get(site.gw, {}).get("online"))
    body = make_command(
        gw=site.gw,
        op="action",
        name="snapshot",
        args={"device": "cam-01"},
        now_ms=int(time.time() * 1000),
    )
    ack = await site.commander.send(site.gw, body, timeout=TIMEOUT)
    assert ack["status"] == "done", ack
    sha = ack["value"]["stills"]["cam-01"]["sha256"]
    await _wait(site, "the still", lambda: [b for b in site.central.blobs if b["sha256"] == sha])
    cam1.set_motion(True)
    await _wait(site, "camera.motion", lambda: _events(site, "camera.motion", src="cam-01"))
    # An unknown camera is a failed command saying which cameras there are.
    body = make_command(
        gw=site.gw,
        op="action",
        name="snapshot",
        args={"device": "cam-9"},
        now_ms=int(time.time() * 1000),
    )
    ack = await site.commander.send(site.gw, body, timeout=TIMEOUT)
    assert (ack["status"], ack["reason"]) == ("failed", "bad-request")


async def test_cameras__camera_off_is_an_alarm(site: Site) -> None:
    """A camera switched off raises camera.offline; back on, it clears."""
    cam1 = site.cabinet.cameras["cam-01"]
    await _wait(site, "cam-01 answering", lambda: cam1.requests)
    await cam1.set_power(False)
    await _wait(
        site,
        "camera.offline",
        lambda: _events(site, "camera.offline", state="raised", src="cam-01"),
    )
    await cam1.set_power(True)
    await _wait(
        site, "cleared", lambda: _events(site, "camera.offline", state="cleared", src="cam-01")
    )

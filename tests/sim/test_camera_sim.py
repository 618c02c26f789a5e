"""The ONVIF camera driver against the simulated camera, and the simulated camera against
an independent ONVIF client (onvif-zeep-async: zeep, the ONVIF WSDLs, aiohttp's digest)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Mapping

import pytest

from agent.clock import SystemClock
from drivers.device import DriverError, Reading
from drivers.onvif.camera import CameraSettings, OnvifCamera
from drivers.onvif.soap import Credentials
from sim.camera import CameraSim
from sim.jpeg import still

PASSWORD = "cam-secret"  # the simulator's account


@pytest.fixture
async def sim() -> AsyncIterator[CameraSim]:
    async with CameraSim(password=PASSWORD, clock_offset=-93.0) as camera:
        yield camera


def _driver(sim: CameraSim, password: str = PASSWORD, **kw: object) -> OnvifCamera:
    settings = CameraSettings(
        host="127.0.0.1",
        port=sim.port,
        credentials=Credentials(username="admin", password=password),
        timeout=2.0,
        **kw,  # type: ignore[arg-type]
    )
    return OnvifCamera("cam-01", settings, SystemClock())


class _Reports:
    """What watch() reported, awaitable with a deadline."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Reading]] = asyncio.Queue()

    def __call__(self, changes: Mapping[str, Reading]) -> None:
        self.queue.put_nowait(dict(changes))

    async def next(self) -> dict[str, Reading]:
        async with asyncio.timeout(10):
            return await self.queue.get()


async def test_camera__health_and_clock_drift(sim: CameraSim) -> None:
    """The camera answers and its clock is 93 s behind: the points say so."""
    camera = _driver(sim)
    values = await camera.read()
    assert values["online"] is True
    assert values["clock_drift"] == pytest.approx(-93.0, abs=1.6)
    assert camera.info is not None
    assert camera.info.model == "SimCam-1"
    assert sim.requests[:2] == ["GetSystemDateAndTime", "GetDeviceInformation"]


async def test_camera__tamper_and_motion_events(sim: CameraSim) -> None:
    """Covering the camera or moving in front of it shows within one pull, and clears."""
    camera = _driver(sim)
    reports = _Reports()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(camera.watch(reports))
        assert await reports.next() == {"motion": False, "tamper": False}  # Initialized
        sim.set_tamper(True)
        assert await reports.next() == {"tamper": True}
        sim.set_motion(True)
        assert await reports.next() == {"motion": True}
        sim.set_tamper(False)
        assert await reports.next() == {"tamper": False}
        task.cancel()
    await camera.close()
    assert sim.requests[-1] == "Unsubscribe"


async def test_camera__snapshot_over_digest(sim: CameraSim) -> None:
    """GetSnapshotUri then a digest-authenticated GET: the exact JPEG the camera made."""
    camera = _driver(sim)
    shot = await camera.action("snapshot", {})
    expected = still(frame=1)
    assert shot.data == expected  # type: ignore[attr-defined]
    assert shot.sha256 == hashlib.sha256(expected).digest()  # type: ignore[attr-defined]
    assert shot.ctype == "image/jpeg"  # type: ignore[attr-defined]
    assert sim.snapshots == 1
    await camera.action("snapshot", {})  # the URI is remembered
    assert sim.requests.count("GetSnapshotUri") == 1


async def test_camera__snapshot_over_the_limit_refused(sim: CameraSim) -> None:
    """A still larger than snapshot_max is refused, not truncated."""
    camera = _driver(sim, snapshot_max=10_000)
    with pytest.raises(DriverError, match="at most 10000"):
        await camera.action("snapshot", {})


async def test_camera__wrong_password_named_not_logged(
    sim: CameraSim, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password gives NotAuthorized; the password appears nowhere."""
    camera = _driver(sim, password="wrong-pw-123")
    with pytest.raises(DriverError, match="NotAuthorized") as info:
        await camera.read()
    assert "wrong-pw-123" not in str(info.value)
    assert "wrong-pw-123" not in caplog.text


async def test_camera__off_then_back(sim: CameraSim) -> None:
    """A camera switched off is a timeout-type DriverError; events resume when it is back."""
    camera = _driver(sim)
    reports = _Reports()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(camera.watch(reports))
        assert await reports.next() == {"motion": False, "tamper": False}
        await sim.set_power(False)
        with pytest.raises(DriverError) as info:
            await camera.read()
        assert info.value.timeout
        sim.motion = True  # changed while off: the new subscription's Initialized says so
        await sim.set_power(True)
        assert await reports.next() == {"motion": True, "tamper": False}
        task.cancel()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">'
            b'<!ENTITY b "&a;&a;&a;">]><x>&b;</x>',
            "hostile XML refused",
        ),
        (b"<env:Envelope", "malformed XML"),
        (b"<x>" + b"<y>ok</y>" * 20_000 + b"</x>", "not a SOAP 1.2 Envelope"),
        (b"<x>" + b"a" * 300_000 + b"</x>", "at most 262144"),
    ],
)
async def test_camera__hostile_answers_refused(sim: CameraSim, answer: bytes, reason: str) -> None:
    """Whatever the camera sends instead of SOAP, the driver says why and carries on."""
    camera = _driver(sim)
    sim.hostile = answer
    with pytest.raises(DriverError, match=reason):
        await camera.read()
    sim.hostile = None
    assert (await camera.read())["online"] is True


# -- the simulator, checked by an independent client -----------------------------


async def test_sim__onvif_zeep_async_client(sim: CameraSim) -> None:
    """onvif-zeep-async (zeep on the official WSDLs, aiohttp's digest auth) reads the simulated
    camera: identity, profiles, snapshot, and a tamper event from a PullPoint."""
    onvif = pytest.importorskip("onvif")
    camera = onvif.ONVIFCamera("127.0.0.1", sim.port, "admin", PASSWORD, adjust_time=True)
    try:
        await camera.update_xaddrs()
        device = await camera.create_devicemgmt_service()
        info = await device.GetDeviceInformation()
        assert (info.Manufacturer, info.Model) == ("Armoire Sim", "SimCam-1")
        media = await camera.create_media_service()
        profiles = await media.GetProfiles()
        image = await camera.get_snapshot(profiles[0].token)
        assert image == still(frame=1)
        manager = await camera.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        service = manager.get_service()
        first = await service.PullMessages({"MessageLimit": 10, "Timeout": dt.timedelta(seconds=1)})
        assert len(first.NotificationMessage) == 2  # Initialized: motion and tamper
        sim.set_tamper(True)
        pulled = await service.PullMessages(
            {"MessageLimit": 10, "Timeout": dt.timedelta(seconds=5)}
        )
        [message] = pulled.NotificationMessage
        assert message.Topic._value_1 == "tns1:VideoSource/GlobalSceneChange/ImagingService"
        item = message.Message._value_1.Data.SimpleItem[0]
        assert (item.Name, item.Value) == ("State", "true")
        await manager.shutdown()
    finally:
        await camera.close()


async def test_sim__refuses_a_wrong_password_to_zeep(sim: CameraSim) -> None:
    """The simulated camera really checks the WS-Security digest (not only our driver's)."""
    onvif = pytest.importorskip("onvif")
    zeep = pytest.importorskip("zeep")
    camera = onvif.ONVIFCamera("127.0.0.1", sim.port, "admin", "not-it", adjust_time=True)
    try:
        with pytest.raises(zeep.exceptions.Fault, match="requires authorization"):
            await camera.update_xaddrs()
        # The clock is public (ONVIF Core §5.9.4); everything after it was refused.
        assert sim.requests == [
            "GetSystemDateAndTime",
            "GetServices:refused",
            "GetCapabilities:refused",
        ]
    finally:
        await camera.close()

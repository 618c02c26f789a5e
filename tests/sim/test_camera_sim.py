"""The ONVIF camera driver against the simulated camera, and the simulated camera against
an independent ONVIF client (onvif-zeep-async: zeep, the ONVIF WSDLs, aiohttp's digest)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cameras import Cameras
from agent.clock import Clock, FakeClock, SystemClock
from agent.commands import Command
from agent.downlink import ActionRefused
from agent.events import Events
from agent.messages import MessageFactory
from agent.outbox import Outbox
from agent.points import Points, Quality, Sample
from agent.rules import DeviceAction
from agent.security.cose import Signer
from agent.stills import Stills
from central.blobs import Blob
from central.post import Ledger
from drivers.device import DriverError, Reading
from drivers.onvif.camera import CameraSettings, OnvifCamera
from drivers.onvif.soap import Credentials
from sim.camera import CameraSim
from sim.jpeg import still

PASSWORD = "cam-secret"  # the simulator's account
GW = "cab-0001"
KEY = Ed25519PrivateKey.generate()


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
        (
            b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body>'
            b'<t:GetSystemDateAndTimeResponse xmlns:t="http://www.onvif.org/ver10/device/wsdl"/>'
            b"</e:Body></e:Envelope>",
            "GetSystemDateAndTimeResponse: no UTCDateTime",
        ),
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


# -- the agent's camera side: stills stored, reassembled by the central post ----------


def _agent_side(
    tmp_path: Path, cameras: dict[str, OnvifCamera], clock: Clock
) -> tuple[Cameras, Outbox]:
    outbox = Outbox.open(tmp_path, clock)
    factory = MessageFactory(gw=GW, boot=outbox.boot, signer=Signer(KEY))
    events = Events(gw=GW, factory=factory, outbox=outbox, clock=clock)

    async def snapshot(device: str) -> object:
        return await cameras[device].action("snapshot", {})

    stills = Stills(gw=GW, factory=factory, outbox=outbox, events=events, keep=4, snapshot=snapshot)
    return Cameras(names=tuple(cameras), stills=stills, events=events, clock=clock), outbox


def _command(args: dict[str, object]) -> Command:
    return Command(
        id=bytes(16),
        gw=GW,
        iat=0,
        nbf=None,
        exp=1,
        op="action",
        point=None,
        value=None,
        prio=10,
        hold=None,
        name="snapshot",
        args=args,
        kid=bytes(8),
        role="operator",
    )


async def test_cameras__command_snapshot_reaches_the_central_post(
    sim: CameraSim, tmp_path: Path
) -> None:
    """`action snapshot` takes a still, the Ack value names its SHA-256, and the central post
    rebuilds the very JPEG the camera served and writes it to its data folder."""
    clock = SystemClock()
    cams, outbox = _agent_side(tmp_path / "gw", {"cam-01": _driver(sim)}, clock)
    value = await cams.command(_command({"device": "cam-01"}))
    sha = value["stills"]["cam-01"]["sha256"]
    assert sha == hashlib.sha256(still(frame=1)).digest()
    assert value["stills"]["cam-01"]["parts"] == 2  # 73 KB: two parts of <= 48 KiB

    written: dict[str, bytes] = {}

    def sink(blob: Blob) -> str:
        written[blob.sha256.hex()] = blob.data
        return "mem"

    ledger = Ledger({GW: Signer(KEY).public_raw}, on_blob=sink)
    for record in outbox.take(100):
        ledger.receive(record.topic, record.payload)
    assert written == {sha.hex(): still(frame=1)}
    [event] = ledger.events
    assert (event["code"], event["data"]["sha256"], event["data"]["reason"]) == (
        "camera.snapshot",
        sha,
        "command",
    )
    outbox.close()


async def test_cameras__unknown_camera_and_dead_camera(sim: CameraSim, tmp_path: Path) -> None:
    """A snapshot of no camera is a bad request naming the cameras; of a dead one, the reason."""
    cams, outbox = _agent_side(tmp_path, {"cam-01": _driver(sim)}, SystemClock())
    with pytest.raises(ActionRefused, match="'lamp-01' is not a camera \\(cam-01\\)"):
        await cams.command(_command({"device": "lamp-01"}))
    await sim.set_power(False)
    with pytest.raises(DriverError, match="cam-01"):
        await cams.command(_command({}))
    assert outbox.depth == 0
    outbox.close()


async def test_cameras__rule_src_snapshot(sim: CameraSim, tmp_path: Path) -> None:
    """The camera-tamper rule's {src} asks the covered camera, and only it, for a still."""
    async with CameraSim(password=PASSWORD) as other:
        cameras = {"cam-01": _driver(sim), "cam-02": _driver(other)}
        cams, outbox = _agent_side(tmp_path, cameras, SystemClock())
        await cams.rule_action(DeviceAction(device="{src}", name="snapshot"), "cam-02")
        assert (sim.snapshots, other.snapshots) == (0, 1)
        await cams.rule_action(DeviceAction(device="cam-*", name="snapshot"), "cabinet")
        assert (sim.snapshots, other.snapshots) == (1, 2)
        assert outbox.stills() == 3
        outbox.close()


async def test_cameras__motion_events_rate_limited(tmp_path: Path) -> None:
    """A busy street: one camera.motion Event per 10 s per camera, the rest counted."""
    clock = FakeClock()
    cams, outbox = _agent_side(tmp_path, {"cam-01": _driver(CameraSim())}, clock)
    points = Points()
    points.subscribe(cams.observe)
    for i in range(6):
        for value in (True, False):
            points.update(Sample(name="cam-01/motion", value=value, quality=Quality.GOOD, t_ms=i))
        await clock.advance(3)
    events = [cbor2.loads(cbor2.loads(r.payload).value[2]) for r in outbox.take(100)]
    assert [e["data"] for e in events] == [
        {"motion": True, "suppressed": 0},
        {"motion": True, "suppressed": 3},
    ]
    outbox.close()

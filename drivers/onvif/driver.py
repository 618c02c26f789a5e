"""The ``onvif`` driver: cameras on the cabinet LAN (``driver = "onvif"``).

Configuration keys of a ``[[devices]]`` table, besides name/driver/profile/poll::

    host = "192.0.2.10"        # the camera's address on the cabinet LAN
    port = 80                  # its HTTP port
    username = "armoire"       # an ONVIF user (the "operator" level is enough)
    password = "…"             # never logged, never shown in an error, not in the
                               # configuration digest the Birth carries
    timeout = 5.0              # seconds per request
    snapshot_max = 524288      # bytes: a larger still is refused, not truncated

``profile = "onvif-camera"``: the points every ONVIF camera gives through this
driver (``online``, ``clock_drift``, ``tamper``, ``motion``). Each camera is its
own medium: its bus is its ``host:port``, a no-op kept for ``status.json``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.clock import SystemClock
from drivers.driver import BuildContext, Driver, ParseContext
from drivers.onvif.camera import CameraSettings, OnvifCamera
from drivers.onvif.soap import Credentials
from drivers.point import Model, PointSpec
from drivers.profile import ProfileError, Section, show

NAME: Final = "onvif"
MODEL: Final = "onvif-camera"
# RFC 1123 host names and IPv4/IPv6 literals; no scheme, path or credentials in it.
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Fa-f:.]{2,45}")
# A still bigger than 8 MiB is no cabinet camera's JPEG, and would take minutes on a
# cellular link; below 4 KiB no real still fits.
SNAPSHOT_MAX_RANGE: Final = (4 * 1024, 8 * 1024 * 1024)


@dataclass(frozen=True, slots=True, kw_only=True)
class CameraModel:
    """The fixed model of an ONVIF camera (the :class:`drivers.point.Model` protocol)."""

    name: str
    points: Sequence[PointSpec]

    def point(self, name: str) -> PointSpec:
        for spec in self.points:
            if spec.name == name:
                return spec
        raise KeyError(name)


CAMERA: Final = CameraModel(
    name=MODEL,
    points=(
        PointSpec(name="online", kind="bool", heartbeat=300.0),
        # The camera's clock has 1 s resolution: a change under 2 s is noise.
        PointSpec(name="clock_drift", unit="s", deadband=2.0, heartbeat=3600.0),
        PointSpec(name="tamper", kind="bool", heartbeat=300.0),
        PointSpec(name="motion", kind="bool", heartbeat=300.0),
    ),
)


def parse(sec: Section, ctx: ParseContext) -> CameraSettings | None:
    host = sec.string("host", pattern=_HOST, expected="a host name or IP address")
    port = sec.integer("port", 1, 65535, default=80)
    username = sec.string("username", expected="an ONVIF user name")
    password = _password(sec)
    timeout = sec.number("timeout", 0.5, 60, default=5.0)
    snapshot_max = sec.integer("snapshot_max", *SNAPSHOT_MAX_RANGE, default=512 * 1024)
    if sec.ok("host") and sec.ok("port"):
        ctx.claim(sec, "host", (NAME, host.lower(), port), f"camera {show(f'{host}:{port}')}")
    if not all(sec.ok(k) for k in ("host", "port", "username", "password")):
        return None
    return CameraSettings(
        host=host.strip("[]"),
        port=port,
        credentials=Credentials(username=username, password=password),
        timeout=timeout,
        snapshot_max=snapshot_max,
    )


def _password(sec: Section) -> str:
    # Not Section.string: its error would quote the value, and a password is never shown.
    if not sec.has("password"):
        sec.error("password", "missing (the camera's ONVIF password)")
        return ""
    value = sec.raw("password")
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        sec.error("password", "expected a string of 1..128 characters (value not shown)")
        return ""
    return value


def _load_profile(ref: str, base_dir: Path) -> Model:
    if ref != MODEL:
        raise ProfileError([f"the onvif driver has one model, {show(MODEL)}, not {show(ref)}"])
    return CAMERA


class CameraLink:
    """The :class:`~drivers.driver.Bus` of a camera: nothing to keep open (one request per
    connection), there so ``status.json`` lists it like any medium."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        return

    async def run(self) -> None:
        # Nothing to reopen (each request has its own connection): idle for the agent's life,
        # as the supervisor expects of a bus task.
        await asyncio.Event().wait()

    async def close(self) -> None:
        return

    def status(self) -> dict[str, Any]:
        return {"port": self._name, "open": True, "error": None}


def build(name: str, model: Model, settings: object, ctx: BuildContext) -> OnvifCamera:
    assert isinstance(settings, CameraSettings)
    key = _bus_of(settings)
    ctx.buses.setdefault(key, CameraLink(key))
    # The camera reads the agent's clock for its drift and its retry backoff.
    return OnvifCamera(name, settings, ctx.clock or SystemClock())


def _bus_of(settings: object) -> str:
    assert isinstance(settings, CameraSettings)
    return f"{settings.host}:{settings.port}"


DRIVER: Final = Driver(
    name=NAME, parse=parse, load_profile=_load_profile, build=build, bus_of=_bus_of
)

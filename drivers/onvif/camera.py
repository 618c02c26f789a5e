"""An ONVIF camera as a :class:`drivers.device.Device`: health, events, stills.

Points (short names; the agent prefixes the device name, ``cam-01/online``):

- ``online``: the camera answered ``GetSystemDateAndTime`` this poll;
- ``clock_drift``: camera clock minus ours, seconds (a camera whose clock is off
  stamps its recordings wrongly, and refuses WS-Security tokens past a few
  minutes);
- ``tamper``: any tamper detector reports true (scene changed, covered/too dark,
  blurred: ONVIF Analytics' ``tns1:VideoSource/GlobalSceneChange/*``,
  ``ImageTooDark``, ``ImageTooBlurry``, ``ImageTooBright``, and the
  ``tns1:RuleEngine/TamperDetector/Tamper`` rule);
- ``motion``: ``tns1:VideoSource/MotionAlarm`` or the cell motion detector.

``tamper`` and ``motion`` come from a PullPoint subscription (:meth:`watch`),
which the camera starts with the current state (``PropertyOperation`` =
``Initialized``); ``action("snapshot")`` fetches a still.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar
from xml.etree.ElementTree import Element

from agent.clock import Clock, wall_ms
from drivers.device import DriverError, Reading, Report
from drivers.onvif import soap
from drivers.onvif.client import ClientError, OnvifClient

__all__ = ["CameraSettings", "OnvifCamera", "Still"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

POINTS: Final = ("online", "clock_drift", "tamper", "motion")
# PullMessages: how long the camera may hold the request open waiting for an event
# (its long poll), and how many notifications one answer may carry.
PULL_TIMEOUT_S: Final = 5
PULL_LIMIT: Final = 32
# The subscription lives this long unless renewed; renewed when less than half is left.
SUBSCRIPTION_S: Final = 60
# Re-subscribing after an error: first after 1 s, doubling to 30 s.
RESUBSCRIBE_MIN: Final = 1.0
RESUBSCRIBE_MAX: Final = 30.0
JPEG_SOI: Final = b"\xff\xd8"

# Topic (without its namespace prefix) → (point, data item holding the state).
_TOPICS: Final = {
    "VideoSource/MotionAlarm": ("motion", "State"),
    "RuleEngine/CellMotionDetector/Motion": ("motion", "IsMotion"),
    "VideoSource/GlobalSceneChange/ImagingService": ("tamper", "State"),
    "VideoSource/GlobalSceneChange/AnalyticsService": ("tamper", "State"),
    "VideoSource/ImageTooDark/ImagingService": ("tamper", "State"),
    "VideoSource/ImageTooDark/AnalyticsService": ("tamper", "State"),
    "VideoSource/ImageTooBlurry/ImagingService": ("tamper", "State"),
    "VideoSource/ImageTooBlurry/AnalyticsService": ("tamper", "State"),
    "VideoSource/ImageTooBright/ImagingService": ("tamper", "State"),
    "RuleEngine/TamperDetector/Tamper": ("tamper", "IsTamper"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CameraSettings:
    """One camera's configuration (validated by the agent's configuration schema)."""

    host: str
    port: int = 80
    credentials: soap.Credentials
    timeout: float = 5.0  # seconds per request (a PullMessages adds its long-poll time)
    snapshot_max: int = 512 * 1024  # bytes: a larger still is refused, not truncated
    profile: str | None = None  # media profile token; default the camera's first


@dataclass(frozen=True, slots=True, kw_only=True)
class Still:
    """A still image as the camera gave it."""

    data: bytes = field(repr=False)
    ctype: str
    t_ms: int  # when we asked for it (epoch ms, the agent's clock)
    sha256: bytes

    @classmethod
    def of(cls, data: bytes, ctype: str, t_ms: int) -> Still:
        return cls(data=data, ctype=ctype, t_ms=t_ms, sha256=hashlib.sha256(data).digest())


class OnvifCamera:
    """One camera; implements :class:`drivers.device.Device`."""

    def __init__(self, name: str, settings: CameraSettings, clock: Clock) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._client = OnvifClient(
            host=settings.host,
            port=settings.port,
            credentials=settings.credentials,
            timeout=settings.timeout,
        )
        self.info: soap.DeviceInformation | None = None
        self._snapshot_uri: str | None = None
        self._states: dict[str, dict[str, bool]] = {"tamper": {}, "motion": {}}
        self._subscription: soap.Subscription | None = None
        self._renew_at = 0.0

    # -- Device --------------------------------------------------------------

    async def read(self) -> Mapping[str, Reading]:
        """Health: the camera's clock (unauthenticated), and who it is on the first poll."""
        before = self._clock.wall()
        node = await self._call(
            self._client.device_url,
            "GetSystemDateAndTime",
            soap.get_system_date_and_time(),
            secure=False,
        )
        camera_time = self._parsed(soap.parse_system_date_and_time, node)
        after = self._clock.wall()
        # The camera's answer has 1 s resolution; the midpoint halves the round trip's share.
        drift = camera_time - (before + after) / 2
        self._client.clock_offset = drift
        if self.info is None:
            node = await self._call(
                self._client.device_url, "GetDeviceInformation", soap.get_device_information()
            )
            self.info = self._parsed(soap.parse_device_information, node)
            log.info(
                "%s: %s %s firmware %s",
                self.name,
                self.info.manufacturer,
                self.info.model,
                self.info.firmware,
            )
        return {"online": True, "clock_drift": round(drift, 1)}

    async def write(self, point: str, value: Reading) -> Reading:
        raise DriverError(f"{self.name}/{point} is not writable")

    async def action(self, action: str, args: Mapping[str, Reading]) -> object:
        if action != "snapshot":
            raise DriverError(f"{self.name}: unknown action {action!r} (snapshot)")
        return await self.snapshot()

    async def watch(self, report: Report) -> None:
        """Tamper and motion from a PullPoint subscription, forever; re-subscribes on errors."""
        delay = RESUBSCRIBE_MIN
        failing: str | None = None
        while True:
            try:
                await self._subscribe()
                while True:
                    changes = await self._pull()
                    delay = RESUBSCRIBE_MIN
                    if failing is not None:
                        log.info("%s: event subscription back", self.name)
                        failing = None
                    if changes:
                        report(changes)
                    await self._renew_if_due()
            except DriverError as exc:
                self._subscription = None
                if failing is None:
                    # Logged once per outage, not on every retry (STYLE.md, "Polling devices").
                    log.warning("%s: event subscription lost: %s", self.name, exc.reason)
                    failing = exc.reason
                await self._clock.sleep(delay)
                delay = min(delay * 2, RESUBSCRIBE_MAX)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await self._call(
                    subscription.address,
                    "Unsubscribe",
                    soap.unsubscribe(),
                    to=subscription.address,
                )
            except DriverError:
                pass  # the camera drops it at its termination time anyway

    # -- the operations ------------------------------------------------------

    async def snapshot(self) -> Still:
        """GetSnapshotUri (once), then the HTTP fetch of the still with digest auth."""
        t_ms = wall_ms(self._clock)
        if self._snapshot_uri is None:
            profile = self.settings.profile
            if profile is None:
                node = await self._call(self._media_url, "GetProfiles", soap.get_profiles())
                profile = self._parsed(soap.parse_profiles, node)[0]
            node = await self._call(
                self._media_url, "GetSnapshotUri", soap.get_snapshot_uri(profile)
            )
            self._snapshot_uri = self._parsed(soap.parse_snapshot_uri, node)
        try:
            response = await self._client.fetch(
                self._snapshot_uri, max_body=self.settings.snapshot_max
            )
        except ClientError as exc:
            raise DriverError(f"{self.name}: snapshot: {exc.reason}", timeout=exc.timeout) from exc
        ctype = response.content_type
        if ctype != "image/jpeg" or not response.body.startswith(JPEG_SOI):
            raise DriverError(
                f"{self.name}: snapshot is {ctype or 'untyped'} "
                f"({len(response.body)} bytes), not a JPEG image"
            )
        return Still.of(response.body, ctype, t_ms)

    @property
    def _media_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}/onvif/media_service"

    @property
    def _event_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}/onvif/event_service"

    async def _subscribe(self) -> None:
        node = await self._call(
            self._event_url,
            "CreatePullPointSubscription",
            soap.create_pull_point_subscription(SUBSCRIPTION_S),
        )
        self._subscription = self._parsed(soap.parse_create_pull_point_subscription, node)
        self._renew_at = self._clock.monotonic() + SUBSCRIPTION_S / 2

    async def _pull(self) -> dict[str, Reading]:
        assert self._subscription is not None
        address = self._subscription.address
        node = await self._call(
            address,
            "PullMessages",
            soap.pull_messages(PULL_TIMEOUT_S, PULL_LIMIT),
            to=address,
            extra_timeout=PULL_TIMEOUT_S,
        )
        pulled = self._parsed(soap.parse_pull_messages, node)
        return self.apply(pulled.notifications)

    async def _renew_if_due(self) -> None:
        assert self._subscription is not None
        if self._clock.monotonic() < self._renew_at:
            return
        address = self._subscription.address
        await self._call(address, "Renew", soap.renew(SUBSCRIPTION_S), to=address)
        self._renew_at = self._clock.monotonic() + SUBSCRIPTION_S / 2

    def apply(self, notifications: list[soap.Notification]) -> dict[str, Reading]:
        """Fold notifications into the points they change (pure; also used by tests)."""
        changes: dict[str, Reading] = {}
        for note in notifications:
            topic = note.topic.split(":", 1)[-1]
            if topic not in _TOPICS:
                continue
            point, item = _TOPICS[topic]
            source = ",".join(f"{k}={v}" for k, v in sorted(note.source.items()))
            key = f"{topic}|{source}"
            if note.operation == "Deleted":
                self._states[point].pop(key, None)
            else:
                value = note.data.get(item)
                if value is None:
                    continue
                if value.lower() not in ("true", "false", "1", "0"):
                    log.warning("%s: %s %s=%r is not a boolean", self.name, topic, item, value)
                    continue
                self._states[point][key] = value.lower() in ("true", "1")
            changes[point] = any(self._states[point].values())
        return changes

    async def _call(
        self,
        url: str,
        operation: str,
        body: str,
        *,
        secure: bool = True,
        to: str | None = None,
        extra_timeout: float = 0.0,
    ) -> Element:
        try:
            return await self._client.call(
                url, operation, body, secure=secure, to=to, extra_timeout=extra_timeout
            )
        except ClientError as exc:
            raise DriverError(f"{self.name}: {exc.reason}", timeout=exc.timeout) from exc

    def _parsed(self, parse: Callable[[Element], _T], node: Element) -> _T:
        try:
            return parse(node)
        except soap.RemoteProtocolError as exc:
            raise DriverError(f"{self.name}: {exc}") from exc

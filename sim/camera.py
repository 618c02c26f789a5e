"""A simulated ONVIF camera: a plain HTTP server answering real SOAP (Profile S/T subset).

Independent of the agent's driver (STYLE.md, "The simulator is an independent
peer"): it parses requests with the standard library's ElementTree, checks the
WS-Security UsernameToken and HTTP Digest (RFC 7616) itself, and writes its
answers from the ONVIF schemas' shapes. onvif-zeep-async checks it in
``tests/sim/test_camera_sim.py``.

Operations: device service ``GetSystemDateAndTime`` (no authentication, Core
§5.9.4), ``GetDeviceInformation``, ``GetServices``, ``GetCapabilities``; media
``GetProfiles``, ``GetSnapshotUri``; events ``CreatePullPointSubscription``,
``GetEventProperties``; on a subscription ``PullMessages`` (a long poll),
``Renew``, ``Unsubscribe``; and ``GET /snapshot.jpg`` behind HTTP Digest
(SHA-256 and MD5 offered). The scene — motion, tamper, power — is driven by
:meth:`CameraSim.set_motion`, :meth:`set_tamper`, :meth:`set_power` (the live
view's keys), each change queued as a notification on every subscription.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Self
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from sim.jpeg import still

log = logging.getLogger(__name__)

ENV = "http://www.w3.org/2003/05/soap-envelope"
TDS = "http://www.onvif.org/ver10/device/wsdl"
TRT = "http://www.onvif.org/ver10/media/wsdl"
TEV = "http://www.onvif.org/ver10/events/wsdl"
TT = "http://www.onvif.org/ver10/schema"
WSNT = "http://docs.oasis-open.org/wsn/b-2"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
TNS1 = "http://www.onvif.org/ver10/topics"
TER = "http://www.onvif.org/ver10/error"

MAX_REQUEST = 64 * 1024
PROFILE = "profile_1"
REALM = "armoire-sim-camera"
MOTION_TOPIC = "tns1:VideoSource/MotionAlarm"
TAMPER_TOPIC = "tns1:VideoSource/GlobalSceneChange/ImagingService"
SOURCE = "VideoSourceToken"


@dataclass(slots=True)
class _Subscription:
    ident: int
    expires: float  # monotonic
    queue: list[str] = field(default_factory=list)  # NotificationMessage XML
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(text: str | None, default: float) -> float:
    """xs:duration such as PT60S / PT1M (what clients send), else ``default``."""
    if not text:
        return default
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", text.strip())
    if match is None:
        return default
    h, m, s = match.groups()
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)


class CameraSim:
    """``async with CameraSim(username=..., password=...) as cam:`` serves on ``cam.port``."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "cam-secret",  # noqa: S107 (a simulator's test account)
        host: str = "127.0.0.1",
        port: int = 0,
        clock_offset: float = 0.0,
        width: int = 640,
        height: int = 480,
        detail: int = 20,
        name: str = "cam",
    ) -> None:
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.clock_offset = clock_offset  # seconds the camera's clock is ahead of ours
        self.width, self.height, self.detail = width, height, detail
        self.name = name
        self.motion = False
        self.tamper = False
        self.powered = True
        self.frame = 0
        self.snapshots = 0  # stills served
        self.requests: list[str] = []  # operations answered, in order (for tests)
        self.hostile: bytes | None = None  # served instead of every SOAP answer, when set
        # Tamper as a covered lens (a dark, small still) or as a turned camera (a full one).
        self.tamper_covers = True
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._subs: dict[int, _Subscription] = {}
        self._ids = itertools.count(1)
        self._nonces: set[str] = set()

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._listen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._conns):
                writer.transport.abort()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- the scene -------------------------------------------------------------

    def set_motion(self, on: bool) -> None:
        if on != self.motion:
            self.motion = on
            self._notify(MOTION_TOPIC, on, "Changed")

    def set_tamper(self, on: bool) -> None:
        if on != self.tamper:
            self.tamper = on
            self._notify(TAMPER_TOPIC, on, "Changed")

    async def set_power(self, on: bool) -> None:
        """Camera off: it stops answering (listening socket and connections gone)."""
        if on == self.powered:
            return
        self.powered = on
        if on:
            await self._listen()
        else:
            await self._stop()
            self._subs.clear()  # a rebooted camera forgets its subscriptions

    def _notify(self, topic: str, state: bool, operation: str) -> None:
        message = _notification(topic, state, operation, self._now())
        for sub in self._subs.values():
            sub.queue.append(message)
            sub.wake.set()

    def _now(self) -> float:
        return time.time() + self.clock_offset

    # -- HTTP ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = ([*lines[0].split(" "), "", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_REQUEST:
                    await self._respond(writer, 413, b"", "text/plain")
                    return
                body = await reader.readexactly(length) if length else b""
                status, payload, ctype, extra = await self._route(method, target, headers, body)
                await self._respond(writer, status, payload, ctype, extra)
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # The camera is switched off: the handler ends normally (asyncio's server
            # callback of Python 3.11 would log a cancelled handler as an error).
            return
        finally:
            self._handlers.discard(task)
            self._conns.discard(writer)
            writer.close()

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        ctype: str,
        extra: dict[str, list[str]] | None = None,
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(
            status, "Error"
        )
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}"]
        head.append(f"Content-Length: {len(payload)}")
        for name, values in (extra or {}).items():
            head += [f"{name}: {v}" for v in values]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str, dict[str, list[str]] | None]:
        if method == "GET" and target.split("?")[0] == "/snapshot.jpg":
            return self._snapshot(headers, target)
        if method != "POST":
            return 404, b"", "text/plain", None
        try:
            root = ET.fromstring(body)  # noqa: S314 (the simulator's own test clients)
            request = root.find(f"{{{ENV}}}Body")
            assert request is not None
            assert len(request)
            op_elem = request[0]
        except (ET.ParseError, AssertionError):
            return 400, _fault("env:Sender", "ter:WellFormed", "not a SOAP envelope"), _SOAP, None
        op = op_elem.tag.rsplit("}", 1)[-1]
        if op != "GetSystemDateAndTime" and not self._token_ok(root):
            self.requests.append(f"{op}:refused")
            return (
                400,
                _fault(
                    "env:Sender", "ter:NotAuthorized", "The action requested requires authorization"
                ),
                _SOAP,
                None,
            )
        self.requests.append(op)
        if self.hostile is not None:
            return 200, self.hostile, _SOAP, None
        answer = await self._operation(target.split("?")[0], op, op_elem)
        if answer is None:
            return 400, _fault("env:Sender", "ter:ActionNotSupported", op), _SOAP, None
        return 200, _envelope(answer), _SOAP, None

    # -- SOAP operations ---------------------------------------------------------

    async def _operation(self, path: str, op: str, elem: ET.Element) -> str | None:
        now = self._now()
        match path, op:
            case ("/onvif/device_service", "GetSystemDateAndTime"):
                return _date_time(now)
            case ("/onvif/device_service", "GetDeviceInformation"):
                return (
                    f'<tds:GetDeviceInformationResponse xmlns:tds="{TDS}">'
                    "<tds:Manufacturer>Armoire Sim</tds:Manufacturer>"
                    "<tds:Model>SimCam-1</tds:Model>"
                    "<tds:FirmwareVersion>1.0.0</tds:FirmwareVersion>"
                    f"<tds:SerialNumber>{escape(self.name)}-0001</tds:SerialNumber>"
                    "<tds:HardwareId>sim</tds:HardwareId>"
                    "</tds:GetDeviceInformationResponse>"
                )
            case ("/onvif/device_service", "GetServices"):
                services = "".join(
                    f"<tds:Service><tds:Namespace>{ns}</tds:Namespace>"
                    f"<tds:XAddr>{self.url}{p}</tds:XAddr>"
                    "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version>"
                    "</tds:Service>"
                    for ns, p in (
                        (TDS, "/onvif/device_service"),
                        (TRT, "/onvif/media_service"),
                        (TEV, "/onvif/event_service"),
                    )
                )
                return (
                    f'<tds:GetServicesResponse xmlns:tds="{TDS}" xmlns:tt="{TT}">'
                    f"{services}</tds:GetServicesResponse>"
                )
            case ("/onvif/device_service", "GetCapabilities"):
                return (
                    f'<tds:GetCapabilitiesResponse xmlns:tds="{TDS}" xmlns:tt="{TT}">'
                    "<tds:Capabilities>"
                    f"<tt:Device><tt:XAddr>{self.url}/onvif/device_service</tt:XAddr></tt:Device>"
                    f"<tt:Events><tt:XAddr>{self.url}/onvif/event_service</tt:XAddr>"
                    "<tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
                    "<tt:WSPullPointSupport>true</tt:WSPullPointSupport>"
                    "<tt:WSPausableSubscriptionManagerInterfaceSupport>false"
                    "</tt:WSPausableSubscriptionManagerInterfaceSupport></tt:Events>"
                    f"<tt:Media><tt:XAddr>{self.url}/onvif/media_service</tt:XAddr>"
                    "<tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast>"
                    "<tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>"
                    "</tt:StreamingCapabilities></tt:Media>"
                    "</tds:Capabilities></tds:GetCapabilitiesResponse>"
                )
            case ("/onvif/media_service", "GetProfiles"):
                return (
                    f'<trt:GetProfilesResponse xmlns:trt="{TRT}" xmlns:tt="{TT}">'
                    f'<trt:Profiles token="{PROFILE}" fixed="true"><tt:Name>main</tt:Name>'
                    "</trt:Profiles></trt:GetProfilesResponse>"
                )
            case ("/onvif/media_service", "GetSnapshotUri"):
                token = elem.findtext(f"{{{TRT}}}ProfileToken", "")
                if token != PROFILE:
                    return None
                return (
                    f'<trt:GetSnapshotUriResponse xmlns:trt="{TRT}" xmlns:tt="{TT}"><trt:MediaUri>'
                    f"<tt:Uri>{self.url}/snapshot.jpg</tt:Uri>"
                    "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
                    "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot>"
                    "<tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetSnapshotUriResponse>"
                )
            case ("/onvif/event_service", "GetEventProperties"):
                return _event_properties()
            case ("/onvif/event_service", "CreatePullPointSubscription"):
                life = _duration(elem.findtext(f"{{{TEV}}}InitialTerminationTime"), 60)
                sub = _Subscription(ident=next(self._ids), expires=time.monotonic() + life)
                # ONVIF Core §9.1: a new subscription first gets the current state.
                sub.queue.append(_notification(MOTION_TOPIC, self.motion, "Initialized", now))
                sub.queue.append(_notification(TAMPER_TOPIC, self.tamper, "Initialized", now))
                self._subs[sub.ident] = sub
                return (
                    f'<tev:CreatePullPointSubscriptionResponse xmlns:tev="{TEV}" '
                    f'xmlns:wsnt="{WSNT}" xmlns:wsa="{WSA}">'
                    "<tev:SubscriptionReference>"
                    f"<wsa:Address>{self.url}/onvif/subscription/{sub.ident}</wsa:Address>"
                    "</tev:SubscriptionReference>"
                    f"<wsnt:CurrentTime>{_iso(now)}</wsnt:CurrentTime>"
                    f"<wsnt:TerminationTime>{_iso(now + life)}</wsnt:TerminationTime>"
                    "</tev:CreatePullPointSubscriptionResponse>"
                )
        if path.startswith("/onvif/subscription/"):
            found = self._subscription(path)
            if found is None:
                return None
            match op:
                case "PullMessages":
                    return await self._pull(found, elem, now)
                case "Renew":
                    life = _duration(elem.findtext(f"{{{WSNT}}}TerminationTime"), 60)
                    found.expires = time.monotonic() + life
                    return (
                        f'<wsnt:RenewResponse xmlns:wsnt="{WSNT}">'
                        f"<wsnt:TerminationTime>{_iso(now + life)}</wsnt:TerminationTime>"
                        f"<wsnt:CurrentTime>{_iso(now)}</wsnt:CurrentTime></wsnt:RenewResponse>"
                    )
                case "Unsubscribe":
                    self._subs.pop(found.ident, None)
                    return f'<wsnt:UnsubscribeResponse xmlns:wsnt="{WSNT}"/>'
        return None

    def _subscription(self, path: str) -> _Subscription | None:
        try:
            ident = int(path.rsplit("/", 1)[-1])
        except ValueError:
            return None
        sub = self._subs.get(ident)
        if sub is not None and sub.expires < time.monotonic():
            del self._subs[ident]
            return None
        return sub

    async def _pull(self, sub: _Subscription, elem: ET.Element, now: float) -> str:
        timeout = min(_duration(elem.findtext(f"{{{TEV}}}Timeout"), 5), 60)
        limit = int(elem.findtext(f"{{{TEV}}}MessageLimit", "10") or 10)
        if not sub.queue:
            sub.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await sub.wake.wait()
        taken, sub.queue[:] = sub.queue[:limit], sub.queue[limit:]
        now = self._now()
        return (
            f'<tev:PullMessagesResponse xmlns:tev="{TEV}" xmlns:wsnt="{WSNT}" xmlns:tt="{TT}" '
            f'xmlns:tns1="{TNS1}">'
            f"<tev:CurrentTime>{_iso(now)}</tev:CurrentTime>"
            f"<tev:TerminationTime>{_iso(now + max(0.0, sub.expires - time.monotonic()))}"
            "</tev:TerminationTime>" + "".join(taken) + "</tev:PullMessagesResponse>"
        )

    # -- authentication ----------------------------------------------------------

    def _token_ok(self, root: ET.Element) -> bool:
        """WS-Security UsernameToken, PasswordDigest (ONVIF Core §5.12.2)."""
        token = root.find(f"{{{ENV}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
        if token is None:
            return False
        user = token.findtext(f"{{{WSSE}}}Username", "")
        password = token.findtext(f"{{{WSSE}}}Password", "")
        nonce = token.findtext(f"{{{WSSE}}}Nonce", "")
        created = token.findtext(f"{{{WSU}}}Created", "")
        try:
            raw_nonce = base64.b64decode(nonce)
        except ValueError:
            return False
        expected = base64.b64encode(
            hashlib.sha1(raw_nonce + created.encode() + self.password.encode()).digest()  # noqa: S324
        ).decode()
        return user == self.username and secrets.compare_digest(password, expected)

    def _snapshot(
        self, headers: dict[str, str], target: str
    ) -> tuple[int, bytes, str, dict[str, list[str]] | None]:
        auth = headers.get("authorization", "")
        if not self._digest_ok(auth, "GET", target):
            nonce = secrets.token_hex(16)
            self._nonces.add(nonce)
            challenges = [
                f'Digest realm="{REALM}", qop="auth", algorithm={alg}, nonce="{nonce}", '
                f'opaque="sim"'
                for alg in ("SHA-256", "MD5")
            ]
            return 401, b"", "text/plain", {"WWW-Authenticate": challenges}
        self.frame += 1
        self.snapshots += 1
        image = still(
            width=self.width,
            height=self.height,
            frame=self.frame,
            motion=self.motion,
            covered=self.tamper and self.tamper_covers,
            detail=self.detail,
        )
        return 200, image, "image/jpeg", None

    def _digest_ok(self, header: str, method: str, uri: str) -> bool:
        if not header.lower().startswith("digest "):
            return False
        params = {
            k.lower(): v.strip('"')
            for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', header[len("digest ") :])
        }
        algorithm = params.get("algorithm", "MD5")
        hashes = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}
        if algorithm not in hashes or params.get("nonce") not in self._nonces:
            return False

        def h(text: str) -> str:
            return hashes[algorithm](text.encode()).hexdigest()

        ha1 = h(f"{self.username}:{REALM}:{self.password}")
        ha2 = h(f"{method}:{params.get('uri', '')}")
        expected = h(
            f"{ha1}:{params['nonce']}:{params.get('nc', '')}:{params.get('cnonce', '')}:auth:{ha2}"
        )
        return (
            params.get("username") == self.username
            and params.get("uri") == uri
            and secrets.compare_digest(params.get("response", ""), expected)
        )


_SOAP = "application/soap+xml; charset=utf-8"


def _envelope(body: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="{ENV}">'
        f"<env:Body>{body}</env:Body></env:Envelope>"
    ).encode()


def _fault(code: str, subcode: str, reason: str) -> bytes:
    return _envelope(
        f'<env:Fault xmlns:ter="{TER}"><env:Code><env:Value>{code}</env:Value>'
        f"<env:Subcode><env:Value>{subcode}</env:Value></env:Subcode></env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{escape(reason)}</env:Text></env:Reason>'
        "</env:Fault>"
    )


def _date_time(now: float) -> str:
    d = datetime.fromtimestamp(now, UTC)
    return (
        f'<tds:GetSystemDateAndTimeResponse xmlns:tds="{TDS}" xmlns:tt="{TT}">'
        "<tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>"
        "<tt:DaylightSavings>false</tt:DaylightSavings>"
        "<tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
        f"<tt:UTCDateTime><tt:Time><tt:Hour>{d.hour}</tt:Hour><tt:Minute>{d.minute}</tt:Minute>"
        f"<tt:Second>{d.second}</tt:Second></tt:Time>"
        f"<tt:Date><tt:Year>{d.year}</tt:Year><tt:Month>{d.month}</tt:Month>"
        f"<tt:Day>{d.day}</tt:Day></tt:Date></tt:UTCDateTime>"
        "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
    )


def _notification(topic: str, state: bool, operation: str, now: float) -> str:
    return (
        "<wsnt:NotificationMessage>"
        f'<wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">'
        f"{topic}</wsnt:Topic>"
        f"<wsnt:Message><tt:Message UtcTime={quoteattr(_iso(now))} "
        f'PropertyOperation="{operation}">'
        f'<tt:Source><tt:SimpleItem Name="Source" Value="{SOURCE}"/></tt:Source>'
        f'<tt:Data><tt:SimpleItem Name="State" Value="{str(state).lower()}"/></tt:Data>'
        "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
    )


def _event_properties() -> str:
    return (
        f'<tev:GetEventPropertiesResponse xmlns:tev="{TEV}" xmlns:wsnt="{WSNT}" '
        f'xmlns:wstop="http://docs.oasis-open.org/wsn/t-1" xmlns:tns1="{TNS1}">'
        "<tev:TopicNamespaceLocation>http://www.onvif.org/onvif/ver10/topics/topicns.xml"
        "</tev:TopicNamespaceLocation><wsnt:FixedTopicSet>true</wsnt:FixedTopicSet>"
        "<wstop:TopicSet/>"
        "<wsnt:TopicExpressionDialect>http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"
        "</wsnt:TopicExpressionDialect>"
        "<tev:MessageContentFilterDialect>http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter"
        "</tev:MessageContentFilterDialect>"
        "<tev:MessageContentSchemaLocation>http://www.onvif.org/onvif/ver10/schema/onvif.xsd"
        "</tev:MessageContentSchemaLocation></tev:GetEventPropertiesResponse>"
    )

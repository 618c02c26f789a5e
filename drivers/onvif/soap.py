"""The few ONVIF SOAP operations the camera driver uses, sans-IO, on defusedxml.

Requests are built as text from fixed templates (values are XML-escaped);
responses are parsed by :func:`parse` with ``defusedxml`` (no DTD, no entity
expansion, no external resources: a billion-laughs or XXE body is refused with
the reason) after their size was checked against :data:`MAX_RESPONSE`. Each
``parse_*`` function takes the SOAP Body's first child and returns typed data,
or raises :class:`RemoteProtocolError` saying which element is wrong.

Operations (ONVIF Core spec 8.x/9.x; Media spec 5.x; WS-BaseNotification):
GetSystemDateAndTime, GetDeviceInformation (device service); GetProfiles,
GetSnapshotUri (media service); CreatePullPointSubscription, PullMessages,
Renew, Unsubscribe (event service). Requests carry a WS-Security UsernameToken
with PasswordDigest (ONVIF Core §5.12.2), except GetSystemDateAndTime, which a
device must answer without authentication (Core §5.9.4) and which we need
before we can know the camera's clock.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from xml.etree.ElementTree import Element  # the type only; parsing is defusedxml's
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

__all__ = [
    "MAX_RESPONSE",
    "DeviceInformation",
    "Notification",
    "PullMessages",
    "RemoteProtocolError",
    "SoapFault",
    "Subscription",
    "envelope",
    "parse",
]

# Largest SOAP response accepted: a PullMessagesResponse with our MessageLimit of
# notifications is a few KiB, GetProfiles for a multi-sensor camera tens of KiB.
MAX_RESPONSE: Final = 256 * 1024
# Above this, parsing is moved off the event loop (about 1 ms of expat per 40 KiB
# on a small ARM core): the client checks it, this module only states it.
PARSE_INLINE_MAX: Final = 16 * 1024
# Deepest element nesting in any response we read (a Notification sits at ~10).
MAX_DEPTH: Final = 32

NS: Final = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
}
# A URI naming the digest scheme, not a password.
_DIGEST_TYPE: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
_BASE64: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)

# SOAP 1.2 "action" media-type parameters (the WSDLs' soapAction values).
ACTIONS: Final = {
    "GetSystemDateAndTime": "http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTime",
    "GetDeviceInformation": "http://www.onvif.org/ver10/device/wsdl/GetDeviceInformation",
    "GetProfiles": "http://www.onvif.org/ver10/media/wsdl/GetProfiles",
    "GetSnapshotUri": "http://www.onvif.org/ver10/media/wsdl/GetSnapshotUri",
    "CreatePullPointSubscription": (
        "http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionRequest"
    ),
    "PullMessages": (
        "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesRequest"
    ),
    "Renew": "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewRequest",
    "Unsubscribe": "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeRequest",
}


class RemoteProtocolError(Exception):
    """The camera's answer is not the SOAP we asked for (malformed, hostile, wrong shape)."""


class SoapFault(RemoteProtocolError):
    """A well-formed SOAP Fault (e.g. ``ter:NotAuthorized``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"SOAP fault {code}: {reason}")
        self.code = code
        self.reason = reason


# -- requests ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A camera account; ``repr`` never shows the password (it is never logged)."""

    username: str
    # Secret: not in repr (logs), nor in the configuration's canonical form (its digest).
    password: str = field(repr=False, metadata={"secret": True})


def username_token(creds: Credentials, *, nonce: bytes, created: datetime) -> str:
    """WS-Security UsernameToken with PasswordDigest = B64(SHA1(nonce + created + password))."""
    stamp = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    digest = hashlib.sha1(nonce + stamp.encode() + creds.password.encode()).digest()  # noqa: S324 (WS-Security's own choice)
    return (
        f'<wsse:Security xmlns:wsse="{NS["wsse"]}" xmlns:wsu="{NS["wsu"]}" s:mustUnderstand="1">'
        "<wsse:UsernameToken>"
        f"<wsse:Username>{escape(creds.username)}</wsse:Username>"
        f'<wsse:Password Type="{_DIGEST_TYPE}">{base64.b64encode(digest).decode()}'
        "</wsse:Password>"
        f'<wsse:Nonce EncodingType="{_BASE64}">{base64.b64encode(nonce).decode()}</wsse:Nonce>'
        f"<wsu:Created>{stamp}</wsu:Created>"
        "</wsse:UsernameToken></wsse:Security>"
    )


def envelope(body: str, *, security: str = "", to: str | None = None) -> bytes:
    """A SOAP 1.2 envelope around ``body`` (already XML), with optional headers."""
    headers = security
    if to is not None:
        headers += f'<wsa:To xmlns:wsa="{NS["wsa"]}">{escape(to)}</wsa:To>'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS["s"]}"><s:Header>{headers}</s:Header>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def get_system_date_and_time() -> str:
    return f'<tds:GetSystemDateAndTime xmlns:tds="{NS["tds"]}"/>'


def get_device_information() -> str:
    return f'<tds:GetDeviceInformation xmlns:tds="{NS["tds"]}"/>'


def get_profiles() -> str:
    return f'<trt:GetProfiles xmlns:trt="{NS["trt"]}"/>'


def get_snapshot_uri(profile: str) -> str:
    return (
        f'<trt:GetSnapshotUri xmlns:trt="{NS["trt"]}">'
        f"<trt:ProfileToken>{escape(profile)}</trt:ProfileToken></trt:GetSnapshotUri>"
    )


def create_pull_point_subscription(termination_s: int) -> str:
    return (
        f'<tev:CreatePullPointSubscription xmlns:tev="{NS["tev"]}">'
        f"<tev:InitialTerminationTime>PT{termination_s}S</tev:InitialTerminationTime>"
        "</tev:CreatePullPointSubscription>"
    )


def pull_messages(timeout_s: int, limit: int) -> str:
    return (
        f'<tev:PullMessages xmlns:tev="{NS["tev"]}">'
        f"<tev:Timeout>PT{timeout_s}S</tev:Timeout>"
        f"<tev:MessageLimit>{limit}</tev:MessageLimit></tev:PullMessages>"
    )


def renew(termination_s: int) -> str:
    return (
        f'<wsnt:Renew xmlns:wsnt="{NS["wsnt"]}">'
        f"<wsnt:TerminationTime>PT{termination_s}S</wsnt:TerminationTime></wsnt:Renew>"
    )


def unsubscribe() -> str:
    return f'<wsnt:Unsubscribe xmlns:wsnt="{NS["wsnt"]}"/>'


# -- responses ---------------------------------------------------------------


def _q(prefix: str, local: str) -> str:
    return f"{{{NS[prefix]}}}{local}"


def parse(data: bytes) -> Element:
    """The first child of the SOAP Body of ``data``; :class:`SoapFault` for a Fault.

    Size is checked first, then defusedxml parses (refusing DTDs, entities and
    external references), then the nesting depth is bounded.
    """
    if len(data) > MAX_RESPONSE:
        raise RemoteProtocolError(f"SOAP response of {len(data)} bytes (at most {MAX_RESPONSE})")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise RemoteProtocolError(f"hostile XML refused: {type(exc).__name__}: {exc}") from exc
    except SafeET.ParseError as exc:
        raise RemoteProtocolError(f"malformed XML: {exc}") from exc
    except (ValueError, UnicodeError) as exc:
        raise RemoteProtocolError(f"malformed XML: {exc}") from exc
    _check_depth(root)
    if root.tag != _q("s", "Envelope"):
        raise RemoteProtocolError(f"root element is {root.tag[:80]!r}, not a SOAP 1.2 Envelope")
    body = root.find("s:Body", NS)
    if body is None or len(body) == 0:
        raise RemoteProtocolError("SOAP Envelope without a Body element")
    first: Element = body[0]
    if first.tag == _q("s", "Fault"):
        code = first.findtext("s:Code/s:Subcode/s:Value", "", NS) or first.findtext(
            "s:Code/s:Value", "?", NS
        )
        reason = first.findtext("s:Reason/s:Text", "", NS) or ""
        raise SoapFault(code.strip()[:80], reason.strip()[:200])
    return first


def _check_depth(root: Element) -> None:
    stack: list[tuple[Element, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RemoteProtocolError(f"XML nested deeper than {MAX_DEPTH} elements")
        stack.extend((child, depth + 1) for child in node)


def _expect(node: Element, prefix: str, local: str) -> None:
    if node.tag != _q(prefix, local):
        raise RemoteProtocolError(f"expected {prefix}:{local}, got {node.tag[:80]!r}")


def _text(node: Element, path: str, what: str) -> str:
    found = node.find(path, NS)
    if found is None or found.text is None:
        raise RemoteProtocolError(f"{what}: element {path} missing")
    return found.text.strip()


def _int(node: Element, path: str, what: str, low: int, high: int) -> int:
    text = _text(node, path, what)
    if not re.fullmatch(r"[0-9]{1,4}", text) or not low <= int(text) <= high:
        raise RemoteProtocolError(f"{what}: {path} = {text[:20]!r} is not in {low}..{high}")
    return int(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInformation:
    manufacturer: str
    model: str
    firmware: str
    serial: str


def parse_device_information(node: Element) -> DeviceInformation:
    _expect(node, "tds", "GetDeviceInformationResponse")
    what = "GetDeviceInformationResponse"
    return DeviceInformation(
        manufacturer=_text(node, "tds:Manufacturer", what)[:64],
        model=_text(node, "tds:Model", what)[:64],
        firmware=_text(node, "tds:FirmwareVersion", what)[:64],
        serial=_text(node, "tds:SerialNumber", what)[:64],
    )


def parse_system_date_and_time(node: Element) -> float:
    """The camera's UTC clock as a Unix time (s)."""
    _expect(node, "tds", "GetSystemDateAndTimeResponse")
    what = "GetSystemDateAndTimeResponse"
    utc = node.find("tds:SystemDateAndTime/tt:UTCDateTime", NS)
    if utc is None:
        raise RemoteProtocolError(f"{what}: no UTCDateTime")
    try:
        stamp = datetime(
            _int(utc, "tt:Date/tt:Year", what, 1970, 9999),
            _int(utc, "tt:Date/tt:Month", what, 1, 12),
            _int(utc, "tt:Date/tt:Day", what, 1, 31),
            _int(utc, "tt:Time/tt:Hour", what, 0, 23),
            _int(utc, "tt:Time/tt:Minute", what, 0, 59),
            _int(utc, "tt:Time/tt:Second", what, 0, 60) % 60,
            tzinfo=UTC,
        )
    except ValueError as exc:  # e.g. 31 February
        raise RemoteProtocolError(f"{what}: {exc}") from exc
    return stamp.timestamp()


def parse_profiles(node: Element) -> list[str]:
    """The media profile tokens, in the camera's order."""
    _expect(node, "trt", "GetProfilesResponse")
    tokens = [p.get("token", "") for p in node.findall("trt:Profiles", NS)]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise RemoteProtocolError("GetProfilesResponse: no profile with a token")
    return tokens


def parse_snapshot_uri(node: Element) -> str:
    _expect(node, "trt", "GetSnapshotUriResponse")
    uri = _text(node, "trt:MediaUri/tt:Uri", "GetSnapshotUriResponse")
    if not re.fullmatch(r"https?://[^\s]{1,2000}", uri):
        raise RemoteProtocolError(f"GetSnapshotUriResponse: {uri[:80]!r} is not an http(s) URI")
    return uri


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    address: str  # the PullPoint's endpoint (wsa:Address)
    current: float | None  # camera's time then, Unix s
    termination: float | None  # when the camera drops it unless renewed, Unix s


def parse_create_pull_point_subscription(node: Element) -> Subscription:
    _expect(node, "tev", "CreatePullPointSubscriptionResponse")
    what = "CreatePullPointSubscriptionResponse"
    address = _text(node, "tev:SubscriptionReference/wsa:Address", what)
    if not re.fullmatch(r"https?://[^\s]{1,2000}", address):
        raise RemoteProtocolError(f"{what}: {address[:80]!r} is not an http(s) address")
    return Subscription(
        address=address,
        current=_time(node.findtext("wsnt:CurrentTime", None, NS)),
        termination=_time(node.findtext("wsnt:TerminationTime", None, NS)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One ``wsnt:NotificationMessage``: its topic and its Data simple items."""

    topic: str  # e.g. "tns1:VideoSource/MotionAlarm"
    source: dict[str, str]
    data: dict[str, str]
    operation: str  # "Initialized", "Changed", "Deleted" (or "" when absent)
    utc: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PullMessages:
    current: float | None
    termination: float | None
    notifications: list[Notification]


def parse_pull_messages(node: Element) -> PullMessages:
    _expect(node, "tev", "PullMessagesResponse")
    return PullMessages(
        current=_time(node.findtext("tev:CurrentTime", None, NS)),
        termination=_time(node.findtext("tev:TerminationTime", None, NS)),
        notifications=list(_notifications(node)),
    )


def _notifications(node: Element) -> Iterator[Notification]:
    for i, message in enumerate(node.findall("wsnt:NotificationMessage", NS)):
        topic = (message.findtext("wsnt:Topic", "", NS) or "").strip()
        inner = message.find("wsnt:Message/tt:Message", NS)
        if not topic or inner is None:
            raise RemoteProtocolError(
                f"PullMessagesResponse: notification {i} without Topic/Message"
            )
        yield Notification(
            topic=topic[:200],
            source=_items(inner.find("tt:Source", NS)),
            data=_items(inner.find("tt:Data", NS)),
            operation=inner.get("PropertyOperation", "")[:20],
            utc=_time(inner.get("UtcTime")),
        )


def _items(node: Element | None) -> dict[str, str]:
    if node is None:
        return {}
    return {
        item.get("Name", "")[:64]: item.get("Value", "")[:256]
        for item in node.findall("tt:SimpleItem", NS)
    }


_XSD_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d)?")


def _time(text: str | None) -> float | None:
    """An xs:dateTime as Unix time; None when absent. Without a zone it is taken as UTC."""
    if text is None:
        return None
    match = _XSD_TIME.fullmatch(text.strip())
    if match is None:
        raise RemoteProtocolError(f"{text[:40]!r} is not an xs:dateTime")
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise RemoteProtocolError(f"{text[:40]!r}: {exc}") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    value = stamp.timestamp()
    if not math.isfinite(value):
        raise RemoteProtocolError(f"{text[:40]!r} is not a finite time")
    return value

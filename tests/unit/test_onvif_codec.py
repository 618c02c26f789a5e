"""ONVIF driver's sans-IO parts: digest auth, the HTTP response parser, the SOAP parsers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from drivers.onvif import digest, soap
from drivers.onvif.camera import CameraSettings, OnvifCamera
from drivers.onvif.http import NEED_DATA, HttpError, ResponseParser

FIXTURES = Path(__file__).parent.parent / "fixtures" / "onvif"

# -- digest (RFC 7616) ---------------------------------------------------------

RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", '
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_digest__rfc7616_example(algorithm: str, response: str) -> None:
    """The RFC 7616 §3.9.1 example: a camera with either algorithm lets us fetch its still."""
    challenges = {c.algorithm: c for c in digest.parse_challenges(RFC7616_CHALLENGE)}
    header = digest.authorization(
        challenges[algorithm],
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        nc=1,
    )
    assert f'response="{response}"' in header
    assert "nc=00000001" in header
    assert 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"' in header


def test_digest__prefers_sha256() -> None:
    """SHA-256 is used when the camera offers it next to MD5."""
    assert digest.parse_challenges(RFC7616_CHALLENGE)[0].algorithm == "SHA-256"


def test_digest__unsupported_only_is_refused() -> None:
    with pytest.raises(digest.DigestError, match="supported algorithm"):
        digest.parse_challenges('Basic realm="x", Digest realm="x", nonce="n", algorithm=SHA-512')


@given(st.text(max_size=300))
def test_digest__arbitrary_header_only_digest_error(text: str) -> None:
    """Whatever a camera puts in WWW-Authenticate, the driver gets a DigestError or challenges."""
    try:
        found = digest.parse_challenges(text)
    except digest.DigestError:
        return
    assert found


# -- HTTP ----------------------------------------------------------------------

RESPONSES = {
    "length": (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\n\r\nhello",
        b"hello",
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        b"hello",
    ),
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_http__any_split_gives_the_same_response(name: str, cuts: list[int]) -> None:
    """However TCP splits an answer, the same body comes out."""
    raw, body = RESPONSES[name]
    parser = ResponseParser(max_body=1000)
    result = None
    last = 0
    for cut in [*sorted(c % (len(raw) + 1) for c in cuts), len(raw)]:
        out = parser.receive(raw[last:cut])
        last = cut
        if out is not NEED_DATA:
            result = out
    assert result is not None
    assert result.body == body


def test_http__close_delimited_body() -> None:
    parser = ResponseParser(max_body=100)
    assert parser.receive(b"HTTP/1.0 200 OK\r\n\r\nabc") is NEED_DATA
    assert parser.eof().body == b"abc"


def test_http__announced_oversize_refused_from_the_header() -> None:
    """A camera announcing a gigabyte is refused before a byte of the body is kept."""
    parser = ResponseParser(max_body=1000)
    with pytest.raises(HttpError, match="1000000000 bytes announced"):
        parser.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")


def test_http__endless_chunks_refused_at_the_limit() -> None:
    parser = ResponseParser(max_body=100)
    parser.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(6):
        parser.receive(b"10\r\n" + b"x" * 16 + b"\r\n")
    with pytest.raises(HttpError, match="longer than 100"):
        parser.receive(b"10\r\n" + b"x" * 16 + b"\r\n")


def test_http__endless_head_refused() -> None:
    parser = ResponseParser(max_body=100)
    line = b"X-Junk: " + b"a" * 1000 + b"\r\n"
    for _ in range(15):
        parser.receive(line)
    with pytest.raises(HttpError, match="head longer"):
        parser.receive(line * 2)


@settings(max_examples=300)
@given(st.binary(max_size=600), st.binary(max_size=200))
def test_http__arbitrary_bytes_only_http_error(head: bytes, more: bytes) -> None:
    """Garbage from a camera gives HttpError or a response, never another exception."""
    parser = ResponseParser(max_body=256)
    try:
        parser.receive(head)
        parser.receive(more)
        parser.eof()
    except HttpError:
        pass


# -- SOAP ----------------------------------------------------------------------


def test_soap__pull_messages_fixture() -> None:
    """A camera's PullMessagesResponse (cell motion + tamper rule + an unrelated topic)."""
    node = soap.parse((FIXTURES / "pull_messages.xml").read_bytes())
    pulled = soap.parse_pull_messages(node)
    assert [n.topic for n in pulled.notifications] == [
        "tns1:RuleEngine/CellMotionDetector/Motion",
        "tns1:RuleEngine/TamperDetector/Tamper",
        "tns1:Monitoring/ProcessorUsage",
    ]
    assert pulled.notifications[0].data == {"IsMotion": "true"}
    assert pulled.notifications[0].utc == pytest.approx(1796119204.25)
    assert pulled.termination - pulled.current == 60  # type: ignore[operator]
    camera = _camera()
    assert camera.apply(pulled.notifications) == {"motion": True, "tamper": True}


def test_soap__events_fold_per_source() -> None:
    """Tamper stays raised while any detector says so; Deleted clears that detector."""
    camera = _camera()

    def note(topic: str, source: str, value: str, op: str = "Changed") -> soap.Notification:
        return soap.Notification(
            topic=topic, source={"Source": source}, data={"State": value}, operation=op, utc=None
        )

    dark = "tns1:VideoSource/ImageTooDark/ImagingService"
    scene = "tns1:VideoSource/GlobalSceneChange/ImagingService"
    assert camera.apply([note(dark, "v1", "true")]) == {"tamper": True}
    assert camera.apply([note(scene, "v1", "true")]) == {"tamper": True}
    assert camera.apply([note(dark, "v1", "false")]) == {"tamper": True}
    assert camera.apply([note(scene, "v1", "true", "Deleted")]) == {"tamper": False}
    assert camera.apply([note(scene, "v1", "maybe")]) == {}


def test_soap__system_date_and_time_is_utc() -> None:
    node = soap.parse((FIXTURES / "system_date_and_time.xml").read_bytes())
    assert soap.parse_system_date_and_time(node) == 1796119087.0  # 2026-12-01T09:58:07Z


def test_soap__snapshot_uri() -> None:
    node = soap.parse((FIXTURES / "snapshot_uri.xml").read_bytes())
    assert soap.parse_snapshot_uri(node) == "http://192.0.2.10/onvif-http/snapshot?Profile_1"


def test_soap__fault_names_its_subcode() -> None:
    with pytest.raises(soap.SoapFault, match="ter:NotAuthorized: Sender not Authorized"):
        soap.parse((FIXTURES / "fault_not_authorized.xml").read_bytes())


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&lol9;</s:Body></s:Envelope>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&x;</s:Body></s:Envelope>"""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (BILLION_LAUGHS, "hostile XML refused: DTDForbidden"),
        (XXE, "hostile XML refused: DTDForbidden"),
        (b"<s:Envelope", "malformed XML"),
        (b"\xff\xfe<a/>", "malformed XML"),
        (b"<a>" * 40 + b"</a>" * 40, "nested deeper than 32"),
        (b"<html><body>login</body></html>", "not a SOAP 1.2 Envelope"),
        (b" " * (soap.MAX_RESPONSE + 1), "at most 262144"),
    ],
)
def test_soap__hostile_or_malformed_refused_with_reason(data: bytes, reason: str) -> None:
    """A camera (or whoever answers in its place) cannot make us expand entities or read
    files, and gets a reason the log can show."""
    started = time.process_time()
    with pytest.raises(soap.RemoteProtocolError, match=reason):
        soap.parse(data)
    assert time.process_time() - started < 5  # a sanity bound, not a performance threshold


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_soap__arbitrary_bytes_only_remote_error(data: bytes) -> None:
    try:
        node = soap.parse(data)
    except soap.RemoteProtocolError:
        return
    for parser in (soap.parse_pull_messages, soap.parse_snapshot_uri):
        with pytest.raises(soap.RemoteProtocolError):
            parser(node)


_items = st.dictionaries(
    st.text(alphabet="abcXYZ", min_size=1, max_size=5),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8),
    max_size=3,
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["tns1:VideoSource/MotionAlarm", "tns1:Device/Trigger/DigitalInput", "x"]
            ),
            _items,
            _items,
            st.sampled_from(["Initialized", "Changed", "Deleted"]),
        ),
        max_size=5,
    )
)
def test_soap__generated_notifications_round_trip(
    notes: list[tuple[str, dict[str, str], dict[str, str], str]],
) -> None:
    """Whatever topics and items a camera sends, parsing gives them back as sent."""
    from xml.sax.saxutils import escape, quoteattr

    def items(kind: str, values: dict[str, str]) -> str:
        inner = "".join(
            f"<tt:SimpleItem Name={quoteattr(k)} Value={quoteattr(v)}/>" for k, v in values.items()
        )
        return f"<tt:{kind}>{inner}</tt:{kind}>"

    body = "".join(
        f"<wsnt:NotificationMessage><wsnt:Topic>{escape(topic)}</wsnt:Topic><wsnt:Message>"
        f'<tt:Message UtcTime="2026-01-01T00:00:00Z" PropertyOperation="{op}">'
        f"{items('Source', source)}{items('Data', data)}</tt:Message></wsnt:Message>"
        "</wsnt:NotificationMessage>"
        for topic, source, data, op in notes
    )
    xml = (
        f'<s:Envelope xmlns:s="{soap.NS["s"]}" xmlns:tev="{soap.NS["tev"]}" '
        f'xmlns:wsnt="{soap.NS["wsnt"]}" xmlns:tt="{soap.NS["tt"]}"><s:Body>'
        f"<tev:PullMessagesResponse>{body}</tev:PullMessagesResponse></s:Body></s:Envelope>"
    ).encode()
    pulled = soap.parse_pull_messages(soap.parse(xml))
    assert [(n.topic, n.source, n.data, n.operation) for n in pulled.notifications] == [
        (t.strip(), s, d, o) for t, s, d, o in notes
    ]


def test_soap__password_never_in_repr_nor_token() -> None:
    """Credentials never reach a log line through repr, and the token carries a digest only."""
    creds = soap.Credentials(username="admin", password="s3cret-pw")
    assert "s3cret" not in repr(creds)
    assert "s3cret" not in repr(CameraSettings(host="h", credentials=creds))
    from datetime import UTC, datetime

    token = soap.username_token(creds, nonce=b"n" * 16, created=datetime(2026, 1, 1, tzinfo=UTC))
    assert "s3cret" not in token
    assert "PasswordDigest" in token


def _camera() -> OnvifCamera:
    creds = soap.Credentials(username="u", password="p")
    return OnvifCamera("cam-01", CameraSettings(host="127.0.0.1", credentials=creds), FakeClock())

"""The console's line protocol (agent/console.py) and maintenance tokens (agent/maintenance.py).

Tokens are built and signed by the reference central post's code (central/commander.py),
written from PROTOCOL.md independently of the agent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.console import MAX_LINE, EndOfInput, Interrupt, Line, LineEditor
from agent.maintenance import TokenRefused, TokenVerifier
from agent.security.trust import TrustStore
from central.commander import init_central_keys, install_trust, load_key, make_token, token_text

GW = "cab-0001"
NOW = 1_780_000_000_000


def _lines(data: bytes) -> list[object]:
    return LineEditor().feed(data)[1]


def test_editor__backspace_edits_and_crlf_ends_one_line() -> None:
    """A technician's corrected typo would run as typed, or CRLF would run two commands."""
    echo, events = LineEditor().feed(b"statsu\x7f\x7fus\r\n")
    assert events == [Line("status")]
    assert echo == b"statsu\b \b\b \bus\r\n"


def test_editor__ctrl_c_drops_the_line_and_ctrl_d_ends_only_when_empty() -> None:
    """Ctrl-C would run the half-typed command; Ctrl-D mid-line would hang up."""
    assert _lines(b"override lamp\x03") == [Interrupt()]
    assert _lines(b"abc\x04") == []
    assert _lines(b"\x04") == [EndOfInput()]


def test_editor__arrow_keys_are_swallowed() -> None:
    """An arrow key would put "[A" into the command."""
    assert _lines(b"he\x1b[Alp\x1bOB\r") == [Line("help")]


def test_editor__token_after_login_is_not_echoed() -> None:
    """The token would show on the screen and in any terminal log."""
    echo, events = LineEditor().feed(b"login SECRETTOKEN\r")
    assert events == [Line("login SECRETTOKEN")]
    assert b"SECRET" not in echo
    assert echo.startswith(b"login ")


def test_editor__long_line_is_refused_whole() -> None:
    """A line past the limit would be cut into a command, or memory would grow without bound."""
    editor = LineEditor()
    _, events = editor.feed(b"x" * (MAX_LINE * 3) + b"\rhelp\r")
    assert events == [Line("x" * MAX_LINE, too_long=True), Line("help")]


@given(st.lists(st.binary(max_size=300), max_size=30))
def test_editor__arbitrary_bytes_never_crash_and_stay_bounded(chunks: list[bytes]) -> None:
    """Line noise on the console port would crash the console or grow without bound."""
    editor = LineEditor()
    for chunk in chunks:
        echo, events = editor.feed(chunk)
        assert len(echo) <= 3 * (len(chunk) + MAX_LINE)  # Ctrl-U erases a whole line
        for event in events:
            if isinstance(event, Line):
                assert len(event.text) <= MAX_LINE
                assert event.text.isascii()
                assert event.text.isprintable()
        assert len(editor.pending) <= MAX_LINE


@given(st.binary(min_size=1, max_size=200), st.integers(min_value=1, max_value=50))
def test_editor__same_lines_whatever_the_chunking(data: bytes, cut: int) -> None:
    """A line split over two reads (a slow serial port) would become two commands."""
    whole = LineEditor().feed(data)[1]
    editor = LineEditor()
    split = editor.feed(data[:cut])[1] + editor.feed(data[cut:])[1]
    assert split == whole


# -- tokens ---------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, TrustStore]:
    central = tmp_path / "central"
    init_central_keys(central)
    install_trust(central, tmp_path)
    return central, TrustStore.load(tmp_path, gw=GW)


def _verifier(trust: TrustStore) -> TokenVerifier:
    return TokenVerifier(gw=GW, trust=trust, skew_s=5, max_validity_s=86400)


def _token(central: Path, key: str = "maintenance", **fields: object) -> str:
    body = make_token(gw=GW, sub="tech-7", now_ms=NOW, ttl_s=3600)
    return token_text(load_key(central / f"{key}.key"), {**body, **fields})


def test_token__valid_opens(keys: tuple[Path, TrustStore]) -> None:
    """A technician with a token from the control room could not log in."""
    central, trust = keys
    token = _verifier(trust).check_text(_token(central), NOW + 1000)
    assert (token.sub, token.exp) == ("tech-7", NOW + 3600_000)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("other-gateway", "wrong-gateway"),
        ("operator-key", "not-authorised"),
        ("garbage", "bad-request"),
        ("flipped", "bad-signature"),
    ],
)
def test_token__refused_with_reason(keys: tuple[Path, TrustStore], case: str, reason: str) -> None:
    """A token that should not open this cabinet's console would, or say nothing of why."""
    central, trust = keys
    now = NOW + 1000
    match case:
        case "expired":
            text, now = _token(central), NOW + 3601_000 + 10_000
        case "other-gateway":
            text = _token(central, gw="cab-9999")
        case "operator-key":
            text = _token(central, key="operator")
        case "garbage":
            text = "not a token!"
        case _:
            good = _token(central)
            text = good[:-10] + ("A" if good[-10] != "A" else "B") + good[-9:]
    with pytest.raises(TokenRefused) as refused:
        _verifier(trust).check_text(text, now)
    assert refused.value.reason == reason


@given(st.text(max_size=2000))
def test_token__arbitrary_text_is_refused_never_crashes(text: str) -> None:
    """Pasting junk at the login prompt would crash the console."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    trust = TrustStore.empty(Ed25519PrivateKey.generate().public_key(), gw=GW)
    with pytest.raises(TokenRefused):
        _verifier(trust).check_text(text, NOW)

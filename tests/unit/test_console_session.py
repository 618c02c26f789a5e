"""Console sessions on the fake clock (agent/console_session.py): idle and expiry ends, the
``console/session`` point, lockout and its end. A real Agent (not run), a real trust store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock, wall_ms
from agent.config import load_config
from agent.console_session import (
    IDLE_TIMEOUT_S,
    LOCKOUT_S,
    MAX_FAILURES,
    SESSION_POINT,
    ConsoleState,
    Session,
    redact,
)
from agent.runtime import Agent
from agent.security.keys import init_gateway_keys
from central.commander import init_central_keys, install_trust, load_key, make_token, token_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Agent, FakeClock, Path]]:
    shutil.copy(FIXTURES / "good.toml", tmp_path / "agent.toml")
    shutil.copy(FIXTURES / "fan-ctl.toml", tmp_path / "fan-ctl.toml")
    data = tmp_path / "data"
    init_gateway_keys(data)
    central = tmp_path / "central"
    init_central_keys(central)
    install_trust(central, data)
    clock = FakeClock()
    agent = Agent(load_config(tmp_path / "agent.toml"), clock)
    try:
        yield agent, clock, central
    finally:
        agent.outbox.close()
        agent.instance.release()


def _token(agent: Agent, clock: FakeClock, central: Path, ttl_s: float = 3600) -> str:
    body = make_token(gw=agent.config.gateway, sub="tech-1", now_ms=wall_ms(clock), ttl_s=ttl_s)
    return token_text(load_key(central / "maintenance.key"), body)


def _session_point(agent: Agent) -> object:
    sample = agent.points.get(SESSION_POINT)
    return None if sample is None else sample.value


async def test_session__ends_when_idle_and_at_exp(rig: tuple[Agent, FakeClock, Path]) -> None:
    """A laptop left logged in would keep the cabinet's maintenance session (and its door
    alarm off) open for good."""
    agent, clock, central = rig
    state = ConsoleState(agent)
    session = Session(state, where="test")
    assert "session open" in await session.handle(f"login {_token(agent, clock, central)}")
    assert _session_point(agent) is True
    await clock.advance(IDLE_TIMEOUT_S - 1)
    assert session.check_end() is None  # still open
    await session.handle("status")  # input: the idle time starts again
    await clock.advance(IDLE_TIMEOUT_S - 1)
    assert session.check_end() is None
    await clock.advance(2)
    assert session.check_end() == "idle for 15 min"
    assert _session_point(agent) is False
    assert "needs a maintenance session" in await session.handle("release fan/speed")

    await session.handle(f"login {_token(agent, clock, central, ttl_s=60)}")
    await session.handle("status")
    await clock.advance(61)
    assert session.check_end() == "token expired"
    assert _session_point(agent) is False


async def test_session__lockout_ends_after_its_time(rig: tuple[Agent, FakeClock, Path]) -> None:
    """A lockout would never end, or a technician's good token would work during it."""
    agent, clock, central = rig
    state = ConsoleState(agent)
    one, other = Session(state, where="serial"), Session(state, where="socket")
    for i in range(MAX_FAILURES):
        answer = await (one if i % 2 else other).handle("login AAAA")
        assert "login refused" in answer
    assert "locked out" in answer
    assert "locked out" in await one.handle(f"login {_token(agent, clock, central)}")
    await clock.advance(LOCKOUT_S)
    assert "session open" in await one.handle(f"login {_token(agent, clock, central)}")


def test_redact__snmp_secrets_never_shown_by_config_show() -> None:
    """`config show` on a technician's screen would show the SNMP community and USM keys."""
    text = (
        'community = "lan\\"secret"\n'
        'v3 = { user = "armoire", auth_key = "auth-secret-1", priv_key = \'priv-secret-1\' }\n'
        'name = "community"\n'
    )
    shown = redact(text)
    for secret in ("lan", "auth-secret-1", "priv-secret-1"):
        assert secret not in shown
    assert 'community = "***"' in shown
    assert 'user = "armoire"' in shown
    assert 'name = "community"' in shown
    assert redact(shown) == shown


CAMERA = """
[[devices]]
name = "cam-01"
driver = "onvif"
profile = "onvif-camera"
host = "192.0.2.10"
username = "armoire"
password = "cam-pw-4711"
"""


async def test_session__config_show_hides_camera_passwords(tmp_path: Path) -> None:
    """The camera password in the configuration never appears on a technician's screen."""
    shutil.copy(FIXTURES / "fan-ctl.toml", tmp_path / "fan-ctl.toml")
    (tmp_path / "agent.toml").write_text((FIXTURES / "good.toml").read_text() + CAMERA)
    data = tmp_path / "data"
    init_gateway_keys(data)
    central = tmp_path / "central"
    init_central_keys(central)
    install_trust(central, data)
    clock = FakeClock()
    agent = Agent(load_config(tmp_path / "agent.toml"), clock)
    try:
        session = Session(ConsoleState(agent), where="test")
        await session.handle(f"login {_token(agent, clock, central)}")
        shown = await session.handle("config show")
        assert 'password = "***"' in shown
        assert "cam-pw-4711" not in shown
        (tmp_path / "new.toml").write_text(
            (tmp_path / "agent.toml").read_text().replace("cam-pw-4711", "other-pw-0815")
        )
        diff = await session.handle("config diff new.toml")
        assert "pw-" not in diff
    finally:
        agent.outbox.close()
        agent.instance.release()

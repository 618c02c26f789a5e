"""The technician console end to end: a real pty as the board's console port, pexpect as the
technician's terminal, the agent as its own process, audits seen by the reference central post.

Tokens are issued with the central post's tools (central/commander.py), as `armoire-central
token` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pexpect.fdpexpect
import pytest

from central.commander import load_key, make_token, token_text
from sim.broker import Mosquitto
from tests.integration.conftest import NO_SCHEDULE, Site, open_site

pytestmark = pytest.mark.integration

WAIT_S = 30.0
PROMPT = re.compile(rb"armoire[>#] ")
APPLY_DEADLINE_S = 6  # the agent's probation of a new configuration, shortened for the test


class Terminal:
    """A technician's terminal on a pty (pexpect), driven without blocking the event loop
    (the simulated cabinet answers the agent from this process's loop)."""

    def __init__(self, child: pexpect.spawnbase.SpawnBase) -> None:
        self.child = child

    async def expect(self, pattern: Any, wait: float = WAIT_S) -> str:
        await asyncio.to_thread(self.child.expect, pattern, timeout=wait)
        return self.text

    @property
    def text(self) -> str:
        before = self.child.before or b""
        after = self.child.after if isinstance(self.child.after, bytes) else b""
        return (before + after).decode(errors="replace")

    async def run(self, line: str, wait: float = WAIT_S) -> str:
        """Type ``line`` and Enter; what came back up to the next prompt."""
        self.child.send(line.encode() + b"\r")
        await self.expect(PROMPT, wait)
        return (self.child.before or b"").decode(errors="replace")


@contextlib.contextmanager
def console_pty(dev: Path) -> Iterator[pexpect.fdpexpect.fdspawn]:
    """A pty pair: DATA/dev/console names the agent's end, pexpect holds the other."""
    master, slave = os.openpty()
    tty.setraw(master)
    dev.mkdir(parents=True, exist_ok=True)
    link = dev / "console"
    link.unlink(missing_ok=True)
    link.symlink_to(os.ttyname(slave))
    child = pexpect.fdpexpect.fdspawn(master, timeout=WAIT_S)
    try:
        yield child
    finally:
        # The slave stays open until here: a pty whose every slave is closed reads EIO.
        os.close(slave)
        os.close(master)


@pytest.fixture
async def console(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Site, Terminal]]:
    """A running gateway with a technician's terminal on its console port, at the prompt."""
    monkeypatch.setenv("ARMOIRE_APPLY_DEADLINE", str(APPLY_DEADLINE_S))
    with console_pty(tmp_path / "dev") as child:
        async with open_site(tmp_path, broker, root_extra=NO_SCHEDULE) as site:
            term = Terminal(child)
            await term.expect(PROMPT)
            yield site, term


def _token(site: Site, *, key: str = "maintenance", gw: str | None = None,
           ttl_s: float = 3600, age_s: float = 0) -> str:  # fmt: skip
    now = int((time.time() - age_s) * 1000)
    body = make_token(gw=gw or site.gw, sub="tech-42", now_ms=now, ttl_s=ttl_s)
    return token_text(load_key(site.central_dir / f"{key}.key"), body)


def _audits(site: Site, code: str) -> list[dict[str, Any]]:
    return [e for e in site.central.events if e["kind"] == "audit" and e["code"] == code]


async def _audited(site: Site, code: str, n: int = 1) -> list[dict[str, Any]]:
    await site.central.wait_for(lambda c: len(_audits(site, code)) >= n, WAIT_S)
    return _audits(site, code)


async def test_console__read_only_commands_without_a_token(
    console: tuple[Site, Terminal],
) -> None:
    """A technician at 3 a.m. could not see what the cabinet is doing without a token."""
    site, term = console
    assert "override POINT VALUE" in await term.run("help")
    status = await term.run("status")
    for part in ("link:", "mode:", "outbox:", "clock:", "reboot cause:", "session: none"):
        assert part in status, status
    devices = await term.run("devices")
    assert "lamp-01" in devices
    assert "bus rs485_1" in devices
    await site.central.wait_for(lambda c: f"{site.gw}:lamp-03/level" in c.latest, WAIT_S)
    points = await term.run("points lamp-03/*")
    assert re.search(r"lamp-03/level\s+100\s+good", points), points
    assert "env/" not in points
    assert "no active alarms" in await term.run("alarms")
    assert "rules" in await term.run("rules")
    assert "no lighting program" in await term.run("schedule")
    assert "console on serial port" in await term.run("log 50")
    keys = await term.run("keys")
    assert f"gateway {site.gw}" in keys
    assert re.search(r"kid\s+[0-9a-f]{16}", keys)
    # Maintenance commands need a session; nothing was written.
    assert "needs a maintenance session" in await term.run("override lamp-03/level 10")
    assert site.cabinet.snapshot()["lamp-03"]["level"] == 100
    assert "unknown command" in await term.run("frobnicate")
    # Ctrl-C drops a half-typed line; an over-long line is refused whole.
    term.child.send(b"override lamp-03/level 5\x03")
    await term.expect(PROMPT)
    assert "line too long" in await term.run("x" * 2000)


async def test_console__refused_tokens_and_lockout_are_audited(
    console: tuple[Site, Terminal],
) -> None:
    """A stale, foreign or operator-signed token would open the console, or guessing would
    go on forever, or the control room would not know someone tried."""
    site, term = console
    cases = {
        "expired": _token(site, ttl_s=60, age_s=600),
        "wrong-gateway": _token(site, gw="cab-other-0002"),
        "not-authorised": _token(site, key="operator"),
        "bad-request": "bm90IGEgdG9rZW4",
    }
    for reason, token in cases.items():
        answer = await term.run(f"login {token}")
        assert f"login refused: {reason}" in answer, answer
        assert token not in answer  # never echoed
    assert "locked out" in await term.run("login garbage")  # the fifth failure
    # Locked: even a good token is refused now.
    assert "locked out" in await term.run(f"login {_token(site)}")
    assert "session: none" in await term.run("status")
    failed = await _audited(site, "console.login_failed", 6)
    assert [e["data"]["reason"] for e in failed] == [*cases, "bad-request", "locked-out"]
    assert failed[0]["data"]["sub"] == "tech-42"


async def test_console__override_lapses_and_every_action_is_audited(
    console: tuple[Site, Terminal],
) -> None:
    """A technician's override would not reach the lamp, outlive its hold, or go unaudited."""
    site, term = console
    token = _token(site)
    answer = await term.run(f"login {token}")
    assert "session open for tech-42" in answer
    assert token not in answer
    [login] = await _audited(site, "console.login")
    assert login["data"]["sub"] == "tech-42"
    assert re.search(r"console/session\s+true", await term.run("points console/*"))

    assert "at priority 8 for 5 s" in await term.run("override lamp-03/level 30 5")
    assert site.cabinet.snapshot()["lamp-03"]["level"] == 30  # written before the answer
    await site.central.wait_for(
        lambda c: any(r.point == "lamp-03/level" and r.value == 30 for r in c.readings), WAIT_S
    )
    # The hold lapses: back to the default by itself.
    await site.central.wait_for(lambda c: c.latest[f"{site.gw}:lamp-03/level"].value == 100, WAIT_S)
    assert "capped at 3600 s" in await term.run("override lamp-02/level 20 99999")
    assert "released" in await term.run("release lamp-02/level")
    assert '"boot"' in await term.run("action ping")
    assert "is outside" in await term.run("override lamp-02/level 400")
    assert "trust store serial 1" in await term.run("trust show")
    assert "session closed" in await term.run("logout")
    assert re.search(r"console/session\s+false", await term.run("points console/*"))

    # A session ends by itself at the token's exp.
    assert "session open" in await term.run(f"login {_token(site, ttl_s=2)}")
    await term.expect("session ended: token expired")
    await term.expect(PROMPT)
    assert re.search(r"console/session\s+false", await term.run("points console/*"))
    assert "needs a maintenance session" in await term.run("release lamp-03/level")

    overrides = await _audited(site, "console.override", 4)
    assert all(e["data"]["sub"] == "tech-42" for e in overrides)
    assert [e["data"].get("point") or e["data"]["action"] for e in overrides] == [
        "lamp-03/level", "lamp-02/level", "lamp-02/level", "ping",
    ]  # fmt: skip
    assert overrides[0]["data"]["prio"] == 8


async def test_console__config_apply_kept_when_healthy_rolled_back_when_not(
    console: tuple[Site, Terminal],
) -> None:
    """A technician's new configuration would not take effect, or a bad one would leave the
    cabinet's devices unpolled instead of coming back by itself."""
    site, term = console
    config = site.data / "agent.toml"
    original = config.read_text()
    assert "needs a maintenance session" in await term.run("config show")
    await term.run(f"login {_token(site)}")
    assert "[uplink]" in await term.run("config show")

    good = site.data / "good.toml"
    good.write_text(original.replace("batch_interval = 1.0", "batch_interval = 2.0"))
    assert "valid" in await term.run("config check good.toml")
    assert "+batch_interval = 2.0" in await term.run("config diff good.toml")
    bad_syntax = site.data / "broken.toml"
    bad_syntax.write_text(original.replace("[uplink]", "[uplink"))
    assert "invalid configuration" in await term.run("config apply broken.toml")

    term.child.send(b"config apply good.toml\r")
    await term.expect("restarts with it now")
    [applied] = await _audited(site, "config.applied")
    assert applied["data"]["sub"] == "tech-42"
    assert "batch_interval = 2.0" in config.read_text()
    await term.expect(PROMPT)  # the restarted agent's console

    # A device address that answers nothing: valid, but the agent is not healthy.
    bad = site.data / "bad.toml"
    bad.write_text(re.sub(r"address = \d+", "address = 200", config.read_text(), count=1))
    assert bad.read_text() != config.read_text()
    await term.run(f"login {_token(site)}")
    term.child.send(b"config apply bad.toml\r")
    await term.expect("restarts with it now")
    [rolled] = await _audited(site, "config.rolled_back")
    assert rolled["data"]["sub"] == "tech-42"
    assert "not answering" in rolled["data"]["reason"]
    assert await term.expect("ROLLED BACK")
    assert "batch_interval = 2.0" in config.read_text()
    assert "address = 200" not in config.read_text()


async def test_console__armoire_console_attaches_over_the_socket(
    console: tuple[Site, Terminal],
) -> None:
    """`armoire console` on the gateway would not reach the agent's console."""
    site, _ = console
    child = pexpect.spawn(
        sys.executable,
        ["-m", "agent", "console", "--data", str(site.data)],
        timeout=WAIT_S,
    )
    try:
        term = Terminal(child)
        await term.expect(PROMPT)
        assert f"gateway {site.gw}" in await term.run("keys")
        child.send(b"\x04")  # Ctrl-D on an empty line: leave
        await asyncio.to_thread(child.expect, pexpect.EOF, timeout=WAIT_S)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

"""What the uplink says in the log while the broker cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import FakeClock
from agent.config import UplinkConfig
from agent.messages import MessageFactory
from agent.outbox import Outbox
from agent.security.cose import Signer
from agent.uplink import Uplink
from sim.broker import free_port

# Real seconds to wait for a connection attempt to fail and the uplink to park in its backoff.
ATTEMPT_S = 10.0


async def _parked(clock: FakeClock) -> None:
    deadline = time.monotonic() + ATTEMPT_S
    while not clock.sleepers:
        assert time.monotonic() < deadline, "the uplink never went back to its backoff"
        await asyncio.sleep(0.005)


async def test_uplink__reconnect_attempts_name_the_broker_then_are_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After the first "uplink unreachable" (without host) the retries were silent: a
    technician could not tell whether the gateway still tried, nor where to."""
    clock = FakeClock()
    port = free_port()  # nothing listens there
    config = UplinkConfig(
        broker=f"mqtt://127.0.0.1:{port}", host="127.0.0.1", port=port, tls=False,
        keepalive=30, session_expiry=60, reconnect_min=10.0, reconnect_max=10.0,
        ca_file=None, cert_file=None, key_file=None,
    )  # fmt: skip
    outbox = Outbox.open(tmp_path, clock)
    factory = MessageFactory(gw="gw-1", boot=1, signer=Signer(Ed25519PrivateKey.generate()))
    uplink = Uplink(
        config=config, outbox=outbox, factory=factory, clock=clock, birth_points={},
        config_digest=b"\0" * 32, agent_version="test",
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="agent.uplink")
    task = asyncio.create_task(uplink.run())
    try:
        for _ in range(15):  # 16 attempts, 7..13 s apart (10 s +/- jitter): about 160 s
            await _parked(clock)
            await clock.advance(13.0)
        await _parked(clock)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        outbox.close()
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    for n in (1, 2, 3):
        assert lines[n - 1].startswith(f"uplink unreachable (127.0.0.1:{port}), attempt {n}: ")
    assert "next attempt in" in lines[0]
    # Then at most one line a minute while the error stays the same: 16 attempts, few lines.
    assert 3 < len(lines) <= 3 + 3, lines

"""Device link state and retry policy (pure parts of the poller)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.config import load_config
from agent.points import Points
from agent.polling import DevicePoller, LinkState, link_state
from drivers.modbus.transport import RtuTransport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config"


@pytest.mark.parametrize(
    ("misses", "state"),
    [(0, LinkState.ONLINE), (1, LinkState.DEGRADED), (2, LinkState.DEGRADED),
     (3, LinkState.COMM_FAIL), (50, LinkState.COMM_FAIL)],
)  # fmt: skip
def test_link_state__table(misses: int, state: LinkState) -> None:
    """A device would be declared failed too early (one lost frame) or never."""
    assert link_state(misses, miss_limit=3) is state


def test_next_interval__backoff_grows_capped_and_jittered() -> None:
    """A dead device would steal the line from healthy ones, or never be retried."""
    config = load_config(FIXTURES / "good.toml")
    device = config.devices[0]
    poller = DevicePoller(
        device=device,
        transport=RtuTransport("/nonexistent"),
        points=Points(),
        clock=FakeClock(),
        polling=config.polling,
        rng=random.Random(7),
    )
    assert poller.next_interval() == device.poll
    intervals = []
    for misses in range(3, 20):
        poller.misses, poller.state = misses, LinkState.COMM_FAIL
        intervals.append(poller.next_interval())
    cap = config.polling.backoff_max
    assert all(device.poll <= i <= cap * 1.1 for i in intervals)
    assert intervals[0] < intervals[3]
    assert max(intervals) > cap * 0.85

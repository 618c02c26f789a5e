"""The simulator's live view, drawn in a real terminal (a detached tmux pane) and read back.

tmux keeps a screen of a known size; ``capture-pane`` returns what a person would
see. A line that wrapped shows up as two screen lines, which ``capture-pane -J``
joins again (it also keeps trailing spaces): the two captures, right-stripped,
are equal only if nothing wrapped.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("tmux") is None,
        reason="tmux is not installed (make test installs it: scripts/ensure-tmux.sh)",
    ),
]

# Generous: the simulator starts a broker, the agent and the central post first.
WAIT_S = 45.0
# How often the pane is read again while waiting for something to show.
POLL_S = 0.25
# Longer than the test needs: the test quits with `q` well before.
DURATION_S = 120


class Pane:
    """`armoire sim` running in a detached tmux session of its own server."""

    def __init__(self, socket: str, cols: int, rows: int) -> None:
        self.socket = socket
        self.cols, self.rows = cols, rows

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True
        ).stdout

    def screen(self, *, joined: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-J"] if joined else []), "-t", "sim")

    def history(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "sim")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "sim", *keys)

    async def until(self, pattern: str, *, history: bool = False) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            text = self.history() if history else self.screen()
            if re.search(pattern, text, re.MULTILINE):
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"{pattern!r} never showed; the pane:\n{text}")
            await asyncio.sleep(POLL_S)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    # The pid: tmux sockets are per user, and other trees may run this test at the same time.
    socket = f"armoire-test-{os.getpid()}-{tmp_path.name}"
    view = Pane(socket, 80, 24)
    command = (
        f"{sys.executable} -m agent sim --data {tmp_path / 'sim'} --duration {DURATION_S}; "
        "echo EXIT=$?; sleep 600"
    )
    view.tmux("-f", "/dev/null", "new-session", "-d", "-s", "sim", "-x", "80", "-y", "24", command)
    try:
        yield view
    finally:
        # Stop the simulator (and its agent and broker) cleanly, then the tmux server.
        subprocess.run(["tmux", "-L", socket, "send-keys", "-t", "sim", "q"], check=False)
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False, capture_output=True)


def _assert_fits(pane: Pane) -> list[str]:
    lines = [line.rstrip() for line in pane.screen().split("\n")]
    joined = [line.rstrip() for line in pane.screen(joined=True).split("\n")]
    assert lines == joined, "a line wrapped"
    assert all(len(line) <= pane.cols for line in lines)
    assert lines[0].startswith("cab-sim-0001 · up "), "the header scrolled away"
    return lines


async def test_live_view__fits_80x24_shows_alarms_faults_holds_and_quits_cleanly(
    pane: Pane,
) -> None:
    """In 80x24 the view wrapped and its header scrolled away; a failed lamp, a silent
    device or an operator's hold showed nowhere, values of an offline gateway looked
    fresh; quitting printed "link restored" for a link never cut and figures that looked
    contradictory."""
    await pane.until(r"^contactor\s+good\s")
    await pane.until(r"gateway ONLINE")
    lines = _assert_fits(pane)
    table = next(i for i, line in enumerate(lines) if line.startswith("device")) + 1
    names = [line.split()[0] for line in lines[table : table + 11]]
    assert names == [*(f"lamp-0{i}" for i in range(1, 9)), "meter", "env", "contactor"]

    pane.keys("f")  # lamp-01's lamp fails
    pane.keys("5")  # lamp-05's controller loses power
    await pane.until(r"^FAULT lamp-01 reports failure")
    await pane.until(r"^lamp-05\s+COMM_FAIL\s+no answer · last known \(\d+ s ago\)")
    await pane.until(r"^ALARM device\.comm_fail lamp-05 since \d\d:\d\d:\d\d")
    await pane.until(r"^lamp-01\s+FAULT\s+level=")
    _assert_fits(pane)

    pane.keys(":", "write lamp-03/level 30 hold 600", "Enter")
    await pane.until(r"^HOLD lamp-03/level=30 prio 10 0:(09:5\d|10:00) left")
    await pane.until(r"ack done cmd [0-9a-f]{8} value 30")
    small_history = sum(
        bool(re.match(r"\d\d:\d\d:\d\d ", line)) for line in pane.screen().splitlines()
    )
    first = re.search(r"HOLD lamp-03/level=30 prio 10 0:(\d\d):(\d\d)", pane.screen())
    assert first is not None
    # The countdown runs.
    await pane.until(
        rf"HOLD lamp-03/level=30 prio 10 0:(?!{first.group(1)}:{first.group(2)})\d\d:\d\d"
    )
    _assert_fits(pane)

    # The cellular link is cut: the broker tells the central post the gateway is gone,
    # and what it last said is shown as such.
    pane.keys("c")
    await pane.until(r"gateway OFFLINE")
    await pane.until(r"^lamp-02\s+stale\s+gateway offline · last known \(\d+ s ago\)")
    pane.keys("r")
    await pane.until(r"^lamp-02\s+good\s+level=")

    # A bigger terminal gets whole rows and a longer history.
    pane.tmux("resize-window", "-t", "sim", "-x", "160", "-y", "40")
    pane.cols, pane.rows = 160, 40
    assert pane.tmux("display", "-p", "-t", "sim", "#{window_width}x#{window_height}") == "160x40\n"
    await pane.until(r"^lamp-02\s+good\s+level=.*hours=\d+\s*$")
    lines = _assert_fits(pane)
    assert sum(bool(re.match(r"\d\d:\d\d:\d\d ", line)) for line in lines) > small_history

    pane.keys("q")
    text = await pane.until(r"^EXIT=\d+", history=True)
    assert "EXIT=0" in text
    # After the last frame: the simulator's own log is back on the terminal, and the link
    # (restored by the `r` key earlier) is not "restored" a second time on the way out.
    after_view = text.split("EXIT=")[0].split("cab-sim-0001 · up")[-1]
    assert "sim.proxy: link restored" not in after_view
    assert re.search(r"^agent: published \d+ messages in its last run, 0 left", text, re.M)
    assert re.search(r"^central post: verified \d+ messages of this data directory", text, re.M)

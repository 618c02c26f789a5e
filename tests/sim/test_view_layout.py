"""The live view's layout, frame by frame, for terminals of any size (no terminal needed)."""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sim.view import Screen, View


def _screen(devices: int, *, alarms: int = 2, holds: int = 1, recent: int = 30) -> Screen:
    rows = [(f"lamp-{i + 1:02d}", "good", "level=100  on=True  " * 5) for i in range(devices)]
    rows[devices // 2] = (rows[devices // 2][0], "COMM_FAIL", "no answer · last known ...")
    return Screen(
        status=["cab-sim-0001 · up 0:00:01 · gateway ONLINE " + "x" * 100, "central: ..."],
        devices=rows,
        alarms=[f"ALARM device.comm_fail lamp-{i:02d}" for i in range(alarms)],
        holds=[f"HOLD lamp-03/level=30 prio 10 0:09:{59 - i:02d} left" for i in range(holds)],
        recent=[f"12:00:{i:02d} event something" for i in range(recent)],
        footer=["keys: ...", "last action"],
    )


def _view() -> View:
    return View(io.StringIO(), gw="cab-sim-0001", broker="mqtt://x", data=Path("."))


@given(
    cols=st.integers(20, 300),
    rows=st.integers(8, 120),
    devices=st.integers(1, 300),
    alarms=st.integers(0, 20),
)
def test_view__frame_never_wraps_nor_scrolls(
    cols: int, rows: int, devices: int, alarms: int
) -> None:
    """A line longer than the terminal wraps, one line too many scrolls the header away."""
    lines = _view().frame(_screen(devices, alarms=alarms), cols, rows)
    assert len(lines) <= rows - 1
    assert all(len(line) < cols for line in lines)
    assert lines[0].startswith("cab-sim-0001")
    assert lines[-2:] == ["keys: ..."[: cols - 1], "last action"[: cols - 1]]


def test_view__80x24_keeps_room_for_alarms_and_shows_failing_devices_first() -> None:
    """With many devices the alarms panel vanished, or the one device in trouble was
    among those cut off."""
    lines = _view().frame(_screen(40), 80, 24)
    assert len(lines) == 23
    failing = [line for line in lines if "COMM_FAIL" in line]
    assert failing
    assert failing[0].startswith("lamp-21")
    more = [line for line in lines if line.startswith("… ")]
    assert more
    assert "more devices (all good)" in more[0]
    panel = lines[lines.index(next(line for line in lines if line.startswith("── alarms"))) + 1 :]
    assert sum(line.startswith(("ALARM", "HOLD")) for line in panel) >= 3


def test_view__bigger_terminal_shows_every_device_and_more_history() -> None:
    """A big terminal would show as little as an 80x24 one."""
    small = _view().frame(_screen(11), 80, 24)
    big = _view().frame(_screen(11), 200, 60)
    assert sum(line.startswith("lamp-") for line in big) == 11
    assert sum(line.startswith("12:00:") for line in big) > sum(
        line.startswith("12:00:") for line in small
    )
    assert max(len(line) for line in big) > 80

"""The effective wall time: never below the floor, carried by the monotonic clock, persisted."""

from __future__ import annotations

from pathlib import Path

from agent.clock import FakeClock
from agent.timefloor import TIME_FLOOR_FILE, TimeFloor

T0 = 1_800_000_000.0


async def test_time_floor__wall_clock_going_back_does_not_move_it_back(tmp_path: Path) -> None:
    """An RTC reset would make expired commands look valid again."""
    clock = FakeClock(wall=T0)
    floor = TimeFloor(clock, tmp_path)
    assert floor.now_ms() == T0 * 1000  # no floor yet: the wall clock
    floor.witness(int(T0 * 1000))
    await clock.advance(10)
    clock.set_wall(0)  # RTC reset to 1970
    assert floor.now_ms() == T0 * 1000 + 10_000  # carried forward by the monotonic clock
    restarted = TimeFloor(FakeClock(wall=0), tmp_path)
    assert restarted.now_ms() == T0 * 1000  # after a restart: the persisted floor
    clock.set_wall(T0 + 100)
    assert floor.now_ms() == (T0 + 100) * 1000  # a wall clock ahead of the floor is used


def test_time_floor__only_rises(tmp_path: Path) -> None:
    """An older witnessed time would lower the floor and reopen the replay window."""
    floor = TimeFloor(FakeClock(wall=T0), tmp_path)
    floor.witness(2000)
    floor.witness(1000)
    assert floor.floor_ms == 2000
    assert (tmp_path / TIME_FLOOR_FILE).read_text() == "2000\n"


def test_time_floor__unreadable_file_falls_back_to_the_wall_clock(tmp_path: Path) -> None:
    """A damaged floor file would stop the agent instead of weakening one safeguard."""
    (tmp_path / TIME_FLOOR_FILE).write_bytes(b"\xff garbage")
    floor = TimeFloor(FakeClock(wall=T0), tmp_path)
    assert (floor.floor_ms, floor.now_ms()) == (0, T0 * 1000)
    floor.witness(5)
    assert TimeFloor(FakeClock(wall=0), tmp_path).floor_ms == 5


def test_time_floor__write_failure_keeps_the_floor_in_memory(tmp_path: Path) -> None:
    """A read-only data directory would crash command handling."""
    clock = FakeClock(wall=T0)
    floor = TimeFloor(clock, tmp_path / "missing")  # the folder does not exist: writes fail
    floor.witness(int(T0 * 1000) + 60_000)
    assert floor.floor_ms == 0  # nothing persisted: purges stay conservative
    assert floor.now_ms() == int(T0 * 1000) + 60_000

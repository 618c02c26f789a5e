"""The durable outbox on its own: seq, boot, order, in-flight handling (no broker)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.outbox import (
    HARD_LIMIT_FACTOR,
    OUTBOX_FILE,
    SEQ_BLOCK,
    STATE_FILE,
    Evictions,
    MsgClass,
    Outbox,
    OutboxUnavailable,
    Pending,
    UncleanStop,
)


def _item(cls: MsgClass = MsgClass.TELEMETRY, readings: int = 1) -> Pending:
    return Pending(
        cls=cls,
        topic=f"t/{cls.value}",
        build=lambda seq: f"{cls}:{seq}".encode(),
        readings=readings,
    )


def test_outbox__seq_strictly_increases_across_restarts(tmp_path: Path) -> None:
    """A central post would see repeated or reused numbers after a gateway reboot."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    assert box.boot == 1
    first = [box.append(_item()) for _ in range(3)]
    box.close()
    box = Outbox.open(tmp_path, clock)
    assert box.boot == 2
    assert box.last_seq == first[-1]
    assert box.append(_item()) == first[-1] + 1
    box.close()


def test_outbox__payload_built_with_assigned_seq(tmp_path: Path) -> None:
    """Signed messages would carry a seq different from the one they are stored under."""
    box = Outbox.open(tmp_path, FakeClock())
    seqs = box.append_many([_item(), _item(MsgClass.ALARM)])
    records = box.take(10)
    assert {r.seq: r.payload for r in records} == {
        seqs[0]: f"telemetry:{seqs[0]}".encode(),
        seqs[1]: f"alarm:{seqs[1]}".encode(),
    }


def test_outbox__alarms_forwarded_first_then_seq_order(tmp_path: Path) -> None:
    """A door alarm raised during an outage would wait behind hours of telemetry."""
    box = Outbox.open(tmp_path, FakeClock())
    box.append(_item())
    box.append(_item(MsgClass.EVENT))
    alarm = box.append(_item(MsgClass.ALARM))
    box.append(_item())
    order = [r.seq for r in box.take(10)]
    assert order[0] == alarm
    assert order[1:] == sorted(order[1:])


def test_outbox__in_flight_not_taken_twice_and_released_on_failure(tmp_path: Path) -> None:
    """Messages would be published twice concurrently, or lost when the link drops mid-publish."""
    box = Outbox.open(tmp_path, FakeClock())
    for _ in range(4):
        box.append(_item())
    first = box.take(2)
    second = box.take(10)
    assert {r.seq for r in first}.isdisjoint(r.seq for r in second)
    assert box.take(10) == []
    box.release([r.seq for r in first])
    assert [r.seq for r in box.take(10)] == [r.seq for r in first]


def test_outbox__deleted_only_after_done(tmp_path: Path) -> None:
    """A record acknowledged by nobody would vanish from the disk."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    for _ in range(3):
        box.append(_item())
    records = box.take(3)
    box.done(records[0])
    box.close()
    box = Outbox.open(tmp_path, clock)
    assert [r.seq for r in box.take(10)] == [r.seq for r in records[1:]]
    stats = box.statistics()
    assert stats["depth"] == {
        "alarm": 0,
        "audit": 0,
        "ack": 0,
        "event": 0,
        "telemetry": 2,
        "still": 0,
    }


def test_outbox__committed_before_append_returns(tmp_path: Path) -> None:
    """An alarm reported as accepted would be missing after a crash."""
    box = Outbox.open(tmp_path, FakeClock())
    seq = box.append(_item(MsgClass.ALARM))
    # A second, independent connection sees it at once: it is committed.
    other = sqlite3.connect(tmp_path / OUTBOX_FILE)
    assert other.execute("SELECT seq FROM records").fetchall() == [(seq,)]
    other.close()


async def test_outbox__wait_wakes_on_append(tmp_path: Path) -> None:
    """The uplink would sleep while records wait to be sent."""
    import asyncio

    box = Outbox.open(tmp_path, FakeClock())
    waiter = asyncio.create_task(box.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    box.append(_item())
    await asyncio.wait_for(waiter, timeout=5)


@pytest.mark.parametrize("readings", [0, 500])
async def test_outbox__statistics_bytes_and_age(tmp_path: Path, readings: int) -> None:
    """The console and the birth would misreport how much is buffered and for how long."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    box.append(_item(readings=readings))
    appended_ms = int(clock.wall() * 1000)
    stats = box.statistics()
    assert stats["bytes"] == len(f"{MsgClass.TELEMETRY}:0".encode())
    assert stats["oldest_age_s"] == 0
    await clock.advance(90.5)
    box.append(_item())  # a newer record does not make the backlog look younger
    stats = box.statistics()
    assert stats["oldest_ms"] == appended_ms
    assert stats["oldest_age_s"] == 90.5
    (first, _) = box.take(2)
    box.done(first)
    await clock.advance(10)
    assert box.statistics()["oldest_age_s"] == 10  # the oldest left is the second one


def _sized(cls: MsgClass, size: int, readings: int = 0) -> Pending:
    return Pending(cls=cls, topic="t", build=lambda seq: bytes(size), readings=readings)


def _report(seq: int, ev: Evictions) -> Pending:
    return Pending(cls=MsgClass.AUDIT, topic="evt", build=lambda s: json.dumps(ev.ranges).encode())


def test_outbox__evicts_telemetry_before_events_and_keeps_alarms(tmp_path: Path) -> None:
    """A long outage would push out the door alarm instead of routine readings."""
    box = Outbox.open(tmp_path, FakeClock(), capacity_bytes=10_000)
    reports: list[Evictions] = []

    def report(seq: int, ev: Evictions) -> Pending:
        reports.append(ev)
        return _report(seq, ev)

    box.eviction_reporter = report
    alarm = box.append(_sized(MsgClass.ALARM, 1000))
    audit = box.append(_sized(MsgClass.AUDIT, 1000))
    ack = box.append(_sized(MsgClass.ACK, 1000))
    event = box.append(_sized(MsgClass.EVENT, 1000))
    tele = [box.append(_sized(MsgClass.TELEMETRY, 1000, readings=50)) for _ in range(6)]
    assert box.statistics()["bytes"] == 10_000
    assert not reports
    # One more telemetry message: the oldest telemetry goes, nothing else.
    box.append(_sized(MsgClass.TELEMETRY, 1000, readings=50))
    assert reports[0].ranges == [[tele[0], tele[1]]]  # down to 99 % of capacity: two go
    assert reports[0].messages == {"telemetry": 2}
    assert reports[0].readings == 100
    assert box.lost_pending == 100
    # A telemetry batch that reports them takes them off, in the same transaction.
    box.append(Pending(cls=MsgClass.TELEMETRY, topic="t", build=lambda s: b"x", lost=100))
    assert box.lost_pending == 0
    # Fill with events: once telemetry is gone, the oldest events go; alarm/audit/ack stay.
    for _ in range(12):
        box.append(_sized(MsgClass.EVENT, 1000))
    kept = {r.seq for r in box.take(1000)}
    assert {alarm, audit, ack} <= kept
    assert event not in kept
    assert not kept & set(tele)
    stats = box.statistics()
    assert stats["evicted"]["messages"]["alarm"] == 0
    assert stats["evicted"]["messages"]["telemetry"] == 8  # incl. the small one above
    assert stats["bytes"] <= 10_000 * HARD_LIMIT_FACTOR


def test_outbox__alarms_evicted_only_past_hard_limit(tmp_path: Path) -> None:
    """A gateway would fill its flash and stop, or drop alarms while there is still room."""
    box = Outbox.open(tmp_path, FakeClock(), capacity_bytes=10_000)
    box.eviction_reporter = _report
    seqs = [box.append(_sized(MsgClass.ALARM, 1000)) for _ in range(12)]
    assert box.statistics()["evicted"]["messages"]["alarm"] == 0  # 12 000 <= 12 500
    seqs.append(box.append(_sized(MsgClass.ALARM, 1000)))
    stats = box.statistics()
    assert stats["evicted"]["messages"]["alarm"] == 1
    assert stats["bytes"] <= 10_000 * HARD_LIMIT_FACTOR
    remaining = [r.seq for r in box.take(100) if r.cls is MsgClass.ALARM]
    assert seqs[0] not in remaining
    assert seqs[-1] in remaining


def test_outbox__eviction_report_is_durable_with_the_eviction(tmp_path: Path) -> None:
    """After a crash the central post would see a gap that nothing explains."""
    box = Outbox.open(tmp_path, FakeClock(), capacity_bytes=3000)
    box.eviction_reporter = _report
    for _ in range(4):
        box.append(_sized(MsgClass.TELEMETRY, 1000, readings=10))
    # Simulate a crash: no close(), reopen the file.
    box2 = Outbox.open(tmp_path, FakeClock(), capacity_bytes=3000)
    records = box2.take(100)
    reports = [r for r in records if r.cls is MsgClass.AUDIT]
    assert reports, "the outbox.evicted report must be stored with the eviction"
    assert json.loads(reports[0].payload) == [[0, 1]]


def test_outbox__in_flight_records_are_not_evicted(tmp_path: Path) -> None:
    """A record being published would vanish under the uplink, and its PUBACK misaccounted."""
    box = Outbox.open(tmp_path, FakeClock(), capacity_bytes=3000)
    box.eviction_reporter = _report
    first = box.append(_sized(MsgClass.TELEMETRY, 1000))
    (taken,) = box.take(1)
    assert taken.seq == first
    for _ in range(3):
        box.append(_sized(MsgClass.TELEMETRY, 1000))
    assert box.statistics()["evicted"]["messages"]["telemetry"] >= 1  # the store was full
    # Its publish failed: the record goes back and must still be there to be sent again.
    assert box.release_all() == [first]
    stored = box.take(100)
    assert first in [r.seq for r in stored]
    assert box.statistics()["bytes"] == sum(len(r.payload) for r in stored)


def test_outbox__unclean_stop_detected(tmp_path: Path) -> None:
    """A crash or power cut would go unreported, hiding the readings it cost."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    box.append(_item())
    box.close()
    box = Outbox.open(tmp_path, clock)
    assert box.unclean == []
    box.append(_item())
    t_commit = int(clock.wall() * 1000)
    # No close(): the process died.
    box = Outbox.open(tmp_path, clock)
    assert box.unclean == [UncleanStop(boot=2, last_commit_ms=t_commit)]


def test_outbox__unclean_report_survives_a_kill_before_it_is_sent(tmp_path: Path) -> None:
    """Two crashes in a row would leave the first one unreported."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    box.append(_item())
    t_commit = int(clock.wall() * 1000)
    box = Outbox.open(tmp_path, clock)  # boot 2 starts; killed before reporting boot 1
    box = Outbox.open(tmp_path, clock)  # boot 3
    assert [u.boot for u in box.unclean] == [1, 2]
    assert box.unclean[0].last_commit_ms == t_commit
    seqs = box.report_unclean(
        lambda u: Pending(cls=MsgClass.EVENT, topic="evt", build=lambda s: f"{u.boot}".encode())
    )
    assert len(seqs) == 2
    assert box.unclean == []
    assert {r.payload for r in box.take(10)} >= {b"1", b"2"}


def test_outbox__active_alarms_survive_restart(tmp_path: Path) -> None:
    """After a reboot a still-failed device would raise its alarm twice, or a repaired one
    would never be cleared."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    box.raise_alarm(_item(MsgClass.ALARM), code="device.comm_fail", src="lamp-05")
    box.raise_alarm(_item(MsgClass.ALARM), code="device.comm_fail", src="lamp-06")
    box.clear_alarm(_item(MsgClass.ALARM), code="device.comm_fail", src="lamp-06")
    box = Outbox.open(tmp_path, clock)
    assert box.active_alarms == {("device.comm_fail", "lamp-05")}


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"\x00garbage" * 500), id="garbage"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:1000]), id="truncated"),
        pytest.param(
            lambda p: p.write_bytes(p.read_bytes()[:100] + b"\xff" * 200 + p.read_bytes()[300:]),
            id="header-overwritten",
        ),
    ],
)
def test_outbox__corrupt_database_moved_aside_and_numbering_continues(
    tmp_path: Path, damage: Any
) -> None:
    """A damaged flash file would stop the agent, or restart seq where the central post has
    already seen it."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    for _ in range(50):
        box.append(_item())
    last = box.last_seq
    box.close()
    db = tmp_path / OUTBOX_FILE
    damage(db)
    box = Outbox.open(tmp_path, clock)
    assert box.recovery is not None
    moved = tmp_path / box.recovery.moved_to
    assert moved.exists()
    assert moved.name.startswith("outbox.sqlite.corrupt-")
    assert box.boot == 2  # from the side file: boots keep counting
    seq = box.append(_item())
    assert seq > last
    assert seq >= box.recovery.seq_from
    check = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchall()
    assert check == [("ok",)]


def test_outbox__deleted_database_does_not_reuse_seq(tmp_path: Path) -> None:
    """A technician deleting the outbox would make the central post drop new data as duplicates."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    seqs = [box.append(_item()) for _ in range(5)]
    box.close()
    (tmp_path / OUTBOX_FILE).unlink()
    box = Outbox.open(tmp_path, clock)
    assert box.boot == 2
    assert box.append(_item()) > seqs[-1]


def test_outbox__seq_stays_below_reserved_ceiling(tmp_path: Path) -> None:
    """The side file's ceiling would lag behind, and a replaced database would reuse numbers."""
    box = Outbox.open(tmp_path, FakeClock())
    for _ in range(3):
        box.append_many([_item() for _ in range(SEQ_BLOCK // 2)])
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["seq_reserved"] > box.last_seq


def test_outbox__lost_count_survives_restart_and_evicted_carriers(tmp_path: Path) -> None:
    """Evicted readings would go unreported after a restart, or when the very batch that
    reported them is evicted in turn."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock, capacity_bytes=3000)
    box.eviction_reporter = _report
    for _ in range(4):
        box.append(_sized(MsgClass.TELEMETRY, 1000, readings=10))
    assert box.lost_pending == 20
    box.close()
    box = Outbox.open(tmp_path, clock, capacity_bytes=3000)
    box.eviction_reporter = _report
    assert box.lost_pending == 20
    # The batch carrying lost=20 is itself evicted later: its count comes back.
    box.append(Pending(cls=MsgClass.TELEMETRY, topic="t", build=lambda s: bytes(1000), lost=20))
    assert box.lost_pending == 10  # evicted 10 readings to make room, 20 reported
    for _ in range(3):
        box.append(_sized(MsgClass.TELEMETRY, 1000, readings=0))
    # Then: the last batch of 10 readings (+10), the carrier with lost=20 (+20), an empty one.
    assert box.lost_pending == 40


def _forward_all(box: Outbox) -> list[int]:
    """What the uplink would publish, until the outbox is empty."""
    sent = []
    while records := box.take(50):
        for record in records:
            box.done(record)
            sent.append(record.seq)
    return sent


def test_outbox__two_processes_on_one_file_leave_it_startable(tmp_path: Path) -> None:
    """Two agents started on one data directory would leave an outbox whose every append
    fails (UNIQUE constraint on seq), with alarms that can never be sent."""
    clock = FakeClock()
    first = Outbox.open(tmp_path, clock)
    second = Outbox.open(tmp_path, clock)  # what a second agent did before the lock
    seqs = []
    for _ in range(5):
        seqs += first.append_many([_item(), _item(MsgClass.ALARM)])
        seqs += second.append_many([_item(MsgClass.ALARM)])
    assert len(set(seqs)) == len(seqs)
    second.close()
    first.close()
    box = Outbox.open(tmp_path, clock)
    new = box.append(_item(MsgClass.ALARM))
    assert new > max(seqs)
    assert sorted(_forward_all(box)) == sorted([*seqs, new])


@pytest.mark.parametrize("stored_next", [0, 1, 97])
def test_outbox__stored_next_seq_below_records_is_repaired(
    tmp_path: Path, stored_next: int
) -> None:
    """An outbox whose stored next seq is not above its records (the state two agents left:
    next seq 97 with records 97 and 98) would crash every start."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    seqs = box.append_many([_item() for _ in range(97)])
    seqs += box.append_many([_item(MsgClass.ALARM), _item(MsgClass.ALARM)])
    assert seqs[-2:] == [97, 98]
    box.close()
    db = sqlite3.connect(tmp_path / OUTBOX_FILE)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (stored_next,))
    db.close()
    (tmp_path / STATE_FILE).write_text(json.dumps({"boot": 1, "seq_reserved": stored_next}))
    box = Outbox.open(tmp_path, clock)
    assert box.last_seq == 98
    seq = box.append(_item(MsgClass.ALARM))
    assert seq == 99
    assert sorted(_forward_all(box)) == [*seqs, 99]
    box.close()
    box = Outbox.open(tmp_path, clock)
    assert box.append(_item()) == 100


def _freeze(folder: Path) -> None:
    """Make ``folder`` refuse new files, as a read-only or immutable medium does."""
    if os.geteuid() == 0:
        # root ignores permission bits: the immutable attribute binds even root.
        result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot make {folder} immutable here: {result.stderr.decode().strip()}")
    else:
        folder.chmod(0o555)


def _thaw(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


def test_outbox__unwritable_folder_is_reported_not_moved_aside(tmp_path: Path) -> None:
    """A read-only data directory would be taken for corruption and a healthy backlog moved
    aside, or the agent would fail without saying which file and why."""
    data = tmp_path / "data"
    clock = FakeClock()
    box = Outbox.open(data, clock)
    seqs = [box.append(_item(MsgClass.ALARM)) for _ in range(5)]
    box.close()
    before = sorted(p.name for p in data.iterdir())
    _freeze(data)
    try:
        with pytest.raises(OutboxUnavailable) as caught:
            Outbox.open(data, clock)
        assert str(data / OUTBOX_FILE) in str(caught.value)
        assert "for writing" in str(caught.value)
        # The OS's own words, as `ls` or `touch` would report them.
        assert re.search(r"Operation not permitted|Permission denied", str(caught.value))
        assert sorted(p.name for p in data.iterdir()) == before
    finally:
        _thaw(data)
    box = Outbox.open(data, clock)
    assert box.recovery is None
    assert _forward_all(box) == seqs


def test_outbox__release_all_gives_back_every_record_in_flight(tmp_path: Path) -> None:
    """After a lost connection, records taken for it would never be forwarded again."""
    box = Outbox.open(tmp_path, FakeClock())
    seqs = box.append_many([_item() for _ in range(4)])
    taken = box.take(3)
    box.done(taken[0])
    assert box.inflight == 2
    assert box.release_all() == [r.seq for r in taken[1:]]
    assert box.inflight == 0
    assert [r.seq for r in box.take(10)] == seqs[1:]


def test_outbox__reports_in_flight_count_and_oldest_record_time(tmp_path: Path) -> None:
    """A record stranded in flight would be invisible on site and in the control room."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    assert box.oldest_ms() is None
    first_ms = int(clock.wall() * 1000)
    box.append(_item())
    clock.set_wall(clock.wall() + 7.5)
    box.append(_item())
    box.take(1)
    assert box.oldest_ms() == first_ms
    stats = box.statistics()
    assert stats["inflight"] == 1
    assert stats["oldest_ms"] == first_ms
    assert stats["oldest_age_s"] == 7.5
    box.release_all()
    for record in box.take(10):
        box.done(record)
    assert box.oldest_ms() is None
    assert box.statistics()["inflight"] == 0


async def test_outbox__depth_and_bytes_follow_every_acknowledgement(tmp_path: Path) -> None:
    """The Birth, status.json and the drain on SIGTERM all read the depth: a count that
    drifted would show a backlog that is not there, or stop before the last record left."""
    box = Outbox.open(tmp_path, FakeClock())
    seqs = box.append_many([_item(), _item(MsgClass.EVENT), _item(MsgClass.ALARM)])
    assert (box.depth, box.statistics()["depth"]) == (
        3,
        {"telemetry": 1, "event": 1, "alarm": 1, "audit": 0, "ack": 0, "still": 0},
    )
    assert box.take(0) == []
    records = box.take(10)
    assert sorted(r.seq for r in records) == seqs
    drained = asyncio.create_task(box.drained())
    for done, record in enumerate(records, start=1):
        await asyncio.sleep(0)
        assert not drained.done()
        box.done(record)
        assert box.depth == 3 - done
        assert box.statistics()["bytes"] == sum(len(r.payload) for r in records[done:])
    await asyncio.wait_for(drained, timeout=5)
    box.done(records[0])  # a second PUBACK for the same record changes nothing
    assert (box.depth, box.statistics()["bytes"]) == (0, 0)
    box.close()
    box = Outbox.open(tmp_path, FakeClock())  # the deletes were committed
    assert box.depth == 0


def test_outbox__several_records_in_flight_survive_eviction(tmp_path: Path) -> None:
    """With a whole window in flight (the usual case), eviction would fail or take them."""
    box = Outbox.open(tmp_path, FakeClock(), capacity_bytes=3000)
    box.eviction_reporter = _report
    first = [box.append(_sized(MsgClass.TELEMETRY, 700)) for _ in range(2)]
    assert [r.seq for r in box.take(2)] == first
    for _ in range(3):
        box.append(_sized(MsgClass.TELEMETRY, 700))
    assert box.statistics()["evicted"]["messages"]["telemetry"] >= 1
    assert box.release_all() == first
    assert set(first) <= {r.seq for r in box.take(100)}

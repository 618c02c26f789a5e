"""The durable outbox on its own: seq, boot, order, in-flight handling (no broker)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.outbox import OUTBOX_FILE, MsgClass, Outbox, Pending


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
    assert stats["depth"] == {"alarm": 0, "audit": 0, "ack": 0, "event": 0, "telemetry": 2}


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
def test_outbox__statistics_bytes_and_age(tmp_path: Path, readings: int) -> None:
    """The console and the birth would misreport how much is buffered and for how long."""
    clock = FakeClock()
    box = Outbox.open(tmp_path, clock)
    box.append(_item(readings=readings))
    stats = box.statistics()
    assert stats["bytes"] == len(f"{MsgClass.TELEMETRY}:0".encode())
    assert stats["oldest_age_s"] == 0

"""Reporter decisions on the fake clock: deadband, quality, heartbeat, batching."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import FakeClock, wall_ms
from agent.messages import MessageFactory
from agent.outbox import Outbox
from agent.points import Points, Quality, Sample
from agent.reporter import Reporter, ReportPolicy
from agent.security.cose import Signer, decode_envelope


class Rig:
    def __init__(self, tmp_path: Path, *, batch_max: int = 500, delay: float | None = None) -> None:
        self.clock = FakeClock()
        self.points = Points()
        self.outbox = Outbox.open(tmp_path, self.clock)
        self.key = Ed25519PrivateKey.generate()
        factory = MessageFactory(gw="cab-1", boot=self.outbox.boot, signer=Signer(self.key))
        self.reporter = Reporter(
            points=self.points,
            policies={
                "lamp-01/power": ReportPolicy(deadband=1.0, heartbeat=60),
                "lamp-01/on": ReportPolicy(deadband=0, heartbeat=300),
            },
            outbox=self.outbox,
            factory=factory,
            clock=self.clock,
            batch_interval=1.0,
            batch_max=batch_max,
            telemetry_delay=delay,
        )

    def set(self, name: str, value: Any, quality: Quality = Quality.GOOD) -> None:
        self.points.update(
            Sample(name=name, value=value, quality=quality, t_ms=wall_ms(self.clock))
        )

    def bodies(self) -> list[dict[str, Any]]:
        out = []
        for record in self.outbox.take(1000):
            msg = decode_envelope(record.payload)
            self.outbox.done(record)
            out.append(cbor2.loads(msg.payload))
        return out

    def readings(self) -> list[tuple[str, Any, int]]:
        return [(r[0], r[2], r[3]) for b in self.bodies() for r in b["r"]]


def test_reporter__deadband_suppresses_small_changes(tmp_path: Path) -> None:
    """Noise below the deadband would flood a cellular link with useless readings."""
    rig = Rig(tmp_path)
    rig.set("lamp-01/power", 60.0)
    rig.set("lamp-01/power", 60.5)
    rig.set("lamp-01/power", 61.5)
    rig.reporter.flush()
    assert rig.readings() == [("lamp-01/power", 60, 0), ("lamp-01/power", 61.5, 0)]


def test_reporter__change_of_exactly_the_deadband_is_not_reported(tmp_path: Path) -> None:
    """DESIGN.md: a value is reported on a change *beyond* its deadband. Reporting at the
    boundary would double the traffic of a meter whose resolution equals its deadband."""
    rig = Rig(tmp_path)
    rig.set("lamp-01/power", 60.0)
    rig.set("lamp-01/power", 61.0)  # exactly the deadband (1.0) above the last report
    rig.set("lamp-01/power", 59.0)  # exactly the deadband below
    rig.set("lamp-01/power", 61.25)  # beyond it
    rig.set("lamp-01/power", 60.25)  # exactly the deadband from the new reference
    rig.reporter.flush()
    assert rig.readings() == [("lamp-01/power", 60, 0), ("lamp-01/power", 61.25, 0)]


def test_reporter__zero_deadband_reports_every_change(tmp_path: Path) -> None:
    """A switch (deadband 0) whose change was swallowed would show a lamp off that is on."""
    rig = Rig(tmp_path)
    for value in (True, True, False, False, True):
        rig.set("lamp-01/on", value)
    rig.reporter.flush()
    assert rig.readings() == [
        ("lamp-01/on", True, 0),
        ("lamp-01/on", False, 0),
        ("lamp-01/on", True, 0),
    ]


def test_reporter__quality_change_always_reported(tmp_path: Path) -> None:
    """A device failing would go unseen while its last value stays the same."""
    rig = Rig(tmp_path)
    rig.set("lamp-01/on", True)
    rig.set("lamp-01/on", True, Quality.COMM_FAIL)
    rig.reporter.flush()
    assert rig.readings() == [("lamp-01/on", True, 0), ("lamp-01/on", True, 2)]


async def test_reporter__heartbeat_resends_steady_value(tmp_path: Path) -> None:
    """The control room could not tell a steady lamp from a silent gateway."""
    rig = Rig(tmp_path)
    task = asyncio.create_task(rig.reporter.run())
    rig.set("lamp-01/power", 60.0)
    await rig.clock.advance(1.0)
    assert len(rig.readings()) == 1
    await rig.clock.advance(58.0)
    assert rig.readings() == []
    await rig.clock.advance(1.0)
    assert rig.readings() == [("lamp-01/power", 60, 0)]
    task.cancel()


def test_reporter__batch_split_by_size_with_gapless_seq(tmp_path: Path) -> None:
    """Big bursts would produce oversize messages or seq gaps the central post reports as loss."""
    rig = Rig(tmp_path, batch_max=2)
    for v in range(5):
        rig.set("lamp-01/power", float(v * 10))
    rig.reporter.flush()
    bodies = rig.bodies()
    assert [len(b["r"]) for b in bodies] == [2, 2, 1]
    assert [b["seq"] for b in bodies] == [0, 1, 2]
    assert all(b["gw"] == "cab-1" and b["boot"] == 1 and b["v"] == 1 for b in bodies)


def test_reporter__dt_relative_to_t0(tmp_path: Path) -> None:
    """Reading times would be wrong at the central post."""
    rig = Rig(tmp_path)
    rig.points.update(Sample(name="lamp-01/power", value=1.0, quality=Quality.GOOD, t_ms=5000))
    rig.points.update(Sample(name="lamp-01/power", value=9.0, quality=Quality.GOOD, t_ms=5250))
    rig.reporter.flush()
    (body,) = rig.bodies()
    assert body["t0"] == 5000
    assert [r[1] for r in body["r"]] == [0, 250]


def test_reporter__unknown_points_ignored(tmp_path: Path) -> None:
    """Points without a policy (not configured for reporting) must not be sent."""
    rig = Rig(tmp_path)
    rig.set("other/x", 1)
    assert rig.reporter.flush() == 0


def test_reporter__evicted_readings_reported_once_in_next_batch(tmp_path: Path) -> None:
    """Readings evicted from a full outbox would vanish without the control room knowing."""
    rig = Rig(tmp_path)
    rig.outbox.capacity_bytes = 1  # everything not in flight is evicted at once
    rig.outbox.eviction_reporter = None
    rig.set("lamp-01/power", 1.0)
    rig.reporter.flush()  # this batch (1 reading) is evicted as it is stored
    assert rig.outbox.lost_pending == 1
    rig.outbox.capacity_bytes = 10**9
    rig.set("lamp-01/power", 5.0)
    rig.reporter.flush()
    bodies = rig.bodies()
    assert [b.get("lost", 0) for b in bodies] == [1]
    assert rig.outbox.lost_pending == 0


async def test_reporter__commits_every_interval_seals_every_delay(tmp_path: Path) -> None:
    """Readings would cost a signed message each second (wire bytes), or wait uncommitted
    (lost at a power cut)."""
    rig = Rig(tmp_path, delay=5.0)
    task = asyncio.create_task(rig.reporter.run())
    for step in range(5):
        rig.set("lamp-01/power", float(step * 10))
        await rig.clock.advance(1.0)
        assert rig.outbox.staged_readings == (step + 1 if step < 4 else 0)
    (body,) = rig.bodies()
    assert [r[2] for r in body["r"]] == [0, 10, 20, 30, 40]
    task.cancel()


async def test_reporter__batch_max_seals_early(tmp_path: Path) -> None:
    """A burst would wait the whole delay and then leave as one oversize message."""
    rig = Rig(tmp_path, delay=60.0, batch_max=3)
    task = asyncio.create_task(rig.reporter.run())
    for v in range(4):
        rig.set("lamp-01/power", float(v * 10))
    await rig.clock.advance(1.0)
    assert [len(b["r"]) for b in rig.bodies()] == [3, 1]
    task.cancel()


def test_reporter__staged_readings_survive_a_crash(tmp_path: Path) -> None:
    """Readings committed before a power cut would never be sent."""
    rig = Rig(tmp_path, delay=5.0)
    rig.set("lamp-01/power", 42.0)
    assert rig.reporter.commit() == 1
    # The process dies here: nothing sealed. The next boot seals what was staged.
    again = Rig(tmp_path, delay=5.0)
    assert again.outbox.boot == 2
    assert again.reporter.due()
    again.reporter.seal()
    (body,) = again.bodies()
    assert body["boot"] == 2
    assert [r[2] for r in body["r"]] == [42]


def _lose_one_reading(rig: Rig) -> None:
    """A batch of one reading evicted as it is stored: one reading to report as lost."""
    rig.outbox.capacity_bytes = 1
    rig.outbox.eviction_reporter = None
    rig.set("lamp-01/power", 1.0)
    rig.reporter.flush()
    rig.outbox.capacity_bytes = 10**9
    assert rig.outbox.lost_pending == 1


def test_reporter__a_loss_alone_is_reported_in_an_empty_telemetry(tmp_path: Path) -> None:
    """With nothing new to send (a steady cabinet), an eviction would stay unreported until
    some value moved: the control room would not know readings were lost."""
    rig = Rig(tmp_path)
    assert not rig.reporter.due()
    _lose_one_reading(rig)
    assert rig.reporter.due()
    assert rig.reporter.seal() == 1
    (record,) = rig.outbox.take(10)
    assert record.topic == "armoire/v1/cab-1/tele"
    body = cbor2.loads(decode_envelope(record.payload).payload)
    assert (body["r"], body["lost"]) == ([], 1)
    rig.outbox.done(record)
    assert not rig.reporter.due()
    assert rig.reporter.seal() == 0


def test_reporter__loss_is_carried_by_the_first_batch_only(tmp_path: Path) -> None:
    """A loss repeated in every batch of a split would be counted several times over."""
    rig = Rig(tmp_path, batch_max=2)
    _lose_one_reading(rig)
    for v in range(5):
        rig.set("lamp-01/power", float(v * 10 + 100))
    rig.reporter.flush()
    assert [b.get("lost", 0) for b in rig.bodies()] == [1, 0, 0]


def test_reporter__due_exactly_at_batch_max(tmp_path: Path) -> None:
    """A burst of exactly batch_max readings would wait the whole delay."""
    rig = Rig(tmp_path, delay=60.0, batch_max=3)
    for v in range(2):
        rig.set("lamp-01/power", float(v * 10))
    rig.reporter.commit()
    assert not rig.reporter.due()
    rig.set("lamp-01/power", 99.0)
    rig.reporter.commit()
    assert rig.reporter.due()


async def test_reporter__counts_readings_batches_and_cycles(tmp_path: Path) -> None:
    """status.json and the watchdog read these counters: a watchdog fed by a reporter that
    does not turn, or figures that do not add up, would hide a stalled gateway."""
    rig = Rig(tmp_path, batch_max=2)
    assert (rig.reporter.readings_sent, rig.reporter.batches_sent, rig.reporter.cycles) == (0, 0, 0)
    for v in range(3):
        rig.set("lamp-01/power", float(v * 10))
    rig.reporter.flush()
    rig.set("lamp-01/power", 50.0)
    rig.reporter.flush()
    assert (rig.reporter.readings_sent, rig.reporter.batches_sent) == (4, 3)
    task = asyncio.create_task(rig.reporter.run())
    await rig.clock.advance(3.0)
    assert rig.reporter.cycles == 3
    task.cancel()


def test_reporter__zero_deadband_number_reports_every_change(tmp_path: Path) -> None:
    """A counter with no deadband whose changes were swallowed would look frozen."""
    rig = Rig(tmp_path)
    rig.reporter._policies = {"lamp-01/power": ReportPolicy(deadband=0, heartbeat=60)}
    for value in (1, 1, 2, 2.0, 3):
        rig.set("lamp-01/power", value)
    rig.reporter.flush()
    assert [r[1] for r in rig.readings()] == [1, 2, 3]

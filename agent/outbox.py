"""Durable store-and-forward queue between the producers and the uplink.

DESIGN.md, "Outbox: store-and-forward": one SQLite file in WAL mode under the
data directory. Records are stored already encoded and signed, each with its
class and its ``seq``. ``seq`` is assigned here, at append time, and the
``boot`` counter and the next ``seq`` live in the same file, updated in the
same transaction as the records, so both stay strictly increasing across
restarts whatever instant the process dies at.

Every append is one transaction, committed with ``synchronous=FULL`` before
``append`` returns: telemetry is already grouped into one message per batch
interval by the reporter (``append_many`` puts a split batch in one
transaction), so this *is* the group commit, and alarms, audit records and acks
are on disk before anyone calls them accepted. Deletes after PUBACK need no
such care (a lost delete only causes a duplicate the central post removes), so
they are committed lazily, with the next append or every :data:`DELETE_BATCH`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from agent.clock import Clock, wall_ms

OUTBOX_FILE = "outbox.sqlite"
# Deletes are cheap to lose (a duplicate at worst): commit them in groups.
DELETE_BATCH = 256


class MsgClass(StrEnum):
    """Record classes (DESIGN.md); they decide forwarding and eviction order."""

    ALARM = "alarm"
    AUDIT = "audit"
    ACK = "ack"
    EVENT = "event"
    TELEMETRY = "telemetry"


# Forwarding priority: alarms jump the queue, the rest goes in seq order.
_FORWARD_PRIO = {MsgClass.ALARM: 0}


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One stored, signed message, ready to publish."""

    seq: int
    cls: MsgClass
    topic: str
    payload: bytes
    t_ms: int
    readings: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending:
    """A message to append: ``build(seq)`` returns the signed bytes for that seq."""

    cls: MsgClass
    topic: str
    build: Callable[[int], bytes]
    readings: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY,
    prio     INTEGER NOT NULL,
    cls      TEXT    NOT NULL,
    topic    TEXT    NOT NULL,
    t_ms     INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    payload  BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS records_forward ON records (prio, seq);
"""


class Outbox:
    """The durable queue. Open it with :meth:`open`; one instance per process."""

    def __init__(self, db: sqlite3.Connection, path: Path, clock: Clock) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        self._inflight: set[int] = set()
        self._deletes_pending = 0
        self._available = asyncio.Event()
        self._emptied = asyncio.Event()
        self.boot = self._meta("boot") + 1
        self._next_seq = self._meta("next_seq")
        self._db.execute("BEGIN IMMEDIATE")
        self._set_meta("boot", self.boot)
        self._db.execute("COMMIT")
        self._depth: dict[MsgClass, int] = dict.fromkeys(MsgClass, 0)
        self._bytes = 0
        for cls, count, size in self._db.execute(
            "SELECT cls, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records GROUP BY cls"
        ):
            self._depth[MsgClass(cls)] = count
            self._bytes += size
        if self.depth:
            self._available.set()

    @classmethod
    def open(cls, data_dir: Path, clock: Clock) -> Outbox:
        """Open (or create) the outbox in ``data_dir`` and start a new boot."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / OUTBOX_FILE
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on the medium before append() returns (power-cut safety).
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return cls(db, path, clock)

    # -- producers --------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The last ``seq`` assigned, which Birth and Death carry.

        Before anything is numbered this is 0 too (``seq`` is a uint on the wire);
        the agent appends its ``agent.start`` event before it connects, so in
        practice the uplink always has a real number to send.
        """
        return max(0, self._next_seq - 1)

    def append(self, item: Pending) -> int:
        """Store one message durably and return its ``seq``."""
        return self.append_many([item])[0]

    def append_many(self, items: Sequence[Pending]) -> list[int]:
        """Store several messages in one transaction; returns their seqs in order."""
        if not items:
            return []
        t_ms = wall_ms(self._clock)
        rows = []
        seqs = []
        seq = self._next_seq
        for item in items:
            payload = item.build(seq)
            rows.append(
                (
                    seq,
                    _FORWARD_PRIO.get(item.cls, 1),
                    item.cls.value,
                    item.topic,
                    t_ms,
                    item.readings,
                    payload,
                )
            )
            seqs.append(seq)
            seq += 1
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._set_meta("next_seq", seq)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._deletes_pending = 0
        self._next_seq = seq
        for item, row in zip(items, rows, strict=True):
            self._depth[item.cls] += 1
            self._bytes += len(row[-1])
        self._available.set()
        return seqs

    # -- the uplink -------------------------------------------------------

    async def wait(self) -> None:
        """Return when there is at least one record that is not in flight."""
        while True:
            if self.depth > len(self._inflight):
                return
            self._available.clear()
            await self._available.wait()

    def take(self, limit: int) -> list[Record]:
        """Up to ``limit`` records to publish next, alarms first, then by seq; now in flight."""
        if limit <= 0:
            return []
        exclude = ",".join(str(s) for s in self._inflight) or "-1"
        # The in-flight set is a few dozen ints at most, so it is inlined.
        where = f"WHERE seq NOT IN ({exclude})"
        rows = self._db.execute(
            "SELECT seq, cls, topic, payload, t_ms, readings FROM records "  # noqa: S608
            + where
            + " ORDER BY prio, seq LIMIT ?",
            (limit,),
        ).fetchall()
        records = [
            Record(seq=s, cls=MsgClass(c), topic=t, payload=p, t_ms=tm, readings=n)
            for s, c, t, p, tm, n in rows
        ]
        self._inflight.update(r.seq for r in records)
        return records

    async def drained(self) -> None:
        """Return once every stored record has been acknowledged."""
        while self.depth:
            self._emptied.clear()
            await self._emptied.wait()

    def release(self, seqs: Sequence[int]) -> None:
        """Give back records whose publish did not complete (link lost): they go again."""
        self._inflight.difference_update(seqs)
        if seqs:
            self._available.set()

    def done(self, record: Record) -> None:
        """The broker acknowledged ``record``: forget it."""
        self._inflight.discard(record.seq)
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.execute("DELETE FROM records WHERE seq = ?", (record.seq,))
        self._depth[record.cls] -= 1
        self._bytes -= len(record.payload)
        self._deletes_pending += 1
        if not self.depth:
            self._emptied.set()
        if self._deletes_pending >= DELETE_BATCH:
            self.flush()

    def flush(self) -> None:
        """Commit pending deletes."""
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._deletes_pending = 0

    # -- status -----------------------------------------------------------

    @property
    def depth(self) -> int:
        return sum(self._depth.values())

    def statistics(self) -> dict[str, object]:
        """Depth per class, bytes used, oldest record age: for the console and the birth."""
        row = self._db.execute("SELECT MIN(t_ms) FROM records").fetchone()
        oldest = None if row[0] is None else max(0, wall_ms(self._clock) - row[0]) / 1000
        return {
            "boot": self.boot,
            "last_seq": self.last_seq,
            "depth": {cls.value: n for cls, n in self._depth.items()},
            "bytes": self._bytes,
            "inflight": len(self._inflight),
            "oldest_age_s": oldest,
        }

    def close(self) -> None:
        self.flush()
        self._db.close()

    # -- internals --------------------------------------------------------

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

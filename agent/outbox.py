"""Durable store-and-forward queue between the producers and the uplink.

DESIGN.md, "Outbox: store-and-forward": one SQLite file in WAL mode under the
data directory. Records are stored already encoded and signed, each with its
class and its ``seq``. ``seq`` is assigned here, at append time; the ``boot``
counter and the next ``seq`` live in the same file and change in the same
transaction as the records, so both stay strictly increasing whatever instant
the process dies at.

Durability: every append is one transaction committed with
``synchronous=FULL`` before ``append`` returns. Telemetry is already grouped
into one message per batch interval by the reporter (``append_many`` puts a
split batch in one transaction), so this *is* the group commit; alarms, audit
records and acks are on the medium before anyone calls them accepted. Deletes
after PUBACK need no such care (a lost delete only causes a duplicate that the
central post removes), so they are committed lazily.

Capacity: stored message bytes are bounded. Past the capacity the oldest
camera stills go first (the parts of a ``Blob``), then telemetry, then
events; alarms, audit records and acks only past the hard limit. Every
eviction is reported by an ``outbox.evicted`` Event written in the same
transaction (PROTOCOL.md, "Sequence numbers"), and the evicted readings are
counted for the next Telemetry ``lost`` field.

Recovery: a file that SQLite reports as corrupt (or not a database) or that
fails ``PRAGMA integrity_check`` is moved aside and replaced. A file that
cannot be opened for writing (read-only medium, immutable folder, full disk,
permissions) is *not* corrupt: :class:`OutboxUnavailable` says so and nothing
is moved. ``boot`` and a reserved ``seq`` ceiling are also kept in a small side
file, so even after a replacement numbering continues above anything that was
ever sent. Whatever happened before (a second process on the same file, a
hand-edited file), the next ``seq`` is always above every stored record, so
the outbox can always start and append.

Stills: the parts of one camera still are appended in one transaction and
registered in ``stills``; past the configured number of stored stills the oldest
whole still is evicted (reported like any eviction), so a burst of snapshots
costs a bounded store and never an alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from agent.clock import Clock, wall_ms
from agent.durable import write_atomically

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
STATE_FILE = "outbox.state"
# Deletes are cheap to lose (a duplicate at worst): commit them in groups.
DELETE_BATCH = 256
# seq numbers reserved in the side file at a time: one small fsync per this many
# messages, and the size of the seq jump after a database had to be replaced.
SEQ_BLOCK = 100_000
# Alarms, audit records and acks are evicted only beyond capacity x this factor.
HARD_LIMIT_FACTOR = 1.25
# Evict at least this fraction of the capacity at once, so a full outbox does not
# run a DELETE on every append.
EVICT_HEADROOM = 0.01


# SQLite's verdicts that mean the file itself is damaged (anything else, e.g.
# SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_IOERR, SQLITE_FULL, is about the medium).
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})


class OutboxUnavailable(Exception):
    """The outbox cannot be opened for writing; the file is left where it is."""


class _IntegrityFailure(sqlite3.DatabaseError):
    """``PRAGMA integrity_check`` found damage."""


class MsgClass(StrEnum):
    """Record classes (DESIGN.md); they decide forwarding and eviction order."""

    ALARM = "alarm"
    AUDIT = "audit"
    ACK = "ack"
    EVENT = "event"
    TELEMETRY = "telemetry"
    STILL = "still"  # a part of a camera still (Blob): the first to go when the store is full


# Forwarding priority: alarms jump the queue, the rest goes in seq order.
_FORWARD_PRIO = {MsgClass.ALARM: 0}
# Eviction order: first these at capacity...
_EVICT_SOFT = (MsgClass.STILL, MsgClass.TELEMETRY, MsgClass.EVENT)
# ...then these, only past the hard limit.
_EVICT_HARD = (MsgClass.ACK, MsgClass.AUDIT, MsgClass.ALARM)


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
    lost: int = 0  # the "lost" count this message carries (re-counted if it is evicted)


@dataclass(frozen=True, slots=True, kw_only=True)
class StillSlot:
    """Appending a still: its digest, and how many stills the store keeps (this one included)."""

    sha256: bytes
    keep: int

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"stills kept must be at least 1, got {self.keep}")


@dataclass(slots=True)
class Evictions:
    """What one capacity enforcement removed: the content of an ``outbox.evicted`` Event."""

    ranges: list[list[int]] = field(default_factory=list)  # [first, last] seq, inclusive
    messages: dict[str, int] = field(default_factory=dict)  # per class
    readings: int = 0
    bytes: int = 0
    carried_lost: int = 0  # "lost" counts inside evicted batches: they must be re-sent

    def add(self, seq: int, cls: MsgClass, readings: int, size: int) -> None:
        if self.ranges and self.ranges[-1][1] == seq - 1:
            self.ranges[-1][1] = seq
        else:
            self.ranges.append([seq, seq])
        self.messages[cls.value] = self.messages.get(cls.value, 0) + 1
        self.readings += readings
        self.bytes += size

    def __bool__(self) -> bool:
        return bool(self.ranges)


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """Why and where a damaged database was moved aside at start."""

    error: str
    moved_to: str
    seq_from: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UncleanStop:
    """The previous boot ended without closing the outbox (crash, kill, power cut)."""

    boot: int
    last_commit_ms: int


# Builds the signed ``outbox.evicted`` Event for a seq; given by the agent, which
# owns the message factory, so that the report is written atomically with the eviction.
EvictionReporter = Callable[[int, Evictions], Pending]


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
    lost     INTEGER NOT NULL,
    payload  BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS records_forward ON records (prio, seq);
-- Boots that ended without a clean stop and are not yet reported (see report_unclean).
CREATE TABLE IF NOT EXISTS unclean (
    boot        INTEGER PRIMARY KEY,
    last_commit INTEGER NOT NULL
);
-- Readings committed but not yet sealed into a signed Telemetry message.
CREATE TABLE IF NOT EXISTS staged (
    id       INTEGER PRIMARY KEY,
    t_ms     INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    body     BLOB    NOT NULL
);
-- Command ids accepted, remembered while the command could still be valid (replay).
CREATE TABLE IF NOT EXISTS seen_commands (
    id       BLOB PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
-- The purge deletes by expiry: without an index it scans every remembered id.
CREATE INDEX IF NOT EXISTS seen_commands_until ON seen_commands (until_ms);
-- Camera stills stored as Blob parts: the seq range of each, oldest first.
CREATE TABLE IF NOT EXISTS stills (
    first_seq INTEGER PRIMARY KEY,
    last_seq  INTEGER NOT NULL,
    sha256    BLOB    NOT NULL
);
-- Alarms raised and not yet cleared, so a restart neither repeats nor forgets them.
CREATE TABLE IF NOT EXISTS active_alarms (
    code TEXT NOT NULL,
    src  TEXT NOT NULL,
    PRIMARY KEY (code, src)
);
"""


class Outbox:
    """The durable queue. Open it with :meth:`open`; one instance per process."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        clock: Clock,
        *,
        capacity_bytes: int,
        state: dict[str, int],
        recovery: Recovery | None,
    ) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        self.capacity_bytes = capacity_bytes
        self.hard_limit_bytes = int(capacity_bytes * HARD_LIMIT_FACTOR)
        self.recovery = recovery
        self.eviction_reporter: EvictionReporter | None = None
        self._inflight: set[int] = set()
        self._deletes_pending = 0
        self._available = asyncio.Event()
        self._emptied = asyncio.Event()
        self._state_path = path.parent / STATE_FILE

        # Read and write the boot state in one write transaction, so a concurrent
        # writer (which the instance lock keeps out) cannot slip in between.
        self._begin()
        previous_boot = self._meta("boot")
        self.boot = max(previous_boot, state.get("boot", 0)) + 1
        self._next_seq = self._floor_seq()
        if not previous_boot:
            # A new (or replaced) database: continue above anything ever handed out.
            self._next_seq = max(self._next_seq, state.get("seq_reserved", 0))
        self._seq_reserved = max(self._meta("seq_reserved"), self._next_seq)
        if previous_boot and not self._meta("clean"):
            # Kept until reported, in case this boot dies before it reports it.
            self._db.execute(
                "INSERT OR IGNORE INTO unclean VALUES (?, ?)",
                (previous_boot, self._meta("last_commit_ms")),
            )
        self._set_meta("boot", self.boot)
        self._set_meta("clean", 0)
        self._set_meta("next_seq", self._next_seq)
        if recovery is not None:
            # The ids of commands accepted before are gone with the old file: commands issued
            # before now must be refused (see replay_floor_ms).
            self._set_meta("replay_floor_ms", wall_ms(clock))
        self._reserve(self._next_seq, force=True)
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
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(readings), 0) FROM staged").fetchone()
        self.staged_rows, self.staged_readings = int(row[0]), int(row[1])

    @classmethod
    def open(cls, data_dir: Path, clock: Clock, *, capacity_bytes: int = 512 * 2**20) -> Outbox:
        """Open (or create) the outbox in ``data_dir`` and start a new boot.

        A damaged database is moved aside (see :attr:`recovery`), never fatal.
        Raises :class:`OutboxUnavailable` (naming the path and the OS or SQLite
        error) when the outbox cannot be opened for writing: then nothing is moved.
        """
        path = data_dir / OUTBOX_FILE
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            state = _read_state(data_dir / STATE_FILE)
            recovery = None
            try:
                db = _connect(path)
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                moved = _move_aside(path, clock)
                seq_from = state.get("seq_reserved", 0)
                recovery = Recovery(error=str(exc), moved_to=moved.name, seq_from=seq_from)
                log.error("outbox %s damaged (%s): moved to %s", path, exc, moved.name)
                db = _connect(path)
            try:
                return cls(
                    db, path, clock, capacity_bytes=capacity_bytes, state=state, recovery=recovery
                )
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            why = _describe(exc)
            if isinstance(exc, sqlite3.Error):
                # SQLite does not say which system call failed: ask the system.
                why += _os_reason(path)
            raise OutboxUnavailable(f"cannot open the outbox {path} for writing: {why}") from exc

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

    def append_many(
        self,
        items: Sequence[Pending],
        *,
        also: Sequence[tuple[str, tuple[object, ...]]] = (),
        still: StillSlot | None = None,
    ) -> list[int]:
        """Store several messages in one transaction; returns their seqs in order.

        ``also``: statements of this module's own state tables, applied atomically.
        ``still``: the items are the parts of one camera still; older stills beyond
        ``still.keep`` are evicted in the same transaction.
        """
        if not items:
            return []
        t_ms = wall_ms(self._clock)
        with self._transaction():
            # The stored next seq, not only ours: numbering stays unique even if
            # another process wrote to this file (the instance lock prevents it).
            seq = max(self._next_seq, self._meta("next_seq"))
            rows = []
            for item in items:
                rows.append(_row(seq, item, t_ms))
                seq += 1
            added = sum(len(row[-1]) for row in rows)
            self._db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            for sql, params in also:
                self._db.execute(sql, params)
            reported = sum(item.lost for item in items)
            if reported:
                self._add_meta("lost_pending", -reported)
            evictions = Evictions()
            if still is not None:
                self._db.execute(
                    "INSERT INTO stills VALUES (?, ?, ?)",
                    (rows[0][0], rows[len(items) - 1][0], still.sha256),
                )
                added -= self._evict_stills(still.keep, evictions)
            evictions = self._enforce_capacity(self._bytes + added, evictions)
            if evictions and self.eviction_reporter is not None:
                report = self.eviction_reporter(seq, evictions)
                rows.append(_row(seq, report, t_ms))
                self._db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows[-1])
                seq += 1
            self._set_meta("next_seq", seq)
            self._set_meta("last_commit_ms", t_ms)
            self._reserve(seq)
        self._next_seq = seq
        for row in rows:
            self._depth[MsgClass(row[2])] += 1
            self._bytes += len(row[-1])
        if evictions:
            self._forget(evictions)
        self._available.set()
        return [row[0] for row in rows[: len(items)]]

    def stage(self, body: bytes, *, readings: int) -> None:
        """Commit readings (encoded by the caller) that are not yet in a signed message.

        This is the per-batch-interval group commit: what is staged survives a crash
        and is sealed by :meth:`seal`, in this boot or the next.
        """
        t_ms = wall_ms(self._clock)
        with self._transaction():
            self._db.execute(
                "INSERT INTO staged (t_ms, readings, body) VALUES (?, ?, ?)", (t_ms, readings, body)
            )
            self._set_meta("last_commit_ms", t_ms)
        self.staged_rows += 1
        self.staged_readings += readings

    def seal(self, make: Callable[[list[bytes]], Sequence[Pending]]) -> list[int]:
        """Turn every staged body into messages (``make``) and store them, atomically."""
        rows = self._db.execute("SELECT id, body FROM staged ORDER BY id").fetchall()
        items = make([body for _, body in rows]) if rows else []
        if not rows:
            return []
        seqs = (
            self.append_many(items, also=[("DELETE FROM staged WHERE id <= ?", (rows[-1][0],))])
            if items
            else self._drop_staged(rows[-1][0])
        )
        self.staged_rows = 0
        self.staged_readings = 0
        return seqs

    def _drop_staged(self, last_id: int) -> list[int]:
        with self._transaction():
            self._db.execute("DELETE FROM staged WHERE id <= ?", (last_id,))
        return []

    @property
    def unclean(self) -> list[UncleanStop]:
        """Earlier boots that ended without a clean stop and are not reported yet."""
        return [
            UncleanStop(boot=b, last_commit_ms=t)
            for b, t in self._db.execute("SELECT boot, last_commit FROM unclean ORDER BY boot")
        ]

    def report_unclean(self, make: Callable[[UncleanStop], Pending]) -> list[int]:
        """Append one report per unreported unclean stop, forgetting them atomically."""
        pending = self.unclean
        return self.append_many(
            [make(u) for u in pending],
            also=[("DELETE FROM unclean WHERE boot = ?", (u.boot,)) for u in pending],
        )

    def command_seen(self, cmd_id: bytes) -> bool:
        """Whether a command with this id was accepted before (in any boot)."""
        row = self._db.execute("SELECT 1 FROM seen_commands WHERE id = ?", (cmd_id,)).fetchone()
        return row is not None

    def remember_command(
        self, cmd_id: bytes, *, until_ms: int, purge_before_ms: int | None = None
    ) -> None:
        """Durably remember an accepted command id until ``until_ms`` (its exp + skew);
        forget the ids remembered until before ``purge_before_ms``.

        ``purge_before_ms`` must be a time the gateway will never decide below again (the
        persisted time floor, `agent.timefloor`): a forgotten id is then surely expired. It
        defaults to the wall clock, which may go back.
        """
        purge = wall_ms(self._clock) if purge_before_ms is None else purge_before_ms
        with self._transaction():
            self._db.execute("DELETE FROM seen_commands WHERE until_ms < ?", (purge,))
            self._db.execute(
                "INSERT OR REPLACE INTO seen_commands VALUES (?, ?)", (cmd_id, until_ms)
            )

    @property
    def replay_floor_ms(self) -> int:
        """Commands issued (``iat``) before this were accepted into a database since moved
        aside as corrupt: their ids are lost, so they must be refused. 0 if none was."""
        return self._meta("replay_floor_ms")

    def raise_replay_floor(self, t_ms: int) -> None:
        """Raise `replay_floor_ms` to ``t_ms`` (e.g. to the effective time after a recovery
        made with a wall clock that was behind)."""
        if t_ms > self.replay_floor_ms:
            with self._transaction():
                self._set_meta("replay_floor_ms", t_ms)

    @property
    def active_alarms(self) -> set[tuple[str, str]]:
        """(code, src) of every alarm raised and not cleared, across restarts."""
        return {(c, s) for c, s in self._db.execute("SELECT code, src FROM active_alarms")}

    def raise_alarm(self, item: Pending, *, code: str, src: str) -> int:
        """Append an alarm and remember it as active, in one transaction."""
        return self.append_many(
            [item], also=[("INSERT OR IGNORE INTO active_alarms VALUES (?, ?)", (code, src))]
        )[0]

    def clear_alarm(self, item: Pending, *, code: str, src: str) -> int:
        """Append an alarm's clearing and forget it as active, in one transaction."""
        return self.append_many(
            [item],
            also=[("DELETE FROM active_alarms WHERE code = ? AND src = ?", (code, src))],
        )[0]

    @property
    def lost_pending(self) -> int:
        """Readings evicted and not yet reported in a Telemetry ``lost`` field.

        Persisted: appending a batch that carries ``lost=N`` takes N off in the same
        transaction, so the count survives a crash and is never reported twice.
        """
        return self._meta("lost_pending")

    # -- the uplink -------------------------------------------------------

    async def wait(self) -> None:
        """Return when there is at least one record that is not in flight."""
        while True:
            if self.depth > len(self._inflight):
                return
            self._available.clear()
            await self._available.wait()

    async def drained(self) -> None:
        """Return once every stored record has been acknowledged."""
        while self.depth:
            self._emptied.clear()
            await self._emptied.wait()

    def take(self, limit: int) -> list[Record]:
        """Up to ``limit`` records to publish next, alarms first, then by seq; now in flight."""
        if limit <= 0:
            return []
        # The in-flight set is a few dozen ints at most, so it is inlined.
        where = f"WHERE seq NOT IN ({','.join(map(str, self._inflight)) or '-1'})"
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

    def release(self, seqs: Sequence[int]) -> None:
        """Give back records whose publish did not complete (link lost): they go again."""
        self._inflight.difference_update(seqs)
        if seqs:
            self._available.set()

    def release_all(self) -> list[int]:
        """Give back every record in flight, because the connection they went out on is gone.

        The uplink calls this whenever a session ends, however it ends: nothing in
        flight outlives its connection, so a publish that failed, was cancelled, or was
        cancelled before it even started cannot leave its record stranded.
        """
        seqs = sorted(self._inflight)
        self.release(seqs)
        return seqs

    def done(self, record: Record) -> None:
        """The broker acknowledged ``record``: forget it (unless evicted meanwhile)."""
        self._inflight.discard(record.seq)
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        cursor = self._db.execute("DELETE FROM records WHERE seq = ?", (record.seq,))
        if cursor.rowcount:
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

    @property
    def inflight(self) -> int:
        """Records handed to the uplink and not yet acknowledged nor given back."""
        return len(self._inflight)

    def oldest_ms(self) -> int | None:
        """Wall time (epoch ms) the oldest stored record was appended; None when empty."""
        row = self._db.execute("SELECT MIN(t_ms) FROM records").fetchone()
        return None if row[0] is None else int(row[0])

    def statistics(self) -> dict[str, object]:
        """Depth per class, bytes used, oldest record age, evictions: for the console and logs."""
        oldest_ms = self.oldest_ms()
        oldest = None if oldest_ms is None else max(0, wall_ms(self._clock) - oldest_ms) / 1000
        return {
            "boot": self.boot,
            "last_seq": self.last_seq,
            "depth": {cls.value: n for cls, n in self._depth.items()},
            "bytes": self._bytes,
            "capacity_bytes": self.capacity_bytes,
            "inflight": len(self._inflight),
            "oldest_age_s": oldest,
            "oldest_ms": oldest_ms,
            "evicted": {
                "messages": {cls.value: self._meta(f"evicted.{cls.value}") for cls in MsgClass},
                "readings": self._meta("evicted.readings"),
                "lost_pending": self.lost_pending,
            },
        }

    def close(self) -> None:
        """Commit, mark the boot as cleanly ended, and close the file."""
        with self._transaction():
            self._set_meta("clean", 1)
        self._db.close()

    # -- internals --------------------------------------------------------

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One durable commit; pending lazy deletes ride along with it."""
        self._begin()
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._deletes_pending = 0

    def _enforce_capacity(self, total: int, evictions: Evictions) -> Evictions:
        target = self.capacity_bytes * (1 - EVICT_HEADROOM)
        if total > self.capacity_bytes:
            for classes, limit in ((_EVICT_SOFT, target), (_EVICT_HARD, self.hard_limit_bytes)):
                for cls in classes:
                    if total <= limit:
                        break
                    total -= self._evict_class(cls, total - limit, evictions)
        if evictions:
            for c, n in evictions.messages.items():
                self._add_meta(f"evicted.{c}", n)
            self._add_meta("evicted.readings", evictions.readings)
            self._add_meta("lost_pending", evictions.readings + evictions.carried_lost)
        return evictions

    def _evict_class(self, cls: MsgClass, need: float, evictions: Evictions) -> int:
        freed = 0
        inflight = ",".join(map(str, self._inflight)) or "-1"
        cursor = self._db.execute(
            "SELECT seq, readings, lost, LENGTH(payload) FROM records "  # noqa: S608
            f"WHERE cls = ? AND seq NOT IN ({inflight}) ORDER BY seq",
            (cls.value,),
        )
        doomed = []
        for seq, readings, lost, size in cursor:
            if freed >= need:
                break
            doomed.append((seq,))
            evictions.add(seq, cls, readings, size)
            evictions.carried_lost += lost
            freed += size
        cursor.close()
        self._db.executemany("DELETE FROM records WHERE seq = ?", doomed)
        return freed

    def _evict_stills(self, keep: int, evictions: Evictions) -> int:
        """Evict the oldest whole stills beyond ``keep``; the bytes freed."""
        self._db.execute(
            "DELETE FROM stills WHERE NOT EXISTS (SELECT 1 FROM records "
            "WHERE seq BETWEEN stills.first_seq AND stills.last_seq)"
        )
        stored = self._db.execute("SELECT first_seq, last_seq FROM stills ORDER BY first_seq")
        ranges = stored.fetchall()
        freed = 0
        for first, last in ranges[: max(0, len(ranges) - keep)]:
            rows = self._db.execute(
                "SELECT seq, readings, lost, LENGTH(payload) FROM records "
                "WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (first, last),
            ).fetchall()
            doomed = [row for row in rows if row[0] not in self._inflight]
            for seq, readings, lost, size in doomed:
                evictions.add(seq, MsgClass.STILL, readings, size)
                evictions.carried_lost += lost
                freed += size
            self._db.executemany("DELETE FROM records WHERE seq = ?", [(r[0],) for r in doomed])
            self._db.execute("DELETE FROM stills WHERE first_seq = ?", (first,))
        return freed

    def stills(self) -> int:
        """Stills with at least one part still stored."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM stills WHERE EXISTS (SELECT 1 FROM records "
            "WHERE seq BETWEEN stills.first_seq AND stills.last_seq)"
        ).fetchone()
        return int(row[0])

    def _forget(self, evictions: Evictions) -> None:
        # In-memory counters follow the committed eviction.
        for cls, n in evictions.messages.items():
            self._depth[MsgClass(cls)] -= n
        self._bytes -= evictions.bytes
        log.warning(
            "outbox full: evicted %s (%d readings, seq %s)",
            evictions.messages,
            evictions.readings,
            evictions.ranges,
        )

    def _reserve(self, next_seq: int, *, force: bool = False) -> None:
        # Keep the side file's ceiling above every seq this boot can hand out.
        if next_seq < self._seq_reserved and not force:
            return
        self._seq_reserved = max(self._seq_reserved, next_seq) + SEQ_BLOCK
        self._set_meta("seq_reserved", self._seq_reserved)
        _write_state(self._state_path, {"boot": self.boot, "seq_reserved": self._seq_reserved})

    def _floor_seq(self) -> int:
        """The next seq as stored, raised above every stored record if it is not.

        A stored next seq at or below a stored record (two processes on one file,
        a restored or edited file) would make every append fail forever.
        """
        stored = self._meta("next_seq")
        row = self._db.execute("SELECT MAX(seq) FROM records").fetchone()
        above = 0 if row[0] is None else int(row[0]) + 1
        if above > stored:
            log.warning(
                "outbox %s: stored next seq %d is not above stored record %d; continuing at %d",
                self.path,
                stored,
                above - 1,
                above,
            )
        return max(stored, above)

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _add_meta(self, key: str, delta: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, delta),
        )

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _row(seq: int, item: Pending, t_ms: int) -> tuple[int, int, str, str, int, int, int, bytes]:
    return (
        seq,
        _FORWARD_PRIO.get(item.cls, 1),
        item.cls.value,
        item.topic,
        t_ms,
        item.readings,
        item.lost,
        item.build(seq),
    )


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # Small pages: a 1 s group commit of a few hundred bytes rewrites whole pages
        # (staged rows, meta) in the WAL, so page size is what flash wear scales with.
        db.execute("PRAGMA page_size=1024")  # only takes effect on a new file
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on the medium before append() returns (power-cut safety).
        db.execute("PRAGMA synchronous=FULL")
        result = db.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            raise _IntegrityFailure("integrity_check: " + "; ".join(str(r[0]) for r in result[:3]))
        db.executescript(_SCHEMA)
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether the error says the file is damaged, as opposed to the medium refusing writes."""
    if isinstance(exc, _IntegrityFailure):
        return True
    return getattr(exc, "sqlite_errorname", None) in _CORRUPT


def _describe(exc: BaseException) -> str:
    # An OSError already names its errno; SQLite's own code says why it refused.
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _os_reason(path: Path) -> str:
    """The OS error behind SQLite's refusal: the file or the folder not writable.

    WAL mode needs to write the file and to create ``-wal``/``-shm`` beside it.
    """
    try:
        os.close(os.open(path, os.O_RDWR))
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"; {path}: {exc.strerror}"
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        return f"; cannot create files in {path.parent}: {exc.strerror}"
    probe.unlink(missing_ok=True)
    return ""


def _move_aside(path: Path, clock: Clock) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock.wall()))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    path.replace(target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.replace(target.with_name(target.name + suffix))
    return target


def _read_state(path: Path) -> dict[str, int]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, int)}


def _write_state(path: Path, state: dict[str, int]) -> None:
    write_atomically(path, json.dumps(state).encode())

"""Crash loop: the agent is SIGKILLed at random instants, over and over, and restarted.

DESIGN.md, "Outbox": the store survives SIGKILL at any instant. While the
cabinet produces readings and a backlog is forwarded, the agent process is
killed 32 times at seeded random instants (some during start-up, some during
steady polling and forwarding) and restarted each time; every other kill is aimed
after the process's start-up events were committed, so that half of them exercise
the loss bound whatever the machine's load. Afterwards the outbox
passes ``PRAGMA integrity_check``; every start took the next boot number; the
central post has every ``seq`` once, in one boot only, increasing across boots,
with no gap; every ``device.comm_fail`` alarm the agent logged arrived; and each
kill cost at most one batch interval of readings, counted in an
``agent.unclean_stop`` of a later boot.

The test sees the agent from outside only: the central post, the agent's log,
its status file, and the outbox side file (read between kills, for the boot
number each process took).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from agent.clock import SystemClock, wall_ms
from agent.outbox import OUTBOX_FILE, STATE_FILE
from agent.runtime import STATUS_FILE
from central.post import CentralPost
from tests.integration.conftest import Site

pytestmark = pytest.mark.integration

# Fixed, so that a failure replays with the same kill instants.
SEED = 20_240_917
# The issue asks for "30+" kills.
KILLS = 32
# The link is cut for the first third of the kills, so a backlog builds up in the
# outbox; then restored, so that backlog is forwarded while the kills go on.
CUT_KILLS = KILLS // 3
# Kill instant after the (re)started process is spawned, uniform in this range (s).
# Measured on the sim: the outbox is open ~0.15 s after spawn (up to ~0.4 s on a
# loaded machine), agent.start is committed ~0.02 s later, the first batch ~1 s
# after that; so kills land before the outbox opens, inside start-up, and during
# steady polling and forwarding.
KILL_DELAY_S = (0.05, 2.0)
# Runs (0-based) in which lamp-05 is switched off until the agent raises its
# comm_fail alarm, then on until it clears it, before the random kill. A short run
# cannot raise it: 3 missed polls 1 s apart (sim/run.py agent_config, POLL).
POWER_CYCLE_RUNS = (4, 15, 25)
LAMP = "lamp-05"
# The alarm is appended right after its log line (same task step, one fsync): in
# a power-cycle run the kill comes at least this long after the line was seen.
ALARM_COMMIT_MARGIN_S = 0.3
# sim/run.py agent_config: [storage] batch_interval = 1.0 s, one commit per interval.
BATCH_INTERVAL_MS = 1000
# A commit may come late: the event loop is busy with a poll, a batch takes a few
# ms to sign and fsync, and CI shares two cores between agent, broker and test. How
# late is not guessed: each run's slack is the largest lag observed around it, by the
# agent's own loop-lag probe (its last status.json) and by the test's own sleeps.
# Runs with an odd index are killed this long after their start-up events were
# committed (seen in status.json), so the per-kill loss bound is exercised by half the
# kills however slow start-up is (a kill during start-up cannot be checked).
AFTER_START_DELAY_S = (0.0, 2.0)
# Deadline of every wait on the agent or the central post; a pass takes seconds.
WAIT_S = 30.0
# How often the agent's log is re-read while waiting for a line in it.
LOG_POLL_S = 0.05
# The last agent stops cleanly after draining for up to 3 s (agent/runtime.py
# DRAIN_ON_EXIT); if records are still queued it is started again, this many times.
MAX_FINAL_RUNS = 3

# What agent/polling.py logs just before appending the alarm (same task step).
UNREACHABLE = re.compile(r"^.* agent\.polling: (\S+) unreachable \(", re.MULTILINE)
BACK = re.compile(r"^.* agent\.polling: (\S+) back$", re.MULTILINE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One killed agent process, as the test saw it from outside."""

    index: int
    spawned_ms: int  # wall time just before the process was spawned (0: by the fixture)
    killed_ms: int  # wall time just before SIGKILL
    dead_ms: int  # wall time once the process was reaped
    boot: int | None  # the boot number it took; None if killed before opening the outbox
    lag_ms: float = 0.0  # the largest scheduling lag seen around this run (agent and test)
    # When its loops started (its first status.json), if the test saw it: before that it
    # polled nothing, so nothing was there to commit.
    loops_ms: int = 0
    after_start: bool = False  # killed only once its start-up events were committed

    def __str__(self) -> str:
        took = "no boot" if self.boot is None else f"boot {self.boot}"
        since = f"{self.killed_ms - self.spawned_ms} ms after spawn" if self.spawned_ms else ""
        return f"run {self.index} ({took}) killed {since}"


def _status(site: Site) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads((site.data / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being replaced
        return {}
    return status


async def _wait_started(site: Site, boot: int) -> int:
    """Wait until the process that takes ``boot`` committed its start-up events: its
    status loop, started after them, wrote status.json. Returns that status's time."""
    try:
        async with asyncio.timeout(WAIT_S):
            while (status := _status(site)).get("boot") != boot:
                assert site.agent.running, f"the agent died on its own:\n{site.log()}"
                await asyncio.sleep(LOG_POLL_S)
    except TimeoutError:
        raise AssertionError(f"boot {boot} not started within {WAIT_S} s") from None
    first: int = status["t"]
    return first


def _side_boot(site: Site) -> int:
    """The last boot number the outbox handed out, from its side file (agent stopped)."""
    try:
        state = json.loads((site.data / STATE_FILE).read_text())
    except FileNotFoundError:
        return 0
    return int(state["boot"])


def _log_counts(site: Site, pattern: re.Pattern[str]) -> Counter[str]:
    """How many times the agent logged ``pattern``, per device."""
    return Counter(pattern.findall(site.agent.log_path.read_text(errors="replace")))


async def _wait_log(site: Site, pattern: re.Pattern[str], device: str, count: int) -> None:
    """Wait until the agent has logged ``pattern`` for ``device`` ``count`` times in all."""
    try:
        async with asyncio.timeout(WAIT_S):
            while _log_counts(site, pattern)[device] < count:
                assert site.agent.running, f"the agent died on its own:\n{site.log()}"
                await asyncio.sleep(LOG_POLL_S)
    except TimeoutError:
        raise AssertionError(
            f"{device}: {pattern.pattern!r} not logged {count} times within {WAIT_S} s:\n"
            f"{site.log()}"
        ) from None


async def _power_cycle(site: Site) -> None:
    """Switch the lamp off until the agent declares it unreachable, then on until it is back."""
    off, back = _log_counts(site, UNREACHABLE)[LAMP], _log_counts(site, BACK)[LAMP]
    site.cabinet.power_off(LAMP)
    await _wait_log(site, UNREACHABLE, LAMP, off + 1)
    site.cabinet.power_on(LAMP)
    await _wait_log(site, BACK, LAMP, back + 1)


async def _kill(
    site: Site,
    index: int,
    spawned_ms: int,
    boot_before: int,
    *,
    test_lag_ms: float,
    after: bool,
    first_status_ms: int,
) -> Run:
    """SIGKILL the running agent and note what it left behind."""
    proc = site.agent.proc
    assert proc is not None
    assert proc.returncode is None, f"the agent died on its own:\n{site.log()}"
    clock = SystemClock()
    killed_ms = wall_ms(clock)
    proc.kill()
    assert await proc.wait() == -9
    dead_ms = wall_ms(clock)
    boot = _side_boot(site)
    assert boot in (boot_before, boot_before + 1), f"run {index}: boot {boot_before} -> {boot}"
    # The killed process's last status (written every 2 s) tells how late its loop ran.
    status = _status(site)
    status = status if status.get("boot") == boot else {}
    lag = status.get("loop_lag", {})
    agent_lag = lag.get("worst_ms", 0.0)
    loops_ms = status["t"] if status and not lag.get("samples") else first_status_ms
    return Run(
        index=index,
        spawned_ms=spawned_ms,
        killed_ms=killed_ms,
        dead_ms=dead_ms,
        boot=boot if boot > boot_before else None,
        lag_ms=max(agent_lag, test_lag_ms),
        loops_ms=loops_ms,
        after_start=after,
    )


def _started_after(central: CentralPost, boot: int) -> bool:
    """Whether a boot after ``boot`` reached the central post."""
    return any(e["code"] == "agent.start" and e["boot"] > boot for e in central.events)


def _first_seq(events: list[dict[str, Any]]) -> int | None:
    """The gateway's very first message: boot 1's agent.start."""
    return next((e["seq"] for e in events if e["code"] == "agent.start" and e["boot"] == 1), None)


def _received_all(central: CentralPost, gw: str, last_seq: int) -> bool:
    first = _first_seq(central.events)
    return first is not None and not central.gaps(gw, start=first, end=last_seq)


async def _finish(site: Site, last_boot: int) -> tuple[list[int], int]:
    """Let the agent forward everything, then stop it cleanly: (its boots, last seq)."""
    boots = []
    for _ in range(MAX_FINAL_RUNS):
        await site.central.wait_for(functools.partial(_started_after, boot=last_boot), WAIT_S)
        assert await site.agent.stop() == 0, site.log()
        status = json.loads((site.data / STATUS_FILE).read_text())
        last_boot = status["outbox"]["boot"]
        boots.append(last_boot)
        if not sum(status["outbox"]["depth"].values()):
            return boots, status["outbox"]["last_seq"]
        await site.agent.start()
    raise AssertionError(f"outbox not drained after {MAX_FINAL_RUNS} clean runs: {status}")


def _check_numbering(site: Site, events: list[dict[str, Any]], last_seq: int) -> None:
    """Each seq once, in one boot, increasing across boots, none missing or lost."""
    central = site.central
    owner: dict[int, int] = {}
    numbered = [(r.boot, r.seq) for r in central.readings if r.gw == site.gw]
    numbered += [(e["boot"], e["seq"]) for e in events]
    numbered += [(a["boot"], a["seq"]) for a in central.acks if a["gw"] == site.gw]
    for boot, seq in numbered:
        assert owner.setdefault(seq, boot) == boot, f"seq {seq} sent in boots {owner[seq]}, {boot}"
    first = _first_seq(events)
    assert first is not None
    assert sorted(owner) == list(range(first, last_seq + 1)), central.gaps(site.gw)
    assert central.gaps(site.gw) == []
    span: dict[int, tuple[int, int]] = {}
    for seq, boot in owner.items():
        low, high = span.get(boot, (seq, seq))
        span[boot] = (min(low, seq), max(high, seq))
    ordered = [span[boot] for boot in sorted(span)]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ordered)), ordered
    # Nothing was evicted, so no gap may be excused and no reading reported lost.
    assert central.evictions == []
    assert central.lost.get(site.gw, 0) == 0


def _check_alarms(site: Site, events: list[dict[str, Any]], runs: Sequence[Run]) -> None:
    """Every comm_fail the agent logged (just before appending it) reached the central post."""
    alarms = [e for e in events if e["code"] == "device.comm_fail"]
    raised = Counter(e.get("src") for e in alarms if e["state"] == "raised")
    cleared = Counter(e.get("src") for e in alarms if e["state"] == "cleared")
    assert raised == _log_counts(site, UNREACHABLE), alarms
    assert cleared == _log_counts(site, BACK), alarms
    assert raised[LAMP] == cleared[LAMP] == len(POWER_CYCLE_RUNS), alarms
    cycle_boots = {runs[i].boot for i in POWER_CYCLE_RUNS}
    assert {e["boot"] for e in alarms if e.get("src") == LAMP} == cycle_boots, alarms


def _check_kills(site: Site, events: list[dict[str, Any]], runs: Sequence[Run]) -> list[int]:
    """Each kill: reported by a later boot, at most one batch interval lost, the loss counted.

    Returns the killed boots that have no unclean-stop report of their own (see the
    caller); raises if anything else is wrong.
    """
    history = "\n".join(map(str, runs))
    starts = {e["boot"] for e in events if e["code"] == "agent.start"}
    reports = [e for e in events if e["code"] == "agent.unclean_stop"]
    unclean = {e["data"]["boot"]: e for e in reports}
    assert len(unclean) == len(reports), f"a boot reported unclean twice: {reports}"
    killed = {run.boot: run for run in runs if run.boot is not None}
    assert set(unclean) <= set(killed), f"a clean stop reported unclean: {reports}"
    readings: dict[int, list[int]] = {}
    for reading in site.central.readings:
        readings.setdefault(reading.boot, []).append(reading.t_ms)
    checked = 0
    unreported = []
    for boot, run in killed.items():
        # Whatever this boot sent was made while its process lived: the boot numbers
        # read from the side file are the ones the processes used. Readings may be
        # older: those committed (staged) by an earlier boot are sealed by this one.
        times = [e["t"] for e in events if e["boot"] == boot]
        assert all(run.spawned_ms <= t <= run.dead_ms for t in times), f"{run}: {times}"
        assert all(t <= run.dead_ms for t in readings.get(boot, [])), f"{run}: readings"
        report = unclean.get(boot)
        if report is not None:
            # Reported by the next boot that got as far as its start-up events.
            assert report["boot"] > boot, f"{run}: reported by boot {report['boot']}"
            assert not starts & set(range(boot + 1, report["boot"])), f"{run}: {report}"
        if boot not in starts:
            # Killed after opening the outbox but before its first commit.
            if report is not None and run.spawned_ms:
                assert report["data"]["last_commit"] <= run.spawned_ms, f"{run}: {report}"
            continue
        checked += 1
        if report is None:
            # The next boot(s) died in start-up and a later one reported the last of
            # them; that report must still carry this boot's last commit.
            unreported.append(boot)
            later = [b for b in unclean if b > boot]
            assert later, f"{run}: no agent.unclean_stop, nor a later one\n{history}"
            report = unclean[min(later)]
            assert not starts & set(range(boot + 1, report["data"]["boot"] + 1)), (
                f"{run}: no agent.unclean_stop, and a later boot started\n{history}"
            )
        data = report["data"]
        late = run.killed_ms - max(data["last_commit"], run.loops_ms)
        assert late <= BATCH_INTERVAL_MS + run.lag_ms, (
            f"{run}: last commit {late} ms before, lag seen {run.lag_ms:.0f} ms"
        )
        assert data["last_commit"] <= run.dead_ms, f"{run}: last commit after its death: {data}"
        assert data["last_commit"] + data["gap_ms"] >= run.dead_ms, f"{run}: loss not counted"
    aimed = [run for run in runs if run.after_start]
    assert all(run.boot in starts for run in aimed), history
    assert checked >= len(aimed) >= KILLS // 2, history
    return unreported


async def test_crash_loop__kills_lose_no_message_and_at_most_one_batch(site: Site) -> None:
    """A gateway that crashes or loses power would corrupt its store, lose or renumber
    messages or alarms, or lose more than one batch interval of readings per crash."""
    rng = random.Random(SEED)
    clock = SystemClock()
    runs: list[Run] = []
    await site.link.cut()
    spawned_ms = 0  # the fixture started the first agent before the test began
    boot_before = 0  # a new data directory: the first agent takes boot 1
    loop = asyncio.get_running_loop()
    for index in range(KILLS):
        delay = rng.uniform(*KILL_DELAY_S)
        after = index % 2 == 1
        first_status_ms = 0
        if index == CUT_KILLS:
            await site.link.restore()
        if after:
            first_status_ms = await _wait_started(site, boot_before + 1)
            delay = rng.uniform(*AFTER_START_DELAY_S)
        if index in POWER_CYCLE_RUNS:
            await _power_cycle(site)
            delay = max(delay, ALARM_COMMIT_MARGIN_S)
        # The random instant is the thing under test: this sleep is the point.
        asked = loop.time()
        await asyncio.sleep(delay)
        test_lag_ms = max(0.0, loop.time() - asked - delay) * 1000
        runs.append(
            await _kill(
                site,
                index,
                spawned_ms,
                boot_before,
                test_lag_ms=test_lag_ms,
                after=after,
                first_status_ms=first_status_ms,
            )
        )
        boot_before = _side_boot(site)
        spawned_ms = wall_ms(clock)
        await site.agent.start()
    final_boots, last_seq = await _finish(site, boot_before)
    central = site.central
    await central.wait_for(lambda c: _received_all(c, site.gw, last_seq), WAIT_S)
    events = [e for e in central.events if e["gw"] == site.gw]
    assert central.rejections == []

    # The store: intact after every kill (else the agent would have moved it aside
    # and raised outbox.corrupt) and at the end.
    db = sqlite3.connect(f"file:{site.data / OUTBOX_FILE}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    assert not list(site.data.glob(f"{OUTBOX_FILE}.corrupt-*"))
    assert not [e for e in events if e["code"] == "outbox.corrupt"]

    # Boots: every process that opened the outbox took the next number, and each
    # number is one process's (one agent.start each).
    taken = [run.boot for run in runs if run.boot is not None] + final_boots
    assert taken == list(range(1, len(taken) + 1)), "\n".join(map(str, runs))
    starts = Counter(e["boot"] for e in events if e["code"] == "agent.start")
    assert set(starts) <= set(taken)
    assert max(starts.values()) == 1, starts
    assert all(e["data"]["boot"] == e["boot"] for e in events if e["code"] == "agent.start")
    assert {e["boot"] for e in events} | {r.boot for r in central.readings} == set(starts)

    _check_numbering(site, events, last_seq)
    _check_alarms(site, events, runs)
    unreported = _check_kills(site, events, runs)
    assert not unreported, f"no agent.unclean_stop for killed boots {unreported}"

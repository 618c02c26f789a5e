"""Link-fault torture: the agent's uplink against everything a street link and a broker do.

A :class:`TortureSite` is the simulated gateway at full size — the virtual
cabinet, the agent as its own process, its uplink through the link proxy,
a real mosquitto and the reference central post connected to it directly.
:class:`Torture` then injects seeded random faults one after the other:

- ``cut``: the link resets and refuses connections, then comes back;
- ``stall``: the link is half-open (TCP alive, nothing forwarded), then reset;
- ``no-puback``: the broker gets everything but its PUBACKs are lost, then reset;
- ``broker-restart``: mosquitto stops (saving its sessions) and starts again;
- ``broker-restart-fresh``: mosquitto is replaced by one without any session;
- ``broker-hang``: mosquitto is frozen (SIGSTOP) long enough for the agent to
  give up on its publishes, then resumes (SIGCONT);
- ``broker-hang-kill``: frozen, then SIGKILLed and replaced on the same port
  (issue 8: the batch in flight at the freeze must still arrive);
- ``agent-kill``: the agent is SIGKILLed and started again.

After each fault the link is healthy again and the torture measures how long
the central post takes to have every record the agent had stored by then
(``catch_up_s``; a stranded record makes this wait fail, naming the fault).
Resources of the agent process (RSS, open fds, asyncio tasks) are sampled at
those caught-up instants.

A broker that acknowledged a message and then dies without persistence loses
it for everyone: that is the broker's loss, not the agent's. Before such a
fault the torture therefore withholds PUBACKs (so the agent deletes nothing
more) and waits until the central post has every record the agent deleted;
what is still in flight at the freeze is exactly what the agent must resend.

The test (tests/integration/test_torture.py) and the soak (bench/soak.py)
share this module; the gateway code never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.outbox import OUTBOX_FILE
from central.post import CentralPost, load_public_pem
from sim.broker import Mosquitto
from sim.cabinet import Cabinet, Scenario
from sim.proxy import LinkProxy
from sim.run import GATEWAY_ID, LINE_ROLE, AgentProcess, agent_config, ensure_keys

__all__ = ["Fault", "FaultRecord", "Sample", "Torture", "TortureSite", "torture_site"]

STATUS_FILE = "status.json"  # agent/runtime.py STATUS_FILE (sim does not import the runtime)
# The smallest keepalive the agent accepts: a hung broker is given up on after
# max(5 s, keepalive) without a PUBACK, so faults need not last long to bite.
KEEPALIVE_S = 5
# Reconnect backoff cap of the tortured agent: short, so catch-up is quick.
RECONNECT_MAX_S = 2.0
# How long a hang lasts at least: beyond the agent's PUBACK timeout.
HANG_MIN_S = KEEPALIVE_S + 1.5
# Deadline of every wait (catch-up, quiescence, agent start): a failure, not slowness.
WAIT_S = 60.0
POLL_S = 0.05


class Fault(StrEnum):
    CUT = "cut"
    STALL = "stall"
    NO_PUBACK = "no-puback"
    RESTART = "broker-restart"
    RESTART_FRESH = "broker-restart-fresh"
    HANG = "broker-hang"
    HANG_KILL = "broker-hang-kill"
    AGENT_KILL = "agent-kill"


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRecord:
    """One injected fault, as the torture saw it."""

    kind: Fault
    at_s: float  # since the torture started
    held_s: float  # how long the fault lasted
    catch_up_s: float  # from link back until the central post had everything stored

    def __str__(self) -> str:
        return (
            f"{self.at_s:7.1f} s  {self.kind.value:<21} held {self.held_s:4.1f} s, "
            f"caught up in {self.catch_up_s:4.1f} s"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """The agent process's resources at a caught-up instant."""

    pid: int
    at_s: float
    rss_kb: int
    fds: int
    tasks: int


@dataclass
class TortureSite:
    """The gateway under torture and what is around it."""

    data: Path
    broker: Mosquitto
    link: LinkProxy
    cabinet: Cabinet
    central: CentralPost
    agent: AgentProcess
    gw: str = GATEWAY_ID

    def log(self, chars: int = 4000) -> str:
        return self.agent.log_path.read_text(errors="replace")[-chars:]

    def status(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.data / STATUS_FILE).read_text())
        return loaded

    def outbox(self) -> tuple[int, set[int], int]:
        """From the agent's outbox file: (last seq, seqs stored, last commit ms)."""
        db = sqlite3.connect(f"file:{self.data / OUTBOX_FILE}?mode=ro", uri=True, timeout=10)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            stored = {seq for (seq,) in db.execute("SELECT seq FROM records")}
        finally:
            db.close()
        return int(meta.get("next_seq", 1)) - 1, stored, int(meta.get("last_commit_ms", 0))


def torture_config(cabinet: Cabinet, broker_url: str) -> str:
    """The simulated gateway's configuration, with a short keepalive and backoff."""
    text = agent_config(cabinet, broker_url)
    for old, new in (
        ("keepalive = 10\n", f"keepalive = {KEEPALIVE_S}\n"),
        ("reconnect_max = 10.0\n", f"reconnect_max = {RECONNECT_MAX_S}\n"),
        # A Telemetry message every second: records are in flight at every fault.
        ("batch_interval = 1.0\n", "batch_interval = 1.0\ntelemetry_delay = 1.0\n"),
    ):
        if old not in text:
            raise RuntimeError(f"sim/run.py agent_config no longer writes {old.strip()!r}")
        text = text.replace(old, new)
    return text


@contextlib.asynccontextmanager
async def torture_site(data: Path) -> AsyncIterator[TortureSite]:
    """Start everything in ``data``; stop everything on exit."""
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(Mosquitto(data_dir=data / "mosquitto"))
        link = await stack.enter_async_context(LinkProxy("127.0.0.1", broker.port))
        cabinet = await stack.enter_async_context(
            Cabinet(Scenario(), link_dir=data / "dev", line_name=LINE_ROLE)
        )
        model = asyncio.create_task(cabinet.run(), name="sim.cabinet")
        stack.callback(model.cancel)
        ensure_keys(data)
        config = data / "agent.toml"
        config.write_text(torture_config(cabinet, link.url))
        central = await stack.enter_async_context(
            CentralPost(broker.url, keys={GATEWAY_ID: load_public_pem(data / "gateway.pub")})
        )
        agent = AgentProcess(config, data / "agent.log")
        await agent.start()
        stack.push_async_callback(agent.stop)
        yield TortureSite(
            data=data, broker=broker, link=link, cabinet=cabinet, central=central, agent=agent
        )


class Torture:
    """Injects faults into a :class:`TortureSite` and keeps the account."""

    def __init__(
        self,
        site: TortureSite,
        rng: random.Random,
        *,
        hold: tuple[float, float] = (1.0, 5.0),
        healthy: tuple[float, float] = (0.5, 3.0),
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.site = site
        self.rng = rng
        self.hold = hold
        self.healthy = healthy
        self.echo = echo or (lambda line: None)
        self.faults: list[FaultRecord] = []
        self.samples: list[Sample] = []
        self.first_seq: int | None = None
        self._t0 = time.monotonic()

    # -- running ---------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    async def start(self) -> None:
        """Wait for the agent's first message at the central post (its agent.start)."""
        central = self.site.central
        await self._until(
            "the agent's first message at the central post",
            lambda: any(e["code"] == "agent.start" for e in central.events),
        )
        self.first_seq = min(e["seq"] for e in central.events if e["code"] == "agent.start")
        self._t0 = time.monotonic()
        await self.sample()

    async def inject(self, kind: Fault) -> FaultRecord:
        """Wait a healthy moment, inject ``kind``, end it, wait until caught up."""
        # The random instant is the point of the torture: this wait is not a sync.
        await asyncio.sleep(self.rng.uniform(*self.healthy))
        at = self.elapsed()
        held = self.rng.uniform(*self.hold)
        started = time.monotonic()
        await self._apply(kind, held)
        held = time.monotonic() - started
        catch_up = await self.catch_up(f"after {kind.value} at {at:.1f} s")
        record = FaultRecord(kind=kind, at_s=at, held_s=held, catch_up_s=catch_up)
        self.faults.append(record)
        self.echo(str(record))
        await self.sample()
        return record

    async def _apply(self, kind: Fault, held: float) -> None:
        site = self.site
        link = site.link
        match kind:
            case Fault.CUT:
                await link.cut()
                await asyncio.sleep(held)
                await link.restore()
            case Fault.STALL:
                await link.stall()
                await asyncio.sleep(held)
                await link.restore()
            case Fault.NO_PUBACK:
                await link.withhold_pubacks()
                await asyncio.sleep(held)
                await link.restore()
            case Fault.RESTART:
                await self._replace_broker(keep_persistence=True)
            case Fault.RESTART_FRESH:
                await self._quiesce()
                await self._replace_broker(keep_persistence=False)
            case Fault.HANG:
                pid = self._broker_pid()
                os.kill(pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(max(held, HANG_MIN_S))
                finally:
                    os.kill(pid, signal.SIGCONT)
            case Fault.HANG_KILL:
                await self._quiesce()
                pid = self._broker_pid()
                os.kill(pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(max(held, HANG_MIN_S))
                finally:
                    os.kill(pid, signal.SIGKILL)
                await self._replace_broker(keep_persistence=self.rng.random() < 0.5)
            case Fault.AGENT_KILL:
                proc = site.agent.proc
                if proc is None or proc.returncode is not None:
                    raise AssertionError(f"the agent died on its own:\n{site.log()}")
                proc.kill()
                await proc.wait()
                await asyncio.sleep(held / 4)
                await site.agent.start()

    def _broker_pid(self) -> int:
        pid = self.site.broker.pid
        if pid is None:
            raise RuntimeError("mosquitto is not running")
        return pid

    async def _replace_broker(self, *, keep_persistence: bool) -> None:
        """Restart mosquitto with the link cut until the central post is subscribed again,
        so nothing the agent publishes reaches a broker nobody listens to."""
        site = self.site
        await site.link.cut()
        connections = site.central.connections
        await site.broker.restart(keep_persistence=keep_persistence)
        await self._until(
            "the central post subscribed to the new broker",
            lambda: site.central.connections > connections and site.central.connected,
        )
        await site.link.restore()

    async def _quiesce(self) -> None:
        """Make the agent delete nothing more, then wait until the central post has every
        record it deleted: what a dying broker then loses, the agent still holds."""
        site = self.site
        await site.link.withhold_pubacks()
        # PUBACKs already on their way still count; the agent's deletes are
        # committed with its next commit (one per batch interval).
        since = int(time.time() * 1000) + 500
        await self._until("the agent committed its last deletes", lambda: site.outbox()[2] >= since)
        last, stored, _ = site.outbox()
        acked = set(range(self._first(), last + 1)) - stored

        def delivered() -> bool:
            missing = site.central.gaps(site.gw, start=self._first(), end=last)
            return not any(s in acked for a, b in missing for s in range(a, b + 1))

        await self._until("the central post has every record the agent deleted", delivered)

    async def catch_up(self, when: str) -> float:
        """Wait until the central post has every record the agent has stored now."""
        started = time.monotonic()
        last, _, _ = self.site.outbox()
        await self._until(
            f"every record up to seq {last} at the central post {when}",
            lambda: not self.site.central.gaps(self.site.gw, start=self._first(), end=last),
        )
        return time.monotonic() - started

    async def sample(self) -> Sample:
        """The agent's RSS, fds and asyncio tasks at its next status.json written while
        online with nothing in flight (so that counts compare between samples)."""
        proc = self.site.agent.proc
        assert proc is not None
        since = int(time.time() * 1000)
        await self._until(
            "the agent online with nothing in flight (a record stranded?)",
            lambda: self._steady(proc.pid, since),
        )
        status = self.site.status()
        sample = Sample(
            pid=proc.pid,
            at_s=self.elapsed(),
            rss_kb=_rss_kb(proc.pid),
            fds=len(os.listdir(f"/proc/{proc.pid}/fd")),
            tasks=int(status["tasks"]),
        )
        self.samples.append(sample)
        return sample

    def _steady(self, pid: int, since_ms: int) -> bool:
        with contextlib.suppress(OSError, ValueError, KeyError):
            status = self.site.status()
            return bool(
                status["pid"] == pid
                and status["t"] >= since_ms
                and status["uplink"]["state"] == "online"
                and status["outbox"]["inflight"] == 0
            )
        return False

    async def finish(self) -> dict[str, Any]:
        """Healthy link: wait until caught up, stop the agent cleanly, return its status."""
        await self.catch_up("at the end")
        await self.sample()
        code = await self.site.agent.stop()
        if code != 0:
            raise AssertionError(f"the agent exited with {code}:\n{self.site.log()}")
        return self.site.status()

    # -- figures ---------------------------------------------------------------

    def _first(self) -> int:
        if self.first_seq is None:
            raise RuntimeError("Torture.start() first")
        return self.first_seq

    def last_process_samples(self) -> list[Sample]:
        """Samples of the agent process that ran last (kills start a new one)."""
        if not self.samples:
            return []
        pid = self.samples[-1].pid
        return [s for s in self.samples if s.pid == pid]

    def figures(self) -> dict[str, Any]:
        stats = self.site.central.stats()
        counts: dict[str, int] = {}
        for fault in self.faults:
            counts[fault.kind.value] = counts.get(fault.kind.value, 0) + 1
        own = self.last_process_samples()
        return {
            "seconds": round(self.elapsed(), 1),
            "faults": len(self.faults),
            "by_kind": counts,
            "records": stats["verified"] - stats["duplicates"],
            "readings": stats["readings"],
            "duplicates": stats["duplicates"],
            "max_catch_up_s": round(max((f.catch_up_s for f in self.faults), default=0.0), 2),
            "rss_kb": [own[0].rss_kb, own[-1].rss_kb] if own else [],
            "fds": [own[0].fds, own[-1].fds] if own else [],
            "tasks": [own[0].tasks, own[-1].tasks] if own else [],
            "samples_last_process": len(own),
        }

    async def _until(self, what: str, condition: Callable[[], bool]) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                while not condition():  # noqa: ASYNC110 - state of other processes
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            history = "\n".join(map(str, self.faults)) or "(no fault yet)"
            raise AssertionError(
                f"not within {WAIT_S} s: {what}\nfaults so far:\n{history}\n"
                f"central: {self.site.central.stats()}\nagent log:\n{self.site.log()}"
            ) from None


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plan(rng: random.Random, kinds: list[Fault], *, kill_early: bool = True) -> list[Fault]:
    """``kinds`` in a seeded random order; agent kills in the first half if ``kill_early``,
    so the last agent process lives through several faults (its resources are compared)."""
    order = list(kinds)
    rng.shuffle(order)
    if kill_early:
        kills = [k for k in order if k is Fault.AGENT_KILL]
        rest = [k for k in order if k is not Fault.AGENT_KILL]
        for kill in kills:
            rest.insert(rng.randrange(0, max(1, len(rest) // 2)), kill)
        order = rest
    return order


def all_faults() -> list[Fault]:
    return list(Fault)

"""Link-fault torture: every kind of link and broker fault, at seeded random instants.

The simulated gateway (agent process, virtual cabinet, link proxy, real
mosquitto, reference central post) lives through each fault of sim/torture.py
once, in a seeded random order with random durations: link cut, half-open
stall, withheld PUBACKs, broker restart with and without its persistence,
broker hang (SIGSTOP) resumed, broker hang then SIGKILL and a new broker, and an
agent kill. After each fault the central post must catch up on everything the
agent holds; at the end, with a healthy link, every seq from the first to the
last is at the central post, the outbox is empty, duplicates are bounded by one
in-flight window per fault, and the agent's RSS, fds and tasks did not grow.

The seed is printed; ``ARMOIRE_TORTURE_SEED=N`` replays a run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from agent.outbox import DELETE_BATCH
from agent.uplink import WINDOW
from sim.torture import Fault, Torture, all_faults, plan, torture_site

pytestmark = pytest.mark.integration

SEED_ENV = "ARMOIRE_TORTURE_SEED"
# Resources of the last agent process between its first and last caught-up
# instants. Not timing thresholds: a leak per fault or per reconnect (a socket,
# a task, a client object) shows as more than this over several faults.
FD_SLACK = 2
TASK_SLACK = 2
RSS_SLACK_KB = 8 * 1024


def _seed() -> int:
    given = os.environ.get(SEED_ENV)
    return int(given) if given else random.SystemRandom().randrange(2**32)


async def test_torture__every_record_arrives_after_any_link_fault(tmp_path: Path) -> None:
    """After any link or broker fault the control room would miss records until the gateway
    restarts, get unbounded duplicates, or the agent would leak sockets, tasks or memory."""
    seed = _seed()
    print(f"torture seed {seed} (replay: {SEED_ENV}={seed})")
    rng = random.Random(seed)
    async with torture_site(tmp_path) as site:
        torture = Torture(site, rng, echo=print)
        await torture.start()
        kinds = plan(rng, all_faults())
        for kind in kinds:
            await torture.inject(kind)
        status = await torture.finish()
        figures = torture.figures()
        print(f"torture seed {seed}: {figures}")
        central = site.central
        context = f"seed {seed}\n" + "\n".join(map(str, torture.faults))

        # Every seq from the first to the last, none rejected, none evicted.
        outbox = status["outbox"]
        assert central.rejections == [], context
        assert central.gaps(site.gw, start=torture.first_seq, end=outbox["last_seq"]) == [], context
        assert central.evictions == [], context
        # The outbox is empty: nothing stranded, nothing in flight.
        assert sum(outbox["depth"].values()) == 0, (context, outbox)
        assert outbox["inflight"] == 0, (context, outbox)
        assert outbox["oldest_ms"] is None, (context, outbox)

        # Duplicates: at most one in-flight window per fault. An agent kill also
        # loses its not yet committed deletes (at most DELETE_BATCH, committed at
        # the latest with the next batch), which are sent again.
        kills = kinds.count(Fault.AGENT_KILL)
        bound = WINDOW * len(kinds) + DELETE_BATCH * kills
        assert central.stats()["duplicates"] <= bound, (context, figures)

        # The last agent process lived through several faults without growing.
        own = torture.last_process_samples()
        assert len(own) >= 3, (context, torture.samples)
        first, last = own[0], own[-1]
        assert last.fds <= first.fds + FD_SLACK, (context, own)
        assert last.tasks <= first.tasks + TASK_SLACK, (context, own)
        assert last.rss_kb <= first.rss_kb + RSS_SLACK_KB, (context, own)

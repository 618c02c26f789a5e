"""Link-fault soak: the torture of tests/integration/test_torture.py for minutes or hours.

The simulated gateway (agent process, virtual cabinet, link proxy, real
mosquitto, reference central post; sim/torture.py) lives through seeded random
faults one after the other until the duration is spent: link cuts, half-open
stalls, withheld PUBACKs, broker restarts with and without persistence, broker
hangs (SIGSTOP) resumed or killed and replaced, and now and then an agent
kill. After each fault the central post must catch up on everything stored.

Prints one line per fault, then the figures: faults injected (per kind),
records and readings received, duplicates, the longest catch-up after the link
was back (how old a stored record can get once service returns), and the trend
of the agent's RSS, open fds and asyncio tasks over the longest-lived agent
process. Ends with one JSON line. Not a timing test: the exit status is 1 only
if a record is missing at the central post or left in the outbox.

Usage: .venv/bin/python bench/soak.py [--duration 600] [--seed N] [--data DIR]
                                      [--kill-weight 0.3]
       make soak ARGS="--duration 3600"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from sim.torture import Fault, Sample, Torture, torture_site

# Relative frequency of each fault; an agent kill starts a new process (and a
# new resource baseline), so it comes less often.
WEIGHTS = dict.fromkeys(Fault, 1.0) | {Fault.AGENT_KILL: 0.3}


def _trend(samples: list[Sample]) -> dict[str, Any]:
    """First, last, max, and least-squares slope per hour of each resource."""
    out: dict[str, Any] = {"pid": samples[0].pid, "samples": len(samples)}
    span = samples[-1].at_s - samples[0].at_s
    for name in ("rss_kb", "fds", "tasks"):
        values = [getattr(s, name) for s in samples]
        slope = 0.0
        if len(samples) > 1 and span > 0:
            xs = [s.at_s for s in samples]
            mx, my = sum(xs) / len(xs), sum(values) / len(values)
            var = sum((x - mx) ** 2 for x in xs)
            if var:
                slope = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True)) / var
        out[name] = {
            "first": values[0],
            "last": values[-1],
            "max": max(values),
            "per_hour": round(slope * 3600, 1),
        }
    out["over_s"] = round(span, 1)
    return out


async def soak(duration: float, seed: int, data: Path, kill_weight: float) -> int:
    rng = random.Random(seed)
    weights_by_kind = WEIGHTS | {Fault.AGENT_KILL: kill_weight}
    print(f"soak seed {seed}, {duration:.0f} s, data in {data}", flush=True)
    async with torture_site(data) as site:
        torture = Torture(site, rng, echo=lambda line: print(line, flush=True))
        await torture.start()
        kinds, weights = list(weights_by_kind), list(weights_by_kind.values())
        while torture.elapsed() < duration:
            await torture.inject(rng.choices(kinds, weights)[0])
        status = await torture.finish()
        figures = torture.figures()
        central = site.central
        outbox = status["outbox"]
        missing = central.gaps(site.gw, start=torture.first_seq, end=outbox["last_seq"])
        left = sum(outbox["depth"].values())
        by_pid: dict[int, list[Sample]] = {}
        for sample in torture.samples:
            by_pid.setdefault(sample.pid, []).append(sample)
        longest = max(by_pid.values(), key=lambda s: s[-1].at_s - s[0].at_s)
        trend = _trend(longest)
    report = {
        "seed": seed,
        "seconds": figures["seconds"],
        "faults": figures["faults"],
        "by_kind": figures["by_kind"],
        "records": figures["records"],
        "readings": figures["readings"],
        "duplicates": figures["duplicates"],
        "max_catch_up_s": figures["max_catch_up_s"],
        "agent_processes": len(by_pid),
        "trend": trend,
        "missing": missing,
        "left_in_outbox": left,
        "inflight_at_end": outbox["inflight"],
    }
    print()
    print(f"faults injected      {figures['faults']}  {figures['by_kind']}")
    print(f"records received     {figures['records']} ({figures['readings']} readings)")
    print(f"duplicates           {figures['duplicates']}")
    print(f"max catch-up         {figures['max_catch_up_s']} s after the link was back")
    print(f"missing at central   {missing or 'none'}")
    print(f"left in the outbox   {left} (in flight {outbox['inflight']})")
    print(
        f"agent process {trend['pid']} over {trend['over_s']} s ({trend['samples']} samples): "
        + ", ".join(
            f"{name} {t['first']} -> {t['last']} (max {t['max']}, {t['per_hour']:+}/h)"
            for name, t in ((n, trend[n]) for n in ("rss_kb", "fds", "tasks"))
        )
    )
    print(json.dumps(report))
    return 1 if missing or left or outbox["inflight"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None, help="replay a run")
    parser.add_argument("--data", type=Path, default=None, help="keep the run's files here")
    parser.add_argument(
        "--kill-weight",
        type=float,
        default=WEIGHTS[Fault.AGENT_KILL],
        help="relative frequency of agent kills (0: none, one agent process throughout)",
    )
    args = parser.parse_args()
    # paho's "failed to receive on socket" from the central post: faults are the point.
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    if args.data is not None:
        args.data.mkdir(parents=True, exist_ok=True)
        return asyncio.run(soak(args.duration, seed, args.data, args.kill_weight))
    with tempfile.TemporaryDirectory(prefix="armoire-soak-") as tmp:
        return asyncio.run(soak(args.duration, seed, Path(tmp), args.kill_weight))


if __name__ == "__main__":
    sys.exit(main())

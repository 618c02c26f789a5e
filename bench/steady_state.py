"""Steady-state cost of the agent in the default simulated cabinet.

Starts mosquitto, the virtual cabinet (8 lamps, a meter, an environment
sensor), the reference central post and the agent as its own process, waits
for a warm-up, then measures over a window:

- the agent's resident memory (VmRSS at the end, VmHWM peak), MB;
- the agent's CPU, % of one core (utime+stime from /proc/PID/stat);
- readings/s published by the agent and verified by the central post.

Usage: .venv/bin/python bench/steady_state.py [--warmup 15] [--seconds 60]
Prints a human-readable summary and, last, one JSON line. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from agent.clock import SystemClock
from central.post import CentralPost, load_public_pem
from sim.broker import Mosquitto
from sim.cabinet import Cabinet, Scenario
from sim.run import GATEWAY_ID, LINE_ROLE, AgentProcess, agent_config, ensure_keys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def memory_mb(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def published_readings(data: Path) -> int:
    try:
        status = json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(status["uplink"]["published_readings"])


async def measure(warmup: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-") as tmp:
        data = Path(tmp)
        async with (
            Mosquitto(data_dir=data / "broker") as broker,
            Cabinet(
                Scenario(), clock=SystemClock(), link_dir=data / "dev", line_name=LINE_ROLE
            ) as cabinet,
        ):
            model = asyncio.create_task(cabinet.run())
            ensure_keys(data)
            config = data / "agent.toml"
            config.write_text(agent_config(cabinet, broker.url))
            keys = {GATEWAY_ID: load_public_pem(data / "gateway.pub")}
            async with CentralPost(broker.url, keys=keys) as central:
                agent = AgentProcess(config, data / "agent.log")
                await agent.start()
                assert agent.proc is not None
                pid = agent.proc.pid
                try:
                    await asyncio.sleep(warmup)  # warm-up window: the thing being measured
                    t0, cpu0 = time.monotonic(), cpu_seconds(pid)
                    verified0 = central.stats()["readings"]
                    published0 = published_readings(data)
                    await asyncio.sleep(seconds)  # the measurement window itself
                    elapsed = time.monotonic() - t0
                    cpu = cpu_seconds(pid) - cpu0
                    rss, peak = memory_mb(pid)
                    verified = central.stats()["readings"] - verified0
                    published = published_readings(data) - published0
                    rejected = central.stats()["rejected"]
                finally:
                    await agent.stop()
                    model.cancel()
    return {
        "window_s": round(elapsed, 1),
        "agent_rss_mb": round(rss, 1),
        "agent_peak_rss_mb": round(peak, 1),
        "agent_cpu_pct": round(100 * cpu / elapsed, 2),
        "readings_per_s_published": round(published / elapsed, 1),
        "readings_per_s_verified": round(verified / elapsed, 1),
        "rejected": rejected,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(measure(args.warmup, args.seconds))
    print(
        f"agent over {result['window_s']} s of steady state (default scenario: 8 lamps, "
        f"a meter, an environment sensor, a contactor; 69 points):\n"
        f"  resident memory  {result['agent_rss_mb']} MB (peak {result['agent_peak_rss_mb']} MB)\n"
        f"  CPU              {result['agent_cpu_pct']} % of one core\n"
        f"  readings/s       {result['readings_per_s_published']} published, "
        f"{result['readings_per_s_verified']} verified by the central post",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

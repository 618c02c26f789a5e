"""Camera latencies and memory (issue 14). Figures, not a pass/fail test.

1. Tamper at the camera → alarm committed, and → the still fully acknowledged by the
   broker: the agent runs in this process (SystemClock) with one simulated ONVIF camera
   and a real mosquitto on loopback. The camera is covered (its PullPoint event queue
   gets the tamper notification); measured from that instant to (a) the
   ``camera.tamper`` alarm committed in the outbox (SQLite, synced) and (b) the PUBACK
   of the last Blob part of the still the rule asked for. The rule set is the default
   ``camera-tamper`` rule with ``clear_after = 0`` so that runs can follow each other.
   The camera is *turned* (a full 640x480 still, ~73 KB, two Blob parts); ``--covered``
   makes it a covered lens (a dark still of ~5 KB, one part).
2. Agent RSS (a separate process, the default cabinet: 8 lamps, meter, sensor,
   contactor) with four cameras configured, compared with none, after a warm-up.

Usage: .venv/bin/python bench/cameras.py [--count 20] [--warmup 20]
(or ``make bench-cameras``). Prints a summary on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import ms_summary, until

from agent.clock import SystemClock
from agent.config import load_config
from agent.outbox import Record
from agent.runtime import Agent
from agent.stills import Stored
from sim.broker import Mosquitto
from sim.cabinet import Cabinet, Scenario
from sim.run import LINE_ROLE, AgentProcess, agent_config, ensure_keys

RULES = """
[[rules]]
name = "camera-tamper"
when = [{ point = "cam-*/tamper", eq = true }]
hold_off = 0
clear_after = 0
alarm = { code = "camera.tamper", severity = "critical" }
device_action = { device = "{src}", name = "snapshot" }
"""


async def latencies(count: int, *, covered: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-cameras-") as tmp:
        data = Path(tmp)
        async with (
            Mosquitto(data_dir=data / "broker") as broker,
            Cabinet(
                Scenario(cameras=1), clock=SystemClock(), link_dir=data / "dev", line_name=LINE_ROLE
            ) as cabinet,
        ):
            model = asyncio.create_task(cabinet.run())
            ensure_keys(data)
            config = data / "agent.toml"
            config.write_text(agent_config(cabinet, broker.url, tail=RULES))
            agent = Agent(load_config(config), SystemClock())
            committed: list[float] = []
            acked: dict[int, float] = {}
            stills: list[Stored] = []
            rule_alarm, store, done = agent.events.rule_alarm, agent.stills.store, agent.outbox.done

            def on_alarm(**kw: Any) -> None:
                rule_alarm(**kw)  # commits and syncs before returning
                if kw["raised"]:
                    committed.append(time.monotonic())

            def on_store(*args: Any, **kw: Any) -> Stored:
                stored = store(*args, **kw)
                stills.append(stored)
                return stored

            def on_done(record: Record) -> None:
                done(record)
                acked[record.seq] = time.monotonic()

            agent.events.rule_alarm = on_alarm  # type: ignore[method-assign]
            agent.stills.store = on_store  # type: ignore[method-assign]
            agent.outbox.done = on_done  # type: ignore[method-assign]
            stop = asyncio.Event()
            runner = asyncio.create_task(agent.run(stop))
            camera = cabinet.cameras["cam-01"]
            camera.tamper_covers = covered
            to_alarm, to_still, sizes = [], [], []
            try:
                await until(lambda: agent.points.get("cam-01/tamper") is not None, 30)
                await until(agent.uplink.online.is_set, 30)
                for i in range(count):
                    await asyncio.sleep(0.2 + (i * 0.37) % 1)  # land anywhere in a pull
                    committed.clear()
                    stills.clear()
                    camera.set_tamper(True)
                    t0 = time.monotonic()
                    await until(lambda: bool(committed), 10)
                    to_alarm.append(committed[0] - t0)
                    await until(
                        lambda: bool(stills) and all(s in acked for s in stills[0].parts), 30
                    )
                    to_still.append(max(acked[s] for s in stills[0].parts) - t0)
                    sizes.append(stills[0].size)
                    camera.set_tamper(False)
                    await until(lambda: agent.points.get("cam-01/tamper").value is False, 10)  # type: ignore[union-attr]
            finally:
                stop.set()
                await runner
                model.cancel()
    return {
        "tamper_to_alarm_committed": ms_summary(to_alarm),
        "tamper_to_still_acknowledged": ms_summary(to_still),
        "still_bytes_median": int(statistics.median(sizes)),
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def rss(cameras: int, warmup: float) -> float:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-cameras-") as tmp:
        data = Path(tmp)
        async with (
            Mosquitto(data_dir=data / "broker") as broker,
            Cabinet(
                Scenario(cameras=cameras),
                clock=SystemClock(),
                link_dir=data / "dev",
                line_name=LINE_ROLE,
            ) as cabinet,
        ):
            model = asyncio.create_task(cabinet.run())
            ensure_keys(data)
            config = data / "agent.toml"
            config.write_text(agent_config(cabinet, broker.url))
            agent = AgentProcess(config, data / "agent.log")
            await agent.start()
            assert agent.proc is not None
            try:
                await asyncio.sleep(warmup)  # the warm-up window is what is measured after
                if cameras:  # a still from each camera, so the snapshot path is resident too
                    for camera in cabinet.cameras.values():
                        camera.set_tamper(True)
                    await asyncio.sleep(5)  # lets the stills be taken and sent
                return _rss_mb(agent.proc.pid)
            finally:
                await agent.stop()
                model.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="tamper events to measure")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before RSS is read")
    parser.add_argument("--covered", action="store_true", help="a covered lens (dark still)")
    args = parser.parse_args()
    results: dict[str, Any] = await latencies(args.count, covered=args.covered)
    results["agent_rss_mb_no_camera"] = round(await rss(0, args.warmup), 1)
    results["agent_rss_mb_4_cameras"] = round(await rss(4, args.warmup), 1)
    for key, value in results.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())

"""Fail-safe latencies: trigger → alarm committed, trigger → write on the wire, sunset → lamps on.

The agent runs in this process (SystemClock) against the simulated cabinet on its
virtual RS-485 line (19200 baud, wire timing on); no broker is needed (the uplink keeps
retrying, which is the situation the fail-safe layer is for).

1. A lamp's controller starts reporting a failure (the simulated register changes: the
   "trigger", a point change on the bus). A rule with no hold-off raises ``lamp.failure``
   and writes the lamp's level at priority 3. Measured from the register change to (a)
   the alarm committed in the outbox (SQLite, synced) and (b) the simulated lamp holding
   the new level (the Modbus write on the wire, taken). Targets (issue 9): (a) ≤ one poll
   period + 100 ms, (b) ≤ one poll period + 200 ms, with the lamp poll period at 1 s.
2. Sunset → lamps on: lighting groups of one lamp each switch on a few seconds apart at a
   site whose sunset is now; measured from the computed instant to the lamp's level on
   the device.

Usage: .venv/bin/python bench/failsafe.py [--count 20]
Prints a summary on stderr and one JSON line on stdout. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import ms_summary, until

from agent.clock import SystemClock
from agent.config import SiteConfig, load_config
from agent.lighting import DEFAULT_PROGRAM, night
from agent.runtime import Agent
from sim.cabinet import Cabinet, Scenario
from sim.run import LINE_ROLE, POLL, agent_config, ensure_keys

LAMP_POLL = POLL["lamp-ctl"]
RULE = """
[[rules]]
name = "lamp-failure"
when = [{ point = "lamp-*/failure", eq = true }]
alarm = { code = "lamp.failure", severity = "error" }
write = [{ point = "lamp-*/level", value = 30, priority = 3 }]
"""
GROUPS = 4
GROUP_SPACING_MIN = 0.05  # 3 s between the groups' switching instants
DUSK_IN_S = 12.0


def _place_with_dusk_at(target: dt.datetime) -> SiteConfig:
    longitude = 0.0
    for _ in range(8):
        site = SiteConfig(latitude=0.0, longitude=longitude, timezone="UTC")
        day = target.date()
        dusks = [night(day + dt.timedelta(days=o), site, DEFAULT_PROGRAM).on for o in (-1, 0, 1)]
        dusk = min(d for d in dusks if d > target - dt.timedelta(hours=12))
        error = (dusk - target).total_seconds()
        if abs(error) < 0.5:
            return site
        longitude = (longitude + error / 240.0 + 180.0) % 360.0 - 180.0
    raise RuntimeError("no place found")


async def _with_agent(
    data: Path, tail: str, root: str, place: SiteConfig | None, body: Any
) -> dict[str, Any]:
    async with Cabinet(
        Scenario(), clock=SystemClock(), link_dir=data / "dev", line_name=LINE_ROLE
    ) as cabinet:
        model = asyncio.create_task(cabinet.run())
        ensure_keys(data)
        where = (place.latitude, place.longitude, place.timezone) if place else None
        config_path = data / "agent.toml"
        config_path.write_text(
            agent_config(cabinet, "mqtt://127.0.0.1:9", root_extra=root, tail=tail, place=where)
        )
        agent = Agent(load_config(config_path), SystemClock())
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            return await body(agent, cabinet)  # type: ignore[no-any-return]
        finally:
            stop.set()
            await runner
            model.cancel()


async def triggers(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-failsafe-") as tmp:

        async def body(agent: Agent, cabinet: Cabinet) -> dict[str, Any]:
            committed: dict[str, float] = {}
            original = agent.events.rule_alarm

            def rule_alarm(**kw: Any) -> None:
                original(**kw)  # commits and syncs before returning
                if kw["raised"]:
                    committed[kw["src"]] = time.monotonic()

            agent.events.rule_alarm = rule_alarm  # type: ignore[method-assign]
            await until(lambda: agent.points.get("lamp-08/failure") is not None, 30)
            to_alarm, to_wire = [], []
            lamps = [f"lamp-0{i}" for i in range(1, 9)]
            for i in range(count):
                name = lamps[i % len(lamps)]
                lamp = cabinet.lamp(name)
                # Land between two polls, like a real failure.
                await asyncio.sleep(LAMP_POLL * ((i * 0.37) % 1))
                cabinet.fail_lamp(name)
                cabinet.tick(0.0)  # the register changes now, not at the next model tick
                t0 = time.monotonic()
                wire = await until(lambda: lamp.level == 30, 10)  # noqa: B023
                alarm = await until(lambda: name in committed, 10)  # noqa: B023
                to_alarm.append(committed.pop(name) - t0)
                to_wire.append(wire - t0)
                del alarm
                cabinet.repair_lamp(name)
                cabinet.tick(0.0)
                await until(lambda: lamp.level == 100, 10)  # noqa: B023
            return {
                "trigger_to_alarm": ms_summary(to_alarm),
                "trigger_to_wire": ms_summary(to_wire),
            }

        # No lighting schedule: by day it would hold the lamps off, and a repaired lamp
        # would never return to the level the bench waits for.
        return await _with_agent(Path(tmp), RULE, "lighting = []\n", None, body)


async def sunset() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-sunset-") as tmp:
        dusk = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=DUSK_IN_S)
        place = _place_with_dusk_at(dusk)
        groups = "\n".join(
            f'[[lighting]]\nname = "g{k}"\nlamps = ["lamp-0{k}/level"]\ncontactor = ""\n'
            f"dusk_offset = {(k - 1) * GROUP_SPACING_MIN}\n"
            for k in range(1, GROUPS + 1)
        )

        async def body(agent: Agent, cabinet: Cabinet) -> dict[str, Any]:
            delays = []
            for k in range(1, GROUPS + 1):
                program = next(p for p in agent.config.lighting if p.name == f"g{k}")
                days = [dusk.date() + dt.timedelta(days=o) for o in (-1, 0, 1)]
                ons = [night(d, agent.config.site, program).on for d in days]
                on = min(o for o in ons if o > dusk - dt.timedelta(hours=1))
                lamp = cabinet.lamp(f"lamp-0{k}")
                await until(lambda: lamp.level == 0, 30)  # noqa: B023  (daytime first)
                lit = await until(lambda: lamp.level > 0, DUSK_IN_S + 60)  # noqa: B023
                lit_wall = time.time() - (time.monotonic() - lit)
                delays.append(lit_wall - on.timestamp())
            return {"sunset_to_lamp_on": ms_summary(delays)}

        return await _with_agent(Path(tmp), groups, "", place, body)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="triggers to measure")
    args = parser.parse_args()
    results = {"lamp_poll_s": LAMP_POLL, **await triggers(args.count), **await sunset()}
    for key, value in results.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())

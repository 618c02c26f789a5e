"""Cabinet I/O latencies and the link codec's throughput.

1. Contact → alarm committed: the agent runs in this process (SystemClock) with the
   simulated cabinet; the cabinet door is opened ``--count`` times, at random instants
   between the agent's polls, and the time from the contact changing to the
   ``door.intrusion`` alarm committed in the outbox (SQLite, synced) is measured:
   (a) at the I/O module (its real firmware in the MicroPython Unix port: the module's
       30 ms debounce, its CHANGE frame on the pty, the driver, the rules, the outbox);
   (b) on the gateway's own GPIO (the simulated HAL: 50 ms debounce, then the same path).
   Target (issue 13): p99 ≤ 100 ms.
2. The agent-side codec: STATUS frames decoded per second, and the rate at which it
   throws away line noise (random bytes) and hostile bytes (a sync pattern with a bad
   CRC every 13 bytes: the worst case, one CRC per candidate frame).

Usage: .venv/bin/python bench/iomodule.py [--count 50]   (or make bench-iomodule)
Prints a summary on stderr and one JSON line on stdout. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import ms_summary, until

from agent.clock import SystemClock
from agent.config import load_config
from agent.runtime import Agent
from drivers.iomodule.codec import NEED_DATA, FrameDecoder, MsgType, frame
from sim.cabinet import Cabinet, Scenario
from sim.run import LINE_ROLE, agent_config, ensure_keys

GPIO_DEVICE = '\n[[devices]]\nname = "cabinet"\ndriver = "gpio"\nprofile = "gpio"\n'


async def contact_to_alarm(count: int, *, gpio: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-iomodule-") as tmp:
        data = Path(tmp)
        scenario = Scenario(lamps=2, iomodule=not gpio)
        async with Cabinet(
            scenario, clock=SystemClock(), link_dir=data / "dev", line_name=LINE_ROLE
        ) as cabinet:
            ensure_keys(data)
            config_path = data / "agent.toml"
            config_path.write_text(
                agent_config(
                    cabinet,
                    "mqtt://127.0.0.1:9",
                    root_extra="lighting = []",
                    tail=GPIO_DEVICE if gpio else "",
                )
            )
            agent = Agent(load_config(config_path), SystemClock())
            committed: list[float] = []
            original = agent.events.rule_alarm

            def rule_alarm(**kw: Any) -> None:
                original(**kw)  # commits and syncs before returning
                if kw["raised"] and kw["code"] == "door.intrusion":
                    committed.append(time.monotonic())

            agent.events.rule_alarm = rule_alarm  # type: ignore[method-assign]
            stop = asyncio.Event()
            runner = asyncio.create_task(agent.run(stop))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            gpio_sock = str(data / "dev" / "gpio.sock")

            def door(open_: bool) -> None:
                if gpio:
                    sock.sendto(f"door_contact {int(open_)}".encode(), gpio_sock)
                else:
                    assert cabinet.iomodule is not None
                    cabinet.iomodule.set_contact("door", open_)

            try:
                await until(lambda: agent.points.get("cabinet/door") is not None, 30)
                if gpio:
                    await until(lambda: os.path.exists(gpio_sock), 30)
                rng = random.Random(13)
                delays = []
                for _ in range(count):
                    await asyncio.sleep(rng.uniform(0.2, 1.2))  # anywhere between polls
                    t0 = time.monotonic()
                    door(True)
                    await until(lambda: bool(committed), 10)
                    delays.append(committed.pop() - t0)
                    door(False)
                    await until(lambda: agent.points.get("cabinet/door").value is False, 10)  # type: ignore[union-attr]
                return ms_summary(delays)
            finally:
                sock.close()
                stop.set()
                await runner


def codec_rates(seconds: float = 2.0) -> dict[str, float]:
    payload = bytes((3, 0x0B, 1, 0, 0, 215))
    chunk = b"".join(frame(MsgType.STATUS, i & 0xFF, payload) for i in range(1000))
    decoder = FrameDecoder()
    frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        decoder.receive_data(chunk)
        while decoder.next_event() is not NEED_DATA:
            frames += 1
    elapsed = time.perf_counter() - start
    noise = bytes(random.Random(1).randrange(256) for _ in range(1 << 16))
    start = time.perf_counter()
    decoder = FrameDecoder()
    for _ in range(20):
        decoder.receive_data(noise)
        while decoder.next_event() is not NEED_DATA:
            pass
    noise_elapsed = time.perf_counter() - start
    # Worst case: a sync pattern and a plausible header every 13 bytes, each with a bad
    # CRC, so every candidate costs a CRC over a full frame.
    hostile = (b"\xa5\x5a\x81\x00\x06" + bytes(8)) * 5000
    start = time.perf_counter()
    decoder = FrameDecoder()
    decoder.receive_data(hostile)
    while decoder.next_event() is not NEED_DATA:
        pass
    hostile_elapsed = time.perf_counter() - start
    return {
        "frames_per_s": round(frames / elapsed),
        "noise_bytes_per_s": round(20 * len(noise) / noise_elapsed),
        "bad_crc_bytes_per_s": round(len(hostile) / hostile_elapsed),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="door openings to measure")
    args = parser.parse_args()
    results = {
        "iomodule_contact_to_alarm": await contact_to_alarm(args.count, gpio=False),
        "gpio_contact_to_alarm": await contact_to_alarm(args.count, gpio=True),
        "codec": codec_rates(),
    }
    for key, value in results.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())

"""The same-load race (issue 10): Modbus TCP unit ids polled every second, every reading
published, each one verified at a subscriber.

The incumbent gateway was measured on this machine class polling 50 Modbus TCP unit
ids x 10 holding registers every 1 s (500 readings/s, every reading published, local
mosquitto, a 120 s window after a 30 s warm-up): RSS 65.7 MB, 20-21 threads, 6.0 CPU-s
per 10,000 readings, poll-to-broker latency p50 0.19 s / p99 0.27 s.

Here: pymodbus's TCP server in this process serves ``--units`` register banks
(sim/devices/bank.py: ten registers whose values change at every read and can be
checked), mosquitto runs on a free loopback port, the agent runs as its own process
polling every unit each second (driver modbus-tcp, one connection, deadband 0), and a
subscriber verifies every Telemetry message with the gateway's key (central/post.py's
Ledger) and every reading against the bank's formula. Figures over the window:

- agent RSS (MB) and threads, CPU-seconds per 10,000 readings delivered;
- readings delivered and verified per second; poll numbers missing at the subscriber
  (a read the agent did not deliver: failed polls, counted by the agent, are reads
  whose reply never came), and readings that do not match their bank (wrong);
- latency read -> broker (subscriber arrival - reading time) p50/p99;
- bytes per reading on the wire, agent -> broker (counted by a TCP proxy).

Usage: .venv/bin/python bench/same_load.py [--quick] [--units 50] [--runs default,fast]
       [--profile FILE]  (the agent under cProfile: where its CPU goes, top functions)
Runs: ``default`` (the default batch settings), ``b0.1`` (batch_interval = 0.1),
``fast`` (batch_interval = telemetry_delay = 0.1). Prints a summary per run and, last,
one JSON line. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from central.post import SUBSCRIPTIONS, Ledger, load_public_pem
from sim.broker import Mosquitto
from sim.devices.bank import REGISTERS, RegisterBank, bank_profile, bank_value
from sim.modbus_tcp import TcpDevices
from sim.proxy import LinkProxy
from sim.run import GATEWAY_ID, AgentProcess, ensure_keys

CLK_TCK = os.sysconf("SC_CLK_TCK")
RUNS = {
    "default": {},
    "b0.1": {"batch_interval": 0.1},
    "fast": {"batch_interval": 0.1, "telemetry_delay": 0.1},
}


def proc_figures(pid: int) -> tuple[float, float, int]:
    """(CPU seconds, RSS MB, threads) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])


def config_text(units: int, port: int, broker_url: str, settings: dict[str, float]) -> str:
    storage = "".join(f"{key} = {value}\n" for key, value in settings.items())
    devices = "".join(
        f'\n[[devices]]\nname = "bank-{u:03d}"\ndriver = "modbus-tcp"\nhost = "127.0.0.1"\n'
        f'port = {port}\naddress = {u}\nprofile = "bank-10.toml"\npoll = 1.0\n'
        for u in range(1, units + 1)
    )
    return (
        f'gateway = "{GATEWAY_ID}"\nlighting = []\n\n'
        '[site]\nlatitude = 47.32\nlongitude = 5.04\ntimezone = "Europe/Paris"\n\n'
        '[board]\nfile = "sim"\nbase_dir = "."\n\n'
        f'[uplink]\nbroker = "{broker_url}"\n\n'
        f'[storage]\ndata_dir = "."\n{storage}\n'
        "[polling]\nresponse_timeout = 0.5\n" + devices
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class ProfiledAgent(AgentProcess):
    """The agent under cProfile, writing its statistics to ``profile`` when it stops."""

    def __init__(self, config: Path, log_path: Path, profile: Path) -> None:
        super().__init__(config, log_path)
        self.profile = profile

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "cProfile", "-o", str(self.profile)],
                *["-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )


@dataclass
class Verifier:
    """Checks every reading against the bank it came from; counts what arrives when."""

    keys: dict[str, bytes]
    measuring: bool = False
    delivered: int = 0  # readings received while measuring
    verified: int = 0
    wrong: int = 0
    latencies: list[float] = field(default_factory=list)
    # (unit, poll time ms) -> {register: value}, until the 10 registers are in.
    polls: dict[tuple[int, int], dict[int, int]] = field(default_factory=dict)
    numbers: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.keys)

    def receive(self, topic: str, payload: bytes, now_ms: float) -> None:
        self.ledger.receive(topic, payload)
        readings, self.ledger.readings = self.ledger.readings, []
        for reading in readings:
            device, _, point = reading.point.partition("/")
            if not device.startswith("bank-") or not point.startswith("r"):
                continue
            unit, register = int(device[5:]), int(point[1:])
            if self.measuring:
                self.delivered += 1
                self.latencies.append((now_ms - reading.t_ms) / 1000)
            poll = self.polls.setdefault((unit, reading.t_ms), {})
            assert isinstance(reading.value, int)
            poll[register] = reading.value
            if len(poll) == REGISTERS:
                del self.polls[(unit, reading.t_ms)]
                self._check(unit, poll)

    def _check(self, unit: int, poll: dict[int, int]) -> None:
        n = poll[0]
        good = all(poll[i] == bank_value(unit, n, i) for i in range(1, REGISTERS))
        if not good:
            self.wrong += REGISTERS
        elif self.measuring:
            self.verified += REGISTERS
        self.numbers[unit].append(n)

    def lost_polls(self) -> int:
        """Poll numbers missing between the first and last seen, per unit (wrapping)."""
        lost = 0
        for numbers in self.numbers.values():
            seen = sorted(set(numbers))
            lost += sum(b - a - 1 for a, b in itertools.pairwise(seen))
        return lost


async def subscribe(broker_url: str, verifier: Verifier, ready: asyncio.Event) -> None:
    host, port = broker_url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), identifier="same-load-verifier") as client:
        for topic in SUBSCRIPTIONS:
            await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            verifier.receive(str(message.topic), payload, time.time() * 1000)


async def race(
    units: int,
    settings: dict[str, float],
    warmup: float,
    window: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="armoire-same-load-") as tmp:
        data = Path(tmp)
        banks = [RegisterBank(name=f"bank-{u:03d}", unit=u) for u in range(1, units + 1)]
        async with (
            Mosquitto(data_dir=data / "broker") as broker,
            TcpDevices(banks) as server,
        ):
            host, port = broker.url.removeprefix("mqtt://").split(":")
            async with LinkProxy(host, int(port)) as link:
                ensure_keys(data)
                (data / "bank-10.toml").write_text(bank_profile())
                config = data / "agent.toml"
                config.write_text(config_text(units, server.port, link.url, settings))
                verifier = Verifier({GATEWAY_ID: load_public_pem(data / "gateway.pub")})
                ready = asyncio.Event()
                subscriber = asyncio.create_task(subscribe(broker.url, verifier, ready))
                await ready.wait()
                agent = (
                    AgentProcess(config, data / "agent.log")
                    if profile is None
                    else ProfiledAgent(config, data / "agent.log", profile)
                )
                await agent.start()
                assert agent.proc is not None
                pid = agent.proc.pid
                try:
                    await asyncio.sleep(warmup)  # the warm-up window: what is measured
                    if not agent.running:
                        log = (data / "agent.log").read_text()[-3000:]
                        raise RuntimeError(f"the agent stopped during the warm-up:\n{log}")
                    cpu0, _, _ = proc_figures(pid)
                    bytes0 = link.statistics().bytes_up
                    t0 = time.monotonic()
                    verifier.measuring = True
                    await asyncio.sleep(window)  # the measurement window itself
                    verifier.measuring = False
                    elapsed = time.monotonic() - t0
                    cpu1, rss, threads = proc_figures(pid)
                    sent = link.statistics().bytes_up - bytes0
                    # Polls that failed (a timeout): the bank counted the read, the agent
                    # got no reply; told apart from readings lost after a good poll.
                    status = json.loads((data / "status.json").read_text())
                    failed = sum(d["failures"] for d in status["devices"].values())
                finally:
                    await agent.stop()
                    subscriber.cancel()
                    await asyncio.gather(subscriber, return_exceptions=True)
    delivered = verifier.delivered
    cpu = cpu1 - cpu0
    return {
        "units": units,
        "settings": settings,
        "window_s": round(elapsed, 1),
        "rss_mb": round(rss, 1),
        "threads": threads,
        "cpu_s_per_10k_readings": round(cpu / delivered * 10_000, 3) if delivered else None,
        "cpu_pct": round(100 * cpu / elapsed, 1),
        "delivered_per_s": round(delivered / elapsed, 1),
        "verified_per_s": round(verifier.verified / elapsed, 1),
        "offered_per_s": units * REGISTERS,
        "wrong": verifier.wrong,
        "lost_polls": verifier.lost_polls(),
        "failed_polls": failed,
        "latency_p50_s": round(percentile(verifier.latencies, 0.50), 3) if delivered else None,
        "latency_p99_s": round(percentile(verifier.latencies, 0.99), 3) if delivered else None,
        "bytes_per_reading": round(sent / delivered, 1) if delivered else None,
        "rejected": verifier.ledger.stats()["rejected"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[50])
    parser.add_argument("--runs", default="default,b0.1,fast", help=", ".join(RUNS))
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="5 s warm-up, 15 s window")
    parser.add_argument("--profile", type=Path, help="run the agent under cProfile, stats here")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.seconds = 5.0, 15.0
    results = []
    for units in args.units:
        for run in args.runs.split(","):
            result = asyncio.run(race(units, RUNS[run], args.warmup, args.seconds, args.profile))
            result["run"] = run
            results.append(result)
            print(
                f"{units} units, {run} {result['settings'] or '(default batch settings)'} "
                f"over {result['window_s']} s:\n"
                f"  RSS {result['rss_mb']} MB, {result['threads']} threads, "
                f"CPU {result['cpu_s_per_10k_readings']} s per 10k readings "
                f"({result['cpu_pct']} % of a core)\n"
                f"  readings/s {result['delivered_per_s']} delivered, "
                f"{result['verified_per_s']} verified (offered {result['offered_per_s']}); "
                f"poll numbers missing {result['lost_polls']} (failed polls "
                f"{result['failed_polls']}), wrong {result['wrong']}\n"
                f"  latency read->broker p50 {result['latency_p50_s']} s, "
                f"p99 {result['latency_p99_s']} s; {result['bytes_per_reading']} bytes/reading",
                file=sys.stderr,
                flush=True,
            )
    if args.profile is not None:
        # The whole run (start-up included), by own time: where the CPU goes.
        pstats.Stats(str(args.profile), stream=sys.stderr).sort_stats("tottime").print_stats(25)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

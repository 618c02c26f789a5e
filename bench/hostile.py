"""The agent under a flood of junk on its command topic (issue 7), against the simulator.

Starts mosquitto, the virtual cabinet, the reference central post and the agent as its own
process. After a warm-up, a baseline window measures the agent at rest; then a local attacker
(sim/attacker.py, raw MQTT, as fast as one client can) publishes 1-byte messages on the
gateway's ``cmd`` topic for the flood window, while a genuine ``ping`` command is sent every
``--ping-every`` seconds. Reported (stderr summary, then one JSON line):

- agent resident memory before / peak during the flood / after (MiB; peak from VmHWM, reset
  through /proc/PID/clear_refs at the start of the flood);
- event-loop lag p99 during the flood (the agent's own probe, status.json ``loop_lag``);
- ``ping`` round trip p50 / p99 / max (command published -> verified Ack at the central post);
- telemetry readings verified per second, before vs during the flood;
- flash bytes written per minute (``write_bytes`` of /proc/PID/io), before vs during, and the
  outbox bytes the junk cost (the ``cmd.unauthenticated`` summaries);
- messages the attacker sent, handled by the downlink, dropped at intake.

Usage: .venv/bin/python bench/hostile.py [--seconds 30] [--baseline 30] [--warmup 15]
       [--broker-queue 1000] [--size 1 | --forged]
``--broker-queue`` is mosquitto's per-client queue (max_queued_messages; mosquitto's default is
1000, the simulator's 100000). Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2

from agent.clock import SystemClock
from central.commander import (
    Commander,
    init_central_keys,
    install_trust,
    load_key,
    make_command,
    sign,
)
from central.post import CentralPost, load_public_pem
from sim.broker import Mosquitto
from sim.cabinet import Cabinet, Scenario
from sim.run import GATEWAY_ID, LINE_ROLE, AgentProcess, agent_config, ensure_keys

ENVELOPE_BYTES = 110  # a COSE_Sign1's overhead around an Event body (signature, kid, tag)


def memory_mib(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def written_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def status(data: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded


def reset_peak(pid: int) -> None:
    """Reset the process's peak resident memory (VmHWM) to its current RSS."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)


async def pinger(commander: Commander, every: float, rtts: list[float], lost: list[int]) -> None:
    """Send a ping every ``every`` s; record round trips in ms (a lost ping counts in ``lost``)."""
    while True:
        body = make_command(gw=GATEWAY_ID, op="action", name="ping", now_ms=int(time.time() * 1000))
        start = time.monotonic()
        try:
            await commander.send(GATEWAY_ID, body, timeout=10)
            rtts.append((time.monotonic() - start) * 1000)
        except TimeoutError:
            lost.append(1)
        await asyncio.sleep(max(0.0, every - (time.monotonic() - start)))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="armoire-hostile-") as tmp:
        data = Path(tmp)
        async with (
            Mosquitto(data_dir=data / "broker", max_queued_messages=args.broker_queue) as broker,
            Cabinet(
                Scenario(), clock=SystemClock(), link_dir=data / "dev", line_name=LINE_ROLE
            ) as cabinet,
        ):
            model = asyncio.create_task(cabinet.run())
            ensure_keys(data)
            central_dir = data / "central"
            init_central_keys(central_dir)
            install_trust(central_dir, data)
            config = data / "agent.toml"
            # Telemetry sealed every second, so that rates over a window are not lumpy.
            text = agent_config(cabinet, broker.url).replace(
                "batch_interval = 1.0", "batch_interval = 1.0\ntelemetry_delay = 1.0"
            )
            config.write_text(text)
            keys = {GATEWAY_ID: load_public_pem(data / "gateway.pub")}
            operator = load_key(central_dir / "operator.key")
            async with (
                CentralPost(broker.url, keys=keys) as central,
                Commander(central, broker.url, operator) as cmd,
            ):
                agent = AgentProcess(config, data / "agent.log")
                await agent.start()
                assert agent.proc is not None
                pid = agent.proc.pid
                try:
                    return await _windows(args, data, pid, central, cmd, broker.url, operator)
                finally:
                    await agent.stop()
                    model.cancel()


async def _windows(
    args: argparse.Namespace,
    data: Path,
    pid: int,
    central: CentralPost,
    commander: Commander,
    broker_url: str,
    commander_key: Any,
) -> dict[str, Any]:
    await asyncio.sleep(args.warmup)  # warm-up: the thing being measured starts after it
    rtts_before: list[float] = []
    lost_before: list[int] = []
    pings = asyncio.create_task(pinger(commander, args.ping_every, rtts_before, lost_before))
    # Baseline window.
    t0, readings0, written0 = time.monotonic(), central.stats()["readings"], written_bytes(pid)
    await asyncio.sleep(args.baseline)  # the baseline window itself
    base_s = time.monotonic() - t0
    base_readings = central.stats()["readings"] - readings0
    base_written = written_bytes(pid) - written0
    pings.cancel()
    rss_before = memory_mib(pid)["VmRSS"]
    reset_peak(pid)
    # Flood window.
    rtts: list[float] = []
    lost: list[int] = []
    events0 = len(central.events)
    handled0 = status(data).get("downlink", {}).get("unauthenticated", 0)
    dropped0 = status(data).get("uplink", {}).get("incoming_dropped", 0)
    t1, readings1, written1 = time.monotonic(), central.stats()["readings"], written_bytes(pid)
    cpu1 = cpu_seconds(pid)
    junk = ["--size", str(args.size)]
    if args.forged:
        # A real command's envelope (the operator's kid) with a broken signature: each one
        # costs the gateway a signature check, the most expensive junk there is.
        body = make_command(gw=GATEWAY_ID, op="action", name="ping", now_ms=int(time.time() * 1000))
        real = sign(commander_key, body)
        junk = ["--payload-hex", (real[:-1] + bytes([real[-1] ^ 1])).hex()]
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim.attacker", "flood", "--broker", broker_url,
        "--topic", args.topic or f"armoire/v1/{GATEWAY_ID}/cmd", "--seconds", str(args.seconds),
        *junk, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    pings = asyncio.create_task(pinger(commander, args.ping_every, rtts, lost))
    out, _ = await attacker.communicate()
    flood_s = time.monotonic() - t1
    pings.cancel()
    sent = json.loads(out)["messages"]
    flood_readings = central.stats()["readings"] - readings1
    flood_written = written_bytes(pid) - written1
    flood_cpu = cpu_seconds(pid) - cpu1
    lag = status(data).get("loop_lag", {})
    peak = memory_mib(pid)["VmHWM"]
    # Let the queues drain, then wait for the summaries (one per interval, 60 s by default) to
    # account for every junk message the downlink handled.
    rss_after_flood = memory_mib(pid)["VmRSS"]
    deadline = time.monotonic() + args.drain
    while True:
        after = status(data)
        handled = after.get("downlink", {}).get("unauthenticated", 0) - handled0
        summaries = [e for e in central.events[events0:] if e["code"] == "cmd.unauthenticated"]
        # (re-read below until every handled message is accounted for)
        summarised = sum(e["data"]["count"] for e in summaries)
        if summarised >= handled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)  # polling status.json, a file the agent rewrites every 2 s
    junk_bytes = sum(len(cbor2.dumps(e)) + ENVELOPE_BYTES for e in summaries)
    minutes = flood_s / 60
    return {
        "flood_s": round(flood_s, 1),
        "attacker_messages": sent,
        "attacker_rate_per_s": round(sent / flood_s),
        "handled_by_downlink": handled,
        "dropped_at_intake": after.get("uplink", {}).get("incoming_dropped", 0) - dropped0,
        "summarised": summarised,
        "summary_events": len(summaries),
        "agent_cpu_pct_during": round(100 * flood_cpu / flood_s),
        "rss_mib": {
            "before": round(rss_before, 1),
            "peak": round(peak, 1),
            "after": round(rss_after_flood, 1),
        },
        "loop_lag_ms": lag,
        "ping_ms": {
            "before_p99": percentile(rtts_before, 0.99),
            "p50": percentile(rtts, 0.50),
            "p99": percentile(rtts, 0.99),
            "max": round(max(rtts), 1) if rtts else None,
            "answered": len(rtts),
            "lost": len(lost),
        },
        "readings_per_s": {
            "before": round(base_readings / base_s, 1),
            "during": round(flood_readings / flood_s, 1),
        },
        "flash_bytes_per_min": {
            "before": round(base_written / (base_s / 60)),
            "during": round(flood_written / minutes),
        },
        "junk_outbox_bytes_per_min": round(junk_bytes / minutes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--baseline", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--drain", type=float, default=75.0, help="longest wait for summaries")
    parser.add_argument("--ping-every", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument(
        "--forged", action="store_true", help="junk = a real envelope with a broken signature"
    )
    parser.add_argument("--broker-queue", type=int, default=1000)
    parser.add_argument(
        "--topic",
        help="flood this topic instead (e.g. one nobody subscribes to: the broker's "
        "own cost, for comparison)",
    )
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    result["broker_queue"] = args.broker_queue
    print(json.dumps(result, indent=2), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Signed-command round trip and verification throughput.

1. Round trip: the reference central post signs a command, publishes it to
   mosquitto on loopback, the agent (its own process, in the default simulated
   cabinet) verifies it, acts and acknowledges; the time is taken from just
   before signing to the verified Ack arriving at the central post. Two series:
   ``action ping`` (verification + durable Ack, no device I/O) and
   ``write lamp-NN/level`` (plus a Modbus write on the simulated RS-485 line at
   19200 baud, shared with the pollers).
2. Verification: ``CommandVerifier.check`` over pre-signed commands in one
   process (signature, trust store, schema, window, replay lookup, policy).

Usage: .venv/bin/python bench/commands.py [--count 1000] [--quick]
Prints a summary on stderr and one JSON line on stdout. Not a pass/fail test.
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

from agent.clock import SystemClock
from agent.commands import DEFAULT_POLICIES, CommandVerifier
from agent.security.trust import TrustStore
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


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "count": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def round_trips(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-cmd-") as tmp:
        data = Path(tmp)
        async with (
            Mosquitto(data_dir=data / "broker") as broker,
            Cabinet(
                Scenario(), clock=SystemClock(), link_dir=data / "dev", line_name=LINE_ROLE
            ) as cabinet,
        ):
            model = asyncio.create_task(cabinet.run())
            ensure_keys(data)
            init_central_keys(data / "central")
            install_trust(data / "central", data)
            config = data / "agent.toml"
            config.write_text(agent_config(cabinet, broker.url))
            keys = {GATEWAY_ID: load_public_pem(data / "gateway.pub")}
            operator = load_key(data / "central" / "operator.key")
            async with (
                CentralPost(broker.url, keys=keys) as central,
                Commander(central, broker.url, operator) as commander,
            ):
                agent = AgentProcess(config, data / "agent.log")
                await agent.start()
                try:
                    await central.wait_for(
                        lambda c: c.state.get(GATEWAY_ID, {}).get("online") is True, 30
                    )
                    results = {}
                    for series in ("ping", "write"):
                        times = []
                        statuses: dict[str, int] = {}
                        for i in range(count):
                            start = time.perf_counter()
                            if series == "ping":
                                body = make_command(
                                    gw=GATEWAY_ID, op="action", name="ping", now_ms=_now()
                                )
                            else:
                                body = make_command(
                                    gw=GATEWAY_ID, op="write", point=f"lamp-0{i % 8 + 1}/level",
                                    value=20 + i % 80, hold=600, now_ms=_now(),
                                )  # fmt: skip
                            ack = await commander.send(GATEWAY_ID, body, timeout=10)
                            times.append(time.perf_counter() - start)
                            statuses[ack["status"]] = statuses.get(ack["status"], 0) + 1
                        results[series] = {**_ms(times), "statuses": statuses}
                finally:
                    await agent.stop()
                    model.cancel()
    return results


def verification(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="armoire-bench-verify-") as tmp:
        data = Path(tmp)
        init_central_keys(data / "central")
        install_trust(data / "central", data)
        operator = load_key(data / "central" / "operator.key")
        verifier = CommandVerifier(
            gw=GATEWAY_ID,
            trust=TrustStore.load(data, gw=GATEWAY_ID),
            seen=lambda cmd_id: False,
            policies=DEFAULT_POLICIES,
            skew_s=30,
            max_validity_s=3600,
            writable=lambda point: True,
            actions=("ping",),
        )
        now = _now()
        payloads = [
            sign(operator, make_command(gw=GATEWAY_ID, op="write", point="lamp-01/level",
                                        value=i % 100, now_ms=now))
            for i in range(count)
        ]  # fmt: skip
        start = time.perf_counter()
        for payload in payloads:
            verifier.check(payload, now)
        elapsed = time.perf_counter() - start
    return {"commands": count, "seconds": round(elapsed, 3), "per_s": round(count / elapsed)}


def _now() -> int:
    return int(time.time() * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="commands per series")
    parser.add_argument("--quick", action="store_true", help="100 commands per series")
    args = parser.parse_args()
    count = 100 if args.quick else args.count
    result = {
        "round_trip": asyncio.run(round_trips(count)),
        "verification": verification(max(count, 5000)),
    }
    for series, figures in result["round_trip"].items():
        print(
            f"round trip, {series}: {figures['count']} commands, median {figures['median_ms']} ms,"
            f" p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms, {figures['statuses']}",
            file=sys.stderr,
        )
    v = result["verification"]
    print(f"verification: {v['per_s']} commands/s ({v['commands']} in {v['seconds']} s)",
          file=sys.stderr)  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

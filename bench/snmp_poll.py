"""Cost of polling one NTCIP 1202 signal controller over SNMP with the gateway's driver.

The simulated controller (a real pysnmp agent) runs in a child process, so the figures
are the driver's alone: CPU-ms per poll (one GET of the profile's 9 objects, decoded and
checked), poll latency p50/p99 on loopback, and the RSS the pysnmp import adds to an
agent that has its other libraries loaded. Run for
SNMPv2c and for SNMPv3 authPriv (HMAC-SHA-96 + AES-128).

Usage: .venv/bin/python bench/snmp_poll.py [--polls 500]
Prints a summary and, last, one JSON line. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


CHILD = """
import asyncio, sys
from sim.devices.signal_controller import SignalController, V3User
async def main():
    sc = SignalController(community="bench", v3_users=(V3User(user="bench",
        auth_key="bench-auth-key", priv_key="bench-priv-key"),))
    sc.start()
    print(sc.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    sc.close()
asyncio.run(main())
"""


async def measure(polls: int) -> dict[str, object]:
    import agent.runtime  # noqa: F401  (the agent's own imports first: the figure is pysnmp's)

    before = rss_mb()
    from drivers.snmp.device import Community, SnmpDevice, Usm
    from drivers.snmp.profile import load_snmp_profile

    import_mb = rss_mb() - before
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        port = int((await child.stdout.readline()).decode())
        profile = load_snmp_profile("ntcip-1202-asc")
        results: dict[str, object] = {"pysnmp_import_rss_mb": round(import_mb, 1)}
        for label, creds in (
            ("v2c", Community(community="bench")),
            ("v3", Usm(user="bench", auth_key="bench-auth-key", priv_key="bench-priv-key")),
        ):
            dev = SnmpDevice(
                name="bench", host="127.0.0.1", port=port, credentials=creds, profile=profile
            )
            await dev.read()  # engine discovery (v3), first-use costs
            latencies = []
            cpu0 = time.process_time()
            for _ in range(polls):
                t0 = time.perf_counter()
                await dev.read()
                latencies.append(time.perf_counter() - t0)
            cpu = time.process_time() - cpu0
            await dev.close()
            q = statistics.quantiles(latencies, n=100)
            results[label] = {
                "cpu_ms_per_poll": round(cpu / polls * 1000, 2),
                "latency_ms_p50": round(q[49] * 1000, 2),
                "latency_ms_p99": round(q[98] * 1000, 2),
            }
        results["rss_mb"] = round(rss_mb(), 1)
        return results
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            async with asyncio.timeout(5):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=500)
    args = parser.parse_args()
    results = asyncio.run(measure(args.polls))
    print(f"pysnmp import adds {results['pysnmp_import_rss_mb']} MB RSS")
    for label in ("v2c", "v3"):
        r = results[label]
        assert isinstance(r, dict)
        print(
            f"{label}: {r['cpu_ms_per_poll']} CPU-ms per poll, latency p50 "
            f"{r['latency_ms_p50']} ms, p99 {r['latency_ms_p99']} ms ({args.polls} polls)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

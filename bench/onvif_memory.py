"""Resident memory of the two ways to speak ONVIF, measured the same way (issue 14).

Each option runs in a fresh Python process against the simulated camera (itself
in another process): baseline RSS after ``import asyncio``, then the import of
the client, then one round of what the agent does (clock, device information,
a PullPoint subscription and one pull, a snapshot fetched with digest auth).
Prints VmRSS after each step and the process's peak (VmHWM), in MiB.

    .venv/bin/python bench/onvif_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

SIM = """
import asyncio, sys
from sim.camera import CameraSim
async def main():
    async with CameraSim(password="cam-secret") as cam:
        print(cam.port, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""

PROBE = """
import asyncio, json, sys
def rss():
    fields = dict(l.split(":", 1) for l in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}
out = {"baseline": rss()["VmRSS"]}
port = int(sys.argv[1])
"""

DEFUSED = (
    PROBE
    + """
from agent.clock import SystemClock
from drivers.onvif.camera import CameraSettings, OnvifCamera
from drivers.onvif.soap import Credentials
out["imported"] = rss()["VmRSS"]
async def main():
    cam = OnvifCamera("cam", CameraSettings(host="127.0.0.1", port=port,
        credentials=Credentials(username="admin", password="cam-secret")), SystemClock())
    await cam.read()
    await cam._subscribe()
    await cam._pull()
    await cam.snapshot()
    await cam.close()
asyncio.run(main())
r = rss(); out["used"] = r["VmRSS"]; out["peak"] = r["VmHWM"]
print(json.dumps(out))
"""
)

ZEEP = (
    PROBE
    + """
import datetime as dt
import onvif
out["imported"] = rss()["VmRSS"]
async def main():
    cam = onvif.ONVIFCamera("127.0.0.1", port, "admin", "cam-secret", adjust_time=True)
    await cam.update_xaddrs()
    dev = await cam.create_devicemgmt_service()
    await dev.GetDeviceInformation()
    media = await cam.create_media_service()
    profiles = await media.GetProfiles()
    manager = await cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
    pull = manager.get_service().PullMessages
    await pull({"MessageLimit": 10, "Timeout": dt.timedelta(seconds=1)})
    await cam.get_snapshot(profiles[0].token)
    await manager.shutdown()
    await cam.close()
asyncio.run(main())
r = rss(); out["used"] = r["VmRSS"]; out["peak"] = r["VmHWM"]
print(json.dumps(out))
"""
)


def main() -> None:
    sim = subprocess.Popen([sys.executable, "-c", SIM], stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        port = sim.stdout.readline().strip()
        results = {}
        for name, code in (("defusedxml (ours)", DEFUSED), ("onvif-zeep-async", ZEEP)):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code, port], capture_output=True, text=True, check=True
            )
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            results[name]["seconds"] = round(time.perf_counter() - started, 2)
        print(f"{'client':20} {'baseline':>9} {'imported':>9} {'after use':>10} {'peak':>7}  (MiB)")
        for name, r in results.items():
            print(
                f"{name:20} {r['baseline']:9.1f} {r['imported']:9.1f} {r['used']:10.1f} "
                f"{r['peak']:7.1f}   +{r['used'] - r['baseline']:.1f} MiB over baseline"
            )
        print(json.dumps(results))
    finally:
        sim.terminate()
        sim.wait(timeout=10)


if __name__ == "__main__":
    main()

"""The cabinet I/O module: its real firmware (MicroPython Unix port) on a pty line to the driver.

What a technician would notice if these failed: a door opened without the agent knowing,
a relay that does not switch, a noisy line that blinds the agent, or lamps left dark
because the agent died while it held the lighting relay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.device import DriverError, Reading
from drivers.iomodule.device import IoModule
from sim.iomodule import IoModuleProcess, firmware_lib_ready, micropython_binary
from sim.serial_line import VirtualSerialLine

pytestmark = pytest.mark.skipif(
    micropython_binary() is None or not firmware_lib_ready(),
    reason="micropython or board/iomodule/lib missing: run `make iomodule-lib`",
)

DEADLINE = 10.0  # seconds: generous for a loaded CI machine; the wait ends at the event


@dataclass
class Bench:
    line: VirtualSerialLine
    module: IoModuleProcess
    device: IoModule
    reports: list[Mapping[str, Reading]] = field(default_factory=list)

    def latest(self) -> dict[str, Reading]:
        merged: dict[str, Reading] = {}
        for report in self.reports:
            merged.update(report)
        return merged


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def first_answer(device: IoModule) -> Mapping[str, Reading]:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return await device.read()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def bench(tmp_path: Path, *, safe_after_ms: int = 5000) -> AsyncIterator[Bench]:
    async with (
        VirtualSerialLine(name="iomodule") as line,
        IoModuleProcess(
            port=line.device_port,
            hw_dir=tmp_path / "hw",
            safe_after_ms=safe_after_ms,
            log_file=tmp_path / "iomodule.log",
        ) as module,
    ):
        device = IoModule("cabinet", port=Path(line.agent_port))
        b = Bench(line=line, module=module, device=device)
        watch = asyncio.create_task(device.watch(b.reports.append))
        try:
            await first_answer(device)
            yield b
        finally:
            watch.cancel()
            await device.close()


async def test_iomodule__contacts_and_temperature_reach_the_agent(tmp_path: Path) -> None:
    """Door, mains, UPS, surge arrester and temperature changes arrive without a poll."""
    async with bench(tmp_path) as b:
        first = await b.device.read()
        assert first["door"] is False
        assert first["mains"] is True
        assert first["temperature"] == pytest.approx(22.0, abs=0.1)
        b.module.set_contact("door", True)
        await until(lambda: b.latest().get("door") is True, "door open")
        b.module.set_contact("mains", False)
        await until(lambda: b.latest().get("mains") is False, "mains lost")
        b.module.set_contact("ups", True)
        await until(lambda: b.latest().get("ups_battery") is True, "UPS on battery")
        b.module.set_contact("spd", True)
        await until(lambda: b.latest().get("spd") is True, "surge arrester tripped")
        b.module.set_temperature(41.3)
        deadline = time.monotonic() + DEADLINE
        while (now := await b.device.read())["temperature"] != pytest.approx(41.3, abs=0.11):
            assert time.monotonic() < deadline, f"temperature still {now['temperature']}"
            await asyncio.sleep(0.1)  # the module samples its sensor once a second
        assert (now["door"], now["mains"], now["ups_battery"], now["spd"]) == (
            True,
            False,
            True,
            True,
        )


async def test_iomodule__relay_writes_reach_the_module(tmp_path: Path) -> None:
    """A relay write switches the module's output and the answer says so."""
    async with bench(tmp_path) as b:
        assert b.module.relay("relay_lighting") is True  # booted safe: lamps fed
        assert await b.device.write("relay_aux", True) is True
        assert await b.device.write("relay_lighting", False) is False
        await until(lambda: b.module.relay("relay_aux") is True, "aux relay on")
        assert b.module.relay("relay_lighting") is False
        assert (await b.device.read())["safe_state"] is False


async def test_iomodule__corrupt_reply_is_detected_and_the_request_retried(
    tmp_path: Path,
) -> None:
    """A reply with a flipped bit is thrown away and the request answered on retry."""
    async with bench(tmp_path) as b:
        b.line.corrupt_next(1)
        values = await b.device.read()
        assert values["mains"] is True
        stats = b.device.statistics()
        assert stats.discarded_bytes > 0
        assert stats.retries >= 1


async def test_iomodule__lost_frames_are_counted_and_state_converges(tmp_path: Path) -> None:
    """Frames lost on a cut line are seen as a sequence gap; the state is right afterwards."""
    async with bench(tmp_path) as b:
        b.line.silence(True)
        b.module.set_contact("spd", True)
        await until(
            lambda: b.module.outputs() != {} and b.line.statistics().dropped_bytes > 0,
            "the module's CHANGE dropped on the line",
        )
        b.line.silence(False)
        assert (await b.device.read())["spd"] is True
        assert b.device.statistics().lost >= 1


AGENT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from drivers.iomodule.device import IoModule

async def main():
    device = IoModule("cabinet", port=Path(sys.argv[1]))
    watch = asyncio.create_task(device.watch(lambda r: None))
    while True:
        try:
            await device.write("relay_lighting", False)
            await device.write("relay_aux", True)
            break
        except Exception:
            await asyncio.sleep(0.05)
    print("holding", flush=True)
    while True:
        await device.read()
        await asyncio.sleep(0.2)

asyncio.run(main())
"""


async def test_iomodule__safe_state_engages_when_the_agent_is_killed(tmp_path: Path) -> None:
    """The agent dies holding the lamps off: the module feeds them again on its own."""
    async with (
        VirtualSerialLine(name="iomodule") as line,
        IoModuleProcess(
            port=line.device_port, hw_dir=tmp_path / "hw", safe_after_ms=1000
        ) as module,
    ):
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            AGENT_SCRIPT,
            line.agent_port,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert agent.stdout is not None
            ready = await asyncio.wait_for(agent.stdout.readline(), 30)
            assert ready == b"holding\n"
            await until(lambda: module.relay("relay_lighting") is False, "lamps switched off")
            assert module.relay("relay_aux") is True
            os.killpg(agent.pid, signal.SIGKILL)
            await agent.wait()
            killed = time.monotonic()
            await until(lambda: module.relay("relay_lighting") is True, "safe state: lamps fed")
            assert module.relay("relay_aux") is False
            print(f"safe state {time.monotonic() - killed:.2f} s after the kill (1 s configured)")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
            await agent.wait()


async def test_iomodule__watchdog_is_fed_while_the_firmware_runs(tmp_path: Path) -> None:
    """The module's own watchdog is fed while its scan loop runs."""
    async with bench(tmp_path) as b:
        await until(lambda: int(str(b.module.outputs().get("wdt_feeds", 0))) >= 2, "2 feeds")


async def test_iomodule__writes_before_the_watch_starts_are_answered(tmp_path: Path) -> None:
    """The agent writes the relays' defaults at start, before its poller reads the line."""
    async with (
        VirtualSerialLine(name="iomodule") as line,
        IoModuleProcess(port=line.device_port, hw_dir=tmp_path / "hw") as module,
    ):
        device = IoModule("cabinet", port=Path(line.agent_port))
        try:
            deadline = time.monotonic() + DEADLINE
            while True:
                try:
                    assert await device.write("relay_aux", True) is True
                    break
                except DriverError:  # the firmware is still booting
                    assert time.monotonic() < deadline
            await until(lambda: module.relay("relay_aux") is True, "aux relay on")
        finally:
            await device.close()

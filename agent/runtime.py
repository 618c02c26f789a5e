"""Wires the agent's parts together for one configuration and runs them.

Every long-running loop is a named task in one ``asyncio.TaskGroup``; SIGTERM
or SIGINT ends them, then the last telemetry batch is committed and the outbox
gets a short chance to drain before the process exits.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from agent import __version__
from agent.arbiter import Arbiter
from agent.clock import Clock, SystemClock, wall_ms
from agent.commands import Command, CommandVerifier
from agent.config import Config
from agent.downlink import Downlink, Holds
from agent.events import Events
from agent.messages import MessageFactory, Topic
from agent.outbox import Outbox
from agent.points import Points, Value
from agent.polling import DevicePoller
from agent.reporter import Reporter, ReportPolicy
from agent.security.cose import Signer
from agent.security.keys import GATEWAY_KEY, KeyFileError, load_private_key
from agent.security.trust import TrustError, TrustStore
from agent.supervisor import supervise
from agent.uplink import Uplink
from drivers.modbus.transport import RtuTransport
from drivers.profile import encode, in_range

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
# How often status.json is rewritten for local tools (the simulator's view, the console).
STATUS_PERIOD = 2.0
# On shutdown, how long to keep forwarding what is queued while the link is up.
DRAIN_ON_EXIT = 3.0


class StartupError(Exception):
    """The agent cannot start (missing keys, unusable data directory)."""


class Agent:
    """The running parts of one gateway; built by :func:`run_agent`."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        data_dir = config.storage.data_dir
        try:
            key = load_private_key(data_dir / GATEWAY_KEY)
        except KeyFileError as exc:
            raise StartupError(
                f"{exc} (create the gateway identity with: armoire keys init --data {data_dir})"
            ) from exc
        try:
            self.outbox = Outbox.open(data_dir, clock, capacity_bytes=config.storage.capacity_bytes)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open the outbox in {data_dir}: {exc}") from exc
        self.factory = MessageFactory(gw=config.gateway, boot=self.outbox.boot, signer=Signer(key))
        self.events = Events(
            gw=config.gateway, factory=self.factory, outbox=self.outbox, clock=clock
        )
        self.outbox.eviction_reporter = self.events.evicted
        self.points = Points()
        specs = config.points()
        self.reporter = Reporter(
            points=self.points,
            policies={
                name: ReportPolicy(deadband=spec.deadband, heartbeat=spec.heartbeat)
                for name, _, spec in specs
            },
            outbox=self.outbox,
            factory=self.factory,
            clock=clock,
            batch_interval=config.storage.batch_interval,
            telemetry_delay=config.storage.telemetry_delay,
            batch_max=config.storage.batch_max,
        )
        self.transports: dict[str, RtuTransport] = {}
        # Devices whose comm_fail alarm is still active from an earlier boot.
        failed = self.outbox.active_alarms
        self.pollers: list[DevicePoller] = []
        for device in config.devices:
            port = device.line
            if port.role not in self.transports:
                self.transports[port.role] = RtuTransport(
                    str(port.device),
                    baudrate=port.baudrate,
                    bytesize=port.bytesize,
                    parity=port.parity,
                    stopbits=port.stopbits,
                    response_timeout=config.polling.response_timeout,
                )
            self.pollers.append(
                DevicePoller(
                    device=device,
                    transport=self.transports[port.role],
                    points=self.points,
                    clock=clock,
                    polling=config.polling,
                    on_link_change=self.events.device_link,
                    assume_failed=("device.comm_fail", device.name) in failed,
                )
            )
        self._pollers = {p.device.name: p for p in self.pollers}
        # Commandable points: writable points with a relinquish default in their profile.
        self._writable = {
            name: spec for name, _, spec in specs if spec.writable and spec.default is not None
        }
        self.arbiter = Arbiter(
            clock=clock,
            defaults={name: spec.default for name, spec in self._writable.items()},
            write_device=self._write_device,
        )
        self.downlink = Downlink(
            gw=config.gateway,
            verifier=self._verifier(),
            arbiter=self.arbiter,
            outbox=self.outbox,
            factory=self.factory,
            events=self.events,
            clock=clock,
            holds=Holds(
                default=config.commands.hold_default,
                maximum=config.commands.hold_max,
                skew_s=config.commands.clock_skew,
            ),
            check_value=self._check_value,
            actions={"ping": self._ping, "selftest": self._selftest},
            data_dir=data_dir,
        )
        self.uplink = Uplink(
            config=config.uplink,
            outbox=self.outbox,
            factory=self.factory,
            clock=clock,
            birth_points={name: (spec.unit, spec.writable) for name, _, spec in specs},
            config_digest=config.digest,
            agent_version=__version__,
            subscriptions=(Topic.CMD, Topic.TRUST),
            on_message=self.downlink.handle,
        )

    def _verifier(self) -> CommandVerifier | None:
        cfg = self.config
        try:
            trust = TrustStore.load(cfg.storage.data_dir, gw=cfg.gateway)
        except TrustError as exc:
            # The street stays lit and telemetry flows; every command is refused.
            log.error("no usable trust store, all commands will be refused: %s", exc)
            return None
        return CommandVerifier(
            gw=cfg.gateway,
            trust=trust,
            seen=self.outbox.command_seen,
            policies=cfg.commands.policies,
            skew_s=cfg.commands.clock_skew,
            max_validity_s=cfg.commands.max_validity,
            writable=lambda point: point in self._writable,
            actions=("ping", "selftest"),
        )

    async def _write_device(self, point: str, value: Value) -> None:
        device, _, name = point.partition("/")
        await self._pollers[device].write(name, value)

    def _check_value(self, point: str, value: object) -> str | None:
        spec = self._writable[point]
        if spec.type == "bool":
            return None if isinstance(value, bool) else f"{point} takes true or false"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{point} takes a number"
        if not in_range(spec, value):
            return f"{point}: {value} is outside {spec.minimum}..{spec.maximum}"
        try:
            encode(spec, value)
        except ValueError as exc:
            return str(exc)
        return None

    async def _ping(self, cmd: Command) -> Any:
        return {"t": wall_ms(self.clock), "boot": self.outbox.boot}

    async def _selftest(self, cmd: Command) -> Any:
        # Poll every device once, now, and say which answered.
        results = {}
        for poller in self.pollers:
            results[poller.device.name] = "ok" if await poller.poll_once() else "no-answer"
        return {"devices": results}

    def status(self) -> dict[str, Any]:
        return {
            "gw": self.config.gateway,
            "pid": os.getpid(),
            "t": wall_ms(self.clock),
            # Live asyncio tasks: a count that keeps growing is a leak (bench/soak.py).
            "tasks": len(asyncio.all_tasks()),
            "uplink": self.uplink.statistics(),
            "outbox": self.outbox.statistics(),
            "reporter": {
                "readings": self.reporter.readings_sent,
                "batches": self.reporter.batches_sent,
            },
            "devices": {
                p.device.name: {"state": p.state.value, "polls": p.polls, "failures": p.failures}
                for p in self.pollers
            },
        }

    def write_status(self) -> None:
        path = self.config.storage.data_dir / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()))
        tmp.replace(path)

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await self.clock.sleep(STATUS_PERIOD)

    async def _open_lines(self) -> None:
        for role, transport in self.transports.items():
            try:
                await transport.open()
            except OSError as exc:
                # The pollers count the misses and keep retrying; the uplink still runs.
                log.error("serial line %s (%s) unavailable: %s", role, transport.port, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        await self._open_lines()
        self.events.startup(version=__version__)
        # After a restart the priority arrays are empty: devices go back to their
        # defaults, so no hold ever outlives the agent.
        failures = {p: e for p, e in (await self.arbiter.sync()).items() if e is not None}
        if failures:
            log.warning("could not write the defaults of %s", ", ".join(sorted(failures)))
        try:
            async with asyncio.TaskGroup() as tg:

                def run(name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
                    return tg.create_task(supervise(name, loop, self.clock), name=name)

                uplink = run("uplink", self.uplink.run)
                others = [
                    run("reporter", self.reporter.run),
                    run("status", self._status_loop),
                    run("arbiter", self.arbiter.run),
                ]
                # Spread the first polls of a line's devices over their period.
                n = max(1, len(self.pollers))
                others += [
                    run(
                        f"driver[{p.device.name}].poll",
                        functools.partial(p.run, offset=p.device.poll * i / n),
                    )
                    for i, p in enumerate(self.pollers)
                ]
                await stop.wait()
                for task in others:
                    task.cancel()
                self.reporter.flush()
                await self._drain()
                await self.uplink.farewell()
                uplink.cancel()
        finally:
            self.write_status()
            for transport in self.transports.values():
                await transport.close()
            self.outbox.close()

    async def _drain(self) -> None:
        # Give what is queued a bounded chance to leave before the process goes,
        # including the case where the link is just coming back.
        if not self.outbox.depth:
            return
        try:
            async with asyncio.timeout(DRAIN_ON_EXIT):
                await self.uplink.online.wait()
                await self.outbox.drained()
        except TimeoutError:
            log.warning("%d records left in the outbox for the next start", self.outbox.depth)


async def run_agent(config: Config, *, clock: Clock | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    agent = Agent(config, clock or SystemClock())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "armoire %s gateway %s boot %d: %d devices, %d points",
        __version__,
        config.gateway,
        agent.outbox.boot,
        len(config.devices),
        len(config.points()),
    )
    await agent.run(stop)
    log.info("stopped: %s", json.dumps(agent.uplink.statistics()))

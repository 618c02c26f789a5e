"""Wires the agent's parts together for one configuration and runs them.

Every long-running loop is a named task in one ``asyncio.TaskGroup``; SIGTERM
or SIGINT ends them, then the last telemetry batch is committed and the outbox
gets a short chance to drain before the process exits.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from agent import __version__, config_apply
from agent.arbiter import Arbiter, Priority
from agent.autonomy import Autonomy
from agent.clock import Clock, SystemClock, wall_ms
from agent.clock_trust import STATE_FILE as CLOCK_FILE
from agent.clock_trust import ClockTrust
from agent.commands import Command, CommandVerifier
from agent.config import Config
from agent.console_server import ConsoleServer, socket_path
from agent.downlink import Downlink, Holds
from agent.events import LINK_AUTONOMOUS, Events
from agent.instance import AlreadyRunning, InstanceLock
from agent.lighting import LightingRunner
from agent.loop_lag import LoopLag
from agent.messages import MessageFactory, Severity, Topic
from agent.outbox import Outbox, OutboxUnavailable
from agent.points import Points, Value
from agent.polling import DevicePoller
from agent.reporter import Reporter, ReportPolicy
from agent.rules import AlarmAction, Context, DeviceAction, Effects, RulesEngine
from agent.security.cose import Signer
from agent.security.keys import GATEWAY_KEY, KeyFileError, load_private_key
from agent.security.trust import TrustError, TrustStore
from agent.supervisor import supervise
from agent.timefloor import TimeFloor
from agent.uplink import Uplink
from agent.watchdog import (
    FEEDS_PER_TIMEOUT,
    WDIOF_CARDRESET,
    Liveness,
    RebootCause,
    Watchdog,
    kernel_boot_id,
    previous_kernel,
    reboot_cause,
)
from drivers.driver import BuildContext, Bus
from drivers.registry import DRIVERS

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
# How often status.json is rewritten for local tools (the simulator's view, the console).
STATUS_PERIOD = 2.0
# On shutdown, how long to keep forwarding what is queued while the link is up.
DRAIN_ON_EXIT = 3.0


class StartupError(Exception):
    """The agent cannot start (missing keys, unusable data directory, already running).

    ``exit_code`` follows agent/cli.py: 2 for what the technician must set up
    (configuration, keys), 1 for a runtime condition (another agent running, a
    data directory that cannot be written).
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
        # One agent per data directory, before anything in it is touched.
        self.instance = InstanceLock(data_dir)
        try:
            self.instance.acquire()
        except AlreadyRunning as exc:
            raise StartupError(str(exc), exit_code=1) from exc
        except OSError as exc:
            raise StartupError(
                f"cannot lock the data directory {data_dir} (is it writable?): {exc}",
                exit_code=1,
            ) from exc
        try:
            self.outbox = Outbox.open(data_dir, clock, capacity_bytes=config.storage.capacity_bytes)
        except OutboxUnavailable as exc:
            self.instance.release()
            raise StartupError(str(exc), exit_code=1) from exc
        self.loop_lag = LoopLag(clock)
        self.time_floor = TimeFloor(clock, data_dir)
        if self.outbox.recovery is not None:
            # Commands issued before now may have had their ids in the lost file.
            self.outbox.raise_replay_floor(self.time_floor.now_ms())
        failsafe = config.failsafe
        self.clock_trust = ClockTrust(
            clock,
            path=data_dir / CLOCK_FILE,
            max_jump=failsafe.clock_max_jump,
            require_ntp=failsafe.clock_ntp,
        )
        # How the previous run ended, read before startup() reports the unclean boots.
        boot = self.outbox.boot
        self._previous_clean = not any(u.boot == boot - 1 for u in self.outbox.unclean)
        self._same_kernel = previous_kernel(data_dir, kernel_boot_id())
        self.reboot: RebootCause | None = None
        self.factory = MessageFactory(
            gw=config.gateway,
            boot=self.outbox.boot,
            signer=Signer(key),
            clock_quality=lambda: int(self.clock_trust.quality),
        )
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
        # The media devices share (serial lines, TCP connections), by key.
        self.buses: dict[str, Bus] = {}
        build = BuildContext(buses=self.buses, response_timeout=config.polling.response_timeout)
        # Devices whose comm_fail alarm is still active from an earlier boot.
        failed = self.outbox.active_alarms
        self.pollers: list[DevicePoller] = []
        for device in config.devices:
            driver = DRIVERS[device.driver]
            self.pollers.append(
                DevicePoller(
                    device=device,
                    driver=driver.build(device.name, device.profile, device.settings, build),
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
        self.rules = RulesEngine(
            rules=config.rules,
            points=self.points,
            clock=clock,
            effects=Effects(
                alarm=self._rule_alarm,
                write=lambda point, value, prio, source: self.arbiter.write(
                    point, value, priority=prio, source=source, hold=None
                ),
                relinquish=lambda point, prio, source: self.arbiter.relinquish(
                    point, priority=prio, source=source
                ),
                device_action=self._device_action,
            ),
            writable=list(self._writable),
            context=self._rules_context(),
            active=self.outbox.active_alarms,
        )
        self.lighting = LightingRunner(
            programs=config.lighting,
            site=config.site,
            clock=clock,
            now=self._schedule_time,
            writable=list(self._writable),
            points=self.points,
            write=lambda point, value: self.arbiter.write(
                point, value, priority=Priority.SCHEDULE, source="schedule", hold=None
            ),
            relinquish=lambda point: self.arbiter.relinquish(
                point, priority=Priority.SCHEDULE, source="schedule"
            ),
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
            summary_interval=config.commands.unauthenticated_summary,
            time_floor=self.time_floor,
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
            birth_fields=self._birth_fields,
        )
        self.autonomy = Autonomy(
            clock=clock,
            online=self.uplink.online.is_set,
            after=failsafe.autonomous_after,
            report=lambda mode, seconds: self.events.autonomous(mode.value, seconds),
            resumed=(LINK_AUTONOMOUS, "") in self.outbox.active_alarms,
        )
        self.liveness = Liveness(clock)
        for poller in self.pollers:
            # A poll cycle, its retries and the backoff of a silent device, with margin.
            deadline = max(
                failsafe.loop_deadline, 2 * poller.device.poll + config.polling.backoff_max
            )
            self.liveness.watch(
                f"driver[{poller.device.name}].poll",
                lambda p=poller: p.polls,  # type: ignore[misc]
                deadline,
            )
        self.liveness.watch("rules", lambda: self.rules.ticks, failsafe.loop_deadline)
        self.liveness.watch("lighting", lambda: self.lighting.ticks, failsafe.loop_deadline)
        self.liveness.watch("reporter", lambda: self.reporter.cycles, failsafe.loop_deadline)
        timeout = config.board.watchdog_timeout
        self.watchdog = Watchdog(
            clock=clock,
            liveness=self.liveness,
            device=config.board.watchdog,
            interval=timeout / FEEDS_PER_TIMEOUT if timeout else 10.0,
        )

        # The technician console (agent/console_server.py) and a configuration on probation.
        self.restart_requested = False
        self._stop: asyncio.Event | None = None
        self._pending = config_apply.staged(config.source)
        note = config_apply.take_rollback_note(config.source)
        banner_note = ""
        if note is not None:
            banner_note = (
                f"NOTE: the configuration applied by {note.get('sub', '?')} was ROLLED BACK: "
                f"{note.get('reason')}"
            )
            self.outbox.append(
                self.events.audit(
                    code="config.rolled_back",
                    severity=Severity.WARNING,
                    msg=f"configuration rolled back: {note.get('reason')}",
                    data={k: str(v) for k, v in note.items()},
                )
            )
        board = config.board
        self.console = ConsoleServer(
            self,
            serial=board.serial.get(board.console) if board.console else None,
            socket=socket_path(data_dir),
            restart=self.request_restart,
            banner_note=banner_note,
        )

    def request_restart(self) -> None:
        """Stop cleanly, then have the process re-execute itself (agent/cli.py)."""
        self.restart_requested = True
        if self._stop is not None:
            self._stop.set()

    def console_actions(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """The actions the console offers (the same as commands')."""

        async def ping() -> Any:
            return {"t": wall_ms(self.clock), "boot": self.outbox.boot}

        async def selftest() -> Any:
            return {
                p.device.name: "ok" if await p.poll_once() else "no-answer" for p in self.pollers
            }

        return {"ping": ping, "selftest": selftest}

    def _health_problem(self) -> str | None:
        """Why the agent is not healthy yet (a device never answered or is silent), or None."""
        silent = [
            p.device.name
            for p in self.pollers
            if p.last_answer_ms is None or p.state.value == "comm_fail"
        ]
        if silent:
            return f"devices not answering: {', '.join(silent)}"
        return None

    async def _probation(self) -> None:
        pending = self._pending
        if pending is None:
            return
        why = await config_apply.prove(self.clock, pending, self._health_problem)
        source = self.config.source
        if why is None:
            config_apply.confirm(source)
            self.outbox.append(
                self.events.audit(
                    code="config.applied",
                    severity=Severity.NOTICE,
                    msg=f"configuration applied by {pending.sub} and healthy",
                    data={
                        "sub": pending.sub,
                        "console": pending.console,
                        "digest": self.config.digest.hex(),
                    },
                )
            )
            self.console.banner_note = f"configuration applied by {pending.sub}: healthy"
            return
        config_apply.roll_back(
            source, pending, f"not healthy within {pending.deadline_s:.0f} s: {why}"
        )
        self.request_restart()

    def _schedule_time(self) -> float | None:
        # The schedule runs on the last trusted time carried forward when the RTC is wrong.
        return self.clock_trust.now()

    def _birth_fields(self) -> dict[str, str]:
        fields = {"mode": self.autonomy.mode.value}
        if self.reboot is not None:
            fields["reboot"] = self.reboot
        return fields

    def _rules_context(self) -> Context:
        return Context(
            uplink_online=lambda: self.uplink.online.is_set(),
            night=self._is_night,
            local_minutes=self._local_minutes,
        )

    def _is_night(self) -> bool | None:
        states = self.lighting.states
        return any(s.level > 0 for s in states.values()) if states else None

    def _local_minutes(self) -> int | None:
        t = self._schedule_time()
        if t is None:
            return None
        local = datetime.datetime.fromtimestamp(t, self.config.site.zone)
        return local.hour * 60 + local.minute

    def _rule_alarm(self, action: AlarmAction, src: str, raised: bool, msg: str) -> None:
        self.events.rule_alarm(
            code=action.code, severity=action.severity, src=src, raised=raised, msg=msg
        )

    async def _device_action(self, action: DeviceAction, src: str) -> None:
        # No driver offers actions yet (cameras will): say so once per firing.
        log.warning("rule asks %s for %r: no such device action", action.device, action.name)

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
            replay_floor=lambda: self.outbox.replay_floor_ms,
        )

    async def _write_device(self, point: str, value: Value) -> None:
        device, _, name = point.partition("/")
        await self._pollers[device].write(name, value)

    def _check_value(self, point: str, value: object) -> str | None:
        return self._writable[point].write_problem(value, label=point)

    async def _ping(self, cmd: Command) -> Any:
        return {"t": wall_ms(self.clock), "boot": self.outbox.boot}

    async def _selftest(self, cmd: Command) -> Any:
        # Poll every device once, now, and say which answered.
        results = {}
        for poller in self.pollers:
            results[poller.device.name] = "ok" if await poller.poll_once() else "no-answer"
        return {"devices": results}

    def status(self) -> dict[str, Any]:
        """What ``armoire status`` shows (status.json); times are wall-clock ms."""
        now = wall_ms(self.clock)
        return {
            "gw": self.config.gateway,
            "pid": os.getpid(),
            "boot": self.outbox.boot,
            "t": now,
            "uplink": {
                **self.uplink.statistics(),
                "broker": f"{self.config.uplink.host}:{self.config.uplink.port}",
            },
            "downlink": self.downlink.counts,
            "loop_lag": self.loop_lag.statistics(),
            # Live asyncio tasks: a count that keeps growing is a leak (bench/soak.py).
            "tasks": len(asyncio.all_tasks()),
            "outbox": self.outbox.statistics(),
            "reporter": {
                "readings": self.reporter.readings_sent,
                "batches": self.reporter.batches_sent,
            },
            "devices": {
                p.device.name: {
                    "state": p.state.value,
                    "line": p.device.bus,
                    "polls": p.polls,
                    "failures": p.failures,
                    "last_poll": p.last_poll_ms,
                    "last_answer": p.last_answer_ms,
                }
                for p in self.pollers
            },
            "lines": {key: bus.status() for key, bus in self.buses.items()},
            "alarms": [{"code": c, "src": s} for c, s in sorted(self.outbox.active_alarms)],
            "holds": self._holds(now),
            "failsafe": self._failsafe_status(),
        }

    def _failsafe_status(self) -> dict[str, Any]:
        return {
            "mode": self.autonomy.mode.value,
            "clock": self.clock_trust.statistics(),
            "reboot": self.reboot,
            "watchdog": {"feeds": self.watchdog.feeds, "starved": self.watchdog.starved},
            "rules": {
                f"{i.rule.name}[{i.src}]" if i.src else i.rule.name: i.phase.value
                for i in self.rules.instances()
                if i.phase.value != "idle"
            },
            "lighting": {
                name: {
                    "level": st.level,
                    "on": st.on.isoformat(),
                    "off": st.off.isoformat(),
                    "next": st.next_switch.isoformat() if st.next_switch else None,
                    "photocell": st.photocell,
                }
                for name, st in self.lighting.states.items()
            },
        }

    def _holds(self, now_ms: int) -> list[dict[str, Any]]:
        """Unexpired priority-array entries, with their time left (None: until relinquished)."""
        mono = self.clock.monotonic()
        holds = []
        for point in self.arbiter.points:
            effective = self.arbiter.effective(point)
            for prio, entry in self.arbiter.entries(point).items():
                left = None if entry.expires is None else max(0.0, entry.expires - mono)
                holds.append(
                    {
                        "point": point,
                        "prio": prio,
                        "value": entry.value,
                        "source": entry.source,
                        "left_s": left,
                        "until": None if left is None else now_ms + round(left * 1000),
                        "effective": effective,
                    }
                )
        return holds

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
        # One attempt each now, so the defaults below reach the devices that are
        # there; the "line[...]" tasks keep retrying the others with backoff and
        # reopen a line that goes away later. Meanwhile their devices are missed
        # (comm_fail) and everything else runs on.
        for bus in self.buses.values():
            await bus.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        self._stop = stop
        await self._open_lines()
        self.watchdog.open()
        status = self.watchdog.boot_status
        self.reboot = reboot_cause(
            first_run=self.outbox.boot == 1,
            clean=self._previous_clean,
            watchdog_reset=None if status is None else bool(status & WDIOF_CARDRESET),
            same_kernel=self._same_kernel,
        )
        self.events.startup(version=__version__, reboot=self.reboot)
        # After a restart the priority arrays are empty: devices go back to their
        # defaults, so no hold ever outlives the agent.
        clean = False
        try:
            failures = {p: e for p, e in (await self.arbiter.sync()).items() if e is not None}
        except Exception:
            # A driver bug must not keep the uplink and the outbox from running;
            # the arbiter's own loop retries the writes.
            log.exception("writing the defaults at start failed")
            failures = {}
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
                    run("downlink.summaries", self.downlink.run),
                    run("loop_lag", self.loop_lag.run),
                    run("rules", self.rules.run),
                    run("lighting", self.lighting.run),
                    run("clock", self.clock_trust.run),
                    run("autonomy", self.autonomy.run),
                    run("watchdog", self.watchdog.run),
                    run("console", self.console.run),
                    tg.create_task(self._probation(), name="config.probation"),
                ]
                others += [run(f"line[{key}]", bus.run) for key, bus in self.buses.items()]
                # Spread the first polls of a line's devices over their period.
                n = max(1, len(self.pollers))
                others += [
                    run(
                        f"driver[{p.device.name}].poll",
                        functools.partial(p.run, offset=p.device.poll * i / n),
                    )
                    for i, p in enumerate(self.pollers)
                ]
                self.watchdog.ready()
                await stop.wait()
                for task in others:
                    task.cancel()
                self.downlink.flush_summaries()
                self.reporter.flush()
                await self._drain()
                await self.uplink.farewell()
                uplink.cancel()
            clean = True
        finally:
            # A deliberate stop disarms the watchdog; anything else leaves it to reset us.
            self.watchdog.close(clean=clean, restarting=self.restart_requested)
            self.clock_trust.close()
            self.write_status()
            for poller in self.pollers:
                await poller.driver.close()
            for bus in self.buses.values():
                await bus.close()
            self.outbox.close()
            self.instance.release()

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


async def run_agent(config: Config, *, clock: Clock | None = None) -> bool:
    """Run the agent until SIGTERM/SIGINT; True if it must restart (a new configuration)."""
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
    return agent.restart_requested

"""``armoire sim``: a virtual cabinet, a broker, the agent and the central post, with a live view.

The agent runs as its own process, exactly as on a gateway: this module only
writes its keys and configuration into the data directory and starts
``python -m agent run``. Everything the view shows comes from what the
reference central post received and verified, i.e. what a control room sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.board import BOARDS_DIR
from agent.clock import SystemClock
from central.commander import (
    Commander,
    init_central_keys,
    install_trust,
    jsonable,
    load_key,
    make_command,
    parse_value,
    write_central_config,
)
from central.post import CentralPost, load_public_pem
from sim.broker import Mosquitto
from sim.cabinet import IOMODULE_NAME, IOMODULE_ROLE, SIGNAL_USER, Cabinet, Scenario
from sim.console_pty import ConsolePty
from sim.controls import COMMAND_HELP, HELP, HELP_SHORT, Controls
from sim.lifetime import tied_to_parent
from sim.proxy import LinkProxy, LinkState
from sim.view import View, agent_status, bus_line, schedule_line

GATEWAY_ID = "cab-sim-0001"
LINE_ROLE = "rs485_1"
# The simulator's own log while the live view is on the terminal (the agent's is agent.log).
SIM_LOG = "sim.log"
# The board file written into the data directory when the cabinet has several lines.
SIM_BOARD_FILE = "board-sim.toml"
# How long the agent gets to stop cleanly (flush, drain) before it is killed.
AGENT_STOP_TIMEOUT = 15.0
# Poll periods of the default scenario, in seconds.
POLL = {"lamp-ctl": 1.0, "meter-3ph": 1.0, "env-sensor": 5.0}
# A camera's health (clock, identity) is polled; its tamper and motion come as events.
CAMERA_POLL = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    broker: str | None = None
    data: Path | None = None
    duration: float | None = None
    agent: bool = True
    lamps: int = 8
    lines: int = 1
    seed: int = 1
    cameras: int = 1


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "armoire" / "sim"


def agent_command(config: Path) -> list[str]:
    """The command that runs the agent as a gateway would."""
    return [sys.executable, "-m", "agent", "run", "--config", str(config)]


def ensure_keys(data: Path) -> None:
    """Provision the gateway identity with the agent's own command, once."""
    if (data / "gateway.key").exists():
        return
    subprocess.run(
        [sys.executable, "-m", "agent", "keys", "init", "--data", str(data)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def ensure_central(data: Path, broker_url: str) -> Path:
    """The central post's keys in DATA/central (created once), its trust store installed
    on the simulated gateway, and DATA/central/central.toml for `armoire-central send`
    (`armoire-central token` signs with the maintenance key there)."""
    central_dir = data / "central"
    if not (central_dir / "root.key").exists():
        init_central_keys(central_dir)
    install_trust(central_dir, data)
    write_central_config(
        central_dir, broker=broker_url, gateways={GATEWAY_ID: data / "gateway.pub"}
    )
    return central_dir


async def typed_command(commander: Commander, text: str) -> str:
    """Run a command typed in the live view: ``write POINT VALUE [prio N] [hold S]``,
    ``relinquish POINT [prio N]``, ``action NAME`` or ``action snapshot CAMERA``; returns a
    line describing the Ack."""
    words = text.split()
    options: dict[str, int] = {}
    while len(words) >= 2 and words[-2] in ("prio", "hold") and words[-1].isdigit():
        options[words[-2]] = int(words[-1])
        words = words[:-2]
    match words:
        case ["write", point, value]:
            fields: dict[str, Any] = {"point": point, "value": parse_value(value)}
        case ["relinquish", point]:
            fields = {"point": point}
        case ["action", name]:
            fields = {"name": name}
        case ["action", "snapshot", device]:
            fields = {"name": "snapshot", "args": {"device": device}}
        case _:
            return f"not understood: {text!r} (write POINT VALUE · relinquish POINT · action NAME)"
    body = make_command(
        gw=GATEWAY_ID,
        op=words[0],
        now_ms=int(time.time() * 1000),
        prio=options.get("prio"),
        hold=options.get("hold"),
        **fields,
    )
    try:
        ack = await commander.send(GATEWAY_ID, body)
    except TimeoutError:
        return f"{text}: no Ack within the timeout"
    result = ack["status"]
    if "reason" in ack:
        result += f" ({ack['reason']})"
    if "value" in ack:
        result += f", value {json.dumps(jsonable(ack['value']))}"
    return f"{text}: {result}"


# The simulator's default site (the reference deployment's metropolis).
DIJON = (47.32, 5.04, "Europe/Paris")


def line_roles(count: int) -> list[str]:
    """The serial roles of ``count`` simulated RS-485 lines: rs485_1 (board/sim.toml), rs485_2..."""
    return [f"rs485_{i + 1}" for i in range(count)]


def sim_board(roles: list[str]) -> str:
    """board/sim.toml with one more RS-485 role per extra simulated line, as TOML text.

    A real gateway has one field bus; a scale test wants several, each a role
    of its own (dev/rs485_N under the simulator's data directory).
    """
    text = (BOARDS_DIR / "sim.toml").read_text()
    text = text.replace('name = "sim"', f'name = "sim-{len(roles)}-lines"', 1)
    extra = []
    for role in roles:
        if f"[serial.{role}]" in text:
            continue
        extra += [
            "",
            f"[serial.{role}]",
            f'device = "dev/{role}"',
            "baudrate = 19200",
            'parity = "N"',
            "bytesize = 8",
            "stopbits = 2",
            "rs485 = true",
        ]
    return text + "\n".join(extra) + "\n"


def agent_config(
    cabinet: Cabinet,
    broker_url: str,
    *,
    gateway: str = GATEWAY_ID,
    capacity_mb: float | None = None,
    root_extra: str = "",
    tail: str = "",
    place: tuple[float, float, str] | None = None,
    board_file: str = "sim",
    health_interval: float | None = None,
) -> str:
    """The gateway configuration for this cabinet, as TOML text.

    ``root_extra`` is TOML inserted among the top-level keys (``lighting = []``), ``tail``
    is appended after the devices (``[[lighting]]``, ``[failsafe]`` tables). ``place`` is
    (latitude, longitude, time zone); Dijon by default. ``board_file``: "sim"
    (board/sim.toml: one RS-485 line), or the path of a board written by
    :func:`sim_board` when the cabinet has more lines. ``health_interval``: the bus
    health window, when not the agent's default.
    """
    latitude, longitude, timezone = place or DIJON
    lines = [
        "# Written by `armoire sim`: the configuration of the simulated gateway.",
        f'gateway = "{gateway}"',
        *([root_extra.rstrip("\n")] if root_extra else []),
        "",
        "# The lighting schedule's sunset and sunrise are computed for this site.",
        "[site]",
        f"latitude = {latitude}",
        f"longitude = {longitude}",
        f'timezone = "{timezone}"',
        "",
        "[board]",
        "# The simulated board: same roles as a real one, devices under ./dev/",
        f'file = "{board_file}"',
        'base_dir = "."',
        "",
        "[uplink]",
        f'broker = "{broker_url}"',
        "keepalive = 10",
        "reconnect_min = 0.5",
        "reconnect_max = 10.0",
        "",
        "[storage]",
        'data_dir = "."',
        "batch_interval = 1.0",
        *([f"capacity_mb = {capacity_mb}"] if capacity_mb is not None else []),
        "",
        "[polling]",
        "response_timeout = 0.2",
        "miss_limit = 3",
        "backoff_max = 10.0",
        *([f"health_interval = {health_interval}"] if health_interval is not None else []),
    ]
    for dev in cabinet.device_table():
        lines += [
            "",
            "[[devices]]",
            f'name = "{dev["name"]}"',
            'driver = "modbus-rtu"',
            f'line = "{dev.get("line", LINE_ROLE)}"',
            f"address = {dev['unit']}",
            f'profile = "{dev["model"]}"',
            f"poll = {POLL.get(str(dev['model']), 1.0)}",
        ]
    if cabinet.scenario.iomodule:
        lines += [
            "",
            "# The cabinet I/O module: door, mains, UPS, surge arrester, temperature, relays.",
            "[[devices]]",
            f'name = "{IOMODULE_NAME}"',
            'driver = "iomodule"',
            f'line = "{IOMODULE_ROLE}"',
            'profile = "iomodule"',
            "poll = 1.0",
        ]
    if cabinet.signal is not None:
        # The junction's controller on the cabinet LAN, over SNMPv3 authPriv (SHA + AES).
        signal, user = cabinet.signal, SIGNAL_USER
        lines += [
            "",
            "[[devices]]",
            f'name = "{signal.name}"',
            'driver = "ntcip"',
            f'host = "{signal.host}"',
            f"port = {signal.port}",
            'profile = "ntcip-1202-asc"',
            "poll = 1.0",
            f'v3 = {{ user = "{user.user}", auth = "sha", auth_key = "{user.auth_key}", '
            f'priv = "aes", priv_key = "{user.priv_key}" }}',
        ]
    for name, camera in cabinet.cameras.items():
        lines += [
            "",
            "[[devices]]",
            f'name = "{name}"',
            'driver = "onvif"',
            'profile = "onvif-camera"',
            f'host = "{camera.host}"',
            f"port = {camera.port}",
            f'username = "{camera.username}"',
            f'password = "{camera.password}"',
            f"poll = {CAMERA_POLL}",
        ]
    if tail:
        lines += ["", tail.rstrip("\n")]
    return "\n".join(lines) + "\n"


class AgentProcess:
    """The agent as a child process, its log in DATA/agent.log."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            # Its own session: Ctrl-C in the simulator's terminal reaches the simulator,
            # which stops the agent (SIGTERM) before the broker, as on a gateway.
            self.proc = await asyncio.create_subprocess_exec(
                # Dies with the simulator (or the test) however that one ends.
                *tied_to_parent(agent_command(self.config)),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(AGENT_STOP_TIMEOUT):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


async def _sim(options: SimOptions) -> dict[str, int]:
    data = (options.data or default_data_dir()).resolve()
    data.mkdir(parents=True, exist_ok=True)
    clock = SystemClock()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        broker: Mosquitto | None = None
        if options.broker:
            broker_url = options.broker
        else:
            broker = await stack.enter_async_context(Mosquitto(data_dir=data / "broker"))
            broker_url = broker.url
        # The agent reaches the broker through a proxy that models the cellular link.
        host, port = _host_port(broker_url)
        link = await stack.enter_async_context(LinkProxy(host, port))
        roles = line_roles(options.lines)
        cabinet = await stack.enter_async_context(
            Cabinet(
                Scenario(
                    lamps=options.lamps,
                    lines=options.lines,
                    seed=options.seed,
                    cameras=options.cameras,
                ),
                clock=clock,
                link_dir=data / "dev",
                line_names=roles,
            )
        )
        console = await stack.enter_async_context(ConsolePty(data / "dev"))
        ensure_keys(data)
        central_dir = ensure_central(data, broker_url)
        config = data / "agent.toml"
        board = "sim"
        if options.lines > 1:
            board = SIM_BOARD_FILE
            (data / board).write_text(sim_board(roles))
        config.write_text(agent_config(cabinet, link.url, board_file=board))
        # Camera stills the central post receives are written to DATA/central/blobs/{gw}/.
        central = await stack.enter_async_context(
            CentralPost(
                broker_url,
                keys={GATEWAY_ID: load_public_pem(data / "gateway.pub")},
                data_dir=central_dir,
            )
        )
        commander = await stack.enter_async_context(
            Commander(central, broker_url, load_key(central_dir / "operator.key"))
        )
        agent: AgentProcess | None = None
        if options.agent:
            agent = AgentProcess(config, data / "agent.log")
            await agent.start()
        else:
            print(
                f"agent not started; run it with:\n  armoire run --config {config}",
                file=sys.stderr,
                flush=True,
            )
        view = View(sys.stdout, gw=GATEWAY_ID, broker=broker_url, data=data)
        view.extra_lines.append(lambda: schedule_line(agent_status(data) or {}))
        view.extra_lines.append(lambda: bus_line(agent_status(data) or {}))
        view.extra_lines.append(lambda: console_hint(console.tech_path, data))
        controls = Controls(
            cabinet=cabinet,
            link=link,
            broker=broker,
            quit=stop.set,
            send=lambda text: typed_command(commander, text),
        )
        view.footer = lambda: _footer(controls, view.tty and sys.stdin.isatty(), view.width())
        async with asyncio.TaskGroup() as tg:
            model = tg.create_task(cabinet.run(), name="sim.cabinet")
            try:
                async with asyncio.timeout(options.duration):
                    with controls.attached(), _logs_to(data / SIM_LOG, view.tty):
                        while not stop.is_set():
                            view.render(
                                central,
                                agent_state=_agent_state(agent),
                                link_state=link.state.value,
                                devices=cabinet.device_names,
                            )
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(1.0):
                                    await stop.wait()
            except TimeoutError:
                pass
            view.close()
            if link.state is not LinkState.UP:
                await link.restore()  # let the agent drain what it holds before it stops
            if agent is not None:
                await agent.stop()
            # Let the last messages the agent drained on exit reach the central post.
            with contextlib.suppress(TimeoutError):
                await central.wait_for(lambda c: _settled(c, data), timeout=5.0)
            model.cancel()
        stats = central.stats()
        status = agent_status(data) or {}
        outbox = status.get("outbox", {})
        return {
            "agent_published": int(status.get("uplink", {}).get("published", 0)),
            "agent_outbox_left": sum(outbox.get("depth", {}).values()),
            "central_verified": stats["verified"],
            "central_by_kind": {k: n for k, n in stats["by_kind"].items() if n},
            "central_rejected": stats["rejected"],
            "central_duplicates": stats["duplicates"],
            "readings": stats["readings"],
            "points": stats["points"],
        }


def console_hint(tech: Path, data: Path) -> str:
    """Where a technician's terminal reaches the agent's console, and how to log in."""
    return (
        f"console: picocom -b 115200 {tech}  (token: armoire-central token "
        f"--data {data / 'central'} --sub ME --gw {GATEWAY_ID})"
    )


@contextlib.contextmanager
def _logs_to(path: Path, redirect: bool) -> Iterator[None]:
    """While the full-screen view is up, the simulator's own log lines go to ``path``:
    written to the terminal they would scroll the view."""
    if not redirect:
        yield
        return
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = logging.FileHandler(path)
    if saved and saved[0].formatter is not None:
        handler.setFormatter(saved[0].formatter)
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved
        handler.close()


def _agent_state(agent: AgentProcess | None) -> str:
    if agent is None:
        return "external"
    return "running" if agent.running else "stopped"


def _footer(controls: Controls, interactive: bool, cols: int) -> list[str]:
    """The keys' help and what the last key or command did (or the command being typed)."""
    if not interactive:
        return ["Ctrl-C to stop."]
    if controls.typing is not None:
        return [COMMAND_HELP, f": {controls.typing}_"]
    return [HELP if len(HELP) <= cols else HELP_SHORT, controls.last]


KIND_NAMES = {"tele": "telemetry", "evt": "events", "ack": "acks", "state": "Birth/Death"}


def summary(figures: dict[str, Any]) -> str:
    """The final figures in words: what each count means, so none looks contradictory."""
    kinds = ", ".join(f"{n} {KIND_NAMES.get(k, k)}" for k, n in figures["central_by_kind"].items())
    return "\n".join(
        [
            f"agent: published {figures['agent_published']} messages in its last run, "
            f"{figures['agent_outbox_left']} left in its outbox",
            f"central post: verified {figures['central_verified']} messages of this data "
            "directory's runs:",
            f"  {kinds or 'none'}",
            "  (Birth/Death: retained ones from earlier runs and the Death the broker",
            "  publishes for a lost gateway included)",
            f"central post: rejected {figures['central_rejected']}, dropped "
            f"{figures['central_duplicates']} duplicates; {figures['readings']} readings of "
            f"{figures['points']} points",
        ]
    )


def _settled(central: CentralPost, data: Path) -> bool:
    status = agent_status(data)
    if status is None:
        return True
    published = int(status.get("uplink", {}).get("published", 0))
    return bool(central.stats()["verified"] >= published)


def check_options(options: SimOptions) -> str | None:
    """A usage error in the options (lamps or lines the cabinet cannot hold), or None."""
    try:
        Scenario(
            lamps=options.lamps, lines=options.lines, seed=options.seed, cameras=options.cameras
        )
    except ValueError as exc:
        message = str(exc).replace("lamps must be", "--lamps must be")
        message = message.replace("cameras must be", "--cameras must be")
        message = message.replace("lines must be", "--lines must be")
        if "lines need at least" in message or "--lamps must be 0.." in message:
            message += " (add --lines, or fewer --lamps)"
        return message
    return None


def run_sim(options: SimOptions) -> int:
    """Run the simulator; prints the final figures as one JSON line."""
    problem = check_options(options)
    if problem is not None:
        print(f"armoire sim: {problem}", file=sys.stderr)
        return 2
    result = asyncio.run(_sim(options))
    print(summary(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlsplit(url)
    if parsed.scheme not in ("mqtt", "") or not parsed.hostname:
        raise SystemExit(f"armoire sim: --broker must be mqtt://HOST[:PORT], got {url!r}")
    return parsed.hostname, parsed.port or 1883

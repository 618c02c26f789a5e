"""The ``armoire`` command line.

Exit statuses: 0 success, also when the agent was asked to stop (SIGTERM from
systemd, or SIGINT / Ctrl-C from a technician: both log the same ``stopped:``
line); 1 runtime failure (another agent already running, a data directory
that cannot be written, ``check`` found fatal problems, ``status`` found no
status, a refused command); 2 bad usage or bad configuration (nothing was
started). The central post's tools are ``armoire-central`` (central/).

Data (JSON, reports) goes to stdout; errors and logs go to stderr. Global
options (``--log-level``) are accepted before or after the command.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from agent import __version__, logsetup
from agent.logsetup import DEFAULT_LEVEL, LEVELS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Where a gateway keeps its data when no option says otherwise (README, "Configuration").
DEFAULT_DATA = Path("/var/lib/armoire")

log = logging.getLogger("armoire")


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the default is SUPPRESS, so that an option given before the
    # command is not overwritten by the subcommand's default.
    parser.add_argument(
        "--log-level",
        default=None if top else argparse.SUPPRESS,
        type=str.upper,
        choices=LEVELS,
        help="log verbosity (default: the configuration's [log] level, else INFO); "
        "before or after the command",
    )


def _sub(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=description or help)
    _global_options(parser, top=False)
    return parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="armoire",
        description="Armoire street-cabinet gateway agent.",
        epilog="`armoire COMMAND --help` describes each command.",
    )
    p.add_argument("--version", action="version", version=f"armoire {__version__}")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _sub(
        sub,
        "run",
        "run the agent with a configuration file (until SIGTERM or Ctrl-C)",
        description="Run the agent in the foreground; logs go to stderr. One agent per data "
        "directory: a second one is refused, naming the first.",
    )
    run.add_argument("--config", required=True, type=Path, metavar="FILE", help="agent.toml")

    check = _sub(
        sub,
        "check",
        "validate a configuration and what the agent needs to run with it",
        description="Validate FILE, then check without changing anything what the agent needs "
        "at run time: gateway key readable, trust store valid, data directory writable, serial "
        "lines present. Each finding says ok, problem (the agent runs degraded) or fatal (it "
        "would not start). Exit 0 without fatal findings, 1 with, 2 for an invalid file.",
    )
    check.add_argument("--config", required=True, type=Path, metavar="FILE", help="agent.toml")
    check.add_argument(
        "--config-only",
        action="store_true",
        help="only validate the file (e.g. on a laptop, before deploying it)",
    )

    sched = _sub(
        sub,
        "schedule",
        "print the lighting program's switching instants and dimming steps",
        description="For each lighting group of the configuration, the nights the agent "
        "will apply: switching instants (UTC and local time) and dimming steps.",
    )
    sched.add_argument("--config", required=True, type=Path, metavar="FILE", help="agent.toml")
    sched.add_argument(
        "--from",
        dest="first",
        type=_iso_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="first evening (default: today, local time of the site)",
    )
    sched.add_argument("--days", type=_days, default=7, metavar="N", help="nights (default 7)")
    sched.add_argument("--json", action="store_true", help="one JSON document")

    status = _sub(
        sub,
        "status",
        "show the running agent's state: link, outbox, devices, alarms, holds",
        description="Read DIR/status.json, which the agent rewrites every 2 s, and show it "
        "in local time; works as any user who can read the data directory.",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help=f"the agent's data directory (default {DEFAULT_DATA})",
    )
    where.add_argument(
        "--config", type=Path, metavar="FILE", help="take the data directory from this agent.toml"
    )
    status.add_argument("--json", action="store_true", help="print JSON for tools instead")

    console = _sub(
        sub,
        "console",
        "attach to the running agent's technician console (on the gateway itself)",
        description="Connect this terminal to the agent's console socket ($ARMOIRE_CONSOLE_SOCKET, "
        "else DATA/console.sock): the same commands as on the serial console port. "
        "Ctrl-D on an empty line leaves.",
    )
    cwhere = console.add_mutually_exclusive_group()
    cwhere.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help=f"the agent's data directory (default {DEFAULT_DATA})",
    )
    cwhere.add_argument(
        "--config", type=Path, metavar="FILE", help="take the data directory from this agent.toml"
    )
    cwhere.add_argument("--socket", type=Path, metavar="PATH", help="the console socket itself")

    keys = _sub(sub, "keys", "manage the gateway's signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kinit = _sub(ksub, "init", "create the gateway's Ed25519 key pair in DIR")
    kinit.add_argument(
        "--data", required=True, type=Path, metavar="DIR", help="the gateway's data directory"
    )
    kshow = _sub(ksub, "show", "print the gateway id, kid and public key as JSON")
    kshow.add_argument(
        "--data", type=Path, metavar="DIR", help="the data directory (default: the config's)"
    )
    kshow.add_argument(
        "--config", type=Path, metavar="FILE", help="configuration naming the gateway id"
    )

    sim = _sub(sub, "sim", "run a virtual cabinet, a broker, the agent and a central post")
    sim.add_argument("--broker", metavar="URL", help="use this broker instead of starting one")
    sim.add_argument("--data", type=Path, metavar="DIR", help="where keys, config and data go")
    sim.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this time")
    sim.add_argument(
        "--no-agent",
        action="store_true",
        help="start everything but the agent; write its configuration to DIR/agent.toml",
    )
    sim.add_argument(
        "--lamps", type=int, default=8, metavar="N", help="lamp controllers (default 8)"
    )
    sim.add_argument(
        "--lines",
        type=int,
        default=1,
        metavar="K",
        help="RS-485 lines the devices are spread over (default 1)",
    )
    sim.add_argument(
        "--cameras",
        type=int,
        default=1,
        metavar="N",
        help="ONVIF cameras cam-01.. on the cabinet LAN (default 1; 0..16)",
    )
    sim.add_argument("--seed", type=int, default=1, help="random seed of the cabinet model")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logsetup.configure(args.log_level or DEFAULT_LEVEL)
    match args.command:
        case "run":
            return _run(args.config, args.log_level)
        case "check":
            return _check(args.config, config_only=args.config_only)
        case "schedule":
            return _schedule(args)
        case "status":
            return _status(args)
        case "keys":
            return _keys(args)
        case "console":
            return _console(args)
        case "sim":
            return _sim(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


def _load(path: Path):  # type: ignore[no-untyped-def]
    from agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"armoire: invalid configuration\n{exc}", file=sys.stderr)
        return None


def _check(path: Path, *, config_only: bool = False) -> int:
    from agent.checks import Level, runtime_checks

    config = _load(path)
    if config is None:
        return EXIT_USAGE
    print(f"{path}: ok ({len(config.devices)} devices, {len(config.points())} points)")
    if config_only:
        return EXIT_OK
    findings = runtime_checks(config)
    for finding in findings:
        print(f"{finding.level.value.upper():<8} {finding.message}")
    fatal = sum(f.level is Level.FATAL for f in findings)
    problems = sum(f.level is Level.PROBLEM for f in findings)
    if fatal:
        print(
            f"armoire: {fatal} fatal problem(s): the agent would not start with {path}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if problems:
        print(f"{problems} problem(s): the agent would start, degraded as said above")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from agent.status import StatusError, format_status, read_status

    data = args.data
    if args.config is not None:
        config = _load(args.config)
        if config is None:
            return EXIT_USAGE
        data = config.storage.data_dir
    try:
        status = read_status(data or DEFAULT_DATA)
    except StatusError as exc:
        print(f"armoire: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(status) if args.json else format_status(status))
    return EXIT_OK


def _console(args: argparse.Namespace) -> int:
    import os

    from agent.console_client import attach
    from agent.console_server import SOCKET_ENV, SYSTEMD_SOCKET, socket_path

    path = args.socket
    if path is None:
        data = args.data
        if args.config is not None:
            config = _load(args.config)
            if config is None:
                return EXIT_USAGE
            data = config.storage.data_dir
        path = socket_path(data or DEFAULT_DATA)
        if SOCKET_ENV not in os.environ and not path.exists() and SYSTEMD_SOCKET.exists():
            path = SYSTEMD_SOCKET  # where deploy/armoire.service has the agent put it
    try:
        attach(path)
    except OSError as exc:
        print(
            f"armoire: cannot attach to the console at {path}: {exc.strerror or exc} "
            "(is the agent running, and are you its user or root?)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _run(path: Path, log_level: str | None) -> int:
    from agent import config_apply
    from agent.runtime import StartupError, run_agent

    config = _load(path)
    if config is None:
        pending = config_apply.staged(path)
        if pending is None:
            return EXIT_USAGE
        # A configuration applied from the console does not load: back to the previous one.
        config_apply.roll_back(path, pending, "the new configuration does not load")
        _reexec()
    if log_level is None:  # the command line wins over the configuration
        logsetup.configure(config.log.level)
    try:
        if asyncio.run(run_agent(config)):
            _reexec()
    except StartupError as exc:
        print(f"armoire: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _reexec() -> NoReturn:
    """Start the agent afresh in this process (same PID, same arguments): a new configuration
    takes effect, or a rolled-back one returns (agent/config_apply.py)."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "agent", *sys.argv[1:]])  # noqa: S606


def _iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 366:
        raise argparse.ArgumentTypeError(f"expected 1..366 nights, got {text!r}")
    return int(text)


def _schedule(args: argparse.Namespace) -> int:
    from agent.lighting import schedule

    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    zone = config.site.zone
    first = args.first or dt.datetime.now(zone).date()
    groups = []
    for program in config.lighting:
        nights = []
        for n in schedule(first, args.days, config.site, program):
            steps = [
                {"utc": t.isoformat(), "local": t.astimezone(zone).isoformat(), "level": lvl}
                for t, lvl in n.steps
            ]
            nights.append(
                {
                    "evening": n.evening.isoformat(),
                    "on": {"utc": n.on.isoformat(), "local": n.on.astimezone(zone).isoformat()},
                    "off": {"utc": n.off.isoformat(), "local": n.off.astimezone(zone).isoformat()},
                    "steps": steps,
                    "exception": n.exception,
                }
            )
        groups.append({"group": program.name, "lamps": list(program.lamps), "nights": nights})
    if args.json:
        print(json.dumps({"site": config.site.timezone, "groups": groups}, indent=1))
        return EXIT_OK
    for group in groups:
        print(f"lighting group {group['group']} ({', '.join(group['lamps'])})")
        for n in group["nights"]:
            on, off = n["on"], n["off"]
            print(
                f"  {n['evening']}  on  {on['local'][11:16]} local ({on['utc'][11:16]} UTC)"
                f"  off {off['local'][11:16]} local ({off['utc'][11:16]} UTC)"
                + ("  [exception]" if n["exception"] else "")
            )
            for step in n["steps"]:
                print(f"      {step['local'][11:16]} local ({step['utc'][11:16]} UTC)  "
                      f"{step['level']:3d} %")  # fmt: skip
    return EXIT_OK


def _gateway_id(data: Path, config: Path | None) -> str | None:
    candidate = config or data / "agent.toml"
    try:
        with candidate.open("rb") as f:
            gw = tomllib.load(f).get("gateway")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return gw if isinstance(gw, str) and gw else None


def _data_of(config: Path) -> Path | None:
    """The data directory a configuration names, read leniently (for `keys show`)."""
    try:
        with config.open("rb") as f:
            raw = tomllib.load(f).get("storage", {}).get("data_dir")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return None
    if not isinstance(raw, str):
        return None
    # Relative paths are relative to the configuration file (agent/config.py).
    return config.resolve().parent / raw


def _keys(args: argparse.Namespace) -> int:
    from agent.security.keys import (
        GATEWAY_KEY,
        KeyExistsError,
        KeyFileError,
        init_gateway_keys,
        key_summary,
    )

    if args.keys_command == "init":
        try:
            init_gateway_keys(args.data)
        except KeyExistsError:
            print(
                f"armoire: {args.data / GATEWAY_KEY} already exists; "
                "a gateway keeps its identity (remove the file to re-provision)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        summary = key_summary(_gateway_id(args.data, None) or "", args.data)
        print(json.dumps({**summary, "gw": summary["gw"] or None}))
        return EXIT_OK
    data = args.data
    if data is None and args.config is not None:
        data = _data_of(args.config)
        if data is None:
            print(
                f"armoire: {args.config}: no [storage] data_dir in it; give --data DIR",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if data is None:
        print("armoire: keys show needs --data DIR or --config FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = key_summary(_gateway_id(data, args.config) or "", data)
    except KeyFileError as exc:
        print(f"armoire: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps({**summary, "gw": summary["gw"] or None}))
    return EXIT_OK


def _sim(args: argparse.Namespace) -> int:
    try:
        from sim.run import SimOptions, run_sim
    except ImportError as exc:  # pymodbus is only installed with the [sim] extra
        print(
            f"armoire: the simulator needs its extra packages ({exc.name} is missing): "
            "pip install 'armoire[sim]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    options = SimOptions(
        broker=args.broker,
        data=args.data,
        duration=args.duration,
        agent=not args.no_agent,
        lamps=args.lamps,
        lines=args.lines,
        seed=args.seed,
        cameras=args.cameras,
    )
    return run_sim(options)

"""The ``armoire`` command line.

Exit statuses: 0 success, 1 runtime failure, 2 bad usage or bad configuration
(nothing was started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from agent import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("armoire")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="armoire",
        description="Armoire street-cabinet gateway agent.",
    )
    p.add_argument("--version", action="version", version=f"armoire {__version__}")
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent with a configuration file")
    run.add_argument("--config", required=True, type=Path, metavar="FILE")

    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("--config", required=True, type=Path, metavar="FILE")

    keys = sub.add_parser("keys", help="manage the gateway's signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kinit = ksub.add_parser("init", help="create the gateway's Ed25519 key pair")
    kinit.add_argument("--data", required=True, type=Path, metavar="DIR")
    kinit.add_argument(
        "--central",
        action="store_true",
        help="create the central post's root, operator and maintenance keys instead, "
        "and the trust-store material to install on gateways",
    )
    kshow = ksub.add_parser("show", help="print the gateway id, kid and public key as JSON")
    kshow.add_argument("--data", required=True, type=Path, metavar="DIR")
    kshow.add_argument(
        "--config", type=Path, metavar="FILE", help="configuration naming the gateway id"
    )

    central = sub.add_parser("central", help="act as the central post (reference tooling)")
    csub = central.add_subparsers(dest="central_command", required=True, metavar="ACTION")
    send = csub.add_parser(
        "send",
        help="sign a command, publish it, wait for the Ack and print it as JSON",
        description="examples: write lamp-03/level 40 · relinquish lamp-03/level · action selftest",
    )
    send.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="DIR",
        help="the central post's folder (keys, central.toml)",
    )
    send.add_argument("--gw", required=True, metavar="ID", help="target gateway id")
    send.add_argument("--prio", type=int, metavar="1..16", help="priority level (default 10)")
    send.add_argument("--hold", type=int, metavar="SECONDS", help="how long a write holds")
    send.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    send.add_argument("--key", default="operator", help="signing key in DIR (default operator)")
    send.add_argument("op", choices=["write", "relinquish", "action"])
    send.add_argument("target", help="POINT for write/relinquish, NAME for action")
    send.add_argument("value", nargs="?", help="the value to write")

    sim = sub.add_parser(
        "sim", help="run a virtual cabinet, a broker, the agent and a central post"
    )
    sim.add_argument("--broker", metavar="URL", help="use this broker instead of starting one")
    sim.add_argument("--data", type=Path, metavar="DIR", help="where keys, config and data go")
    sim.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this time")
    sim.add_argument(
        "--no-agent",
        action="store_true",
        help="start everything but the agent; write its configuration to DIR/agent.toml",
    )
    sim.add_argument("--lamps", type=int, default=8, help="lamp controllers on the line")
    sim.add_argument("--seed", type=int, default=1, help="random seed of the cabinet model")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    match args.command:
        case "run":
            return _run(args.config)
        case "check":
            return _check(args.config)
        case "keys":
            return _keys(args)
        case "sim":
            return _sim(args)
        case "central":
            return _central(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


def _load(path: Path):  # type: ignore[no-untyped-def]
    from agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"armoire: invalid configuration\n{exc}", file=sys.stderr)
        return None


def _check(path: Path) -> int:
    config = _load(path)
    if config is None:
        return EXIT_USAGE
    print(f"{path}: ok ({len(config.devices)} devices, {len(config.points())} points)")
    return EXIT_OK


def _run(path: Path) -> int:
    from agent.runtime import StartupError, run_agent

    config = _load(path)
    if config is None:
        return EXIT_USAGE
    try:
        asyncio.run(run_agent(config))
    except StartupError as exc:
        print(f"armoire: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _gateway_id(data: Path, config: Path | None) -> str | None:
    candidate = config or data / "agent.toml"
    try:
        with candidate.open("rb") as f:
            gw = tomllib.load(f).get("gateway")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return gw if isinstance(gw, str) else None


def _keys(args: argparse.Namespace) -> int:
    from agent.security.keys import (
        GATEWAY_KEY,
        KeyExistsError,
        KeyFileError,
        init_gateway_keys,
        key_summary,
    )

    if args.keys_command == "init" and args.central:
        from sim.commander import init_central_keys

        try:
            summary = init_central_keys(args.data)
        except FileExistsError as exc:
            print(f"armoire: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(summary))
        return EXIT_OK
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
        print(json.dumps(summary))
        return EXIT_OK
    try:
        summary = key_summary(_gateway_id(args.data, args.config) or "", args.data)
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
        seed=args.seed,
    )
    return run_sim(options)


def _central(args: argparse.Namespace) -> int:
    from sim.commander import send_cli

    if args.op == "write" and args.value is None:
        print("armoire: write needs a value: write POINT VALUE", file=sys.stderr)
        return EXIT_USAGE
    status, result = asyncio.run(
        send_cli(
            args.data,
            args.gw,
            args.op,
            args.target,
            args.value,
            prio=args.prio,
            hold=args.hold,
            timeout=args.timeout,
            key_name=args.key,
        )
    )
    print(json.dumps(result))
    return status

"""The ``armoire-central`` command line: the central post's tools, apart from the gateway's.

``keys init`` creates the central keys and the trust material a gateway installs; ``send``
signs a command and waits for its Ack; ``token`` issues a maintenance token for a cabinet's
console; ``verify`` checks a token (what a technician was given) and prints its content.

Exit statuses: 0 success; 1 a refused command or a token that does not verify; 2 bad usage,
configuration or key files; 3 ``send`` got no Ack.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cbor2

from central.commander import (
    MS_PER_S,
    init_central_keys,
    load_key,
    make_token,
    send_cli,
    token_text,
)
from central.post import (
    GatewayKey,
    LocalProtocolError,
    RemoteProtocolError,
    load_public_pem,
    open_sign1,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``8h``, ``1d`` as seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 8h")
    return float(match[1]) * _UNIT_S[match[2]]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="armoire-central", description="the central post's tools (reference implementation)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_help = "the central post's folder (keys, central.toml)"

    keys = sub.add_parser("keys", help="manage the central post's keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kinit = ksub.add_parser(
        "init",
        help="create the root, operator and maintenance keys and the trust material for gateways",
    )
    kinit.add_argument("--data", required=True, type=Path, metavar="DIR", help=data_help)

    send = sub.add_parser(
        "send",
        help="sign a command, publish it, wait for the Ack and print it as JSON",
        description="examples: write lamp-03/level 40 · relinquish lamp-03/level · action selftest",
    )
    send.add_argument("--data", required=True, type=Path, metavar="DIR", help=data_help)
    send.add_argument("--gw", required=True, metavar="ID", help="target gateway id")
    send.add_argument("--prio", type=int, metavar="1..16", help="priority level (default 10)")
    send.add_argument("--hold", type=int, metavar="SECONDS", help="how long a write holds")
    send.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="how long the command stays valid and deliverable (default 60); the broker "
        "drops it when this runs out",
    )
    send.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the Ack (default 10); the command may still be applied "
        "later, until its TTL runs out",
    )
    send.add_argument("--key", default="operator", help="signing key in DIR (default operator)")
    send.add_argument("op", choices=["write", "relinquish", "action"], help="what to do")
    send.add_argument("target", help="POINT for write/relinquish, NAME for action")
    send.add_argument(
        "value", nargs="?", help="the value to write; for `action snapshot`, the camera"
    )

    token = sub.add_parser(
        "token",
        help="issue a maintenance token for one cabinet's console (one line of base64url)",
    )
    token.add_argument("--data", required=True, type=Path, metavar="DIR", help=data_help)
    token.add_argument("--sub", required=True, metavar="ID", help="the technician's id")
    token.add_argument("--gw", required=True, metavar="GW", help="the gateway it opens")
    token.add_argument(
        "--ttl", type=duration, default=8 * 3600.0, metavar="DURATION", help="default 8h"
    )
    token.add_argument(
        "--key", default="maintenance", help="signing key in DIR (default maintenance)"
    )

    verify = sub.add_parser("verify", help="check a maintenance token and print its content")
    verify.add_argument("--data", required=True, type=Path, metavar="DIR", help=data_help)
    verify.add_argument("--key", default="maintenance", help="key in DIR (default maintenance)")
    verify.add_argument("token", help="the token, as printed by `armoire-central token`")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    match args.command:
        case "keys":
            return _keys_init(args.data)
        case "send":
            return _send(args)
        case "token":
            return _token(args)
        case "verify":
            return _verify(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


def _error(message: str) -> None:
    print(f"armoire-central: {message}", file=sys.stderr)


def _keys_init(data: Path) -> int:
    try:
        summary = init_central_keys(data)
    except FileExistsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    print(json.dumps(summary))
    return EXIT_OK


def _send(args: argparse.Namespace) -> int:
    if args.op == "write" and args.value is None:
        _error("write needs a value: write POINT VALUE")
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
            ttl=args.ttl,
        )
    )
    if "error" in result:
        _error(result["error"])
        if "cmd" in result:
            _error(f"command id {result['cmd']}")
        return status
    print(json.dumps(result))
    return status


def _token(args: argparse.Namespace) -> int:
    try:
        key = load_key(args.data / f"{args.key}.key")
        body = make_token(
            gw=args.gw, sub=args.sub, now_ms=int(time.time() * MS_PER_S), ttl_s=args.ttl
        )
    except LocalProtocolError as exc:
        _error(str(exc))
        return EXIT_USAGE
    print(token_text(key, body))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    try:
        public = load_public_pem(args.data / f"{args.key}.pub")
    except LocalProtocolError as exc:
        _error(str(exc))
        return EXIT_USAGE
    text = args.token.strip()
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = cbor2.loads(open_sign1(data, GatewayKey(gw=args.key, public=public)))
    except (binascii.Error, ValueError, RemoteProtocolError, cbor2.CBORDecodeError) as exc:
        _error(f"the token does not verify with {args.key}.pub: {exc}")
        return EXIT_FAILURE
    if not isinstance(body, dict):
        _error("the token's payload is not a map")
        return EXIT_FAILURE
    left_s = (body.get("exp", 0) - time.time() * MS_PER_S) / MS_PER_S
    print(json.dumps({**body, "expired": left_s < 0, "left_s": max(0, round(left_s))}))
    return EXIT_OK

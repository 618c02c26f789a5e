"""A local attacker on the broker: anyone who may publish but holds no key (tests, bench).

It speaks raw MQTT 3.1.1 over a socket, as fast as one client can: a CONNECT, then PUBLISH
packets (QoS 0) written in large chunks. No library stands between it and the wire, so the
flood is as dense as the broker accepts.

    python -m sim.attacker flood --broker mqtt://127.0.0.1:1883 --topic armoire/v1/gw/cmd \\
        --seconds 30 [--size 1 | --payload-hex HEX]
    python -m sim.attacker big --broker mqtt://127.0.0.1:1883 --topic armoire/v1/gw/cmd \\
        --mib 100

Each prints one JSON line: ``{"messages": N, "bytes": B, "seconds": S}``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from urllib.parse import urlsplit

# How much the flood writes per send: many packets per system call.
CHUNK = 64 * 1024


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, no keepalive."""
    body = _utf8("MQTT") + b"\x04\x02\x00\x00" + _utf8(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_header(topic: str, payload_size: int) -> bytes:
    """The fixed header and topic of a QoS 0 PUBLISH carrying ``payload_size`` bytes."""
    variable = _utf8(topic)
    return b"\x30" + _remaining_length(len(variable) + payload_size) + variable


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1883))
    sock.sendall(connect_packet(f"attacker-{os.getpid()}"))
    connack = sock.recv(4)
    if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"broker refused the connection: {connack.hex()}")
    return sock


def flood(
    url: str, topic: str, *, seconds: float, size: int = 1, payload: bytes | None = None
) -> dict[str, float]:
    """Publish ``size`` zero bytes (or ``payload``) on ``topic`` as fast as the socket takes."""
    if payload is None:
        payload = b"\x00" * size
    packet = publish_header(topic, len(payload)) + payload
    per_chunk = max(1, CHUNK // len(packet))
    chunk = packet * per_chunk
    sent = 0
    with _connect(url) as sock:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            sock.sendall(chunk)
            sent += per_chunk
        elapsed = time.monotonic() - start
    return {"messages": sent, "bytes": sent * len(packet), "seconds": round(elapsed, 3)}


def big(url: str, topic: str, *, size: int) -> dict[str, float]:
    """Publish one message of ``size`` bytes on ``topic``."""
    with _connect(url) as sock:
        start = time.monotonic()
        sock.sendall(publish_header(topic, size))
        zeros = b"\x00" * (1 << 20)
        left = size
        while left:
            n = min(left, len(zeros))
            sock.sendall(zeros[:n])
            left -= n
        # A PINGREQ answered means the broker read the whole message.
        sock.sendall(b"\xc0\x00")
        sock.settimeout(60)
        while sock.recv(2) != b"\xd0\x00":
            pass
        elapsed = time.monotonic() - start
    return {"messages": 1, "bytes": size, "seconds": round(elapsed, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.attacker", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("flood", "big"):
        p = sub.add_parser(name)
        p.add_argument("--broker", required=True, help="mqtt://host:port")
        p.add_argument("--topic", required=True)
        if name == "flood":
            p.add_argument("--seconds", type=float, default=30.0)
            p.add_argument("--size", type=int, default=1, help="payload bytes per message")
            p.add_argument("--payload-hex", help="this payload instead of --size zero bytes")
        else:
            p.add_argument("--mib", type=float, default=100.0, help="message size, MiB")
    args = parser.parse_args(argv)
    if args.what == "flood":
        payload = bytes.fromhex(args.payload_hex) if args.payload_hex else None
        result = flood(
            args.broker, args.topic, seconds=args.seconds, size=args.size, payload=payload
        )
    else:
        result = big(args.broker, args.topic, size=int(args.mib * (1 << 20)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Durable outbox benchmark: append throughput, drain, bytes per reading, storage writes.

Everything runs the agent's real code (MessageFactory, Signer, Outbox, Uplink), a real
mosquitto on loopback, and for the steady state the agent as its own process in the
default simulated cabinet (8 lamps, a meter, an environment sensor: 66 points):

1. append: Telemetry batches of the cabinet's points built, signed and committed with
   ``Outbox.append_many`` (synchronous=FULL), then the commit alone;
2. drain: a backlog of 1,000,000 readings forwarded by ``Uplink`` to mosquitto, delivery
   counted by an independent QoS 1 subscriber;
3. bytes per reading, on disk (outbox file, payloads) and on the wire, for full batches
   and for the real steady-state mix of the simulated cabinet;
4. bytes the agent process writes to storage per hour (/proc/PID/io) in that cabinet,
   and those of the outbox alone replaying the same messages.

Usage: .venv/bin/python bench/outbox.py [--quick] [--seconds 60] [--warmup 15]
Human-readable lines on stderr, then one JSON line with every figure on stdout.
Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import random
import re
import sqlite3
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import SystemClock, wall_ms
from agent.config import UplinkConfig
from agent.messages import MessageFactory, Reading, Topic, topic
from agent.outbox import OUTBOX_FILE, MsgClass, Outbox, Pending
from agent.points import Quality
from agent.security.cose import COSE_SIGN1_TAG, Signer
from agent.uplink import WINDOW, Uplink
from central.post import CentralPost, load_public_pem
from drivers.profile import RegisterSpec, load_profile
from sim.broker import LOOPBACK, Mosquitto
from sim.cabinet import ENV_NAME, METER_NAME, Cabinet, Scenario
from sim.run import GATEWAY_ID, LINE_ROLE, AgentProcess, agent_config, ensure_keys

REPO = Path(__file__).resolve().parent.parent

# agent/config.py, [storage] defaults: batch_interval = 1.0 s, batch_max = 500 readings.
BATCH_INTERVAL_MS = 1000
BATCH_MAX = 500
# Readings per commit in the append test: one reading of each of the 66 points (a busy
# second of the default cabinet), one full message, and four full messages (a burst).
APPEND_SIZES = (66, BATCH_MAX, 4 * BATCH_MAX)
# Messages per commit while filling the drain backlog (not measured: only fast).
FILL_GROUP = 20
# The target this benchmark checks the steady-state wire cost against.
WIRE_TARGET_BYTES = 32
# How long the drain and the subscriber's catching up may take before we give up.
DRAIN_TIMEOUT_S = 600.0
DELIVERY_TIMEOUT_S = 60.0
# PROTOCOL.md, Transport: the Telemetry topic of every gateway.
TELE_FILTER = "armoire/v1/+/tele"
SUBSCRIBER_SESSION_EXPIRY_S = 3600
SECONDS_PER_HOUR = 3600
MB = 1e6
BENCH_GATEWAY = "cab-bench-0001"
# mosquitto.conf(5) defaults, for options sim/broker.py does not set.
MOSQUITTO_DEFAULTS = {"max_inflight_messages": 20, "max_queued_messages": 1000}
# paho-mqtt's client-side cap on QoS>0 publishes awaiting their ack (Client.__init__);
# mosquitto also advertises Receive Maximum = max_inflight_messages (20) in its CONNACK.
PAHO_MAX_INFLIGHT = 20
# Significant digits that always tell two floats of a struct format apart (IEEE 754:
# 5 for binary16 "e", 9 for binary32 "f").
FLOAT_DIGITS = {"e": 5, "f": 9}
LAMP_PREFIX = re.compile(r"^lamp-\d+/")

# Realistic values of the default cabinet, per (profile, point): low, high, decimals.
# 0 decimals travel as ints (levels, counters, the meter's W); 1 or 2 as floats, as the
# drivers return scaled registers (0.1 W, 0.1 °C, 0.1 %RH) and the meter's f32 values.
VALUE_RANGES: dict[tuple[str, str], tuple[float, float, int]] = {
    ("lamp-ctl", "level"): (0, 100, 0),
    ("lamp-ctl", "power"): (20.0, 120.0, 1),
    ("lamp-ctl", "energy"): (50_000, 900_000, 0),
    ("lamp-ctl", "hours"): (2_000, 40_000, 0),
    ("lamp-ctl", "driver_temp"): (25.0, 60.0, 1),
    **{("meter-3ph", f"voltage_l{n}"): (225.0, 240.0, 1) for n in (1, 2, 3)},
    **{("meter-3ph", f"current_l{n}"): (0.5, 2.5, 2) for n in (1, 2, 3)},
    ("meter-3ph", "power"): (800, 1500, 0),
    ("meter-3ph", "energy"): (1_000_000, 9_000_000, 0),
    ("env-sensor", "temperature"): (10.0, 35.0, 1),
    ("env-sensor", "humidity"): (30.0, 80.0, 1),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much work each part does."""

    append_commits: int  # commits per append scenario
    drain_messages: int  # messages of BATCH_MAX readings in the drain backlog
    warmup: float  # seconds of simulated cabinet before the window
    seconds: float  # the simulated window


FULL = Sizes(append_commits=300, drain_messages=2000, warmup=15.0, seconds=60.0)
QUICK = Sizes(append_commits=30, drain_messages=100, warmup=5.0, seconds=15.0)


def say(line: str = "") -> None:
    print(line, file=sys.stderr, flush=True)


# -- synthetic telemetry ------------------------------------------------------------------


def cabinet_points() -> list[tuple[str, str, RegisterSpec]]:
    """(point name, profile, spec) of every point of the default simulated cabinet."""
    devices = [(f"lamp-{n:02d}", "lamp-ctl") for n in range(1, Scenario().lamps + 1)]
    devices += [(METER_NAME, "meter-3ph"), (ENV_NAME, "env-sensor")]
    return [
        (f"{device}/{spec.name}", model, spec)
        for device, model in devices
        for spec in load_profile(model).points
    ]


class SyntheticCabinet:
    """Readings of the default cabinet's points with realistic values, reproducibly."""

    def __init__(self, seed: int = 1) -> None:
        self._points = cabinet_points()
        self._rng = random.Random(seed)
        self._next = 0

    def batch(self, count: int, t0_ms: int) -> list[Reading]:
        """``count`` readings spread over one batch interval from ``t0_ms``, in time order.

        Points come round-robin, so a batch of 66 holds each point once.
        """
        dts = sorted(self._rng.randrange(BATCH_INTERVAL_MS) for _ in range(count))
        readings = []
        for dt in dts:
            name, model, spec = self._points[self._next % len(self._points)]
            self._next += 1
            readings.append(
                Reading(
                    point=name,
                    t_ms=t0_ms + dt,
                    value=self._value(model, spec),
                    quality=Quality.GOOD,
                )
            )
        return readings

    def _value(self, model: str, spec: RegisterSpec) -> float | int | bool:
        if spec.type == "bool":
            return self._rng.random() < 0.5
        low, high, decimals = VALUE_RANGES[(model, spec.name)]
        if decimals == 0:
            return self._rng.randint(int(low), int(high))
        return round(self._rng.uniform(low, high), decimals)


def chunks(readings: Sequence[Reading]) -> list[Sequence[Reading]]:
    return [readings[i : i + BATCH_MAX] for i in range(0, len(readings), BATCH_MAX)]


def telemetry_items(factory: MessageFactory, readings: Sequence[Reading]) -> list[Pending]:
    """One Pending per BATCH_MAX readings, exactly as Reporter.flush builds them."""
    return [
        Pending(
            cls=MsgClass.TELEMETRY,
            topic=topic(factory.gw, Topic.TELE),
            build=functools.partial(factory.telemetry, readings=chunk),
            readings=len(chunk),
        )
        for chunk in chunks(readings)
    ]


def prebuilt(payload: bytes) -> Callable[[int], bytes]:
    """A Pending.build that returns bytes signed beforehand."""
    return lambda _seq: payload


# -- storage accounting -------------------------------------------------------------------


def proc_io(pid: int | str = "self") -> dict[str, int]:
    """/proc/PID/io: write_bytes counts page-cache pages the process dirtied (4 KiB each),
    i.e. what it sends to storage; cancelled_write_bytes, dirty pages it truncated away."""
    fields = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value)
    return fields


def written(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        key: after[key] - before[key] for key in ("write_bytes", "cancelled_write_bytes", "wchar")
    }


def disk_usage(data_dir: Path) -> dict[str, int]:
    """Outbox file sizes and what its records hold, read on a second connection."""
    path = data_dir / OUTBOX_FILE
    wal = path.with_name(path.name + "-wal")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        records, readings, payload = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(LENGTH(payload)), 0) "
            "FROM records"
        ).fetchone()
    return {
        "records": records,
        "readings": readings,
        "payload_bytes": payload,
        "db_bytes": path.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
    }


def storage_dir() -> Path:
    """A folder for temporary files on the same disk as the repository (not tmpfs)."""
    tmp = Path(tempfile.gettempdir())
    if tmp.stat().st_dev == REPO.stat().st_dev:
        return tmp
    build = REPO / "build"  # git-ignored
    build.mkdir(exist_ok=True)
    return build


# -- wire analysis ------------------------------------------------------------------------


def cbor_size(item: object) -> int:
    return len(cbor2.dumps(item))


@dataclass(slots=True)
class WireStats:
    """Where the bytes of Telemetry messages go: the envelope vs each reading's fields."""

    messages: int = 0
    readings: int = 0
    payload_bytes: int = 0  # MQTT payloads: the whole COSE_Sign1
    cose_bytes: int = 0  # COSE_Sign1 around the body: tag, headers, bstr head, signature
    header_bytes: int = 0  # body minus its readings: v, gw, boot, seq, t0, "r" and its head
    entry_bytes: int = 0  # the readings, each a CBOR array [point, dt, value, q]
    fields: Counter[str] = field(default_factory=Counter)  # bytes per field of the entries
    value_kinds: Counter[str] = field(default_factory=Counter)  # values per CBOR kind
    points: Counter[str] = field(default_factory=Counter)  # readings per point (lamps merged)

    def add(self, payload: bytes) -> None:
        body_bytes = telemetry_body(payload)
        entries = cbor2.loads(body_bytes)["r"]
        self.messages += 1
        self.readings += len(entries)
        self.payload_bytes += len(payload)
        self.cose_bytes += len(payload) - len(body_bytes)
        entry_bytes = 0
        for point, dt, value, quality in entries:
            sizes = {
                "point": cbor_size(point),
                "dt": cbor_size(dt),
                "value": cbor_size(value),
                "quality": cbor_size(quality),
            }
            sizes["array_head"] = cbor_size([point, dt, value, quality]) - sum(sizes.values())
            self.fields.update(sizes)
            entry_bytes += sum(sizes.values())
            self.value_kinds[value_kind(value)] += 1
            self.points[LAMP_PREFIX.sub("lamp-NN/", point)] += 1
        self.entry_bytes += entry_bytes
        self.header_bytes += len(body_bytes) - entry_bytes

    def summary(self) -> dict[str, Any]:
        n, m = max(self.readings, 1), max(self.messages, 1)
        envelope = self.cose_bytes + self.header_bytes
        return {
            "messages": self.messages,
            "readings": self.readings,
            "bytes_per_reading": round(self.payload_bytes / n, 2),
            "readings_per_message": round(self.readings / m, 1),
            "entry_bytes_per_reading": round(self.entry_bytes / n, 2),
            "entry_fields_per_reading": {k: round(v / n, 2) for k, v in self.fields.items()},
            "envelope_bytes_per_message": round(envelope / m, 1),
            "cose_bytes_per_message": round(self.cose_bytes / m, 1),
            "body_header_bytes_per_message": round(self.header_bytes / m, 1),
            "envelope_bytes_per_reading": round(envelope / n, 2),
            "envelope_share": round(envelope / max(self.payload_bytes, 1), 3),
            "value_kinds": dict(self.value_kinds),
            "readings_per_point": dict(self.points.most_common()),
        }


def telemetry_body(payload: bytes) -> bytes:
    """The CBOR body inside a COSE_Sign1 (not verified: the central post does that)."""
    envelope = cbor2.loads(payload)
    assert envelope.tag == COSE_SIGN1_TAG
    body: bytes = envelope.value[2]
    return body


def value_kind(value: object) -> str:
    match value:
        case bool():
            return "bool"
        case int():
            return "int"
        case float():
            return f"float{8 * (cbor_size(value) - 1)}"
        case None:
            return "null"
        case _:
            return type(value).__name__


def analyse(payloads: Sequence[bytes], *, sample: int | None = None) -> dict[str, Any]:
    """Wire figures of Telemetry payloads: totals over all of them, and where the bytes
    go over the first ``sample`` (all by default: field by field is slow for millions)."""
    bodies = [cbor2.loads(telemetry_body(p)) for p in payloads]
    readings = sum(len(body["r"]) for body in bodies)
    payload_bytes = sum(len(p) for p in payloads)
    detail = WireStats()
    for payload in payloads[:sample]:
        detail.add(payload)
    return {
        "messages": len(payloads),
        "distinct_seqs": len({(body["gw"], body["boot"], body["seq"]) for body in bodies}),
        "readings": readings,
        "payload_bytes": payload_bytes,
        "bytes_per_reading": round(payload_bytes / max(readings, 1), 2),
        "breakdown": detail.summary(),
    }


def wire_what_if(payloads: Sequence[bytes], signer: Signer) -> dict[str, float]:
    """Bytes per reading of the same captured readings encoded otherwise, re-signed.

    ``as_sent`` re-encodes them unchanged: it must equal the captured figure (a check of this
    replica of MessageFactory.telemetry). ``batch_Ns`` merges N consecutive 1 s messages,
    which is what ``storage.batch_interval = N`` would send (every change is still
    reported). ``float32`` sends a float as a CBOR float32 when the shortest decimal of that
    float32 is the value itself (85.3, 230.1, any f32 register): ``value`` stays a CBOR
    number and a receiver printing it at float32 precision reads the same decimal.
    ``float16`` tries a half float first under the same rule (85.3 -> 85.3125, whose
    shortest half-precision decimal is 85.3), then float32.
    """
    bodies = [cbor2.loads(telemetry_body(p)) for p in payloads]
    variants: dict[str, tuple[int, tuple[str, ...]]] = {
        "as_sent": (1, ()),
        "float32": (1, ("f",)),
        "float16": (1, ("e", "f")),
        "batch_2s": (2, ()),
        "batch_3s": (3, ()),
        "batch_5s": (5, ()),
        "float32_batch_2s": (2, ("f",)),
        "float32_batch_3s": (3, ("f",)),
    }
    readings = sum(len(body["r"]) for body in bodies)
    out = {}
    for name, (group, formats) in variants.items():
        total = 0
        for i in range(0, len(bodies), group):
            merged = bodies[i : i + group]
            entries = [(p, b["t0"] + dt, v, q) for b in merged for p, dt, v, q in b["r"]]
            t0 = min(t for _, t, _, _ in entries)
            body = {k: merged[0][k] for k in ("v", "gw", "boot", "seq")}
            body["t0"] = t0
            body["r"] = [[p, t - t0, narrow(v, formats), q] for p, t, v, q in entries]
            lost = sum(b.get("lost", 0) for b in merged)
            if lost:
                body["lost"] = lost
            # canonical: cbor2 then writes each float in the shortest form that keeps it.
            total += len(signer.sign(cbor2.dumps(body, canonical=bool(formats))))
        out[name] = round(total / max(readings, 1), 2)
    return out


def narrow(value: object, formats: Sequence[str]) -> object:
    """``value`` rounded to the first struct float format (``"e"`` half, ``"f"`` single)
    whose shortest decimal is ``value`` itself; unchanged if there is none."""
    if not isinstance(value, float):
        return value
    for fmt in formats:
        try:
            rounded: float = struct.unpack(f">{fmt}", struct.pack(f">{fmt}", value))[0]
        except OverflowError:  # beyond the format's range
            continue
        if shortest_decimal(rounded, fmt) == value:
            return rounded
    return value


def shortest_decimal(rounded: float, fmt: str) -> float:
    """The decimal with the fewest digits that struct format ``fmt`` reads as ``rounded``."""
    for digits in range(1, FLOAT_DIGITS[fmt] + 1):
        candidate = float(f"{rounded:.{digits}g}")
        if struct.pack(f">{fmt}", candidate) == struct.pack(f">{fmt}", rounded):
            return candidate
    return rounded


# -- an independent subscriber ------------------------------------------------------------


@dataclass(slots=True)
class TeleCapture:
    """Telemetry payloads as received; decoded only after a measurement, so that decoding
    takes no CPU from what is measured."""

    payloads: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message.payload, bytes | bytearray):
                self.payloads.append(bytes(message.payload))
                self.arrived.set()

    def take(self) -> list[bytes]:
        """What arrived since the last take."""
        taken, self.payloads = self.payloads, []
        return taken

    async def wait_count(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        """Return once ``count`` payloads are held, or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.payloads) < count:
                    self.arrived.clear()
                    await self.arrived.wait()


@contextlib.asynccontextmanager
async def tele_subscriber(port: int, client_id: str) -> AsyncIterator[TeleCapture]:
    """A QoS 1 subscription to every gateway's Telemetry on a persistent session (clean
    start false, a session expiry), in place when this yields."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = SUBSCRIBER_SESSION_EXPIRY_S
    client = aiomqtt.Client(
        LOOPBACK,
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
    )
    capture = TeleCapture()
    async with client:
        await client.subscribe(TELE_FILTER, qos=1)
        task = asyncio.create_task(capture.receive(client), name="bench.tele-subscriber")
        try:
            yield capture
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- 1. append throughput -----------------------------------------------------------------


def rates(readings: int, commits: int, seconds: float) -> dict[str, float]:
    return {
        "readings_per_s": round(readings / seconds),
        "commits_per_s": round(commits / seconds, 1),
        "ms_per_commit": round(1000 * seconds / commits, 3),
    }


def bench_append(root: Path, per_commit: int, commits: int, signer: Signer) -> dict[str, Any]:
    """Time ``commits`` appends of ``per_commit`` readings: the full path, then its parts.

    Readings are generated beforehand (the reporter holds them in memory when it flushes).
    Full path: chunk to messages, CBOR-encode, sign, insert, commit (Reporter.flush).
    Build+sign: the same messages with no storage. Commit only: append_many of messages
    signed beforehand. Each storage run uses a new outbox; storage bytes are this
    process's /proc/self/io write_bytes over the run.
    """
    clock = SystemClock()
    synthetic = SyntheticCabinet()
    t0 = wall_ms(clock)
    batches = [synthetic.batch(per_commit, t0 + i * BATCH_INTERVAL_MS) for i in range(commits)]
    readings = per_commit * commits

    outbox = Outbox.open(root / f"append-{per_commit}-full", clock)
    factory = MessageFactory(gw=BENCH_GATEWAY, boot=outbox.boot, signer=signer)
    io0, start = proc_io(), time.perf_counter()
    for batch in batches:
        outbox.append_many(telemetry_items(factory, batch))
    full_s, io_full = time.perf_counter() - start, written(io0, proc_io())
    outbox.close()

    start = time.perf_counter()
    payloads = [[factory.telemetry(0, readings=chunk) for chunk in chunks(b)] for b in batches]
    build_s = time.perf_counter() - start
    messages = sum(len(p) for p in payloads)

    outbox = Outbox.open(root / f"append-{per_commit}-commit", clock)
    tele = topic(BENCH_GATEWAY, Topic.TELE)
    items = [
        [
            Pending(cls=MsgClass.TELEMETRY, topic=tele, build=prebuilt(p), readings=len(chunk))
            for p, chunk in zip(group, chunks(batch), strict=True)
        ]
        for group, batch in zip(payloads, batches, strict=True)
    ]
    io0, start = proc_io(), time.perf_counter()
    for group_items in items:
        outbox.append_many(group_items)
    commit_s, io_commit = time.perf_counter() - start, written(io0, proc_io())
    outbox.close()

    return {
        "readings_per_commit": per_commit,
        "messages_per_commit": messages // commits,
        "commits": commits,
        "full": rates(readings, commits, full_s)
        | {"storage_bytes_per_commit": round(io_full["write_bytes"] / commits)},
        "build_sign_only": rates(readings, commits, build_s)
        | {"ms_per_message": round(1000 * build_s / messages, 3)},
        "commit_only": rates(readings, commits, commit_s)
        | {"storage_bytes_per_commit": round(io_commit["write_bytes"] / commits)},
        "message_bytes": round(sum(len(x) for p in payloads for x in p) / messages),
    }


# -- 2. drain -----------------------------------------------------------------------------


def fill_backlog(outbox: Outbox, factory: MessageFactory, messages: int) -> None:
    """Append ``messages`` full Telemetry messages, FILL_GROUP per commit."""
    synthetic = SyntheticCabinet(seed=2)
    t0 = wall_ms(SystemClock())
    for first in range(0, messages, FILL_GROUP):
        items = []
        for n in range(first, min(first + FILL_GROUP, messages)):
            batch = synthetic.batch(BATCH_MAX, t0 + n * BATCH_INTERVAL_MS)
            items += telemetry_items(factory, batch)
        outbox.append_many(items)


def broker_limits(conf: Path) -> dict[str, int]:
    """The queueing limits in force in a generated mosquitto.conf (defaults when unset)."""
    limits = dict(MOSQUITTO_DEFAULTS)
    for line in conf.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key in limits:
            limits[key] = int(value)
    return limits


async def bench_drain(root: Path, messages: int, signer: Signer) -> dict[str, Any]:
    """Forward a backlog of ``messages`` x BATCH_MAX readings with the real Uplink.

    The subscriber (persistent session, QoS 1) is subscribed before the uplink starts;
    the drain time runs from ``Uplink.run()`` being started (connect, Birth included) to
    ``outbox.drained()`` returning, i.e. the last PUBACK processed and its record deleted.
    Then we wait for the subscriber to hold every message and count what it got.
    """
    clock = SystemClock()
    data = root / "drain"
    outbox = Outbox.open(data, clock)
    factory = MessageFactory(gw=BENCH_GATEWAY, boot=outbox.boot, signer=signer)
    start = time.perf_counter()
    fill_backlog(outbox, factory, messages)
    fill_s = time.perf_counter() - start
    outbox.flush()
    disk = disk_usage(data)
    say(
        f"  backlog: {disk['readings']:,} readings in {disk['records']:,} messages, "
        f"filled in {fill_s:.1f} s"
    )

    async with Mosquitto(data_dir=root / "broker-drain") as broker:
        limits = broker_limits(broker.data_dir / "mosquitto.conf")
        config = UplinkConfig(
            broker=broker.url,
            host=LOOPBACK,
            port=broker.port,
            tls=False,
            keepalive=30,
            session_expiry=3600,
            reconnect_min=0.5,
            reconnect_max=5.0,
            ca_file=None,
            cert_file=None,
            key_file=None,
        )
        uplink = Uplink(
            config=config,
            outbox=outbox,
            factory=factory,
            clock=clock,
            birth_points={"lamp-01/level": ("%", True), "meter/power": ("W", False)},
            config_digest=bytes(32),
            agent_version="bench",
        )
        async with tele_subscriber(broker.port, "bench-drain-counter") as capture:
            start = time.perf_counter()
            task = asyncio.create_task(uplink.run(), name="bench.uplink")
            try:
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    await uplink.online.wait()
                    online_s = time.perf_counter() - start
                    await outbox.drained()
                drain_s = time.perf_counter() - start
                await capture.wait_count(messages, DELIVERY_TIMEOUT_S)
                delivered_s = time.perf_counter() - start
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            received = capture.take()
    outbox.close()

    # Field detail on the first messages only: 1M readings field by field would take long.
    wire = analyse(received, sample=20)
    readings = disk["readings"]
    return {
        "readings": readings,
        "messages": disk["records"],
        "fill_s": round(fill_s, 2),
        "online_s": round(online_s, 3),
        "drain_s": round(drain_s, 2),
        "readings_per_s": round(readings / drain_s),
        "messages_per_s": round(disk["records"] / drain_s),
        "subscriber_messages": len(received),
        "subscriber_distinct": wire["distinct_seqs"],
        "subscriber_readings": wire["readings"],
        "subscriber_all_s": round(delivered_s, 2),
        "uplink_window": WINDOW,
        "paho_max_inflight": PAHO_MAX_INFLIGHT,
        "mosquitto": limits,
        "disk": disk,
        "wire": wire,
    }


# -- 3 and 4. the simulated cabinet with the agent process --------------------------------


async def bench_sim(root: Path, warmup: float, seconds: float) -> dict[str, Any]:
    """Run the default cabinet with the agent process as bench/steady_state.py does.

    After ``warmup`` s, over a window of ``seconds``: the agent's /proc/PID/io at both ends,
    its published readings (status.json) and every Telemetry payload an independent
    subscriber received in the window.
    """
    data = root / "sim"
    data.mkdir()
    async with (
        Mosquitto(data_dir=data / "broker") as broker,
        Cabinet(
            Scenario(), clock=SystemClock(), link_dir=data / "dev", line_name=LINE_ROLE
        ) as cabinet,
    ):
        model = asyncio.create_task(cabinet.run(), name="bench.cabinet")
        ensure_keys(data)
        config = data / "agent.toml"
        config.write_text(agent_config(cabinet, broker.url))
        keys = {GATEWAY_ID: load_public_pem(data / "gateway.pub")}
        async with (
            CentralPost(broker.url, keys=keys) as central,
            tele_subscriber(broker.port, "bench-sim-tele") as capture,
        ):
            agent = AgentProcess(config, data / "agent.log")
            await agent.start()
            assert agent.proc is not None
            pid = agent.proc.pid
            try:
                await asyncio.sleep(warmup)  # warm-up: the first reports of every point
                capture.take()
                io0, start, published0 = proc_io(pid), time.monotonic(), published(data)
                await asyncio.sleep(seconds)  # the measurement window itself
                io = written(io0, proc_io(pid))
                elapsed = time.monotonic() - start
                readings = published(data) - published0
                payloads = capture.take()
                files = {p.name: p.stat().st_size for p in sorted(data.iterdir()) if p.is_file()}
            finally:
                await agent.stop()
                model.cancel()
            rejected = central.stats()["rejected"]
    return {
        "window_s": round(elapsed, 1),
        "readings_published": readings,
        "readings_per_s": round(readings / elapsed, 2),
        "central_rejected": rejected,
        "io": io,
        "data_files_bytes": files,
        "payloads": payloads,
    }


def published(data: Path) -> int:
    try:
        status = json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(status["uplink"]["published_readings"])


def replay_outbox(
    root: Path, name: str, payloads: Sequence[bytes], *, flush_on_empty: bool
) -> dict[str, int]:
    """Storage bytes of the outbox alone for the captured steady-state messages.

    Each captured Telemetry message is appended as it was (same size and readings), then
    taken, acknowledged and deleted as the Uplink does; ``flush_on_empty`` commits the
    deletes at once when the outbox is empty (what Uplink._forward does today), otherwise
    they are committed with the next append's transaction. Measured with /proc/self/io.
    """
    outbox = Outbox.open(root / name, SystemClock())
    tele = topic(BENCH_GATEWAY, Topic.TELE)
    counts = [len(cbor2.loads(telemetry_body(p))["r"]) for p in payloads]
    commits = 0
    io0 = proc_io()
    for payload, readings in zip(payloads, counts, strict=True):
        outbox.append(
            Pending(cls=MsgClass.TELEMETRY, topic=tele, build=prebuilt(payload), readings=readings)
        )
        commits += 1
        for record in outbox.take(WINDOW):
            outbox.done(record)
        if flush_on_empty and not outbox.depth:
            outbox.flush()
            commits += 1
    io = written(io0, proc_io())
    outbox.close()
    return io | {"commits": commits}


# -- report -------------------------------------------------------------------------------


def part_append(root: Path, sizes: Sizes, signer: Signer) -> list[dict[str, Any]]:
    say("1. durable append (build + sign + commit, synchronous=FULL), batches of 1 s:")
    results = []
    for per_commit in APPEND_SIZES:
        r = bench_append(root, per_commit, sizes.append_commits, signer)
        results.append(r)
        full, commit, build = r["full"], r["commit_only"], r["build_sign_only"]
        say(
            f"  {per_commit:4d} readings/commit ({r['messages_per_commit']} x "
            f"{r['message_bytes']:,} B): full path {full['readings_per_s']:>9,} readings/s, "
            f"{full['commits_per_s']:>6} commits/s; commit alone "
            f"{commit['readings_per_s']:>9,} readings/s, {commit['commits_per_s']:>6} commits/s; "
            f"build+sign {build['ms_per_message']} ms/message; "
            f"{full['storage_bytes_per_commit']:,} B written per commit"
        )
    return results


def part_drain(root: Path, sizes: Sizes, signer: Signer) -> dict[str, Any]:
    say(f"2. drain of {sizes.drain_messages * BATCH_MAX:,} buffered readings by the Uplink:")
    d = asyncio.run(bench_drain(root, sizes.drain_messages, signer))
    say(
        f"  {d['drain_s']} s from uplink start to depth 0 (online after {d['online_s']} s): "
        f"{d['readings_per_s']:,} readings/s, {d['messages_per_s']:,} messages/s"
    )
    say(
        f"  independent subscriber: {d['subscriber_messages']:,}/{d['messages']:,} messages "
        f"({d['subscriber_distinct']:,} distinct seqs), "
        f"{d['subscriber_readings']:,} readings (all in {d['subscriber_all_s']} s after start)"
    )
    limits = d["mosquitto"]
    say(
        f"  in flight: Uplink window {d['uplink_window']}, paho client cap "
        f"{d['paho_max_inflight']}, mosquitto max_inflight_messages "
        f"{limits['max_inflight_messages']}; mosquitto max_queued_messages "
        f"{limits['max_queued_messages']:,} (the subscriber's queue)"
    )
    return d


def part_disk(drain: dict[str, Any]) -> dict[str, Any]:
    # Method: the drain's backlog, once appended (before the drain): outbox file + WAL size,
    # and SUM(LENGTH(payload)), each divided by the readings it holds.
    disk = drain["disk"]
    n = max(disk["readings"], 1)
    result = {
        "readings": disk["readings"],
        "db_bytes": disk["db_bytes"],
        "wal_bytes": disk["wal_bytes"],
        "file_bytes_per_reading": round((disk["db_bytes"] + disk["wal_bytes"]) / n, 2),
        "payload_bytes_per_reading": round(disk["payload_bytes"] / n, 2),
    }
    say("3. bytes per reading:")
    say(
        f"  on disk, {disk['readings']:,} readings in full messages: file incl. WAL "
        f"{result['file_bytes_per_reading']} B/reading ({disk['db_bytes'] / MB:.1f} MB + "
        f"{disk['wal_bytes'] / MB:.1f} MB WAL), payloads {result['payload_bytes_per_reading']}"
    )
    wire = drain["wire"]
    say(
        f"  on the wire, full messages of {BATCH_MAX}: {wire['bytes_per_reading']} B/reading"
        + breakdown_text(wire["breakdown"])
    )
    return result


def part_wire(mix: dict[str, Any], what_if: dict[str, float]) -> None:
    per = mix["bytes_per_reading"]
    b = mix["breakdown"]
    say(
        f"  on the wire, steady state: {mix['messages']} messages, {mix['readings']} readings "
        f"({b['readings_per_message']}/message): {per} B/reading" + breakdown_text(b)
    )
    say(f"    values: {b['value_kinds']}; readings per point: {b['readings_per_point']}")
    verdict = "met" if per <= WIRE_TARGET_BYTES else f"{per - WIRE_TARGET_BYTES:.1f} B over"
    say(f"    target {WIRE_TARGET_BYTES} B/reading: {verdict}")
    say(
        "    the same readings encoded otherwise, B/reading: "
        + ", ".join(f"{k} {v}" for k, v in what_if.items())
    )


def breakdown_text(b: dict[str, Any]) -> str:
    fields = ", ".join(f"{k} {v}" for k, v in b["entry_fields_per_reading"].items())
    return (
        f"\n    = entry {b['entry_bytes_per_reading']} ({fields})"
        f" + envelope {b['envelope_bytes_per_reading']} ({b['envelope_bytes_per_message']} "
        f"B/message: COSE {b['cose_bytes_per_message']}, body header "
        f"{b['body_header_bytes_per_message']}; {b['envelope_share']:.0%} of the bytes)"
    )


def part_storage(
    root: Path, sim: dict[str, Any], payloads: Sequence[bytes], readings: int
) -> dict[str, Any]:
    # Method: write_bytes (pages dirtied, what goes to storage) over the window, scaled to an
    # hour; per reading, over the readings the agent published in the window. The replays
    # give the outbox's own share of it, for the same messages (see replay_outbox).
    window = sim["window_s"]
    per_hour = SECONDS_PER_HOUR / window
    io = sim["io"]
    now = replay_outbox(root, "replay-now", payloads, flush_on_empty=True)
    lazy = replay_outbox(root, "replay-lazy", payloads, flush_on_empty=False)
    result = {
        "window_s": window,
        "readings_per_s": sim["readings_per_s"],
        "agent_io": io,
        "agent_write_mb_per_hour": round(io["write_bytes"] * per_hour / MB, 1),
        "agent_write_bytes_per_reading": round(
            io["write_bytes"] / max(sim["readings_published"], 1)
        ),
        "outbox_write_mb_per_hour": round(now["write_bytes"] * per_hour / MB, 1),
        "outbox_write_bytes_per_reading": round(now["write_bytes"] / max(readings, 1)),
        "outbox_commits_per_s": round(now["commits"] / window, 2),
        "outbox_write_bytes_per_commit": round(now["write_bytes"] / max(now["commits"], 1)),
        "outbox_lazy_deletes_write_mb_per_hour": round(lazy["write_bytes"] * per_hour / MB, 1),
        "outbox_lazy_deletes_commits_per_s": round(lazy["commits"] / window, 2),
        "data_files_bytes": sim["data_files_bytes"],
        "central_rejected": sim["central_rejected"],
    }
    say("4. bytes written to storage at the default simulated load:")
    say(
        f"  agent process, /proc/PID/io write_bytes over {window} s at "
        f"{sim['readings_per_s']} readings/s: {result['agent_write_mb_per_hour']} MB/hour, "
        f"{result['agent_write_bytes_per_reading']:,} B/reading "
        f"(cancelled_write_bytes {io['cancelled_write_bytes']:,})"
    )
    say(
        f"  outbox alone replaying the {len(payloads)} captured messages: "
        f"{result['outbox_write_mb_per_hour']} MB/hour, "
        f"{result['outbox_write_bytes_per_reading']:,} B/reading, "
        f"{result['outbox_commits_per_s']} commits/s of "
        f"{result['outbox_write_bytes_per_commit']:,} B; if deletes were committed with the "
        f"next append: {result['outbox_lazy_deletes_write_mb_per_hour']} MB/hour "
        f"({result['outbox_lazy_deletes_commits_per_s']} commits/s)"
    )
    return result


def run(sizes: Sizes) -> dict[str, Any]:
    signer = Signer(Ed25519PrivateKey.generate())
    result: dict[str, Any] = {"sizes": dataclasses.asdict(sizes)}
    with tempfile.TemporaryDirectory(prefix="armoire-bench-outbox-", dir=storage_dir()) as tmp:
        root = Path(tmp)
        say(f"outbox benchmark in {root} (same disk as the repository)")
        result["append"] = part_append(root, sizes, signer)
        drain = part_drain(root, sizes, signer)
        result["drain"] = {k: v for k, v in drain.items() if k not in ("disk", "wire")}
        result["disk"] = part_disk(drain)
        result["wire_full_messages"] = drain["wire"]
        say(
            f"  steady state: default simulated cabinet and agent process, warm-up "
            f"{sizes.warmup:g} s, window {sizes.seconds:g} s ..."
        )
        sim = asyncio.run(bench_sim(root, sizes.warmup, sizes.seconds))
        payloads = sim.pop("payloads")
        mix = analyse(payloads)
        what_if = wire_what_if(payloads, signer)
        part_wire(mix, what_if)
        result["wire_steady_state"] = mix | {"what_if": what_if}
        result["storage"] = part_storage(root, sim, payloads, mix["readings"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--seconds", type=float, help="simulated window (default 60, quick 15)")
    parser.add_argument("--warmup", type=float, help="simulated warm-up (default 15, quick 5)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.seconds is not None:
        sizes = dataclasses.replace(sizes, seconds=args.seconds)
    if args.warmup is not None:
        sizes = dataclasses.replace(sizes, warmup=args.warmup)
    # aiomqtt warns once more than 10 publishes are pending; the Uplink keeps 32 on purpose.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    print(json.dumps(run(sizes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

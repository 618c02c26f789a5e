"""The uplink on its own against a real mosquitto, through the simulator's link proxy.

No agent process: an :class:`~agent.uplink.Uplink` forwards a real outbox, the
test breaks the link or the broker the ways the field does (a hung broker, a
stalled radio link, a broker replaced without its sessions, PUBACKs that never
come), and a subscriber at the broker says what actually arrived. The promise
under test (issue 8): once a working broker is reachable again, every stored
record is published and deleted, without restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import FakeClock, SystemClock
from agent.config import UplinkConfig
from agent.messages import MessageFactory, Topic, topic
from agent.outbox import MsgClass, Outbox, Pending
from agent.security.cose import Signer
from agent.uplink import JITTER, WINDOW, LinkState, Uplink
from agent.watchdog import Liveness
from sim.broker import Mosquitto, free_port
from sim.proxy import LinkProxy

pytestmark = pytest.mark.integration

GW = "gw-uplink-test"
TOPIC = f"test/{GW}/records"
# The smallest keepalive the configuration accepts: PUBACK and CONNACK waits are
# max(5 s, keepalive), so a hung broker is given up on after about 5 s.
KEEPALIVE = 5
# Deadline of every wait: a fault is detected within ~2 keepalives, a reconnect
# within reconnect_max; generous for a loaded 2-core machine.
WAIT_S = 40.0
POLL_S = 0.05


@dataclass
class Collector:
    """A subscriber at the broker: which record payloads arrived, how many times."""

    port: int
    received: list[bytes] = field(default_factory=list)
    births: list[dict[str, Any]] = field(default_factory=list)  # decoded Birth bodies

    async def run(self, subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="collector") as client:
            await client.subscribe(TOPIC, qos=1)
            await client.subscribe(topic(GW, Topic.STATE), qos=1)
            subscribed.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.matches(TOPIC):
                    self.received.append(message.payload)
                    continue
                # COSE_Sign1: tag 18 over [protected, unprotected, payload, signature].
                body = cbor2.loads(cbor2.loads(message.payload).value[2])
                if body["online"]:
                    self.births.append(body)


@dataclass
class Bench:
    """An uplink forwarding a real outbox through a link proxy to mosquitto."""

    broker: Mosquitto
    link: LinkProxy
    outbox: Outbox
    uplink: Uplink
    collector: Collector | None = None
    _collector_task: asyncio.Task[None] | None = None

    def append(self, n: int = 1) -> list[int]:
        """Store ``n`` records; each payload names its seq."""
        return self.outbox.append_many(
            [
                Pending(cls=MsgClass.TELEMETRY, topic=TOPIC, build=lambda s: b"record %d" % s)
                for _ in range(n)
            ]
        )

    async def listen(self) -> None:
        """(Re)start the subscriber on the broker as it is now."""
        await self.stop_listening()
        self.collector = Collector(self.broker.port)
        subscribed = asyncio.Event()
        self._collector_task = asyncio.create_task(self.collector.run(subscribed))
        async with asyncio.timeout(WAIT_S):
            await subscribed.wait()

    async def stop_listening(self) -> None:
        if self._collector_task is not None:
            self._collector_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._collector_task
            self._collector_task = None

    def arrived(self, seqs: list[int]) -> bool:
        got = set(self.collector.received) if self.collector else set()
        return all(b"record %d" % s in got for s in seqs)


async def until(what: str, condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state of the uplink, outbox or subscriber) until it holds."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():  # noqa: ASYNC110 - state of other parts, no event
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT_S} s: {what}") from None


@pytest.fixture
async def bench(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Bench]:
    clock = SystemClock()
    outbox = Outbox.open(tmp_path / "data", clock)
    async with LinkProxy("127.0.0.1", broker.port) as link:
        config = UplinkConfig(
            broker=link.url,
            host="127.0.0.1",
            port=link.port,
            tls=False,
            keepalive=KEEPALIVE,
            session_expiry=3600,
            reconnect_min=0.2,
            reconnect_max=1.0,
            ca_file=None,
            cert_file=None,
            key_file=None,
        )
        factory = MessageFactory(
            gw=GW, boot=outbox.boot, signer=Signer(Ed25519PrivateKey.generate())
        )
        uplink = Uplink(
            config=config,
            outbox=outbox,
            factory=factory,
            clock=clock,
            birth_points={},
            config_digest=bytes(32),
            agent_version="test",
        )
        bench = Bench(broker=broker, link=link, outbox=outbox, uplink=uplink)
        await bench.listen()
        task = asyncio.create_task(uplink.run(), name="uplink")
        try:
            async with asyncio.timeout(WAIT_S):
                await uplink.online.wait()
            yield bench
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await bench.stop_listening()
            outbox.close()


async def _lost(bench: Bench, connects: int) -> None:
    """Wait until the uplink gave up the connection it had (the fault was noticed)."""
    await until(
        "the uplink noticed the fault",
        lambda: bench.uplink.state is not LinkState.ONLINE or bench.uplink.connects > connects,
    )


async def test_uplink__record_in_flight_when_broker_hangs_is_sent_to_the_next_broker(
    bench: Bench,
) -> None:
    """A batch in flight when the broker froze would stay unsent until the agent restarts,
    a permanent seq gap at the central post (issue 8: SIGSTOP, then a new broker)."""
    pid = bench.broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        seqs = bench.append()
        stored_ms = bench.outbox.oldest_ms()
        await until("the record is in flight", lambda: bench.outbox.inflight == 1)
        await _lost(bench, bench.uplink.connects)
    finally:
        os.kill(pid, signal.SIGKILL)
    # A fresh broker on the same port, without the old one's sessions; the link is
    # held cut until the subscriber is in place so nothing arrives unseen.
    await bench.link.cut()
    await bench.broker.restart()
    await bench.listen()
    connects = bench.uplink.connects
    await bench.link.restore()
    await until("the record reached the new broker", lambda: bench.arrived(seqs))
    await until("the outbox is empty", lambda: bench.outbox.depth == 0)
    assert bench.outbox.inflight == 0
    assert bench.uplink.connects > connects
    # The Birth on the new broker told the control room what was still held, since when.
    assert bench.collector is not None
    [birth] = bench.collector.births
    assert stored_ms is not None
    assert birth["outbox"] == {"depth": 1, "inflight": 0, "oldest": stored_ms}


async def test_uplink__records_in_flight_when_link_stalls_are_sent_after_it_recovers(
    bench: Bench,
) -> None:
    """Records sent into a half-open link (nothing acknowledged, TCP still open) would be
    held back for ever once the link recovered."""
    connects = bench.uplink.connects
    await bench.link.stall()
    seqs = bench.append(5)
    await until("the records are in flight", lambda: bench.outbox.inflight == len(seqs))
    await _lost(bench, connects)
    assert bench.outbox.depth == len(seqs)
    await bench.link.restore()
    await until("the records reached the broker", lambda: bench.arrived(seqs))
    await until("the outbox is empty", lambda: bench.outbox.depth == 0)
    assert bench.outbox.inflight == 0


async def test_uplink__unacknowledged_records_resent_when_broker_lost_the_session(
    bench: Bench,
) -> None:
    """A broker restarted without its persistence has no session: records the agent still
    holds must be sent again on the new connection, not awaited from the broker."""
    await bench.link.stall()
    seqs = bench.append(3)
    await until("the records are in flight", lambda: bench.outbox.inflight == len(seqs))
    await bench.link.cut()
    await bench.broker.restart(keep_persistence=False)
    await bench.listen()
    await bench.link.restore()
    await until("the records reached the broker", lambda: bench.arrived(seqs))
    await until("the outbox is empty", lambda: bench.outbox.depth == 0)
    assert bench.outbox.inflight == 0


async def test_uplink__records_deleted_only_after_their_puback(bench: Bench) -> None:
    """A record deleted on sending rather than on its PUBACK is lost when the acknowledgement
    is; one never acknowledged must be sent again on the next connection."""
    await bench.link.withhold_pubacks()
    seqs = bench.append(4)
    await until("the records reached the broker", lambda: bench.arrived(seqs))
    await until(
        "their PUBACKs were withheld", lambda: bench.link.statistics().pubacks_withheld >= 4
    )
    assert bench.outbox.depth == len(seqs)
    assert bench.collector is not None
    before = len(bench.collector.received)
    await bench.link.restore()
    await until("the outbox is empty", lambda: bench.outbox.depth == 0)
    await until("the records were sent again", lambda: len(bench.collector.received) >= 2 * before)
    assert bench.outbox.inflight == 0


async def test_uplink__at_most_one_window_in_flight_without_pubacks(bench: Bench) -> None:
    """An unbounded window would pour the whole backlog into a broker that acknowledges
    nothing, and resend all of it after every fault."""
    await bench.link.withhold_pubacks()
    seqs = bench.append(WINDOW + 10)
    await until("a window is in flight", lambda: bench.outbox.inflight == WINDOW)
    connects = bench.uplink.connects
    await _lost(bench, connects)
    assert bench.collector is not None
    # What reached the broker is exactly the first window, in seq order.
    assert bench.collector.received == [b"record %d" % s for s in seqs[:WINDOW]]
    await bench.link.restore()
    await until("the outbox is empty", lambda: bench.outbox.depth == 0)
    assert bench.arrived(seqs)


class RecordingClock(FakeClock):
    """A fake clock that remembers every sleep asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        await super().sleep(seconds)


async def test_uplink__reconnect_backoff_doubles_with_jitter_and_resets_once_connected(
    tmp_path: Path,
) -> None:
    """Without capped, jittered backoff thousands of cabinets would hammer the broker in
    step after an outage; without the reset, a gateway would wait minutes after a blip."""
    clock = RecordingClock()
    port = free_port()
    outbox = Outbox.open(tmp_path / "data", clock)
    config = UplinkConfig(
        broker=f"mqtt://127.0.0.1:{port}",
        host="127.0.0.1",
        port=port,
        tls=False,
        keepalive=KEEPALIVE,
        session_expiry=3600,
        reconnect_min=1.0,
        reconnect_max=8.0,
        ca_file=None,
        cert_file=None,
        key_file=None,
    )
    uplink = Uplink(
        config=config,
        outbox=outbox,
        factory=MessageFactory(gw=GW, boot=1, signer=Signer(Ed25519PrivateKey.generate())),
        clock=clock,
        birth_points={},
        config_digest=bytes(32),
        agent_version="test",
        rng=random.Random(5),
    )

    async def sleep_asked(n: int) -> float:
        """The ``n``-th wait (1-based) the uplink asked of the clock."""
        await until(f"the uplink's wait #{n}", lambda: len(clock.asked) >= n)
        return clock.asked[n - 1]

    task = asyncio.create_task(uplink.run())
    try:
        # Nothing listens on the port yet: each attempt is refused at once.
        delays = [await sleep_asked(1)]
        while len(delays) < 6:
            await clock.advance(delays[-1])
            delays.append(await sleep_asked(len(delays) + 1))
        bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        ratios = [d / b for d, b in zip(delays, bases, strict=True)]
        assert all(1 - JITTER <= r <= 1 + JITTER for r in ratios), delays
        assert len(set(ratios)) == len(ratios), delays  # jittered, not in step
        async with Mosquitto(port=port, data_dir=tmp_path / "mosquitto") as broker:
            await clock.advance(delays[-1])
            await until("online", lambda: uplink.state is LinkState.ONLINE)
            await broker.stop()
            delay = await sleep_asked(7)
        assert 1 - JITTER <= delay <= 1 + JITTER, delay  # back to reconnect_min
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        outbox.close()


async def test_uplink__link_cuts_reconnect_without_errors_in_the_log(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    """Each link cut would print an asyncio traceback ("Bad file descriptor") into the
    gateway's log, burying real errors under noise from the commonest field event."""
    for _ in range(5):
        connects = bench.uplink.connects
        seqs = bench.append(3)
        await bench.link.cut()
        await bench.link.restore()
        await until(
            "back online",
            lambda c=connects: bench.uplink.connects > c and bench.uplink.state is LinkState.ONLINE,
        )
        await until("the records arrived", lambda s=seqs: bench.arrived(s))
    await until("the outbox is empty", lambda: bench.outbox.depth == 0)
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert errors == []


async def test_uplink__checks_in_with_the_watchdog_unless_a_publish_hangs(bench: Bench) -> None:
    """The uplink is a critical loop (issue 9): idle with nothing to send it still checks
    in, but a publish that never completes stops the check-in, so the watchdog is no longer
    fed; once the session is given up and the link works again, the check-in resumes."""
    clock = FakeClock()  # the watchdog's time; the uplink itself runs on real time
    liveness = Liveness(clock)
    deadline = 30.0
    liveness.watch(
        "uplink", lambda: bench.uplink.progress, deadline, idle=lambda: bench.uplink.waiting
    )
    await until("the uplink waits for records", lambda: bench.uplink.waiting)
    await clock.advance(10 * deadline)
    assert liveness.stale() == []  # idle is not hung

    await bench.link.withhold_pubacks()
    bench.append()
    await until("the record is in flight", lambda: bench.outbox.inflight == 1)
    await clock.advance(deadline + 1)
    # Checked within a keepalive (5 s real time), before the PUBACK wait is given up.
    assert liveness.stale() == ["uplink"]

    await bench.link.restore()
    await until("the outbox is empty", lambda: bench.outbox.depth == 0)
    assert liveness.stale() == []


async def test_uplink__birth_is_retained_and_commands_are_delivered(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A control room connecting after the gateway would not see it online (Birth not
    retained, or without its version, configuration and mode), and a command published to
    the gateway would never reach the downlink."""
    outbox = Outbox.open(tmp_path / "data", SystemClock())
    received: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    async def on_message(msg_topic: str, payload: bytes) -> None:
        received.append((msg_topic, payload))
        arrived.set()

    signer = Signer(Ed25519PrivateKey.generate())
    uplink = Uplink(
        config=UplinkConfig(
            broker=broker.url, host="127.0.0.1", port=broker.port, tls=False,
            keepalive=KEEPALIVE, session_expiry=3600, reconnect_min=0.2, reconnect_max=1.0,
            ca_file=None, cert_file=None, key_file=None,
        ),
        outbox=outbox,
        factory=MessageFactory(gw=GW, boot=outbox.boot, signer=signer),
        clock=SystemClock(),
        birth_points={"lamp-01/level": ("%", True)},
        config_digest=bytes(range(32)),
        agent_version="9.8.7",
        subscriptions=(Topic.CMD,),
        on_message=on_message,
        birth_fields=lambda: {"mode": "autonomous", "reboot": "watchdog"},
    )  # fmt: skip
    outbox.append(Pending(cls=MsgClass.TELEMETRY, topic=TOPIC, build=lambda s: b"x"))
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        async with asyncio.timeout(WAIT_S):
            await uplink.online.wait()
        # A subscriber that arrives later still gets the Birth: it is retained.
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="late") as client:
            await client.subscribe(topic(GW, Topic.STATE), qos=1)
            async with asyncio.timeout(WAIT_S):
                message = await anext(aiter(client.messages))
            assert message.retain
            assert isinstance(message.payload, bytes)
            birth = cbor2.loads(cbor2.loads(message.payload).value[2])
            assert birth["online"] is True
            assert (birth["agent"], birth["config"]) == ("9.8.7", bytes(range(32)))
            assert (birth["mode"], birth["reboot"]) == ("autonomous", "watchdog")
            assert birth["points"] == {"lamp-01/level": {"unit": "%", "w": True}}
            assert birth["outbox"]["depth"] == 1
            await client.publish(topic(GW, Topic.CMD), b"a command", qos=1)
            async with asyncio.timeout(WAIT_S):
                await arrived.wait()
        assert received == [(topic(GW, Topic.CMD), b"a command")]
        await until("the record was acknowledged", lambda: outbox.depth == 0)
        assert uplink.statistics()["published"] == 2  # the Birth and the record
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        outbox.close()

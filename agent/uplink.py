"""The MQTT 5 session with the central post (PROTOCOL.md, "Transport").

On every connection: a ``Death`` signed now is left with the broker as the
Will, the ``Birth`` is published retained, then the outbox is forwarded with a
bounded window of QoS 1 publishes, each record deleted only after its PUBACK.
However a session ends, every record it left unacknowledged goes back to the
outbox and is published again on the next connection (never left to the
broker's session); the uplink reconnects with capped, jittered exponential
backoff. Incoming messages (commands) are handed to a handler, a few per loop
turn, from a bounded queue: the broker may send nothing larger than
`MAX_PACKET_SIZE` (declared at CONNECT), and a flood beyond `INCOMING_QUEUE`
waiting messages is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import Clock, wall_ms
from agent.config import UplinkConfig
from agent.messages import MessageFactory, OutboxState, Topic, topic
from agent.outbox import Outbox, Record

log = logging.getLogger(__name__)

# In-flight QoS 1 publishes: enough to keep a loopback or LTE link busy while
# bounding how much is resent after a disconnect. 20 is also mosquitto's default
# Receive Maximum and paho's default in-flight cap, so a larger window would not
# put more on the wire (bench/outbox.py: a window of 8 drains as fast on loopback).
WINDOW = 20
# Backoff jitter fraction: thousands of cabinets must not reconnect in step.
JITTER = 0.3

# After the first few failed connection attempts, log at most one line per this
# many seconds (unless the error changes): retries stay visible, logs stay small.
RETRY_LOG_EVERY = 60.0

# Shortest wait for a CONNACK, SUBACK or PUBACK, seconds (slow cellular links).
MIN_OPERATION_TIMEOUT = 5.0

# Largest MQTT packet the broker may send us, declared at CONNECT (MQTT 5 Maximum Packet Size):
# the largest trust update we accept (agent.security.trust.MAX_TRUST_UPDATE_SIZE, 128 KiB) plus
# room for the topic and properties. Commands are far smaller (4 KiB at most). The broker drops
# a larger message instead of sending it, so a 100 MiB publish never reaches the gateway.
MAX_PACKET_SIZE = 132 * 1024
# Received messages waiting for the downlink. A flood beyond what the gateway handles is dropped
# here (and counted) rather than queued without bound; a genuine command is a few per minute.
INCOMING_QUEUE = 64
# Seconds between two log lines about messages dropped at intake.
DROP_LOG_INTERVAL = 60.0
# Kernel receive buffer of the MQTT socket, bytes (Linux doubles it). Autotuned, it grows to
# megabytes: a flood's junk queued in the gateway's own kernel ahead of a genuine command.
# 128 KiB still holds the largest legitimate message and keeps a cellular link busy.
RECEIVE_BUFFER = 64 * 1024
# Longest the receive loop handles queued messages in a row before it lets the rest of the agent
# run, seconds. aiomqtt's iterator costs a loop turn per message while paho reads a few dozen
# per turn, so the loop drains what is queued itself: handling junk costs less than paho's
# reading of it, the queue keeps up and genuine commands are not dropped; the loop lag this
# adds stays below the slice.
RECEIVE_SLICE = 0.005

# paho's own messages ("failed to receive on socket") under our name; the uplink
# logs the link state itself, once per transition.
_mqtt_log = logging.getLogger("agent.uplink.mqtt")
_mqtt_log.setLevel(logging.CRITICAL)

MessageHandler = Callable[[str, bytes], Awaitable[None]]


class LinkState(StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"


class Uplink:
    """Owns the MQTT session; ``run()`` never returns until cancelled."""

    def __init__(
        self,
        *,
        config: UplinkConfig,
        outbox: Outbox,
        factory: MessageFactory,
        clock: Clock,
        birth_points: Mapping[str, tuple[str, bool]],
        config_digest: bytes,
        agent_version: str,
        subscriptions: tuple[Topic, ...] = (),
        on_message: MessageHandler | None = None,
        window: int = WINDOW,
        rng: random.Random | None = None,
        birth_fields: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._factory = factory
        self._clock = clock
        self._birth_points = birth_points
        self._digest = config_digest
        self._version = agent_version
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._window = window
        self._rng = rng or random.Random()
        # Birth "mode" / "reboot" (PROTOCOL.md), read when each Birth is made.
        self._birth_fields = birth_fields or dict
        self.gw = factory.gw
        self.state = LinkState.CONNECTING
        self.connects = 0
        self.published = 0
        self.published_readings = 0
        self.online = asyncio.Event()
        # Liveness (agent/watchdog.py): ``progress`` moves at each connection attempt and
        # each acknowledged record; ``waiting`` while the uplink has nothing to do (no
        # record to send, or sleeping before the next attempt). Neither for a deadline
        # means the uplink hangs: the watchdog stops being fed.
        self.progress = 0
        self.waiting = False
        self._client_now: aiomqtt.Client | None = None
        self.incoming_dropped = 0  # messages discarded because the incoming queue was full
        self._drop_log_after = 0.0  # monotonic time before which drops are not logged again
        self._incoming: asyncio.Queue[aiomqtt.Message] | None = None  # the client's queue
        # Failed connection attempts since the link was last up, for rate-limited logs.
        self._failed_attempts = 0
        self._last_failure = ""
        self._logged_failure = ""
        self._logged_at = -math.inf

    def _client(self) -> aiomqtt.Client:
        cfg = self._config
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = cfg.session_expiry
        connect_props.MaximumPacketSize = MAX_PACKET_SIZE
        death = self._factory.death(self._outbox.last_seq, t_ms=wall_ms(self._clock))
        tls_context = None
        if cfg.tls:
            tls_context = ssl.create_default_context(
                cafile=str(cfg.ca_file) if cfg.ca_file else None
            )
            if cfg.cert_file:
                tls_context.load_cert_chain(
                    str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None
                )
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=self.gw,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect_props,
            keepalive=cfg.keepalive,
            will=aiomqtt.Will(topic(self.gw, Topic.STATE), payload=death, qos=1, retain=True),
            tls_context=tls_context,
            # Bounds connect/subscribe/PUBACK waits; a dead link is noticed by keepalive.
            timeout=self.operation_timeout,
            logger=_mqtt_log,
            max_inflight_messages=self._window,
            max_queued_incoming_messages=INCOMING_QUEUE,
            queue_type=_counting_queue(self._dropped, self._queue_created),
        )
        # aiomqtt warns beyond this many pending publishes; our window is deliberate.
        client.pending_calls_threshold = self._window
        _no_delay(client)
        _guard_writes(client)
        return client

    @property
    def operation_timeout(self) -> float:
        """Seconds a connect, subscribe or PUBACK may take before the session is given up."""
        return max(MIN_OPERATION_TIMEOUT, float(self._config.keepalive))

    async def run(self) -> None:
        backoff = self._config.reconnect_min
        while True:
            self.progress += 1
            client = self._client()
            try:
                async with client:
                    self.connects += 1
                    backoff = self._config.reconnect_min
                    await self._session(client)
            except* aiomqtt.MqttError as group:
                # The session's tasks raise inside (nested) TaskGroups, hence the group;
                # log the error itself, not "unhandled errors in a TaskGroup".
                exc = _first_leaf(group)
                if self.state is LinkState.ONLINE:
                    log.warning(
                        "uplink lost (%s:%d): %s", self._config.host, self._config.port, exc
                    )
                    self._failed_attempts = 0
                else:
                    self._failed_attempts += 1
                    self._last_failure = str(exc)
            finally:
                # A session given up on a hung broker or a stalled link (a PUBACK or
                # DISCONNECT timed out) leaves paho's socket open: close it now rather
                # than when paho's keepalive notices, so sockets do not pile up.
                _close_socket(client)
            self.state = LinkState.OFFLINE
            self.online.clear()
            delay = backoff * (1 + self._rng.uniform(-JITTER, JITTER))
            self._log_retry(delay)
            self.waiting = True
            try:
                await self._clock.sleep(delay)
            finally:
                self.waiting = False
            backoff = min(backoff * 2, self._config.reconnect_max)

    def _log_retry(self, delay: float) -> None:
        """One line per failed connection attempt at first, then at most one a minute
        (or when the error changes), naming the broker: a technician sees retries go on."""
        if not self._failed_attempts:
            return
        now = self._clock.monotonic()
        changed = self._last_failure != self._logged_failure
        if self._failed_attempts > 3 and not changed and now - self._logged_at < RETRY_LOG_EVERY:
            return
        self._logged_at, self._logged_failure = now, self._last_failure
        log.warning(
            "uplink unreachable (%s:%d), attempt %d: %s; next attempt in %.1f s",
            self._config.host,
            self._config.port,
            self._failed_attempts,
            self._last_failure,
            delay,
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        self._client_now = client
        try:
            await self._serve(client)
        finally:
            self._client_now = None
            # Nothing in flight outlives its connection. Giving records back from
            # their own publish tasks was not enough: a task cancelled before its
            # first step (the session broke in the loop iteration it was created)
            # never ran that code, and its record stayed "in flight" for ever,
            # excluded from every later take() (issue 8). And we never rely on the
            # broker's session to deliver what we still hold: whatever was not
            # acknowledged on this connection is published again on the next one.
            released = self._outbox.release_all()
            if released:
                log.info("%d unacknowledged records will be sent again", len(released))

    async def _serve(self, client: aiomqtt.Client) -> None:
        for sub in self._subscriptions:
            await client.subscribe(topic(self.gw, sub), qos=1)
        extra = self._birth_fields()
        birth = self._factory.birth(
            self._outbox.last_seq,
            t_ms=wall_ms(self._clock),
            agent_version=self._version,
            config_digest=self._digest,
            points=self._birth_points,
            mode=extra.get("mode"),
            reboot=extra.get("reboot"),
            outbox=OutboxState(
                depth=self._outbox.depth,
                inflight=self._outbox.inflight,
                oldest_ms=self._outbox.oldest_ms(),
            ),
        )
        await client.publish(topic(self.gw, Topic.STATE), birth, qos=1, retain=True)
        self.published += 1
        log.info("uplink online (%s:%d)", self._config.host, self._config.port)
        self.state = LinkState.ONLINE
        self.online.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._forward(client), name="uplink.publish")
            tg.create_task(self._receive(client), name="uplink.receive")

    def _queue_created(self, queue: asyncio.Queue[aiomqtt.Message]) -> None:
        self._incoming = queue

    def _dropped(self) -> None:
        self.incoming_dropped += 1
        now = self._clock.monotonic()
        if now >= self._drop_log_after:  # one line per interval, however hard the flood
            self._drop_log_after = now + DROP_LOG_INTERVAL
            log.warning(
                "incoming MQTT flood: %d messages dropped so far (queue of %d full)",
                self.incoming_dropped,
                INCOMING_QUEUE,
            )

    async def _receive(self, client: aiomqtt.Client) -> None:
        # Iterating also notices a dead connection while nothing is published.
        async for message in client.messages:
            await self._deliver(message)
            queue = self._incoming
            started = self._clock.monotonic()
            # What is queued already, for at most a slice: a queue that is never empty must
            # not keep the loop from everything else (telemetry, holds lapsing, keepalive).
            while (
                queue is not None
                and not queue.empty()
                and self._clock.monotonic() - started < RECEIVE_SLICE
            ):
                await self._deliver(queue.get_nowait())

    async def _deliver(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if self._on_message is not None and isinstance(payload, bytes | bytearray):
            await self._on_message(str(message.topic), bytes(payload))

    async def _forward(self, client: aiomqtt.Client) -> None:
        inflight = 0
        freed = asyncio.Event()

        async def publish(record: Record) -> None:
            nonlocal inflight
            # A failed publish ends the session, which gives the record back
            # (_session): one place, which also covers tasks that never started.
            try:
                await client.publish(record.topic, record.payload, qos=1)
            finally:
                inflight -= 1
                freed.set()
            self._outbox.done(record)
            self.progress += 1
            self.published += 1
            self.published_readings += record.readings

        async with asyncio.TaskGroup() as tg:
            while True:
                self.waiting = inflight == 0
                try:
                    await self._outbox.wait()
                finally:
                    self.waiting = False
                while inflight >= self._window:
                    freed.clear()
                    await freed.wait()
                records = self._outbox.take(self._window - inflight)
                inflight += len(records)
                for record in records:
                    tg.create_task(publish(record), name=f"uplink.publish[{record.seq}]")

    async def farewell(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 (passed to aiomqtt)
        """On a deliberate stop, publish the Death ourselves (the broker drops the Will
        on a clean disconnect), so the control room sees the gateway go offline."""
        client = self._client_now
        if client is None:
            return
        death = self._factory.death(self._outbox.last_seq, t_ms=wall_ms(self._clock))
        try:
            await client.publish(
                topic(self.gw, Topic.STATE), death, qos=1, retain=True, timeout=timeout
            )
            self.published += 1
        except aiomqtt.MqttError as exc:
            log.warning("could not publish the death message: %s", exc)

    def statistics(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "connects": self.connects,
            "published": self.published,
            "published_readings": self.published_readings,
            "incoming_dropped": self.incoming_dropped,
        }


def _counting_queue(
    on_drop: Callable[[], None],
    on_create: Callable[[asyncio.Queue[aiomqtt.Message]], None],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """The incoming queue class for aiomqtt: bounded, it tells us when it discards, and it hands
    itself over so that the receive loop can drain it."""

    class CountingQueue(asyncio.Queue[aiomqtt.Message]):
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(maxsize)
            on_create(self)

        def put_nowait(self, item: aiomqtt.Message) -> None:
            if self.full():
                on_drop()  # aiomqtt catches the QueueFull below and discards the message
            super().put_nowait(item)

    return CountingQueue


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _close_socket(client: aiomqtt.Client) -> None:
    """Close paho's socket if a failed session left it open (it also stops paho's timer task)."""
    paho = client._client
    if paho.socket() is not None:
        with contextlib.suppress(OSError):
            paho._sock_close()
    # aiomqtt leaves the disconnection error unretrieved when the session failed
    # first ("Future exception was never retrieved" at exit); we logged the loss.
    disconnected = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()


def _guard_writes(client: aiomqtt.Client) -> None:
    """Watch the socket for writability only while it is still this client's.

    aiomqtt schedules ``add_writer(sock.fileno(), ...)`` for the next loop
    iteration; when the link is reset meanwhile, paho has closed the socket by
    then, and asyncio logged "Bad file descriptor" with a traceback on every
    link cut (or, had the number been reused, watched another file).
    """
    paho = client._client
    loop = client._loop

    def register(mqttc: Any, userdata: Any, sock: Any) -> None:
        def write() -> None:
            try:
                mqttc.loop_write()
            except Exception as exc:  # as aiomqtt: a broken connection ends the session
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        def watch() -> None:
            current = paho.socket()
            if current is not None and current is sock and current.fileno() >= 0:
                loop.add_writer(current.fileno(), write)

        loop.call_soon_threadsafe(watch)

    paho.on_socket_register_write = register


def _no_delay(client: aiomqtt.Client) -> None:
    """Disable Nagle on the MQTT socket (and bound its receive buffer, `RECEIVE_BUFFER`).

    paho leaves it on: an Ack and its audit Event published back to back then
    wait for the broker's delayed TCP ACK (40 ms on Linux) between them, which
    made every command round trip 40 ms slower (bench/commands.py).
    """
    paho = client._client
    opened = paho.on_socket_open

    def on_open(mqttc: Any, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError, AttributeError):
            # A small receive buffer: a flood waits at the broker (which drops what exceeds
            # its per-client queue), not in megabytes of our kernel buffer.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        if opened is not None:
            opened(mqttc, userdata, sock)

    paho.on_socket_open = on_open

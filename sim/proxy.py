"""A loopback TCP proxy that models the gateway's cellular uplink.

The agent connects to the proxy instead of the broker; the simulator and the
tests then break the link the two ways a radio link breaks:

- :meth:`LinkProxy.cut` — the link is gone and both ends know it: every open
  connection is reset, and new connections are accepted and reset at once
  (accept-then-reset rather than closing the listener, so the port stays ours
  and the client sees a failure immediately instead of a connect timeout).
- :meth:`LinkProxy.stall` — the link is dead but TCP has not noticed: open
  connections stay open and new ones are accepted, but nothing is forwarded in
  either direction. Bytes written meanwhile are held (up to a bound, after
  which the proxy stops reading, like a full TCP window). Only the client's
  own keep-alive timer can detect this.
- :meth:`LinkProxy.withhold_pubacks` — everything is forwarded except the
  broker's PUBACK packets, which are dropped (and counted): the broker has
  the messages but the client never learns it, the case of a broker or a
  middlebox that loses acknowledgements. The proxy frames the broker → client
  byte stream into MQTT control packets for this (the fixed header: type and
  remaining length), and knows nothing else of MQTT nor of the agent.
- :meth:`LinkProxy.restore` — service resumes for new connections. Every
  connection that lived through a stall or withheld PUBACKs is reset and its
  held bytes are discarded: a real stall ends with the TCP connection dying
  (retransmissions exhausted, or the carrier's NAT forgot the flow), never with
  a burst of stale bytes, and the client must reconnect and resend what was
  not acked.

Reset means RST (``SO_LINGER`` 0), so the client's socket errors at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = ["LinkProxy", "LinkState", "LinkStatistics", "MqttFramer"]

_log = logging.getLogger("armoire.sim.proxy")

LOOPBACK = "127.0.0.1"

# Read size per forwarding step; MQTT packets of the agent are far smaller.
CHUNK_BYTES = 64 * 1024
# Bytes held per connection and direction during a stall before the proxy
# stops reading: about what a kernel socket buffer would absorb.
MAX_HELD_BYTES = 256 * 1024
# How long to wait for the upstream (the broker) to accept a connection.
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
# How long cut/restore/close wait for reset connections to wind down; they
# take one loop iteration, and an upstream connect at most the timeout above.
SETTLE_TIMEOUT_S = UPSTREAM_CONNECT_TIMEOUT_S + 1.0


class LinkState(enum.StrEnum):
    """What the proxy does with traffic."""

    UP = "up"
    CUT = "cut"
    STALLED = "stalled"
    NO_PUBACK = "no-puback"  # forwarding, minus the broker's PUBACKs


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatistics:
    """Counters since the proxy started."""

    state: LinkState
    connections: int  # accepted from clients, in total
    open: int  # currently open client connections
    refused: int  # accepted and reset at once because the link was cut
    upstream_failures: int  # could not reach the broker
    bytes_up: int  # client → broker, forwarded
    bytes_down: int  # broker → client, forwarded
    bytes_discarded: int  # held during a stall, then dropped
    pubacks_withheld: int  # PUBACK packets from the broker dropped


# MQTT control packet type of PUBACK (MQTT 5 §2.1.2).
PUBACK = 4
# Longest "Remaining Length" variable byte integer (MQTT 5 §1.5.5).
_MAX_LENGTH_BYTES = 4


class MqttFramer:
    """Follows MQTT control packet boundaries in a byte stream (fixed header only).

    ``feed`` returns the bytes to pass on: all of them, except whole packets of
    the type given as ``drop``. Nothing is held but a packet's fixed header
    (at most 5 bytes) while it is incomplete and packets are being dropped, so
    bytes flow as they arrive; work is linear in the bytes fed. A stream that
    is not MQTT framing is passed through unchanged from then on.
    """

    def __init__(self) -> None:
        self._header = bytearray()  # the fixed header being read, at a packet boundary
        self._header_sent = 0  # of which already passed on (read while not dropping)
        self._left = 0  # bytes of the current packet still to come
        self._dropping = False  # the current packet is being dropped
        self.broken = False  # not MQTT framing: pass everything
        self.dropped = 0  # packets dropped

    def feed(self, data: bytes, *, drop: int | None = None) -> bytes:
        if self.broken:
            return data
        out = bytearray()
        i = 0
        while i < len(data):
            if self._left:
                take = min(self._left, len(data) - i)
                if not self._dropping:
                    out += data[i : i + take]
                self._left -= take
                i += take
                continue
            self._header.append(data[i])
            i += 1
            if drop is None:
                # Not dropping: pass header bytes at once, just keep counting.
                out.append(self._header[-1])
                self._header_sent = len(self._header)
            if len(self._header) < 2 or self._header[-1] & 0x80:
                if len(self._header) > 1 + _MAX_LENGTH_BYTES:
                    self.broken = True
                    out += self._header[self._header_sent :] + data[i:]
                    return bytes(out)
                continue
            length = 0
            for n, byte in enumerate(self._header[1:]):
                length |= (byte & 0x7F) << (7 * n)
            # A packet whose first bytes already went out must go out whole.
            self._dropping = (
                drop is not None and not self._header_sent and self._header[0] >> 4 == drop
            )
            if self._dropping:
                self.dropped += 1
            else:
                out += self._header[self._header_sent :]
            self._left = length
            self._header.clear()
            self._header_sent = 0
        return bytes(out)


class _Pipe:
    """One client connection and its upstream connection."""

    def __init__(self, client_writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        self.client_writer = client_writer
        self.task = task  # the handler serving this connection
        self.upstream_writer: asyncio.StreamWriter | None = None
        # Set once this connection has seen a stall: it never forwards again.
        self.stalled = False
        # Set once this connection has had PUBACKs withheld: reset on restore.
        self.withholding = False
        self.held = 0
        self.closed = asyncio.Event()
        self.down = MqttFramer()  # broker → client packets

    def reset(self) -> None:
        """Drop both sides with a TCP reset."""
        self.closed.set()
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger on with a zero timeout: close() sends RST, not FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LinkProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream_host:upstream_port``, and can break."""

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen_port = port
        self._server: asyncio.Server | None = None
        self._state = LinkState.UP
        self._pipes: set[_Pipe] = set()
        # The connection handlers asyncio starts for us: awaited on cut,
        # restore and close, so those return with every connection gone.
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections = 0
        self._refused = 0
        self._upstream_failures = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._bytes_discarded = 0
        self._pubacks_withheld = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._on_client, LOOPBACK, self._listen_port, reuse_address=True
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        await self._drop(self._pipes)
        await self._settle(self._handlers)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- views ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to, on 127.0.0.1."""
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``: what the agent's uplink is pointed at."""
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def state(self) -> LinkState:
        """The current mode."""
        return self._state

    def statistics(self) -> LinkStatistics:
        """Connection and byte counters."""
        return LinkStatistics(
            state=self._state,
            connections=self._connections,
            open=len(self._pipes),
            refused=self._refused,
            upstream_failures=self._upstream_failures,
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
            bytes_discarded=self._bytes_discarded,
            pubacks_withheld=self._pubacks_withheld,
        )

    # -- modes ---------------------------------------------------------------

    async def cut(self) -> None:
        """Reset every connection; reset new ones until :meth:`restore`."""
        _log.info("link cut")
        self._state = LinkState.CUT
        await self._drop(self._pipes)

    async def stall(self) -> None:
        """Keep connections open but forward nothing, until :meth:`restore`."""
        _log.info("link stalled")
        self._state = LinkState.STALLED
        for pipe in self._pipes:
            pipe.stalled = True

    async def withhold_pubacks(self) -> None:
        """Forward everything but the broker's PUBACKs, until :meth:`restore` or :meth:`cut`."""
        _log.info("link withholding PUBACKs")
        self._state = LinkState.NO_PUBACK
        for pipe in self._pipes:
            pipe.withholding = True

    async def restore(self) -> None:
        """Forward again; connections that lived through a stall or withheld PUBACKs are reset."""
        _log.info("link restored")
        self._state = LinkState.UP
        await self._drop([pipe for pipe in self._pipes if pipe.stalled or pipe.withholding])

    # -- internals -----------------------------------------------------------

    async def _drop(self, pipes: Iterable[_Pipe]) -> None:
        """Reset ``pipes``, discard what they held, and wait for their handlers."""
        pipes = list(pipes)
        for pipe in pipes:
            self._bytes_discarded += pipe.held
            pipe.held = 0
            pipe.reset()
        await self._settle(pipe.task for pipe in pipes)

    async def _settle(self, handlers: Iterable[asyncio.Task[None]]) -> None:
        """Wait until ``handlers`` have finished."""
        # Not cancelled: a reset connection ends its handler by itself, and
        # asyncio's streams log an error for a cancelled handler task.
        pending = set(handlers) - {asyncio.current_task()}
        if not pending:
            return
        _done, stuck = await asyncio.wait(pending, timeout=SETTLE_TIMEOUT_S)
        for task in stuck:
            # A bug: a handler that ignores the reset. Do not hang the caller.
            _log.error("proxy connection handler %s did not end; cancelling it", task)
            task.cancel()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections += 1
        try:
            await self._serve(reader, writer, task)
        except (OSError, asyncio.IncompleteReadError):
            # A reset or broken connection ends the pipe; that is the point.
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> None:
        if self._state is LinkState.CUT:
            self._refused += 1
            _reset(writer)
            return
        pipe = _Pipe(writer, task)
        self._pipes.add(pipe)
        try:
            if self._state is LinkState.STALLED:
                # A dead link: the connection request never reaches the broker.
                pipe.stalled = True
                await self._pump(reader, None, pipe, up=True)
                return
            try:
                async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                    up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            except (OSError, TimeoutError) as exc:
                self._upstream_failures += 1
                _log.info("upstream %s:%d unreachable: %s", *self._upstream, exc)
                _reset(writer)
                return
            pipe.upstream_writer = up_writer
            if pipe.closed.is_set():
                # Reset (cut, restore or close) while we were connecting.
                return
            match self.state:  # it may have changed while we were connecting
                case LinkState.CUT:
                    pipe.reset()
                    return
                case LinkState.STALLED:
                    pipe.stalled = True
                case LinkState.NO_PUBACK:
                    pipe.withholding = True
                case LinkState.UP:
                    pass
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._pump(reader, up_writer, pipe, up=True), name="up")
                    group.create_task(self._pump(up_reader, writer, pipe, up=False), name="down")
            except* (OSError, asyncio.IncompleteReadError):
                pass
        finally:
            self._pipes.discard(pipe)
            pipe.reset()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        pipe: _Pipe,
        *,
        up: bool,
    ) -> None:
        """Copy ``reader`` to ``writer`` until EOF; hold the bytes while stalled."""
        while True:
            if pipe.stalled and pipe.held >= MAX_HELD_BYTES:
                # Held enough: stop reading, as a full TCP window would, and
                # wait for restore or cut to reset the connection.
                await pipe.closed.wait()
                return
            data = await reader.read(CHUNK_BYTES)
            if not data:
                # EOF from one side: end the whole pipe (MQTT has no half-close).
                pipe.reset()
                return
            if pipe.stalled or writer is None:
                pipe.held += len(data)
                continue
            if not up:
                # Always framed, so that withholding can start at any instant.
                dropped = pipe.down.dropped
                data = pipe.down.feed(data, drop=PUBACK if pipe.withholding else None)
                self._pubacks_withheld += pipe.down.dropped - dropped
                if not data:
                    continue
            writer.write(data)
            await writer.drain()
            if up:
                self._bytes_up += len(data)
            else:
                self._bytes_down += len(data)

"""The cuttable uplink proxy: forwards, cuts, stalls and restores a TCP link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.broker import Mosquitto
from sim.proxy import PUBACK, LinkProxy, LinkState, MqttFramer
from tests.conftest import free_port

# Bounded waits: long enough for loopback, short enough to keep the suite fast.
SHORT_WAIT_S = 0.3
IO_TIMEOUT_S = 5.0
V5 = aiomqtt.ProtocolVersion.V5


class Upstream:
    """A stand-in for the broker: echoes what it receives and records it."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while data := await reader.read(4096):
                await self.received.put(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


@pytest.fixture
async def proxy(upstream: Upstream) -> AsyncIterator[LinkProxy]:
    async with LinkProxy("127.0.0.1", upstream.port) as link:
        yield link


async def _connect(proxy: LinkProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _is_closed(reader: asyncio.StreamReader) -> bool:
    """Whether the connection ends (EOF or reset) within IO_TIMEOUT_S."""
    try:
        async with asyncio.timeout(IO_TIMEOUT_S):
            data = await reader.read(4096)
    except ConnectionError:
        return True
    return data == b""


async def _echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(IO_TIMEOUT_S):
        return await reader.readexactly(len(payload))


async def _first_of(*awaitables: Coroutine[Any, Any, object]) -> object:
    """The result of whichever awaitable finishes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_proxy__forwards_both_ways(proxy: LinkProxy, upstream: Upstream) -> None:
    """Bytes cross the proxy both ways and are counted (else the agent never reaches the broker)."""
    reader, writer = await _connect(proxy)
    assert await _echo(reader, writer, b"ping") == b"ping"
    assert await upstream.received.get() == b"ping"
    stats = proxy.statistics()
    assert (stats.state, stats.connections, stats.open) == (LinkState.UP, 1, 1)
    assert (stats.bytes_up, stats.bytes_down) == (4, 4)
    writer.close()
    assert proxy.url == f"mqtt://127.0.0.1:{proxy.port}"


async def test_proxy__cut_resets_connections_until_restore(
    proxy: LinkProxy, upstream: Upstream
) -> None:
    """A cut drops links and refuses new ones until restored (else outages go unmodelled)."""
    reader, writer = await _connect(proxy)
    assert await _echo(reader, writer, b"before") == b"before"

    await proxy.cut()

    assert proxy.state is LinkState.CUT
    assert await _is_closed(reader)
    late_reader, _late_writer = await _connect(proxy)
    assert await _is_closed(late_reader)
    assert proxy.statistics().refused == 1
    assert upstream.connections == 1

    await proxy.restore()

    reader, writer = await _connect(proxy)
    assert await _echo(reader, writer, b"after") == b"after"
    writer.close()


async def test_proxy__stall_holds_bytes_then_restore_resets(
    proxy: LinkProxy, upstream: Upstream
) -> None:
    """A stall forwards nothing yet keeps links open (else dead-link detection goes untested)."""
    reader, writer = await _connect(proxy)
    assert await _echo(reader, writer, b"before") == b"before"
    await upstream.received.get()

    await proxy.stall()
    writer.write(b"held")
    await writer.drain()

    new_reader, new_writer = await _connect(proxy)
    new_writer.write(b"new")
    await new_writer.drain()

    assert proxy.state is LinkState.STALLED
    # One bounded wait for all three: nothing reaches the far side, nothing
    # comes back on the old or the new connection.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            _first_of(upstream.received.get(), reader.read(4096), new_reader.read(4096)),
            SHORT_WAIT_S,
        )
    assert upstream.connections == 1  # the dead link never reached the broker
    assert proxy.statistics().open == 2

    await proxy.restore()

    assert await _is_closed(reader)
    assert await _is_closed(new_reader)
    assert upstream.received.empty()
    assert proxy.statistics().bytes_discarded == len(b"held") + len(b"new")
    reader, writer = await _connect(proxy)
    assert await _echo(reader, writer, b"after") == b"after"
    writer.close()


async def test_proxy__unreachable_upstream_closes_client() -> None:
    """With the broker down, the client's connection ends at once (else the agent hangs)."""
    async with LinkProxy("127.0.0.1", free_port()) as proxy:
        reader, _writer = await _connect(proxy)
        assert await _is_closed(reader)
        assert proxy.statistics().upstream_failures == 1


async def test_proxy__close_drops_open_connections(upstream: Upstream) -> None:
    """Leaving the block closes every link (else tests leak sockets and tasks)."""
    async with LinkProxy("127.0.0.1", upstream.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _echo(reader, writer, b"x") == b"x"
    assert await _is_closed(reader)


async def test_proxy__restore_while_up_keeps_connections(proxy: LinkProxy) -> None:
    """Restoring a healthy link is a no-op (else a scenario step would drop the agent)."""
    reader, writer = await _connect(proxy)
    await proxy.restore()
    assert await _echo(reader, writer, b"still here") == b"still here"
    writer.close()


@pytest.mark.integration
async def test_proxy__mqtt_client_sees_cut_and_reconnects(broker: Mosquitto) -> None:
    """An MQTT client through the proxy loses its session on a cut and reconnects after restore
    (else uplink outage scenarios test nothing)."""
    async with LinkProxy("127.0.0.1", broker.port) as proxy:
        async with aiomqtt.Client("127.0.0.1", proxy.port, protocol=V5) as client:
            await client.subscribe("probe/#", qos=1)
            await client.publish("probe/1", b"up", qos=1)
            async with asyncio.timeout(IO_TIMEOUT_S):
                assert (await anext(aiter(client.messages))).payload == b"up"
            await proxy.cut()
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(IO_TIMEOUT_S):
                    await anext(aiter(client.messages))
        # aiomqtt ignores a reset that comes before the CONNACK: the attempt
        # fails only at its timeout, which is what a dead radio link does too.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", proxy.port, protocol=V5, timeout=SHORT_WAIT_S):
                pass
        await proxy.restore()
        async with aiomqtt.Client("127.0.0.1", proxy.port, protocol=V5) as client:
            await client.publish("probe/2", b"back", qos=1)
        assert proxy.statistics().connections == 3


@pytest.mark.integration
async def test_proxy__withheld_pubacks_leave_the_publish_unacknowledged_until_restore(
    broker: Mosquitto,
) -> None:
    """While PUBACKs are withheld the broker gets the message but the client never hears
    so, and restore resets the connection (else lost acknowledgements go untested)."""
    async with (
        LinkProxy("127.0.0.1", broker.port) as proxy,
        aiomqtt.Client("127.0.0.1", broker.port, protocol=V5) as watcher,
    ):
        await watcher.subscribe("probe/#", qos=1)
        async with aiomqtt.Client("127.0.0.1", proxy.port, protocol=V5, timeout=60) as client:
            await client.publish("probe/1", b"acked", qos=1)
            await proxy.withhold_pubacks()
            assert proxy.state is LinkState.NO_PUBACK
            publish = asyncio.create_task(client.publish("probe/2", b"unacked", qos=1))
            async with asyncio.timeout(IO_TIMEOUT_S):
                received = [(await anext(aiter(watcher.messages))).payload for _ in range(2)]
            assert received == [b"acked", b"unacked"]
            async with asyncio.timeout(IO_TIMEOUT_S):
                while proxy.statistics().pubacks_withheld < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            # Other broker → client packets still flow: a SUBACK comes back.
            await client.subscribe("other/#", qos=1)
            assert not publish.done()
            await proxy.restore()
            # The connection is reset: the client notices, the publish never completes.
            assert proxy.statistics().open == 0
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(IO_TIMEOUT_S):
                    await anext(aiter(client.messages))
            assert not publish.done()
            publish.cancel()
        assert proxy.statistics().pubacks_withheld == 1


@st.composite
def _mqtt_packets(draw: st.DrawFn) -> list[bytes]:
    """Control packets with a valid fixed header; bodies up to 2 length bytes long."""
    packets = []
    for _ in range(draw(st.integers(0, 12))):
        first = draw(st.integers(0x10, 0xFF))
        body = draw(st.binary(max_size=300))
        length, header = len(body), bytearray([first])
        while True:
            byte, length = length & 0x7F, length >> 7
            header.append(byte | (0x80 if length else 0))
            if not length:
                break
        packets.append(bytes(header) + body)
    return packets


@given(packets=_mqtt_packets(), data=st.data())
def test_framer__drops_exactly_the_packets_of_one_type(
    packets: list[bytes], data: st.DataObject
) -> None:
    """The proxy would drop other packets than PUBACKs, or corrupt the stream around them."""
    stream = b"".join(packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = MqttFramer()
    out = b"".join(framer.feed(chunk, drop=PUBACK) for chunk in chunks)
    kept = [p for p in packets if p[0] >> 4 != PUBACK]
    assert out == b"".join(kept)
    assert framer.dropped == len(packets) - len(kept)
    passing = MqttFramer()
    assert b"".join(passing.feed(chunk) for chunk in chunks) == stream


@given(data=st.binary(max_size=200))
def test_framer__passes_any_stream_when_not_dropping(data: bytes) -> None:
    """A byte stream that is not MQTT would be altered by the proxy."""
    assert MqttFramer().feed(data) == data

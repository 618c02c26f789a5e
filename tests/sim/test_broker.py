"""The mosquitto runner: a real broker on loopback, owned by `async with`."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import sim.broker
from sim.broker import BrokerError, BrokerNotFound, Mosquitto

pytestmark = pytest.mark.integration

V5 = aiomqtt.ProtocolVersion.V5


def _session(expiry_s: int = 60) -> Properties:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = expiry_s
    return properties


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_broker__publish_subscribe_roundtrip(broker: Mosquitto) -> None:
    """A client can publish to and receive from the broker (else nothing in the sim talks)."""
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=V5) as client:
        await client.subscribe("probe/#", qos=1)
        await client.publish("probe/1", b"hello", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
    assert (str(message.topic), message.payload) == ("probe/1", b"hello")


async def test_broker__restart_keeps_port_and_queued_messages(broker: Mosquitto) -> None:
    """A broker restart keeps the port and offline sessions (else outage tests lose data)."""
    port = broker.port
    # Clean start false from the first connect: mosquitto 2.0 persists only
    # sessions opened that way.
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="sub-1",
        protocol=V5,
        clean_start=False,
        properties=_session(),
    ) as subscriber:
        await subscriber.subscribe("probe/#", qos=1)
    async with aiomqtt.Client("127.0.0.1", port, protocol=V5) as publisher:
        await publisher.publish("probe/held", b"while away", qos=1)

    await broker.restart()

    assert broker.port == port
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="sub-1",
        protocol=V5,
        clean_start=False,
        properties=_session(),
    ) as subscriber:
        async with asyncio.timeout(5):
            message = await anext(aiter(subscriber.messages))
    assert (str(message.topic), message.payload) == ("probe/held", b"while away")


async def test_broker__stop_leaves_no_process(tmp_path: Path) -> None:
    """Stopping the broker ends its process (else CI runners fill up with brokers)."""
    async with Mosquitto(data_dir=tmp_path) as broker:
        pid = broker.pid
        assert pid is not None
        assert _alive(pid)
        await broker.stop()
        assert not broker.running
        assert not _alive(pid)
    assert (tmp_path / "mosquitto.log").exists()


async def test_broker__close_removes_temporary_data_dir() -> None:
    """Without a data_dir the broker cleans up after itself (else /tmp fills up)."""
    async with Mosquitto() as broker:
        data_dir = broker.data_dir
        pid = broker.pid
        assert data_dir.is_dir()
    assert not data_dir.exists()
    assert pid is not None
    assert not _alive(pid)


async def test_broker__port_taken_fails_with_log_tail(tmp_path: Path) -> None:
    """A taken port gives an error quoting mosquitto's log (else a bare timeout to debug)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        # A listening socket that never accepts still completes TCP handshakes,
        # so make the broker's own failure the first thing we see.
        broker = Mosquitto(port=port, data_dir=tmp_path)
        with pytest.raises(BrokerError, match="exited") as failure:
            await broker.start()
    assert "Address already in use" in str(failure.value)
    assert not broker.running


def test_broker__missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without mosquitto the error says how to install it (else a confusing FileNotFoundError)."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(sim.broker, "DEBIAN_MOSQUITTO", Path("/nonexistent/mosquitto"))
    with pytest.raises(BrokerNotFound, match="apt-get install mosquitto"):
        Mosquitto()

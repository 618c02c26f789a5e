"""A real mosquitto broker on loopback, owned by an ``async with`` block.

Tests, the simulator and the demo need an MQTT 5 broker that behaves like the
production one (sessions, retained messages, wills, persistence across a
restart). Rather than emulate one, we run mosquitto itself with a generated
configuration: it listens only on 127.0.0.1, accepts anonymous clients and
keeps its state in a data directory, so :meth:`Mosquitto.restart` brings back
the sessions and queued messages of the clients, as a production broker
restart would.

The process never outlives its owner: it is stopped on every exit path of the
``async with`` block, and (on Linux, with ``setpriv``) it is also told to die
with the process that started it, should that process be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from sim.lifetime import tied_to_parent

__all__ = ["BrokerError", "BrokerNotFound", "Mosquitto", "free_port"]

LOOPBACK = "127.0.0.1"

# Where Debian/Ubuntu's `mosquitto` package installs the broker; it is not on a
# normal user's PATH because /usr/sbin is for administrators.
DEBIAN_MOSQUITTO = Path("/usr/sbin/mosquitto")

# How long mosquitto may take to accept TCP connections. It is ready in tens of
# milliseconds on a laptop; 10 s leaves room for a loaded CI runner.
START_TIMEOUT_S = 10.0
# How often to try connecting while waiting for the listener to come up.
START_POLL_S = 0.02
# How long one readiness probe waits for the CONNACK (sub-millisecond on
# loopback; a slow probe is simply retried until the start deadline).
PROBE_TIMEOUT_S = 0.25
# Grace between SIGTERM and SIGKILL. mosquitto writes its persistence file on
# SIGTERM, which takes milliseconds for a test-sized database.
STOP_GRACE_S = 5.0

# Per-client queue of QoS 1 messages held for an offline session. mosquitto's
# default (1000) silently drops the rest, which would look like a bug of the
# agent's outbox in a long simulated outage; a sim never queues this many.
MAX_QUEUED_MESSAGES = 100_000

LOG_TAIL_LINES = 20


class BrokerError(RuntimeError):
    """mosquitto could not be started or did not come up in time."""


class BrokerNotFound(BrokerError):
    """The mosquitto binary is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0). Another process may take it before
    the caller binds it, so callers that start servers retry once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto() -> Path:
    """The mosquitto executable, or :class:`BrokerNotFound` with the install hint."""
    found = shutil.which("mosquitto")
    if found is not None:
        return Path(found)
    if DEBIAN_MOSQUITTO.is_file() and os.access(DEBIAN_MOSQUITTO, os.X_OK):
        return DEBIAN_MOSQUITTO
    raise BrokerNotFound(
        "mosquitto not found on PATH nor at /usr/sbin/mosquitto; "
        "install it with `apt-get install mosquitto`"
    )


def _config(
    port: int, data_dir: Path, log_path: Path, max_queued: int = MAX_QUEUED_MESSAGES
) -> str:
    # `user`: when started as root, mosquitto switches to the `mosquitto` user,
    # which cannot write our data directory (nor keep the parent-death signal).
    # Naming the current user keeps it as whoever started it; for a non-root
    # user the option has no effect.
    user = pwd.getpwuid(os.geteuid()).pw_name
    return "\n".join(
        [
            f"user {user}",
            f"listener {port} {LOOPBACK}",
            "allow_anonymous true",
            # Small MQTT packets on loopback: Nagle plus delayed ACKs would add
            # 40 ms stalls to every exchange.
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {data_dir}/",
            "persistence_file mosquitto.db",
            f"max_queued_messages {max_queued}",
            f"log_dest file {log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
        ]
    )


class Mosquitto:
    """A mosquitto broker process listening on ``127.0.0.1:port``.

    ``port=None`` picks a free port; ``data_dir=None`` uses a temporary
    directory removed by :meth:`close` (a given ``data_dir`` is kept). The
    persistence file, the generated configuration and the log live there.
    ``max_queued_messages`` is the per-client queue (mosquitto's own default is 1000).
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        *,
        max_queued_messages: int = MAX_QUEUED_MESSAGES,
    ) -> None:
        self._binary = find_mosquitto()
        self._max_queued = max_queued_messages
        self._fixed_port = port is not None
        self._port = port
        self._given_data_dir = data_dir
        self._data_dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the broker and return once its port accepts connections."""
        if self.running:
            return
        if self._data_dir is None:
            if self._given_data_dir is not None:
                self._given_data_dir.mkdir(parents=True, exist_ok=True)
                self._data_dir = self._given_data_dir
            else:
                self._data_dir = Path(tempfile.mkdtemp(prefix="armoire-mosquitto-"))
        if self._port is None:
            self._port = free_port()
        try:
            await self._start_once()
        except BrokerError:
            if self._fixed_port:
                raise
            # The port picked may have been taken between free_port() and
            # mosquitto's bind: pick another one, once.
            self._port = free_port()
            await self._start_once()

    async def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a grace period).

        The data directory is kept, so :meth:`start` or :meth:`restart` brings
        back the persisted sessions and messages.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            await _terminate(proc)

    async def restart(self, *, keep_persistence: bool = True) -> None:
        """Stop the broker and start it again on the same port.

        ``keep_persistence=False`` deletes the persistence file in between: a broker
        replaced by a fresh one, which has none of the clients' sessions.
        """
        await self.stop()
        if not keep_persistence and self._data_dir is not None:
            for stored in self._data_dir.glob("mosquitto.db*"):
                stored.unlink()
        # Same port from now on: clients and proxies point at it.
        self._fixed_port = True
        await self.start()

    async def close(self) -> None:
        """Stop the broker and remove its data directory if it was a temporary one."""
        await self.stop()
        if self._data_dir is not None and self._given_data_dir is None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    # -- views ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (known once started)."""
        if self._port is None:
            raise BrokerError("the broker has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def data_dir(self) -> Path:
        """Where the configuration, persistence file and log are."""
        if self._data_dir is None:
            raise BrokerError("the broker has not been started yet")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """mosquitto's log file."""
        return self.data_dir / "mosquitto.log"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the log and of stderr, for error messages."""
        parts = []
        for path in (self.log_path, self.data_dir / "mosquitto.stderr"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"

    # -- internals -----------------------------------------------------------

    async def _start_once(self) -> None:
        data_dir = self.data_dir
        conf = data_dir / "mosquitto.conf"
        conf.write_text(_config(self.port, data_dir, self.log_path, self._max_queued))
        # A SIGKILLed test run does not leave brokers behind.
        argv = tied_to_parent([str(self._binary), "-c", str(conf)])
        # stderr to a file: start-up errors (bad config, port taken) are
        # printed there before the log file is opened.
        with (data_dir / "mosquitto.stderr").open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                # Not in the terminal's process group: Ctrl-C is for whoever runs the
                # broker, who stops it in its turn (after the agent has said goodbye).
                start_new_session=True,
            )
        try:
            await self._wait_listening(proc)
        except BaseException:
            await _terminate(proc)
            raise
        self._proc = proc

    async def _wait_listening(self, proc: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        last_error: Exception | None = None
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise BrokerError(
                    f"mosquitto exited with status {proc.returncode} while starting on "
                    f"port {self.port}:\n{self.log_tail()}"
                )
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await _mqtt_probe(self.port)
            except (OSError, TimeoutError, BrokerError) as exc:
                last_error = exc
                await asyncio.sleep(START_POLL_S)
                continue
            return
        raise BrokerError(
            f"mosquitto did not accept connections on port {self.port} within "
            f"{START_TIMEOUT_S} s (last error: {last_error}):\n{self.log_tail()}"
        )


# An MQTT 3.1.1 CONNECT (OASIS MQTT 3.1.1 §3.1): protocol name "MQTT", level 4,
# clean session, keep-alive 60 s, client id "armoire-probe"; and DISCONNECT.
_PROBE_ID = b"armoire-probe"
_PROBE_CONNECT = (
    bytes([0x10, 10 + 2 + len(_PROBE_ID)])
    + b"\x00\x04MQTT\x04\x02\x00\x3c"
    + len(_PROBE_ID).to_bytes(2, "big")
    + _PROBE_ID
)
_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"  # §3.2: CONNACK, no session, accepted
_DISCONNECT = b"\xe0\x00"


async def _mqtt_probe(port: int) -> None:
    """Succeed only if an MQTT broker accepts a connection on ``port``.

    A bare TCP connect is not proof: another program may hold the port while
    mosquitto fails to bind it.
    """
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(_PROBE_CONNECT)
        await writer.drain()
        try:
            reply = await reader.readexactly(len(_CONNACK_ACCEPTED))
        except asyncio.IncompleteReadError as exc:
            raise BrokerError(f"port {port} closed the MQTT probe") from exc
        if reply != _CONNACK_ACCEPTED:
            raise BrokerError(f"port {port} answered the MQTT probe with {reply.hex()}")
        writer.write(_DISCONNECT)
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """Stop ``proc`` for sure: SIGTERM, SIGKILL after a grace period, then reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        async with asyncio.timeout(STOP_GRACE_S):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    except BaseException:
        # Cancelled while waiting: do not leave the process running.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise

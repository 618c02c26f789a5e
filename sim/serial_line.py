"""A virtual RS-485 line: two pty pairs joined by a relay that can misbehave.

The agent opens one pty slave (:attr:`VirtualSerialLine.agent_port`), the
simulated devices' Modbus server opens the other
(:attr:`VirtualSerialLine.device_port`). The relay copies bytes between the two
pty masters on the event loop (``add_reader``/``add_writer``, no threads) and is
the place where wire faults are injected at run time:

* :meth:`~VirtualSerialLine.silence` drops everything, both ways (cable cut);
* :meth:`~VirtualSerialLine.corrupt_next` flips one bit in the next replies, so
  their CRC fails;
* :meth:`~VirtualSerialLine.delay` holds replies back (a slow device);
* :meth:`~VirtualSerialLine.babble` makes one unit answer every request with
  garbage (a device with a broken firmware or a wrong baud rate);
* ``baudrate`` paces delivery to the wire speed.

A pty moves bytes in chunks whose boundaries the kernel chooses, so a "reply"
here is the first chunk the device side writes after a chunk from the agent.
Delays and pacing use the event loop's clock, not an injected
:class:`agent.clock.Clock`: the bytes cross a real kernel pty, and the agent's
serial timeouts on the other end run on the same loop clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

# A UART frame for one 8N1 character is 10 bits; Modbus RTU asks for 11 bits per
# character (8 data + parity or a second stop bit + start + stop), Modbus over
# Serial Line V1.02 §2.5.1. Pacing with 11 bits never delivers faster than a
# real line at that baud rate.
BITS_PER_CHAR = 11

# Largest read from a pty master in one go; a pty never holds more than a few KiB.
READ_CHUNK = 65536

# Bytes the relay keeps per direction when the reading side does not drain its
# pty (nobody has the port open). Overflow policy: drop the newest bytes and
# count them, as a UART receive FIFO overrun does.
DEFAULT_BUFFER_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class LineStatistics:
    """Counters of a :class:`VirtualSerialLine` since it started."""

    agent_to_device_bytes: int
    """Bytes delivered from the agent's port to the devices' port."""
    device_to_agent_bytes: int
    """Bytes delivered from the devices' port to the agent's port."""
    dropped_bytes: int
    """Bytes discarded while the line was silenced (both directions)."""
    corrupted_replies: int
    """Replies that had a bit flipped by :meth:`VirtualSerialLine.corrupt_next`."""
    overrun_bytes: int
    """Bytes discarded because a direction's buffer was full."""
    pending_bytes: int
    """Bytes read but not yet delivered (held by delay/pacing or waiting to be written)."""


class _Direction:
    """One direction of the relay: read from ``src`` master, write to ``dst`` master.

    Bytes pass through two stages: ``held`` (waiting for their release time,
    when a delay or wire pacing is in force) and ``out`` (released, waiting for
    the destination pty to accept them).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        dst_fd: int,
        buffer_limit: int,
    ) -> None:
        self._loop = loop
        self._dst = dst_fd
        self._limit = buffer_limit
        self._held: deque[tuple[float, bytes]] = deque()
        self._held_bytes = 0
        self._out = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._writer_on = False
        self._wire_free_at = 0.0
        self._last_release = 0.0
        self.delivered = 0
        self.overrun = 0

    @property
    def pending(self) -> int:
        return self._held_bytes + len(self._out)

    def send(self, data: bytes, *, delay: float, baudrate: int | None) -> None:
        """Queue ``data`` for delivery after ``delay`` seconds and its wire time."""
        room = self._limit - self.pending
        if len(data) > room:
            self.overrun += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        if not data:
            return
        now = self._loop.time()
        release = now + delay
        if baudrate is not None:
            start = max(release, self._wire_free_at)
            release = start + len(data) * BITS_PER_CHAR / baudrate
            self._wire_free_at = release
        # Never overtake bytes already held, even if the delay was just shortened.
        release = max(release, self._last_release)
        self._last_release = release
        if release <= now and not self._held:
            self._write(data)
            return
        self._held.append((release, data))
        self._held_bytes += len(data)
        if self._timer is None:
            self._timer = self._loop.call_at(release, self._release_due)

    def _release_due(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._held and self._held[0][0] <= now:
            _, data = self._held.popleft()
            self._held_bytes -= len(data)
            self._write(data)
        if self._held:
            self._timer = self._loop.call_at(self._held[0][0], self._release_due)

    def _write(self, data: bytes) -> None:
        self._out += data
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self._dst, self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # EIO: the pty was torn down under us (line closing). Nothing
                # more can be delivered; drop what is left rather than spin.
                if exc.errno != errno.EIO:
                    raise
                self._out.clear()
                break
            self.delivered += n
            del self._out[:n]
        if self._out and not self._writer_on:
            self._loop.add_writer(self._dst, self._flush)
            self._writer_on = True
        elif not self._out and self._writer_on:
            self._loop.remove_writer(self._dst)
            self._writer_on = False

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer_on:
            self._loop.remove_writer(self._dst)
            self._writer_on = False


class VirtualSerialLine:
    """Two pty pairs with a fault-injecting relay between their masters.

    Use as ``async with VirtualSerialLine() as line:`` (or :meth:`start` /
    :meth:`close`). The agent opens :attr:`agent_port`; the devices' server
    opens :attr:`device_port`. The line keeps its own descriptor on each slave
    open for its whole life, so either end may close and reopen its port
    without the relay seeing a hang-up.

    If ``link_dir`` is given, ``link_dir/name`` is made a symlink to
    :attr:`agent_port`, a stable path for configuration files.
    """

    def __init__(
        self,
        *,
        baudrate: int | None = None,
        link_dir: Path | None = None,
        name: str = "rs485",
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    ) -> None:
        if baudrate is not None and baudrate <= 0:
            raise ValueError(f"baudrate must be positive or None, got {baudrate}")
        if buffer_limit <= 0:
            raise ValueError(f"buffer_limit must be positive, got {buffer_limit}")
        self._baudrate = baudrate
        self._link_dir = link_dir
        self._name = name
        self._buffer_limit = buffer_limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fds: list[int] = []
        self._agent_master = -1
        self._device_master = -1
        self._agent_port = ""
        self._device_port = ""
        self._link: Path | None = None
        self._to_device: _Direction | None = None
        self._to_agent: _Direction | None = None
        self._silenced = False
        self._corrupt_pending = 0
        self._reply_delay = 0.0
        self._reply_expected = False
        self._dropped = 0
        self._corrupted = 0
        self._babblers: dict[int, bytes] = {}
        self.babbled = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Create the ptys, start relaying and make the symlink (if asked)."""
        if self._loop is not None:
            raise RuntimeError("VirtualSerialLine already started")
        loop = asyncio.get_running_loop()
        try:
            self._agent_master, agent_slave = self._open_pair()
            self._device_master, device_slave = self._open_pair()
            self._agent_port = os.ttyname(agent_slave)
            self._device_port = os.ttyname(device_slave)
        except BaseException:
            self._close_fds()
            raise
        self._loop = loop
        self._to_device = _Direction(loop, self._device_master, self._buffer_limit)
        self._to_agent = _Direction(loop, self._agent_master, self._buffer_limit)
        loop.add_reader(self._agent_master, self._on_agent_readable)
        loop.add_reader(self._device_master, self._on_device_readable)
        if self._link_dir is not None:
            self._link = self._link_dir / self._name
            self._make_link(self._link, self._agent_port)

    async def close(self) -> None:
        """Stop relaying, remove the symlink and close the ptys. Idempotent."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.remove_reader(self._agent_master)
            loop.remove_reader(self._device_master)
        for direction in (self._to_device, self._to_agent):
            if direction is not None:
                direction.stop()
        if self._link is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self._link) == self._agent_port:
                    self._link.unlink()
            self._link = None
        self._close_fds()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- ports -------------------------------------------------------------

    @property
    def agent_port(self) -> str:
        """Path of the pty the agent opens (``/dev/pts/N``)."""
        self._require_started()
        return self._agent_port

    @property
    def device_port(self) -> str:
        """Path of the pty the devices' server opens."""
        self._require_started()
        return self._device_port

    @property
    def link(self) -> Path | None:
        """The stable symlink to :attr:`agent_port`, if one was asked for."""
        return self._link

    # -- faults ------------------------------------------------------------

    def silence(self, on: bool = True) -> None:
        """Drop every byte in both directions while ``on`` (a cut cable)."""
        self._silenced = on

    def corrupt_next(self, n: int = 1) -> None:
        """Flip one bit in each of the next ``n`` replies, so their CRC fails."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._corrupt_pending = n

    def delay(self, seconds: float) -> None:
        """Hold every device→agent chunk back by ``seconds`` (0 to stop)."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        self._reply_delay = seconds

    def babble(self, unit: int, garbage: bytes | None) -> None:
        """Answer every request addressed to ``unit`` with ``garbage`` (None: stop).

        The relay answers itself, so the unit must have no device answering on the
        line (powered off, or none). A request is recognised by its first byte, the
        unit address (serial spec §2.5.1): a pty delivers a request frame in one
        chunk, which is all this needs.
        """
        if garbage is None:
            self._babblers.pop(unit, None)
        else:
            self._babblers[unit] = garbage

    @property
    def baudrate(self) -> int | None:
        """Wire speed used for pacing, or ``None`` for instant delivery."""
        return self._baudrate

    def set_baudrate(self, baudrate: int | None) -> None:
        """Change wire pacing at run time (``None``: deliver as fast as the pty goes)."""
        if baudrate is not None and baudrate <= 0:
            raise ValueError(f"baudrate must be positive or None, got {baudrate}")
        self._baudrate = baudrate

    def statistics(self) -> LineStatistics:
        """Counters since :meth:`start` (all zero before)."""
        to_dev, to_agent = self._to_device, self._to_agent
        return LineStatistics(
            agent_to_device_bytes=to_dev.delivered if to_dev else 0,
            device_to_agent_bytes=to_agent.delivered if to_agent else 0,
            dropped_bytes=self._dropped,
            corrupted_replies=self._corrupted,
            overrun_bytes=(to_dev.overrun if to_dev else 0) + (to_agent.overrun if to_agent else 0),
            pending_bytes=(to_dev.pending if to_dev else 0) + (to_agent.pending if to_agent else 0),
        )

    # -- relay -------------------------------------------------------------

    def _on_agent_readable(self) -> None:
        data = self._read(self._agent_master)
        if not data:
            return
        if self._silenced:
            self._dropped += len(data)
            return
        self._reply_expected = True
        assert self._to_device is not None
        self._to_device.send(data, delay=0.0, baudrate=self._baudrate)
        garbage = self._babblers.get(data[0])
        if garbage is not None:
            self.babbled += 1
            # It answers once it has heard the request go by on the wire.
            heard = len(data) * BITS_PER_CHAR / self._baudrate if self._baudrate else 0.0
            assert self._to_agent is not None
            self._to_agent.send(garbage, delay=heard + self._reply_delay, baudrate=self._baudrate)

    def _on_device_readable(self) -> None:
        data = self._read(self._device_master)
        if not data:
            return
        if self._silenced:
            self._dropped += len(data)
            return
        if self._reply_expected and self._corrupt_pending > 0:
            # Flip the lowest bit of the chunk's last byte: for a whole frame
            # that is the CRC, so the frame still parses but fails its check.
            corrupted = bytearray(data)
            corrupted[-1] ^= 0x01
            data = bytes(corrupted)
            self._corrupt_pending -= 1
            self._corrupted += 1
        self._reply_expected = False
        assert self._to_agent is not None
        self._to_agent.send(data, delay=self._reply_delay, baudrate=self._baudrate)

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            # EIO would mean no slave is open; we hold both slaves open, so it
            # only happens while closing.
            if exc.errno == errno.EIO:
                return b""
            raise

    # -- helpers -----------------------------------------------------------

    def _open_pair(self) -> tuple[int, int]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        # Raw mode: no echo, no line editing, no CR/LF translation; Modbus
        # frames are binary. pyserial sets this again when a port is opened.
        tty.setraw(slave)
        os.set_blocking(master, False)
        return master, slave

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _require_started(self) -> None:
        if not self._fds:
            raise RuntimeError("VirtualSerialLine not started")

    @staticmethod
    def _make_link(link: Path, target: str) -> None:
        if link.exists() and not link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
        link.parent.mkdir(parents=True, exist_ok=True)
        # Build the link beside its final name and rename over it, so a reader
        # never sees the name missing while a stale link is replaced.
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        tmp.replace(link)

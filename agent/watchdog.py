"""The hardware watchdog, systemd's notifications, and why the previous run ended.

DESIGN.md, "Structured concurrency": the supervisor restarts a crashed loop, but a loop
that *hangs* (a deadlocked await, a driver stuck in a syscall) raises nothing. So every
critical loop (the pollers, the rules, the lighting schedule, the reporter that feeds
the outbox) checks in, here by a progress counter it already keeps, and the board's
watchdog (``/dev/watchdog``, board file ``[watchdog]``) and systemd's (``WATCHDOG=1`` on
``$NOTIFY_SOCKET``) are fed only while every one of them moved within its deadline. A
hung loop stops the feeding, and the board resets the gateway.

On a clean stop the device is closed with the magic character ``V`` (Linux
``Documentation/watchdog/watchdog-api.rst``, "Magic Close"), so that a deliberate stop
does not reset the board. The simulated board's watchdog is a plain file: each feed
appends a byte, so tests and the simulator can count them.

:func:`reboot_cause` tells how the previous run ended (PROTOCOL.md, Birth ``reboot``),
from the outbox's clean-stop marker, the watchdog's boot status and the kernel's boot id.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from agent.clock import Clock

log = logging.getLogger(__name__)

RebootCause = Literal["clean", "crash", "watchdog", "power", "unknown"]

# <linux/watchdog.h>: WDIOC_GETBOOTSTATUS = _IOR('W', 2, int); WDIOF_CARDRESET: the last
# reboot was caused by the watchdog.
WDIOC_GETBOOTSTATUS: Final = 0x80045702
WDIOF_CARDRESET: Final = 0x0020
MAGIC_CLOSE: Final = b"V"
KERNEL_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")
RUN_FILE: Final = "run.json"  # the kernel boot id of the last run, for reboot_cause
# Feed this many times per watchdog timeout: a late tick still lands in time.
FEEDS_PER_TIMEOUT: Final = 3


# ------------------------------------------------------------------ liveness


@dataclass(slots=True)
class _Watched:
    progress: Callable[[], int]
    deadline: float
    last: int
    moved_at: float
    idle: Callable[[], bool] | None = None


class Liveness:
    """Critical loops, each watched through a progress counter and a deadline (seconds)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._loops: dict[str, _Watched] = {}

    def watch(
        self,
        name: str,
        progress: Callable[[], int],
        deadline: float,
        *,
        idle: Callable[[], bool] | None = None,
    ) -> None:
        """Watch a loop. ``idle``: the loop is legitimately waiting for work (an uplink with
        nothing to send makes no progress), which counts as a check-in."""
        self._loops[name] = _Watched(progress, deadline, progress(), self._clock.monotonic(), idle)

    def stale(self) -> list[str]:
        """The loops that have not moved within their deadline."""
        now = self._clock.monotonic()
        stale = []
        for name, loop in self._loops.items():
            value = loop.progress()
            if value != loop.last or (loop.idle is not None and loop.idle()):
                loop.last, loop.moved_at = value, now
            elif now - loop.moved_at > loop.deadline:
                stale.append(name)
        return stale

    @property
    def names(self) -> list[str]:
        return list(self._loops)


# ------------------------------------------------------------------ systemd


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``READY=1``, ``WATCHDOG=1``) to systemd; False when not under it.

    sd_notify(3): a datagram on the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading
    ``@`` names an abstract socket.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", message, exc)
        return False
    return True


# ------------------------------------------------------------------ the feeder


class Watchdog:
    """Feeds the board's watchdog and systemd's while every critical loop is alive.

    ``device`` is the board's watchdog (None: the board has none); ``interval`` is the
    time between feeds. A device that cannot be opened is logged once; systemd is still
    notified.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        liveness: Liveness,
        device: Path | None,
        interval: float,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._clock = clock
        self._liveness = liveness
        self._device = device
        self.interval = interval
        self._environ = environ
        self._fd: int | None = None
        self.feeds = 0
        self.starved: list[str] = []  # the stale loops while feeding is withheld
        self.boot_status: int | None = None

    def open(self) -> None:
        """Open the device (this arms a Linux watchdog) and read its boot status."""
        if self._device is None:
            return
        try:
            # No O_CREAT: a missing /dev/watchdog must not become a file nobody reads.
            self._fd = os.open(self._device, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            log.error("watchdog %s unavailable: %s", self._device, exc)
            return
        try:
            raw = fcntl.ioctl(self._fd, WDIOC_GETBOOTSTATUS, struct.pack("i", 0))
            self.boot_status = struct.unpack("i", raw)[0]
        except OSError:
            self.boot_status = None  # not a watchdog driver (the simulated board's file)

    def ready(self) -> None:
        """Tell systemd the agent has started (``Type=notify``)."""
        sd_notify("READY=1", self._environ)

    def feed_once(self) -> bool:
        """Feed if every critical loop is alive; returns whether it fed."""
        stale = self._liveness.stale()
        if stale:
            if stale != self.starved:
                log.critical("watchdog not fed: %s hung", ", ".join(stale))
            self.starved = stale
            return False
        if self.starved:
            log.warning("watchdog fed again: every critical loop is alive")
            self.starved = []
        if self._fd is not None:
            try:
                os.write(self._fd, b"\0")
            except OSError as exc:
                log.error("watchdog feed failed: %s", exc)
        sd_notify("WATCHDOG=1", self._environ)
        self.feeds += 1
        return True

    async def run(self) -> None:
        while True:
            self.feed_once()
            await self._clock.sleep(self.interval)

    def close(self, *, clean: bool, restarting: bool = False) -> None:
        """On a clean stop, disarm with the magic close; otherwise leave it armed.
        ``restarting``: the process re-executes itself (a new configuration), so systemd is
        told RELOADING=1 rather than STOPPING=1 (the new agent's READY=1 ends it)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if clean:
                os.write(self._fd, MAGIC_CLOSE)
            os.close(self._fd)
        self._fd = None
        if clean:
            sd_notify("RELOADING=1" if restarting else "STOPPING=1", self._environ)


# ------------------------------------------------------------------ reboot cause


def kernel_boot_id(path: Path = KERNEL_BOOT_ID) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def reboot_cause(
    *,
    first_run: bool,
    clean: bool,
    watchdog_reset: bool | None,
    same_kernel: bool | None,
) -> RebootCause | None:
    """How the previous run ended: None on the very first run; ``clean`` after a clean
    stop; ``watchdog`` if the board says its watchdog reset it; ``power`` if the machine
    restarted (new kernel boot id) without a clean stop; ``crash`` if only the agent
    died; ``unknown`` when nothing tells."""
    if first_run:
        return None
    if clean:
        return "clean"
    if watchdog_reset:
        return "watchdog"
    if same_kernel is None:
        return "unknown"
    return "crash" if same_kernel else "power"


def previous_kernel(data_dir: Path, current: str | None) -> bool | None:
    """Whether the previous run of the agent was under the same kernel boot; records the
    current one for next time."""
    path = data_dir / RUN_FILE
    try:
        previous = json.loads(path.read_text()).get("kernel_boot")
    except (OSError, ValueError, AttributeError):
        previous = None
    if current is not None:
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps({"kernel_boot": current}))
            os.replace(tmp, path)
    if previous is None or current is None:
        return None
    return bool(previous == current)

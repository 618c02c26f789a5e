"""Single-key controls of the simulator's live view (a TTY only).

Keys act on the simulated world, never on the agent: cut, stall or restore
the cabinet's uplink, restart the broker, switch a device off and on, fail or
repair a lamp, open the cabinet door, cut the mains, put the UPS on battery,
trip the surge arrester (the I/O module's contacts), put the junction in fault
flash, MMU fault or scheduled flash. What each key did is shown on the view's
last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator

from sim.broker import Mosquitto
from sim.cabinet import Cabinet
from sim.proxy import LinkProxy

HELP = (
    "keys: c cut link · s stall link · r restore link · b restart broker · "
    "1-9 device off/on · f fail/repair lamp-01 · d open/shut the door · m cut/restore mains · "
    "u UPS on battery/mains · p trip/reset surge arrester · x fault flash · g MMU fault · "
    "n scheduled flash · o motion · t tamper · v camera off/on (cam-01) · : command · q quit"
)
# The same in 80 columns.
HELP_SHORT = "keys: c/s/r b 1-9 f · d/m/u/p cabinet · x/g/n signal · o/t/v cam · : cmd · q"
# The cabinet's contacts on the I/O module: key -> (contact, words when active, inactive).
CABINET_KEYS = {
    "d": ("door", "cabinet door opened", "cabinet door shut"),
    "m": ("mains", "mains restored", "mains cut"),
    "u": ("ups", "UPS on battery", "UPS back on mains"),
    "p": ("spd", "surge arrester tripped", "surge arrester reset"),
}
# The same contacts on the simulated board's GPIO roles (board/sim.toml), for an agent
# configured with the gpio driver: the simulated HAL listens on DATA/dev/gpio.sock.
GPIO_ROLES = {"door": "door_contact", "mains": "mains_sense", "spd": "spd_fault"}
COMMAND_HELP = "command: write POINT VALUE [prio N] [hold S] · relinquish POINT · action NAME"

# Sends a typed command as the central post would; returns a line describing the Ack.
CommandSender = Callable[[str], Awaitable[str]]


class Controls:
    """Reads keys from stdin in cbreak mode and runs the matching action."""

    def __init__(
        self,
        *,
        cabinet: Cabinet,
        link: LinkProxy,
        broker: Mosquitto | None,
        quit: Callable[[], None],
        send: CommandSender | None = None,
    ) -> None:
        self.cabinet = cabinet
        self._send = send
        self.typing: str | None = None  # the command being typed after ':'

        self.link = link
        self.broker = broker
        self._quit = quit
        self.last = ""
        self._tasks: set[asyncio.Task[None]] = set()
        # The contacts as the keys left them (door shut, mains present...).
        self._contacts: dict[str, bool] = (
            dict(cabinet.iomodule.contacts) if cabinet.iomodule is not None else {}
        )
        self.gpio_socket = cabinet.link_dir / "gpio.sock" if cabinet.link_dir else None

    def _send_gpio(self, contact: str, active: bool) -> None:
        role = GPIO_ROLES.get(contact)
        if role is None or self.gpio_socket is None or not self.gpio_socket.exists():
            return  # the agent has no gpio device (its HAL's socket is not there)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(f"{role} {int(active)}".encode(), str(self.gpio_socket))

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Listen to the keyboard while inside the block (no-op when stdin is not a TTY)."""
        if not sys.stdin.isatty():
            yield
            return
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._on_key, fd)
        try:
            yield
        finally:
            loop.remove_reader(fd)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def _on_key(self, fd: int) -> None:
        for key in os.read(fd, 32).decode(errors="ignore"):
            self.handle(key)

    def handle(self, key: str) -> None:
        """Run the action bound to ``key`` (also used by tests)."""
        if self.typing is not None:
            self._edit(key)
            return
        devices = list(self.cabinet.devices)
        match key:
            case ":" if self._send is not None:
                self.typing = ""
            case "c":
                self._spawn("uplink cut", self.link.cut())
            case "s":
                self._spawn("uplink stalled", self.link.stall())
            case "r":
                self._spawn("uplink restored", self.link.restore())
            case "b" if self.broker is not None:
                self._spawn("broker restarted", self.broker.restart())
            case "f":
                lamp = self.cabinet.lamp(devices[0])
                if lamp.failed:
                    self.cabinet.repair_lamp(devices[0])
                    self.last = f"{devices[0]} repaired"
                else:
                    self.cabinet.fail_lamp(devices[0])
                    self.last = f"{devices[0]} lamp failed"
            case "x" | "g" | "n" if self.cabinet.signal is not None:
                self._signal(key)
            case "o" | "t" | "v" if self.cabinet.cameras:
                self._camera(key)
            case "q":
                self._quit()
            case key if key in CABINET_KEYS:
                contact, on_words, off_words = CABINET_KEYS[key]
                active = not self._contacts.get(contact, contact == "mains")
                self._contacts[contact] = active
                if self.cabinet.iomodule is not None:
                    self.cabinet.iomodule.set_contact(contact, active)
                self._send_gpio(contact, active)
                self.last = on_words if active else off_words
            case digit if digit.isdigit() and 0 < int(digit) <= len(devices):
                name = devices[int(digit) - 1]
                device = self.cabinet.devices[name]
                if device.powered:
                    self.cabinet.power_off(name)
                    self.last = f"{name} switched off"
                else:
                    self.cabinet.power_on(name)
                    self.last = f"{name} switched on"
            case _:
                pass

    def _signal(self, key: str) -> None:
        """Toggle one of the junction's injectable conditions."""
        signal = self.cabinet.traffic_signal()
        junction = signal.junction
        match key:
            case "x":
                on, what = not junction.fault_flash, "fault flash"
                signal.set_fault_flash(on)
            case "g":
                on, what = not junction.mmu_fault, "MMU fault"
                signal.set_mmu_fault(on)
            case _:
                on, what = not junction.scheduled_flash, "scheduled flash"
                signal.set_scheduled_flash(on)
        self.last = f"{signal.name} {what} {'on' if on else 'off'}"

    def _camera(self, key: str) -> None:
        name, camera = next(iter(self.cabinet.cameras.items()))
        match key:
            case "o":
                camera.set_motion(not camera.motion)
                self.last = f"{name} motion {'on' if camera.motion else 'off'}"
            case "t":
                camera.set_tamper(not camera.tamper)
                self.last = f"{name} {'covered (tamper)' if camera.tamper else 'uncovered'}"
            case "v":
                on = not camera.powered
                self._spawn(f"{name} switched {'on' if on else 'off'}", camera.set_power(on))

    def _edit(self, key: str) -> None:
        match key:
            case "\r" | "\n":
                text, self.typing = (self.typing or "").strip(), None
                if text and self._send is not None:
                    self.last = f"sending: {text}"
                    self._spawn_send(text, self._send)
            case "\x1b":
                self.typing = None
            case "\x7f" | "\b":
                self.typing = (self.typing or "")[:-1]
            case _ if key.isprintable():
                self.typing = (self.typing or "") + key

    def _spawn_send(self, text: str, send: CommandSender) -> None:
        async def run() -> None:
            try:
                self.last = await send(text)
            except Exception as exc:  # shown to the user, the view keeps running
                self.last = f"{text}: {exc}"

        task = asyncio.create_task(run(), name="sim.command")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, done: str, action: Awaitable[None]) -> None:
        async def run() -> None:
            await action
            self.last = done

        task = asyncio.create_task(run(), name=f"sim.key[{done}]")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

"""A virtual street cabinet: lamps, a meter, a sensor and a contactor on one virtual RS-485 line.

::

    async with Cabinet(Scenario(lamps=4), clock=clock) as cab:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(cab.run(), name="sim.cabinet")
            ...  # point the agent at cab.agent_port
            cab.fail_lamp("lamp-02")

All devices answer on one pymodbus RTU server (an implementation independent
of the agent's codec) on the line's device end. A request for a unit that is
not in the cabinet, or whose device is powered off, gets no answer at all, as
on a real bus.

Model time comes from the injected :class:`agent.clock.Clock`: :meth:`Cabinet.run`
ticks every ``Scenario.tick`` seconds of that clock, so on a ``FakeClock`` the
model moves only when the test advances it. :meth:`Cabinet.tick` advances the
model by hand.

Every lamp of the scenario hangs on one lighting circuit, switched by the
contactor: while it is open the lamps draw nothing and give no light, but their
controllers (on the cabinet's permanent supply) keep answering with their
settings unchanged, and the meter sees the load go.
"""

from __future__ import annotations

import functools
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer

from agent.clock import Clock, SystemClock
from sim.camera import CameraSim
from sim.devices import Contactor, Device, EnvSensor, Lamp, Meter
from sim.devices.base import MAX_UNIT, MIN_UNIT, Snapshot
from sim.devices.lamp import MAX_LEVEL
from sim.devices.signal_controller import SignalController, V3User
from sim.iomodule import IoModuleProcess
from sim.serial_line import VirtualSerialLine

# Lines of one simulated cabinet: enough to measure how the agent scales.
MAX_LINES = 16
# Unit ids a Modbus line can address (serial spec §2.2: 1..247). A real RS-485
# segment carries 32 unit loads (TIA-485-A), 256 with 1/8-load transceivers, so
# a full line is a scale test rather than a street cabinet.
UNITS_PER_LINE = MAX_UNIT - MIN_UNIT + 1

METER_NAME = "meter"
ENV_NAME = "env"
CONTACTOR_NAME = "contactor"
IOMODULE_NAME = "cabinet"  # the agent's device name for the I/O module
IOMODULE_ROLE = "iomodule"  # its serial role in board/sim.toml
SIGNAL_NAME = "signal-01"
# The SNMPv2c community and SNMPv3 USM user of the simulated signal controller (the
# agent's configuration written by the simulator names the same).
SIGNAL_COMMUNITY = "armoire-sim"
SIGNAL_USER = V3User(user="armoire", auth_key="sim-auth-key", priv_key="sim-priv-key")

# Range of the contactor's operations counter at start: a lighting contactor
# switches twice a day, so a few years of service.
CONTACTOR_START_OPERATIONS = (1_000, 4_000)

SECONDS_PER_HOUR = 3600.0
# Cameras of one cabinet: a crossroads has a handful; 16 covers any street cabinet.
MAX_CAMERAS = 16
# The simulated cameras' ONVIF account (written into the agent's configuration).
CAMERA_USER = "armoire"
CAMERA_PASSWORD = "sim-camera-pw"  # noqa: S105 (a simulator's account)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What the cabinet holds and how it behaves. Same scenario and seed, same run."""

    lamps: int = 8
    """Number of lamp controllers, named lamp-01.. with units from ``first_lamp_unit``
    (skipping the units of the meter, sensor and contactor), spread over ``lines``."""
    lines: int = 1
    """RS-485 lines: the lamps are split evenly over them, in order; the meter, the
    sensor and the contactor are on the first."""
    meter: bool = True
    env: bool = True
    baudrate: int = 19200
    """Line speed: the devices' serial settings and, with ``wire_timing``, the pacing."""
    wire_timing: bool = True
    """Deliver bytes no faster than ``baudrate`` would (11 bits per character)."""
    seed: int = 1
    tick: float = 0.5
    """Model step of :meth:`Cabinet.run`, in seconds of the injected clock."""
    first_lamp_unit: int = 1
    meter_unit: int = 20
    env_unit: int = 30
    contactor: bool = True
    """Whether the lighting circuit is switched by a contactor on the line; without one,
    by the I/O module's lighting relay (if the cabinet has the module), else the lamps are
    wired straight to the supply (always energised)."""
    contactor_unit: int = 40
    signal: bool = True
    """Whether a traffic signal controller (NTCIP 1202 over SNMP) is on the cabinet LAN,
    as a real SNMP agent on a loopback UDP port (:attr:`Cabinet.signal`)."""
    lamp_rated_w: tuple[float, float] = (60.0, 90.0)
    """Range the (fixed, seeded) rated power of each lamp is drawn from, W."""
    lamp_start_hours: tuple[float, float] = (70_000.0, 90_000.0)
    """Range of each lamp's burning hours at start. Long-life LED modules; above
    65 535 on purpose, so a swapped word order (CDAB) shows in the readings."""
    meter_start_energy_wh: tuple[float, float] = (1_000_000.0, 50_000_000.0)
    """Range of the meter's import counter at start, Wh."""
    ambient_c: float = 25.0
    """Centre of the cabinet air temperature's random walk, °C."""
    cameras: int = 0
    """ONVIF cameras (cam-01..) on the cabinet LAN: HTTP servers on loopback
    (:class:`sim.camera.CameraSim`), not on the RS-485 lines."""
    other_load_w: float = 20.0
    """Power drawn on L1 besides the lamps (gateway, heater); negative = export
    (a solar panel), which makes the meter's total power negative."""
    iomodule: bool = True
    """Whether the cabinet has the I/O module (door, mains, UPS, surge arrester, relays):
    its real firmware in the MicroPython Unix port, on a serial line of its own."""
    iomodule_safe_after_ms: int = 5000
    """How long the module waits for the agent before putting its relays safe."""

    def __post_init__(self) -> None:
        if not 1 <= self.lines <= MAX_LINES:
            raise ValueError(f"lines must be 1..{MAX_LINES}, got {self.lines}")
        if self.lines > 1 and self.lamps < self.lines:
            raise ValueError(
                f"{self.lines} lines need at least as many lamps (one per line), got {self.lamps}"
            )
        if not 0 <= self.lamps <= self.max_lamps():
            raise ValueError(
                f"lamps must be 0..{self.max_lamps()} on {self.lines} line(s) "
                f"({UNITS_PER_LINE} Modbus unit ids per line, {len(self._others())} taken "
                f"by the meter, sensor and contactor), got {self.lamps}"
            )
        if not 0 <= self.cameras <= MAX_CAMERAS:
            raise ValueError(f"cameras must be 0..{MAX_CAMERAS}, got {self.cameras}")
        if self.baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {self.baudrate}")
        if self.tick <= 0:
            raise ValueError(f"tick must be positive, got {self.tick}")
        for label, (low, high) in (
            ("lamp_rated_w", self.lamp_rated_w),
            ("lamp_start_hours", self.lamp_start_hours),
            ("meter_start_energy_wh", self.meter_start_energy_wh),
        ):
            if not 0 <= low <= high:
                raise ValueError(f"{label} must be (low, high) with 0 <= low <= high")
        if self.lamp_rated_w[0] <= 0:
            raise ValueError("lamp_rated_w must be above 0 W")
        units = self.units()
        for name, unit in units.items():
            if not MIN_UNIT <= unit <= MAX_UNIT:
                raise ValueError(f"{name}: unit {unit} outside {MIN_UNIT}..{MAX_UNIT}")
        lines = self.line_of()
        seen = {(lines[name], unit) for name, unit in units.items()}
        if len(seen) != len(units):
            raise ValueError(f"two devices share a unit id on a line: {units}")

    def _others(self) -> dict[str, int]:
        others = {}
        if self.meter:
            others[METER_NAME] = self.meter_unit
        if self.env:
            others[ENV_NAME] = self.env_unit
        if self.contactor:
            others[CONTACTOR_NAME] = self.contactor_unit
        return others

    def max_lamps(self) -> int:
        """The most lamps the scenario's lines can address."""
        free = MAX_UNIT - self.first_lamp_unit + 1
        taken = sum(u >= self.first_lamp_unit for u in self._others().values())
        return max(0, free * self.lines - taken)

    def lamp_lines(self) -> list[int]:
        """The line (0-based) of each lamp, in order: contiguous, shares as even as the
        lines' free unit ids allow (the first line also carries the other devices)."""
        free = MAX_UNIT - self.first_lamp_unit + 1
        taken = sum(u >= self.first_lamp_unit for u in self._others().values())
        room = [free - taken] + [free] * (self.lines - 1)
        shares = [0] * self.lines
        for _ in range(self.lamps):
            open_lines = [i for i in range(self.lines) if shares[i] < room[i]]
            if not open_lines:
                break  # more lamps than unit ids: __post_init__ says so
            shares[min(open_lines, key=lambda i: (shares[i], i))] += 1
        return [line for line, share in enumerate(shares) for _ in range(share)]

    def units(self) -> dict[str, int]:
        """Unit id of every device in the scenario, by name."""
        others = self._others()
        taken = set(others.values())
        units: dict[str, int] = {}
        next_unit = [self.first_lamp_unit] * self.lines
        for i, line in enumerate(self.lamp_lines()):
            unit = next_unit[line]
            while line == 0 and unit in taken:
                unit += 1
            units[f"lamp-{i + 1:02d}"] = unit
            next_unit[line] = unit + 1
        units.update(others)
        return units

    def line_of(self) -> dict[str, int]:
        """The line (0-based) of every device, by name."""
        lines = {f"lamp-{i + 1:02d}": line for i, line in enumerate(self.lamp_lines())}
        lines.update(dict.fromkeys(self._others(), 0))
        return lines


class _SwitchedLamp(Lamp):
    """A lamp whose load hangs on the cabinet's lighting circuit.

    The controller stays on the permanent supply (it answers, keeps its
    settings); only the light and the power drawn depend on the circuit.
    """

    energised: bool = True
    """Whether the lighting circuit is live; the cabinet sets it on each tick."""

    @property
    def lit(self) -> bool:
        return self.energised and super().lit


class Cabinet:
    """The simulated cabinet: a :class:`VirtualSerialLine` and its devices.

    ``link_dir``, if given, gets a stable symlink ``link_dir/line_name`` to
    :attr:`agent_port` while the cabinet runs; with several lines
    (``Scenario.lines``), ``line_names`` names each (default ``line_name`` for
    the first, then ``<line_name>-2``...), and every line has its own devices'
    Modbus server.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        clock: Clock | None = None,
        link_dir: Path | None = None,
        line_name: str = "rs485_lamps",
        line_names: Sequence[str] | None = None,
    ) -> None:
        self.scenario = scenario or Scenario()
        self._clock: Clock = clock or SystemClock()
        # The simulated board's watchdog (board/sim.toml: dev/watchdog): a plain file the
        # agent appends a byte to at each feed, "V" on its magic close.
        self.watchdog = link_dir / "watchdog" if link_dir is not None else None
        sc = self.scenario
        if line_names is None:
            line_names = [line_name] + [f"{line_name}-{i + 1}" for i in range(1, sc.lines)]
        if len(line_names) != sc.lines:
            raise ValueError(f"{sc.lines} lines need as many names, got {list(line_names)}")
        self.line_names = list(line_names)
        self.lines = [
            VirtualSerialLine(
                baudrate=sc.baudrate if sc.wire_timing else None, link_dir=link_dir, name=name
            )
            for name in self.line_names
        ]
        self.line = self.lines[0]
        self.link_dir = link_dir
        self.iomodule_line = (
            VirtualSerialLine(link_dir=link_dir, name=IOMODULE_ROLE) if sc.iomodule else None
        )
        self.iomodule: IoModuleProcess | None = None
        self._iomodule_tmp: str | None = None
        self._servers: list[ModbusSerialServer] = []
        self._lamps: list[_SwitchedLamp] = []
        for name, unit in sc.units().items():
            if name.startswith("lamp-"):
                rng = self._rng(name)
                rated = round(rng.uniform(*sc.lamp_rated_w))
                hours = rng.uniform(*sc.lamp_start_hours)
                self._lamps.append(
                    _SwitchedLamp(
                        name=name,
                        unit=unit,
                        rated_w=rated,
                        rng=rng,
                        hours=hours,
                        # As if it had burned at about 80 % of rating all along.
                        energy_wh=hours * rated * 0.8,
                        ambient_c=sc.ambient_c,
                    )
                )
        # The air model always exists (the lamps' drivers sit in it); it is a
        # device on the line only if the scenario has the sensor.
        self._env = EnvSensor(
            name=ENV_NAME, unit=sc.env_unit, rng=self._rng(ENV_NAME), ambient_c=sc.ambient_c
        )
        self._meter: Meter | None = None
        if sc.meter:
            meter_rng = self._rng(METER_NAME)
            self._meter = Meter(
                name=METER_NAME,
                unit=sc.meter_unit,
                rng=meter_rng,
                energy_wh=meter_rng.uniform(*sc.meter_start_energy_wh),
            )
        self._contactor: Contactor | None = None
        if sc.contactor:
            self._contactor = Contactor(
                name=CONTACTOR_NAME,
                unit=sc.contactor_unit,
                operations=self._rng(CONTACTOR_NAME).randint(*CONTACTOR_START_OPERATIONS),
            )
        self.devices: dict[str, Device] = {lamp.name: lamp for lamp in self._lamps}
        if self._meter is not None:
            self.devices[METER_NAME] = self._meter
        if sc.env:
            self.devices[ENV_NAME] = self._env
        if self._contactor is not None:
            self.devices[CONTACTOR_NAME] = self._contactor
        # Not on a serial line: an IP device with its own SNMP agent, started with the lines.
        self.signal: SignalController | None = None
        if sc.signal:
            self.signal = SignalController(
                name=SIGNAL_NAME, community=SIGNAL_COMMUNITY, v3_users=(SIGNAL_USER,)
            )
        # Cameras: own HTTP servers on loopback, started with the cabinet.
        self.cameras: dict[str, CameraSim] = {
            f"cam-{i:02d}": CameraSim(
                name=f"cam-{i:02d}", username=CAMERA_USER, password=CAMERA_PASSWORD
            )
            for i in range(1, sc.cameras + 1)
        }
        self._line_of = sc.line_of()
        self._by_unit: list[dict[int, Device]] = [{} for _ in self.lines]
        for device in self.devices.values():
            self._by_unit[self._line_of[device.name]][device.unit] = device
        # Settle every measurement so the registers are meaningful before the first tick.
        self.tick(0.0)

    def _rng(self, name: str) -> random.Random:
        # One stream per device, so adding a device does not change the others.
        return random.Random(f"{self.scenario.seed}/{name}")

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Open the lines and start each line's Modbus server on its device end."""
        if self.watchdog is not None:
            self.watchdog.parent.mkdir(parents=True, exist_ok=True)
            self.watchdog.write_bytes(b"")
        try:
            for camera in self.cameras.values():
                await camera.__aenter__()
            for index, line in enumerate(self.lines):
                await line.start()
                devices = self._by_unit[index]
                server = ModbusSerialServer(
                    [device.simdevice() for device in devices.values()],
                    framer=FramerType.RTU,
                    port=line.device_port,
                    baudrate=self.scenario.baudrate,
                    trace_pdu=functools.partial(self._admit_request, devices),
                )
                await server.serve_forever(background=True)
                self._servers.append(server)
            if self.iomodule_line is not None:
                await self._start_iomodule(self.iomodule_line)
            if self.signal is not None:
                self.signal.start()
        except BaseException:
            await self.close()
            raise

    async def _start_iomodule(self, line: VirtualSerialLine) -> None:
        await line.start()
        if self.link_dir is not None:
            hw_dir, log_file = self.link_dir / "iomodule-hw", self.link_dir / "iomodule.log"
        else:
            self._iomodule_tmp = tempfile.mkdtemp(prefix="armoire-iomodule-")
            hw_dir, log_file = Path(self._iomodule_tmp) / "hw", None
        self.iomodule = IoModuleProcess(
            port=line.device_port,
            hw_dir=hw_dir,
            safe_after_ms=self.scenario.iomodule_safe_after_ms,
            log_file=log_file,
        )
        await self.iomodule.start()

    async def close(self) -> None:
        """Stop the servers and close the lines. Idempotent."""
        if self.iomodule is not None:
            await self.iomodule.close()  # kills the firmware's process group
        if self.iomodule_line is not None:
            await self.iomodule_line.close()
        if self._iomodule_tmp is not None:
            shutil.rmtree(self._iomodule_tmp, ignore_errors=True)
            self._iomodule_tmp = None
        if self.signal is not None:
            self.signal.close()
        servers, self._servers = self._servers, []
        for server in servers:
            await server.shutdown()  # type: ignore[no-untyped-call]
        for line in self.lines:
            await line.close()
        for camera in self.cameras.values():
            await camera.__aexit__(None, None, None)

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

    def watchdog_feeds(self) -> int:
        """How many times the agent fed the simulated watchdog since the cabinet started."""
        if self.watchdog is None or not self.watchdog.exists():
            return 0
        return self.watchdog.read_bytes().count(b"\0")

    @property
    def agent_port(self) -> str:
        """Path of the serial port the agent opens."""
        return self.line.agent_port

    # -- model -------------------------------------------------------------

    async def run(self) -> None:
        """Tick the model every ``scenario.tick`` seconds of the clock, forever."""
        last = self._clock.monotonic()
        while True:
            await self._clock.sleep(self.scenario.tick)
            now = self._clock.monotonic()
            self.tick(now - last)
            last = now

    def tick(self, dt: float) -> None:
        """Advance the whole model by ``dt`` seconds."""
        if dt < 0:
            raise ValueError(f"dt must be >= 0, got {dt}")
        if self.signal is not None:
            self.signal.tick(dt)
        other = self.scenario.other_load_w
        load = sum(lamp.power_w for lamp in self._lamps) + other
        self._env.tick(dt, load_w=load)
        # The contacts move first, so the lamps and the meter see the circuit
        # as the contactor reports it after this same tick.
        energised = True
        if self._contactor is not None:
            self._contactor.tick(dt)
            energised = self._contactor.closed
        elif self.iomodule is not None:
            # No Modbus contactor: the I/O module's lighting relay drives the coil.
            energised = self.iomodule.relay("relay_lighting") is not False
        for lamp in self._lamps:
            lamp.energised = energised
            lamp.tick(dt, ambient_c=self._env.air_temperature_c)
        if self._meter is not None:
            phases = [0.0, 0.0, 0.0]
            # Lamps are wired round-robin across the phases: lamp-01 on L1,
            # lamp-02 on L2, lamp-03 on L3, lamp-04 on L1, ...
            for index, lamp in enumerate(self._lamps):
                phases[index % 3] += lamp.power_w
            phases[0] += other
            self._meter.tick(dt, phase_power_w=(phases[0], phases[1], phases[2]))

    # -- control -----------------------------------------------------------

    def snapshot(self) -> dict[str, Snapshot]:
        """Every device's :meth:`~sim.devices.Device.snapshot`, by name."""
        snap = {name: device.snapshot() for name, device in self.devices.items()}
        if self.signal is not None:
            snap[self.signal.name] = dict(self.signal.snapshot())
        return snap

    @property
    def device_names(self) -> list[str]:
        """Every device: the serial ones, then the signal controller and cameras (LAN)."""
        return [
            *self.devices,
            *([self.signal.name] if self.signal is not None else []),
            *self.cameras,
        ]

    def power_off(self, name: str) -> None:
        """Cut a device's supply: it stops answering (no reply at all).

        A lamp controller's lamp goes dark with it; a meter stops counting; the
        contactor's relay module releases the coil, so the lighting circuit
        opens (from the next tick).
        """
        if self.signal is not None and name == self.signal.name:
            self.signal.stop()
            return
        self._device(name).powered = False

    def power_on(self, name: str) -> None:
        """Restore a device's supply; it answers again with its settings kept."""
        if self.signal is not None and name == self.signal.name:
            self.signal.start()
            return
        self._device(name).powered = True

    def traffic_signal(self) -> SignalController:
        """The junction's controller (``ValueError`` if the scenario has none)."""
        if self.signal is None:
            raise ValueError("this cabinet has no signal controller (Scenario.signal is false)")
        return self.signal

    def fail_lamp(self, name: str) -> None:
        """Break a lamp: from the next tick it draws 0 W and reports failure=1."""
        self.lamp(name).failed = True

    def repair_lamp(self, name: str) -> None:
        """Replace a broken lamp; from the next tick it follows its settings again."""
        self.lamp(name).failed = False

    def set_level(self, name: str, pct: int) -> None:
        """Change a lamp's dimming level locally, as a switch in the cabinet would."""
        if not 0 <= pct <= MAX_LEVEL:
            raise ValueError(f"{name}: level must be 0..{MAX_LEVEL}, got {pct}")
        self.lamp(name).level = pct

    @property
    def contactor(self) -> Contactor:
        """The lighting circuit's contactor (``ValueError`` if the scenario has none)."""
        if self._contactor is None:
            raise ValueError("this cabinet has no contactor (Scenario.contactor is false)")
        return self._contactor

    def lamp(self, name: str) -> Lamp:
        """The lamp called ``name``."""
        device = self._device(name)
        if not isinstance(device, Lamp):
            raise ValueError(f"{name} is a {device.model}, not a lamp")
        return device

    def device_table(self) -> list[dict[str, str | int]]:
        """One row per device (name, model, unit, line name), for the agent's config."""
        return [
            {
                "name": device.name,
                "model": device.model,
                "unit": device.unit,
                "line": self.line_names[self._line_of[device.name]],
            }
            for device in self.devices.values()
        ]

    def _device(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            known = ", ".join(self.devices) or "none"
            raise KeyError(f"no device {name!r} in this cabinet (have: {known})") from None

    def _admit_request(
        self, devices: dict[int, Device], sending: bool, pdu: ModbusPDU
    ) -> ModbusPDU:
        # pymodbus 3.16 calls this on every decoded request (sending=False) and
        # skips the request when it returns a falsy value. Without this filter
        # it answers a unit it does not know with exception 4 (its lookup
        # raises KeyError, which it reports as DEVICE FAILURE).
        if sending:
            return pdu
        device = devices.get(pdu.dev_id)
        if device is None or not device.powered:
            return None  # type: ignore[return-value]
        return pdu

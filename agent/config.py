"""The gateway configuration: one TOML file, validated once at start into frozen objects.

DESIGN.md, "Configuration": a bad configuration never starts a half-working agent.
:func:`load_config` reads the file, the board it names and the profiles of its devices,
and reports every problem at once, each as ``file: key.path: problem`` (with a "did you
mean" for unknown keys), in a :class:`ConfigError`. After that, code reads typed
attributes; nothing digs in raw dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

from agent.board import Board, BoardError, SerialPort, load_board
from agent.commands import DEFAULT_POLICIES, OPS, RolePolicy
from agent.lighting import DEFAULT_PROGRAM, Program, parse_lighting
from agent.logsetup import DEFAULT_LEVEL, LEVELS
from agent.rules import Rule, default_rules, parse_rules
from agent.security.trust import ROLES
from drivers.driver import Driver, ParseContext
from drivers.point import Model, PointSpec
from drivers.profile import (
    Problems,
    SchemaError,
    Section,
    did_you_mean,
    is_builtin_ref,
    read_toml,
    show,
)
from drivers.registry import DRIVERS

# PROTOCOL.md, Transport: the gateway id is a topic level, [a-z0-9-]{1,64}.
_GATEWAY_ID: Final = re.compile(r"[a-z0-9-]{1,64}")
_GATEWAY_ID_TEXT: Final = 'a gateway id: 1 to 64 of a-z, 0-9, "-"'
_DEVICE_NAME: Final = re.compile(r"[a-z0-9-]{1,32}")
_DEVICE_NAME_TEXT: Final = 'a device name: 1 to 32 of a-z, 0-9, "-"'
# IANA service names "mqtt" and "secure-mqtt".
MQTT_PORT: Final = 1883
MQTTS_PORT: Final = 8883
# MQTT 5.0 §3.1.2.11.2: the Session Expiry Interval is a four-byte integer (seconds).
MAX_SESSION_EXPIRY: Final = 0xFFFF_FFFF
MIB: Final = 1024 * 1024


class ConfigError(SchemaError):
    """The configuration is invalid. ``errors`` lists every problem, one line each, as
    ``file: key.path: problem``; ``str()`` is those lines joined by newlines."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteConfig:
    """Where the cabinet stands: for the astronomical lighting schedule and local time."""

    latitude: float
    longitude: float
    timezone: str

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkConfig:
    """The MQTT session to the central post (``tls`` for an ``mqtts://`` broker)."""

    broker: str
    host: str
    port: int
    tls: bool
    keepalive: int
    session_expiry: int
    reconnect_min: float
    reconnect_max: float
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    """The outbox: where it lives, how telemetry is batched, and its capacity in bytes."""

    data_dir: Path
    batch_interval: float
    telemetry_delay: float
    batch_max: int
    capacity_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PollingConfig:
    """Bus scheduler settings shared by every device."""

    response_timeout: float
    miss_limit: int
    backoff_max: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandsConfig:
    """How commands from the central post are checked and held (``[commands]``, optional).

    Seconds throughout. ``policies`` is what each role may do over MQTT: the defaults of
    :data:`agent.commands.DEFAULT_POLICIES`, narrowed by ``[commands.roles.<role>]``.
    """

    clock_skew: float
    hold_default: float
    hold_max: float
    max_validity: float
    policies: Mapping[str, RolePolicy]
    # Seconds between summaries of unauthenticated input (PROTOCOL.md, "Unauthenticated input").
    unauthenticated_summary: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Logging (``[log]``, optional); ``--log-level`` on the command line wins over it."""

    level: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailsafeConfig:
    """The local fail-safe layer (``[failsafe]``, optional). Seconds throughout.

    ``autonomous_after``: uplink down this long and the gateway enters autonomous mode.
    ``clock_max_jump``: a wall-clock step larger than this against the monotonic clock
    makes the wall clock untrusted. ``clock_ntp``: also trust the wall clock only while the
    kernel says NTP keeps it synchronised. ``loop_deadline``: a critical loop silent this
    long stops the watchdog's feeding (the board then resets the gateway).
    """

    autonomous_after: float
    clock_max_jump: float
    clock_ntp: bool
    loop_deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """One field device: its driver, its model, its poll period, and the driver's own
    settings (where the device is: a serial line and a unit address, a host...)."""

    name: str
    driver: str
    profile: Model
    poll: float
    settings: object

    @property
    def bus(self) -> str:
        """The medium the device is on, shared with others (a serial role, a host)."""
        return DRIVERS[self.driver].bus_of(self.settings)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The effective configuration. ``digest`` is the SHA-256 sent in the Birth message."""

    source: Path
    gateway: str
    site: SiteConfig
    board: Board
    uplink: UplinkConfig
    storage: StorageConfig
    polling: PollingConfig
    commands: CommandsConfig
    devices: tuple[DeviceConfig, ...]
    log: LogConfig
    rules: tuple[Rule, ...]
    lighting: tuple[Program, ...]
    failsafe: FailsafeConfig
    digest: bytes

    def points(self) -> list[tuple[str, DeviceConfig, PointSpec]]:
        """Every point as ``("device/point", device, spec)``, in configuration order."""
        return [
            (f"{device.name}/{spec.name}", device, spec)
            for device in self.devices
            for spec in device.profile.points
        ]


def load_config(path: Path) -> Config:
    """Read and validate the configuration file at ``path``.

    Relative paths inside it (board, base_dir, profiles, data_dir, TLS files) are taken
    relative to the file's folder. Raises :class:`ConfigError` with every problem found.
    """
    problems = Problems(str(path))
    data = read_toml(path, problems)
    if data is None:
        raise ConfigError(problems.errors)
    here = path.absolute().parent
    root = Section(problems, "", data)
    gateway = root.string("gateway", pattern=_GATEWAY_ID, expected=_GATEWAY_ID_TEXT)
    site = _site(root.table("site"))
    board = _board(root.table("board"), here)
    uplink = _uplink(root.table("uplink"), here)
    storage = _storage(root.table("storage"), here)
    polling = _polling(root.table("polling", required=False))
    commands = _commands(root.table("commands", required=False))
    log_config = _log(root.table("log", required=False))
    devices = _devices(root.tables("devices", required=False), board, here)
    # The shipped rule set applies unless the file has its own [[rules]] (DESIGN.md, Rules).
    rules = parse_rules(root.tables("rules")) if root.has("rules") else default_rules()
    failsafe = _failsafe(root.table("failsafe", required=False))
    # With no program: on at sunset, off at sunrise, every lamp and the contactor;
    # `lighting = []` for a cabinet whose lamps the schedule must not drive.
    lighting = (
        parse_lighting(root.tables("lighting", required=False))
        if root.has("lighting")
        else (DEFAULT_PROGRAM,)
    )
    root.close()
    if problems.errors or board is None:
        raise ConfigError(problems.errors)
    config = Config(
        source=path,
        gateway=gateway,
        site=site,
        board=board,
        uplink=uplink,
        storage=storage,
        polling=polling,
        commands=commands,
        devices=devices,
        log=log_config,
        rules=rules,
        lighting=lighting,
        failsafe=failsafe,
        digest=b"",
    )
    return dataclasses.replace(config, digest=_digest(config))


def _site(sec: Section) -> SiteConfig:
    site = SiteConfig(
        latitude=sec.number("latitude", -90, 90),
        longitude=sec.number("longitude", -180, 180),
        timezone=sec.string("timezone", expected='an IANA time zone, e.g. "Europe/Paris"'),
    )
    if sec.ok("timezone"):
        try:
            zoneinfo.ZoneInfo(site.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            hint = did_you_mean(site.timezone, zoneinfo.available_timezones())
            sec.error("timezone", f"unknown time zone {show(site.timezone)}{hint}")
    sec.close()
    return site


def _board(sec: Section, here: Path) -> Board | None:
    file = sec.string("file", expected="a built-in board name or a path to a board file")
    base_dir = here / sec.string("base_dir", default=".")
    sec.close()
    if not sec.ok("file"):
        return None
    try:
        return load_board(file if is_builtin_ref(file) else here / file, base_dir=base_dir)
    except BoardError as exc:
        for line in exc.errors:
            sec.error("file", line)
        return None


def _parse_broker(url: str) -> tuple[str, int, bool] | str:
    """(host, port, tls) from ``mqtt://host[:port]`` / ``mqtts://host[:port]``, or a problem."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        return f"expected mqtt://host[:port] or mqtts://host[:port], got {show(url)}"
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"expected only a scheme, a host and a port, got {show(url)}"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"expected a port 1..65535, got {show(url)}"
    return parts.hostname, port or (MQTTS_PORT if tls else MQTT_PORT), tls


def _uplink(sec: Section, here: Path) -> UplinkConfig:
    broker = sec.string("broker", expected="an mqtt:// or mqtts:// URL")
    host, port, tls = "", MQTT_PORT, False
    if sec.ok("broker"):
        match _parse_broker(broker):
            case str(problem):
                sec.error("broker", problem)
            case (str(host), int(port), bool(tls)):
                pass
    reconnect_min = sec.number("reconnect_min", 0.1, 3600, default=1.0)
    reconnect_max = sec.number("reconnect_max", 0.1, 86400, default=60.0)
    if sec.ok("reconnect_min") and sec.ok("reconnect_max") and reconnect_max < reconnect_min:
        sec.error("reconnect_max", f"must be >= reconnect_min ({reconnect_min:g})")
    files = {key: _existing_file(sec, key, here) for key in ("ca_file", "cert_file", "key_file")}
    for key, file in files.items():
        if file is not None and sec.ok("broker") and not tls:
            sec.error(key, "only used with an mqtts:// broker")
    if (files["cert_file"] is None) != (files["key_file"] is None):
        missing = "key_file" if files["key_file"] is None else "cert_file"
        sec.error(missing, "missing; cert_file and key_file go together (client certificate)")
    uplink = UplinkConfig(
        broker=broker,
        host=host,
        port=port,
        tls=tls,
        keepalive=sec.integer("keepalive", 5, 3600, default=30),
        session_expiry=sec.integer("session_expiry", 0, MAX_SESSION_EXPIRY, default=86400),
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
    )
    sec.close()
    return uplink


def _existing_file(sec: Section, key: str, here: Path) -> Path | None:
    if not sec.has(key):
        return None
    path = here / sec.string(key, expected="a file path")
    if sec.ok(key) and not path.is_file():
        sec.error(key, f"file not found: {path}")
    return path


def _storage(sec: Section, here: Path) -> StorageConfig:
    storage = StorageConfig(
        data_dir=here / sec.string("data_dir", expected="a directory path"),
        batch_interval=sec.number("batch_interval", 0.05, 60, default=1.0),
        # Longest a committed reading waits to be sealed into a signed Telemetry message:
        # fewer, larger messages share the envelope (~130 B) over more readings.
        telemetry_delay=sec.number("telemetry_delay", 0.05, 3600, default=10.0),
        batch_max=sec.integer("batch_max", 1, 10_000, default=500),
        # Fractions of a MiB are allowed so tests can fill an outbox quickly.
        capacity_bytes=int(sec.number("capacity_mb", 0.001, 1_000_000, default=512) * MIB),
    )
    if storage.telemetry_delay < storage.batch_interval and sec.ok("telemetry_delay"):
        sec.error(
            "telemetry_delay",
            f"must be at least batch_interval ({storage.batch_interval:g} s)",
        )
    sec.close()
    return storage


def _log(sec: Section) -> LogConfig:
    log_config = LogConfig(level=sec.choice("level", LEVELS, default=DEFAULT_LEVEL))
    sec.close()
    return log_config


def _failsafe(sec: Section) -> FailsafeConfig:
    failsafe = FailsafeConfig(
        # Ten minutes: longer than a broker restart or a cellular hand-over, short enough
        # that the control room's silence is not mistaken for its consent for long.
        autonomous_after=sec.number("autonomous_after", 1, 86400, default=600.0),
        # NTP steps a drifting RTC by seconds; a step of minutes is an RTC reset or a
        # hostile time source.
        clock_max_jump=sec.number("clock_max_jump", 1, 86400, default=120.0),
        clock_ntp=sec.boolean("ntp", default=False),
        # A poll cycle with retries and backoff fits well within a minute; the board's
        # watchdog (30 s on armoire-gw1) then resets a gateway stuck past that.
        loop_deadline=sec.number("loop_deadline", 5, 3600, default=90.0),
    )
    sec.close()
    return failsafe


def _polling(sec: Section) -> PollingConfig:
    polling = PollingConfig(
        response_timeout=sec.number("response_timeout", 0.01, 10, default=0.3),
        miss_limit=sec.integer("miss_limit", 1, 100, default=3),
        backoff_max=sec.number("backoff_max", 1, 3600, default=60.0),
    )
    sec.close()
    return polling


# Limits of [commands], in seconds. Skew: NTP keeps a gateway within a second; 10 minutes
# still accepts a cabinet whose RTC drifted for weeks without making expired commands usable.
CLOCK_SKEW_RANGE: Final = (0, 600)
HOLD_DEFAULT_RANGE: Final = (1, 86400)  # up to a day: a write must lapse (DESIGN.md, Principles)
HOLD_MAX_RANGE: Final = (1, 604800)  # up to a week, e.g. a lamp kept off for road works
MAX_VALIDITY_RANGE: Final = (1, 604800)  # ids are remembered this long (DESIGN.md, Security)
# One summary Event per interval is what a flood of junk costs the flash: not too often.
SUMMARY_RANGE: Final = (1, 3600)


def _commands(sec: Section) -> CommandsConfig:
    commands = CommandsConfig(
        clock_skew=sec.number("clock_skew", *CLOCK_SKEW_RANGE, default=30.0),
        hold_default=sec.number("hold_default", *HOLD_DEFAULT_RANGE, default=600.0),
        hold_max=sec.number("hold_max", *HOLD_MAX_RANGE, default=3600.0),
        max_validity=sec.number("max_validity", *MAX_VALIDITY_RANGE, default=3600.0),
        policies=_policies(sec.table("roles", required=False)),
        unauthenticated_summary=sec.number("unauthenticated_summary", *SUMMARY_RANGE, default=60.0),
    )
    if sec.ok("hold_default") and sec.ok("hold_max") and commands.hold_max < commands.hold_default:
        sec.error("hold_max", f"must be >= hold_default ({commands.hold_default:g})")
    sec.close()
    return commands


def _policies(sec: Section) -> Mapping[str, RolePolicy]:
    """The default policies, each narrowed by its ``[commands.roles.<role>]`` table."""
    policies = dict(DEFAULT_POLICIES)
    for role, rsec in sec.subtables():
        default = DEFAULT_POLICIES.get(role)
        if default is not None:
            policies[role] = _narrowed(rsec, role, default)
        elif role in ROLES:
            sec.error(role, f"role {show(role)} has no commands over MQTT to narrow (console only)")
        else:
            known = ", ".join(show(r) for r in DEFAULT_POLICIES)
            sec.error(
                role, f"unknown role {show(role)}{did_you_mean(role, ROLES)} (roles: {known})"
            )
    return MappingProxyType(policies)


def _narrowed(sec: Section, role: str, default: RolePolicy) -> RolePolicy:
    """A role's policy from its table: each key may only narrow the default, never widen it."""
    lo, hi = default.priorities
    priorities = default.priorities
    if sec.has("priorities"):
        value = sec.raw("priorities")
        expected = f"[low, high] with {lo} <= low <= high <= {hi}"
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(type(v) is not int for v in value)
            or value[0] > value[1]
        ):
            sec.error("priorities", f"expected {expected}, got {_toml(value)}")
        elif value[0] < lo or value[1] > hi:
            sec.error(
                "priorities",
                f"{_toml(value)} widens the default {lo}..{hi} of role {show(role)}; "
                f"expected {expected}",
            )
        else:
            priorities = (value[0], value[1])
    ops = frozenset(_strings(sec, "ops", tuple(sorted(default.ops)), choices=OPS))
    if sec.ok("ops") and not ops <= default.ops:
        sec.error("ops", f"widens the default ops of role {show(role)}")
    points = _strings(sec, "points", default.points)
    actions = _strings(sec, "actions", default.actions)
    for key, patterns, allowed in (
        ("points", points, default.points),
        ("actions", actions, default.actions),
    ):
        # A pattern is within the default if the default allows everything or lists it as is.
        wider = [p for p in patterns if "*" not in allowed and p not in allowed]
        if sec.ok(key) and wider:
            sec.error(key, f"{show(wider[0])} widens the default {key} of role {show(role)}")
    sec.close()
    # Each value above is the default unless it was valid, so this never fails to build.
    return RolePolicy(priorities, ops, points, actions, default.reserved)


def _strings(
    sec: Section, key: str, default: tuple[str, ...], *, choices: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """An array of non-empty strings (each one of ``choices`` when given)."""
    if not sec.has(key):
        return default
    value = sec.raw(key)
    expected = "an array of " + (
        "strings among " + ", ".join(show(c) for c in choices) if choices else "non-empty strings"
    )
    if not isinstance(value, list) or any(
        not isinstance(v, str) or not v or (choices and v not in choices) for v in value
    ):
        sec.error(key, f"expected {expected}, got {_toml(value)}")
        return default
    return tuple(value)


def _toml(value: object) -> str:
    """A short TOML-like rendering of an array (``show`` says only "an array")."""
    if isinstance(value, list) and len(value) <= 4:
        return "[" + ", ".join(show(v) for v in value) + "]"
    return show(value)


def _devices(sections: list[Section], board: Board | None, here: Path) -> tuple[DeviceConfig, ...]:
    devices: list[DeviceConfig] = []
    names: dict[str, int] = {}
    claims: dict[tuple[object, ...], tuple[str, int]] = {}
    profiles: dict[tuple[str, str], Model | None] = {}  # one load (and report) per file
    for index, sec in enumerate(sections):
        mark = sec.problems.mark()
        name = sec.string("name", pattern=_DEVICE_NAME, expected=_DEVICE_NAME_TEXT)
        driver_name = sec.choice("driver", tuple(DRIVERS))
        ref = sec.string("profile", expected="a built-in profile name or a path to a .toml file")
        poll = sec.number("poll", 0.05, 86400, default=1.0)
        driver = DRIVERS[driver_name] if sec.ok("driver") else None
        settings = None
        if driver is not None:
            ctx = ParseContext(
                name=name,
                index=index,
                here=here,
                serial_port=lambda s, role: _serial_port(s, role, board),
                claims=claims,
            )
            settings = driver.parse(sec, ctx)
        else:
            sec.skip_unread()
        sec.close()

        if sec.ok("name"):
            if name in names:
                sec.error(
                    "name", f"duplicate device name {show(name)} (also devices[{names[name]}])"
                )
            names.setdefault(name, index)
        profile = (
            _profile(sec, driver, ref, here, profiles)
            if driver is not None and sec.ok("profile")
            else None
        )
        if sec.problems.clean_since(mark) and settings is not None and profile is not None:
            devices.append(
                DeviceConfig(
                    name=name, driver=driver_name, profile=profile, poll=poll, settings=settings
                )
            )
    return tuple(devices)


def _serial_port(sec: Section, role: str, board: Board | None) -> SerialPort | None:
    """The board's serial port ``role`` names (key ``line``), or None after a problem."""
    if board is None:  # its problems are reported under board.file
        return None
    roles = ", ".join(show(r) for r in board.serial)
    if role.startswith("/dev/"):
        owners = [r for r, port in board.serial.items() if str(port.device) == role]
        hint = f"; did you mean {show(owners[0])}?" if owners else f" (serial roles: {roles})"
        sec.error("line", f"{show(role)} is a device path; name a serial role of the board{hint}")
        return None
    port = board.serial.get(role)
    if port is None:
        sec.error(
            "line",
            f"no serial role {show(role)} on board {show(board.name)}"
            f"{did_you_mean(role, board.serial)} (serial roles: {roles})",
        )
        return None
    if role == board.console:
        sec.error("line", f"serial role {show(role)} is the board's technician console")
        return None
    return port


def _profile(
    sec: Section,
    driver: Driver,
    ref: str,
    here: Path,
    profiles: dict[tuple[str, str], Model | None],
) -> Model | None:
    key = (driver.name, ref if is_builtin_ref(ref) else str(here / ref))
    if key in profiles:
        return profiles[key]
    try:
        profiles[key] = driver.load_profile(ref, here)
    except SchemaError as exc:
        profiles[key] = None
        for line in exc.errors:
            sec.error("profile", line)
    return profiles[key]


def _plain(value: object) -> object:
    """JSON-ready form of the effective configuration (dataclasses by field, paths as text)."""
    match value:
        case None | bool() | int() | float() | str():
            return value
        case Path():
            return str(value)
        case bytes():
            return value.hex()
        case Mapping():
            return {str(k): _plain(v) for k, v in value.items()}
        case tuple() | list():
            return [_plain(v) for v in value]
        case frozenset():
            return sorted((_plain(v) for v in value), key=repr)
        case _ if dataclasses.is_dataclass(value) and not isinstance(value, type):
            # Where a file was read from is not configuration, its content is; and the
            # digest cannot cover itself.
            return {
                f.name: _plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.name not in ("source", "digest")
            }
        case _:
            raise TypeError(f"no canonical form for {type(value).__name__}")


def _digest(config: Config) -> bytes:
    """SHA-256 of the canonical JSON of the effective configuration (sorted keys, no spaces)."""
    text = json.dumps(
        _plain(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).digest()

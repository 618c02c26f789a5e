"""Gateway configuration: a valid file loads into typed objects; every mistake is reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.board import load_board
from agent.commands import DEFAULT_POLICIES, RolePolicy
from agent.config import (
    CommandsConfig,
    Config,
    ConfigError,
    PollingConfig,
    SiteConfig,
    StorageConfig,
    UplinkConfig,
    load_config,
)
from drivers.modbus.rtu import RtuSettings
from drivers.profile import load_profile

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"

BASE = """\
gateway = "cab-0001"

[site]
latitude = 45.764
longitude = 4.8357
timezone = "Europe/Paris"

[board]
file = "sim"

[uplink]
broker = "mqtt://127.0.0.1:1883"

[storage]
data_dir = "data"

[[devices]]
name = "lamp-01"
driver = "modbus-rtu"
line = "rs485_1"
address = 1
profile = "lamp-ctl"

[[devices]]
name = "lamp-02"
driver = "modbus-rtu"
line = "rs485_1"
address = 2
profile = "lamp-ctl"
"""
SITE = '[site]\nlatitude = 45.764\nlongitude = 4.8357\ntimezone = "Europe/Paris"\n'


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a scratch folder so error lines start with "gateway.toml: " as a user types it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_text(text: str) -> Config:
    Path("gateway.toml").write_text(text, encoding="utf-8")
    return load_config(Path("gateway.toml"))


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def edit(old: str, new: str, *, count: int = 1) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, count)


# ------------------------------------------------------------------ a valid configuration


def test_load_config__fixture_loads_into_typed_objects() -> None:
    """A correct file gives the agent every setting, typed, with paths made absolute."""
    config = load_config(FIXTURES / "good.toml")
    assert config.source == FIXTURES / "good.toml"
    assert config.gateway == "cab-0001"
    assert config.site == SiteConfig(latitude=45.764, longitude=4.8357, timezone="Europe/Paris")
    assert config.site.zone.key == "Europe/Paris"
    assert config.uplink == UplinkConfig(
        broker="mqtt://127.0.0.1:1883",
        host="127.0.0.1",
        port=1883,
        tls=False,
        keepalive=30,
        session_expiry=86400,
        reconnect_min=1.0,
        reconnect_max=60.0,
        ca_file=None,
        cert_file=None,
        key_file=None,
    )
    assert config.storage == StorageConfig(
        data_dir=FIXTURES / "data",
        batch_interval=1.0,
        telemetry_delay=10.0,
        batch_max=500,
        capacity_bytes=64 * 2**20,
    )
    assert config.polling == PollingConfig(response_timeout=0.3, miss_limit=3, backoff_max=60.0)
    assert config.board == load_board("sim", base_dir=FIXTURES / "sim-data")
    assert [
        (d.name, d.settings.line.role, d.settings.address, d.profile.name, d.poll)
        for d in config.devices
        if isinstance(d.settings, RtuSettings)
    ] == [
        ("lamp-01", "rs485_1", 1, "lamp-ctl", 1.0),
        ("lamp-02", "rs485_1", 2, "lamp-ctl", 1.0),
        ("meter", "rs485_1", 10, "meter-3ph", 5.0),
        ("env", "rs485_1", 20, "env-sensor", 30.0),
        ("fan", "rs485_1", 30, "fan-ctl", 1.0),
    ]
    lamp = config.devices[0]
    assert lamp.driver == "modbus-rtu"
    assert isinstance(lamp.settings, RtuSettings)
    assert lamp.bus == "rs485_1"
    assert lamp.settings.line.device == FIXTURES / "sim-data" / "dev" / "rs485_1"
    assert lamp.profile is load_profile("lamp-ctl")
    assert config.devices[4].profile == load_profile("fan-ctl.toml", base_dir=FIXTURES)


def test_config_points__every_device_point_by_name() -> None:
    """The points table and the birth message see every point as "device/point"."""
    config = load_config(FIXTURES / "good.toml")
    points = config.points()
    names = [name for name, _, _ in points]
    assert names[:7] == [
        "lamp-01/level",
        "lamp-01/on",
        "lamp-01/failure",
        "lamp-01/power",
        "lamp-01/energy",
        "lamp-01/hours",
        "lamp-01/driver_temp",
    ]
    assert names[-2:] == ["fan/speed", "fan/inlet_temp"]
    assert len(names) == len(set(names)) == 7 + 7 + 8 + 2 + 2
    _, device, spec = points[-1]
    assert (device.name, spec.name, spec.unit) == ("fan", "inlet_temp", "°C")


def test_load_config__defaults_for_optional_settings(workdir: Path) -> None:
    """A short file gets the documented defaults, and the board resolves next to the file."""
    config = load_text(BASE)
    assert config.uplink.keepalive == 30
    assert config.uplink.session_expiry == 86400
    assert (config.uplink.reconnect_min, config.uplink.reconnect_max) == (1.0, 60.0)
    assert config.storage == StorageConfig(
        data_dir=workdir / "data",
        batch_interval=1.0,
        telemetry_delay=10.0,
        batch_max=500,
        capacity_bytes=512 * 2**20,
    )
    assert config.polling == PollingConfig(response_timeout=0.3, miss_limit=3, backoff_max=60.0)
    assert config.devices[0].poll == 1.0
    assert config.board.serial["rs485_1"].device == workdir / "dev" / "rs485_1"


def test_load_config__no_devices_is_valid(workdir: Path) -> None:
    """A cabinet can be commissioned before its devices are wired."""
    config = load_text(BASE.split("[[devices]]")[0])
    assert config.devices == ()
    assert config.points() == []


def test_load_config__digest_is_stable_and_tracks_changes(workdir: Path) -> None:
    """The central post sees the same digest for the same settings and a new one on any change."""
    first = load_text(BASE).digest
    assert len(first) == 32
    assert load_text("# a comment only\n" + BASE).digest == first
    assert load_text(edit("address = 2", "address = 3")).digest != first
    assert load_text(BASE + "\n[polling]\nmiss_limit = 4\n").digest != first


def test_load_config__mqtts_with_client_certificate(workdir: Path) -> None:
    """A TLS broker defaults to port 8883 and its certificate files resolve next to the file."""
    for name in ("ca.pem", "gw.crt", "gw.key"):
        (workdir / name).write_text("x", encoding="utf-8")
    text = edit(
        'broker = "mqtt://127.0.0.1:1883"',
        'broker = "mqtts://central.example.org"\nca_file = "ca.pem"\n'
        'cert_file = "gw.crt"\nkey_file = "gw.key"',
    )
    uplink = load_text(text).uplink
    assert (uplink.host, uplink.port, uplink.tls) == ("central.example.org", 8883, True)
    assert uplink.ca_file == workdir / "ca.pem"
    assert uplink.cert_file == workdir / "gw.crt"
    assert uplink.key_file == workdir / "gw.key"


def test_load_config__board_by_path_with_base_dir(workdir: Path) -> None:
    """A board file of one's own, next to the config, with its devices under base_dir."""
    (workdir / "boards").mkdir()
    board_text = (Path(load_board("sim").source)).read_text(encoding="utf-8")
    (workdir / "boards" / "mine.toml").write_text(
        board_text.replace('name = "sim"', 'name = "mine"'), encoding="utf-8"
    )
    config = load_text(edit('file = "sim"', 'file = "boards/mine.toml"\nbase_dir = "run"'))
    assert config.board.name == "mine"
    assert config.board.source == workdir / "boards" / "mine.toml"
    settings = config.devices[0].settings
    assert isinstance(settings, RtuSettings)
    assert settings.line.device == workdir / "run" / "dev" / "rs485_1"


# ------------------------------------------------------------------ one mistake, one line

CASES = [
    pytest.param(
        edit("address = 1", 'address = "x"'),
        'devices[0].address: expected an integer 1..247, got "x"',
        id="address-not-an-integer",
    ),
    pytest.param(
        edit("address = 1", "address = 248"),
        "devices[0].address: expected an integer 1..247, got 248",
        id="address-out-of-range",
    ),
    pytest.param(
        edit("address = 1", "address = true"),
        "devices[0].address: expected an integer 1..247, got true",
        id="bool-is-not-an-integer",
    ),
    pytest.param(
        edit("address = 1", "address = 1.0"),
        "devices[0].address: expected an integer 1..247, got 1.0",
        id="float-is-not-an-integer",
    ),
    pytest.param(
        edit('gateway = "cab-0001"', 'gateway = "Cab_0001"'),
        'gateway: expected a gateway id: 1 to 64 of a-z, 0-9, "-", got "Cab_0001"',
        id="gateway-id",
    ),
    pytest.param(
        edit('gateway = "cab-0001"\n', ""),
        'gateway: missing required key; expected a gateway id: 1 to 64 of a-z, 0-9, "-"',
        id="gateway-missing",
    ),
    pytest.param(
        edit("latitude = 45.764", "latitude = 95"),
        "site.latitude: expected a number -90..90, got 95",
        id="latitude",
    ),
    pytest.param(
        edit('"Europe/Paris"', '"Europe/Pariss"'),
        'site.timezone: unknown time zone "Europe/Pariss"; did you mean "Europe/Paris"?',
        id="timezone",
    ),
    pytest.param(
        edit('name = "lamp-01"', 'name = "lamp-01"\nadress = 3'),
        'devices[0].adress: unknown key; did you mean "address"?',
        id="unknown-key-suggestion",
    ),
    pytest.param(
        BASE + "\n[polling]\nmiss_limt = 3\n",
        'polling.miss_limt: unknown key; did you mean "miss_limit"?',
        id="unknown-key-in-optional-table",
    ),
    pytest.param(
        BASE + '\n[metrics]\nlevel = "debug"\n',
        "metrics: unknown key; known keys: board, commands, devices, failsafe, gateway, "
        "lighting, log, polling, rules, site, storage, uplink",
        id="unknown-table",
    ),
    pytest.param(
        edit('[storage]\ndata_dir = "data"\n', "[storage]\n"),
        "storage.data_dir: missing required key; expected a directory path",
        id="missing-required-key",
    ),
    pytest.param(
        edit(SITE, ""),
        "site: missing required key; expected a table",
        id="missing-table",
    ),
    pytest.param(
        edit("address = 2", "address = 1"),
        'devices[1].address: address 1 on line "rs485_1" is already used by "lamp-01" (devices[0])',
        id="duplicate-address-on-a-line",
    ),
    pytest.param(
        edit('name = "lamp-02"', 'name = "lamp-01"'),
        'devices[1].name: duplicate device name "lamp-01" (also devices[0])',
        id="duplicate-name",
    ),
    pytest.param(
        edit('line = "rs485_1"', 'line = "rs485_2"'),
        'devices[0].line: no serial role "rs485_2" on board "sim"; did you mean "rs485_1"? '
        '(serial roles: "rs485_1", "console")',
        id="line-not-on-board",
    ),
    pytest.param(
        edit('line = "rs485_1"', 'line = "/dev/ttymxc1"'),
        'devices[0].line: "/dev/ttymxc1" is a device path; name a serial role of the board '
        '(serial roles: "rs485_1", "console")',
        id="line-is-a-device-path",
    ),
    pytest.param(
        edit('line = "rs485_1"', 'line = "console"'),
        'devices[0].line: serial role "console" is the board\'s technician console',
        id="line-is-the-console",
    ),
    pytest.param(
        edit('driver = "modbus-rtu"', 'driver = "modbus-rtv"'),
        'devices[0].driver: expected one of "modbus-rtu", got "modbus-rtv"; '
        'did you mean "modbus-rtu"?',
        id="driver",
    ),
    pytest.param(
        edit('profile = "lamp-ctl"', 'profile = "lamp-ctrl"'),
        'devices[0].profile: no built-in profile "lamp-ctrl"; did you mean "lamp-ctl"? '
        "(built-in: contactor, env-sensor, lamp-ctl, meter-3ph; or give a path to a .toml file)",
        id="unknown-profile",
    ),
    pytest.param(
        edit('profile = "lamp-ctl"', 'profile = "mine.toml"'),
        "devices[0].profile: mine.toml: cannot read the file: No such file or directory",
        id="profile-file-missing",
    ),
    pytest.param(
        edit('file = "sim"', 'file = "simm"'),
        'board.file: no built-in board "simm"; did you mean "sim"? '
        "(built-in: armoire-gw1, sim; or give a path to a .toml file)",
        id="unknown-board",
    ),
    pytest.param(
        edit('"mqtt://127.0.0.1:1883"', '"http://127.0.0.1"'),
        'uplink.broker: expected mqtt://host[:port] or mqtts://host[:port], got "http://127.0.0.1"',
        id="broker-scheme",
    ),
    pytest.param(
        edit('"mqtt://127.0.0.1:1883"', '"mqtt://127.0.0.1:99999"'),
        'uplink.broker: expected a port 1..65535, got "mqtt://127.0.0.1:99999"',
        id="broker-port",
    ),
    pytest.param(
        edit('"mqtt://127.0.0.1:1883"', '"mqtt://user:pw@127.0.0.1/x"'),
        "uplink.broker: expected only a scheme, a host and a port, "
        'got "mqtt://user:pw@127.0.0.1/x"',
        id="broker-extras",
    ),
    pytest.param(
        edit('1883"', '1883"\nkeepalive = 2'),
        "uplink.keepalive: expected an integer 5..3600, got 2",
        id="keepalive",
    ),
    pytest.param(
        edit('1883"', '1883"\nreconnect_min = 10\nreconnect_max = 5.0'),
        "uplink.reconnect_max: must be >= reconnect_min (10)",
        id="reconnect-order",
    ),
    pytest.param(
        edit('1883"', '1883"\nca_file = "gateway.toml"'),
        "uplink.ca_file: only used with an mqtts:// broker",
        id="tls-file-without-tls",
    ),
    pytest.param(
        edit('"mqtt://127.0.0.1:1883"', '"mqtts://127.0.0.1"\ncert_file = "gateway.toml"'),
        "uplink.key_file: missing; cert_file and key_file go together (client certificate)",
        id="cert-without-key",
    ),
    pytest.param(
        edit('data_dir = "data"', 'data_dir = "data"\nbatch_interval = 0'),
        "storage.batch_interval: expected a number 0.05..60, got 0",
        id="batch-interval",
    ),
    pytest.param(
        edit('data_dir = "data"', 'data_dir = "data"\ncapacity_mb = 0'),
        "storage.capacity_mb: expected a number 0.001..1000000, got 0",
        id="capacity",
    ),
    pytest.param(
        edit('profile = "lamp-ctl"', 'profile = "lamp-ctl"\npoll = 0.01'),
        "devices[0].poll: expected a number 0.05..86400, got 0.01",
        id="poll",
    ),
    pytest.param(
        "site = 3\n" + edit(SITE, ""),
        "site: expected a table, got 3",
        id="table-of-wrong-type",
    ),
]


@pytest.mark.parametrize(("text", "error"), CASES)
def test_load_config__each_mistake_names_file_key_and_problem(
    workdir: Path, text: str, error: str
) -> None:
    """The technician reads which file, which key and what is wrong, in one line."""
    errors = errors_of(text)
    assert errors[0] == f"gateway.toml: {error}"
    assert len(errors) == 1, errors


def test_load_config__tls_file_missing(workdir: Path) -> None:
    """A CA file that is not there is caught at start, with the path that was looked for."""
    errors = errors_of(edit('"mqtt://127.0.0.1:1883"', '"mqtts://127.0.0.1"\nca_file = "ca.pem"'))
    assert errors == [f"gateway.toml: uplink.ca_file: file not found: {workdir / 'ca.pem'}"]


def test_load_config__device_path_on_real_board_suggests_its_role(workdir: Path) -> None:
    """Writing the tty instead of the role gets the role that owns that tty suggested."""
    errors = errors_of(
        edit('file = "sim"', 'file = "armoire-gw1"').replace('"rs485_1"', '"/dev/ttymxc1"', 1)
    )
    assert errors == [
        'gateway.toml: devices[0].line: "/dev/ttymxc1" is a device path; name a serial role of '
        'the board; did you mean "rs485_1"?'
    ]


def test_load_config__profile_errors_are_wrapped_with_the_device_key(workdir: Path) -> None:
    """A broken profile is reported once, under the first device that uses it."""
    (workdir / "bad.toml").write_text(
        '[model]\nname = "bad"\n[[points]]\nname = "x"\ntable = "input"\naddress = 0\n'
        'type = "uint16"\n',
        encoding="utf-8",
    )
    errors = errors_of(BASE.replace('profile = "lamp-ctl"', 'profile = "bad.toml"'))
    assert errors == [
        'gateway.toml: devices[0].profile: bad.toml: points[0].type: expected one of "u16", '
        '"s16", "u32", "s32", "f32", "bool", got "uint16"; did you mean "u16"?'
    ]


def test_load_config__board_errors_are_wrapped_with_the_board_key(workdir: Path) -> None:
    """A broken board file is reported under board.file, and its devices are not re-flagged."""
    (workdir / "b.toml").write_text('[board]\nname = "b"\nnmae = "x"\n', encoding="utf-8")
    errors = errors_of(edit('file = "sim"', 'file = "b.toml"'))
    assert errors == [
        f"gateway.toml: board.file: {workdir / 'b.toml'}: board.nmae: unknown key; "
        'did you mean "name"?'
    ]


def test_load_config__reports_every_error_at_once(workdir: Path) -> None:
    """One start lists all the mistakes, so the technician fixes them in one go."""
    text = (
        BASE.replace("latitude = 45.764", "latitude = 91")
        .replace("address = 2", "address = 1")
        .replace('data_dir = "data"', 'data_dir = "data"\nbatch_max = 0')
        .replace('name = "lamp-01"', 'name = "lamp-01"\npol = 1')
    )
    errors = errors_of(text)
    assert [line.split(": ")[1] for line in errors] == [
        "site.latitude",
        "storage.batch_max",
        "devices[0].pol",
        "devices[1].address",
    ]
    assert 'did you mean "poll"?' in errors[2]


def test_load_config__missing_file(workdir: Path) -> None:
    """Pointing the agent at a file that is not there says so plainly."""
    with pytest.raises(ConfigError) as info:
        load_config(Path("nope.toml"))
    assert info.value.errors == ["nope.toml: cannot read the file: No such file or directory"]


def test_load_config__toml_syntax_error_gives_line_and_column(workdir: Path) -> None:
    """A TOML typo points at the line and column to fix."""
    errors = errors_of(BASE.replace("latitude = 45.764", "latitude = 45,764"))
    assert errors == [
        "gateway.toml: TOML syntax error: Expected newline or end of document after a statement "
        "(at line 4, column 14)"
    ]


def test_config__is_frozen(workdir: Path) -> None:
    """Nothing can alter the configuration after validation."""
    config = load_text(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway = "other"  # type: ignore[misc]


# ------------------------------------------------------------------ [commands]


def test_load_config__commands_defaults_when_absent(workdir: Path) -> None:
    """Without a [commands] table the gateway uses the documented skew, holds and role limits."""
    commands = load_text(BASE).commands
    assert commands == CommandsConfig(
        clock_skew=30.0,
        hold_default=600.0,
        hold_max=3600.0,
        max_validity=3600.0,
        policies=DEFAULT_POLICIES,
    )
    assert set(commands.policies) == {"operator", "admin"}


def test_load_config__commands_settings_and_narrowed_role(workdir: Path) -> None:
    """An operator can be limited to some points, actions, ops and priorities of its defaults."""
    commands = load_text(
        BASE
        + "\n[commands]\nclock_skew = 5\nhold_default = 60\nhold_max = 120\nmax_validity = 300\n"
        + '[commands.roles.operator]\npriorities = [10, 14]\nops = ["write", "action"]\n'
        + 'points = ["lamp-*/*", "contactor/*"]\nactions = ["ping", "selftest"]\n'
    ).commands
    assert (commands.clock_skew, commands.hold_default, commands.hold_max) == (5.0, 60.0, 120.0)
    assert commands.max_validity == 300.0
    assert commands.policies["operator"] == RolePolicy(
        (10, 14),
        frozenset({"write", "action"}),
        ("lamp-*/*", "contactor/*"),
        ("ping", "selftest"),
        frozenset({14}),  # narrowing keeps the schedule's level reserved
    )
    assert commands.policies["admin"] == DEFAULT_POLICIES["admin"]


def test_load_config__commands_change_the_digest(workdir: Path) -> None:
    """The central post sees from the Birth digest that a gateway's command policy changed."""
    first = load_text(BASE).digest
    narrowed = BASE + '\n[commands.roles.operator]\npoints = ["lamp-*/*"]\n'
    assert load_text(narrowed).digest != first
    assert load_text(BASE + "\n[commands]\nclock_skew = 30\n").digest == first


COMMANDS_CASES = [
    pytest.param(
        "[commands]\nclock_skew = 601\n",
        "commands.clock_skew: expected a number 0..600, got 601",
        id="clock-skew",
    ),
    pytest.param(
        "[commands]\nhold_default = 0\n",
        "commands.hold_default: expected a number 1..86400, got 0",
        id="hold-default",
    ),
    pytest.param(
        "[commands]\nhold_max = 604801\n",
        "commands.hold_max: expected a number 1..604800, got 604801",
        id="hold-max-range",
    ),
    pytest.param(
        "[commands]\nhold_default = 900\nhold_max = 600\n",
        "commands.hold_max: must be >= hold_default (900)",
        id="hold-max-below-default",
    ),
    pytest.param(
        "[commands]\nmax_validity = 0\n",
        "commands.max_validity: expected a number 1..604800, got 0",
        id="max-validity",
    ),
    pytest.param(
        "[commands]\nclock_skw = 3\n",
        'commands.clock_skw: unknown key; did you mean "clock_skew"?',
        id="unknown-key",
    ),
    pytest.param(
        "[commands.roles.operater]\npoints = []\n",
        'commands.roles.operater: unknown role "operater"; did you mean "operator"? '
        '(roles: "operator", "admin")',
        id="unknown-role",
    ),
    pytest.param(
        "[commands.roles.maintenance]\npoints = []\n",
        'commands.roles.maintenance: role "maintenance" has no commands over MQTT to narrow '
        "(console only)",
        id="maintenance-cannot-get-mqtt",
    ),
    pytest.param(
        "[commands.roles.operator]\npriorities = [8, 16]\n",
        'commands.roles.operator.priorities: [8, 16] widens the default 9..16 of role "operator"; '
        "expected [low, high] with 9 <= low <= high <= 16",
        id="operator-priority-widened",
    ),
    pytest.param(
        "[commands.roles.operator]\npriorities = [12, 10]\n",
        "commands.roles.operator.priorities: expected [low, high] with 9 <= low <= high <= 16, "
        "got [12, 10]",
        id="priorities-reversed",
    ),
    pytest.param(
        "[commands.roles.admin]\npriorities = 3\n",
        "commands.roles.admin.priorities: expected [low, high] with 1 <= low <= high <= 16, got 3",
        id="priorities-not-an-array",
    ),
    pytest.param(
        '[commands.roles.operator]\nops = ["write", "erase"]\n',
        'commands.roles.operator.ops: expected an array of strings among "write", "relinquish", '
        '"action", got ["write", "erase"]',
        id="unknown-op",
    ),
    pytest.param(
        '[commands.roles.operator]\npoints = ["lamp-*/*", ""]\n',
        "commands.roles.operator.points: expected an array of non-empty strings, "
        'got ["lamp-*/*", ""]',
        id="empty-pattern",
    ),
    pytest.param(
        '[commands.roles.operator]\nactions = "ping"\n',
        'commands.roles.operator.actions: expected an array of non-empty strings, got "ping"',
        id="actions-not-an-array",
    ),
    pytest.param(
        "[commands.roles.operator]\npoint = []\n",
        'commands.roles.operator.point: unknown key; did you mean "points"?',
        id="unknown-role-key",
    ),
    pytest.param(
        "[commands]\nroles = 3\n",
        "commands.roles: expected a table, got 3",
        id="roles-not-a-table",
    ),
]


@pytest.mark.parametrize(("table", "error"), COMMANDS_CASES)
def test_load_config__commands_mistakes(workdir: Path, table: str, error: str) -> None:
    """A wrong command setting is refused at start with its key path, not discovered in use."""
    errors = errors_of(BASE + "\n" + table)
    assert errors == [f"gateway.toml: {error}"]


def test_load_config__log_level_default_and_setting(workdir: Path) -> None:
    """Without [log] the agent logs at INFO; [log] level chooses another verbosity."""
    assert load_text(BASE).log.level == "INFO"
    assert load_text(BASE + '\n[log]\nlevel = "DEBUG"\n').log.level == "DEBUG"


def test_load_config__log_level_mistake_suggests_the_level(workdir: Path) -> None:
    """A mistyped level names the key and the level meant."""
    errors = errors_of(BASE + '\n[log]\nlevel = "WARN"\n')
    assert errors == [
        'gateway.toml: log.level: expected one of "DEBUG", "INFO", "WARNING", "ERROR", '
        'got "WARN"; did you mean "WARNING"?'
    ]

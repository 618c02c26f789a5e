"""``driver = "ntcip"`` devices in the gateway configuration: SNMPv2c or v3 credentials,
host and port, every mistake named with its key path, and no secret ever echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import Config, ConfigError, load_config
from drivers.driver import BuildContext
from drivers.registry import DRIVERS
from drivers.snmp.credentials import Community, Usm
from drivers.snmp.driver import DEFAULT_PORT, DEFAULT_RETRIES, DEFAULT_TIMEOUT, SnmpSettings
from drivers.snmp.profile import SnmpProfile

HEAD = """\
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
"""
V2 = """
[[devices]]
name = "signal-01"
driver = "ntcip"
host = "192.0.2.10"
profile = "ntcip-1202-asc"
community = "lan-community"
"""
V3 = """
[[devices]]
name = "signal-02"
driver = "ntcip"
host = "tsc-north.cabinet.lan"
port = 1161
profile = "ntcip-1202-asc"
timeout = 0.2
retries = 2
v3 = { user = "armoire", auth = "sha256", auth_key = "auth-secret-1", priv_key = "priv-secret-1" }
"""


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(text: str) -> Config:
    Path("gateway.toml").write_text(text, encoding="utf-8")
    return load_config(Path("gateway.toml"))


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value.errors


def test_config__v2c_and_v3_controllers_load() -> None:
    """Both credential kinds load into typed settings with the defaults written once."""
    cfg = load(HEAD + V2 + V3)
    v2, v3 = cfg.devices
    assert isinstance(v2.profile, SnmpProfile)
    assert v2.bus == "snmp"
    assert v2.settings == SnmpSettings(
        host="192.0.2.10",
        port=DEFAULT_PORT,
        timeout=DEFAULT_TIMEOUT,
        retries=DEFAULT_RETRIES,
        credentials=Community(community="lan-community"),
    )
    assert isinstance(v3.settings, SnmpSettings)
    assert (v3.settings.port, v3.settings.timeout, v3.settings.retries) == (1161, 0.2, 2)
    assert v3.settings.credentials == Usm(
        user="armoire", auth="sha256", auth_key="auth-secret-1", priv_key="priv-secret-1"
    )
    names = [name for name, _, _ in cfg.points()]
    assert "signal-01/fault_flash" in names
    assert "signal-02/greens" in names


def test_config__secrets_never_in_repr() -> None:
    """A configuration printed or logged (repr) does not carry the community or USM keys."""
    cfg = load(HEAD + V2 + V3)
    text = repr(cfg)
    for secret in ("lan-community", "auth-secret-1", "priv-secret-1"):
        assert secret not in text


def test_config__does_not_import_pysnmp_by_itself(workdir: Path) -> None:
    """Loading a configuration, even with SNMP devices, leaves pysnmp unimported: a gateway
    pays its memory only once it builds an SNMP device. (A fresh interpreter: this one has
    imported pysnmp for other tests.)"""
    Path("gateway.toml").write_text(HEAD + V2, encoding="utf-8")
    code = (
        "import sys; from pathlib import Path; from agent.config import load_config; "
        "load_config(Path('gateway.toml')); "
        "print(sorted(m for m in sys.modules if m.startswith('pysnmp')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('community = "lan-community"\n', "", "devices[0].community: give exactly one of "
         "community (SNMPv2c) and v3"),
        ('host = "192.0.2.10"', 'host = "bad host!"', "devices[0].host: expected a host name "
         'or an IP address, got "bad host!"'),
        ('host = "192.0.2.10"', 'host = "192.0.2.10"\nport = 0', "devices[0].port: expected "
         "an integer 1..65535, got 0"),
        ('community = "lan-community"', 'community = "lan-community"\ntimeout = 60',
         "devices[0].timeout:"),
        ('community = "lan-community"', 'community = "lan-community"\nline = "rs485_1"',
         "devices[0].line: unknown key"),
        ('profile = "ntcip-1202-asc"', 'profile = "ntcip-1202"', 'devices[0].profile: '),
    ],
)  # fmt: skip
def test_config__mistakes_name_the_key(old: str, new: str, error: str) -> None:
    found = errors(HEAD + V2.replace(old, new))
    assert any(error in line for line in found), found


def test_config__short_usm_keys_refused_without_echoing_them() -> None:
    """A USM passphrase under 8 characters is refused (RFC 3414), its length said, not it."""
    text = HEAD + V3.replace('"auth-secret-1"', '"short"')
    found = errors(text)
    assert any("devices[0].v3.auth_key: expected a passphrase of at least 8" in e for e in found)
    assert any("got 5 characters" in e for e in found)
    assert all("short" not in e for e in found)


def test_config__same_controller_twice_is_refused() -> None:
    """Two devices on one host:port would poll one controller twice under two names."""
    second = V2.replace("signal-01", "signal-03")
    found = errors(HEAD + V2 + second)
    assert any("devices[1].host: 192.0.2.10:161 is already used by" in e for e in found), found


async def test_build__one_shared_engine_and_a_status_like_a_line() -> None:
    """Every SNMP device shares one engine (the snmp bus), whose status has the keys the
    console and status.json read for every bus."""
    cfg = load(HEAD + V2 + V3)
    ctx = BuildContext(buses={}, response_timeout=0.3)
    devices = [DRIVERS[d.driver].build(d.name, d.profile, d.settings, ctx) for d in cfg.devices]
    assert list(ctx.buses) == ["snmp"]
    bus = ctx.buses["snmp"]
    status = bus.status()
    assert {"port", "open", "error"} <= set(status)
    assert status["port"] == "udp 192.0.2.10:161 tsc-north.cabinet.lan:1161"
    for device in devices:
        await device.close()
    await bus.close()

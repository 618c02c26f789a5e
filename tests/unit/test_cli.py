"""The `armoire` command as a technician or an integrator uses it."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest

from agent.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config"


def _bad_config(tmp_path: Path, old: str, new: str) -> Path:
    text = (FIXTURES / "good.toml").read_text()
    assert old in text
    path = tmp_path / "agent.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_run__bad_address_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the config would start a half-working agent or give an unhelpful error."""
    config = _bad_config(tmp_path, "address = 2", 'address = "x"')
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f'{config}: devices[1].address: expected an integer 1..247, got "x"' in err


def test_run__missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong path would crash with a traceback instead of a message."""
    assert main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_run__device_path_instead_of_role_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Naming /dev/ttyX in a device would tie the config to one board's wiring."""
    config = _bad_config(tmp_path, 'line = "rs485_1"', 'line = "/dev/ttymxc1"')
    assert main(["check", "--config", str(config)]) == 2
    assert "devices[0].line" in capsys.readouterr().err


def test_run__missing_keys_exits_2_with_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unprovisioned gateway would fail obscurely instead of saying how to provision it."""
    shutil.copy(FIXTURES / "good.toml", tmp_path / "agent.toml")
    shutil.copy(FIXTURES / "fan-ctl.toml", tmp_path / "fan-ctl.toml")
    assert main(["run", "--config", str(tmp_path / "agent.toml")]) == 2
    assert "armoire keys init --data" in capsys.readouterr().err


def test_check__valid_config(capsys: pytest.CaptureFixture[str]) -> None:
    """A technician could not confirm a configuration before deploying it."""
    assert main(["check", "--config", str(FIXTURES / "good.toml")]) == 0
    assert ": ok (" in capsys.readouterr().out


def test_keys_init_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Provisioning would produce keys that other tools can't read, or a kid the central post
    can't match."""
    data = tmp_path / "data"
    assert main(["keys", "init", "--data", str(data)]) == 0
    capsys.readouterr()
    key, pub = data / "gateway.key", data / "gateway.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    shutil.copy(FIXTURES / "good.toml", data / "agent.toml")
    assert main(["keys", "show", "--data", str(data)]) == 0
    shown = json.loads(capsys.readouterr().out)
    raw = bytes.fromhex(shown["pub"])
    assert shown["gw"] == "cab-0001"
    assert shown["kid"] == hashlib.sha256(raw).digest()[:8].hex()
    # A gateway never silently changes identity.
    assert main(["keys", "init", "--data", str(data)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["keys", "show", "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["pub"] == shown["pub"]


def test_keys_show__no_keys_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Asking for keys that were never created would print a traceback."""
    assert main(["keys", "show", "--data", str(tmp_path)]) == 1
    assert "gateway.key" in capsys.readouterr().err


def test_schedule__prints_each_night_of_the_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A technician checks a dimming program for two December nights before deploying it."""
    text = (FIXTURES / "good.toml").read_text() + (
        '\n[[lighting]]\nname = "avenue"\nlamps = ["lamp-*/level"]\n'
        'dimming = [{ at = "22:30", level = 60 }, { at = "05:30", level = 100 }]\n'
    )
    config = tmp_path / "gw.toml"
    config.write_text(text.replace('"fan-ctl.toml"', f'"{FIXTURES / "fan-ctl.toml"}"'))
    args = ["schedule", "--config", str(config), "--from", "2026-12-21", "--days", "2", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    (group,) = out["groups"]
    assert group["group"] == "avenue"
    assert [n["evening"] for n in group["nights"]] == ["2026-12-21", "2026-12-22"]
    first = group["nights"][0]
    assert [(s["local"][11:16], s["level"]) for s in first["steps"]][1:] == [
        ("22:30", 60),
        ("05:30", 100),
    ]
    assert first["on"]["utc"].endswith("+00:00")
    assert first["on"]["local"].endswith("+01:00")
    assert main(["schedule", "--config", str(config), "--from", "2026-12-21"]) == 0
    assert "22:30 local (21:30 UTC)   60 %" in capsys.readouterr().out


def test_schedule__bad_date_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped --from is refused with the expected format, not a traceback."""
    with pytest.raises(SystemExit) as exc:
        main(["schedule", "--config", str(FIXTURES / "good.toml"), "--from", "21/12/2026"])
    assert exc.value.code == 2
    assert "expected YYYY-MM-DD" in capsys.readouterr().err

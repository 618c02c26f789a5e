"""The `armoire` command as a technician or an integrator uses it."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import _parser, main
from tests.unit.test_outbox import _freeze, _thaw

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
    assert main(["check", "--config", str(FIXTURES / "good.toml"), "--config-only"]) == 0
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


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action


def test_cli__every_command_and_option_has_help() -> None:
    """A technician typing --help would meet bare option names and guess what they do."""
    missing = [name for name, action in _actions(_parser(), "armoire") if not action.help]
    assert missing == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "DEBUG", "check", "--config", "x.toml"],
        ["check", "--config", "x.toml", "--log-level", "debug"],
        ["keys", "show", "--data", "d", "--log-level", "DEBUG"],
    ],
)
def test_cli__global_options_before_or_after_the_command(argv: list[str]) -> None:
    """`armoire run --config X --log-level DEBUG` would be refused as an unknown option."""
    assert _parser().parse_args(argv).log_level == "DEBUG"
    assert (
        _parser()
        .parse_args([a for a in argv if a.upper() != "DEBUG" and a != "--log-level"])
        .log_level
        is None  # then the configuration's [log] level, else INFO
    )


def _provisioned(tmp_path: Path) -> tuple[Path, Path]:
    """A gateway folder: agent.toml naming data/ (keys made) and a serial line that is absent."""
    shutil.copy(FIXTURES / "good.toml", tmp_path / "agent.toml")
    shutil.copy(FIXTURES / "fan-ctl.toml", tmp_path / "fan-ctl.toml")
    data = tmp_path / "data"
    assert main(["keys", "init", "--data", str(data)]) == 0
    return tmp_path / "agent.toml", data


def test_keys__init_and_show_agree_on_a_missing_gateway_id_and_show_takes_config_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys init` printed "gw": "" where `keys show` printed null, and `keys show --config`
    refused to run without --data."""
    assert main(["keys", "init", "--data", str(tmp_path / "bare")]) == 0
    assert json.loads(capsys.readouterr().out)["gw"] is None
    config, _ = _provisioned(tmp_path)
    capsys.readouterr()
    assert main(["keys", "show", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["gw"] == "cab-0001"


def test_check__runtime_problems_named_and_graded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`armoire check` said ok for a gateway without trust store or serial port; a technician
    would find out only when commands are refused or devices stay silent."""
    config, _ = _provisioned(tmp_path)
    capsys.readouterr()
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "OK       gateway key" in out
    assert "PROBLEM  trust store unusable" in out
    assert "refuses every command" in out
    assert "PROBLEM  serial line rs485_1" in out
    assert "No such file or directory" in out
    assert "FATAL" not in out


def test_check__missing_keys_and_unwritable_data_are_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway that cannot start would pass `armoire check` and fail at the first boot."""
    config, data = _provisioned(tmp_path)
    (data / "gateway.key").unlink()
    before = sorted(p.name for p in data.iterdir())
    _freeze(data)
    try:
        assert main(["check", "--config", str(config)]) == 1
    finally:
        _thaw(data)
    captured = capsys.readouterr()
    assert f"FATAL    data directory {data} is not writable" in captured.out
    assert "gateway.key: no such file" in captured.out
    assert "2 fatal problem(s)" in captured.err
    assert sorted(p.name for p in data.iterdir()) == before  # the check changed nothing


def test_status__without_status_file_says_so_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`armoire status` on a gateway that never ran would print a traceback or nothing."""
    assert main(["status", "--data", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "status.json" in captured.err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--lamps", "245"], "--lamps must be 0..244 on 1 line(s)"),
        (["--lamps", "3", "--lines", "5"], "5 lines need at least as many lamps"),
        (["--lines", "0"], "--lines must be 1.."),
    ],
)
def test_sim__lamps_past_what_the_lines_carry_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    """`armoire sim --lamps 300` would die with a traceback after starting a broker."""
    assert main(["sim", "--data", str(tmp_path), *argv]) == 2
    captured = capsys.readouterr()
    assert match in captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_run__unwritable_data_directory_exits_1_naming_file_and_os_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An immutable data directory was taken for a corrupt outbox: the healthy backlog was
    moved aside, and the message did not say that the directory cannot be written."""
    config, data = _provisioned(tmp_path)
    (data / "outbox.sqlite").write_bytes(b"")  # an empty file is a valid empty database
    (data / "agent.lock").write_text("")
    before = sorted(p.name for p in data.iterdir())
    capsys.readouterr()
    _freeze(data)
    try:
        assert main(["run", "--config", str(config)]) == 1
    finally:
        _thaw(data)
    err = capsys.readouterr().err
    assert f"cannot open the outbox {data / 'outbox.sqlite'} for writing" in err
    assert f"cannot create files in {data}: Operation not permitted" in err or (
        "Permission denied" in err
    )
    assert sorted(p.name for p in data.iterdir()) == before

"""The gateway installation (scripts/install-gateway.sh) into a staged root, and the unit.

The script runs for real with DESTDIR: it builds the venv, installs the unit, the user,
the udev rule, the configuration and the key. What a city's IT department relies on is
checked on the files it leaves: where they are, their modes and owners, that a second
run changes nothing, that an edited configuration or an existing key is never touched,
and that the unit passes ``systemd-analyze verify`` against that root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-gateway.sh"
UNIT = "etc/systemd/system/armoire.service"
CONFIG = "etc/armoire/agent.toml"
STATE = "var/lib/armoire"


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(root)}
    return subprocess.run(
        ["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """Every file and folder under ``root``: mode, owner, group, mtime and content hash."""
    seen = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = ""
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        seen[str(path.relative_to(root))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            digest,
        )
    return seen


def _account(root: Path, name: str, file: str = "etc/passwd") -> list[str]:
    for line in (root / file).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {file}")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gateway-root")
    result = _install(root)
    assert result.returncode == 0, result.stderr
    return root


def test_install__puts_each_file_in_place_with_its_mode(staged: Path) -> None:
    """A gateway installed by the script has the service, user, rules, config and key where
    the unit and the README say, readable only by whom they must be."""
    uid, gid = (int(x) for x in _account(staged, "armoire")[2:4])
    assert "armoire" in _account(staged, "dialout", "etc/group")[3].split(",")

    def mode(rel: str) -> int:
        return stat.S_IMODE((staged / rel).stat().st_mode)

    assert mode(UNIT) == 0o644
    assert mode("etc/udev/rules.d/60-armoire.rules") == 0o644
    assert mode("usr/lib/sysusers.d/armoire.conf") == 0o644
    # The configuration may hold broker credentials: root writes it, the agent reads it.
    assert mode(CONFIG) == 0o640
    assert (staged / CONFIG).stat().st_gid == gid
    assert mode(STATE) == 0o700
    assert ((staged / STATE).stat().st_uid, (staged / STATE).stat().st_gid) == (uid, gid)
    assert mode(f"{STATE}/gateway.key") == 0o600
    assert (staged / STATE / "gateway.key").stat().st_uid == uid
    version = subprocess.run(
        [str(staged / "opt/armoire/venv/bin/armoire"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith("armoire ")


def test_install__example_configuration_is_valid(staged: Path) -> None:
    """The configuration the installer writes loads without error (only ids and hosts to edit)."""
    config = load_config(staged / CONFIG)
    assert config.storage.data_dir == Path("/var/lib/armoire")
    assert config.log.level == "INFO"


def test_install__second_run_changes_nothing(staged: Path) -> None:
    """Running the installer again (an upgrade with nothing new) touches no file."""
    before = _snapshot(staged)
    result = _install(staged)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert _snapshot(staged) == before


def test_install__never_overwrites_configuration_or_key(staged: Path) -> None:
    """The city's edited configuration and the gateway's identity survive a reinstall."""
    config = staged / CONFIG
    edited = config.read_text().replace('gateway = "cab-0001"', 'gateway = "cab-0042"')
    config.write_text(edited)
    key = (staged / STATE / "gateway.key").read_bytes()
    result = _install(staged)
    assert result.returncode == 0, result.stderr
    assert config.read_text() == edited
    assert (staged / STATE / "gateway.key").read_bytes() == key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit__passes_systemd_analyze_verify(staged: Path, tmp_path: Path) -> None:
    """systemd accepts the unit as written: no unknown key, no bad value, the binary exists."""
    root = tmp_path / "root"
    shutil.copytree(staged, root, symlinks=True)
    # The targets the unit depends on (sysinit.target...) come from this machine's systemd.
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    if not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "armoire.service"],
        capture_output=True,
        text=True,
    )
    # verify only warns (exit 0) on unknown keys and bad values: any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_uninstall__keeps_configuration_and_data_unless_purged(tmp_path: Path) -> None:
    """Removing the agent keeps the gateway's configuration, key and outbox; --purge removes
    them too."""
    root = tmp_path / "root"
    for rel in (UNIT, "usr/lib/sysusers.d/armoire.conf", "opt/armoire/venv/bin/armoire"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / CONFIG).parent.mkdir(parents=True)
    (root / CONFIG).write_text('gateway = "cab-0001"\n')
    (root / STATE).mkdir(parents=True)
    (root / STATE / "outbox.sqlite").write_bytes(b"data")

    result = _install(root, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (root / UNIT).exists()
    assert not (root / "opt/armoire").exists()
    assert (root / CONFIG).exists()
    assert (root / STATE / "outbox.sqlite").read_bytes() == b"data"

    result = _install(root, "--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    assert not (root / CONFIG).exists()
    assert not (root / STATE).exists()


def test_install__refuses_unknown_options(tmp_path: Path) -> None:
    """A mistyped option stops the script before it changes anything."""
    result = _install(tmp_path / "root", "--purg")
    assert result.returncode == 2
    assert "unknown option --purg" in result.stderr
    assert not (tmp_path / "root").exists()

"""One agent per data directory: the lock a second `armoire run` runs into."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.instance import AlreadyRunning, InstanceLock, running_pid

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config"

# A process that takes the data directory's lock the way the agent does, then waits.
HOLDER = (
    "import sys, pathlib\n"
    "from agent.instance import InstanceLock\n"
    "InstanceLock(pathlib.Path(sys.argv[1])).acquire()\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    data = tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    yield data, proc
    proc.kill()
    proc.wait()


def test_instance__second_lock_refused_naming_the_holder(
    holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    """A second agent would start on the same data directory and corrupt its outbox."""
    data, proc = holder
    with pytest.raises(AlreadyRunning) as caught:
        InstanceLock(data).acquire()
    assert caught.value.pid == proc.pid
    assert f"pid {proc.pid}" in str(caught.value)
    assert running_pid(data) == proc.pid


def test_instance__lock_of_a_killed_agent_is_free(
    holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    """An agent killed by SIGKILL or a power cut would block every later start."""
    data, proc = holder
    proc.kill()
    proc.wait()
    assert running_pid(data) is None
    with InstanceLock(data):
        assert running_pid(data) is not None


def test_run__second_agent_exits_1_naming_the_running_one(
    holder: tuple[Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`armoire run` typed while the service runs would start a second agent."""
    data, proc = holder
    config = data.parent / "agent.toml"
    shutil.copy(FIXTURES / "good.toml", config)
    shutil.copy(FIXTURES / "fan-ctl.toml", data.parent / "fan-ctl.toml")
    assert main(["keys", "init", "--data", str(data)]) == 0
    capsys.readouterr()
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"another agent (pid {proc.pid}) is already running on {data}" in err
    assert not (data / "outbox.sqlite").exists()

"""`armoire-central` (central/cli.py) and the separation of the gateway from the central post."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from central.cli import duration, main

# Imports the gateway's command line (and everything `armoire run` loads) with the
# simulator and the central post's package made unimportable.
_BLOCKED_IMPORT = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sim", "central"):
            raise ImportError(f"{name} must not be imported on a gateway")
        return None

sys.meta_path.insert(0, Blocker())
import agent.cli, agent.runtime, agent.console, agent.console_session
assert agent.cli.main(["--help"]) == 0
"""


def test_gateway_cli__imports_neither_sim_nor_central() -> None:
    """A gateway image without the simulator or the central tools would fail to start."""
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("8h", 28800)]
)
def test_duration__accepts_units(text: str, seconds: float) -> None:
    """`--ttl 8h` would be refused, or read as 8 seconds."""
    assert duration(text) == seconds


def test_token__issued_then_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control room could not give a technician a token the console accepts."""
    assert main(["keys", "init", "--data", str(tmp_path)]) == 0
    capsys.readouterr()
    argv = ["token", "--data", str(tmp_path), "--sub", "tech-42", "--gw", "cab-1", "--ttl", "2h"]
    assert main(argv) == 0
    token = capsys.readouterr().out.strip()
    assert "\n" not in token
    assert "=" not in token
    assert main(["verify", "--data", str(tmp_path), token]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["sub"], body["gw"], body["role"], body["expired"]) == (
        "tech-42",
        "cab-1",
        "maintenance",
        False,
    )
    assert body["exp"] - body["iat"] == 2 * 3600 * 1000
    # Signed by another key: refused.
    assert main(["verify", "--data", str(tmp_path), "--key", "operator", token]) == 1

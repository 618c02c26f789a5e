"""The I/O module firmware's own unit tests, run inside MicroPython (the Unix port)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sim.iomodule import FIRMWARE_DIR, firmware_lib_ready, micropython_binary

GOLDEN = Path(__file__).parent.parent / "fixtures" / "iomodule" / "golden.txt"


def test_firmware_unit_tests_pass_in_micropython() -> None:
    """The module's codec, debounce, relay and safe-state logic, as the board runs them."""
    binary = micropython_binary()
    if binary is None or not firmware_lib_ready():
        pytest.skip("micropython or board/iomodule/lib missing: run `make iomodule-lib`")
    env = {
        **os.environ,
        "MICROPYPATH": f".frozen:lib:{FIRMWARE_DIR}:{FIRMWARE_DIR / 'tests'}",
        "IOMOD_GOLDEN": str(GOLDEN),
    }
    result = subprocess.run(
        [binary, "tests/run.py"],
        cwd=FIRMWARE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 17 tests" in result.stdout

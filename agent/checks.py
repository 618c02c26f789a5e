"""What ``armoire check`` verifies beyond the configuration file, without side effects.

Each finding says whether the agent could start with it (``fatal``), would run
degraded (``problem``), or is fine (``ok``). Only reads: files are opened for
reading, write access is asked of the kernel (``os.access``), nothing is
created, locked for longer than a probe, or moved.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from agent.config import Config
from agent.instance import running_pid
from agent.outbox import OUTBOX_FILE
from agent.security.keys import GATEWAY_KEY, KeyFileError, key_summary
from agent.security.trust import TrustError, TrustStore
from drivers.modbus.rtu import RtuSettings


class Level(StrEnum):
    OK = "ok"
    PROBLEM = "problem"  # the agent runs, but something it needs is missing
    FATAL = "fatal"  # the agent would refuse to start


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    message: str


def runtime_checks(config: Config) -> list[Finding]:
    """Everything the agent needs at run time that can be checked from here."""
    data = config.storage.data_dir
    if not data.exists():
        # Keys and trust store live there: one finding says it all.
        return [*_data_dir(data), *_serial_lines(config)]
    return [
        *_data_dir(data),
        _gateway_key(data, config.gateway),
        _trust(data, config.gateway),
        *_serial_lines(config),
    ]


def _data_dir(data: Path) -> list[Finding]:
    if not data.exists():
        return [
            Finding(
                Level.FATAL,
                f"data directory {data} does not exist "
                f"(create it with: armoire keys init --data {data})",
            )
        ]
    if not data.is_dir():
        return [Finding(Level.FATAL, f"data directory {data} is not a directory")]
    if not os.access(data, os.W_OK | os.X_OK):
        return [
            Finding(
                Level.FATAL,
                f"data directory {data} is not writable (read-only or immutable?): "
                "the outbox cannot be stored",
            )
        ]
    findings = [Finding(Level.OK, f"data directory {data} is writable")]
    outbox = data / OUTBOX_FILE
    if outbox.exists() and not os.access(outbox, os.R_OK | os.W_OK):
        findings.append(Finding(Level.FATAL, f"outbox {outbox} is not writable"))
    pid = running_pid(data)
    if pid is not None:
        who = f"pid {pid}" if pid else "another process"
        findings.append(
            Finding(
                Level.OK,
                f"an agent ({who}) is running on {data}; a second `armoire run` would be refused",
            )
        )
    return findings


def _gateway_key(data: Path, gw: str) -> Finding:
    try:
        summary = key_summary(gw, data)
    except KeyFileError as exc:
        hint = "" if "keys init" in str(exc) else f" (armoire keys init --data {data})"
        return Finding(Level.FATAL, f"{exc}{hint}")
    return Finding(Level.OK, f"gateway key {data / GATEWAY_KEY} readable (kid {summary['kid']})")


def _trust(data: Path, gw: str) -> Finding:
    try:
        store = TrustStore.load(data, gw=gw)
    except TrustError as exc:
        return Finding(
            Level.PROBLEM,
            f"trust store unusable: {exc.message}; the agent runs and reports, "
            "but refuses every command",
        )
    return Finding(Level.OK, f"trust store valid ({len(store.keys)} trusted keys)")


def _serial_lines(config: Config) -> list[Finding]:
    findings = []
    serial = [d.settings.line for d in config.devices if isinstance(d.settings, RtuSettings)]
    ports = {port.role: port for port in serial}
    for role, port in ports.items():
        devices = sum(port.role == role for port in serial)
        path = Path(port.device)
        where = f"serial line {role} ({path}, {devices} devices)"
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            findings.append(
                Finding(
                    Level.PROBLEM,
                    f"{where}: {exc.strerror or exc}; its devices stay comm_fail until it "
                    "appears (the agent keeps retrying)",
                )
            )
            continue
        if not stat.S_ISCHR(mode):
            findings.append(Finding(Level.PROBLEM, f"{where}: not a character device"))
        elif not os.access(path, os.R_OK | os.W_OK):
            findings.append(Finding(Level.PROBLEM, f"{where}: no read/write permission"))
        else:
            findings.append(Finding(Level.OK, f"{where}: present"))
    return findings

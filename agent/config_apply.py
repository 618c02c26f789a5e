"""``config apply`` from the console: swap the configuration, prove it, or roll back by itself.

The agent's parts are built from one `Config`, so a new one takes effect by restarting the
agent: the console stages it (`stage`: the running file copied to ``<config>.previous``, a
``<config>.pending`` marker written, the new text swapped in atomically), then the agent stops
cleanly and re-executes itself (agent/cli.py; the PID stays, so systemd and the simulator
see the same process). On start, a pending marker puts the agent on probation (`Probation`):
if every device answered and no loop stalled within `DEADLINE_S`, the new file is kept
(``config.applied``); otherwise, or if the new file does not even load, the previous file is
restored, a ``<config>.rolledback`` note written, and the agent restarts once more with the
old configuration, which audits ``config.rolled_back`` from the note and shows it on the
console.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.clock import Clock
from agent.config import Config
from agent.durable import write_atomically

log = logging.getLogger(__name__)

# How long a new configuration has to prove itself: a few poll cycles of slow devices.
DEADLINE_S: Final = float(os.environ.get("ARMOIRE_APPLY_DEADLINE", "20"))


@dataclass(frozen=True, slots=True)
class Staged:
    """A pending apply, as read from the marker."""

    sub: str
    console: str
    previous: Path
    deadline_s: float


def _marker(config_path: Path, suffix: str) -> Path:
    return config_path.with_name(config_path.name + suffix)


def _write(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o640)


def stage(config: Config, new_path: Path, *, sub: str, console: str) -> None:
    """Swap ``new_path``'s content in as the running configuration file, on probation."""
    current = config.source
    previous = _marker(current, ".previous")
    _write(previous, current.read_bytes())
    marker = {"sub": sub, "console": console, "previous": str(previous), "deadline_s": DEADLINE_S}
    _write(_marker(current, ".pending"), json.dumps(marker).encode())
    _write(current, new_path.read_bytes())
    log.warning("configuration %s staged from %s by %s: restarting", current, new_path, sub)


def staged(config_path: Path) -> Staged | None:
    """The pending apply of this configuration file, if any."""
    try:
        data = json.loads(_marker(config_path, ".pending").read_text())
        return Staged(
            sub=str(data["sub"]),
            console=str(data["console"]),
            previous=Path(data["previous"]),
            deadline_s=float(data["deadline_s"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("unreadable %s (%s): ignored", _marker(config_path, ".pending"), exc)
        _marker(config_path, ".pending").unlink(missing_ok=True)
        return None


def confirm(config_path: Path) -> None:
    """The new configuration proved itself: end the probation."""
    _marker(config_path, ".pending").unlink(missing_ok=True)


def roll_back(config_path: Path, pending: Staged, reason: str) -> None:
    """Put the previous configuration back and leave a note for the next start."""
    _write(config_path, pending.previous.read_bytes())
    note = {"sub": pending.sub, "console": pending.console, "reason": reason}
    _write(_marker(config_path, ".rolledback"), json.dumps(note).encode())
    _marker(config_path, ".pending").unlink(missing_ok=True)
    log.error("configuration rolled back to %s: %s", pending.previous, reason)


def take_rollback_note(config_path: Path) -> dict[str, Any] | None:
    """The note a rollback left (read once), or None."""
    path = _marker(config_path, ".rolledback")
    try:
        note = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        note = {"reason": f"(note unreadable: {exc})"}
    path.unlink(missing_ok=True)
    return note if isinstance(note, dict) else {"reason": "(note unreadable)"}


async def prove(clock: Clock, pending: Staged, problem: Callable[[], str | None]) -> str | None:
    """Wait up to the deadline for ``problem()`` to be None (healthy); the last problem if not.

    Polled once a second: the answer comes a second late at most, which no one waits on.
    """
    deadline = clock.monotonic() + pending.deadline_s
    while True:
        why = problem()
        if why is None or clock.monotonic() >= deadline:
            return why
        await clock.sleep(1.0)

"""``armoire status``: the running agent's ``status.json``, read and shown for a person.

The agent rewrites ``DATA/status.json`` every couple of seconds (agent/runtime.py);
this module only reads it, so it works with the agent running or stopped, as
any user who can read the data directory. Times in the file are wall-clock ms;
a person gets local time and ages, a tool gets the file plus ``age_s`` and
``running``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent.instance import running_pid

STATUS_FILE = "status.json"
# The agent writes the file every 2 s (runtime.STATUS_PERIOD): older than this, it is stale.
STALE_AFTER_S = 10.0


class StatusError(Exception):
    """No readable status in the data directory."""


def read_status(data: Path, *, now_ms: int | None = None) -> dict[str, Any]:
    """The status file with ``age_s`` (seconds since written) and ``running`` (pid or None)."""
    path = data / STATUS_FILE
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        raise StatusError(
            f"no {path}: the agent has not run with this data directory "
            "(give --data DIR or --config FILE)"
        ) from None
    except (OSError, ValueError) as exc:
        raise StatusError(f"cannot read {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise StatusError(f"{path}: not a status object")
    now = time.time() * 1000 if now_ms is None else now_ms
    t = loaded.get("t")
    loaded["age_s"] = round((now - t) / 1000, 1) if isinstance(t, int) else None
    loaded["running"] = running_pid(data)
    return loaded


def _local(t_ms: object) -> str:
    if not isinstance(t_ms, int | float):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t_ms / 1000))


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _left(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "until relinquished"
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d} left"


def format_status(status: dict[str, Any]) -> str:
    """Lines for a person: link, mode, outbox, devices, alarms, holds."""
    now = status.get("t")
    age = status.get("age_s")
    pid = status.get("running")
    lines = []
    if pid is None:
        lines.append(f"agent: NOT RUNNING (last status written {_local(now)}, {_age(age)} ago)")
    else:
        stale = isinstance(age, int | float) and age > STALE_AFTER_S
        lines.append(
            f"agent: running (pid {pid or '?'}), gateway {status.get('gw')}, "
            f"boot {status.get('boot', '?')}, status of {_local(now)}"
            + (f" — STALE ({_age(age)} old)" if stale else "")
        )
    uplink = status.get("uplink", {})
    lines.append(
        f"link: {uplink.get('state', '?')} to {uplink.get('broker', '?')}, "
        f"{uplink.get('connects', 0)} connections, {uplink.get('published', 0)} published"
    )
    if "mode" in status:
        mode = status["mode"]
        lines.append(f"mode: {mode if isinstance(mode, str) else json.dumps(mode)}")
    outbox = status.get("outbox", {})
    depth = outbox.get("depth", {})
    queued = sum(depth.values()) if isinstance(depth, dict) else 0
    detail = ", ".join(f"{n} {k}" for k, n in depth.items() if n) if queued else "empty"
    oldest = outbox.get("oldest_age_s")
    lines.append(
        f"outbox: {queued} queued ({detail})"
        + (f", oldest {_age(oldest)} old" if queued and oldest is not None else "")
        + f", {outbox.get('bytes', 0)} of {outbox.get('capacity_bytes', 0)} bytes"
    )
    for role, line in status.get("lines", {}).items():
        if not line.get("open"):
            lines.append(f"serial line {role} ({line.get('port')}): CLOSED — {line.get('error')}")
    devices = status.get("devices", {})
    lines.append(f"devices ({len(devices)}):")
    for name, dev in devices.items():
        polled = dev.get("last_poll")
        answered = dev.get("last_answer")
        since = (
            None if not isinstance(answered, int) or not isinstance(now, int) else now - answered
        )
        if polled is None:
            seen = "not polled yet"
        elif since is None:
            seen = "never answered"
        else:
            seen = f"last answer {_age(since / 1000)} ago"
        lines.append(f"  {name:<14} {dev.get('state', '?'):<10} {seen}")
    alarms = status.get("alarms", [])
    lines.append(f"active alarms ({len(alarms)}):" if alarms else "active alarms: none")
    lines += [f"  {a.get('code')} {a.get('src')}" for a in alarms]
    holds = status.get("holds", [])
    lines.append(f"holds ({len(holds)}):" if holds else "holds: none")
    for h in holds:
        until = h.get("until")
        left = h.get("left_s")
        if isinstance(left, int | float) and isinstance(age, int | float):
            left = max(0.0, left - age)  # counted from the status's time, not now
        lines.append(
            f"  {h.get('point')} = {json.dumps(h.get('value'))} at prio {h.get('prio')} "
            f"by {h.get('source')}, {_left(left)}"
            + (f" (until {_local(until)})" if until is not None else "")
        )
    return "\n".join(lines)

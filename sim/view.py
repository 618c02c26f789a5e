"""The simulator's live view: what the control room sees, fitted to the terminal.

Everything shown comes from what the reference central post received and
verified, plus the agent's own ``status.json`` for what never crosses the wire
(its outbox, the holds in its priority arrays). The frame is built as a list
of lines, each cut to the terminal's width, and never more lines than the
terminal has rows, so nothing wraps and the header never scrolls away; a
larger terminal gets more devices, longer values and a longer history.

Layout, top to bottom (:meth:`View.frame`):

* the status lines: gateway, link, agent, outbox; the central post's figures;
  then one line per :attr:`View.extra_lines` producer (a place for more status
  lines, e.g. the lighting schedule);
* the devices table: state as the control room sees it (``COMM_FAIL`` with the
  last known values marked as such, ``stale`` while the gateway is offline);
* the panel: active alarms and device faults, active holds with their
  countdown, then the latest events, audit records and command results;
* the keys and the last action.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from central.post import CentralPost, Reading

# Seconds over which the view's readings/s is averaged.
RATE_WINDOW = 15.0
# Rows the panel keeps for itself when devices compete for room.
PANEL_MIN_ROWS = 5
QUALITY = {0: "good", 1: "stale", 2: "COMM_FAIL", 3: "out_of_range", 4: "overridden"}
COMM_FAIL = 2
# Points whose true value is a fault the device reports (sim/devices/lamp.py; the signal
# controller's NTCIP 1202 flags, drivers/profiles/ntcip-1202-asc.toml; a camera covered or
# turned).
FAULT_POINTS = ("failure", "fault_flash", "mmu_fault", "tamper")

LineSource = Callable[[], str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Screen:
    """What one frame shows; gathered by :meth:`View.render`, laid out by :meth:`View.frame`."""

    status: list[str]
    devices: list[tuple[str, str, str]]  # name, state, values
    alarms: list[str]
    holds: list[str]
    recent: list[str]
    footer: list[str]


def fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` characters, an ellipsis marking the cut."""
    if len(line) <= width:
        return line
    return line[: max(0, width - 1)] + "…"


def _clock(t_ms: object) -> str:
    if not isinstance(t_ms, int | float):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(t_ms / 1000))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# Shown first in a device's row, so the values that matter survive a narrow terminal.
FIRST_POINTS = (
    "level", "on", "failure", "power", "closed", "command", "temperature", "humidity",
    "flash_status", "fault_flash", "mmu_fault", "greens", "yellows", "reds",
)  # fmt: skip


def _rank(point: str) -> int:
    return FIRST_POINTS.index(point) if point in FIRST_POINTS else len(FIRST_POINTS)


def _countdown(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class View:
    """The live terminal view (a full-screen frame on a TTY, a status line otherwise)."""

    def __init__(
        self,
        out: TextIO,
        *,
        gw: str,
        broker: str,
        data: Path,
        size: Callable[[], os.terminal_size] | None = None,
    ) -> None:
        self.out = out
        self.data = data
        self.gw = gw
        self.broker = broker
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._size = size or self._terminal_size
        self._samples: deque[tuple[float, int]] = deque()
        self.rate = 0.0
        # Set by the simulator: the keys' help and what the last key did (sim/controls.py).
        self.footer: Callable[[], list[str]] = lambda: ["Ctrl-C to stop."]
        # More status lines, shown under the central post's figures; a producer
        # returning None shows nothing (e.g. the lighting schedule, when there is one).
        self.extra_lines: list[LineSource] = []

    def _terminal_size(self) -> os.terminal_size:
        # The terminal's size now, from the kernel: COLUMNS/LINES in the environment
        # (which shutil.get_terminal_size prefers) do not follow a resize.
        try:
            return os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):
            return shutil.get_terminal_size()

    def width(self) -> int:
        """Columns a frame line may use."""
        return max(20, self._size().columns - 1)

    def sample_rate(self, readings: int) -> None:
        # Over the last RATE_WINDOW seconds: telemetry arrives in batches a few
        # seconds apart, so a one-second rate would flicker between 0 and a burst.
        now = time.monotonic()
        self._samples.append((now, readings))
        while self._samples and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        self.rate = (readings - n0) / (now - t0) if now > t0 else 0.0

    # -- gathering ---------------------------------------------------------------

    def render(
        self,
        central: CentralPost,
        *,
        agent_state: str,
        link_state: str,
        devices: list[str],
    ) -> None:
        """Draw one frame (TTY) or, every 10 s, one status line (pipe or file)."""
        stats = central.stats()
        self.sample_rate(stats["readings"])
        status = agent_status(self.data) or {}
        if not self.tty:
            up = int(time.monotonic() - self.started)
            if up % 10 == 0:
                line = self._status_lines(central, status, agent_state, link_state)[0]
                print(f"[{up:5d}s] {line}", file=self.out, flush=True)
            return
        screen = self.screen(central, status, agent_state, link_state, devices)
        cols, rows = self._size()
        # Home and clear (which also forgets any line the terminal marked as wrapped),
        # then draw: never more lines than rows, so nothing scrolls.
        lines = self.frame(screen, cols, rows)
        self.out.write("\x1b[H\x1b[2J" + "\n".join(lines))
        self.out.flush()

    def screen(
        self,
        central: CentralPost,
        status: dict[str, Any],
        agent_state: str,
        link_state: str,
        devices: list[str],
    ) -> Screen:
        offline = self._gateway_state(central) != "ONLINE" or link_state != "up"
        return Screen(
            status=self._status_lines(central, status, agent_state, link_state),
            devices=list(self._device_rows(central, devices, stale=offline)),
            alarms=self._alarms(central),
            holds=self._holds(status),
            recent=self._recent(central),
            footer=self.footer(),
        )

    def _gateway_state(self, central: CentralPost) -> str:
        state = central.state.get(self.gw)
        if state is None:
            return "not seen yet"
        return "ONLINE" if state.get("online") else "OFFLINE"

    def _status_lines(
        self, central: CentralPost, status: dict[str, Any], agent_state: str, link_state: str
    ) -> list[str]:
        stats = central.stats()
        up = int(time.monotonic() - self.started)
        outbox = status.get("outbox", {})
        queued = sum(outbox.get("depth", {}).values())
        evicted = outbox.get("evicted", {}).get("readings", 0)
        lines = [
            f"{self.gw} · up {_countdown(up)} · gateway {self._gateway_state(central)}"
            f" · link {link_state} · agent {agent_state} · outbox {queued}"
            + (f" ({evicted} readings evicted)" if evicted else ""),
            f"central: {stats['verified']} verified · {stats['rejected']} rejected · "
            f"{stats['readings']} readings ({self.rate:.1f}/s) · {stats['points']} points · "
            f"{stats['duplicates']} duplicates · broker {self.broker}",
        ]
        for source in self.extra_lines:
            line = source()
            if line is not None:
                lines.append(line)
        return lines

    def _device_rows(
        self, central: CentralPost, devices: list[str], *, stale: bool
    ) -> Iterator[tuple[str, str, str]]:
        by_device: dict[str, dict[str, Reading]] = {}
        for reading in central.latest.values():
            if reading.gw == self.gw:
                device, _, name = reading.point.partition("/")
                by_device.setdefault(device, {})[name] = reading
        now = time.time() * 1000
        for name in devices:
            # Bus health points (bus.timeouts...) have their own status line.
            readings = {
                k: r for k, r in by_device.get(name, {}).items() if not k.startswith("bus.")
            }
            ordered = sorted(readings.items(), key=lambda kv: (_rank(kv[0]), kv[0]))
            values = "  ".join(f"{k}={_fmt(r.value)}" for k, r in ordered)
            if not readings:
                yield name, "—", "no reading yet"
                continue
            qualities = {r.quality for r in readings.values()}
            newest = max(r.t_ms for r in readings.values())
            age = f"{max(0, int((now - newest) / 1000))} s"
            if COMM_FAIL in qualities:
                yield name, "COMM_FAIL", f"no answer · last known ({age} ago): {values}"
            elif stale:
                yield name, "stale", f"gateway offline · last known ({age} ago): {values}"
            else:
                bad = sorted(q for q in qualities if q)
                state = "good" if not bad else ",".join(QUALITY.get(q, str(q)) for q in bad)
                if any(k in FAULT_POINTS and r.value is True for k, r in readings.items()):
                    state = "FAULT"
                yield name, state, values

    def _active_alarms(self, central: CentralPost) -> dict[tuple[str, str], dict[str, Any]]:
        """The raising Event of each alarm not cleared since, by (code, src)."""
        active: dict[tuple[str, str], dict[str, Any]] = {}
        for event in central.events:
            if event.get("gw", self.gw) != self.gw or event.get("kind") != "alarm":
                continue
            key = (str(event.get("code")), str(event.get("src", "")))
            if event.get("state") == "raised":
                active[key] = event
            elif event.get("state") == "cleared":
                active.pop(key, None)
        return active

    def _alarms(self, central: CentralPost) -> list[str]:
        active = self._active_alarms(central)
        lines = [
            f"ALARM {code} {src} since {_clock(e.get('t'))}: {e.get('msg', '')}"
            for (code, src), e in active.items()
        ]
        # A device fault not (yet) raised as an alarm by the gateway's rules; once the
        # alarm is up, it says the same thing.
        alarmed = {src for _, src in active}
        for reading in central.latest.values():
            device, _, point = reading.point.partition("/")
            if (
                reading.gw == self.gw
                and point in FAULT_POINTS
                and reading.value is True
                and device not in alarmed
            ):
                lines.append(f"FAULT {device} reports {point} since {_clock(reading.t_ms)}")
        return lines

    def _holds(self, status: dict[str, Any]) -> list[str]:
        """Timed holds first (an operator's or a technician's, with their countdown); the
        entries that stay until relinquished (the lighting schedule's level 14, a fail-safe
        rule's) are one line per source, so they never push a countdown off the screen."""
        t = status.get("t")
        elapsed = (time.time() * 1000 - t) / 1000 if isinstance(t, int) else 0.0
        timed: list[str] = []
        standing: dict[tuple[str, Any], list[str]] = {}
        for hold in status.get("holds", []):
            left = hold.get("left_s")
            if left is None:
                key = (str(hold.get("source")), hold.get("prio"))
                standing.setdefault(key, []).append(str(hold.get("point")))
                continue
            timed.append(
                f"HOLD {hold.get('point')}={json.dumps(hold.get('value'))} prio {hold.get('prio')}"
                f" {_countdown(left - elapsed)} left · {hold.get('source')}"
            )
        for (source, prio), points in sorted(standing.items(), key=lambda kv: str(kv[0])):
            shown = points[0] if len(points) == 1 else f"{len(points)} points"
            timed.append(f"HOLD {shown} prio {prio} until relinquished · {source}")
        return timed

    def _recent(self, central: CentralPost) -> list[str]:
        items: list[tuple[int, str]] = []
        # Acks first: an Ack and its audit record share their time, and the Ack (with the
        # effective value) is the one to show when only one fits.
        for ack in central.acks:
            if ack.get("gw", self.gw) != self.gw:
                continue
            text = f"ack {ack.get('status')} cmd {bytes(ack.get('cmd', b'')).hex()[:8]}"
            if ack.get("reason"):
                text += f" ({ack['reason']})"
            if "value" in ack:
                text += f" value {json.dumps(ack['value'], default=str)}"
            items.append((int(ack.get("t", 0)), text))
        # An alarm still up is on its ALARM line already: its raising is not repeated here.
        raising = {id(e) for e in self._active_alarms(central).values()}
        for event in central.events:
            if event.get("gw", self.gw) != self.gw or id(event) in raising:
                continue
            state = event.get("state")
            mark = "" if state == "info" else f" {state}"
            text = f"{event.get('kind')}{mark} {event.get('code')}"
            if event.get("msg"):
                text += f": {event['msg']}"
            elif event.get("src"):
                text += f" {event['src']}"
            items.append((int(event.get("t", 0)), text))
        items.sort(key=lambda item: item[0], reverse=True)
        return [f"{_clock(t)} {text}" for t, text in items]

    def close(self) -> None:
        """Leave the cursor below the last frame, so what follows starts on a clean line."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()

    # -- layout ------------------------------------------------------------------

    def frame(self, screen: Screen, cols: int, rows: int) -> list[str]:
        """The lines of one frame: at most ``rows - 1`` (the cursor's line stays free),
        none longer than ``cols - 1`` (a full-width line leaves the cursor in the
        terminal's pending-wrap state, which some terminals render as a wrap)."""
        height = max(4, rows - 1)
        cols = max(1, cols - 1)
        top = screen.status
        footer = screen.footer
        rule = "─" * cols
        # Devices header and the panel's rule are the two fixed separators.
        room = max(2, height - len(top) - len(footer) - 2)
        panel_items = len(screen.alarms) + len(screen.holds) + len(screen.recent)
        # The panel gets what the devices leave, at least a few rows (or what it needs).
        panel_rows = max(min(max(1, panel_items), PANEL_MIN_ROWS), room - len(screen.devices))
        panel_rows = min(panel_rows, room - 1)
        device_rows = room - panel_rows
        lines = [*top, self._device_header(cols)]
        lines += self._device_lines(screen.devices, device_rows)
        title = (
            f"── alarms {len(screen.alarms)} · holds {len(screen.holds)} · "
            "latest events and commands "
        )
        lines.append(title + rule[len(title) :])
        panel = [*screen.alarms, *screen.holds, *screen.recent]
        if not panel:
            panel = ["no alarm, no hold, no event yet"]
        lines += panel[:panel_rows]
        # On a tiny terminal the status lines may already fill it: the keys stay.
        body = height - len(footer)
        lines = lines[:body] + [""] * (body - len(lines)) + footer
        return [fit(line, cols) for line in lines[-height:]]

    @staticmethod
    def _device_header(cols: int) -> str:
        return f"{'device':<10} {'state':<9} values (as verified by the central post)"

    @staticmethod
    def _device_lines(devices: list[tuple[str, str, str]], rows: int) -> list[str]:
        def line(row: tuple[str, str, str]) -> str:
            name, state, values = row
            return f"{name:<10} {state:<9} {values}"

        if len(devices) <= rows:
            return [line(row) for row in devices]
        # Not enough room: devices in trouble first, then the others, and a count.
        shown = rows - 1
        trouble = [row for row in devices if row[1] != "good"]
        ordered = trouble + [row for row in devices if row[1] == "good"]
        hidden = ordered[shown:]
        bad = sum(row[1] != "good" for row in hidden)
        more = f"… {len(hidden)} more devices" + (f" ({bad} not good)" if bad else " (all good)")
        return [line(row) for row in ordered[:shown]] + [more]


def agent_status(data: Path) -> dict[str, Any] | None:
    """The agent's ``status.json`` in ``data``, or None."""
    try:
        loaded: dict[str, Any] = json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return loaded


def schedule_line(status: dict[str, Any]) -> str:
    """One line of the agent's fail-safe state: mode, clock, and each lighting group's level
    and next switching instant (local time of the simulator's machine)."""
    failsafe = status.get("failsafe") or {}
    groups = []
    for name, group in (failsafe.get("lighting") or {}).items():
        level = group.get("level", 0)
        nxt = group.get("next")
        when = dt.datetime.fromisoformat(nxt).astimezone().strftime("%H:%M") if nxt else "-"
        cell = " (photocell)" if group.get("photocell") else ""
        groups.append(f"{name} {'on ' + str(level) + ' %' if level else 'off'}{cell}, next {when}")
    clock = (failsafe.get("clock") or {}).get("quality", "?")
    return f"fail-safe: mode {failsafe.get('mode', '?')}  clock {clock}  schedule " + (
        "; ".join(groups) or "none"
    )


def bus_line(status: dict[str, Any]) -> str:
    """One line of the agent's bus health (status.json): each line's utilisation over the
    last window, then the devices that cost something since the agent started (timeouts,
    bad replies, exceptions), worst first."""
    lines = [
        f"{role} {line['utilisation_pct']} %"
        for role, line in (status.get("lines") or {}).items()
        if line.get("utilisation_pct") is not None
    ]
    costly = []
    for name, device in (status.get("devices") or {}).items():
        bus = device.get("bus") or {}
        bad = bus.get("framing_errors", 0) + bus.get("other_errors", 0)
        parts = [
            f"{n} {what}"
            for n, what in (
                (bus.get("timeouts", 0), "timeouts"),
                (bad, "bad replies"),
                (bus.get("exceptions", 0), "exceptions"),
            )
            if n
        ]
        if parts:
            costly.append((bus.get("timeouts", 0) + bad, f"{name} " + ", ".join(parts)))
    worst = [text for _, text in sorted(costly, key=lambda c: -c[0])[:4]]
    more = f" (+{len(costly) - 4} more)" if len(costly) > 4 else ""
    busy = f"{'; '.join(lines)} busy" if lines else "utilisation after the first window"
    return f"bus: {busy} · " + (" · ".join(worst) + more if worst else "every device answering")

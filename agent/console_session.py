"""The technician console's commands: one `Session` per connection, shared `ConsoleState`.

Read-only commands need no token (what a technician at the cabinet needs to see at once, link
down or not). ``login <token>`` opens a maintenance session (agent/maintenance.py) that ends at
the token's ``exp``, on ``logout`` or after `IDLE_TIMEOUT_S` without input; while any session is
open, the point ``console/session`` is true (the fail-safe rules use it: a door opened during a
session is no intrusion). Failed logins are counted across connections: after `MAX_FAILURES` in
a row the console refuses logins for `LOCKOUT_S`.

Every action is an audit Event, committed before the answer is shown: ``console.login``,
``console.login_failed``, ``console.override`` (override and release), ``config.applied`` and
``config.rolled_back`` (agent/config_apply.py). Actions (``action NAME``) are audited as
``console.override`` with ``data.action``.
"""

from __future__ import annotations

import collections
import difflib
import fnmatch
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agent.arbiter import ArbiterError, DeviceWriteError, Priority
from agent.config import ConfigError, load_config
from agent.maintenance import Token, TokenRefused, TokenVerifier
from agent.messages import Severity
from agent.points import Quality, Sample, Value
from agent.security.keys import KeyFileError, key_summary
from agent.security.trust import TrustError, TrustStore
from agent.status import format_status

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)

SESSION_POINT: Final = "console/session"
MAX_FAILURES: Final = 5  # failed logins in a row before the lockout
LOCKOUT_S: Final = 300.0
IDLE_TIMEOUT_S: Final = 900.0  # a session left open on a forgotten laptop ends
LOG_LINES: Final = 200  # the ring `log [n]` reads
MAX_TOKEN_VALIDITY_S: Final = 24 * 3600.0  # a token is for one visit
PROMPT_OPEN: Final = "armoire# "
PROMPT: Final = "armoire> "

HELP: Final = {
    "help": "help [COMMAND]            this list, or one command's help",
    "status": "status                    uplink, mode, clock, outbox, reboot cause, devices",
    "devices": "devices                   each device: state, line, polls, failures; bus health",
    "points": "points [GLOB]             value, quality and age of points (e.g. points lamp-*)",
    "alarms": "alarms                    active alarms",
    "rules": "rules                     fail-safe rules that are not idle",
    "schedule": "schedule                  lighting programs: level, on/off, next switch",
    "log": "log [N]                   the agent's last N log lines (default 20)",
    "keys": "keys                      gateway id, kid and public key (to read over the phone)",
    "login": "login TOKEN               open a maintenance session (token not echoed)",
    "logout": "logout                    end the session",
    "override": "override POINT VALUE [HOLD]  write at priority 8 for HOLD s (capped)  [session]",
    "release": "release POINT             remove this console's priority-8 write   [session]",
    "action": "action NAME               ping, selftest, snapshot (all cameras) [session]",
    "config": "config show|check F|diff F|apply F  the configuration            [session]",
    "trust": "trust show                trust store keys and roles              [session]",
    "exit": "exit                      leave (the session ends too)",
}
SESSION_COMMANDS: Final = frozenset({"override", "release", "action", "config", "trust"})
# Configuration keys whose values are secrets (SNMP community, USM passphrases): `config
# show` and `config diff` print them as "***", so a screen or a photo of it leaks nothing.
_SECRET: Final = re.compile(
    r"""\b(community|auth_key|priv_key|password)(\s*=\s*)("(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
)


def redact(text: str) -> str:
    """``text`` (TOML) with the values of secret keys (SNMP community and USM keys, camera
    passwords) replaced by ``"***"``: a laptop's screen in the street is no place for them,
    nor for their length, so a diff does not show a changed secret either."""
    return _SECRET.sub(r'\1\2"***"', text)


class LogRing(logging.Handler):
    """The agent's last `LOG_LINES` log lines, for ``log [n]``."""

    def __init__(self, size: int = LOG_LINES) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)


@dataclass
class _Open:
    token: Token
    last_input: float  # monotonic


class ConsoleState:
    """What all console connections share: login failures, open sessions, the log ring."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.failures = 0
        self.locked_until = 0.0  # monotonic
        self.refused_while_locked = 0  # logins tried during the current lockout
        self.sessions: set[Session] = set()
        self.ring = LogRing()

    def publish_session(self) -> None:
        """``console/session`` follows whether any session is open."""
        agent = self.agent
        agent.points.update(
            Sample(
                name=SESSION_POINT,
                value=bool(self.sessions),
                quality=Quality.GOOD,
                t_ms=agent.time_floor.now_ms(),
            )
        )


class Session:
    """One console connection: its commands, its maintenance session if open."""

    def __init__(
        self, state: ConsoleState, *, where: str, restart: Callable[[], None] | None = None
    ) -> None:
        self.state = state
        self.agent = state.agent
        self.where = where  # "serial" or "socket": in audit records
        self._open: _Open | None = None
        self._restart = restart
        self.closed = False
        # Tells the terminal a session ended by itself (set by the transport).
        self.on_end: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ session

    @property
    def token(self) -> Token | None:
        """The open session's token, after checking its end (exp, idle)."""
        self.check_end()
        return None if self._open is None else self._open.token

    def check_end(self) -> str | None:
        """End the session if its token expired or it was idle too long; why, or None."""
        if self._open is None:
            return None
        why = None
        if self.agent.time_floor.now_ms() > self._open.token.exp:
            why = "token expired"
        elif self.agent.clock.monotonic() - self._open.last_input > IDLE_TIMEOUT_S:
            why = f"idle for {IDLE_TIMEOUT_S / 60:.0f} min"
        if why is not None:
            self._end(why)
        return why

    def prompt(self) -> str:
        return PROMPT_OPEN if self.token is not None else PROMPT

    def _end(self, why: str) -> None:
        if self._open is None:
            return
        log.info("console session of %s ended (%s)", self._open.token.sub, why)
        self._open = None
        self.state.sessions.discard(self)
        self.state.publish_session()

    def close(self) -> None:
        """The connection went away: end the session."""
        self._end("disconnected")
        self.closed = True

    def _audit(
        self, code: str, msg: str, data: dict[str, Any], *, warning: bool = False, src: str = ""
    ) -> None:
        agent = self.agent
        agent.outbox.append(
            agent.events.audit(
                code=code,
                severity=Severity.WARNING if warning else Severity.NOTICE,
                msg=msg,
                data={"console": self.where, **data},
                src=src or None,
            )
        )

    # ------------------------------------------------------------------ dispatch

    async def handle(self, line: str) -> str:
        """Run one command line; the text to show (without the prompt)."""
        words = line.split()
        if self._open is not None and self.token is not None:
            self._open.last_input = self.agent.clock.monotonic()
        if not words:
            return ""
        name, args = words[0].lower(), words[1:]
        handler: Callable[[list[str]], Awaitable[str]] | None = getattr(self, f"_cmd_{name}", None)
        if handler is None or name not in HELP:
            close = ", ".join(n for n in HELP if n.startswith(name[:1])) or "help"
            return f"% unknown command {name[:20]!r}: try {close}"
        if name in SESSION_COMMANDS and self.token is None:
            return f"% {name} needs a maintenance session: login TOKEN"
        try:
            return await handler(args)
        except _Usage as exc:
            return f"% {exc}\n  usage: {HELP[name]}"

    # ------------------------------------------------------------------ read-only

    async def _cmd_help(self, args: list[str]) -> str:
        if args:
            return HELP.get(args[0].lower(), f"% no command {args[0][:20]!r}")
        return "\n".join(HELP.values())

    async def _cmd_status(self, args: list[str]) -> str:
        status = self.agent.status()
        status["running"] = status.get("pid")
        status["age_s"] = 0
        fs = status.get("failsafe", {})
        status["mode"] = fs.get("mode")
        outbox = status.get("outbox", {})
        clock = fs.get("clock", {})
        extra = [
            f"clock: {clock.get('quality', '?')} ({clock.get('reason', '?')})",
            f"reboot cause: {fs.get('reboot') or 'unknown'}",
            f"outbox oldest record: {_ago(outbox.get('oldest_age_s'), none='none queued')}",
            f"session: {self._session_line()}",
        ]
        return format_status(status) + "\n" + "\n".join(extra)

    def _session_line(self) -> str:
        token = self.token
        if token is None:
            return "none (read-only)"
        left = (token.exp - self.agent.time_floor.now_ms()) // 1000
        return f"{token.sub}, {left} s left"

    async def _cmd_devices(self, args: list[str]) -> str:
        status = self.agent.status()
        out = [f"{'device':<14} {'state':<10} {'line':<10} {'polls':>7} {'fail':>6}  last answer"]
        now = status["t"]
        for name, d in status["devices"].items():
            ans = d.get("last_answer")
            out.append(
                f"{name:<14} {d['state']:<10} {d['line']:<10} {d['polls']:>7} "
                f"{d['failures']:>6}  {_ago(None if ans is None else (now - ans) / 1000)}"
            )
        for role, line in status["lines"].items():
            health = "open" if line["open"] else f"CLOSED ({line['error']})"
            out.append(f"bus {role} ({line['port']}): {health}")
        return "\n".join(out)

    async def _cmd_points(self, args: list[str]) -> str:
        pattern = args[0] if args else "*"
        now = self.agent.time_floor.now_ms()
        rows = [
            f"{s.name:<28} {json.dumps(s.value):>10} {s.quality.name.lower():<12} "
            f"{_ago((now - s.t_ms) / 1000)}"
            for s in sorted(self.agent.points, key=lambda s: s.name)
            if fnmatch.fnmatchcase(s.name, pattern)
        ]
        return "\n".join(rows) if rows else f"% no point matches {pattern!r}"

    async def _cmd_alarms(self, args: list[str]) -> str:
        alarms = self.agent.status()["alarms"]
        if not alarms:
            return "no active alarms"
        return "\n".join(f"{a['code']:<22} {a['src']}" for a in alarms)

    async def _cmd_rules(self, args: list[str]) -> str:
        rules = self.agent.status()["failsafe"]["rules"]
        names = [r.name for r in self.agent.config.rules]
        lines = [f"{len(names)} rules: {', '.join(names) or 'none'}"]
        lines += [f"  {name:<30} {phase}" for name, phase in rules.items()]
        return "\n".join(lines if rules else [*lines, "all idle"])

    async def _cmd_schedule(self, args: list[str]) -> str:
        lighting = self.agent.status()["failsafe"]["lighting"]
        if not lighting:
            return "no lighting program"
        return "\n".join(
            f"{name:<14} level {st['level']:>3} %  on {st['on'][11:16]}  off {st['off'][11:16]}"
            f"  next {(st['next'] or '-')[11:16]}  photocell {st['photocell']}"
            for name, st in lighting.items()
        )

    async def _cmd_log(self, args: list[str]) -> str:
        n = _int(args[0], "N") if args else 20
        lines = list(self.state.ring.lines)[-max(1, min(n, LOG_LINES)) :]
        return "\n".join(lines) if lines else "no log lines yet"

    async def _cmd_keys(self, args: list[str]) -> str:
        cfg = self.agent.config
        try:
            summary = key_summary(cfg.gateway, cfg.storage.data_dir)
        except KeyFileError as exc:
            return f"% {exc}"
        pub = summary["pub"]
        groups = " ".join(pub[i : i + 8] for i in range(0, len(pub), 8))
        return f"gateway {summary['gw']}\nkid     {summary['kid']}\npub     {groups}"

    async def _cmd_exit(self, args: list[str]) -> str:
        self._end("exit")
        self.closed = True
        return "bye"

    # ------------------------------------------------------------------ session

    async def _cmd_login(self, args: list[str]) -> str:
        if len(args) != 1:
            raise _Usage("login takes the token, one line of base64url")
        state, agent = self.state, self.agent
        mono = agent.clock.monotonic()
        if mono < state.locked_until:
            left = math.ceil(state.locked_until - mono)
            # One record per lockout: a login flood on the port must not flood the outbox.
            state.refused_while_locked += 1
            if state.refused_while_locked == 1:
                self._audit(
                    "console.login_failed",
                    "console login refused: locked out",
                    {"reason": "locked-out", "left_s": left},
                    warning=True,
                )
            return f"% locked out after {MAX_FAILURES} failed logins: try again in {left} s"
        if state.refused_while_locked > 1:
            log.warning(
                "console: %d more logins refused during the lockout",
                state.refused_while_locked - 1,
            )
        state.refused_while_locked = 0
        verifier = self._verifier()
        if verifier is None:
            return "% no usable trust store: logins are impossible (see log)"
        try:
            token = verifier.check_text(args[0], agent.time_floor.now_ms())
        except TokenRefused as exc:
            state.failures += 1
            locked = state.failures >= MAX_FAILURES
            if locked:
                state.locked_until = mono + LOCKOUT_S
                state.failures = 0
            self._audit(
                "console.login_failed",
                f"console login refused: {exc.reason}",
                {"reason": exc.reason, "detail": exc.detail, "sub": exc.sub, "locked": locked},
                warning=True,
            )
            more = f"; locked out for {LOCKOUT_S:.0f} s" if locked else ""
            return f"% login refused: {exc.reason} ({exc.detail}){more}"
        state.failures = 0
        self._end("new login")
        self._open = _Open(token, mono)
        state.sessions.add(self)
        state.publish_session()
        self._audit(
            "console.login",
            f"console session opened by {token.sub}",
            {"sub": token.sub, "kid": token.kid.hex(), "exp": token.exp},
        )
        left = (token.exp - agent.time_floor.now_ms()) // 1000
        return f"session open for {token.sub}, {left} s left"

    def _verifier(self) -> TokenVerifier | None:
        cfg = self.agent.config
        try:
            trust = TrustStore.load(cfg.storage.data_dir, gw=cfg.gateway)
        except TrustError as exc:
            log.error("console: no usable trust store: %s", exc)
            return None
        return TokenVerifier(
            gw=cfg.gateway,
            trust=trust,
            skew_s=cfg.commands.clock_skew,
            max_validity_s=MAX_TOKEN_VALIDITY_S,
        )

    async def _cmd_logout(self, args: list[str]) -> str:
        if self._open is None:
            return "no session"
        self._end("logout")
        return "session closed"

    # ------------------------------------------------------------------ actions

    @property
    def _source(self) -> str:
        token = self.token
        return f"console:{token.sub if token else '?'}"

    async def _cmd_override(self, args: list[str]) -> str:
        if len(args) not in (2, 3):
            raise _Usage("override takes a point, a value and an optional hold")
        point, text = args[0], args[1]
        agent = self.agent
        if point not in agent._writable:
            return f"% {point[:64]!r} is not a writable point (see points)"
        value = _value(text)
        problem = agent._check_value(point, value)
        if problem is not None:
            return f"% {problem}"
        commands = agent.config.commands
        hold = float(_int(args[2], "HOLD")) if len(args) == 3 else commands.hold_default
        capped = hold is not None and commands.hold_max is not None and hold > commands.hold_max
        if capped:
            hold = commands.hold_max
        sub = self.token.sub if self.token else "?"
        data = {
            "sub": sub,
            "point": point,
            "value": value,
            "prio": int(Priority.TECHNICIAN),
            "hold": hold,
        }
        try:
            await agent.arbiter.write(
                point, value, priority=Priority.TECHNICIAN, source=self._source, hold=hold
            )
        except (ArbiterError, DeviceWriteError) as exc:
            self._audit(
                "console.override",
                f"override of {point} by {sub} failed",
                {**data, "error": str(exc)},
                warning=True,
                src=point,
            )
            return f"% override failed: {exc}"
        self._audit("console.override", f"{point} = {value!r} at 8 by {sub}", data, src=point)
        effective = agent.arbiter.effective(point)
        held = "until released" if hold is None else f"for {hold:.0f} s"
        note = f" (capped at {commands.hold_max:.0f} s)" if capped else ""
        return f"{point} = {json.dumps(value)} at priority 8 {held}{note}; effective {effective}"

    async def _cmd_release(self, args: list[str]) -> str:
        if len(args) != 1:
            raise _Usage("release takes a point")
        point = args[0]
        agent = self.agent
        if point not in agent._writable:
            return f"% {point[:64]!r} is not a writable point"
        sub = self.token.sub if self.token else "?"
        data = {"sub": sub, "point": point, "prio": int(Priority.TECHNICIAN), "release": True}
        try:
            await agent.arbiter.relinquish(point, priority=Priority.TECHNICIAN, source=self._source)
        except DeviceWriteError as exc:
            self._audit(
                "console.override",
                f"release of {point} by {sub} failed",
                {**data, "error": str(exc)},
                warning=True,
                src=point,
            )
            return f"% release failed: {exc}"
        self._audit("console.override", f"{point} released at 8 by {sub}", data, src=point)
        return f"{point} released; effective {agent.arbiter.effective(point)}"

    async def _cmd_action(self, args: list[str]) -> str:
        if len(args) != 1:
            raise _Usage("action takes a name")
        actions = self.agent.console_actions()
        name = args[0]
        if name not in actions:
            return f"% unknown action {name[:20]!r}: {', '.join(sorted(actions))}"
        sub = self.token.sub if self.token else "?"
        try:
            result = await actions[name]()
        except Exception as exc:
            self._audit(
                "console.override",
                f"action {name} by {sub} failed",
                {"sub": sub, "action": name, "error": str(exc)},
                warning=True,
            )
            return f"% action {name} failed: {exc}"
        self._audit(
            "console.override",
            f"action {name} by {sub}",
            {"sub": sub, "action": name, "result": result},
        )
        return json.dumps(result)

    async def _cmd_trust(self, args: list[str]) -> str:
        if args != ["show"]:
            raise _Usage("trust show")
        cfg = self.agent.config
        try:
            trust = TrustStore.load(cfg.storage.data_dir, gw=cfg.gateway)
        except TrustError as exc:
            return f"% {exc}"
        lines = [f"trust store serial {trust.serial}, root kid {trust.root_kid.hex()}"]
        for key in trust.keys.values():
            lines.append(
                f"  kid {key.kid.hex()}  roles {','.join(sorted(key.roles))}  "
                f"nbf {_when(key.nbf_ms)}  exp {_when(key.exp_ms)}"
            )
        return "\n".join(lines)

    async def _cmd_config(self, args: list[str]) -> str:
        from agent import config_apply

        if not args or args[0] not in ("show", "check", "diff", "apply"):
            raise _Usage("config show | check FILE | diff FILE | apply FILE")
        current = self.agent.config.source
        if args[0] == "show":
            return redact(current.read_text(errors="replace")).rstrip("\n")
        if len(args) != 2:
            raise _Usage(f"config {args[0]} needs a FILE")
        path = Path(args[1])
        if not path.is_absolute():
            path = current.parent / path
        try:
            load_config(path)
        except ConfigError as exc:
            return "% invalid configuration:\n" + "\n".join(f"  {e}" for e in exc.errors)
        except OSError as exc:
            return f"% cannot read {path}: {exc.strerror}"
        if args[0] == "check":
            return f"{path}: valid"
        if args[0] == "diff":
            diff = difflib.unified_diff(
                redact(current.read_text(errors="replace")).splitlines(),
                redact(path.read_text(errors="replace")).splitlines(),
                str(current),
                str(path),
                lineterm="",
            )
            if (text := "\n".join(diff)) or current.read_bytes() == path.read_bytes():
                return text or "no difference"
            return "only secret values (shown as ***) differ"
        if self._restart is None:
            return "% config apply is not available here"
        sub = self.token.sub if self.token else "?"
        config_apply.stage(self.agent.config, path, sub=sub, console=self.where)
        self._restart()
        return (
            f"configuration staged; the agent restarts with it now and keeps it if healthy "
            f"within {config_apply.DEADLINE_S:.0f} s, else rolls back by itself"
        )


class _Usage(Exception):
    """Bad arguments: the message and the command's usage are shown."""


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _Usage(f"{what} must be a whole number, got {text[:20]!r}") from None
    if value < 0:
        raise _Usage(f"{what} must be >= 0")
    return value


def _value(text: str) -> Value:
    """``true``/``false``, a number, else the text as it is."""
    low = text.lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _ago(seconds: object, none: str = "-") -> str:
    if not isinstance(seconds, int | float):
        return none
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _when(t_ms: int | None) -> str:
    if t_ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_ms / 1000)) + "Z"

"""Commands and trust updates from the central post: verify, arbitrate, act, acknowledge.

For every message on ``armoire/v1/{gw}/cmd`` the :class:`Downlink` runs the
checks of :class:`~agent.commands.CommandVerifier` (signature, trust store,
target, validity window, replay, authorisation). A rejected command gets a
``rejected`` Ack when its id and gateway can be read and the gateway is this
one (PROTOCOL.md), and always an audit Event. An accepted command's id is
remembered durably before anything is done, then the write goes through the
Arbiter (so a hold always lapses), and the Ack (``done``/``failed``) and the
audit Event are committed together. Nothing that arrives can raise out of
:meth:`Downlink.handle`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from agent.arbiter import Arbiter, ArbiterError, DeviceWriteError
from agent.clock import Clock, wall_ms
from agent.commands import Command, CommandVerifier, Rejected
from agent.events import Events
from agent.messages import MessageFactory, Severity, Topic, topic
from agent.outbox import MsgClass, Outbox, Pending
from agent.points import Value
from agent.security.trust import TrustError

log = logging.getLogger(__name__)

Action = Callable[[Command], Awaitable[Any]]
# Checks that a value can be written to a point (type, range); returns a problem or None.
ValueCheck = Callable[[str, Any], str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Holds:
    """How long writes hold (seconds): the default and the cap (configuration)."""

    default: float
    maximum: float
    skew_s: float


class Downlink:
    """Handles what the central post sends to this gateway."""

    def __init__(
        self,
        *,
        gw: str,
        verifier: CommandVerifier | None,
        arbiter: Arbiter,
        outbox: Outbox,
        factory: MessageFactory,
        events: Events,
        clock: Clock,
        holds: Holds,
        check_value: ValueCheck,
        actions: Mapping[str, Action],
        data_dir: Path,
    ) -> None:
        self.gw = gw
        self.verifier = verifier
        self._arbiter = arbiter
        self._outbox = outbox
        self._factory = factory
        self._events = events
        self._clock = clock
        self._holds = holds
        self._check_value = check_value
        self._actions = actions
        self._data_dir = data_dir
        self._cmd_topic = topic(gw, Topic.CMD)
        self._trust_topic = topic(gw, Topic.TRUST)
        self.counts: dict[str, int] = {"done": 0, "rejected": 0, "failed": 0, "dropped": 0}

    async def handle(self, msg_topic: str, payload: bytes) -> None:
        """Entry point for every received message; never raises."""
        try:
            if msg_topic == self._cmd_topic:
                await self._command(payload)
            elif msg_topic == self._trust_topic:
                self._trust(payload)
            else:
                log.warning("message on unexpected topic %s ignored", msg_topic)
        except Exception:
            # A bug here must not stop the agent; it is logged with its traceback.
            log.exception("failed to handle a message on %s", msg_topic)

    # -- commands ---------------------------------------------------------

    async def _command(self, payload: bytes) -> None:
        now = wall_ms(self._clock)
        if self.verifier is None:
            self._reject(Rejected("unknown-kid", "no trust store installed"), now)
            return
        try:
            cmd = self.verifier.check(payload, now)
        except Rejected as rejected:
            self._reject(rejected, now)
            return
        problem = None
        if cmd.op == "write" and cmd.point is not None:
            problem = self._check_value(cmd.point, cmd.value)
        if problem is not None:
            self._reject(
                Rejected("bad-request", problem, cmd_id=cmd.id, gw=cmd.gw, kid=cmd.kid), now
            )
            return
        until = cmd.exp + int(self._holds.skew_s * 1000)
        self._outbox.remember_command(cmd.id, until_ms=until)
        status, reason, value = await self._execute(cmd)
        self.counts[status] += 1
        log.info(
            "command %s accepted from %s (%s): %s %s%s%s -> %s%s",
            cmd.id.hex()[:8],
            cmd.kid.hex(),
            cmd.role,
            cmd.op,
            cmd.point or cmd.name or "",
            f" = {cmd.value!r}" if cmd.op == "write" else "",
            f" prio {cmd.prio}" + (f" hold {cmd.hold} s" if cmd.hold is not None else ""),
            status,
            f" ({reason})" if reason else "",
        )
        self._finish(cmd, status=status, reason=reason, value=value)

    async def _execute(self, cmd: Command) -> tuple[str, str | None, Any]:
        source = f"cmd:{cmd.id.hex()[:8]} {cmd.kid.hex()}/{cmd.role}"
        try:
            match cmd.op:
                case "write":
                    assert cmd.point is not None
                    hold = min(
                        float(cmd.hold) if cmd.hold is not None else self._holds.default,
                        self._holds.maximum,
                    )
                    # The value's type and range were checked against the point before.
                    value = cast(Value, cmd.value)
                    outcome = await self._arbiter.write(
                        cmd.point, value, priority=cmd.prio, source=source, hold=hold
                    )
                    return "done", None, outcome.effective
                case "relinquish":
                    assert cmd.point is not None
                    outcome = await self._arbiter.relinquish(
                        cmd.point, priority=cmd.prio, source=source
                    )
                    return "done", None, outcome.effective
                case "action":
                    assert cmd.name is not None
                    return "done", None, await self._actions[cmd.name](cmd)
        except DeviceWriteError as exc:
            log.warning("command %s: device write failed: %s", cmd.id.hex(), exc)
            point = cmd.point or ""
            return "failed", "device-error", self._arbiter.effective(point) if point else None
        except ArbiterError as exc:
            return "failed", "bad-request", str(exc)

    def _finish(self, cmd: Command, *, status: str, reason: str | None, value: Any) -> None:
        t_ms = wall_ms(self._clock)
        what: dict[str, Any] = {"op": cmd.op, "prio": cmd.prio}
        for key in ("point", "name"):
            if getattr(cmd, key) is not None:
                what[key] = getattr(cmd, key)
        if cmd.op == "write":
            what["value"] = cmd.value
        if cmd.hold is not None:
            what["hold"] = cmd.hold
        audit = self._events.audit(
            code="cmd.done" if status == "done" else "cmd.failed",
            severity=Severity.NOTICE if status == "done" else Severity.WARNING,
            msg=f"{cmd.op} {cmd.point or cmd.name or ''} by {cmd.role}: {status}"
            + (f" ({reason})" if reason else ""),
            data={
                "cmd": cmd.id.hex(),
                "kid": cmd.kid.hex(),
                "role": cmd.role,
                **what,
                "status": status,
                **({"reason": reason} if reason else {}),
                **({"result": value} if value is not None else {}),
            },
            src=cmd.point,
        )
        self._outbox.append_many([self._ack(t_ms, cmd.id, status, reason, value), audit])

    def _reject(self, rejected: Rejected, now: int) -> None:
        self.counts["rejected"] += 1
        data: dict[str, Any] = {"reason": rejected.reason, "detail": rejected.detail}
        if rejected.cmd_id is not None:
            data["cmd"] = rejected.cmd_id.hex()
        if rejected.kid is not None:
            data["kid"] = rejected.kid.hex()
        items = []
        answerable = rejected.cmd_id is not None and rejected.gw == self.gw
        if answerable:
            assert rejected.cmd_id is not None
            items.append(self._ack(now, rejected.cmd_id, "rejected", rejected.reason, None))
        else:
            self.counts["dropped"] += 1
        items.append(
            self._events.audit(
                code="cmd.rejected",
                severity=Severity.WARNING,
                msg=f"command rejected: {rejected.reason}: {rejected.detail}"[:200],
                data=data,
            )
        )
        log.warning("command rejected (%s): %s", rejected.reason, rejected.detail)
        self._outbox.append_many(items)

    def _ack(
        self, t_ms: int, cmd_id: bytes, status: str, reason: str | None, value: Any
    ) -> Pending:
        extra: dict[str, Any] = {} if status == "rejected" else {"value": value}
        return Pending(
            cls=MsgClass.ACK,
            topic=topic(self.gw, Topic.ACK),
            build=lambda seq: self._factory.ack(
                seq, t_ms=t_ms, cmd=cmd_id, status=status, reason=reason, **extra
            ),
        )

    # -- trust updates ----------------------------------------------------

    def _trust(self, payload: bytes) -> None:
        now = wall_ms(self._clock)
        if self.verifier is None:
            data: dict[str, Any] = {"reason": "unknown-kid", "detail": "no trust store installed"}
            code, severity, msg = "trust.rejected", Severity.WARNING, "trust update refused"
        else:
            try:
                store = self.verifier.trust.apply_update(
                    payload, data_dir=self._data_dir, now_ms=now
                )
            except TrustError as exc:
                data = {"reason": exc.reason, "detail": str(exc)}
                code, severity, msg = "trust.rejected", Severity.WARNING, "trust update refused"
            else:
                self.verifier.trust = store
                data = {"serial": store.serial, "keys": [k.hex() for k in store.keys]}
                code, severity, msg = "trust.updated", Severity.NOTICE, "trust store replaced"
        log.warning("%s: %s", msg, data)
        self._outbox.append(self._events.audit(code=code, severity=severity, msg=msg, data=data))

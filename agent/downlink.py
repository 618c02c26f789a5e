"""Commands and trust updates from the central post: verify, arbitrate, act, acknowledge.

For every message on ``armoire/v1/{gw}/cmd`` the :class:`Downlink` runs the
checks of :class:`~agent.commands.CommandVerifier` (signature, trust store,
target, validity window, replay, authorisation).

A message whose signature did not verify against a trusted key is only
counted (`agent.unauthenticated.Tally`): no Ack, no record of its own, one
``cmd.unauthenticated`` / ``trust.unauthenticated`` audit Event per interval
while such input keeps coming, and one log line per interval (PROTOCOL.md,
"Unauthenticated input"). An authenticated command that is refused gets a
``rejected`` Ack with its reason and detail (when its id can be read and it is
for this gateway) and an audit Event of its own. An accepted command's id is
remembered durably before anything is done, then the write goes through the
Arbiter (so a hold always lapses), and the Ack (``done``/``failed``) and the
audit Event are committed together. Nothing that arrives can raise out of
:meth:`Downlink.handle`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
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
from agent.timefloor import TimeFloor
from agent.unauthenticated import Tally
from drivers.device import DriverError

log = logging.getLogger(__name__)

# One summary Event per topic and interval while unauthenticated input arrives: what a flood
# costs the flash is bounded by this, whatever its rate.
SUMMARY_INTERVAL = 60.0
# An Ack's or audit record's detail text is cut to this length (it may quote peer input).
DETAIL_CHARS = 200
# Refusals of authenticated commands are answered one by one, but a recorded genuine command
# replayed in a loop must not fill the flash either: the same (id, reason) is answered once
# (the last `ANSWERED_MEMORY` are remembered), and at most `MAX_REFUSALS` per interval get their
# own Ack and record; the rest are counted in one ``cmd.rejected`` summary per interval.
ANSWERED_MEMORY = 1024
MAX_REFUSALS = 50

Action = Callable[[Command], Awaitable[Any]]
# Checks that a value can be written to a point (type, range); returns a problem or None.
ValueCheck = Callable[[str, Any], str | None]


class ActionRefused(Exception):
    """An action's arguments do not fit (e.g. ``snapshot`` of a device that is no camera)."""


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
        summary_interval: float = SUMMARY_INTERVAL,
        time_floor: TimeFloor | None = None,
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
        self._summary_interval = summary_interval
        # Expiry and replay are decided on a time that never goes back (agent.timefloor).
        self.time = time_floor if time_floor is not None else TimeFloor(clock, data_dir)
        # Unauthenticated input per topic since the last summary.
        self.tallies: dict[Topic, Tally] = {Topic.CMD: Tally(), Topic.TRUST: Tally()}
        # Authenticated refusals not answered individually (repeats, or over the budget).
        self.repeats = Tally()
        self._answered: OrderedDict[tuple[bytes, str], None] = OrderedDict()
        self._refusals = 0  # answered individually in this interval
        self.counts: dict[str, int] = {
            "done": 0,
            "rejected": 0,
            "failed": 0,
            "dropped": 0,
            "unauthenticated": 0,
        }

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
            # A bug here must not stop the agent, nor let junk write a record per message: it is
            # counted like unauthenticated input, its traceback logged once per interval.
            kind = Topic.TRUST if msg_topic == self._trust_topic else Topic.CMD
            if self.tallies[kind].add("internal-error", payload, wall_ms(self._clock)):
                log.exception("failed to handle a message on %s", msg_topic)
            self.counts["unauthenticated"] += 1

    async def run(self) -> None:
        """Summarise unauthenticated input once per interval, for as long as it lasts."""
        while True:
            await self._clock.sleep(self._summary_interval)
            self.flush_summaries()

    def flush_summaries(self) -> None:
        """Append one ``*.unauthenticated`` audit Event per topic that had such input, and one
        ``cmd.rejected`` summary of the refusals that were not answered one by one."""
        self._refusals = 0
        repeats = self.repeats.take()
        if repeats is not None:
            msg = f"{repeats['count']} repeated or excess command refusals not answered again"
            log.warning("%s: %s", msg, repeats["reasons"])
            self._outbox.append(
                self._events.audit(
                    code="cmd.rejected",
                    severity=Severity.WARNING,
                    msg=msg,
                    data={"summary": True, **repeats},
                )
            )
        for kind, tally in self.tallies.items():
            data = tally.take()
            if data is None:
                continue
            what = "command" if kind is Topic.CMD else "trust update"
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(data["reasons"].items()))
            msg = f"{data['count']} unauthenticated {what} message(s) dropped ({reasons})"
            log.warning("%s", msg)
            self._outbox.append(
                self._events.audit(
                    code=f"{kind.value}.unauthenticated",
                    severity=Severity.WARNING,
                    msg=msg[:DETAIL_CHARS],
                    data=data,
                )
            )

    def _unauthenticated(self, kind: Topic, reason: str, detail: str, payload: bytes) -> None:
        self.counts["unauthenticated"] += 1
        if self.tallies[kind].add(reason, payload, wall_ms(self._clock)):
            log.warning(
                "unauthenticated %s dropped (%s: %s); more are counted and summarised every %g s",
                "command" if kind is Topic.CMD else "trust update",
                reason,
                detail[:DETAIL_CHARS],
                self._summary_interval,
            )

    # -- commands ---------------------------------------------------------

    async def _command(self, payload: bytes) -> None:
        now = self.time.now_ms()
        if self.verifier is None:
            self._unauthenticated(Topic.CMD, "unknown-kid", "no trust store installed", payload)
            return
        try:
            cmd = self.verifier.check(payload, now)
        except Rejected as rejected:
            if rejected.authenticated:
                self._reject(rejected, now, payload)
            else:
                self._unauthenticated(Topic.CMD, rejected.reason, rejected.detail, payload)
            return
        problem = None
        if cmd.op == "write" and cmd.point is not None:
            problem = self._check_value(cmd.point, cmd.value)
        if problem is not None:
            refusal = Rejected("bad-request", problem, cmd.id, cmd.gw, cmd.kid, authenticated=True)
            self._reject(refusal, now, payload)
            return
        skew = int(self._holds.skew_s * 1000)
        # The command's signed iat is the central post's clock: time has reached at least that
        # (less the skew, which our own clock agreed within), whatever our wall clock says later.
        self.time.witness(min(now, cmd.iat + skew))
        # Ids are forgotten only below the persisted floor: a replay of one is surely expired.
        self._outbox.remember_command(
            cmd.id, until_ms=cmd.exp + skew, purge_before_ms=self.time.floor_ms
        )
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
        except ActionRefused as exc:
            return "failed", "bad-request", str(exc)
        except DriverError as exc:
            # An action's device failed (a camera that does not answer): say which and why.
            log.warning("command %s: %s", cmd.id.hex(), exc.reason)
            return "failed", "device-error", exc.reason

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

    def _reject(self, rejected: Rejected, now: int, payload: bytes = b"") -> None:
        """An authenticated command refused: its own Ack (if it is for us) and audit record,
        unless it repeats one already answered or the interval's budget is spent."""
        self.counts["rejected"] += 1
        key = (rejected.cmd_id or payload[-16:], rejected.reason)
        if not self._answer_individually(key):
            self.repeats.add(rejected.reason, payload, now, sample=rejected.cmd_id)
            return
        data: dict[str, Any] = {"reason": rejected.reason, "detail": rejected.detail}
        if rejected.cmd_id is not None:
            data["cmd"] = rejected.cmd_id.hex()
        if rejected.kid is not None:
            data["kid"] = rejected.kid.hex()
        items = []
        answerable = rejected.cmd_id is not None and rejected.gw == self.gw
        if answerable:
            assert rejected.cmd_id is not None
            items.append(
                self._ack(
                    now,
                    rejected.cmd_id,
                    "rejected",
                    rejected.reason,
                    None,
                    msg=rejected.detail[:DETAIL_CHARS],
                )
            )
        else:
            self.counts["dropped"] += 1
        items.append(
            self._events.audit(
                code="cmd.rejected",
                severity=Severity.WARNING,
                msg=f"command rejected: {rejected.reason}: {rejected.detail}"[:DETAIL_CHARS],
                data=data,
            )
        )
        log.warning("command rejected (%s): %s", rejected.reason, rejected.detail)
        self._outbox.append_many(items)

    def _answer_individually(self, key: tuple[bytes, str]) -> bool:
        """Whether an authenticated refusal gets its own record: not a repeat, within budget."""
        if key in self._answered or self._refusals >= MAX_REFUSALS:
            return False
        self._answered[key] = None
        if len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        self._refusals += 1
        return True

    def _ack(
        self,
        t_ms: int,
        cmd_id: bytes,
        status: str,
        reason: str | None,
        value: Any,
        msg: str | None = None,
    ) -> Pending:
        extra: dict[str, Any] = {} if status == "rejected" else {"value": value}
        return Pending(
            cls=MsgClass.ACK,
            topic=topic(self.gw, Topic.ACK),
            build=lambda seq: self._factory.ack(
                seq, t_ms=t_ms, cmd=cmd_id, status=status, reason=reason, msg=msg, **extra
            ),
        )

    # -- trust updates ----------------------------------------------------

    def _trust(self, payload: bytes) -> None:
        now = wall_ms(self._clock)
        if self.verifier is None:
            self._unauthenticated(Topic.TRUST, "unknown-kid", "no trust store installed", payload)
            return
        try:
            store = self.verifier.trust.apply_update(payload, data_dir=self._data_dir, now_ms=now)
        except TrustError as exc:
            if not exc.authenticated:
                self._unauthenticated(Topic.TRUST, exc.reason, exc.message, payload)
                return
            if not self._answer_individually((payload[-16:], exc.reason)):
                self.repeats.add(f"trust:{exc.reason}", payload, now)
                return
            data: dict[str, Any] = {"reason": exc.reason, "detail": exc.message[:DETAIL_CHARS]}
            code, severity, msg = "trust.rejected", Severity.WARNING, "trust update refused"
        except OSError as exc:
            # Signed by the root, but trust.cose could not be written: not applied.
            data = {"reason": "storage-error", "detail": str(exc)[:DETAIL_CHARS]}
            code, severity, msg = "trust.rejected", Severity.ERROR, "trust update not stored"
        else:
            self.verifier.trust = store
            data = {"serial": store.serial, "keys": [k.hex() for k in store.keys]}
            code, severity, msg = "trust.updated", Severity.NOTICE, "trust store replaced"
        log.warning("%s: %s", msg, data)
        self._outbox.append(self._events.audit(code=code, severity=severity, msg=msg, data=data))

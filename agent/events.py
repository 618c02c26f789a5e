"""The gateway's Events: alarms, events and audit records (PROTOCOL.md, Event).

One place builds them (topic, wire ``kind``, signing at the seq the outbox
assigns) and knows the codes the agent itself raises, so that their shapes
can be reviewed together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from agent.clock import Clock, wall_ms
from agent.messages import MessageFactory, Severity, Topic, topic
from agent.outbox import Evictions, MsgClass, Outbox, Pending
from agent.polling import LinkState

DEVICE_COMM_FAIL = "device.comm_fail"
LINK_AUTONOMOUS = "link.autonomous"


class Events:
    """Builds Events as outbox items and appends them durably."""

    def __init__(self, *, gw: str, factory: MessageFactory, outbox: Outbox, clock: Clock) -> None:
        self._topic = topic(gw, Topic.EVT)
        self._factory = factory
        self._outbox = outbox
        self._clock = clock

    def pending(
        self,
        cls: MsgClass,
        *,
        code: str,
        severity: Severity,
        state: str,
        kind: str | None = None,
        src: str | None = None,
        msg: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Pending:
        """An Event to append; its wire ``kind`` follows its class unless given."""
        if kind is None:
            kind = cls.value if cls in (MsgClass.ALARM, MsgClass.AUDIT) else "event"
        t_ms = wall_ms(self._clock)
        return Pending(
            cls=cls,
            topic=self._topic,
            build=lambda seq: self._factory.event(
                seq,
                t_ms=t_ms,
                kind=kind,
                code=code,
                severity=severity,
                state=state,
                src=src,
                msg=msg,
                data=data,
            ),
        )

    def append(self, cls: MsgClass, **fields: Any) -> int:
        """Append an Event durably (committed when this returns) and return its seq."""
        return self._outbox.append(self.pending(cls, **fields))

    def audit(
        self,
        *,
        code: str,
        severity: Severity,
        msg: str,
        data: Mapping[str, Any],
        src: str | None = None,
    ) -> Pending:
        """An audit record (who did what, with which result)."""
        return self.pending(
            MsgClass.AUDIT, code=code, severity=severity, state="info", src=src, msg=msg, data=data
        )

    def evicted(self, seq: int, evictions: Evictions) -> Pending:
        """The ``outbox.evicted`` report, written in the eviction's own transaction."""
        # Kept with the audit records: it explains the gap the central post will see.
        return self.pending(
            MsgClass.AUDIT,
            kind="event",
            code="outbox.evicted",
            severity=Severity.WARNING,
            state="info",
            msg=f"outbox full: {evictions.readings} readings evicted",
            data={
                "ranges": evictions.ranges,
                "messages": evictions.messages,
                "readings": evictions.readings,
                "bytes": evictions.bytes,
            },
        )

    def device_link(self, device: str, state: LinkState) -> None:
        """Raise or clear a device's ``device.comm_fail`` alarm (remembered across restarts)."""
        if state is LinkState.COMM_FAIL:
            item = self.pending(
                MsgClass.ALARM,
                code=DEVICE_COMM_FAIL,
                severity=Severity.ERROR,
                state="raised",
                src=device,
                msg=f"{device} does not answer",
            )
            self._outbox.raise_alarm(item, code=DEVICE_COMM_FAIL, src=device)
        elif state is LinkState.ONLINE:
            item = self.pending(
                MsgClass.ALARM,
                code=DEVICE_COMM_FAIL,
                severity=Severity.NOTICE,
                state="cleared",
                src=device,
                msg=f"{device} answers again",
            )
            self._outbox.clear_alarm(item, code=DEVICE_COMM_FAIL, src=device)

    def rule_alarm(
        self,
        *,
        code: str,
        severity: int,
        src: str,
        raised: bool,
        msg: str,
        kind: Literal["alarm", "event"] = "alarm",
    ) -> None:
        """Raise or clear a fail-safe rule's alarm, once per transition, remembered across
        restarts (``src`` "" for a rule about the whole cabinet). ``kind = "event"``: the
        same pair sent as an event (class ``event``, forwarded after alarms)."""
        item = self.pending(
            MsgClass.ALARM if kind == "alarm" else MsgClass.EVENT,
            code=code,
            severity=Severity(severity) if raised else Severity.NOTICE,
            state="raised" if raised else "cleared",
            src=src or None,
            msg=msg,
        )
        if raised:
            self._outbox.raise_alarm(item, code=code, src=src)
        else:
            self._outbox.clear_alarm(item, code=code, src=src)

    def autonomous(self, mode: str, seconds: float) -> None:
        """``link.autonomous`` on entering (``seconds`` offline) and leaving (``duration_s``)
        autonomous mode; remembered across restarts like an alarm."""
        entering = mode == "autonomous"
        item = self.pending(
            MsgClass.EVENT,
            code=LINK_AUTONOMOUS,
            severity=Severity.WARNING if entering else Severity.NOTICE,
            state="info",
            msg=(
                f"central post unreachable for {seconds:.0f} s: autonomous mode"
                if entering
                else f"central post reachable again after {seconds:.0f} s of autonomous mode"
            ),
            data={"mode": mode, "offline_s" if entering else "duration_s": round(seconds)},
        )
        if entering:
            self._outbox.raise_alarm(item, code=LINK_AUTONOMOUS, src="")
        else:
            self._outbox.clear_alarm(item, code=LINK_AUTONOMOUS, src="")

    def startup(self, *, version: str, reboot: str | None = None) -> None:
        """``agent.start`` (with how the previous run ended, ``reboot``, when known), then
        what earlier boots left to report: unclean stops, a replaced database."""
        boot = self._outbox.boot
        data: dict[str, Any] = {"version": version, "boot": boot}
        if reboot is not None:
            data["reboot"] = reboot
        self.append(
            MsgClass.EVENT,
            code="agent.start",
            severity=Severity.NOTICE,
            state="info",
            msg=f"armoire {version} boot {boot}" + (f" (previous run: {reboot})" if reboot else ""),
            data=data,
        )
        now = wall_ms(self._clock)
        # What a crash or power cut cost: readings taken after the last commit.
        self._outbox.report_unclean(
            lambda prev: self.pending(
                MsgClass.EVENT,
                code="agent.unclean_stop",
                severity=Severity.WARNING,
                state="info",
                msg=f"boot {prev.boot} ended without a clean stop",
                data={
                    "boot": prev.boot,
                    "last_commit": prev.last_commit_ms,
                    "gap_ms": max(0, now - prev.last_commit_ms) if prev.last_commit_ms else 0,
                },
            )
        )
        rec = self._outbox.recovery
        if rec is not None:
            self.append(
                MsgClass.ALARM,
                code="outbox.corrupt",
                severity=Severity.CRITICAL,
                state="raised",
                msg=f"outbox database unusable, moved to {rec.moved_to}; a new one was created",
                data={"error": rec.error, "moved_to": rec.moved_to, "seq_from": rec.seq_from},
            )

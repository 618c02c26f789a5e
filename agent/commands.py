"""Verification of the central post's signed commands (PROTOCOL.md, "Command"), sans-IO.

DESIGN.md, Security, "Command checks": bytes and the current time go in; a verified `Command`
comes out, or `Rejected` with a PROTOCOL.md reason code. No files, no clock, no logging: the
downlink feeds it MQTT payloads and ``clock.now_ms()``, remembers the ids of the commands it
accepts (durably, for their validity window) and answers ``seen(id)`` from that memory.

Checks, in order, each failure with its own reason:

1. size and COSE envelope ("bad-request"; "bad-signature" for another algorithm;
   "unknown-kid" for a missing or malformed kid);
2. kid in the trust store, and the key inside its validity period ("unknown-kid");
3. signature ("bad-signature"); everything above is unauthenticated, everything below is not;
4. body: strict CBOR, exactly the CDDL ("bad-request");
5. ``gw`` is this gateway ("wrong-gateway");
6. time window: ``exp`` passed ("expired"); ``nbf`` or ``iat`` in the future ("not-yet-valid");
   ``exp`` before ``iat`` / ``nbf``, or valid longer than allowed ("bad-request");
7. replay: id already seen, or issued before the ids were lost with a corrupt outbox
   ("replay");
8. authorisation: some role of the key allows the op, point, priority or action
   ("not-authorised");
9. the point exists and is writable, the action exists ("bad-request").

The body is decoded only after the signature verified: nothing of an unauthenticated payload is
read but its envelope (PROTOCOL.md, "Unauthenticated input": such input gets no Ack, and a
refusal says ``authenticated=False``). An authenticated refusal carries the id and gateway when
the body has them, so that the caller can acknowledge it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

from agent.security.cose import CoseError, decode_envelope, verify
from agent.security.trust import (
    ROLES,
    BodyError,
    TrustedKey,
    TrustStore,
    decode_body,
    is_uint,
)

Op: TypeAlias = Literal["write", "relinquish", "action"]
OPS: Final[tuple[Op, ...]] = ("write", "relinquish", "action")  # PROTOCOL.md, Command "op"
Reason: TypeAlias = Literal[
    "bad-request",
    "bad-signature",
    "unknown-kid",
    "wrong-gateway",
    "expired",
    "not-yet-valid",
    "replay",
    "not-authorised",
]
# PROTOCOL.md, Ack "reason" examples, plus "not-yet-valid" for a command whose nbf (or iat) is
# still in the future.
REASONS: Final[tuple[Reason, ...]] = (
    "bad-request",
    "bad-signature",
    "unknown-kid",
    "wrong-gateway",
    "expired",
    "not-yet-valid",
    "replay",
    "not-authorised",
)

COMMAND_VERSION: Final = 1  # PROTOCOL.md, Command: "v" => 1
ID_SIZE: Final = 16  # PROTOCOL.md, Command: "id" => bstr .size 16
SCHEDULE_LEVEL: Final = 14  # DESIGN.md, Arbiter: the local schedule's level
PRIORITY_RANGE: Final = (1, 16)  # PROTOCOL.md, Command "prio" 1..16 (DESIGN.md, Arbiter)
DEFAULT_PRIORITY: Final = 10  # PROTOCOL.md, Command: "default 10" (DESIGN.md: central post)
# Largest command accepted. A command is a few hundred bytes even with action arguments; 4 KiB
# leaves room for structured arguments and bounds what a hostile payload costs before its
# signature is checked (the same order as the largest legitimate command).
MAX_COMMAND_SIZE: Final = 4 * 1024
# PROTOCOL.md, Bodies: point = "device/point". One "/" between two non-empty parts; the exact
# names are the configuration's business (``writable``).
_POINT: Final = re.compile(r"[^/\s]{1,64}/[^/\s]{1,64}")
_SHOWN_CHARS: Final = 40  # how much of a peer-supplied value a detail quotes (details are audited)

_REQUIRED: Final = ("v", "id", "gw", "iat", "exp", "op")
_KNOWN: Final = frozenset({*_REQUIRED, "nbf", "point", "value", "prio", "hold", "name", "args"})


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


class Rejected(Exception):
    """A command was refused. ``reason`` is a PROTOCOL.md reason code (see `REASONS`),
    ``detail`` says precisely what was wrong (for the audit record).

    ``authenticated`` is True once the signature verified against a trusted key: only then may
    the refusal be acknowledged or audited individually (PROTOCOL.md, "Unauthenticated input"),
    and only then are ``cmd_id`` and ``gw`` read from the body (when they can be). ``kid`` is the
    kid the envelope names, once it decoded.
    """

    def __init__(
        self,
        reason: Reason,
        detail: str,
        cmd_id: bytes | None = None,
        gw: str | None = None,
        kid: bytes | None = None,
        *,
        authenticated: bool = False,
    ) -> None:
        # All in args, so the error pickles (keyword-only arguments travel through __reduce__).
        super().__init__(reason, detail, cmd_id, gw, kid, authenticated)
        self.reason: Reason = reason
        self.detail = detail
        self.cmd_id = cmd_id
        self.gw = gw
        self.kid = kid
        self.authenticated = authenticated

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rejected,
            (self.reason, self.detail, self.cmd_id, self.gw, self.kid, self.authenticated),
        )

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _rejected(
    reason: Reason,
    detail: str,
    cmd_id: bytes | None,
    gw: str | None,
    kid: bytes | None,
    authenticated: bool,
) -> Rejected:
    return Rejected(reason, detail, cmd_id, gw, kid, authenticated=authenticated)


@dataclass(frozen=True, slots=True)
class RolePolicy:
    """What a role may do over MQTT: priority levels (inclusive) less the ``reserved`` ones,
    ops, and the points and action names it may address (``fnmatch`` patterns,
    case-sensitive; ``*`` matches ``/``)."""

    priorities: tuple[int, int]
    ops: frozenset[str]
    points: tuple[str, ...]
    actions: tuple[str, ...]
    reserved: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        lo, hi = self.priorities
        if not PRIORITY_RANGE[0] <= lo <= hi <= PRIORITY_RANGE[1]:
            raise ValueError(f"priorities {self.priorities} must be low..high within 1..16")
        if not self.ops <= set(OPS):
            raise ValueError(f"ops {sorted(self.ops)} must be among {', '.join(OPS)}")

    def refusal(self, op: Op, point: str | None, prio: int, name: str | None) -> str | None:
        """None if this role may send the command, else what it may not do."""
        if op not in self.ops:
            return f"op {op!r} not allowed"
        if op == "action":
            if name is None or not any(fnmatchcase(name, p) for p in self.actions):
                return f"action {_show(name)} not allowed"
            return None
        lo, hi = self.priorities
        if not lo <= prio <= hi:
            return f"priority {prio} outside {lo}..{hi}"
        if prio in self.reserved:
            return f"priority {prio} is reserved (14: the local lighting schedule)"
        if point is None or not any(fnmatchcase(point, p) for p in self.points):
            return f"point {_show(point)} not allowed"
        return None


_ALL_OPS: Final = frozenset(OPS)
# DESIGN.md, Arbiter: 8 is the technician on site, 10 the central post, 14 the local lighting
# schedule (operators neither write nor relinquish it: they override it from a higher level,
# and their holds lapse back to it); 1-2 life safety and 3-5 fail-safe rules are for admins
# only. "maintenance" has no entry: nothing over MQTT (its tokens act at level 8 through the
# console only).
DEFAULT_POLICIES: Final[Mapping[str, RolePolicy]] = MappingProxyType(
    {
        "operator": RolePolicy((9, 16), _ALL_OPS, ("*",), ("*",), frozenset({SCHEDULE_LEVEL})),
        "admin": RolePolicy((1, 16), _ALL_OPS, ("*",), ("*",)),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """A verified command (PROTOCOL.md, Command) with defaults applied, and who signed it.

    ``point`` is set for write/relinquish only, ``value`` for write only, ``name`` for action
    only; ``prio`` defaults to 10; ``hold`` (seconds) is None when the command gave none (the
    arbiter applies the configured default and cap). ``kid`` is the signer, ``role`` the first
    of its roles (least privileged first, in `ROLES` order) whose policy allowed the command.
    """

    id: bytes
    gw: str
    iat: int
    nbf: int | None
    exp: int
    op: Op
    point: str | None
    value: object
    prio: int
    hold: int | None
    name: str | None
    args: Mapping[str, object]
    kid: bytes
    role: str

    def __post_init__(self) -> None:
        if len(self.id) != ID_SIZE:
            raise ValueError(f"Command.id must be {ID_SIZE} bytes")
        if self.op not in OPS:
            raise ValueError(f"Command.op {self.op!r} is not one of {', '.join(OPS)}")
        if (self.point is None) != (self.op == "action"):
            raise ValueError("Command.point is required for write/relinquish, None for action")
        if (self.name is None) != (self.op != "action"):
            raise ValueError("Command.name is required for action, None otherwise")
        if not PRIORITY_RANGE[0] <= self.prio <= PRIORITY_RANGE[1]:
            raise ValueError(f"Command.prio {self.prio} is not in 1..16")
        if self.role not in ROLES:
            raise ValueError(f"Command.role {self.role!r} is not one of {', '.join(ROLES)}")


class _Invalid(Exception):
    """The body does not follow the Command CDDL (becomes "bad-request")."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Body:
    """A body that follows the CDDL, with defaults applied; not yet checked against anything."""

    id: bytes
    gw: str
    iat: int
    nbf: int | None
    exp: int
    op: Op
    point: str | None
    value: object
    prio: int
    hold: int | None
    name: str | None
    args: Mapping[str, object]


def _uint(body: Mapping[str, Any], key: str) -> int:
    value = body[key]
    if not is_uint(value):
        raise _Invalid(f"{key} must be a uint, got {_show(value)}")
    return int(value)


def _optional_uint(body: Mapping[str, Any], key: str) -> int | None:
    return _uint(body, key) if key in body else None


def _parse(body: object) -> _Body:
    """Check a decoded body against the Command CDDL."""
    if type(body) is not dict:
        raise _Invalid(f"the body must be a map, not {type(body).__name__}")
    unknown = [k for k in body if k not in _KNOWN]
    if unknown:
        raise _Invalid(f"unknown keys {', '.join(_show(k) for k in unknown[:3])}")
    missing = [k for k in _REQUIRED if k not in body]
    if missing:
        raise _Invalid(f"missing {', '.join(missing)}")
    v = body["v"]
    if type(v) is not int or v != COMMAND_VERSION:
        raise _Invalid(f"v must be {COMMAND_VERSION}, got {_show(v)}")
    cmd_id, gw, op = body["id"], body["gw"], body["op"]
    if type(cmd_id) is not bytes or len(cmd_id) != ID_SIZE:
        raise _Invalid(f"id must be a {ID_SIZE}-byte bstr")
    if type(gw) is not str:
        raise _Invalid("gw must be a tstr")
    if op not in OPS:
        raise _Invalid(f"op must be one of {', '.join(OPS)}, got {_show(op)}")
    iat, exp, nbf = _uint(body, "iat"), _uint(body, "exp"), _optional_uint(body, "nbf")
    hold = _optional_uint(body, "hold")

    # Every key present is type-checked (the CDDL does not depend on op); then what the op does
    # not use is dropped.
    # `"key" in body`, not `is not None`: an explicit null is not a tstr either.
    point = body.get("point")
    if "point" in body and (type(point) is not str or not _POINT.fullmatch(point)):
        raise _Invalid(f'point must be a tstr "device/point", got {_show(point)}')
    prio = body.get("prio", DEFAULT_PRIORITY)
    if type(prio) is not int or not PRIORITY_RANGE[0] <= prio <= PRIORITY_RANGE[1]:
        raise _Invalid(f"prio must be an integer 1..16, got {_show(prio)}")
    name = body.get("name")
    if "name" in body and type(name) is not str:
        raise _Invalid(f"name must be a tstr, got {_show(name)}")
    args = body.get("args", {})
    if type(args) is not dict or any(type(k) is not str for k in args):
        raise _Invalid("args must be a map with tstr keys")
    value = body.get("value")
    if op == "write":
        if "value" not in body:
            raise _Invalid("a write needs a value")
        # A number, a bool, a text or null: what a point holds (PROTOCOL.md, Reading value).
        if type(value) not in (int, float, bool, str, type(None)):
            raise _Invalid(f"value must be a number, bool, tstr or null, got {_show(value)}")
        if type(value) is float and not math.isfinite(value):
            raise _Invalid(f"value must be finite, got {value}")
    else:
        value = None
    if op == "action":
        if name is None:
            raise _Invalid("an action needs a name")
        point = None
    else:
        if point is None:
            raise _Invalid(f"a {op} needs a point")
        name = None
    return _Body(
        id=cmd_id,
        gw=gw,
        iat=iat,
        nbf=nbf,
        exp=exp,
        op=op,
        point=point,
        value=value,
        prio=prio,
        hold=hold,
        name=name,
        args=MappingProxyType(args),
    )


def _peek(body: object) -> tuple[bytes | None, str | None]:
    """``id`` and ``gw`` of a decoded body, when they are there and well typed."""
    if type(body) is not dict:
        return None, None
    cmd_id, gw = body.get("id"), body.get("gw")
    return (
        cmd_id if type(cmd_id) is bytes and len(cmd_id) == ID_SIZE else None,
        gw if type(gw) is str else None,
    )


def _envelope_reason(cose_reason: str) -> Reason:
    match cose_reason:
        case "bad-alg":
            return "bad-signature"  # not an algorithm we verify: the signature cannot be checked
        case "bad-kid":
            return "unknown-kid"  # no usable kid: no key to check with
        case _:
            return "bad-request"  # malformed, or not a tagged COSE_Sign1


class CommandVerifier:
    """Checks commands for one gateway against its trust store and policies (module docstring).

    ``seen(id)`` says whether an id was already accepted; ``writable(point)`` whether a point
    exists and may be written; ``actions`` are the action names the agent implements.
    ``policies`` maps role names to what they may do (a role without an entry may do nothing over
    MQTT). ``skew_s`` is the clock error allowed on ``nbf``/``exp``/``iat`` and on key validity;
    ``max_validity_s`` the longest ``exp - iat`` accepted. ``replay_floor()`` is a time before
    which commands are refused as replays because their ids may have been forgotten (the
    outbox was recovered); 0 when nothing was lost.

    `check` never raises anything but `Rejected`, whatever the bytes; exceptions from the
    callbacks (``seen``, ``writable``) are the caller's and propagate. The verifier does not
    remember ids: the caller records an id once it accepts the command.
    """

    def __init__(
        self,
        *,
        gw: str,
        trust: TrustStore,
        seen: Callable[[bytes], bool],
        policies: Mapping[str, RolePolicy],
        skew_s: float,
        max_validity_s: float,
        writable: Callable[[str], bool],
        actions: Collection[str],
        replay_floor: Callable[[], int] = lambda: 0,
    ) -> None:
        unknown = set(policies) - set(ROLES)
        if unknown:
            raise ValueError(f"policies for unknown roles {sorted(unknown)}")
        if skew_s < 0 or max_validity_s <= 0:
            raise ValueError("skew_s must be >= 0 and max_validity_s > 0")
        self.gw = gw
        self.trust = trust  # replaced by the downlink after each accepted TrustUpdate
        self._seen = seen
        self._policies = dict(policies)
        self._skew_ms = round(skew_s * 1000)
        self._max_validity_ms = round(max_validity_s * 1000)
        self._writable = writable
        self._actions = frozenset(actions)
        self._replay_floor = replay_floor

    def check(self, data: bytes, now_ms: int) -> Command:
        """Verify one command payload at ``now_ms`` (ms since the Unix epoch); raises `Rejected`."""
        if len(data) > MAX_COMMAND_SIZE:
            raise Rejected(
                "bad-request", f"{len(data)} bytes, more than the {MAX_COMMAND_SIZE} accepted"
            )
        try:
            msg = decode_envelope(data)
        except CoseError as exc:
            raise Rejected(
                _envelope_reason(exc.reason), f"envelope {exc.reason}: {exc.message}"
            ) from exc
        kid = msg.kid
        key = self.trust.key(kid)
        if key is None:
            raise Rejected(
                "unknown-kid",
                f"kid {kid.hex()} is not in the trust store (serial {self.trust.serial})",
                kid=kid,
            )
        if not key.valid_at(now_ms, self._skew_ms):
            raise Rejected(
                "unknown-kid",
                f"key {kid.hex()} not valid at {now_ms} (nbf {key.nbf_ms}, exp {key.exp_ms})",
                kid=kid,
            )
        try:
            verify(msg, key.public_key)
        except CoseError as exc:
            raise Rejected(
                "bad-signature", f"signature does not verify with key {kid.hex()}", kid=kid
            ) from exc
        # Authenticated from here on: a trusted key signed these bytes. Only now is the body
        # decoded, and its id and gw may be reported in a rejected Ack.
        try:
            body = decode_body(msg.payload)
        except BodyError as exc:
            raise Rejected("bad-request", f"body: {exc}", kid=kid, authenticated=True) from exc
        cmd_id, gw = _peek(body)

        def refuse(reason: Reason, detail: str) -> Rejected:
            return Rejected(reason, detail, cmd_id, gw, kid, authenticated=True)

        try:
            cmd = _parse(body)
        except _Invalid as exc:
            raise refuse("bad-request", f"body: {exc}") from exc

        if cmd.gw != self.gw:
            raise refuse("wrong-gateway", f"for gateway {_show(cmd.gw)}, this is {self.gw!r}")
        late = self._time_problem(cmd, now_ms)
        if late is not None:
            raise refuse(*late)
        if self._seen(cmd.id):
            raise refuse("replay", f"command {cmd.id.hex()} was already received")
        floor = self._replay_floor()
        if cmd.iat < floor:
            raise refuse(
                "replay",
                f"iat {cmd.iat} is before {floor}, when the ids of earlier commands were lost "
                "(outbox recovered)",
            )
        role, refusals = self._authorise(cmd, key)
        if role is None:
            raise refuse("not-authorised", "; ".join(refusals))
        if cmd.point is not None and not self._writable(cmd.point):
            raise refuse("bad-request", f"unknown or read-only point {cmd.point!r}")
        if cmd.name is not None and cmd.name not in self._actions:
            raise refuse("bad-request", f"unknown action {_show(cmd.name)}")
        return Command(
            id=cmd.id,
            gw=cmd.gw,
            iat=cmd.iat,
            nbf=cmd.nbf,
            exp=cmd.exp,
            op=cmd.op,
            point=cmd.point,
            value=cmd.value,
            prio=cmd.prio,
            hold=cmd.hold,
            name=cmd.name,
            args=cmd.args,
            kid=kid,
            role=role,
        )

    def _time_problem(self, cmd: _Body, now_ms: int) -> tuple[Reason, str] | None:
        """Why the command is outside its validity window at ``now_ms``, or None."""
        skew = self._skew_ms
        if cmd.exp < now_ms - skew:
            return "expired", f"exp {cmd.exp} is before now {now_ms} (skew {skew} ms)"
        if cmd.nbf is not None and cmd.nbf > now_ms + skew:
            return "not-yet-valid", f"nbf {cmd.nbf} is after now {now_ms} (skew {skew} ms)"
        # A command issued in the future would stay valid (and its id need remembering) longer
        # than max_validity from now; a gateway clock far behind also lands here.
        if cmd.iat > now_ms + skew:
            return "not-yet-valid", f"iat {cmd.iat} is after now {now_ms} (skew {skew} ms)"
        if cmd.exp < cmd.iat:
            return "bad-request", f"exp {cmd.exp} is before iat {cmd.iat}"
        if cmd.nbf is not None and cmd.exp < cmd.nbf:
            return "bad-request", f"exp {cmd.exp} is before nbf {cmd.nbf}: never valid"
        if cmd.exp - cmd.iat > self._max_validity_ms:
            return "bad-request", (
                f"valid {cmd.exp - cmd.iat} ms (exp - iat), more than the "
                f"{self._max_validity_ms} ms allowed"
            )
        return None

    def _authorise(self, cmd: _Body, key: TrustedKey) -> tuple[str | None, list[str]]:
        """The first role of the key (least privileged first) that allows the command, or None
        and what each role refused."""
        refusals: list[str] = []
        for role in ROLES:
            if role not in key.roles:
                continue
            policy = self._policies.get(role)
            if policy is None:
                refusals.append(f"{role}: no commands over MQTT")
                continue
            why = policy.refusal(cmd.op, cmd.point, cmd.prio, cmd.name)
            if why is None:
                return role, refusals
            refusals.append(f"{role}: {why}")
        return None, refusals

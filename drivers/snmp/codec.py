"""The SNMP answer of one poll, turned into point values (sans-IO: no sockets, no clock).

pysnmp does the BER and the USM; what it hands back is still the device's word, so
this module checks it as untrusted input before any value reaches the Points table:

1. ``error-status`` (RFC 3416 §3) other than noError: the whole answer is refused,
   naming the status and the object it points at;
2. the var-bind list has exactly the requested OIDs, in order (RFC 3416 §4.2.1: the
   response carries the request's names): otherwise refused, nothing is taken from it;
3. each value is an INTEGER within its object's SYNTAX range. A wrong type, a value out
   of range or a noSuchObject/noSuchInstance makes *that* point unusable (``None``, with
   a precise reason in :attr:`Answer.problems`); an ``optional`` object the controller
   does not implement is simply absent.

The transport converts pysnmp's values into the small frozen types below first, so this
module and its tests never depend on pysnmp's classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from drivers.device import Reading
from drivers.snmp.profile import MAX_OBJECTS, SnmpObject, SnmpProfile

# RFC 3416 §3, error-status values, for messages a technician can look up.
ERROR_STATUS: Final[Mapping[int, str]] = {
    0: "noError",
    1: "tooBig",
    2: "noSuchName",
    3: "badValue",
    4: "readOnly",
    5: "genErr",
    6: "noAccess",
    7: "wrongType",
    8: "wrongLength",
    9: "wrongEncoding",
    10: "wrongValue",
    11: "noCreation",
    12: "inconsistentValue",
    13: "resourceUnavailable",
    14: "commitFailed",
    15: "undoFailed",
    16: "authorizationError",
    17: "notWritable",
    18: "inconsistentName",
}


class LocalProtocolError(Exception):
    """We misused the API (a bug): e.g. decoding against a profile we did not ask with."""


class RemoteProtocolError(Exception):
    """The device's answer is unusable as a whole; ``reason`` says precisely why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Integer:
    """An INTEGER / Integer32 (also Counter/Gauge/TimeTicks: the transport says which)."""

    value: int
    type_name: str = "INTEGER"


@dataclass(frozen=True, slots=True)
class Missing:
    """An exception value in place of a value (RFC 3416 §3)."""

    kind: Literal["noSuchObject", "noSuchInstance", "endOfMibView"]


@dataclass(frozen=True, slots=True)
class Other:
    """Any other type (OCTET STRING, OID, IpAddress...): ``size`` in octets when it has one."""

    type_name: str
    size: int | None = None


SnmpValue = Integer | Missing | Other
VarBind = tuple[tuple[int, ...], SnmpValue]

# SNMP INTEGER types an NTCIP object can be read as; counters and ticks are not states.
_INTEGER_TYPES: Final = frozenset({"INTEGER", "Integer32", "Unsigned32", "Gauge32"})


@dataclass(frozen=True, slots=True)
class Answer:
    """Point name → value (``None``: answered but unusable), and why each unusable one is."""

    values: dict[str, Reading]
    problems: tuple[str, ...] = field(default=())


def dotted(oid: Sequence[int]) -> str:
    return ".".join(map(str, oid))


def request_oids(profile: SnmpProfile) -> tuple[tuple[int, ...], ...]:
    """The OIDs one poll GETs, in order."""
    return tuple(o.oid for o in profile.objects)


def decode_answer(
    profile: SnmpProfile,
    varbinds: Sequence[VarBind],
    *,
    error_status: int = 0,
    error_index: int = 0,
) -> Answer:
    """Check one GET response against ``profile``; :class:`RemoteProtocolError` if unusable."""
    objects = profile.objects
    if error_status != 0:
        status = ERROR_STATUS.get(error_status, "unknown")
        # error-index is 1-based; 0 means "not about one var-bind".
        where = (
            f" at {objects[error_index - 1].object}"
            if 1 <= error_index <= len(objects)
            else f" (error-index {error_index})"
        )
        raise RemoteProtocolError(f"error-status {status}({error_status}){where}")
    # Count first: a flood of var-binds costs one comparison, not a walk over them.
    if len(varbinds) != len(objects):
        raise RemoteProtocolError(
            f"answer has {min(len(varbinds), MAX_OBJECTS + 1)}"
            f"{'+' if len(varbinds) > MAX_OBJECTS else ''} var-binds for {len(objects)} requested"
        )
    values: dict[str, Reading] = {}
    problems: list[str] = []
    ints: dict[str, int] = {}
    for index, (obj, (oid, value)) in enumerate(zip(objects, varbinds, strict=True)):
        if tuple(oid) != obj.oid:
            raise RemoteProtocolError(
                f"var-bind {index + 1} names {_short(oid)}, not the requested "
                f"{obj.object} ({obj.dotted})"
            )
        result = _check(obj, value)
        if isinstance(result, int) and not isinstance(result, bool):
            values[obj.name] = result
            ints[obj.name] = result
        elif result is _ABSENT:
            continue
        else:
            values[obj.name] = None
            problems.append(str(result))
    for flag in profile.flags:
        if flag.source in ints:
            values[flag.name] = flag.of(ints[flag.source])
        elif flag.source in values:
            values[flag.name] = None
    return Answer(values=values, problems=tuple(problems))


class _Absent:
    pass


_ABSENT: Final = _Absent()


def _check(obj: SnmpObject, value: SnmpValue) -> int | str | _Absent:
    """The value, or why it is unusable, or :data:`_ABSENT` for a missing optional object."""
    label = f"{obj.name} ({obj.object})"
    match value:
        case Integer(value=v, type_name=t) if t in _INTEGER_TYPES:
            if obj.lo <= v <= obj.hi:
                return v
            shown = str(v) if abs(v) < 10**12 else f"a {v.bit_length()}-bit integer"
            return f"{label}: {shown} outside {obj.lo}..{obj.hi}"
        case Integer(type_name=t):
            return f"{label}: expected an INTEGER, got {t}"
        case Missing(kind=kind) if obj.optional and kind != "endOfMibView":
            return _ABSENT
        case Missing(kind=kind):
            return f"{label}: the controller answered {kind}"
        case Other(type_name=t, size=size):
            sized = f" ({size} octets)" if size is not None else ""
            return f"{label}: expected an INTEGER, got {t}{sized}"
    raise LocalProtocolError(f"not an SnmpValue: {value!r}")  # pragma: no cover


def _short(oid: Sequence[int]) -> str:
    """An OID for a message, cut if hostile (RFC 2578 allows 128 sub-identifiers)."""
    text = dotted(oid[:32])
    return text + ("..." if len(oid) > 32 else "")

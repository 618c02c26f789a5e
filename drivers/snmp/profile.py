"""SNMP device profiles: which objects to GET, and the flags derived from them (data, no I/O).

A profile (``drivers/profiles/ntcip-1202-asc.toml``) lists ``[[objects]]`` (a point read
as an SNMP INTEGER at one OID, with the object's SYNTAX range) and ``[[flags]]`` (a
boolean point derived from an object: one bit, or a set of enumerated values). It is
validated once, with every problem reported as ``file: key.path: problem``, through the
schema reader every TOML file of the project uses (``drivers/profile.py``).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from drivers.point import (
    DEFAULT_HEARTBEAT,
    MAX_HEARTBEAT,
    POINT_NAME,
    POINT_NAME_TEXT,
    PointSpec,
    PointSpecError,
)
from drivers.profile import (
    PROFILES_DIR,
    Problems,
    ProfileError,
    Section,
    builtin_path,
    did_you_mean,
    profile_path,
    read_toml,
    show,
)

_NAME: Final = POINT_NAME
_NAME_TEXT: Final = POINT_NAME_TEXT
_MODEL: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# A dotted OID: RFC 2578 §7.1.3 allows at most 128 sub-identifiers, each < 2^32.
_OID: Final = re.compile(r"[0-2](\.\d{1,10}){1,127}")
MAX_SUBID: Final = 2**32 - 1
# SNMP INTEGER is Integer32 (RFC 2578 §7.1.1).
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
# Objects per GET: a poll is one request PDU. An INTEGER var-bind under the NTCIP subtree
# takes about 20 octets, so 64 keeps an answer within one Ethernet frame (~1300 octets);
# a signal controller profile needs about ten.
MAX_OBJECTS: Final = 64


def parse_oid(text: str) -> tuple[int, ...]:
    """``"1.3.6.1"`` → ``(1, 3, 6, 1)``; ValueError with the reason when it is not an OID."""
    if not _OID.fullmatch(text):
        raise ValueError(
            f"expected a dotted OID such as 1.3.6.1.4.1.1206.4.2.1.3.6.0, got {text!r}"
        )
    parts = tuple(int(p) for p in text.split("."))
    if any(p > MAX_SUBID for p in parts):
        raise ValueError(f"sub-identifiers are at most {MAX_SUBID}, got {text!r}")
    return parts


@dataclass(frozen=True, slots=True, kw_only=True)
class SnmpObject(PointSpec):
    """A number point read as an INTEGER at ``oid``; ``object`` is the standard's name for
    it. ``minimum``/``maximum`` are its SYNTAX range (default: all of Integer32)."""

    object: str
    oid: tuple[int, ...]
    optional: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", "number")
        PointSpec.__post_init__(self)
        if not self.oid:
            raise PointSpecError("oid", "empty")

    @property
    def lo(self) -> int:
        return INT32_MIN if self.minimum is None else math.ceil(self.minimum)

    @property
    def hi(self) -> int:
        return INT32_MAX if self.maximum is None else math.floor(self.maximum)

    @property
    def dotted(self) -> str:
        return ".".join(map(str, self.oid))


@dataclass(frozen=True, slots=True, kw_only=True)
class Flag(PointSpec):
    """A bool point: ``source`` has bit ``bit`` set, or its value is one of ``values``."""

    source: str
    bit: int | None = None
    values: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", "bool")
        PointSpec.__post_init__(self)
        if (self.bit is None) == (not self.values):
            raise PointSpecError("bit", "give exactly one of bit and in")
        if self.bit is not None and not 0 <= self.bit <= 31:
            raise PointSpecError("bit", f"expected 0..31, got {self.bit}")

    def of(self, value: int) -> bool:
        if self.bit is not None:
            return bool(value >> self.bit & 1)
        return value in self.values


@dataclass(frozen=True, slots=True, kw_only=True)
class SnmpProfile:
    """A device model read over SNMP (a :class:`~drivers.point.Model`): its objects, then
    the flags derived from them."""

    name: str
    vendor: str
    description: str
    objects: tuple[SnmpObject, ...]
    flags: tuple[Flag, ...]
    source: Path

    def __post_init__(self) -> None:
        names = [o.name for o in self.objects] + [f.name for f in self.flags]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: point names repeat")
        if len({o.oid for o in self.objects}) != len(self.objects):
            raise ValueError(f"{self.name}: an OID is read twice")
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"{self.name}: 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        objects = {o.name for o in self.objects}
        for flag in self.flags:
            if flag.source not in objects:
                raise ValueError(f"{flag.name}: no object {flag.source!r}")

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return (*self.objects, *self.flags)

    @property
    def point_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.points)

    def point(self, name: str) -> PointSpec:
        """The point called ``name``; KeyError (with a suggestion) if the model has none."""
        for spec in self.points:
            if spec.name == name:
                return spec
        raise KeyError(
            f"profile {self.name!r} has no point {name!r}" + did_you_mean(name, self.point_names)
        )


def builtin_snmp_profiles() -> list[str]:
    """Built-in profiles that are SNMP maps (they have ``[[objects]]``)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("ntcip-*.toml"))


def load_snmp_profile(ref: str, base_dir: Path | None = None) -> SnmpProfile:
    """A built-in name (``ntcip-1202-asc``) or a path; :class:`ProfileError` lists every problem."""
    if _MODEL.fullmatch(ref):
        return _load_builtin(ref)
    return _load_file(profile_path(ref, base_dir), ref)


@functools.cache
def _load_builtin(name: str) -> SnmpProfile:
    path = builtin_path(name, builtin_snmp_profiles(), "SNMP profile")
    return _load_file(path, f"drivers/profiles/{name}.toml")


def _load_file(path: Path, label: str) -> SnmpProfile:
    problems = Problems(label)
    data = read_toml(path, problems)
    if data is None:
        raise ProfileError(problems.errors)
    root = Section(problems, "", data)
    model = root.table("model")
    name = model.string("name", pattern=_MODEL, expected="a model name (a-z, 0-9, -, _)")
    vendor = model.string("vendor", default="")
    description = model.string("description", default="")
    deadband = model.number("deadband", 0, default=0.0)
    heartbeat = model.number("heartbeat", 1, MAX_HEARTBEAT, default=DEFAULT_HEARTBEAT)
    model.close()
    objects = [_read_object(sec, deadband, heartbeat) for sec in root.tables("objects")]
    flags = [_read_flag(sec, heartbeat) for sec in root.tables("flags", required=False)]
    root.close()
    if problems.errors:
        raise ProfileError(problems.errors)
    try:
        return SnmpProfile(
            name=name,
            vendor=vendor,
            description=description,
            objects=tuple(o for o in objects if o is not None),
            flags=tuple(f for f in flags if f is not None),
            source=path,
        )
    except ValueError as exc:
        raise ProfileError([f"{label}: {exc}"]) from exc


def _read_object(sec: Section, deadband: float, heartbeat: float) -> SnmpObject | None:
    mark = sec.problems.mark()
    name = sec.string("name", pattern=_NAME, expected=_NAME_TEXT)
    obj = sec.string("object")
    oid_text = sec.string("oid")
    oid: tuple[int, ...] = ()
    if sec.ok("oid"):
        try:
            oid = parse_oid(oid_text)
        except ValueError as exc:
            sec.error("oid", str(exc))
    minimum = sec.integer("min", INT32_MIN, INT32_MAX, default=INT32_MIN)
    maximum = sec.integer("max", INT32_MIN, INT32_MAX, default=INT32_MAX)
    if sec.ok("min") and sec.ok("max") and minimum > maximum:
        sec.error("max", f"below min ({minimum})")
    optional = sec.boolean("optional", default=False)
    unit = sec.string("unit", default="")
    deadband = sec.number("deadband", 0, default=deadband)
    heartbeat = sec.number("heartbeat", 1, MAX_HEARTBEAT, default=heartbeat)
    sec.close()
    if not sec.problems.clean_since(mark):
        return None
    return SnmpObject(
        name=name,
        object=obj,
        oid=oid,
        minimum=minimum,
        maximum=maximum,
        optional=optional,
        unit=unit,
        deadband=deadband,
        heartbeat=heartbeat,
    )


def _read_flag(sec: Section, heartbeat: float) -> Flag | None:
    mark = sec.problems.mark()
    name = sec.string("name", pattern=_NAME, expected=_NAME_TEXT)
    source = sec.string("from")
    bit: int | None = None
    values: frozenset[int] = frozenset()
    if sec.has("bit") == sec.has("in"):
        sec.error("bit", "give exactly one of bit (a bit number) and in (a list of values)")
    elif sec.has("bit"):
        bit = sec.integer("bit", 0, 31)
    else:
        raw = sec.raw("in")
        if (
            not isinstance(raw, list)
            or not raw
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
        ):
            sec.error("in", f"expected a non-empty list of integers, got {show(raw)}")
        else:
            values = frozenset(raw)
    heartbeat = sec.number("heartbeat", 1, MAX_HEARTBEAT, default=heartbeat)
    sec.close()
    if not sec.problems.clean_since(mark):
        return None
    # A flag is a state: every change is sent, so no deadband.
    return Flag(name=name, source=source, bit=bit, values=values, heartbeat=heartbeat)

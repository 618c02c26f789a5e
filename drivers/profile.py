"""Device profiles: register maps as data, and the pure codec between registers and values.

A profile (``drivers/profiles/<model>.toml``) describes one device model (DESIGN.md,
"Drivers, profiles and buses"): its points, where each lives in the Modbus register
space, how raw registers become an engineering value (type, word order, scale,
offset) and the reporting defaults (deadband, heartbeat). Each point is a
:class:`RegisterSpec`: the protocol-neutral :class:`~drivers.point.PointSpec` the agent
reads, plus its registers. This module

- validates profile files once into frozen :class:`Profile` objects,
- decodes and encodes point values (:func:`decode`, :func:`encode`), with no I/O,
- plans merged read requests (:func:`plan_reads`).

It also holds the small schema reader (:class:`Problems`, :class:`Section`,
:func:`read_toml`) that every TOML file of the project is validated with
(profiles here, boards in ``agent/board.py``, the gateway configuration in
``agent/config.py``). It lives at the lowest layer so drivers and agent share it:
one way to say "file: key.path: problem", one "did you mean".
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import struct
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar

from drivers.point import (
    ACCESSES,
    DEFAULT_HEARTBEAT,
    MAX_HEARTBEAT,
    POINT_NAME,
    POINT_NAME_TEXT,
    PointSpec,
    PointSpecError,
)

# --------------------------------------------------------------------------------------
# Schema reader shared by profiles, boards and the gateway configuration
# --------------------------------------------------------------------------------------


class SchemaError(Exception):
    """A file failed validation. ``errors`` holds every problem, one ``file: key.path: problem``
    line each; ``str()`` is those lines joined by newlines."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors: list[str] = list(errors)


def show(value: object) -> str:
    """Render a TOML value for an error message: strings quoted, booleans as TOML writes them."""
    match value:
        case bool():
            return "true" if value else "false"
        case str():
            return json.dumps(value, ensure_ascii=False)
        case dict():
            return "a table"
        case list():
            return "an array"
        case _:
            return str(value)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``'; did you mean "x"?'`` for the closest option, or ``''`` when nothing is close."""
    match = difflib.get_close_matches(word, sorted(options), n=1)
    return f"; did you mean {show(match[0])}?" if match else ""


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(path: str, key: str | int) -> str:
    """Append a key (``.name``) or an array index (``[3]``) to a dotted key path."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{text}" if path else text


class Problems:
    """Collects the problems of one file as ``file: key.path: problem`` lines."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{self.file}: {path}: {message}" if path else f"{self.file}: {message}")

    def mark(self) -> int:
        """A bookmark for :meth:`clean_since`."""
        return len(self.errors)

    def clean_since(self, mark: int) -> bool:
        """True when no problem was added since ``mark`` was taken."""
        return len(self.errors) == mark


class _Missing:
    pass


_MISSING: Final = _Missing()
_Choice = TypeVar("_Choice", bound=str)


class Section:
    """Reads one TOML table, each key once, and reports what is wrong with a key path.

    Every getter records a problem and returns a harmless placeholder of the right type
    when the value is missing or wrong, so a loader carries on and reports everything;
    the caller builds its objects only if no problem was added (:meth:`Problems.mark`).
    A getter without ``default`` means the key is required. :meth:`close` reports the
    keys nobody asked for as unknown, with the closest known key as a suggestion.

    A *quiet* section stands for a table that is missing or not a table (already
    reported): it returns placeholders and reports nothing more.
    """

    def __init__(
        self, problems: Problems, path: str, raw: Mapping[str, object], *, quiet: bool = False
    ) -> None:
        self.problems = problems
        self.path = path
        self._raw = raw
        self._quiet = quiet
        self._known: set[str] = set()
        self._bad: set[str] = set()

    def path_of(self, key: str | int) -> str:
        return key_path(self.path, key)

    def error(self, key: str, message: str) -> None:
        """Report a problem with ``key`` of this table."""
        self._bad.add(key)
        if not self._quiet:
            self.problems.add(self.path_of(key), message)

    def ok(self, key: str) -> bool:
        """True when no problem was reported for ``key`` (its value can be cross-checked)."""
        return key not in self._bad

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (and a known key of this table from now on)."""
        self._known.add(key)
        return key in self._raw

    def raw(self, key: str) -> object:
        """The value as parsed, unchecked (None when absent); for values with several types."""
        self._known.add(key)
        return self._raw.get(key)

    def _get(self, key: str, expected: str, required: bool) -> object:
        self._known.add(key)
        if key in self._raw:
            return self._raw[key]
        if required:
            self.error(key, f"missing required key; expected {expected}")
        return _MISSING

    def string(
        self,
        key: str,
        *,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        expected: str = "a string",
    ) -> str:
        value = self._get(key, expected, default is None)
        if isinstance(value, str) and (pattern is None or pattern.fullmatch(value)):
            return value
        if value is not _MISSING:
            self.error(key, f"expected {expected}, got {show(value)}")
        return default if default is not None else ""

    def choice(
        self, key: str, choices: tuple[_Choice, ...], *, default: _Choice | None = None
    ) -> _Choice:
        expected = "one of " + ", ".join(show(c) for c in choices)
        value = self._get(key, expected, default is None)
        for choice in choices:
            if value == choice:
                return choice
        if value is not _MISSING:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            self.error(key, f"expected {expected}, got {show(value)}{hint}")
        return default if default is not None else choices[0]

    def integer(
        self, key: str, lo: int, hi: int | None = None, *, default: int | None = None
    ) -> int:
        expected = f"an integer {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        value = self._get(key, expected, default is None)
        # bool is a subclass of int in Python, but `true` is not a number in TOML.
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and lo <= value
            and (hi is None or value <= hi)
        ):
            return value
        if value is not _MISSING:
            self.error(key, f"expected {expected}, got {show(value)}")
        return default if default is not None else lo

    def number(
        self,
        key: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        default: float | None = None,
    ) -> float:
        if lo is not None and hi is not None:
            expected = f"a number {_number_text(lo)}..{_number_text(hi)}"
        elif lo is not None:
            expected = f"a number >= {_number_text(lo)}"
        else:
            expected = "a number"
        value = self._get(key, expected, default is None)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (lo is None or value >= lo)
            and (hi is None or value <= hi)
        ):
            return float(value)
        if value is not _MISSING:
            self.error(key, f"expected {expected}, got {show(value)}")
        if default is not None:
            return default
        return lo if lo is not None else 0.0

    def boolean(self, key: str, *, default: bool | None = None) -> bool:
        value = self._get(key, "true or false", default is None)
        if isinstance(value, bool):
            return value
        if value is not _MISSING:
            self.error(key, f"expected true or false, got {show(value)}")
        return bool(default)

    def table(self, key: str, *, required: bool = True) -> Section:
        """The sub-table ``key``; a quiet empty section when it is missing or not a table."""
        value = self._get(key, "a table", required)
        if isinstance(value, dict):
            return Section(self.problems, self.path_of(key), value, quiet=self._quiet)
        if value is not _MISSING:
            self.error(key, f"expected a table, got {show(value)}")
        return Section(
            self.problems, self.path_of(key), {}, quiet=value is not _MISSING or required
        )

    def tables(self, key: str, *, required: bool = True) -> list[Section]:
        """The array of tables ``key`` (``[[key]]``), one section per element."""
        value = self._get(key, "an array of tables ([[" + key + "]])", required)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.error(key, f"expected an array of tables ([[{key}]]), got {show(value)}")
            return []
        if required and not value:
            self.error(key, "expected at least one entry")
        sections = []
        for index, item in enumerate(value):
            path = key_path(self.path_of(key), index)
            if isinstance(item, dict):
                sections.append(Section(self.problems, path, item, quiet=self._quiet))
            else:
                self._bad.add(key)
                if not self._quiet:
                    self.problems.add(path, f"expected a table, got {show(item)}")
        return sections

    def subtables(self) -> list[tuple[str, Section]]:
        """Every key of this table, each of which must hold a table (``[serial.<role>]``)."""
        result = []
        for key in self._raw:
            value = self._raw[key]
            self._known.add(key)
            if isinstance(value, dict):
                section = Section(self.problems, self.path_of(key), value, quiet=self._quiet)
                result.append((key, section))
            else:
                self.error(key, f"expected a table, got {show(value)}")
        return result

    def skip_unread(self) -> None:
        """Take every key as known: a table whose keys depend on a value that was wrong
        (a device's keys depend on its driver) reports that value, not each key."""
        self._known.update(self._raw)

    def close(self) -> None:
        """Report every key that no getter asked for as unknown."""
        for key in self._raw:
            if key not in self._known:
                hint = did_you_mean(key, self._known)
                if not hint and self._known:
                    hint = "; known keys: " + ", ".join(sorted(self._known))
                self.error(key, "unknown key" + hint)


def read_toml(path: Path, problems: Problems) -> dict[str, object] | None:
    """Parse a TOML file; on failure record why (unreadable, not UTF-8, syntax) and return None."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        problems.add("", f"cannot read the file: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError as exc:
        problems.add("", f"not UTF-8 text (byte {exc.start})")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's message carries the place: "Invalid value (at line 3, column 9)".
        problems.add("", f"TOML syntax error: {exc}")
        return None


_BUILTIN_REF = re.compile(r"[a-z0-9][a-z0-9_-]*")


def is_builtin_ref(ref: str) -> bool:
    """Whether a profile/board reference names a built-in file rather than a path.

    A built-in name is bare (``lamp-ctl``); anything with a ``/`` or a ``.`` (``x.toml``,
    ``./x``) is a path.
    """
    return _BUILTIN_REF.fullmatch(ref) is not None


# --------------------------------------------------------------------------------------
# Points and profiles
# --------------------------------------------------------------------------------------

RegisterType = Literal["u16", "s16", "u32", "s32", "f32", "bool"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Table = Literal["holding", "input"]

REGISTER_TYPES: Final[tuple[RegisterType, ...]] = ("u16", "s16", "u32", "s32", "f32", "bool")
WORD_ORDERS: Final[tuple[WordOrder, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")
TABLES: Final[tuple[Table, ...]] = ("holding", "input")
WIDE_TYPES: Final = frozenset({"u32", "s32", "f32"})

# Modbus Application Protocol V1.1b3, §4.4: register addresses are 16 bits (0..65535).
MAX_ADDRESS: Final = 0xFFFF
# Modbus Application Protocol V1.1b3, §6.3 (FC03) and §6.4 (FC04): 1..125 (0x7D) registers.
MAX_READ_COUNT: Final = 125
# Registers left unread between two points before a read is split in two: reading 8 spare
# registers (16 bytes, ~9 ms at 19200 baud) costs less than a second request's turnaround.
DEFAULT_MAX_GAP: Final = 8
# decode() rounds scaled values to this many decimals: removes float noise
# (0.1 * 3 = 0.30000000000000004) far below any sensor's resolution.
SCALED_DIGITS: Final = 6

_INTEGER_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "u16": (0, 0xFFFF),
    "s16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "s32": (-0x8000_0000, 0x7FFF_FFFF),
}
_MODEL_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MODEL_NAME_TEXT: Final = 'a model name: 1 to 64 of a-z, 0-9, "-", "_"'

PROFILES_DIR: Final = Path(__file__).parent / "profiles"

Decoded = float | int | bool


class ProfileError(SchemaError):
    """A profile could not be loaded; each line names the file, the key path and the problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterSpec(PointSpec):
    """A point of a Modbus device model: the neutral :class:`PointSpec` plus where it
    lives in the register space and how its registers decode.

    Engineering value = raw * scale + offset. ``kind`` follows ``type`` (a ``bool``
    register is a bool point, any other a number) and need not be given.
    """

    table: Table
    address: int
    type: RegisterType
    word_order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        # The kind is implied by the register type; set before the neutral checks use it.
        object.__setattr__(self, "kind", "bool" if self.type == "bool" else "number")
        for key, value, allowed in (
            ("table", self.table, TABLES),
            ("type", self.type, REGISTER_TYPES),
            ("word_order", self.word_order, WORD_ORDERS),
        ):
            if value not in allowed:
                raise PointSpecError(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        if not 0 <= self.address <= MAX_ADDRESS - self.count + 1:
            raise PointSpecError(
                "address",
                f"a {self.type} needs {self.count} register(s) within 0..{MAX_ADDRESS}, "
                f"got {self.address}",
            )
        if self.type not in WIDE_TYPES and self.word_order != "ABCD":
            raise PointSpecError("word_order", f"applies only to 32-bit types, not {self.type}")
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise PointSpecError("scale", f"expected a finite non-zero number, got {self.scale}")
        if not math.isfinite(self.offset):
            raise PointSpecError("offset", f"expected a finite number, got {self.offset}")
        if self.type == "bool" and (self.scale != 1 or self.offset != 0):
            raise PointSpecError("scale", "scale and offset do not apply to bool points")
        if self.access == "rw" and self.table == "input":
            raise PointSpecError(
                "access", 'input registers are read-only (FC04); use table = "holding"'
            )
        # Zero-argument super() does not work in a slotted dataclass.
        PointSpec.__post_init__(self)

    def encoding_problem(self, value: object, *, label: str) -> str | None:
        assert isinstance(value, int | float)  # problem() accepted it
        try:
            encode(self, value)
        except ValueError as exc:
            return f"{label}: {exc}"
        return None

    @property
    def count(self) -> int:
        """How many 16-bit registers the value occupies (1 or 2)."""
        return 2 if self.type in WIDE_TYPES else 1


def _point_conflicts(points: Sequence[RegisterSpec]) -> Iterator[tuple[int, str, str]]:
    """(index, key, problem) for duplicate names and registers claimed by two points."""
    first: dict[str, int] = {}
    for index, spec in enumerate(points):
        if spec.name in first:
            yield (
                index,
                "name",
                f"duplicate point name {show(spec.name)} (also points[{first[spec.name]}])",
            )
        first.setdefault(spec.name, index)
    for table in TABLES:
        in_table = sorted(
            (spec.address, index, spec) for index, spec in enumerate(points) if spec.table == table
        )
        reach: tuple[int, RegisterSpec] | None = None  # the point reaching furthest so far
        for _, index, spec in in_table:
            if reach is not None and spec.address <= reach[1].address + reach[1].count - 1:
                owner, other = reach
                yield (
                    index,
                    "address",
                    f"{table} registers {_span(spec)} overlap {show(other.name)} "
                    f"(points[{owner}], {_span(other)})",
                )
            if reach is None or spec.address + spec.count > reach[1].address + reach[1].count:
                reach = (index, spec)


def _span(spec: RegisterSpec) -> str:
    last = spec.address + spec.count - 1
    return str(spec.address) if last == spec.address else f"{spec.address}..{last}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A device model: its points, in file order, and the file it came from."""

    name: str
    vendor: str
    description: str
    points: tuple[RegisterSpec, ...]
    source: Path

    def __post_init__(self) -> None:
        for index, key, problem in _point_conflicts(self.points):
            raise ValueError(f"points[{index}].{key}: {problem}")

    def point(self, name: str) -> RegisterSpec:
        """The point called ``name``; KeyError (with a suggestion) if the model has none."""
        for spec in self.points:
            if spec.name == name:
                return spec
        raise KeyError(
            f"profile {self.name!r} has no point {name!r}"
            + did_you_mean(name, (p.name for p in self.points))
        )


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped in ``drivers/profiles``."""
    # ntcip-*.toml are SNMP object maps (drivers/snmp/profile.py), not register maps.
    return sorted(
        path.stem for path in PROFILES_DIR.glob("*.toml") if not path.stem.startswith("ntcip-")
    )


def load_profile(ref: str, base_dir: Path | None = None) -> Profile:
    """Load a profile: a built-in name (``lamp-ctl``) or a path to a ``.toml`` file.

    A relative path is taken relative to ``base_dir`` (the configuration's folder) when
    given. Built-ins are parsed once per process. Raises :class:`ProfileError` listing
    every problem.
    """
    if is_builtin_ref(ref):
        return _load_builtin(ref)
    return _load_file(profile_path(ref, base_dir), ref)


def profile_path(ref: str, base_dir: Path | None) -> Path:
    """The file a profile given as a path names (relative to ``base_dir`` when given)."""
    path = Path(ref)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return path


def builtin_path(name: str, known: Sequence[str], kind: str = "profile") -> Path:
    """The file of the built-in profile ``name``; :class:`ProfileError` (with a suggestion
    among ``known``) if there is none."""
    path = PROFILES_DIR / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(
            [
                f"no built-in {kind} {show(name)}{did_you_mean(name, known)} "
                f"(built-in: {', '.join(known)}; or give a path to a .toml file)"
            ]
        )
    return path


@functools.cache
def _load_builtin(name: str) -> Profile:
    path = builtin_path(name, builtin_profiles())
    return _load_file(path, f"drivers/profiles/{name}.toml")


def _load_file(path: Path, label: str) -> Profile:
    problems = Problems(label)
    data = read_toml(path, problems)
    if data is None:
        raise ProfileError(problems.errors)
    root = Section(problems, "", data)
    model = root.table("model")
    name = model.string("name", pattern=_MODEL_NAME, expected=_MODEL_NAME_TEXT)
    vendor = model.string("vendor", default="")
    description = model.string("description", default="")
    deadband = model.number("deadband", 0, default=0.0)
    heartbeat = model.number("heartbeat", 1, MAX_HEARTBEAT, default=DEFAULT_HEARTBEAT)
    model.close()
    specs = [_read_point(section, deadband, heartbeat) for section in root.tables("points")]
    root.close()
    points = tuple(spec for spec in specs if spec is not None)
    if not problems.errors:
        for index, key, problem in _point_conflicts(points):
            problems.add(f"points[{index}].{key}", problem)
    if problems.errors:
        raise ProfileError(problems.errors)
    return Profile(name=name, vendor=vendor, description=description, points=points, source=path)


def _read_point(sec: Section, model_deadband: float, model_heartbeat: float) -> RegisterSpec | None:
    mark = sec.problems.mark()
    name = sec.string("name", pattern=POINT_NAME, expected=POINT_NAME_TEXT)
    table = sec.choice("table", TABLES)
    address = sec.integer("address", 0, MAX_ADDRESS)
    type_ = sec.choice("type", REGISTER_TYPES)
    word_order: WordOrder = "ABCD"
    if sec.has("word_order") and sec.ok("type") and type_ not in WIDE_TYPES:
        sec.error("word_order", f"applies only to 32-bit types (u32, s32, f32), not {type_}")
    else:
        word_order = sec.choice("word_order", WORD_ORDERS, default="ABCD")
    scale = sec.number("scale", default=1.0)
    offset = sec.number("offset", default=0.0)
    unit = sec.string("unit", default="")
    access = sec.choice("access", ACCESSES, default="r")
    minimum = sec.number("min") if sec.has("min") else None
    maximum = sec.number("max") if sec.has("max") else None
    # The model's deadband is for numbers; a bool is reported on every change.
    deadband = sec.number("deadband", 0, default=0.0 if type_ == "bool" else model_deadband)
    heartbeat = sec.number("heartbeat", 1, MAX_HEARTBEAT, default=model_heartbeat)
    default = sec.raw("default")
    if default is not None and (
        not isinstance(default, int | float)
        or (isinstance(default, float) and not math.isfinite(default))
    ):
        sec.error("default", f"expected a number or true/false, got {show(default)}")
    sec.close()
    if not sec.problems.clean_since(mark):
        return None
    assert default is None or isinstance(default, int | float)  # checked above
    try:
        return RegisterSpec(
            name=name,
            table=table,
            address=address,
            type=type_,
            word_order=word_order,
            scale=scale,
            offset=offset,
            unit=unit,
            access=access,
            minimum=minimum,
            maximum=maximum,
            deadband=deadband,
            heartbeat=heartbeat,
            default=default,
        )
    except PointSpecError as exc:
        sec.error(exc.key, exc.message)
        return None


# --------------------------------------------------------------------------------------
# Codec: registers <-> values (pure)
# --------------------------------------------------------------------------------------


def _to_abcd(registers: Sequence[int], order: WordOrder) -> bytes:
    """The 4 bytes of a 32-bit value most significant first (A B C D), from the wire order."""
    wire = registers[0].to_bytes(2, "big") + registers[1].to_bytes(2, "big")
    value = bytearray(4)
    for position, letter in enumerate(order):
        value["ABCD".index(letter)] = wire[position]
    return bytes(value)


def _from_abcd(value: bytes, order: WordOrder) -> tuple[int, int]:
    wire = bytes(value["ABCD".index(letter)] for letter in order)
    return int.from_bytes(wire[:2], "big"), int.from_bytes(wire[2:], "big")


def _shortest_f32(value: float) -> float:
    """The shortest decimal that is the same float32 (230.1, not 230.10000610351562)."""
    bits = struct.pack(">f", value)
    for digits in range(6, 10):  # 9 significant digits always identify a float32
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == bits:
                return candidate
        except OverflowError:  # rounding up past the largest float32
            continue
    return value


def decode(spec: RegisterSpec, registers: Sequence[int]) -> Decoded:
    """The engineering value of ``spec`` from its raw registers (``spec.count`` of them).

    Unscaled integer types stay ``int``; scaled values are floats rounded to
    :data:`SCALED_DIGITS` decimals; f32 comes back as the shortest decimal of the float32.
    Raises ValueError for a wrong register count or value, and for an f32 NaN or infinity
    (the poller marks such a point ``out_of_range``).
    """
    if len(registers) != spec.count:
        raise ValueError(f"{spec.name}: expected {spec.count} register(s), got {len(registers)}")
    for register in registers:
        if not 0 <= register <= 0xFFFF:
            raise ValueError(f"{spec.name}: register value {register} is not 16-bit")
    raw: int | float
    match spec.type:
        case "bool":
            return registers[0] != 0
        case "u16":
            raw = registers[0]
        case "s16":
            raw = registers[0] - 0x10000 if registers[0] & 0x8000 else registers[0]
        case "u32" | "s32":
            raw = int.from_bytes(
                _to_abcd(registers, spec.word_order), "big", signed=spec.type == "s32"
            )
        case "f32":
            raw = struct.unpack(">f", _to_abcd(registers, spec.word_order))[0]
            if not math.isfinite(raw):
                raise ValueError(f"{spec.name}: the device sent {raw} (f32)")
            raw = _shortest_f32(raw)
    if spec.scale == 1 and spec.offset == 0:
        return raw
    return round(raw * spec.scale + spec.offset, SCALED_DIGITS)


def encode(spec: RegisterSpec, value: Decoded) -> tuple[int, ...]:
    """The registers to write for ``value``: the inverse of :func:`decode`.

    Numbers are rounded to the nearest raw step. Raises ValueError when the point is
    read-only, the value has the wrong type, or it does not fit the register type. It
    does not check ``min``/``max``: that is :meth:`PointSpec.write_problem`'s job.
    """
    if not spec.writable:
        raise ValueError(f"{spec.name} is read-only")
    if spec.type == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return (1 if value else 0,)
        raise ValueError(f"{spec.name}: expected true or false, got {show(value)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{spec.name}: expected a number, got {show(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{spec.name}: cannot write {value}")
    raw: int | float = value
    if spec.scale != 1 or spec.offset != 0:
        raw = (value - spec.offset) / spec.scale
    if spec.type == "f32":
        try:
            data = struct.pack(">f", raw)
        except OverflowError:
            raise ValueError(f"{spec.name}: {value} is outside the f32 range") from None
        return _from_abcd(data, spec.word_order)
    step = round(raw)
    lo, hi = _INTEGER_RANGES[spec.type]
    if not lo <= step <= hi:
        raise ValueError(
            f"{spec.name}: {value} does not fit a {spec.type} (raw {step}, allowed {lo}..{hi})"
        )
    match spec.type:
        case "u16" | "s16":
            return (step & 0xFFFF,)
        case _:
            data = step.to_bytes(4, "big", signed=spec.type == "s32")
            return _from_abcd(data, spec.word_order)


# --------------------------------------------------------------------------------------
# Read planning
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadBlock:
    """One read request (FC03 for holding, FC04 for input) covering several points."""

    table: Table
    address: int
    count: int
    points: tuple[RegisterSpec, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_READ_COUNT:
            raise ValueError(f"a read covers 1..{MAX_READ_COUNT} registers, got {self.count}")
        for spec in self.points:
            if spec.table != self.table or not (
                self.address <= spec.address
                and spec.address + spec.count <= self.address + self.count
            ):
                raise ValueError(f"point {spec.name} is not inside {self}")

    def slice(self, registers: Sequence[int], spec: RegisterSpec) -> Sequence[int]:
        """The registers of ``spec`` within the block's response ``registers``."""
        start = spec.address - self.address
        return registers[start : start + spec.count]


def plan_reads(
    points: Iterable[RegisterSpec],
    *,
    max_count: int = MAX_READ_COUNT,
    max_gap: int = DEFAULT_MAX_GAP,
) -> list[ReadBlock]:
    """Group points into as few reads as possible, holding registers first.

    Points of one table are merged into one read while the registers between them
    number at most ``max_gap`` (read and ignored) and the read stays within
    ``max_count`` registers.
    """
    if not 1 <= max_count <= MAX_READ_COUNT:
        raise ValueError(f"max_count must be 1..{MAX_READ_COUNT}, got {max_count}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    blocks: list[ReadBlock] = []
    all_points = list(points)
    for table in TABLES:
        current: list[RegisterSpec] = []
        start = end = 0  # the current block covers registers start..end-1
        for spec in sorted(
            (p for p in all_points if p.table == table), key=lambda p: (p.address, p.count)
        ):
            if spec.count > max_count:
                raise ValueError(f"{spec.name} needs {spec.count} registers > max_count")
            spec_end = spec.address + spec.count
            if (
                current
                and spec.address - end <= max_gap
                and max(end, spec_end) - start <= max_count
            ):
                current.append(spec)
                end = max(end, spec_end)
                continue
            if current:
                blocks.append(
                    ReadBlock(table=table, address=start, count=end - start, points=tuple(current))
                )
            current, start, end = [spec], spec.address, spec_end
        if current:
            blocks.append(
                ReadBlock(table=table, address=start, count=end - start, points=tuple(current))
            )
    return blocks


def decode_block(block: ReadBlock, registers: Sequence[int]) -> dict[str, Decoded | None]:
    """Decode every point of a block's response; None for a value the device sent as NaN/inf.

    Raises ValueError when ``registers`` does not have ``block.count`` entries.
    """
    if len(registers) != block.count:
        raise ValueError(f"expected {block.count} registers for the block, got {len(registers)}")
    result: dict[str, Decoded | None] = {}
    for spec in block.points:
        try:
            result[spec.name] = decode(spec, block.slice(registers, spec))
        except ValueError:
            result[spec.name] = None
    return result

"""Device profiles: register decoding/encoding, read planning, built-in maps and validation."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.profile import (
    REGISTER_TYPES,
    WORD_ORDERS,
    PointSpecError,
    Profile,
    ProfileError,
    ReadBlock,
    RegisterSpec,
    RegisterType,
    Table,
    WordOrder,
    builtin_profiles,
    decode,
    decode_block,
    encode,
    load_profile,
    plan_reads,
)


def spec(
    type_: RegisterType,
    order: WordOrder = "ABCD",
    *,
    address: int = 0,
    table: Table = "holding",
    **extra: Any,
) -> RegisterSpec:
    """A point named "p"; holding registers are writable so encode() accepts them."""
    return RegisterSpec(
        name="p",
        table=table,
        address=address,
        type=type_,
        word_order=order,
        access="rw" if table == "holding" else "r",
        **extra,
    )


# ------------------------------------------------------------------ decoding known values

# (type, word order, registers as on the wire, value)
KNOWN = [
    ("u16", "ABCD", (0x1234,), 0x1234),
    ("u16", "ABCD", (0xFFFF,), 65535),
    ("s16", "ABCD", (0xFFFE,), -2),
    ("s16", "ABCD", (0x7FFF,), 32767),
    ("s16", "ABCD", (0x8000,), -32768),
    ("bool", "ABCD", (0,), False),
    ("bool", "ABCD", (1,), True),
    ("u32", "ABCD", (0x1234, 0x5678), 0x12345678),
    ("u32", "CDAB", (0x5678, 0x1234), 0x12345678),
    ("u32", "BADC", (0x3412, 0x7856), 0x12345678),
    ("u32", "DCBA", (0x7856, 0x3412), 0x12345678),
    ("s32", "ABCD", (0xFFFF, 0xFFFE), -2),
    ("s32", "CDAB", (0xFFFE, 0xFFFF), -2),
    ("s32", "BADC", (0xFFFF, 0xFEFF), -2),
    ("s32", "DCBA", (0xFEFF, 0xFFFF), -2),
    ("s32", "ABCD", (0x7FFF, 0xFFFF), 2**31 - 1),
    ("f32", "ABCD", (0x3FC0, 0x0000), 1.5),
    ("f32", "CDAB", (0x0000, 0x3FC0), 1.5),
    ("f32", "BADC", (0xC03F, 0x0000), 1.5),
    ("f32", "DCBA", (0x0000, 0xC03F), 1.5),
    ("f32", "ABCD", (0xC000, 0x0000), -2.0),
]


@pytest.mark.parametrize(("type_", "order", "registers", "value"), KNOWN)
def test_decode__known_values(
    type_: RegisterType, order: WordOrder, registers: tuple[int, ...], value: object
) -> None:
    """A device's registers decode to the value its manual documents, in every word order."""
    result = decode(spec(type_, order), registers)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(("type_", "order", "registers", "value"), KNOWN)
def test_encode__known_values(
    type_: RegisterType, order: WordOrder, registers: tuple[int, ...], value: float
) -> None:
    """A write puts the registers on the wire that the device's manual documents."""
    assert encode(spec(type_, order), value) == registers


def test_decode__bool_is_any_nonzero_register() -> None:
    """A device flagging a failure with any non-zero value is read as a failure."""
    assert decode(spec("bool"), (0x8000,)) is True


def test_decode__f32_gives_shortest_decimal() -> None:
    """A meter's 230.1 V reads 230.1, not 230.10000610351562."""
    registers = struct.unpack(">HH", struct.pack(">f", 230.1))
    assert decode(spec("f32"), registers) == 230.1


def test_decode__scaled_values_are_rounded_floats() -> None:
    """Scaled readings carry no float noise (0.3 °C, not 0.30000000000000004)."""
    tenth = spec("s16", scale=0.1)
    assert decode(tenth, (3,)) == 0.3
    assert decode(tenth, (0xFF9C,)) == -10.0
    assert isinstance(decode(tenth, (100,)), float)
    assert decode(spec("u16", scale=2, offset=-40), (30,)) == 20.0


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800000, 0xFF800000], ids=["nan", "inf", "-inf"])
def test_decode__f32_not_a_number_raises(bits: int) -> None:
    """A meter sending NaN is flagged (out_of_range), not reported as a number."""
    with pytest.raises(ValueError, match="the device sent"):
        decode(spec("f32"), (bits >> 16, bits & 0xFFFF))


@pytest.mark.parametrize("registers", [(), (1, 2), (0x10000,), (-1,)])
def test_decode__bad_registers_raise(registers: tuple[int, ...]) -> None:
    """A response of the wrong size or with impossible values never decodes silently."""
    with pytest.raises(ValueError, match=r"register"):
        decode(spec("u16"), registers)


# ------------------------------------------------------------------ round trips (hypothesis)

ORDERED = [(t, o) for t in REGISTER_TYPES for o in WORD_ORDERS if t in ("u32", "s32", "f32")] + [
    (t, "ABCD") for t in ("u16", "s16")
]


def _is_finite_f32(registers: tuple[int, ...], order: WordOrder) -> bool:
    """Independent of the codec: pick the bytes A, B, C, D out of the wire order."""
    wire = b"".join(r.to_bytes(2, "big") for r in registers)
    abcd = bytes(wire[order.index(letter)] for letter in "ABCD")
    return math.isfinite(struct.unpack(">f", abcd)[0])


@pytest.mark.parametrize(("type_", "order"), ORDERED)
@given(data=st.data())
def test_codec__registers_round_trip(
    type_: RegisterType, order: WordOrder, data: st.DataObject
) -> None:
    """Reading a value and writing it back puts the very same registers on the wire."""
    point = spec(type_, order)
    registers = tuple(
        data.draw(st.lists(st.integers(0, 0xFFFF), min_size=point.count, max_size=point.count))
    )
    if type_ == "f32" and not _is_finite_f32(registers, order):
        with pytest.raises(ValueError, match="the device sent"):
            decode(point, registers)
        return
    assert encode(point, decode(point, registers)) == registers


@pytest.mark.parametrize("order", WORD_ORDERS)
@given(value=st.integers(0, 2**32 - 1))
def test_codec__u32_value_round_trip(order: WordOrder, value: int) -> None:
    """Any u32 counter survives encode then decode unchanged, in every word order."""
    assert decode(spec("u32", order), encode(spec("u32", order), value)) == value


@pytest.mark.parametrize("order", WORD_ORDERS)
@given(value=st.integers(-(2**31), 2**31 - 1))
def test_codec__s32_value_round_trip(order: WordOrder, value: int) -> None:
    """Any s32 (signed power) survives encode then decode unchanged, in every word order."""
    assert decode(spec("s32", order), encode(spec("s32", order), value)) == value


@pytest.mark.parametrize("order", WORD_ORDERS)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_codec__f32_value_round_trip(order: WordOrder, value: float) -> None:
    """Any float32 survives encode then decode as the same float32."""
    point = spec("f32", order)
    assert struct.pack(">f", decode(point, encode(point, value))) == struct.pack(">f", value)


@given(value=st.integers(-32768, 32767))
def test_codec__s16_scaled_value_round_trip(value: int) -> None:
    """A 0.1-scaled temperature written then read back is the same number."""
    point = spec("s16", scale=0.1)
    engineering = round(value * 0.1, 6)
    assert decode(point, encode(point, engineering)) == engineering


@given(value=st.booleans())
def test_codec__bool_round_trip(value: bool) -> None:
    """A lamp switched on reads back on."""
    assert decode(spec("bool"), encode(spec("bool"), value)) is value


# ------------------------------------------------------------------ encode errors, in_range


@pytest.mark.parametrize(
    ("point", "value", "message"),
    [
        (spec("u16", table="input"), 1, "p is read-only"),
        (spec("u16"), 70000, r"p: 70000 does not fit a u16 \(raw 70000, allowed 0..65535\)"),
        (spec("u16"), -1, "does not fit a u16"),
        (spec("s16"), -40000, "does not fit a s16"),
        (spec("u32"), 2**32, "does not fit a u32"),
        (spec("s32"), 2**31, "does not fit a s32"),
        (spec("s16", scale=0.1), 4000.0, r"raw 40000"),
        (spec("u16"), True, "expected a number, got true"),
        (spec("u16"), "7", 'expected a number, got "7"'),
        (spec("f32"), math.nan, "cannot write nan"),
        (spec("f32"), 1e39, "outside the f32 range"),
        (spec("bool"), 2, "expected true or false, got 2"),
    ],
)
def test_encode__rejects_with_a_precise_message(
    point: RegisterSpec, value: object, message: str
) -> None:
    """A command that cannot be written says exactly why, and nothing reaches the bus."""
    with pytest.raises(ValueError, match=message):
        encode(point, value)  # type: ignore[arg-type]


def test_in_range__bounds_inclusive_and_nan_outside() -> None:
    """Readings at the limits are good; beyond them or NaN they are out_of_range."""
    point = spec("s16", scale=0.1, minimum=-40.0, maximum=120.0)
    assert point.in_range(-40.0)
    assert point.in_range(120.0)
    assert point.in_range(20)
    assert not point.in_range(-40.1)
    assert not point.in_range(120.1)
    assert not point.in_range(math.nan)
    assert spec("u16").in_range(1e9)
    assert spec("bool").in_range(True)


# ------------------------------------------------------------------ read planning


def at(
    address: int, type_: RegisterType = "u16", table: Table = "input", name: str = "p"
) -> RegisterSpec:
    return RegisterSpec(name=name, table=table, address=address, type=type_)


def layout(blocks: list[ReadBlock]) -> list[tuple[str, int, int, list[int]]]:
    return [(b.table, b.address, b.count, [p.address for p in b.points]) for b in blocks]


def test_plan_reads__adjacent_points_merge() -> None:
    """Adjacent registers cost one request, whatever order the points are listed in."""
    points = [at(4, "u32"), at(0), at(1), at(2, "f32")]
    assert layout(plan_reads(points)) == [("input", 0, 6, [0, 1, 2, 4])]


def test_plan_reads__gap_up_to_max_gap_is_read_beyond_is_split() -> None:
    """Small holes are read and ignored; big holes split the read in two."""
    assert layout(plan_reads([at(0), at(9)], max_gap=8)) == [("input", 0, 10, [0, 9])]
    assert layout(plan_reads([at(0), at(10)], max_gap=8)) == [
        ("input", 0, 1, [0]),
        ("input", 10, 1, [10]),
    ]
    assert len(plan_reads([at(0), at(2)], max_gap=0)) == 2


def test_plan_reads__never_exceeds_max_count() -> None:
    """No request asks for more than 125 registers (devices reject it)."""
    points = [at(a, "u32") for a in range(0, 300, 2)]
    blocks = plan_reads(points)
    assert [b.count for b in blocks] == [124, 124, 52]
    assert all(b.count <= 125 for b in blocks)
    assert sum(len(b.points) for b in blocks) == 150
    assert [b.count for b in plan_reads([at(0), at(1), at(2)], max_count=2)] == [2, 1]


def test_plan_reads__tables_are_never_mixed() -> None:
    """Holding and input registers at the same addresses go in separate requests (FC03/FC04)."""
    blocks = plan_reads([at(0, table="input"), at(0, table="holding"), at(1, table="input")])
    assert layout(blocks) == [("holding", 0, 1, [0]), ("input", 0, 2, [0, 1])]


def test_plan_reads__rejects_bad_limits() -> None:
    """A mistaken limit fails loudly instead of sending requests devices reject."""
    with pytest.raises(ValueError, match="max_count"):
        plan_reads([at(0)], max_count=126)
    with pytest.raises(ValueError, match="needs 2 registers"):
        plan_reads([at(0, "u32")], max_count=1)
    assert plan_reads([]) == []


def test_decode_block__lamp_ctl_response() -> None:
    """One response for the lamp's input registers gives every reading."""
    profile = load_profile("lamp-ctl")
    [holding, inputs] = plan_reads(profile.points)
    assert (holding.table, holding.address, holding.count) == ("holding", 0, 2)
    assert (inputs.table, inputs.address, inputs.count) == ("input", 0, 7)
    registers = [1, 423, 0x0001, 0x0002, 0x1234, 0x0000, 0xFF38]
    assert decode_block(inputs, registers) == {
        "failure": True,
        "power": 42.3,
        "energy": 65538,
        "hours": 0x1234,
        "driver_temp": -20.0,
    }
    assert inputs.slice(registers, profile.point("energy")) == [1, 2]
    with pytest.raises(ValueError, match="expected 7 registers"):
        decode_block(inputs, registers[:-1])


def test_decode_block__nan_is_none() -> None:
    """One NaN value from a meter spoils that point only, not the whole read."""
    profile = load_profile("meter-3ph")
    [block] = plan_reads(profile.points)
    registers = [0x4366, 0x199A] + [0x7FC0, 0] + [0] * 12
    values = decode_block(block, registers)
    assert values["voltage_l1"] == 230.1
    assert values["voltage_l2"] is None
    assert values["energy"] == 0


# ------------------------------------------------------------------ built-in profiles

# name: (table, address, type, word order, scale, unit, access, min, max, deadband, default)
EXPECTED = {
    "lamp-ctl": {
        "level": ("holding", 0, "u16", "ABCD", 1.0, "%", "rw", 0, 100, 1, 100),
        "on": ("holding", 1, "bool", "ABCD", 1.0, "", "rw", None, None, 0, True),
        "failure": ("input", 0, "bool", "ABCD", 1.0, "", "r", None, None, 0, None),
        "power": ("input", 1, "u16", "ABCD", 0.1, "W", "r", None, None, 1, None),
        "energy": ("input", 2, "u32", "ABCD", 1.0, "Wh", "r", None, None, 10, None),
        "hours": ("input", 4, "u32", "CDAB", 1.0, "h", "r", None, None, 0, None),
        "driver_temp": ("input", 6, "s16", "ABCD", 0.1, "°C", "r", -40, 120, 0.5, None),
    },
    "meter-3ph": {
        **{
            f"voltage_l{n}": ("input", 2 * (n - 1), "f32", "ABCD", 1.0, "V", "r", 0, 300, 1, None)
            for n in (1, 2, 3)
        },
        **{
            f"current_l{n}": (
                "input",
                6 + 2 * (n - 1),
                "f32",
                "ABCD",
                1.0,
                "A",
                "r",
                None,
                None,
                0.05,
                None,
            )
            for n in (1, 2, 3)
        },
        "power": ("input", 12, "s32", "ABCD", 1.0, "W", "r", None, None, 5, None),
        "energy": ("input", 14, "u32", "ABCD", 1.0, "Wh", "r", None, None, 10, None),
    },
    "env-sensor": {
        "temperature": ("input", 0, "s16", "ABCD", 0.1, "°C", "r", -40, 85, 0.2, None),
        "humidity": ("input", 1, "u16", "ABCD", 0.1, "%RH", "r", 0, 100, 1, None),
    },
    "contactor": {
        "command": ("holding", 0, "bool", "ABCD", 1.0, "", "rw", None, None, 0, True),
        "closed": ("input", 0, "bool", "ABCD", 1.0, "", "r", None, None, 0, None),
        "operations": ("input", 1, "u16", "ABCD", 1.0, "", "r", None, None, 0, None),
    },
}


def test_builtin_profiles__are_the_simulated_models() -> None:
    """The shipped device models are the ones the simulator serves."""
    assert builtin_profiles() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_profile__matches_the_register_map(name: str) -> None:
    """Every point sits where the device manual puts it, with its type, scale and unit."""
    profile = load_profile(name)
    assert profile.name == name
    assert profile.source.name == f"{name}.toml"
    actual = {
        p.name: (
            p.table, p.address, p.type, p.word_order, p.scale, p.unit, p.access,
            p.minimum, p.maximum, p.deadband, p.default,
        )
        for p in profile.points
    }  # fmt: skip
    assert actual == EXPECTED[name]
    assert all(p.offset == 0 and 0 < p.heartbeat <= 3600 for p in profile.points)


def test_builtin_profile__power_heartbeats_faster_than_slow_values() -> None:
    """Load curves get a power value every minute; slow values every few minutes."""
    lamp = load_profile("lamp-ctl")
    assert lamp.point("power").heartbeat == 60
    assert lamp.point("level").heartbeat == 300
    assert {p.heartbeat for p in load_profile("meter-3ph").points if p.name != "energy"} == {60}


def test_load_profile__builtins_are_cached() -> None:
    """Thirty lamps of one model parse its file once."""
    assert load_profile("lamp-ctl") is load_profile("lamp-ctl")


def test_load_profile__path_relative_to_base_dir() -> None:
    """A site-specific profile next to the configuration is found by its relative path."""
    fixtures = Path(__file__).parent.parent / "fixtures" / "config"
    profile = load_profile("fan-ctl.toml", base_dir=fixtures)
    assert profile.name == "fan-ctl"
    assert profile.point("speed").heartbeat == 600
    assert profile.point("inlet_temp").word_order == "CDAB"
    assert profile.source == fixtures / "fan-ctl.toml"


def test_load_profile__unknown_builtin_suggests() -> None:
    """A typo in a profile name gets the right name suggested."""
    with pytest.raises(ProfileError) as info:
        load_profile("lamp-ctrl")
    assert info.value.errors == [
        'no built-in profile "lamp-ctrl"; did you mean "lamp-ctl"? '
        "(built-in: contactor, env-sensor, lamp-ctl, meter-3ph; or give a path to a .toml file)"
    ]


def test_profile_point__unknown_name_suggests() -> None:
    """Asking a profile for a misspelt point says which one was meant."""
    with pytest.raises(KeyError, match='did you mean "level"'):
        load_profile("lamp-ctl").point("levle")


# ------------------------------------------------------------------ profile validation

VALID_POINT = 'name = "x"\ntable = "holding"\naddress = 0\ntype = "u16"\n'


def write_profile(tmp_path: Path, points: list[str], model: str = 'name = "t"') -> Path:
    text = f"[model]\n{model}\n" + "".join(f"\n[[points]]\n{p}" for p in points)
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("points", "error"),
    [
        pytest.param(
            [VALID_POINT, VALID_POINT.replace("address = 0", "address = 1")],
            'points[1].name: duplicate point name "x" (also points[0])',
            id="duplicate-name",
        ),
        pytest.param(
            [
                'name = "a"\ntable = "input"\naddress = 2\ntype = "u32"\n',
                'name = "b"\ntable = "input"\naddress = 3\ntype = "u16"\n',
            ],
            'points[1].address: input registers 3 overlap "a" (points[0], 2..3)',
            id="overlap",
        ),
        pytest.param(
            [VALID_POINT + 'word_order = "CDAB"\n'],
            "points[0].word_order: applies only to 32-bit types (u32, s32, f32), not u16",
            id="word-order-on-16-bit",
        ),
        pytest.param(
            [VALID_POINT.replace("holding", "input") + 'access = "rw"\n'],
            'points[0].access: input registers are read-only (FC04); use table = "holding"',
            id="rw-on-input",
        ),
        pytest.param(
            [VALID_POINT.replace('"u16"', '"uint16"')],
            'points[0].type: expected one of "u16", "s16", "u32", "s32", "f32", "bool", '
            'got "uint16"; did you mean "u16"?',
            id="bad-type",
        ),
        pytest.param(
            [VALID_POINT + "adress = 3\n"],
            'points[0].adress: unknown key; did you mean "address"?',
            id="unknown-key",
        ),
        pytest.param(
            [VALID_POINT.replace("address = 0\n", "")],
            "points[0].address: missing required key; expected an integer 0..65535",
            id="missing-address",
        ),
        pytest.param(
            [VALID_POINT.replace("address = 0", "address = 65535").replace("u16", "u32")],
            "points[0].address: a u32 needs 2 register(s) within 0..65535, got 65535",
            id="address-past-the-end",
        ),
        pytest.param(
            [VALID_POINT + "default = 5\n"],
            'points[0].default: only writable points (access = "rw") have one',
            id="default-read-only",
        ),
        pytest.param(
            [VALID_POINT + 'access = "rw"\nmax = 100\ndefault = 101\n'],
            "points[0].default: 101 is outside min..max (None..100.0)",
            id="default-out-of-range",
        ),
        pytest.param(
            [VALID_POINT + "scale = 0\n"],
            "points[0].scale: expected a finite non-zero number, got 0.0",
            id="zero-scale",
        ),
        pytest.param(
            [VALID_POINT.replace("u16", "bool") + "scale = 0.1\n"],
            "points[0].scale: scale and offset do not apply to bool points",
            id="scaled-bool",
        ),
        pytest.param(
            [VALID_POINT + "min = 10\nmax = 5\n"],
            "points[0].max: must be >= min (10), got 5",
            id="min-above-max",
        ),
        pytest.param(
            [VALID_POINT.replace('"x"', '"Level"')],
            'points[0].name: expected a point name: 1 to 32 of a-z, 0-9, "_", got "Level"',
            id="bad-name",
        ),
        pytest.param(
            [VALID_POINT + "deadband = true\n"],
            "points[0].deadband: expected a number >= 0, got true",
            id="bool-is-not-a-number",
        ),
    ],
)
def test_load_profile__errors_name_the_key_path(
    tmp_path: Path, points: list[str], error: str
) -> None:
    """A broken profile says which file, which key and what is wrong."""
    path = write_profile(tmp_path, points)
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert info.value.errors == [f"{path}: {error}"]


def test_load_profile__reports_every_error_at_once(tmp_path: Path) -> None:
    """One run of the loader lists all the problems, not just the first."""
    path = write_profile(
        tmp_path,
        [VALID_POINT + "adress = 1\n", VALID_POINT.replace('"u16"', '"u8"')],
        model='name = "t"\nheartbeat = 0',
    )
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert [e.removeprefix(f"{path}: ").split(":")[0] for e in info.value.errors] == [
        "model.heartbeat",
        "points[0].adress",
        "points[1].type",
    ]
    assert str(info.value) == "\n".join(info.value.errors)


def test_load_profile__missing_file_and_syntax_error(tmp_path: Path) -> None:
    """An unreadable file or a TOML typo is reported with the file and the place."""
    with pytest.raises(ProfileError, match=r"nope\.toml: cannot read the file: No such file"):
        load_profile("nope.toml", base_dir=tmp_path)
    (tmp_path / "bad.toml").write_text("[model]\nname = \n", encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile("bad.toml", base_dir=tmp_path)
    assert info.value.errors == ["bad.toml: TOML syntax error: Invalid value (at line 2, column 8)"]


def test_load_profile__needs_points(tmp_path: Path) -> None:
    """A model without points is refused rather than polling nothing."""
    path = write_profile(tmp_path, [])
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert info.value.errors == [
        f"{path}: points: missing required key; expected an array of tables ([[points]])"
    ]


def test_point_spec__validates_when_built() -> None:
    """Code building a point by hand gets the same consistency checks as a profile file."""
    with pytest.raises(PointSpecError, match="word_order: applies only to 32-bit types"):
        RegisterSpec(name="x", table="input", address=0, type="u16", word_order="DCBA")
    with pytest.raises(PointSpecError, match="access: input registers are read-only"):
        RegisterSpec(name="x", table="input", address=0, type="u16", access="rw")
    with pytest.raises(ValueError, match=r"points\[1\].name: duplicate point name"):
        Profile(
            name="t",
            vendor="",
            description="",
            points=(at(0, name="a"), at(1, name="a")),
            source=Path("t.toml"),
        )

"""The [[rules]] and [[lighting]] parsers on arbitrary input: problems reported, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lighting import parse_lighting
from agent.rules import parse_rules
from drivers.profile import Problems, Section

KEYS = [
    "name", "when", "unless", "clear", "hold_off", "clear_after", "alarm", "write",
    "device_action", "point", "eq", "ne", "gt", "ge", "lt", "le", "quality", "uplink", "sun",
    "time", "code", "severity", "msg", "value", "priority", "device", "lamps", "contactor",
    "depression", "dusk_offset", "dawn_offset", "level", "dimming", "exceptions", "at",
    "from", "to", "weekdays", "photocell", "dark_below", "margin", "zzz",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["lamp-*/level", "a/b", "22:30", "2026-07-14", "civil", "error", "x", ""]),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=6),
    ),
    max_leaves=20,
)
TABLES = st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8), max_size=3)


def _sections(tables: list[dict[str, Any]], key: str) -> tuple[Problems, list[Section]]:
    problems = Problems("gw.toml")
    return problems, Section(problems, "", {key: tables}).tables(key)


@settings(max_examples=150, deadline=None)
@given(TABLES)
def test_parse_rules__arbitrary_tables_only_report_problems(tables: list[dict[str, Any]]) -> None:
    """Whatever a technician types under [[rules]], the agent says what is wrong instead of
    crashing with a traceback."""
    problems, sections = _sections(tables, "rules")
    rules = parse_rules(sections)
    assert len(rules) <= len(tables)
    if len(rules) < len(tables):
        assert problems.errors


@settings(max_examples=150, deadline=None)
@given(TABLES)
def test_parse_lighting__arbitrary_tables_only_report_problems(
    tables: list[dict[str, Any]],
) -> None:
    """Whatever is typed under [[lighting]], problems are reported, nothing crashes."""
    problems, sections = _sections(tables, "lighting")
    programs = parse_lighting(sections)
    assert len(programs) <= len(tables)
    if len(programs) < len(tables):
        assert problems.errors

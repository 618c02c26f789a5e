"""The NTCIP 1202 profile and the SNMP answer codec (pure): every hostile answer is refused
or marked with a precise reason, never crashes the poll, never yields a wrong value."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.profile import ProfileError
from drivers.snmp.codec import (
    Answer,
    Integer,
    Missing,
    Other,
    RemoteProtocolError,
    SnmpValue,
    VarBind,
    decode_answer,
    request_oids,
)
from drivers.snmp.profile import MAX_OBJECTS, load_snmp_profile, parse_oid

ASC = "1.3.6.1.4.1.1206.4.2.1"
PROFILE = load_snmp_profile("ntcip-1202-asc")
# The standard's objects and their OIDs (NTCIP 1202, asc = 1.3.6.1.4.1.1206.4.2.1), as
# published in the MIB; the profile must read exactly these.
NTCIP_1202 = {
    "unitControlStatus": f"{ASC}.3.5.0",
    "unitFlashStatus": f"{ASC}.3.6.0",
    "unitAlarmStatus2": f"{ASC}.3.7.0",
    "unitAlarmStatus1": f"{ASC}.3.8.0",
    "shortAlarmStatus": f"{ASC}.3.9.0",
    "phaseStatusGroupReds": f"{ASC}.1.4.1.2.1",
    "phaseStatusGroupYellows": f"{ASC}.1.4.1.3.1",
    "phaseStatusGroupGreens": f"{ASC}.1.4.1.4.1",
    "vehicleDetectorStatusGroupAlarms": f"{ASC}.2.4.1.3.1",
}


def normal(**overrides: SnmpValue) -> list[VarBind]:
    """A healthy answer: a junction running (flash notFlash(2), main street green)."""
    values = {
        "control_mode": Integer(2),
        "flash_status": Integer(2),
        "alarm_status2": Integer(0),
        "alarm_status1": Integer(0),
        "short_alarm": Integer(0),
        "reds": Integer(0x88),
        "yellows": Integer(0),
        "greens": Integer(0x22),
        "detector_alarms": Integer(0),
    }
    values.update(overrides)
    return [(obj.oid, values[obj.name]) for obj in PROFILE.objects]


def test_profile__reads_the_standard_objects_at_their_oids() -> None:
    """Each point names its NTCIP 1202 object and reads it at the standard's OID."""
    assert {o.object: o.dotted for o in PROFILE.objects} == NTCIP_1202
    assert request_oids(PROFILE) == tuple(o.oid for o in PROFILE.objects)


def test_decode__healthy_junction() -> None:
    """A running junction: values as read, and no fault flag set."""
    answer = decode_answer(PROFILE, normal())
    assert answer.problems == ()
    assert answer.values["greens"] == 0x22
    assert answer.values["flash_status"] == 2
    for flag in ("fault_flash", "scheduled_flash", "mmu_fault", "critical_alarm"):
        assert answer.values[flag] is False


@pytest.mark.parametrize(
    ("flash", "fault", "scheduled"),
    [(1, False, False), (2, False, False), (3, False, True), (4, False, False),
     (5, True, False), (6, True, False), (7, False, False), (8, False, False)],
)  # fmt: skip
def test_decode__flash_status_flags(flash: int, fault: bool, scheduled: bool) -> None:
    """faultMonitor(5) and mmu(6) are fault flash; automatic(3) is scheduled flash."""
    values = decode_answer(PROFILE, normal(flash_status=Integer(flash))).values
    assert (values["fault_flash"], values["scheduled_flash"]) == (fault, scheduled)


def test_decode__alarm_bits() -> None:
    """unitAlarmStatus1 bit 4 is the MMU fault; shortAlarmStatus bit 7 critical, 5 detector."""
    values = decode_answer(
        PROFILE, normal(alarm_status1=Integer(0x10), short_alarm=Integer(0xA0))
    ).values
    assert values["mmu_fault"] is True
    assert values["critical_alarm"] is True
    assert values["detector_fault"] is True


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (Integer(9), "flash_status (unitFlashStatus): 9 outside 1..8"),
        (Integer(2**200), "flash_status (unitFlashStatus): a 201-bit integer outside 1..8"),
        (Other("OCTET STRING", 3), "expected an INTEGER, got OCTET STRING (3 octets)"),
        (Integer(5, "Counter32"), "expected an INTEGER, got Counter32"),
        (Missing("noSuchObject"), "flash_status (unitFlashStatus): the controller answered "
         "noSuchObject"),
        (Missing("noSuchInstance"), "answered noSuchInstance"),
    ],
)  # fmt: skip
def test_decode__bad_value_makes_that_point_unusable(value: SnmpValue, reason: str) -> None:
    """A wrong type, a value out of range or a missing object: that point (and its flags)
    is None, with the reason; the other points are still read."""
    answer = decode_answer(PROFILE, normal(flash_status=value))
    assert answer.values["flash_status"] is None
    assert answer.values["fault_flash"] is None
    assert answer.values["scheduled_flash"] is None
    assert answer.values["greens"] == 0x22
    assert len(answer.problems) == 1
    assert reason in answer.problems[0]


def test_decode__optional_object_absent_is_no_point() -> None:
    """A controller without detector status groups just has no detector point."""
    answer = decode_answer(PROFILE, normal(detector_alarms=Missing("noSuchObject")))
    assert "detector_alarms" not in answer.values
    assert answer.problems == ()


@pytest.mark.parametrize(
    ("status", "index", "reason"),
    [
        (1, 0, "error-status tooBig(1) (error-index 0)"),
        (5, 2, "error-status genErr(5) at unitFlashStatus"),
        (99, 77, "error-status unknown(99) (error-index 77)"),
    ],
)
def test_decode__error_status_refuses_the_answer(status: int, index: int, reason: str) -> None:
    """An error-status refuses the whole answer, naming the status and the object."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_answer(PROFILE, normal(), error_status=status, error_index=index)
    assert info.value.reason == reason


def test_decode__wrong_count_or_order_is_refused() -> None:
    """Var-binds that are not the requested OIDs in order: nothing is taken from them."""
    binds = normal()
    with pytest.raises(RemoteProtocolError, match="has 8 var-binds for 9 requested"):
        decode_answer(PROFILE, binds[:-1])
    with pytest.raises(RemoteProtocolError, match=r"has 65\+ var-binds for 9"):
        decode_answer(PROFILE, binds * 100)
    with pytest.raises(RemoteProtocolError, match=r"var-bind 1 names .*not the requested"):
        decode_answer(PROFILE, [binds[1], binds[0], *binds[2:]])


oids = st.lists(st.integers(0, 2**32), min_size=0, max_size=200).map(tuple)
values = st.one_of(
    st.builds(Integer, st.integers(), st.sampled_from(["INTEGER", "Gauge32", "Counter64"])),
    st.builds(Missing, st.sampled_from(["noSuchObject", "noSuchInstance", "endOfMibView"])),
    st.builds(Other, st.text(max_size=20), st.none() | st.integers(0, 65535)),
)


@given(
    st.lists(st.tuples(oids, values), max_size=MAX_OBJECTS * 2),
    st.integers(0, 2**31),
    st.integers(-(2**31), 2**31),
)
def test_decode__arbitrary_answer_is_a_result_or_a_remote_error(
    binds: list[VarBind], status: int, index: int
) -> None:
    """Whatever comes back, the codec answers or raises its remote error, nothing else."""
    try:
        answer = decode_answer(PROFILE, binds, error_status=status, error_index=index)
    except RemoteProtocolError as exc:
        reason = exc.reason
    else:
        assert isinstance(answer, Answer)
        return
    assert reason


@given(st.lists(values, min_size=len(PROFILE.objects), max_size=len(PROFILE.objects)))
def test_decode__any_values_at_the_right_oids_give_checked_points(vals: list[SnmpValue]) -> None:
    """Values at the right OIDs: each point is within its range or None with a reason."""
    binds = [(o.oid, v) for o, v in zip(PROFILE.objects, vals, strict=True)]
    answer = decode_answer(PROFILE, binds)
    for obj in PROFILE.objects:
        value = answer.values.get(obj.name)
        assert value is None or (isinstance(value, int) and obj.minimum <= value <= obj.maximum)
    unusable = sum(
        1 for o in PROFILE.objects if o.name in answer.values and answer.values[o.name] is None
    )
    assert len(answer.problems) == unusable


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1.3.6", None),
        ("1.3.x", "expected a dotted OID"),
        ("3.1", "expected a dotted OID"),
        ("1.3.4294967296", "sub-identifiers are at most 4294967295"),
    ],
)
def test_parse_oid(text: str, error: str | None) -> None:
    if error is None:
        assert parse_oid(text) == (1, 3, 6)
    else:
        with pytest.raises(ValueError, match=error):
            parse_oid(text)


def test_profile__errors_name_the_path(tmp_path: Path) -> None:
    """A broken profile is refused with every problem and its key path."""
    path = tmp_path / "bad.toml"
    path.write_text(
        '[model]\nname = "x"\n'
        '[[objects]]\nname = "a"\nobject = "o"\noid = "1.3.x"\n'
        '[[objects]]\nname = "b"\nobject = "o"\noid = "1.3.6"\nmin = 5\nmax = 1\nsize = 3\n'
        '[[flags]]\nname = "f"\nfrom = "a"\nbit = 1\nin = [1]\n'
    )
    with pytest.raises(ProfileError) as info:
        load_snmp_profile(str(path))
    text = str(info.value)
    assert "objects[0].oid: expected a dotted OID" in text
    assert "objects[1].max: below min (5)" in text
    assert "objects[1].size: unknown key" in text
    assert "flags[0].bit: give exactly one of bit" in text


def test_profile__flag_from_an_unknown_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[model]\nname = "x"\n[[objects]]\nname = "a"\nobject = "o"\noid = "1.3.6"\n'
        '[[flags]]\nname = "f"\nfrom = "nope"\nbit = 1\n'
    )
    with pytest.raises(ProfileError, match="f: no object 'nope'"):
        load_snmp_profile(str(path))

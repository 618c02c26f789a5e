"""The simulated signal controller: its junction, its SNMP agent, read by our driver
(SNMPv2c, SNMPv3 authPriv SHA/AES) and cross-checked with net-snmp's own client."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pysnmp.proto.api import v2c

from drivers.device import DriverError
from drivers.snmp.credentials import Community, Usm
from drivers.snmp.device import REDISCOVER_AFTER, SnmpDevice
from drivers.snmp.profile import load_snmp_profile
from sim.devices.signal_controller import (
    CROSS,
    MAIN,
    UNIT_FLASH_STATUS,
    Junction,
    SignalController,
    V3User,
)

PROFILE = load_snmp_profile("ntcip-1202-asc")
USER = V3User(user="traffic", auth_key="auth-secret-1", priv_key="priv-secret-1")
# An answer on loopback takes milliseconds; short so the silent cases stay fast.
TIMEOUT = 0.5


@pytest.fixture
async def controller() -> AsyncIterator[SignalController]:
    sc = SignalController(name="signal-01", community="sim-community", v3_users=(USER,))
    sc.start()
    try:
        yield sc
    finally:
        sc.close()


def v2(sc: SignalController, community: str = "sim-community", retries: int = 0) -> SnmpDevice:
    return SnmpDevice(
        name=sc.name,
        host=sc.host,
        port=sc.port,
        credentials=Community(community=community),
        profile=PROFILE,
        timeout=TIMEOUT,
        retries=retries,
    )


def v3(sc: SignalController, auth_key: str = USER.auth_key) -> SnmpDevice:
    return SnmpDevice(
        name=sc.name,
        host=sc.host,
        port=sc.port,
        credentials=Usm(user=USER.user, auth_key=auth_key, priv_key=USER.priv_key),
        profile=PROFILE,
        timeout=TIMEOUT,
        retries=0,
    )


@pytest.fixture
async def device(controller: SignalController) -> AsyncIterator[SnmpDevice]:
    dev = v2(controller)
    try:
        yield dev
    finally:
        await dev.close()


# ------------------------------------------------------------------ the junction model


@given(st.floats(0, 1e6, allow_nan=False))
def test_junction__never_main_and_cross_green_together(t: float) -> None:
    """Whenever you look, conflicting phases are never both green, and every phase in use
    shows exactly one colour."""
    reds, yellows, greens = Junction(t=t).lights()
    assert not (greens & MAIN and greens & CROSS)
    assert reds | yellows | greens == MAIN | CROSS
    assert not reds & yellows
    assert not reds & greens
    assert not yellows & greens


def test_junction__cycles_its_phases() -> None:
    """Over one cycle the main street then the cross street get green, yellow, red."""
    j = Junction()
    seen = []
    for _ in range(int(j.cycle_s)):
        seen.append(j.lights()[2])
        j.tick(1.0)
    assert MAIN in seen
    assert CROSS in seen
    assert seen[0] == MAIN


@pytest.mark.parametrize(
    ("fault", "mmu", "scheduled", "flash"),
    [(False, False, False, 2), (True, False, False, 5), (False, True, False, 6),
     (True, True, False, 6), (False, False, True, 3)],
)  # fmt: skip
def test_junction__flash_status(fault: bool, mmu: bool, scheduled: bool, flash: int) -> None:
    """Fault flash, MMU (which wins), scheduled flash: unitFlashStatus and all-red flash."""
    j = Junction(fault_flash=fault, mmu_fault=mmu, scheduled_flash=scheduled)
    assert j.flash_status() == flash
    if flash != 2:
        assert j.lights() == (MAIN | CROSS, 0, 0)


# ------------------------------------------------------------------ our driver against it


async def test_driver__v2c_reads_the_running_junction(
    controller: SignalController, device: SnmpDevice
) -> None:
    """Every point of the profile reads, and matches the junction's state."""
    values = await device.read()
    assert set(values) == set(PROFILE.point_names)
    reds, yellows, greens = controller.junction.lights()
    assert (values["reds"], values["yellows"], values["greens"]) == (reds, yellows, greens)
    assert values["flash_status"] == 2
    assert values["fault_flash"] is False
    assert device.problems == ()


async def test_driver__v3_auth_priv_sha_aes(controller: SignalController) -> None:
    """SNMPv3 USM authPriv (HMAC-SHA-96, AES-128) reads the same junction, faults included."""
    controller.set_fault_flash(True)
    controller.set_detector_failed(3, True)
    dev = v3(controller)
    try:
        values = await dev.read()
    finally:
        await dev.close()
    assert values["flash_status"] == 5
    assert values["fault_flash"] is True
    assert values["critical_alarm"] is True
    assert values["detector_alarms"] == 0b100
    assert values["detector_fault"] is True


async def test_driver__v3_wrong_key_is_a_precise_error(controller: SignalController) -> None:
    """A wrong USM key is refused by the agent and said so, not taken for silence; the
    key itself is never in the message nor in the device's repr."""
    dev = v3(controller, auth_key="not-the-key-1")
    try:
        with pytest.raises(DriverError) as info:
            await dev.read()
    finally:
        await dev.close()
    assert info.value.timeout is False
    assert "digest" in info.value.reason.lower()
    assert "not-the-key-1" not in info.value.reason
    assert "not-the-key-1" not in repr(dev)
    assert "not-the-key-1" not in repr(Usm(user="u", auth_key="not-the-key-1", priv_key="x" * 8))


async def test_driver__silent_controller_is_a_timeout_then_answers_again(
    controller: SignalController, device: SnmpDevice
) -> None:
    """A controller that stops answering gives DriverError(timeout=True) within the bound
    (timeout x tries); once back, the next read works."""
    controller.stop()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DriverError) as info:
        await device.read()
    assert info.value.timeout is True
    assert loop.time() - start < TIMEOUT + 1.0 + 1.0  # bound + slack; never unbounded
    controller.start()
    assert (await device.read())["flash_status"] == 2


async def test_driver__v3_controller_swapped_for_a_spare_reads_again(
    controller: SignalController,
) -> None:
    """A controller replaced by a spare (another SNMPv3 engine ID at the same address) is
    read again after a few failed polls, not after pysnmp's five-minute discovery cache."""
    dev = v3(controller)
    try:
        assert (await dev.read())["flash_status"] == 2
        controller.replace_unit()
        failures = 0
        for _ in range(REDISCOVER_AFTER + 1):
            try:
                values = await dev.read()
            except DriverError:
                failures += 1
            else:
                break
        assert 0 < failures <= REDISCOVER_AFTER
        assert values["flash_status"] == 2
    finally:
        await dev.close()


async def test_driver__wrong_community_looks_like_silence(controller: SignalController) -> None:
    """SNMPv2c agents drop a wrong community without answer (RFC 3584): a timeout."""
    dev = v2(controller, community="guess")
    try:
        with pytest.raises(DriverError) as info:
            await dev.read()
    finally:
        await dev.close()
    assert info.value.timeout is True


async def test_driver__wrong_type_and_range_are_unusable_points(
    controller: SignalController, device: SnmpDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """A controller answering an OCTET STRING or a value outside the SYNTAX range for an
    object: that point is None with the reason (logged once), the others are read."""
    controller.overrides[UNIT_FLASH_STATUS] = v2c.OctetString(b"flash!")
    values = await device.read()
    assert values["flash_status"] is None
    assert values["fault_flash"] is None
    assert values["greens"] is not None
    assert device.problems == (
        "flash_status (unitFlashStatus): expected an INTEGER, got OCTET STRING (6 octets)",
    )
    await device.read()
    assert sum("OCTET STRING" in r.message for r in caplog.records) == 1
    controller.overrides[UNIT_FLASH_STATUS] = v2c.Integer(42)
    await device.read()
    assert device.problems == ("flash_status (unitFlashStatus): 42 outside 1..8",)
    controller.overrides.clear()
    assert (await device.read())["flash_status"] == 2
    assert device.problems == ()


async def test_driver__absent_objects(controller: SignalController, device: SnmpDevice) -> None:
    """No detector status groups (optional): no such point. No unitFlashStatus (required):
    the point reads None and says noSuchObject."""
    controller.overrides[PROFILE.objects[-1].oid] = None
    values = await device.read()
    assert "detector_alarms" not in values
    assert device.problems == ()
    controller.overrides[UNIT_FLASH_STATUS] = None
    values = await device.read()
    assert values["flash_status"] is None
    assert device.problems == (
        "flash_status (unitFlashStatus): the controller answered noSuchObject",
    )


async def test_driver__is_read_only(device: SnmpDevice) -> None:
    with pytest.raises(DriverError, match="read-only"):
        await device.write("flash_status", 2)


# ------------------------------------------------------------------ net-snmp's view


def _netsnmp(tmp_path: Path) -> dict[str, str]:
    if shutil.which("snmpget") is None or shutil.which("snmpwalk") is None:
        pytest.skip("net-snmp's snmpget/snmpwalk missing: apt-get install snmp (make test does)")
    # Numeric OIDs, no MIB loading, and net-snmp's persistent files kept in the test's dir.
    return {**os.environ, "MIBS": "", "SNMP_PERSISTENT_DIR": str(tmp_path)}


async def _run(env: dict[str, str], *argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _parse(text: str) -> dict[str, int]:
    """``.1.3.6... = INTEGER: 5`` lines → {"1.3.6...": 5}."""
    result = {}
    for line in text.splitlines():
        oid, _, value = line.partition(" = ")
        kind, _, number = value.partition(": ")
        assert kind == "INTEGER", line
        result[oid.lstrip(".")] = int(number)
    return result


@pytest.mark.parametrize("version", ["v2c", "v3"])
async def test_netsnmp__snmpget_agrees_with_the_driver(
    controller: SignalController, tmp_path: Path, version: str
) -> None:
    """net-snmp's snmpget reads every profile object with the values our driver reads
    (faults injected, so the interesting bits are set), over v2c and over v3 authPriv."""
    env = _netsnmp(tmp_path)
    controller.set_mmu_fault(True)
    controller.set_detector_failed(8, True)
    auth = (
        ["-v2c", "-c", "sim-community"]
        if version == "v2c"
        else ["-v3", "-l", "authPriv", "-u", USER.user, "-a", "SHA", "-A", USER.auth_key,
              "-x", "AES", "-X", USER.priv_key]
    )  # fmt: skip
    target = f"{controller.host}:{controller.port}"
    oids = [o.dotted for o in PROFILE.objects]
    theirs = _parse(await _run(env, "snmpget", *auth, "-On", "-t", "5", target, *oids))
    dev = v2(controller)
    try:
        ours = await dev.read()
    finally:
        await dev.close()
    assert {o.dotted: ours[o.name] for o in PROFILE.objects} == theirs
    assert theirs["1.3.6.1.4.1.1206.4.2.1.3.6.0"] == 6  # unitFlashStatus mmu(6)


async def test_netsnmp__snmpwalk_lists_the_asc_subtree_in_order(
    controller: SignalController, tmp_path: Path
) -> None:
    """GETNEXT works as net-snmp expects: a walk of asc lists every object, in OID order,
    the profile's objects among them, and ends cleanly."""
    env = _netsnmp(tmp_path)
    target = f"{controller.host}:{controller.port}"
    text = await _run(
        env, "snmpwalk", "-v2c", "-c", "sim-community", "-On", target, "1.3.6.1.4.1.1206.4.2.1"
    )
    # The agent holds nothing past asc: the walk's last answer is endOfMibView.
    *lines, last = text.splitlines()
    assert "No more variables left in this MIB View" in last
    walked = list(_parse("\n".join(lines)))
    keys = [tuple(int(p) for p in oid.split(".")) for oid in walked]
    assert keys == sorted(keys)
    assert {o.dotted for o in PROFILE.objects} <= set(walked)

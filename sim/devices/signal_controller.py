"""A traffic signal controller on the cabinet LAN: a junction model and a real SNMP agent.

The junction is a fixed-time, two-ring controller with four vehicle phases: the main
street (phases 2 and 6) and the cross street (4 and 8) take turns, each green followed
by yellow and an all-red clearance. Faults a control room must see can be injected
(the live view's keys, or these methods from tests): fault flash (the controller's own
fault monitor), an MMU/conflict-monitor fault, a scheduled (time-base) flash, a failed
loop detector, and silence (the agent stops answering).

The agent is pysnmp's command responder (GET, GETNEXT, GETBULK; SNMPv2c and SNMPv3 USM
authPriv) over a table of NTCIP 1202 objects built here from the standard, not from
``drivers/``: the simulator is an independent peer of the gateway's driver (STYLE.md),
and its answers are cross-checked with net-snmp's tools in the tests.
"""

from __future__ import annotations

import bisect
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto.api import v2c
from pysnmp.smi import instrum

Oid = tuple[int, ...]

# NTCIP 1202 asc node: iso(1).org(3).dod(6).internet(1).private(4).enterprises(1).
# nema(1206).transportation(4).devices(2).asc(1)
ASC: Final[Oid] = (1, 3, 6, 1, 4, 1, 1206, 4, 2, 1)
# asc.unit(3) scalars (".0" instances) and the group-1 rows of the status tables.
UNIT_CONTROL_STATUS: Final = (*ASC, 3, 5, 0)
UNIT_FLASH_STATUS: Final = (*ASC, 3, 6, 0)
UNIT_ALARM_STATUS2: Final = (*ASC, 3, 7, 0)
UNIT_ALARM_STATUS1: Final = (*ASC, 3, 8, 0)
SHORT_ALARM_STATUS: Final = (*ASC, 3, 9, 0)
MAX_PHASES: Final = (*ASC, 1, 1, 0)
MAX_PHASE_GROUPS: Final = (*ASC, 1, 3, 0)
PHASE_STATUS_GROUP_NUMBER: Final = (*ASC, 1, 4, 1, 1, 1)
PHASE_STATUS_GROUP_REDS: Final = (*ASC, 1, 4, 1, 2, 1)
PHASE_STATUS_GROUP_YELLOWS: Final = (*ASC, 1, 4, 1, 3, 1)
PHASE_STATUS_GROUP_GREENS: Final = (*ASC, 1, 4, 1, 4, 1)
MAX_VEHICLE_DETECTORS: Final = (*ASC, 2, 1, 0)
MAX_DETECTOR_STATUS_GROUPS: Final = (*ASC, 2, 3, 0)
DETECTOR_STATUS_GROUP_NUMBER: Final = (*ASC, 2, 4, 1, 1, 1)
DETECTOR_STATUS_GROUP_ACTIVE: Final = (*ASC, 2, 4, 1, 2, 1)
DETECTOR_STATUS_GROUP_ALARMS: Final = (*ASC, 2, 4, 1, 3, 1)

# unitFlashStatus and unitControlStatus enumerations (NTCIP 1202).
FLASH_NOT_FLASH: Final = 2
FLASH_AUTOMATIC: Final = 3
FLASH_FAULT_MONITOR: Final = 5
FLASH_MMU: Final = 6
CONTROL_SYSTEM: Final = 2
CONTROL_TIMEBASE: Final = 6
# unitAlarmStatus1 bit 4 MMU Flash; shortAlarmStatus bits 7 critical, 5 detector fault,
# 1 T&F flash.
ALARM1_MMU_FLASH: Final = 1 << 4
SHORT_CRITICAL: Final = 1 << 7
SHORT_DETECTOR: Final = 1 << 5
SHORT_TF_FLASH: Final = 1 << 1


def _bit(phase: int) -> int:
    return 1 << (phase - 1)


MAIN: Final = _bit(2) | _bit(6)
CROSS: Final = _bit(4) | _bit(8)
# The fixed-time plan: (phases green, seconds green); each green is followed by yellow
# and an all-red clearance.
PLAN: Final = ((MAIN, 20.0), (CROSS, 15.0))
YELLOW_S: Final = 3.0
ALL_RED_S: Final = 2.0
DETECTORS: Final = 8


@dataclass
class Junction:
    """The controller's state, advanced by :meth:`tick`; the SNMP table is :meth:`objects`."""

    t: float = 0.0
    fault_flash: bool = False
    mmu_fault: bool = False
    scheduled_flash: bool = False
    failed_detectors: int = 0  # bit n-1: detector n failed

    @property
    def cycle_s(self) -> float:
        return sum(green + YELLOW_S + ALL_RED_S for _, green in PLAN)

    def tick(self, dt: float) -> None:
        self.t += dt

    def flash_status(self) -> int:
        # The MMU takes precedence: it cuts the controller's outputs whatever it says.
        if self.mmu_fault:
            return FLASH_MMU
        if self.fault_flash:
            return FLASH_FAULT_MONITOR
        if self.scheduled_flash:
            return FLASH_AUTOMATIC
        return FLASH_NOT_FLASH

    def lights(self) -> tuple[int, int, int]:
        """(reds, yellows, greens) of phases 1..8 (bit n-1 = phase n)."""
        if self.flash_status() != FLASH_NOT_FLASH:
            return MAIN | CROSS, 0, 0  # all-red flash
        at = self.t % self.cycle_s
        for phases, green in PLAN:
            others = (MAIN | CROSS) & ~phases
            if at < green:
                return others, 0, phases
            at -= green
            if at < YELLOW_S:
                return others, phases, 0
            at -= YELLOW_S
            if at < ALL_RED_S:
                return MAIN | CROSS, 0, 0
            at -= ALL_RED_S
        return MAIN | CROSS, 0, 0  # pragma: no cover (float rounding at the cycle's end)

    def objects(self) -> dict[Oid, int]:
        reds, yellows, greens = self.lights()
        flash = self.flash_status()
        short = 0
        if flash in (FLASH_FAULT_MONITOR, FLASH_MMU):
            short |= SHORT_CRITICAL | SHORT_TF_FLASH
        if self.failed_detectors:
            short |= SHORT_DETECTOR
        return {
            MAX_PHASES: 8,
            MAX_PHASE_GROUPS: 1,
            PHASE_STATUS_GROUP_NUMBER: 1,
            PHASE_STATUS_GROUP_REDS: reds,
            PHASE_STATUS_GROUP_YELLOWS: yellows,
            PHASE_STATUS_GROUP_GREENS: greens,
            MAX_VEHICLE_DETECTORS: DETECTORS,
            MAX_DETECTOR_STATUS_GROUPS: 1,
            DETECTOR_STATUS_GROUP_NUMBER: 1,
            DETECTOR_STATUS_GROUP_ACTIVE: 0,
            DETECTOR_STATUS_GROUP_ALARMS: self.failed_detectors,
            UNIT_CONTROL_STATUS: CONTROL_TIMEBASE if self.scheduled_flash else CONTROL_SYSTEM,
            UNIT_FLASH_STATUS: flash,
            UNIT_ALARM_STATUS2: 0,
            UNIT_ALARM_STATUS1: ALARM1_MMU_FLASH if self.mmu_fault else 0,
            SHORT_ALARM_STATUS: short,
        }

    def snapshot(self) -> dict[str, int | bool]:
        reds, yellows, greens = self.lights()
        return {
            "flash_status": self.flash_status(),
            "greens": greens,
            "yellows": yellows,
            "reds": reds,
            "failed_detectors": self.failed_detectors,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class V3User:
    """An SNMPv3 USM user the agent accepts, authPriv with HMAC-SHA-96 and AES-128."""

    user: str
    auth_key: str
    priv_key: str


# What a test can make the agent answer for one OID instead of the junction's value:
# a pysnmp value (v2c.OctetString(b"x"), v2c.Integer(999)...), or None for noSuchObject.
Override = Any


class _JunctionMib(instrum.AbstractMibInstrumController):  # type: ignore[misc]
    """GET/GETNEXT over a snapshot of the junction's objects (pysnmp's read callbacks)."""

    def __init__(self, objects: Callable[[], Mapping[Oid, int]], overrides: dict[Oid, Override]):
        self._objects = objects
        self._overrides = overrides

    def _table(self) -> dict[Oid, Any]:
        table: dict[Oid, Any] = {oid: v2c.Integer(v) for oid, v in self._objects().items()}
        for oid, value in self._overrides.items():
            if value is None:
                table.pop(oid, None)
            else:
                table[oid] = value
        return table

    def read_variables(self, *var_binds: Any, **_context: Any) -> list[tuple[Any, Any]]:
        table = self._table()
        answer = []
        for name, _ in var_binds:
            oid = tuple(name)
            if oid in table:
                answer.append((name, table[oid]))
            elif any(key[:-1] == oid[:-1] for key in table):
                answer.append((name, v2c.NoSuchInstance()))  # the object exists, not this row
            else:
                answer.append((name, v2c.NoSuchObject()))
        return answer

    def read_next_variables(self, *var_binds: Any, **_context: Any) -> list[tuple[Any, Any]]:
        table = self._table()
        keys = sorted(table)
        answer = []
        for name, _ in var_binds:
            i = bisect.bisect_right(keys, tuple(name))
            if i < len(keys):
                answer.append((v2c.ObjectIdentifier(keys[i]), table[keys[i]]))
            else:
                answer.append((name, v2c.EndOfMibView()))
        return answer


class SignalController:
    """The junction behind a real SNMP agent on ``host:port`` (UDP), started by :meth:`start`."""

    def __init__(
        self,
        *,
        name: str = "signal",
        host: str = "127.0.0.1",
        port: int = 0,
        community: str = "public",
        v3_users: tuple[V3User, ...] = (),
        junction: Junction | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.junction = junction or Junction()
        self.community = community
        self.v3_users = v3_users
        self.overrides: dict[Oid, Override] = {}
        # The port is chosen now, so a configuration can name it before the agent starts,
        # and kept across restarts; the socket exists only while the agent answers (a
        # cabinet built only for its device table holds no socket).
        if port == 0:
            probe = self._bind(0)
            port = probe.getsockname()[1]
            probe.close()
        self.port: int = port
        # RFC 3411 §5 SnmpEngineID: enterprise format (bit 7 set, NEMA's 1206), then a
        # text tail (format 4): stable for this controller's life.
        self._unit = 1  # which physical unit: a spare swapped in has another engine ID
        self._boots = 0
        self._sock: socket.socket | None = None
        self._engine: engine.SnmpEngine | None = None

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.setblocking(False)
        return sock

    @property
    def running(self) -> bool:
        return self._engine is not None

    def start(self) -> None:
        """Answer SNMP requests (again); needs a running event loop."""
        if self._engine is not None:
            return
        self._sock = self._bind(self.port)
        snmp = self._new_engine()
        config.add_transport(
            snmp, udp.DOMAIN_NAME, udp.UdpTransport().open_server_mode(sock=self._sock)
        )
        config.add_v1_system(snmp, "sim-area", self.community)
        config.add_vacm_user(snmp, 2, "sim-area", "noAuthNoPriv", ASC, ASC)
        for user in self.v3_users:
            config.add_v3_user(
                snmp,
                user.user,
                config.USM_AUTH_HMAC96_SHA,
                user.auth_key,
                config.USM_PRIV_CFB128_AES,
                user.priv_key,
            )
            config.add_vacm_user(snmp, 3, user.user, "authPriv", ASC, ASC)
        snmp_context = context.SnmpContext(snmp)
        snmp_context.unregister_context_name(v2c.OctetString(""))
        snmp_context.register_context_name(
            v2c.OctetString(""), _JunctionMib(self.junction.objects, self.overrides)
        )
        for responder in (
            cmdrsp.GetCommandResponder,
            cmdrsp.NextCommandResponder,
            cmdrsp.BulkCommandResponder,
        ):
            responder(snmp, snmp_context)
        self._engine = snmp

    @property
    def _engine_id(self) -> bytes:
        # 5 octets of format, then at most 27 of text (RFC 3411: 5..32 octets in all).
        return b"\x80\x00\x04\xb6\x04" + f"{self.port}/{self._unit}/{self.name}".encode()[:27]

    def _new_engine(self) -> engine.SnmpEngine:
        """An engine with this controller's snmpEngineID and its next snmpEngineBoots.

        A real controller keeps its engine ID across restarts and counts its boots (RFC
        3414 §2.2), which is what lets an SNMPv3 manager carry on after a reboot. (Set
        through the engine's MIB rather than its constructor, which would also persist
        the boots in a file under /tmp.)
        """
        snmp = engine.SnmpEngine()
        builder = snmp.get_mib_builder()
        engine_id, boots = builder.import_symbols(
            "__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots"
        )
        engine_id.syntax = engine_id.syntax.clone(self._engine_id)
        snmp.snmpEngineID = engine_id.syntax
        self._boots += 1
        boots.syntax = boots.syntax.clone(self._boots)
        return snmp

    def stop(self) -> None:
        """Stop answering (a controller switched off or cut from the LAN)."""
        if self._engine is None:
            return
        self._engine.close_dispatcher()  # closes the transport, and with it the socket
        self._engine = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self.stop()

    # -- fault injection (live view keys, tests) --

    def replace_unit(self) -> None:
        """Swap the controller for a spare: same address and users, another snmpEngineID."""
        self._unit += 1
        self._boots = 0
        if self.running:
            self.stop()
            self.start()

    def set_fault_flash(self, on: bool) -> None:
        self.junction.fault_flash = on

    def set_mmu_fault(self, on: bool) -> None:
        self.junction.mmu_fault = on

    def set_scheduled_flash(self, on: bool) -> None:
        self.junction.scheduled_flash = on

    def set_detector_failed(self, detector: int, failed: bool) -> None:
        if not 1 <= detector <= DETECTORS:
            raise ValueError(f"detector 1..{DETECTORS}, got {detector}")
        mask = 1 << (detector - 1)
        j = self.junction
        j.failed_detectors = j.failed_detectors | mask if failed else j.failed_detectors & ~mask

    def tick(self, dt: float) -> None:
        self.junction.tick(dt)

    def snapshot(self) -> dict[str, int | bool]:
        return {**self.junction.snapshot(), "answering": self.running}

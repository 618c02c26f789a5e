"""A signal controller (or any SNMP device) behind the ``Device`` seam, over pysnmp asyncio.

One poll is one GET of every object of the profile (a single request PDU), with a
bounded timeout and retry count; the answer goes through :mod:`drivers.snmp.codec`
before anything is believed. Failures become :class:`~drivers.device.DriverError` with
the reason (``timeout=True`` when the controller did not answer at all).

Credentials (SNMPv2c community, SNMPv3 USM keys) live in frozen objects whose ``repr``
hides them, so no log line or traceback carries them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Final

from pyasn1.type import univ
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
)
from pysnmp.proto import rfc1905
from pysnmp.proto.secmod.rfc3414.auth import hmacsha
from pysnmp.proto.secmod.rfc3414.priv import nopriv
from pysnmp.proto.secmod.rfc3826.priv import aes
from pysnmp.proto.secmod.rfc7860.auth import hmacsha2

from drivers.device import DriverError, Reading, Report
from drivers.health import DeviceHealth, LineHealth, Outcome
from drivers.snmp.codec import (
    Integer,
    Missing,
    Other,
    RemoteProtocolError,
    SnmpValue,
    VarBind,
    decode_answer,
)
from drivers.snmp.credentials import MAX_RETRIES, MAX_TIMEOUT, Community, Credentials, Usm
from drivers.snmp.profile import SnmpProfile

log = logging.getLogger(__name__)

# Slack on top of pysnmp's own timeout x tries for the hard asyncio bound around a GET.
_SLACK: Final = 1.0
# SNMPv3 polls failed in a row after which the device forgets what it discovered of the
# controller (engine ID, boots, time): pysnmp keeps that 300 s, so a controller swapped
# for a spare (another snmpEngineID at the same address) would stay unreadable for five
# minutes. The device then uses an engine of its own (~0.8 MB), discovered afresh.
REDISCOVER_AFTER: Final = 3

_AUTH_PROTOCOL: Final = {
    "sha": hmacsha.HmacSha.SERVICE_ID,
    "sha256": hmacsha2.HmacSha2.SHA256_SERVICE_ID,
    "sha512": hmacsha2.HmacSha2.SHA512_SERVICE_ID,
}
_PRIV_PROTOCOL: Final = {"aes": aes.Aes.SERVICE_ID, "none": nopriv.NoPriv.SERVICE_ID}


def _auth_data(credentials: Credentials) -> CommunityData | UsmUserData:
    match credentials:
        case Community(community=community):
            # SNMPv2c (mpModel 1) sends the community in clear: the profile of LAN-only
            # controllers that lack v3; Usm is the secure choice.
            return CommunityData(community, mpModel=1)  # noqa: S508
        case Usm() as usm:
            return UsmUserData(
                usm.user,
                authKey=usm.auth_key,
                privKey=usm.priv_key if usm.priv != "none" else None,
                authProtocol=_AUTH_PROTOCOL[usm.auth],
                privProtocol=_PRIV_PROTOCOL[usm.priv],
            )


def to_value(value: object) -> SnmpValue:
    """pysnmp's value → the codec's neutral type (never raises)."""
    if isinstance(value, rfc1905.NoSuchObject):
        return Missing("noSuchObject")
    if isinstance(value, rfc1905.NoSuchInstance):
        return Missing("noSuchInstance")
    if isinstance(value, rfc1905.EndOfMibView):
        return Missing("endOfMibView")
    name = type(value).__name__
    if isinstance(value, univ.Integer):
        return Integer(int(value), "INTEGER" if name in ("Integer", "Integer32") else name)
    if isinstance(value, univ.OctetString):
        return Other("OCTET STRING", len(value))
    return Other(name)


def new_engine() -> SnmpEngine:
    """A pysnmp engine (SNMPv3 engine id, USM state); one serves every device."""
    return SnmpEngine()


class SnmpDevice:
    """One SNMP device read with one GET per poll; read-only (NTCIP control is out of scope)."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        credentials: Credentials,
        profile: SnmpProfile,
        timeout: float,
        retries: int,
        engine: SnmpEngine | None = None,
        line: LineHealth | None = None,
    ) -> None:
        if not 0 < timeout <= MAX_TIMEOUT or not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"timeout 0..{MAX_TIMEOUT} s, retries 0..{MAX_RETRIES}")
        self.name = name
        self.host = host
        self.port = port
        self.profile = profile
        self.timeout = timeout
        self.retries = retries
        self._auth = _auth_data(credentials)
        self._engine = engine or new_engine()
        self._owns_engine = engine is None
        self._target: UdpTransportTarget | None = None
        self._request = tuple(ObjectType(ObjectIdentity(obj.dotted)) for obj in profile.objects)
        # Problems of the last answer, logged once per change (STYLE.md: log-once).
        self.problems: tuple[str, ...] = ()
        self._v3 = isinstance(credentials, Usm)
        self._failed = 0  # polls failed in a row
        # Bus health (drivers/health.py), as for Modbus: each GET is a transaction; the
        # shared "snmp" bus counts the time spent in exchanges.
        self.health = DeviceHealth()
        self._line = line or LineHealth()

    def __repr__(self) -> str:
        return f"SnmpDevice({self.name!r}, {self.host}:{self.port}, {self.profile.name})"

    async def read(self) -> Mapping[str, Reading]:
        """GET every object of the profile once; :class:`DriverError` with the reason."""
        started = time.monotonic()
        try:
            values = await self._read()
        except DriverError as exc:
            self._line.add_busy(time.monotonic() - started)
            self.health.record(Outcome.TIMEOUT if exc.timeout else Outcome.OTHER)
            self._failed += 1
            if self._v3 and self._failed % REDISCOVER_AFTER == 0:
                self._rediscover()
            raise
        elapsed = time.monotonic() - started
        self._line.add_busy(elapsed)
        self.health.record(Outcome.ANSWERED, elapsed)
        self._failed = 0
        return values

    def _rediscover(self) -> None:
        if self._owns_engine:
            self._engine.close_dispatcher()
        self._engine = new_engine()
        self._owns_engine = True
        log.info("%s: SNMPv3 engine discovery starts afresh", self.name)

    async def _read(self) -> Mapping[str, Reading]:
        if self._target is None:
            try:
                self._target = await UdpTransportTarget.create(
                    (self.host, self.port), timeout=self.timeout, retries=self.retries
                )
            except Exception as exc:  # pysnmp wraps resolver/socket errors in its own
                raise DriverError(f"{self.host}:{self.port}: {exc}") from exc
        bound = self.timeout * (self.retries + 1) + _SLACK
        try:
            async with asyncio.timeout(bound):
                indication, status, index, answer = await get_cmd(
                    self._engine,
                    self._auth,
                    self._target,
                    ContextData(),
                    *self._request,
                    lookupMib=False,
                )
        except TimeoutError as exc:
            raise DriverError(f"no answer within {bound:.1f} s", timeout=True) from exc
        if indication:
            text = str(indication)
            raise DriverError(f"SNMP: {text}", timeout="timeout" in text.lower())
        varbinds: list[VarBind] = [
            (tuple(vb[0].get_oid() if hasattr(vb[0], "get_oid") else vb[0]), to_value(vb[1]))
            for vb in answer
        ]
        try:
            decoded = decode_answer(
                self.profile, varbinds, error_status=int(status), error_index=int(index)
            )
        except RemoteProtocolError as exc:
            raise DriverError(exc.reason) from exc
        if decoded.problems != self.problems:
            if decoded.problems:
                log.warning("%s: %s", self.name, "; ".join(decoded.problems))
            elif self.problems:
                log.info("%s: every object reads again", self.name)
            self.problems = decoded.problems
        return decoded.values

    async def write(self, point: str, value: Reading) -> Reading:
        raise DriverError(f"{self.name}/{point}: read-only (NTCIP control is not supported)")

    async def action(self, action: str, args: Mapping[str, Reading]) -> object:
        raise DriverError(f"{self.name}: no action {action!r}")

    async def watch(self, report: Report) -> None:
        """Polled only (no traps): returns at once."""
        return

    async def close(self) -> None:
        if self._owns_engine:
            self._engine.close_dispatcher()

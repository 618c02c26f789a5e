"""The ``ntcip`` driver: signal controllers (NTCIP 1202) on the cabinet LAN, over SNMP.

A ``[[devices]]`` table with ``driver = "ntcip"`` names the controller's ``host`` and
``port`` and its credentials: ``community`` (SNMPv2c) or ``v3`` (SNMPv3 USM), and
optionally the request ``timeout`` and ``retries``. Every SNMP device shares one
pysnmp engine (the ``snmp`` bus). pysnmp itself is imported only when such a device is
built, so a gateway without signal controllers does not carry it in memory.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from drivers.device import Device
from drivers.driver import BuildContext, Driver, ParseContext
from drivers.health import LineHealth
from drivers.point import Model
from drivers.profile import Section
from drivers.snmp.credentials import (
    AUTHS,
    MAX_RETRIES,
    MAX_TIMEOUT,
    MIN_PASSPHRASE,
    PRIVS,
    Community,
    Credentials,
    Usm,
)
from drivers.snmp.profile import SnmpProfile, load_snmp_profile

NAME: Final = "ntcip"
BUS: Final = "snmp"
# SNMP agents listen on UDP 161 (RFC 3417 §3).
DEFAULT_PORT: Final = 161
# A controller on the cabinet LAN answers in milliseconds (bench/snmp_poll.py: p99 < 5 ms
# on loopback); half a second and one retry tell a dead one within ~1 s per poll, so
# polling.miss_limit polls make it comm_fail (and raise signal.offline) within seconds.
DEFAULT_TIMEOUT: Final = 0.5
DEFAULT_RETRIES: Final = 1
MIN_TIMEOUT: Final = 0.05
# A host name (RFC 1123) or an IPv4/IPv6 literal; resolved by pysnmp when first polled.
_HOST: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[?[0-9A-Fa-f:.]{2,45}\]?")
_USER: Final = re.compile(r"[\x21-\x7e]{1,32}")  # snmpAdminString, printable, RFC 3411


@dataclass(frozen=True, slots=True, kw_only=True)
class SnmpSettings:
    """Where the controller is and how to talk to it (credentials never in ``repr``)."""

    host: str
    port: int
    timeout: float
    retries: int
    credentials: Credentials = field(repr=False)


def parse(sec: Section, ctx: ParseContext) -> SnmpSettings | None:
    mark = sec.problems.mark()
    host = sec.string("host", pattern=_HOST, expected="a host name or an IP address")
    port = sec.integer("port", 1, 65535, default=DEFAULT_PORT)
    timeout = sec.number("timeout", MIN_TIMEOUT, MAX_TIMEOUT, default=DEFAULT_TIMEOUT)
    retries = sec.integer("retries", 0, MAX_RETRIES, default=DEFAULT_RETRIES)
    credentials: Credentials | None = None
    if sec.has("community") == sec.has("v3"):
        sec.error(
            "community",
            "give exactly one of community (SNMPv2c) and v3 (SNMPv3 USM: { user, auth_key, "
            "priv_key })",
        )
    elif sec.has("community"):
        community = sec.string("community", expected="the SNMPv2c community string")
        if sec.ok("community") and not community:
            sec.error("community", "empty")
        credentials = Community(community=community)
    else:
        v3 = sec.table("v3")
        user = v3.string("user", pattern=_USER, expected="a USM user name (1..32 printable)")
        auth = v3.choice("auth", AUTHS, default="sha")
        priv = v3.choice("priv", PRIVS, default="aes")
        expected = f"a passphrase of at least {MIN_PASSPHRASE} characters (RFC 3414 §11.2)"
        auth_key = v3.string("auth_key", expected=expected)
        if v3.ok("auth_key") and len(auth_key) < MIN_PASSPHRASE:
            # Never echo a secret in an error.
            v3.error("auth_key", f"expected {expected}, got {len(auth_key)} characters")
        priv_key = ""
        if priv != "none":
            priv_key = v3.string("priv_key", expected=expected)
            if v3.ok("priv_key") and len(priv_key) < MIN_PASSPHRASE:
                v3.error("priv_key", f"expected {expected}, got {len(priv_key)} characters")
        v3.close()
        if sec.problems.clean_since(mark):
            credentials = Usm(user=user, auth_key=auth_key, priv_key=priv_key, auth=auth, priv=priv)
    if sec.ok("host") and sec.ok("port"):
        ctx.claim(sec, "host", (NAME, host.lower(), port), f"{host}:{port}")
    if not sec.problems.clean_since(mark) or credentials is None:
        return None
    return SnmpSettings(
        host=host, port=port, timeout=timeout, retries=retries, credentials=credentials
    )


def _load_profile(ref: str, base_dir: Path) -> Model:
    return load_snmp_profile(ref, base_dir=base_dir)


class SnmpBus:
    """The :class:`~drivers.driver.Bus` of SNMP devices: one pysnmp engine for all of them.

    UDP has nothing to keep open: :meth:`run` only waits for :meth:`close`.
    """

    def __init__(self) -> None:
        from drivers.snmp.device import new_engine  # pysnmp on demand

        self.engine = new_engine()
        self.targets: list[str] = []  # host:port of each device, for status.json
        self._closed = asyncio.Event()
        self._health = LineHealth()

    @property
    def name(self) -> str:
        return BUS

    async def start(self) -> None:
        return

    async def run(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self.engine.close_dispatcher()

    @property
    def health(self) -> LineHealth:
        """Time spent in SNMP exchanges (the LAN is not a shared bus: this is the agent's
        waiting, not the medium's occupancy)."""
        return self._health

    def status(self) -> dict[str, Any]:
        # The same keys as a serial line's (the console and the view read them).
        return {"port": "udp " + " ".join(self.targets), "open": True, "error": None}


def build(name: str, model: Model, settings: object, ctx: BuildContext) -> Device:
    from drivers.snmp.device import SnmpDevice  # pysnmp on demand

    assert isinstance(settings, SnmpSettings)
    assert isinstance(model, SnmpProfile)
    bus = ctx.buses.get(BUS)
    if bus is None:
        bus = ctx.buses[BUS] = SnmpBus()
    assert isinstance(bus, SnmpBus)
    bus.targets.append(f"{settings.host}:{settings.port}")
    return SnmpDevice(
        name=name,
        host=settings.host,
        port=settings.port,
        credentials=settings.credentials,
        profile=model,
        timeout=settings.timeout,
        retries=settings.retries,
        engine=bus.engine,
        line=bus.health,
    )


def _bus_of(settings: object) -> str:
    assert isinstance(settings, SnmpSettings)
    return BUS


DRIVER: Final = Driver(
    name=NAME, parse=parse, load_profile=_load_profile, build=build, bus_of=_bus_of
)

"""The cabinet's own points, shared by the GPIO and the I/O module drivers (README, "Cabinet I/O").

Whether a cabinet's contacts come in on the gateway's GPIO lines or through the
MicroPython I/O module, the device (named ``cabinet`` in the default configuration)
has the same points, so the fail-safe rules and the lighting schedule name them once:
``cabinet/door`` (true: open), ``cabinet/mains`` (true: present), ``cabinet/ups_battery``
(true: the UPS runs on its battery), ``cabinet/spd`` (true: the surge arrester tripped),
``cabinet/temperature`` (°C, I/O module), and the relays ``cabinet/relay_lighting``
(true: lamps fed; relinquish default true) and ``cabinet/relay_aux`` (default false).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from drivers.point import PointSpec
from drivers.profile import SchemaError, show

# A contact's change is an event: report it at once (deadband 0 for bools), and show the
# control room it is alive every minute rather than every 5.
CONTACT_HEARTBEAT: Final = 60.0

ALL_POINTS: Final[dict[str, PointSpec]] = {
    p.name: p
    for p in (
        PointSpec(name="door", kind="bool", heartbeat=CONTACT_HEARTBEAT),
        PointSpec(name="mains", kind="bool", heartbeat=CONTACT_HEARTBEAT),
        PointSpec(name="ups_battery", kind="bool", heartbeat=CONTACT_HEARTBEAT),
        PointSpec(name="spd", kind="bool", heartbeat=CONTACT_HEARTBEAT),
        PointSpec(name="temperature", unit="°C", minimum=-40, maximum=125, deadband=0.5),
        # Relinquish defaults: lamps fed (the lighting contactor's coil energised) and
        # the spare relay off — what the module's safe state also chooses.
        PointSpec(name="relay_lighting", kind="bool", access="rw", default=True),
        PointSpec(name="relay_aux", kind="bool", access="rw", default=False),
        PointSpec(name="safe_state", kind="bool", heartbeat=CONTACT_HEARTBEAT),
    )
}


@dataclass(frozen=True, slots=True)
class CabinetModel:
    """A :class:`drivers.point.Model` of the cabinet's points that a device really has."""

    name: str
    points: Sequence[PointSpec]

    def point(self, name: str) -> PointSpec:
        for spec in self.points:
            if spec.name == name:
                return spec
        raise KeyError(name)


def model(name: str, points: Iterable[str]) -> CabinetModel:
    return CabinetModel(name=name, points=tuple(ALL_POINTS[p] for p in points))


def builtin_only(ref: str, expected: str) -> None:
    """These drivers' models are built in; the ``profile`` key must name it."""
    if ref != expected:
        raise SchemaError([f"expected profile = {show(expected)} for this driver, got {show(ref)}"])

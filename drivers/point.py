"""What the agent knows of a point, whatever protocol carries it.

A driver's profile (Modbus registers, SNMP OIDs, GPIO lines...) describes each point
with a :class:`PointSpec` — name, kind of value, unit, bounds, access, reporting
defaults, relinquish default — extended by the driver's own addressing. The agent
(Points table, reporter, arbiter, commands) reads only these fields, and every check of
a value against its spec is here, once (:meth:`PointSpec.problem`,
:meth:`PointSpec.write_problem`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

Kind = Literal["number", "bool", "text"]
Access = Literal["r", "rw"]

KINDS: Final[tuple[Kind, ...]] = ("number", "bool", "text")
ACCESSES: Final[tuple[Access, ...]] = ("r", "rw")

# Reporting defaults when neither the model nor the point sets them: a value that did
# not change is still sent every 5 minutes, so the central post sees it is alive.
DEFAULT_HEARTBEAT: Final = 300.0
# A heartbeat longer than a day would leave a point silent for longer than the
# central post's daily reports look back.
MAX_HEARTBEAT: Final = 86400.0

_EXPECTED: Final[dict[Kind, str]] = {
    "number": "a number",
    "bool": "true or false",
    "text": "a string",
}

POINT_NAME: Final = re.compile(r"[a-z0-9_]{1,32}")
POINT_NAME_TEXT: Final = 'a point name: 1 to 32 of a-z, 0-9, "_"'


class PointSpecError(ValueError):
    """A point spec was built with inconsistent fields; ``key`` is the TOML key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class PointSpec:
    """One point of a device model, protocol-neutral.

    ``minimum``/``maximum`` (TOML ``min``/``max``) bound the valid values: outside, the
    poller marks the quality ``out_of_range`` and a command is refused. ``default`` is
    the relinquish default of a writable point. Consistency is checked when built
    (:class:`PointSpecError`); drivers subclass this with their addressing.
    """

    name: str
    kind: Kind = "number"
    unit: str = ""
    access: Access = "r"
    minimum: float | None = None
    maximum: float | None = None
    deadband: float = 0.0
    heartbeat: float = DEFAULT_HEARTBEAT
    default: float | bool | None = None

    def __post_init__(self) -> None:
        if not POINT_NAME.fullmatch(self.name):
            raise PointSpecError("name", f"expected {POINT_NAME_TEXT}, got {_show(self.name)}")
        for key, value, allowed in (("kind", self.kind, KINDS), ("access", self.access, ACCESSES)):
            if value not in allowed:
                raise PointSpecError(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        if self.kind != "number":
            if self.minimum is not None or self.maximum is not None:
                raise PointSpecError("min", f"min and max do not apply to {self.kind} points")
            if self.deadband != 0:
                raise PointSpecError("deadband", f"does not apply to {self.kind} points")
        if (
            self.minimum is not None
            and self.maximum is not None
            and not self.minimum <= self.maximum
        ):
            raise PointSpecError("max", f"must be >= min ({self.minimum:g}), got {self.maximum:g}")
        if not (math.isfinite(self.deadband) and self.deadband >= 0):
            raise PointSpecError("deadband", f"expected a number >= 0, got {self.deadband}")
        if not 0 < self.heartbeat <= MAX_HEARTBEAT:
            raise PointSpecError(
                "heartbeat", f"expected 0 < seconds <= {MAX_HEARTBEAT:g}, got {self.heartbeat}"
            )
        if self.default is not None:
            self._check_default(self.default)

    def _check_default(self, default: float | bool) -> None:
        if not self.writable:
            raise PointSpecError("default", 'only writable points (access = "rw") have one')
        if not self._is_kind(default):
            raise PointSpecError(
                "default", f"expected {_EXPECTED[self.kind]}, got {_show(default)}"
            )
        if not self.in_range(default):
            raise PointSpecError(
                "default", f"{_show(default)} is outside min..max ({self.minimum}..{self.maximum})"
            )
        problem = self.encoding_problem(default, label=self.name)
        if problem is not None:
            raise PointSpecError("default", problem)

    def _is_kind(self, value: object) -> bool:
        match self.kind:
            case "bool":
                return isinstance(value, bool)
            case "text":
                return isinstance(value, str)
        return isinstance(value, int | float) and not isinstance(value, bool)

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    def problem(self, value: object, *, label: str | None = None) -> str | None:
        """Why ``value`` is not a valid value of this point (kind, bounds), or None.

        The one check behind a reading's quality and a command's acceptance. The message
        starts with ``label`` (default: the point's name).
        """
        label = self.name if label is None else label
        if not self._is_kind(value):
            return f"{label} takes {_EXPECTED[self.kind]}"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None  # bool and text points have no bounds
        if math.isnan(value) or not (
            (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
        ):
            return f"{label}: {value} is outside {self.minimum}..{self.maximum}"
        return None

    def in_range(self, value: object) -> bool:
        """Whether ``value`` is a valid value of this point (:meth:`problem` finds nothing)."""
        return self.problem(value, label="") is None

    def write_problem(self, value: object, *, label: str | None = None) -> str | None:
        """Why ``value`` cannot be written to this point, or None: :meth:`problem`, then
        what the driver's encoding refuses (:meth:`encoding_problem`)."""
        label = self.name if label is None else label
        if not self.writable:
            return f"{label} is read-only"
        return self.problem(value, label=label) or self.encoding_problem(value, label=label)

    def encoding_problem(self, value: object, *, label: str) -> str | None:
        """A value the driver cannot encode (a number too big for its register); drivers
        override this. Only called with a value :meth:`problem` accepts."""
        return None


class Model(Protocol):
    """A device model as the agent sees it: a name and its points (a driver's profile)."""

    @property
    def name(self) -> str: ...

    @property
    def points(self) -> Sequence[PointSpec]: ...

    def point(self, name: str) -> PointSpec:
        """The point called ``name``; KeyError if the model has none."""
        ...

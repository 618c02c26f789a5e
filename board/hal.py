"""The board HAL: the gateway's own GPIO lines by role (DESIGN.md, "Board support").

Two implementations of :class:`Gpio`: :mod:`board.gpio_linux` (libgpiod v2 through its
official ``gpiod`` bindings; the kernel reports edges with timestamps) and
:mod:`board.gpio_sim` (the simulated board, driven by tests and the simulator). The
watchdog device is :class:`agent.watchdog.Watchdog` (``/dev/watchdog``; a plain file on
the simulated board): one implementation serves both.

Values here are *logical*: ``True`` is "active" as the board file defines it
(``active_low`` is applied by the implementation, in the kernel for Linux), so a door
contact reads True when the door is open on every board.

Inputs are event-driven: the implementation hands out raw :class:`Edge` s as the
kernel (or the simulation) reports them, and :class:`Debouncer` turns a burst of bounces
into one change, ``debounce`` seconds after the last edge: nothing is sampled at a fixed
period, and a steady contact costs nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Protocol

# Dry contacts bounce for a few ms (door switches, relay contacts: < 10-20 ms); 50 ms
# settles them all and is invisible next to the 1 s a control room cares about.
DEFAULT_DEBOUNCE: Final = 0.05
SLACK: Final = 1e-6  # seconds: float rounding between a deadline and the clock read at it


class GpioError(Exception):
    """A line could not be requested, read or driven (names the role and the cause)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    """A raw transition of an input line: its new logical value at monotonic ``t`` (s)."""

    role: str
    active: bool
    t: float


class Gpio(Protocol):
    """The GPIO lines of one board, by role."""

    def get(self, role: str) -> bool:
        """The line's logical value now (an output: the value last driven)."""
        ...

    def set(self, role: str, active: bool) -> None:
        """Drive an output line; :class:`GpioError` for an input or a failure."""
        ...

    def edges(self) -> AsyncIterator[Edge]:
        """Raw edges of every input line, as they happen, forever."""
        ...

    def close(self) -> None:
        """Release the lines (outputs keep their level: the kernel does not reset them)."""
        ...


class Debouncer:
    """One input's debounced state, from edges and time only (sans-IO, no clock inside).

    :meth:`edge` records a raw transition and returns when to call :meth:`settle`;
    :meth:`settle` returns the new stable value if the line has been quiet for
    ``debounce`` seconds and differs from the last stable one, else None.
    """

    def __init__(self, state: bool, debounce: float = DEFAULT_DEBOUNCE) -> None:
        if debounce < 0:
            raise ValueError(f"debounce must be >= 0, got {debounce}")
        self.state = state
        self.debounce = debounce
        self._raw = state
        self._due = float("-inf")

    def edge(self, active: bool, t: float) -> float:
        self._raw = active
        self._due = t + self.debounce
        return self._due

    def settle(self, t: float) -> bool | None:
        # A timer set for the returned instant may read a clock a rounding error short.
        if t + SLACK < self._due or self._raw == self.state:
            return None
        self.state = self._raw
        return self.state

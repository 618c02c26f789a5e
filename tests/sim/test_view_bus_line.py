"""The live view's bus health line, from the agent's status.json."""

from __future__ import annotations

from sim.view import bus_line


def test_bus_line__utilisation_then_costly_devices_worst_first() -> None:
    """A technician watching the simulator must see which device slows the line."""
    status = {
        "lines": {"rs485_1": {"utilisation_pct": 42.5}, "10.0.0.5:502": {"utilisation_pct": None}},
        "devices": {
            "lamp-01": {"bus": {"timeouts": 0, "framing_errors": 0, "other_errors": 0}},
            "lamp-05": {"bus": {"timeouts": 12, "framing_errors": 0, "other_errors": 0}},
            "lamp-09": {"bus": {"timeouts": 0, "framing_errors": 20, "other_errors": 1}},
            "meter": {"bus": {"exceptions": 2}},
            "cam": {},
        },
    }
    assert bus_line(status) == (
        "bus: rs485_1 42.5 % busy · lamp-09 21 bad replies · lamp-05 12 timeouts"
        " · meter 2 exceptions"
    )


def test_bus_line__before_the_first_window() -> None:
    """The line must not break before the agent has measured anything."""
    assert bus_line({}) == ("bus: utilisation after the first window · every device answering")

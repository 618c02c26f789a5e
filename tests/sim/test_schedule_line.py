"""The live view's fail-safe line, from the agent's status.json."""

from __future__ import annotations

from sim.cabinet import Cabinet, Scenario
from sim.run import agent_config, schedule_line


def test_schedule_line__shows_mode_clock_level_and_next_switch() -> None:
    """The person at the simulator sees whether the street is lit by schedule and when it
    changes next, without reading logs."""
    status = {
        "failsafe": {
            "mode": "autonomous",
            "clock": {"quality": "holdover"},
            "lighting": {
                "street": {"level": 60, "next": "2026-12-21T21:30:00+00:00", "photocell": False}
            },
        }
    }
    line = schedule_line(status)
    assert line.startswith("fail-safe: mode autonomous  clock holdover  schedule street on 60 %")
    assert ", next " in line
    assert schedule_line({}) == "fail-safe: mode ?  clock ?  schedule none"


def test_agent_config__default_site_is_dijon() -> None:
    """The simulated cabinet stands in Dijon unless told otherwise."""
    text = agent_config(Cabinet(Scenario(lamps=1)), "mqtt://127.0.0.1:1883")
    assert "latitude = 47.32\nlongitude = 5.04\n" in text

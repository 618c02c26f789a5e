"""End to end on the simulator: the link is cut before dusk and the lamps switch on by
themselves when the sun sets, while the control room hears nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.lighting import DEFAULT_PROGRAM, night
from central.post import CentralPost
from sim.broker import Mosquitto
from tests.integration.conftest import Site, open_site

pytestmark = pytest.mark.integration

WAIT_S = 30.0
# Dusk this far after the test starts: the agent has started, connected and put the lamps
# out for the day by then (a few seconds), and the test stays short.
DUSK_IN_S = 25.0


@dataclass(frozen=True)
class Place:
    latitude: float
    longitude: float
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _dusk(place: Place, now: dt.datetime) -> dt.datetime:
    """The next official sunset after ``now`` at ``place`` (the agent's own pure function)."""
    day = now.date()
    for offset in (-1, 0, 1, 2):
        on = night(day + dt.timedelta(days=offset), place, DEFAULT_PROGRAM).on
        if on > now:
            return on
    raise AssertionError("no sunset within two days")


def place_with_dusk_at(target: dt.datetime) -> Place:
    """A place on the equator whose sunset falls at ``target`` (within a second): the sun
    sets 4 minutes later for every degree westward."""
    longitude = 0.0
    for _ in range(8):
        place = Place(latitude=0.0, longitude=longitude)
        error = (_dusk(place, target - dt.timedelta(hours=12)) - target).total_seconds()
        if abs(error) < 1:
            return place
        longitude = (longitude + error / 240.0 + 180.0) % 360.0 - 180.0
    raise AssertionError(f"no place with sunset at {target}")


async def _until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await _tick()


async def _tick() -> None:
    await asyncio.sleep(0.1)  # the polling interval of _until, which has the deadline


async def test_failsafe__link_cut_at_dusk_lamps_switch_on_by_themselves(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """With the central post unreachable since before sunset, the cabinet lights the street
    at dusk on its own, goes autonomous, and says so when the link comes back."""
    dusk = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=DUSK_IN_S)
    place = place_with_dusk_at(dusk)
    tail = "[failsafe]\nautonomous_after = 3\n"
    where = (place.latitude, place.longitude, place.timezone)
    async with open_site(tmp_path, broker, tail=tail, place=where) as site:
        lamps = [site.cabinet.lamp(f"lamp-0{i}") for i in range(1, 5)]
        # Daytime: the schedule opens the contactor and puts the lamps at 0.
        await _until(lambda: not any(lamp.lit for lamp in lamps), WAIT_S, "lamps off by day")
        assert dt.datetime.now(dt.UTC) < dusk, "the agent took too long to start"
        await site.link.cut()
        await _until(lambda: all(lamp.lit for lamp in lamps), DUSK_IN_S + WAIT_S, "lamps lit")
        lit_at = dt.datetime.now(dt.UTC)
        assert lit_at >= dusk - dt.timedelta(seconds=1)
        assert site.cabinet.contactor.closed
        await site.link.restore()
        await site.central.wait_for(
            lambda c: any(
                e["code"] == "link.autonomous" and e["data"].get("mode") == "normal"
                for e in c.events
            ),
            WAIT_S,
        )
        codes = [e["code"] for e in site.central.events]
        assert codes.count("link.autonomous") == 2
        # The Birth made as the link came back says the gateway was on its own until then.
        await site.central.wait_for(
            lambda c: c.state.get(site.gw, {}).get("mode") == "autonomous", WAIT_S
        )
        # The critical loops were alive all along: the simulated board's watchdog was fed.
        assert site.cabinet.watchdog_feeds() > 0


async def test_failsafe__birth_and_agent_start_say_how_the_previous_run_ended(
    site: Site,
) -> None:
    """After a clean restart the control room reads reboot = clean; after the process is
    killed, crash (same kernel, no clean-stop marker)."""

    def birth_of(boot: int) -> Callable[[CentralPost], bool]:
        return lambda c: c.state.get(site.gw, {}).get("boot") == boot

    await site.central.wait_for(birth_of(1), WAIT_S)
    assert "reboot" not in site.central.state[site.gw]  # the very first run
    await site.agent.stop()
    await site.agent.start()
    await site.central.wait_for(birth_of(2), WAIT_S)
    assert site.central.state[site.gw]["reboot"] == "clean"
    assert site.central.state[site.gw]["mode"] == "normal"
    assert site.agent.proc is not None
    site.agent.proc.kill()
    await site.agent.proc.wait()
    await site.agent.start()
    await site.central.wait_for(birth_of(3), WAIT_S)
    assert site.central.state[site.gw]["reboot"] == "crash"
    await site.central.wait_for(
        lambda c: any(
            e["code"] == "agent.start" and e["boot"] == 3 and e["data"].get("reboot") == "crash"
            for e in c.events
        ),
        WAIT_S,
    )

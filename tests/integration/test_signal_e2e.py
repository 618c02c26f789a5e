"""End to end on the simulator: a junction's controller goes to fault flash, to a conflict
monitor (MMU) fault, to a scheduled flash, then stops answering; the control room sees
each at once, as a critical signal.* alarm (an event for the scheduled flash), verified.
(That each clears again, and stays quiet while it flickers, is tested on the fake clock in
tests/unit/test_rules.py; here only the fault flash waits out its clear.)

The controller is the simulator's real SNMP agent on loopback; the agent polls it over
SNMPv3 authPriv (the configuration ``armoire sim`` writes).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent.messages import Severity
from central.post import CentralPost
from sim.cabinet import SIGNAL_NAME
from tests.integration.conftest import Site

pytestmark = pytest.mark.integration


@pytest.fixture
def whole_cabinet() -> bool:
    """The site has the signal controller and the I/O module (conftest.py)."""
    return True


WAIT_S = 30.0
# What "at once" means for the traffic desk: the poll period (1 s), the batch interval
# (1 s) and the round trip through the broker, with room for a loaded CI machine. Not a
# timing threshold of the code: a generous bound on "the next poll or two".
SOON_S = 10.0


def _events(central: CentralPost, code: str, state: str) -> list[dict[str, Any]]:
    return [e for e in central.events if e["code"] == code and e["state"] == state]


async def _seen(site: Site, code: str, state: str) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    # Clearing waits out the rule's clear_after (10 s) on purpose: no flapping.
    await site.central.wait_for(
        lambda c: bool(_events(c, code, state)), SOON_S if state == "raised" else WAIT_S
    )
    return _events(site.central, code, state)[0], time.monotonic() - start


async def test_signal__faults_reach_the_control_room_at_once(site: Site) -> None:
    """A junction in fault flash, an MMU fault, a scheduled flash and a silent controller
    would each go unseen by the traffic desk, or be seen late or with the wrong weight."""
    signal = site.cabinet.traffic_signal()
    # The agent polls the controller and its points reach the central post first.
    await site.central.wait_for(
        lambda c: f"{site.gw}:{SIGNAL_NAME}/flash_status" in c.latest, WAIT_S
    )
    assert site.central.latest[f"{site.gw}:{SIGNAL_NAME}/flash_status"].value == 2

    # A planned flash is an event for the traffic desk, not a fault.
    signal.set_scheduled_flash(True)
    event, _ = await _seen(site, "signal.flash", "raised")
    assert event["kind"] == "event"
    assert event["src"] == SIGNAL_NAME
    assert _events(site.central, "signal.fault_flash", "raised") == []
    signal.set_scheduled_flash(False)

    signal.set_fault_flash(True)
    alarm, took = await _seen(site, "signal.fault_flash", "raised")
    assert alarm["kind"] == "alarm"
    assert alarm["sev"] == Severity.CRITICAL
    assert alarm["src"] == SIGNAL_NAME
    print(f"fault flash -> critical alarm at the central post in {took:.2f} s")
    signal.set_fault_flash(False)
    await _seen(site, "signal.fault_flash", "cleared")

    signal.set_mmu_fault(True)
    alarm, took = await _seen(site, "signal.mmu", "raised")
    assert alarm["sev"] == Severity.CRITICAL
    print(f"MMU fault -> critical alarm in {took:.2f} s")
    signal.set_mmu_fault(False)

    site.cabinet.power_off(SIGNAL_NAME)
    alarm, took = await _seen(site, "signal.offline", "raised")
    assert alarm["sev"] == Severity.CRITICAL
    print(f"controller silent -> signal.offline in {took:.2f} s")
    # Nothing the gateway sent failed verification along the way.
    assert site.central.stats()["rejected"] == 0

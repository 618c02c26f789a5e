"""The virtual cabinet, the reference central post and the agent as its own process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.clock import SystemClock
from central.commander import (
    Commander,
    init_central_keys,
    install_trust,
    load_key,
    write_central_config,
)
from central.post import CentralPost, load_public_pem
from sim.broker import Mosquitto
from sim.cabinet import Cabinet, Scenario
from sim.proxy import LinkProxy
from sim.run import GATEWAY_ID, LINE_ROLE, AgentProcess, agent_config, ensure_keys


@dataclass
class Site:
    """Everything a test needs to drive the cabinet and watch the control room."""

    data: Path
    broker: Mosquitto
    cabinet: Cabinet
    central: CentralPost
    agent: AgentProcess
    link: LinkProxy
    commander: Commander
    gw: str = GATEWAY_ID

    @property
    def central_dir(self) -> Path:
        return self.data / "central"

    def log(self) -> str:
        return self.agent.log_path.read_text(errors="replace")[-4000:]


# The lamps keep their relinquish defaults whatever the time of day, so that these tests
# see the same levels at noon and at midnight; tests/integration/test_failsafe_e2e.py runs
# the schedule.
NO_SCHEDULE = "lighting = []\n"


@pytest.fixture
def agent_extra_config() -> str:
    """TOML appended to the agent's configuration (a test module overrides this fixture)."""
    return ""


@pytest.fixture
def whole_cabinet() -> bool:
    """Whether ``site`` has the LAN signal controller and the I/O module besides the RS-485
    devices. Off by default: most tests are about the data paths, and each of those devices
    costs every agent start and every second some CPU on this 2-core machine; a test module
    about them (or about every point of the cabinet) overrides this fixture."""
    return False


@pytest.fixture
async def site(
    tmp_path: Path, broker: Mosquitto, agent_extra_config: str, whole_cabinet: bool
) -> AsyncIterator[Site]:
    """A running gateway: cabinet on a pty line, agent process, central post, mosquitto.

    The agent reaches the broker through a proxy that tests can cut or stall, like
    the cabinet's cellular link; the central post is connected to the broker directly.
    """
    async with open_site(
        tmp_path,
        broker,
        root_extra=NO_SCHEDULE,
        tail=agent_extra_config,
        signal=whole_cabinet,
        iomodule=whole_cabinet,
    ) as started:
        yield started


@contextlib.asynccontextmanager
async def open_site(
    tmp_path: Path,
    broker: Mosquitto,
    *,
    root_extra: str = "",
    tail: str = "",
    place: tuple[float, float, str] | None = None,
    health_interval: float | None = None,
    cameras: int = 0,
    signal: bool = False,
    iomodule: bool = False,
) -> AsyncIterator[Site]:
    """The ``site`` fixture's gateway, with extra agent configuration (and ``cameras``
    simulated ONVIF cameras; the central post then writes stills under DATA/central-data)."""
    async with contextlib.AsyncExitStack() as stack:
        link = await stack.enter_async_context(LinkProxy("127.0.0.1", broker.port))
        cabinet = await stack.enter_async_context(
            Cabinet(
                Scenario(cameras=cameras, signal=signal, iomodule=iomodule),
                clock=SystemClock(),
                link_dir=tmp_path / "dev",
                line_name=LINE_ROLE,
            )
        )
        model = asyncio.create_task(cabinet.run(), name="sim.cabinet")
        stack.callback(model.cancel)
        ensure_keys(tmp_path)
        central_dir = tmp_path / "central"
        init_central_keys(central_dir)
        install_trust(central_dir, tmp_path)
        write_central_config(
            central_dir, broker=broker.url, gateways={GATEWAY_ID: tmp_path / "gateway.pub"}
        )
        config = tmp_path / "agent.toml"
        config.write_text(
            agent_config(
                cabinet,
                link.url,
                root_extra=root_extra,
                tail=tail,
                place=place,
                health_interval=health_interval,
            )
        )
        central = await stack.enter_async_context(
            CentralPost(
                broker.url,
                keys={GATEWAY_ID: load_public_pem(tmp_path / "gateway.pub")},
                data_dir=tmp_path / "central-data",
            )
        )
        commander = await stack.enter_async_context(
            Commander(central, broker.url, load_key(central_dir / "operator.key"))
        )
        agent = AgentProcess(config, tmp_path / "agent.log")
        await agent.start()
        stack.push_async_callback(agent.stop)
        yield Site(
            data=tmp_path,
            broker=broker,
            cabinet=cabinet,
            central=central,
            agent=agent,
            link=link,
            commander=commander,
        )

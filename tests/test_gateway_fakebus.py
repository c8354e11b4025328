"""The gateway's dry run and the agent's buses on scripted fake buses: no simulator, no PTY.

The transport factory is the seam: the gateway hands it to every agent it starts and uses it
for a dry run on a bus no agent holds, so both see the same scripted units.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.config.model import SiteConfig
from edge_agent.control.gateway import Gateway
from edge_agent.drivers.bus import Bus
from edge_agent.drivers.model import Table
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.errors import DeviceError
from edge_agent.runtime.agent import Agent
from edge_agent.runtime.store import MemoryStore
from tests.support.fakebus import FakeBus
from tests.support.sitekit import write_site

DEVICES = [("meter", "rs485", 1, "energy_meter"), ("lamp", "rs485", 2, "streetlight"),
           ("cabinet", "lan", 3, "signal_cabinet")]


class Buses:
    """A transport factory over fake buses by bus name, counting the buses it opened."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.buses: dict[str, FakeBus] = {}
        self.opened: list[str] = []

    def bus(self, name: str) -> FakeBus:
        """The fake bus standing for the config's bus ``name``."""
        return self.buses.setdefault(name, FakeBus(self.clock, name=name))

    def __call__(self, bus: Bus) -> FakeBus:
        self.opened.append(bus.name)
        return self.bus(bus.name)

    def answering(self, bus: str, unit_id: int) -> None:
        """Make ``unit_id`` on ``bus`` answer every register and bit read with zeros."""
        unit = self.bus(bus).unit(unit_id)
        for table in Table:
            unit.load(table, 0, [0] * 1000)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_site(tmp_path, DEVICES)


def _gateway(site: Path, factory: Buses) -> Gateway:
    return Gateway(site, make_transport=factory, own_process=False)


def test_dry_run_names_every_silent_device_and_touches_nothing_else(site: Path) -> None:
    factory = Buses()
    factory.answering("rs485", 1)          # the lamp (unit 2) and the cabinet are silent
    gw = _gateway(site, factory)
    with pytest.raises(DeviceError) as err:
        asyncio.run(gw.dry_run(gw.local))
    message = str(err.value)
    assert "lamp (unit 2 on rs485)" in message and "cabinet (unit 3 on lan)" in message
    assert "meter" not in message
    # One read per device, each bus opened for the dry run and closed after it.
    assert sorted(factory.opened) == ["lan", "rs485"]
    assert [e.unit_id for e in factory.buses["rs485"].log if e.attempt == 0] == [1, 2]
    assert all(not b.connected for b in factory.buses.values())


def test_dry_run_passes_when_every_device_answers(site: Path) -> None:
    factory = Buses()
    for bus, unit in (("rs485", 1), ("rs485", 2), ("lan", 3)):
        factory.answering(bus, unit)
    gw = _gateway(site, factory)
    asyncio.run(gw.dry_run(gw.local))
    assert {e.outcome for b in factory.buses.values() for e in b.log} == {"data"}


def test_the_agent_polls_through_the_factory(site: Path) -> None:
    factory = Buses()
    gw = _gateway(site, factory)
    cfg: SiteConfig = gw.local
    agent = Agent(cfg, MemoryStore(), FakeClock(), make_transport=factory)
    assert set(agent.transports) == {"rs485", "lan"}
    assert all(agent.transports[n] is factory.bus(n) for n in ("rs485", "lan"))
    buses = agent.health()["buses"]
    assert isinstance(buses, dict)
    assert buses["rs485"]["where"] == "fake bus rs485"


def test_a_dying_loop_lag_monitor_is_restarted_and_shown_in_health(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    factory = Buses()
    for bus, unit in (("rs485", 1), ("rs485", 2), ("lan", 3)):
        factory.answering(bus, unit)
    gw = _gateway(site, factory)
    agent = Agent(gw.local, MemoryStore(), make_transport=factory)  # the real clock
    real_check = agent.lag.check
    checks = {"n": 0}

    def check() -> object:
        checks["n"] += 1
        if checks["n"] == 1:
            raise RuntimeError("a bug in the monitor")
        return real_check()

    monkeypatch.setattr(agent.lag, "check", check)

    async def main() -> dict[str, object]:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # The crash, then two samples by the restarted monitor.
        while checks["n"] < 3:
            assert loop.time() < deadline and not task.done(), checks
            await asyncio.sleep(0.05)
        health = agent.health()
        stop.set()
        await task
        return health

    health = asyncio.run(main())
    assert health["task_restarts"] == {"loop-lag": 1}, health["task_restarts"]
    assert agent.lag.stats.samples >= 2
    assert agent.lag.witness is not None and not agent.lag.witness.ticking  # stopped with it

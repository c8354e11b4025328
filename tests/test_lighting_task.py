"""The gateway's lamps follow their schedule with the broker down, on a fake clock.

The real gateway (``control.gateway.Gateway``: the agent, its bus pollers and the lighting
task) runs in-process on an ``OrderedClock`` (sleepers wake in deadline order) over scripted
fake buses; the MQTT broker it is configured for is not running (nothing listens on the
port). A night at the city is stepped through dusk, a dim step and dawn in fake time; the
lamps' registers show what was written, and the bus log shows that only changes were
written, between polls. A second test restarts the gateway in the middle of an override and
checks that it ends on the second. A third runs the schedule task alone over the whole of 2026
on a ``FakeClock`` (about a second): every change written once, at its instant.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

from edge_agent.config.loader import load_config
from edge_agent.control.gateway import Gateway
from edge_agent.control.lighting_overrides import OverrideStore, overrides_path
from edge_agent.control.lighting_task import LightingTask
from edge_agent.control.solar import sun_times
from edge_agent.drivers.bus import Bus, DeviceConfig
from edge_agent.drivers.model import Table
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.readings import Value
from edge_agent.runtime.poller import DeviceState, WriteResult
from tests.support.fakebus import FakeBus, NoAnswer
from tests.support.orderedclock import OrderedClock
from tests.support.sitekit import write_site

CITY = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 3, 10)
LAMPS = [("lamp-101", "rs485", 11, "streetlight"), ("lamp-102", "rs485", 12, "streetlight")]
LIGHTING = """
[lighting]
latitude = 36.9
longitude = 116.6
timezone = "Asia/Shanghai"

[lighting.groups]
north = ["lamp-101", "lamp-102"]

[lighting.schedules.streets]
lamps = ["group:north"]
steps = [{ until = "23:00", level = 100 }, { until = "dawn", level = 50 }]
"""
RELAY, DIM = (Table.COIL, 0), (Table.HOLDING_REGISTER, 0)


class Buses:
    """The transport factory: one fake bus per config bus, the lamps answering."""

    def __init__(self, clock: OrderedClock) -> None:
        self.clock = clock
        self.buses: dict[str, FakeBus] = {}

    def __call__(self, bus: Bus) -> FakeBus:
        fake = self.buses.get(bus.name)
        if fake is None:
            fake = self.buses[bus.name] = FakeBus(self.clock, name=bus.name)
            for unit in (11, 12):
                for table in Table:
                    fake.unit(unit).load(table, 0, [0] * 16)
        return fake

    def lamp(self, unit: int) -> tuple[int | None, int | None]:
        """(relay, dim level) in the lamp's registers."""
        u = self.buses["rs485"].unit(unit)
        return u.value(*RELAY), u.value(*DIM)

    def writes(self, unit: int) -> list[tuple[float, Table, int]]:
        """(monotonic time sent, table, address) of every write to ``unit``."""
        return [(e.at_s, e.table, e.address) for e in self.buses["rs485"].log
                if e.unit_id == unit and e.kind == "write"]


class Stepper:
    """Moves the stepped clock to wall-clock instants and lets every task catch up."""

    def __init__(self, clock: OrderedClock, start: float) -> None:
        self.clock, self.start = clock, start

    async def to(self, wall_s: float) -> None:
        # A little past the instant: a sleep starts a loop turn after it is asked for, and a
        # fake bus exchange (1/64 s) may have moved the clock in that turn.
        await self.clock.run_to(wall_s - self.start + 0.05)


def _run(site: Path, clock: OrderedClock, buses: Buses,
         body: Callable[[Gateway], Awaitable[None]]) -> None:
    async def main() -> None:
        gw = Gateway(site, clock=clock, make_transport=buses, own_process=False)
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        try:
            # Opening the spool takes a worker thread: real time, which the clock waits for.
            async with asyncio.timeout(20):
                while gw.agent is None or "lighting" not in gw.agent.health_sections:
                    await asyncio.sleep(0.005)
            await body(gw)
        finally:
            stop.set()
            while not task.done():   # the stop's own sleeps, if any, need time to move
                await clock.run_to(clock.monotonic() + 0.5)
                await asyncio.sleep(0.001)
            task.result()
    asyncio.run(main())


def test_lamps_follow_dusk_steps_and_dawn_with_the_broker_down(tmp_path: Path) -> None:
    site = write_site(tmp_path, LAMPS, poll_s=30.0, extra=LIGHTING)
    evening = sun_times(DAY, 36.9, 116.6).sunset_s
    morning = sun_times(date(2026, 3, 11), 36.9, 116.6).sunrise_s
    assert evening is not None and morning is not None
    start = evening - 1800
    clock = OrderedClock(start)
    buses = Buses(clock)
    step = Stepper(clock, start)
    at_23 = datetime(2026, 3, 10, 23, 0, tzinfo=CITY).timestamp()

    async def night(gw: Gateway) -> None:
        await step.to(evening - 60)
        agent = gw.agent
        assert agent is not None and not agent.uplink.connected.is_set()   # no broker
        assert buses.lamp(11) == (0, 0) and buses.lamp(12) == (0, 0)
        assert len(buses.writes(11)) == 1          # re-asserted at start: relay off
        await step.to(evening)
        assert buses.lamp(11) == (1, 100) and buses.lamp(12) == (1, 100)
        # Switched on at dusk to the second, the level before the relay.
        on = buses.writes(11)[1:]
        assert [w[1] for w in on] == [Table.HOLDING_REGISTER, Table.COIL]
        assert -0.001 <= on[0][0] - (evening - start) < 0.5
        await step.to(at_23 + 1)
        assert buses.lamp(11) == (1, 50)
        assert len(buses.writes(11)) == 4          # off, 100 %, on, 50 %: changes only
        # lamp-102 loses power at 01:00 and comes back at 02:00 with its relay open.
        unit = buses.buses["rs485"].unit(12)
        unit.silent = True
        await step.to(at_23 + 2 * 3600)
        assert agent.schedulers["rs485"].devices["lamp-102"].status == "offline"
        unit.load(Table.COIL, 0, [0])
        unit.silent = False
        await step.to(at_23 + 3 * 3600)
        assert buses.lamp(12) == (1, 50)          # re-asserted once it answered again
        health = agent.health()["lighting"]
        assert isinstance(health, dict) and health["failed_writes"] == 0
        assert health["next_change_ms"] == int(morning * 1000)
        # lamp-101 blips: one poll unanswered, back at its defaults (relay open) before the
        # schedule task ever sees it offline. The missed poll is enough to write it again.
        blip = buses.buses["rs485"].unit(11)
        blip.load(Table.COIL, 0, [0])
        blip.then(NoAnswer(), NoAnswer())          # the poll and its one retry
        await step.to(at_23 + 3 * 3600 + 120)
        assert buses.lamp(11) == (1, 50)
        assert len(buses.writes(11)) == 6          # dim level and relay, written again
        await step.to(morning)
        assert buses.lamp(11) == (0, 50) and buses.lamp(12) == (0, 50)
        assert len(buses.writes(11)) == 7
        await step.to(morning + 6 * 3600)         # and nothing more all day
        assert len(buses.writes(11)) == 7

    _run(site, clock, buses, night)


def test_an_override_ends_on_time_across_a_restart(tmp_path: Path) -> None:
    site = write_site(tmp_path, LAMPS, poll_s=30.0, extra=LIGHTING)
    evening = sun_times(DAY, 36.9, 116.6).sunset_s
    assert evening is not None
    start = evening + 600
    clock = OrderedClock(start)
    buses = Buses(clock)
    step = Stepper(clock, start)
    until = start + 1800.0

    async def first(gw: Gateway) -> None:
        await step.to(start + 60)
        assert buses.lamp(11) == (1, 100)
        gw.overrides.set("group:north", 20, until, "cmd-7")
        await step.to(start + 61)
        assert buses.lamp(11) == (1, 20) and buses.lamp(12) == (1, 20)
        await step.to(start + 600)

    _run(site, clock, buses, first)
    restarted_at = clock.monotonic()
    for unit in (11, 12):   # the lamps reboot to their defaults while the gateway is down
        buses.buses["rs485"].unit(unit).load(Table.HOLDING_REGISTER, 0, [100])

    async def second(gw: Gateway) -> None:
        await step.to(start + 700)
        assert buses.lamp(11) == (1, 20)        # the override was re-asserted after restart
        assert [o.until_s for o in gw.overrides.active(clock.now()).values()] == [until]
        await step.to(until - 1)
        assert buses.lamp(11) == (1, 20)
        await step.to(until)
        assert buses.lamp(11) == (1, 100) and buses.lamp(12) == (1, 100)
        last = buses.writes(11)[-1]
        assert last[1] is Table.HOLDING_REGISTER and last[0] - (until - start) < 0.5
        assert last[0] >= until - start - 0.001   # not a moment early
        assert gw.overrides.active(clock.now()) == {}

    _run(site, clock, buses, second)
    assert restarted_at > 0


class RecordingBus:
    """A lamp bus that records every write with the fake time it was made at."""

    def __init__(self, clock: FakeClock, lamps: list[str]) -> None:
        self.clock = clock
        self.devices = {name: DeviceState(cast(DeviceConfig, None)) for name in lamps}
        for state in self.devices.values():
            state.status = "online"
        self.log: list[tuple[float, str, str, Value]] = []

    async def write(self, device: str, point: str, value: Value) -> WriteResult:
        self.log.append((self.clock.now(), device, point, value))
        return WriteResult(True)


def test_a_whole_year_on_a_fake_clock_writes_each_change_at_its_instant(tmp_path: Path) -> None:
    """The schedule task itself, a year of 2026 on a FakeClock: only changes, each on time."""
    cfg = load_config(write_site(tmp_path, LAMPS, extra=LIGHTING)).lighting
    assert cfg is not None
    start = datetime(2026, 1, 1, 12, tzinfo=CITY).timestamp()
    end = datetime(2027, 1, 1, 12, tzinfo=CITY).timestamp()
    clock = FakeClock(start)
    bus = RecordingBus(clock, ["lamp-101", "lamp-102"])
    store = OverrideStore(overrides_path(tmp_path / "state"), clock, fsync=False)
    # Hourly re-evaluation instead of each minute keeps the year to seconds; every
    # transition still wakes the task at its own instant.
    task = LightingTask(cfg, {"rs485": bus}, store, clock, tick_s=3600.0)

    async def year() -> None:
        running = asyncio.create_task(task.run())
        while clock.now() < end:
            await asyncio.sleep(0)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    asyncio.run(year())
    writes = [w for w in bus.log if w[1] == "lamp-101" and w[0] < end]
    relay = [(t, v) for t, _, point, v in writes if point == "relay_on"]
    dim = [(t, v) for t, _, point, v in writes if point == "dim_command"]
    assert relay[0] == (start, False)                 # asserted at start: it is day
    ons = [t for t, v in relay if v is True]
    assert len(ons) == 365                              # every night, once on ...
    assert len(relay) == 1 + 2 * 365                    # ... and once off: changes only
    for t in ons:                                       # on at sunset, to the microsecond
        day = datetime.fromtimestamp(t, CITY).date()
        sunset = sun_times(day, 36.9, 116.6).sunset_s
        assert sunset is not None and abs(t - sunset) < 1e-3
    # The dim level is written at dusk (100) and at 23:00 (50): twice a night.
    assert len(dim) == 2 * 365
    at_23 = [t for t, v in dim if v == 50]
    assert all(datetime.fromtimestamp(t, CITY).strftime("%H:%M:%S") == "23:00:00"
               for t in at_23)
    assert task.failed_writes == 0 and task.evaluations < 365 * 24 + 6 * 365

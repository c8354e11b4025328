"""Missed slots are reported with how long the late slot's polls took, for the agent to explain.

Fake bus, stepped fake clock: one reply takes 3.5 s, so two 1 s slots pass while the bus is
busy. The scheduler counts them as before and hands them to ``on_missed`` with the slot's
polling time; the agent turns that into a logged cause (a stall the loop-lag monitor saw, or
an overloaded bus).
"""

from __future__ import annotations

import asyncio

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import Access, DataType, Point, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.scheduler import BusScheduler
from tests.support.fakebus import FakeBus, Slow, SteppedClock

HR = Table.HOLDING_REGISTER


def test_missed_slots_are_handed_over_with_the_time_the_slot_took() -> None:
    point = Point(name="a", table=HR, address=0, type=DataType.UINT16, count=1,
                  access=Access.READ)
    dev = DeviceConfig(name="m", bus="fake", unit_id=1, profile=DeviceProfile("m", "", (point,)),
                       poll_interval_s=1.0, points=(point,))
    clock = SteppedClock(1_700_000_000.25)
    bus = FakeBus(clock, retries=0)
    bus.unit(1).load(HR, 0, [1]).then(Slow(0), Slow(0), Slow(3.5))
    missed: list[tuple[str, int, float]] = []
    readings: list[Reading] = []
    sched = BusScheduler(bus, [dev], readings.extend, clock,
                         on_missed=lambda *args: missed.append(args))

    async def main() -> None:
        task = asyncio.create_task(sched.run())
        await clock.run_to(clock.monotonic() + 10.5, task)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert sched.devices["m"].missed_slots == 2
    assert len(missed) == 1
    device, slots, took = missed[0]
    assert (device, slots) == ("m", 2) and 3.5 <= took < 3.6

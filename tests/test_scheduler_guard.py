"""The no-reply guard on the fake bus: a dead unit cannot take a libmodbus-style one down.

A libmodbus RTU slave that sees a request for another unit takes the next frame on the line
(within its 0.5 s response timeout) as that unit's reply and ignores it. The fake bus models
that slave (``FakeUnit.confirmation_wait_s``) and the transport's guard
(``no_reply_guard_s``); time moves only on the fake clock, so the assertions are counts.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.modbus.timing import DEFAULT_NO_REPLY_GUARD_S
from edge_agent.drivers.model import DataType, Point, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.scheduler import BusScheduler
from tests.support.fakebus import FakeBus, FakeUnit, Polling, SteppedClock

HR = Table.HOLDING_REGISTER
START = 1_700_000_000.25
LIBMODBUS_WAIT_S = 0.5


def device(name: str, unit_id: int, poll_s: float) -> DeviceConfig:
    """A device with one uint16 holding register at 0."""
    pt = Point(name="v", table=HR, address=0, type=DataType.UINT16, count=1)
    return DeviceConfig(name=name, bus="fake", unit_id=unit_id,
                        profile=DeviceProfile(name, "", (pt,)), poll_interval_s=poll_s,
                        points=(pt,))


def run(guard_s: float, seconds: float = 60.0, *, timeout_s: float = 0.25,
        meter_unit: int = 37, retries: int = 1) -> tuple[list[Reading], FakeBus, BusScheduler]:
    """A dead unit 5 polled before a libmodbus-style meter, both every second."""
    clock = SteppedClock(START)
    bus = FakeBus(clock, retries=retries, timeout_s=timeout_s, no_reply_guard_s=guard_s)
    meter: FakeUnit = bus.unit(meter_unit).load(HR, 0, [1234])
    meter.confirmation_wait_s = LIBMODBUS_WAIT_S
    readings: list[Reading] = []
    # The dead device is configured first, so without reordering it is polled first.
    sched = BusScheduler(bus, [device("dead", 5, 1.0), device("meter", meter_unit, 1.0)],
                         readings.extend, clock)

    async def main() -> None:
        async with Polling(sched.run, clock) as polling:
            await polling.until(clock.monotonic() + seconds)

    asyncio.run(main())
    return readings, bus, sched


def meter_qualities(readings: list[Reading]) -> list[Quality]:
    return [r.quality for r in readings if r.device == "meter"]


def test_without_a_guard_a_dead_unit_makes_the_libmodbus_meter_fail() -> None:
    """The fault the guard is for: with no silence the meter swallows our requests."""
    readings, bus, _ = run(guard_s=0.0, timeout_s=0.25, retries=0)
    q = meter_qualities(readings)
    assert bus.units[37].swallowed > 0
    assert Quality.COMM_ERROR in q


@pytest.mark.parametrize("retries", [0, 1])
def test_with_the_default_guard_the_meter_behind_a_dead_unit_reads_good_every_slot(
        retries: int) -> None:
    readings, bus, sched = run(guard_s=DEFAULT_NO_REPLY_GUARD_S, retries=retries)
    q = meter_qualities(readings)
    assert len(q) >= 55  # a reading per one-second slot over 60 s
    assert set(q) == {Quality.GOOD}
    assert bus.units[37].swallowed == 0
    meter = sched.devices["meter"]
    assert meter.failed_polls == 0 and meter.missed_slots == 0 and meter.status == "online"
    assert sched.devices["dead"].status == "offline"
    assert bus.guard_waits > 0


def test_probes_of_a_dead_device_go_after_the_slot_s_healthy_polls() -> None:
    """A backed-off device's probe is sent last, so its guard only costs idle line time."""
    _, bus, _ = run(guard_s=DEFAULT_NO_REPLY_GUARD_S)
    dead_probes = [e for e in bus.log if e.unit_id == 5]
    assert len(dead_probes) >= 4
    # After the first slot (where the device was not yet known dead) every probe of unit 5
    # follows the meter's read of the same slot.
    later = dead_probes[2:]
    for probe in later:
        before = [e for e in bus.log if e.at_s <= probe.at_s and e.unit_id == 37]
        assert before and probe.at_s - before[-1].at_s < 0.5


def test_the_meter_keeps_its_rate_when_the_dead_unit_has_the_higher_id() -> None:
    readings, bus, _ = run(guard_s=DEFAULT_NO_REPLY_GUARD_S, meter_unit=3)
    q = meter_qualities(readings)
    assert len(q) >= 55 and set(q) == {Quality.GOOD}
    assert bus.units[3].swallowed == 0

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
from edge_agent.runtime.scheduler import REFUSAL_RECHECK_FIRST_S, BusScheduler
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
    assert bus.units[37].missed_own > 0
    assert Quality.COMM_ERROR in q


@pytest.mark.parametrize("retries", [0, 1])
def test_with_the_default_guard_the_meter_behind_a_dead_unit_reads_good_every_slot(
        retries: int) -> None:
    readings, bus, sched = run(guard_s=DEFAULT_NO_REPLY_GUARD_S, retries=retries)
    q = meter_qualities(readings)
    assert len(q) >= 55  # a reading per one-second slot over 60 s
    assert set(q) == {Quality.GOOD}
    assert bus.units[37].missed_own == 0
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
    assert bus.units[3].missed_own == 0


# ---- refusals re-checked ------------------------------------------------------------------


def refusing_meter(refuse_until_s: float, seconds: float, poll_s: float = 1.0
                   ) -> tuple[list[Reading], BusScheduler, list[dict[str, object]], float]:
    """A meter that answers exception 2 to every read until ``refuse_until_s`` (booting)."""
    clock = SteppedClock(START)
    t0 = clock.monotonic()
    bus = FakeBus(clock, retries=1)
    pts = tuple(Point(name=f"p{i}", table=HR, address=i, type=DataType.UINT16, count=1)
                for i in range(5))
    unit = bus.unit(9).load(HR, 0, [1, 2, 3, 4, 5]).refuse(HR, 0, 5)
    healths: list[dict[str, object]] = []

    def exchange(_e: object) -> None:
        if unit.refusals and clock.monotonic() - t0 >= refuse_until_s:
            unit.refusals.clear()  # booted

    bus.on_exchange = exchange
    readings: list[Reading] = []
    cfg = DeviceConfig(name="water", bus="fake", unit_id=9, profile=DeviceProfile("w", "", pts),
                       poll_interval_s=poll_s, points=pts)
    sched = BusScheduler(bus, [cfg], readings.extend, clock)

    async def main() -> None:
        async with Polling(sched.run, clock) as polling:
            for step in range(int(seconds)):
                await polling.until(t0 + step + 1)
                healths.append(sched.devices["water"].health())

    asyncio.run(main())
    return readings, sched, healths, START


def test_a_device_refusing_while_it_boots_is_read_again_within_the_stated_bound(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="edge_agent.runtime.scheduler"):
        readings, _sched, healths, start = refusing_meter(refuse_until_s=1.5, seconds=45)
    p0 = [r for r in readings if r.point == "p0"]
    assert p0[0].quality is Quality.DEVICE_EXCEPTION
    first_good = next(r.ts_ms for r in p0 if r.quality is Quality.GOOD)
    print(f"refused until 1.5 s, read again at {first_good / 1000 - start:.2f} s")
    # Ready at 1.5 s; re-checked REFUSAL_RECHECK_FIRST_S after it was learned; one poll later.
    assert first_good / 1000 - start <= 1.5 + REFUSAL_RECHECK_FIRST_S + 1.0 + 1.0
    assert all(r.quality is Quality.GOOD for r in p0 if r.ts_ms >= first_good)
    refusing = [m for m in caplog.messages if "refuses" in m]
    assert len(refusing) == 1 and "water" in refusing[0] and "asked again in 30 s" in refusing[0]
    assert any("answers holding_register 0-4 again" in m for m in caplog.messages)
    # While every point was refused the device was not healthy; afterwards it is.
    assert healths[0]["status"] == "refusing" and healths[0]["refused"]
    assert healths[-1]["status"] == "online" and "refused" not in healths[-1]


def test_a_refusal_that_persists_is_rechecked_less_and_less_often() -> None:
    _, sched, healths, _ = refusing_meter(refuse_until_s=1e9, seconds=300)
    state = sched.devices["water"]
    # Re-checks at about 30, 90 and 210 s: three in 300 s, not one per poll.
    assert state.rechecks == 3
    assert all(h["status"] == "refusing" for h in healths)


def busy_line(probe_cost_s: float) -> tuple[BusScheduler, FakeBus]:
    """Polls every 0.25 s filling 40 % of the line, and a dead unit probed now and then."""
    clock = SteppedClock(START)
    bus = FakeBus(clock, retries=1, timeout_s=0.125, no_reply_guard_s=DEFAULT_NO_REPLY_GUARD_S)
    bus.unit(3).load(HR, 0, [7]).reply_s = 0.1
    sink: list[Reading] = []
    sched = BusScheduler(bus, [device("dead", 5, 0.25), device("meter", 3, 0.25)],
                         sink.extend, clock, probe_cost_s=probe_cost_s)

    async def main() -> None:
        async with Polling(sched.run, clock) as polling:
            await polling.until(clock.monotonic() + 60)

    asyncio.run(main())
    return sched, bus


def test_a_dead_device_s_probe_waits_for_a_slot_with_room_for_its_silence() -> None:
    naive, _ = busy_line(probe_cost_s=0.0)
    placed, bus = busy_line(probe_cost_s=0.125 + DEFAULT_NO_REPLY_GUARD_S)
    # Probed every half second, each probe's silence costs the meter slots...
    assert naive.devices["meter"].missed_slots > 20
    # ...held back until it has waited 20 probe costs, it costs a few.
    assert placed.devices["meter"].missed_slots <= naive.devices["meter"].missed_slots / 4
    probes = [e for e in bus.log if e.unit_id == 5]
    print(f"meter slots missed in 60 s: {naive.devices['meter'].missed_slots} with probes "
          f"every back-off, {placed.devices['meter'].missed_slots} with probes placed; "
          f"{len(probes)} requests to the dead unit")
    assert 3 <= len(probes) <= 12  # still probed: a replugged device is found

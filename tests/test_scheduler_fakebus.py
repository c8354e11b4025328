"""The bus scheduler against the scripted fake bus on a fake clock.

No simulator, no PTY, no sleeping: time moves only through the fake bus (each exchange
costs its reply time or timeout) and the stepped clock (the scheduler's waits), so every
assertion is about counts and orderings, never about how fast the host is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from itertools import pairwise

import pytest

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.modbus.transport import BusTransport, ModbusTransport
from edge_agent.drivers.model import Access, DataType, Point, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.scheduler import BusScheduler, WriteResult
from tests.support.fakebus import (
    DEFAULT_TIMEOUT_S,
    Exchange,
    FakeBus,
    NoAnswer,
    Polling,
    Refuse,
    Slow,
    SteppedClock,
)

HR = Table.HOLDING_REGISTER
# A quarter second past a whole second: slots must wait for the grid, not start at once.
START = 1_700_000_000.25
START_MS = 1_700_000_000_000


def reg(name: str, address: int, *, interval_s: float | None = None,
        writable: bool = False) -> Point:
    """A uint16 holding register point."""
    return Point(name=name, table=HR, address=address, type=DataType.UINT16, count=1,
                 interval_s=interval_s, access=Access.READ_WRITE if writable else Access.READ)


def device(name: str, unit_id: int, poll_s: float, *points: Point) -> DeviceConfig:
    """A device on the fake bus with ``points``."""
    return DeviceConfig(name=name, bus="fake", unit_id=unit_id,
                        profile=DeviceProfile(name, "", points), poll_interval_s=poll_s,
                        points=points)


def mono(wall_s: float) -> float:
    """The fake monotonic time at wall-clock second ``wall_s`` after START_MS."""
    return wall_s + START_MS / 1000 - START


class Rig:
    """A scheduler on a fake bus and a stepped clock, collecting what it reports."""

    def __init__(self, *devices: DeviceConfig, retries: int = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.clock = SteppedClock(START)
        self.bus = FakeBus(self.clock, retries=retries, timeout_s=timeout_s)
        self.readings: list[Reading] = []
        transport: ModbusTransport = self.bus
        self.sched = BusScheduler(transport, devices, self.readings.extend, self.clock)

    def of(self, point: str) -> list[Reading]:
        """The readings of one point, in the order the scheduler reported them."""
        return [r for r in self.readings if r.point == point]

    def run(self, body: Callable[[Polling], Awaitable[None]]) -> None:
        """Run ``body`` with the scheduler polling in the background."""
        async def main() -> None:
            async with Polling(self.sched.run, self.clock) as polling:
                await body(polling)
        asyncio.run(main())

    def run_until(self, wall_s: float) -> None:
        """Poll until the scheduler idles at wall-clock second ``wall_s`` after START_MS."""
        async def body(polling: Polling) -> None:
            await polling.until(mono(wall_s))
        self.run(body)


def marks(first_s: float, last_s: float, step_s: float) -> list[int]:
    """Wall-clock marks in ms from ``first_s`` to ``last_s`` (seconds after START_MS)."""
    n = round((last_s - first_s) / step_s)
    return [START_MS + round((first_s + i * step_s) * 1000) for i in range(n + 1)]


def test_bus_transport_is_a_modbus_transport() -> None:
    """The pymodbus transport satisfies the protocol the scheduler is written against."""
    implements: type[ModbusTransport] = BusTransport
    assert implements is BusTransport


# ---- the grid ---------------------------------------------------------------------------

def test_slots_and_timestamps_sit_on_the_grid_of_each_interval() -> None:
    rig = Rig(device("m", 1, 1.0, reg("a", 0), reg("b", 1), reg("slow", 40, interval_s=5.0)),
              device("n", 2, 2.0, reg("c", 0)))
    rig.bus.unit(1).load(HR, 0, range(50))
    rig.bus.unit(2).load(HR, 0, [7])
    rig.run_until(11.5)

    assert {r.quality for r in rig.readings} == {Quality.GOOD}
    assert [r.ts_ms for r in rig.of("a")] == marks(1, 11, 1)
    assert [r.ts_ms for r in rig.of("b")] == marks(1, 11, 1)
    # Every point is read in its device's first slot, then on its own grid.
    assert [r.ts_ms for r in rig.of("slow")] == [START_MS + 1000, *marks(5, 10, 5)]
    assert [r.ts_ms for r in rig.of("c")] == marks(2, 10, 2)
    # a and b share one read; the slow point 39 registers away is a read of its own.
    m_reads = rig.bus.sent(1, kind="read")
    assert [(e.address, e.count) for e in m_reads].count((0, 2)) == 11
    assert [(e.address, e.count) for e in m_reads].count((40, 1)) == 3
    assert len(rig.bus.sent(2)) == 5
    # Requests go out one at a time, in time order, never before their slot's mark; the
    # timestamp is the mark even though the reply came later.
    assert all(a.at_s <= b.at_s for a, b in pairwise(rig.bus.log))
    for e, r in zip([e for e in m_reads if e.address == 0], rig.of("a"), strict=True):
        assert mono(r.ts_ms / 1000 - START_MS / 1000) <= e.at_s
        assert e.at_s < mono(r.ts_ms / 1000 - START_MS / 1000 + 1)
    state = rig.sched.devices["m"]
    assert (state.polls, state.good_polls, state.missed_slots, state.skipped_slots) == (
        11, 11, 0, 0)


def test_slots_a_late_bus_has_passed_are_counted_as_missed_not_polled_in_a_burst() -> None:
    rig = Rig(device("m", 1, 1.0, reg("a", 0)))
    # The third poll's reply takes 3.5 s: marks 4 and 5 pass while the bus is busy.
    rig.bus.unit(1).load(HR, 0, [1]).then(Slow(0), Slow(0), Slow(3.5))
    rig.run_until(10.5)

    state = rig.sched.devices["m"]
    stamps = [r.ts_ms for r in rig.of("a")]
    # The late slot 6 is polled once, at once, and stamped with its own mark.
    assert stamps == [m for m in marks(1, 10, 1) if m not in marks(4, 5, 1)]
    assert (state.missed_slots, state.skipped_slots, state.polls) == (2, 0, 8)
    sent = [e.at_s for e in rig.bus.sent(1)]
    assert sent[3] == pytest.approx(mono(3) + 3.5, abs=0.01)  # slot 6 right after the slow one


def test_a_bus_always_late_polls_each_mark_at_most_once_and_counts_the_rest() -> None:
    # Four reads of 0.375 s each: one poll takes 1.5 s of a 1 s interval.
    points = [reg(f"p{i}", 100 * i) for i in range(4)]
    rig = Rig(device("slow", 1, 1.0, *points))
    unit = rig.bus.unit(1)
    unit.reply_s = 0.375
    for p in points:
        unit.load(HR, p.address, [1])
    rig.run_until(30.5)

    state = rig.sched.devices["slow"]
    stamps = [r.ts_ms for r in rig.of("p0")]
    assert len(stamps) == state.good_polls >= 18
    assert all(ts % 1000 == 0 for ts in stamps)
    # Never the same mark twice, never two marks passed over in a row (a poll is 1.5 marks).
    gaps = [(b - a) // 1000 for a, b in pairwise(stamps)]
    assert set(gaps) == {1, 2}
    # Every mark passed over was counted; the poll in progress at the horizon may have
    # counted one more already.
    assert state.missed_slots - sum(g - 1 for g in gaps) in (0, 1)
    assert state.skipped_slots == 0
    # No burst: each poll sent its four reads, and the bus never carried more.
    assert len(rig.bus.sent(1)) <= 4 * state.polls


# ---- dead devices -----------------------------------------------------------------------

@pytest.mark.parametrize(("dead", "first_poll_attempts"), [
    ("silent", 2),          # no answer: the configured retry is spent once
    ("gateway 0x0B", 1),    # a TCP gateway's "target failed to respond" is an answer
])
def test_a_dead_device_is_backed_off_without_slowing_the_others(
        dead: str, first_poll_attempts: int) -> None:
    rig = Rig(device("a", 1, 5.0, reg("x", 0)), device("dead", 2, 5.0, reg("y", 0)),
              device("b", 3, 5.0, reg("z", 0)), timeout_s=0.5, retries=1)
    for uid in (1, 2, 3):
        rig.bus.unit(uid).load(HR, 0, [uid])
    if dead == "silent":
        rig.bus.unit(2).silent = True
    else:
        rig.bus.unit(2).refuse_all = 0x0B
    slots = 60
    rig.run_until(5 * slots + 2.5)

    for name, uid in (("a", 1), ("b", 3)):
        healthy = rig.sched.devices[name]
        assert (healthy.good_polls, healthy.missed_slots, healthy.skipped_slots) == (
            slots, 0, 0)
        assert len(rig.bus.sent(uid)) == slots  # one read per slot, never a retry
        assert [r.quality for r in rig.of("x" if uid == 1 else "z")] == [Quality.GOOD] * slots
    gone = rig.sched.devices["dead"]
    assert gone.status == "offline" and gone.good_polls == 0
    assert gone.polls == 1 + gone.probes and gone.polls + gone.skipped_slots == slots
    # After the first poll, each probe is a single attempt.
    assert len(rig.bus.sent(2)) == first_poll_attempts + gone.probes
    # The back-off reaches its cap of two intervals (10 s, each delay drawn in [5, 10] s)
    # by the 4th failure: from then on at most every 2nd and at least every 3rd slot.
    assert (slots - 4) // 3 <= gone.probes <= 4 + (slots - 4) // 2
    assert {r.quality for r in rig.of("y")} == {Quality.COMM_ERROR}
    assert len(rig.of("y")) == gone.polls  # a skipped slot reports nothing new
    # In no slot after the first did the dead device cost the bus more than one attempt.
    dead_by_slot: dict[int, int] = {}
    for e in rig.bus.sent(2):
        slot = int((e.at_s - mono(5)) // 5)
        dead_by_slot[slot] = dead_by_slot.get(slot, 0) + 1
    assert dead_by_slot.pop(0) == first_poll_attempts
    assert set(dead_by_slot.values()) == {1}


def test_a_replugged_device_is_read_again_within_three_slots() -> None:
    rig = Rig(device("d", 1, 5.0, reg("y", 0)), timeout_s=0.5)
    unit = rig.bus.unit(1).load(HR, 0, [42])
    unit.silent = True

    async def body(polling: Polling) -> None:
        await polling.until(mono(102.5))
        unit.silent = False
        await polling.until(mono(117.5))

    rig.run(body)
    state = rig.sched.devices["d"]
    assert state.status == "online" and state.consecutive_failures == 0
    good = [r for r in rig.of("y") if r.quality is Quality.GOOD]
    assert good and good[0].ts_ms <= START_MS + 115_000 and good[0].value == 42


def test_a_device_that_answers_again_mid_probe_is_read_in_full() -> None:
    """A probe that is answered turns back into a normal poll: the rest is read too."""
    rig = Rig(device("d", 1, 5.0, reg("lo", 0), reg("hi", 100)), timeout_s=0.5, retries=1)
    unit = rig.bus.unit(1).load(HR, 0, [1]).load(HR, 100, [2])
    unit.then(NoAnswer(), NoAnswer())  # the first poll's read and its retry
    rig.run_until(62.5)

    state = rig.sched.devices["d"]
    assert state.failed_polls == 1 and state.status == "online"
    first_good = next(r.ts_ms for r in rig.of("lo") if r.quality is Quality.GOOD)
    assert [r.quality for r in rig.of("hi") if r.ts_ms == first_good] == [Quality.GOOD]


# ---- learned addresses ------------------------------------------------------------------

def test_rejected_addresses_are_learned_in_the_first_slot_and_never_sent_again() -> None:
    # Register 4 is missing from the device; 20-21 answer exception 2 although present.
    rig = Rig(device("m", 1, 1.0, reg("a", 0), reg("b", 1), reg("ghost", 4), reg("c", 8),
                     reg("d", 21), reg("e", 24)))
    unit = rig.bus.unit(1).load(HR, 0, range(4)).load(HR, 5, range(5, 30))
    unit.refuse(HR, 20, 22)
    slots = 12
    rig.run_until(slots + 0.5)

    second_slot = mono(2)
    exceptions = rig.bus.sent(1, outcome="exception")
    assert exceptions and all(e.at_s < second_slot for e in exceptions)
    assert {e.exception_code for e in exceptions} == {2}
    later = [e for e in rig.bus.sent(1) if e.at_s >= second_slot]
    assert not any(e.covers(HR, 4) or e.covers(HR, 20) or e.covers(HR, 21) for e in later)
    # Once learned, every slot costs the same reads.
    per_slot: dict[int, int] = {}
    for e in later:
        per_slot[int(e.at_s - second_slot)] = per_slot.get(int(e.at_s - second_slot), 0) + 1
    assert len(per_slot) == slots - 1 and len(set(per_slot.values())) == 1
    # The rejected points are reported as exception 2 in every slot, the others are good.
    for name in ("ghost", "d"):
        assert [(r.quality, r.exception_code) for r in rig.of(name)] == [
            (Quality.DEVICE_EXCEPTION, 2)] * slots
    for name in ("a", "b", "c", "e"):
        assert [r.quality for r in rig.of(name)] == [Quality.GOOD] * slots
    assert [r.value for r in rig.of("c")] == [8] * slots
    bad = rig.sched.devices["m"].bad
    assert bad.contains(HR, 4) and bad.contains(HR, 21)
    assert not any(bad.contains(HR, a) for a in (0, 1, 8, 24))


def test_a_block_boundary_is_learned_and_reads_split_there_from_then_on() -> None:
    rig = Rig(device("m", 1, 1.0, reg("p9", 9), reg("p10", 10)))
    rig.bus.unit(1).load(HR, 0, range(20)).wall(HR, 10)
    rig.run_until(10.5)

    assert len(rig.bus.sent(1, outcome="exception")) == 1  # the first read, never again
    assert rig.sched.devices["m"].bad.walls(HR) == [10]
    reads = [(e.address, e.count) for e in rig.bus.sent(1)]
    assert reads[0] == (9, 2)
    assert reads[1:] == [(9, 1), (10, 1)] * 10
    assert {r.quality for r in rig.readings} == {Quality.GOOD}


def test_other_exceptions_are_reported_and_teach_nothing() -> None:
    rig = Rig(device("m", 1, 1.0, reg("a", 0), reg("b", 1)))
    unit = rig.bus.unit(1).load(HR, 0, [5, 6])
    unit.then(Refuse(4), Refuse(6))  # device failure, then busy
    rig.run_until(5.5)

    assert [(r.quality, r.exception_code) for r in rig.of("a")][:3] == [
        (Quality.DEVICE_EXCEPTION, 4), (Quality.DEVICE_EXCEPTION, 6), (Quality.GOOD, None)]
    assert rig.sched.devices["m"].bad.empty
    assert rig.sched.devices["m"].status == "online"  # it answered: not a dead device
    assert [(e.address, e.count) for e in rig.bus.sent(1)] == [(0, 2)] * 5


# ---- writes -----------------------------------------------------------------------------

def test_a_write_asked_for_mid_slot_runs_after_that_slot_and_before_the_next() -> None:
    rig = Rig(device("m", 1, 1.0, reg("set", 0, writable=True)), device("n", 2, 1.0, reg("v", 0)))
    rig.bus.unit(1).load(HR, 0, [10])
    rig.bus.unit(2).load(HR, 0, [0])
    results: list[asyncio.Task[WriteResult]] = []

    def ask_on_third_read(_sent: Exchange) -> None:
        if len(rig.bus.sent(1)) == 3 and not results:
            results.append(asyncio.ensure_future(rig.sched.write("m", "set", 42)))

    rig.bus.on_exchange = ask_on_third_read
    rig.run_until(6.5)

    assert results and results[0].result() == WriteResult(True)
    kinds = [(e.unit_id, e.kind) for e in rig.bus.log]
    w = kinds.index((1, "write"))
    # Slot 3 read m then n; the write follows both; slot 4 starts with m again.
    assert kinds[w - 2:w + 2] == [(1, "read"), (2, "read"), (1, "write"), (1, "read")]
    assert kinds.count((1, "write")) == 1
    assert [r.value for r in rig.of("set")] == [10, 10, 10, 42, 42, 42]


def test_a_write_to_an_idle_scheduler_runs_at_once_between_polls() -> None:
    rig = Rig(device("m", 1, 10.0, reg("set", 0, writable=True)))
    rig.bus.unit(1).load(HR, 0, [1])
    outcomes: list[WriteResult] = []

    async def body(polling: Polling) -> None:
        await polling.until(mono(15))          # read at 10, idle until the slot at 20
        outcomes.append(await rig.sched.write("m", "set", 7))
        outcomes.append(await rig.sched.write("m", "set", 8))
        await polling.until(mono(25))

    rig.run(body)
    assert outcomes == [WriteResult(True), WriteResult(True)]
    log = rig.bus.log
    assert [(e.kind, e.at_s) for e in log[:3]] == [
        ("read", mono(10)), ("write", mono(15)), ("write", pytest.approx(mono(15), abs=0.1))]
    assert rig.bus.unit(1).value(HR, 0) == 8
    assert [r.value for r in rig.of("set")] == [1, 8]


def test_failed_writes_say_why_and_are_sent_once() -> None:
    rig = Rig(device("m", 1, 10.0, reg("set", 0, writable=True)),
              device("gone", 2, 10.0, reg("set", 0, writable=True)), retries=3)
    rig.bus.unit(1).load(HR, 0, [1]).then(Refuse(3))
    rig.bus.unit(2).silent = True
    outcomes: list[WriteResult] = []

    async def body(polling: Polling) -> None:
        await polling.until(mono(5))
        outcomes.append(await rig.sched.write("m", "set", 2))
        outcomes.append(await rig.sched.write("gone", "set", 2))

    rig.run(body)
    refused, silent = outcomes
    assert (refused.ok, refused.exception_code) == (False, 3)
    assert not silent.ok and "no reply" in silent.error and silent.exception_code is None
    assert len(rig.bus.sent(2, kind="write")) == 1  # a write is never repeated
    assert rig.bus.unit(1).value(HR, 0) == 1

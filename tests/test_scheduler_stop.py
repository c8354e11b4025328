"""The bus scheduler stops at its stop flag even when the cancel meant to stop it is swallowed.

On Python 3.11 pymodbus's ``asyncio.wait_for`` returns the reply and drops the caller's cancel
when both land in the same loop turn. ``SwallowingBus`` does that on purpose: a cancel that
reaches it during a read is answered with data as if it never came. With a cancel alone the
scheduler then polls on (the hang seen at stop and at config switches); with ``stop()`` it
sends no request after the one in flight and returns. Fake bus, stepped fake clock.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import Access, DataType, Point, ReadRequest, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.drivers.transport import Reply
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.agent import supervise
from edge_agent.runtime.lifecycle import Heartbeat
from edge_agent.runtime.scheduler import BusScheduler
from tests.support.fakebus import Exchange, FakeBus, SteppedClock

HR = Table.HOLDING_REGISTER
START = 1_700_000_000.25


class SwallowingBus(FakeBus):
    """A fake bus that answers a read even when the reader is cancelled during it."""

    swallowed = 0

    async def read_request(self, unit_id: int, request: ReadRequest, *,
                           attempts: int | None = None) -> Reply:
        """The fake bus's read; a cancel landing in it is dropped and the read answered."""
        try:
            return await super().read_request(unit_id, request, attempts=attempts)
        except asyncio.CancelledError:
            self.swallowed += 1
            return Reply(data=[0] * request.count)


def device(name: str, unit_id: int, *addresses: int) -> DeviceConfig:
    """A device polled every second with one uint16 point per address (far apart: one read each)."""
    points = tuple(Point(name=f"p{a}", table=HR, address=a, type=DataType.UINT16, count=1,
                         access=Access.READ) for a in addresses)
    return DeviceConfig(name=name, bus="fake", unit_id=unit_id,
                        profile=DeviceProfile(name, "", points), poll_interval_s=1.0,
                        points=points)


def rig() -> tuple[SteppedClock, SwallowingBus, BusScheduler, list[Reading]]:
    """Two devices of three reads each on a swallowing bus."""
    clock = SteppedClock(START)
    bus = SwallowingBus(clock, retries=0)
    for unit in (1, 2):
        bus.unit(unit).load(HR, 0, range(200))
    readings: list[Reading] = []
    sched = BusScheduler(bus, [device("a", 1, 0, 60, 120), device("b", 2, 0, 60, 120)],
                         readings.extend, clock, max_gap=0)
    return clock, bus, sched, readings


def cancel_at(bus: FakeBus, task: asyncio.Task[None], n: int,
              then: BusScheduler | None = None) -> None:
    """Cancel ``task`` (and stop ``then``) while the bus answers its ``n``-th request."""
    def hook(_e: Exchange) -> None:
        if len(bus.log) == n:
            if then is not None:
                then.stop()
            task.cancel()
    bus.on_exchange = hook


def test_a_swallowed_cancel_alone_leaves_the_scheduler_polling() -> None:
    # The hazard itself: this is what kept bus tasks polling after a stop.
    async def main() -> tuple[int, int, bool]:
        clock, bus, sched, _ = rig()
        task = asyncio.create_task(sched.run())
        cancel_at(bus, task, 4)
        await clock.run_to(clock.monotonic() + 10.5, task)
        sent, done = len(bus.log), task.done()
        task.cancel()  # a cancel landing while it sleeps is not swallowed
        with pytest.raises(asyncio.CancelledError):
            await task
        return bus.swallowed, sent, done

    swallowed, sent, done = asyncio.run(main())
    assert swallowed == 1 and not done
    assert sent > 4 * 6, sent  # it went on polling every device every second


def test_the_scheduler_stops_at_its_flag_even_when_its_cancel_is_swallowed() -> None:
    async def main() -> tuple[SwallowingBus, BusScheduler, list[Reading], float]:
        clock, bus, sched, readings = rig()
        sched.heartbeat = Heartbeat("bus:fake", clock, grace_s=1.0)
        task = asyncio.create_task(sched.run())
        # The 4th request is device b's first: stop and cancel while it is on the bus.
        cancel_at(bus, task, 4, then=sched)
        with pytest.raises(AssertionError, match="returned instead of idling"):
            await clock.run_to(clock.monotonic() + 10.5, task)
        assert task.done() and not task.cancelled()  # it ended on its flag, not the cancel
        return bus, sched, readings, sched.heartbeat.overdue_s()

    bus, _, readings, overdue = asyncio.run(main())
    assert bus.swallowed == 1
    # Not one request after the one in flight: device b's other two reads were never sent.
    assert len(bus.log) == 4
    assert [(e.unit_id, e.address) for e in bus.log] == [(1, 0), (1, 60), (1, 120), (2, 0)]
    # What was read before the stop is still reported: a's three points and b's first.
    assert sorted((r.device, r.point) for r in readings) == [
        ("a", "p0"), ("a", "p120"), ("a", "p60"), ("b", "p0")]
    assert overdue == 0.0  # a stopped poller rests: the watchdog does not wait for it


def test_a_write_queued_at_stop_is_refused_not_left_waiting() -> None:
    async def main() -> str:
        clock, _, sched, _ = rig()
        task = asyncio.create_task(sched.run())
        await clock.run_to(clock.monotonic() + 0.5, task)  # idle before the first slot
        sched.stop()
        write = asyncio.ensure_future(sched.write("a", "p0", 5))
        await asyncio.wait_for(task, 1.0)
        result = await asyncio.wait_for(write, 1.0)
        return result.error

    assert "stopping" in asyncio.run(main())


def test_a_supervisor_never_restarts_a_task_asked_to_cancel() -> None:
    # A library turning our cancel into its own exception must not earn a restart.
    calls: list[str] = []
    stubborn = [True]   # cleared once the test has its answer, so a failing run still ends

    async def wraps_the_cancel() -> None:
        calls.append("run")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not stubborn[0]:
                raise
            raise RuntimeError("connection aborted") from None

    async def swallows_the_cancel() -> None:
        calls.append("run")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not stubborn[0]:
                raise
            return

    async def main(factory: object) -> tuple[bool, dict[str, int]]:
        restarts: dict[str, int] = {}
        task = asyncio.create_task(supervise("t", factory, FakeClock(), restarts))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        ended = task.cancelled()
        stubborn[0] = False
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        return ended, restarts

    for factory in (wraps_the_cancel, swallows_the_cancel):
        calls.clear()
        stubborn[0] = True
        cancelled, restarts = asyncio.run(main(factory))
        assert cancelled and restarts == {} and calls == ["run"], (factory.__name__, calls)

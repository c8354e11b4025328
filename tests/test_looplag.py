"""The loop-lag monitor on a fake clock: stalls found, told apart by cause, logged once, shown.

``Clocks`` is a manual clock (wall, monotonic, boot time and process CPU) whose ``sleep`` can
be made to oversleep, as a blocked or paused loop does; ``FakeWitness`` stands for the thread
that keeps ticking while only the loop is blocked. No real time passes.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge_agent.runtime.looplag import (
    INTERVAL_S,
    LagMonitor,
    MissedSlots,
    Witness,
    classify,
)

START = 1_700_000_000.0


class Clocks:
    """Wall, monotonic, boot and CPU time moved by hand; a sleep oversleeps by ``late_s``."""

    def __init__(self) -> None:
        self.wall = START
        self.mono = 100.0
        self.boot = 100.0
        self.cpu = 1.0
        self.late_s = 0.0       # added to the next sleep (the loop did not run meanwhile)
        self.late_cpu_s = 0.0   # CPU used during that lateness
        self.late_gap_s: float | None = None   # the witness's gap over that lateness
        self.witness: FakeWitness | None = None
        self.late_ended_at: float | None = None   # wall time at the end of the late sleep
        self.sleeps = 0

    def now(self) -> float:
        """Wall time."""
        return self.wall

    def monotonic(self) -> float:
        """Monotonic time."""
        return self.mono

    def boottime(self) -> float:
        """CLOCK_BOOTTIME: monotonic plus time suspended."""
        return self.boot

    def cpu_time(self) -> float:
        """Process CPU seconds."""
        return self.cpu

    def move(self, seconds: float, *, cpu: float = 0.0) -> None:
        """Let ``seconds`` pass on every clock (``cpu`` of them used by the process)."""
        self.wall += seconds
        self.mono += seconds
        self.boot += seconds
        self.cpu += cpu

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, plus the lateness set up for this sleep."""
        self.move(seconds + self.late_s, cpu=self.late_cpu_s)
        if self.late_s:
            self.late_ended_at = self.wall
        if self.witness is not None and self.late_gap_s is not None:
            self.witness.gap = self.late_gap_s
        self.late_s = self.late_cpu_s = 0.0
        self.late_gap_s = None
        self.sleeps += 1
        await asyncio.sleep(0)


class FakeWitness(Witness):
    """The witness thread, reporting the gap a test tells it to."""

    def __init__(self) -> None:
        super().__init__()
        self.gap = INTERVAL_S / 2

    def start(self) -> None:
        """No thread."""

    def take_gap(self) -> float:
        """The gap set by the test, then back to a normal tick."""
        gap, self.gap = self.gap, INTERVAL_S / 2
        return gap


def monitor(clocks: Clocks, witness: FakeWitness | None = None) -> LagMonitor:
    """A monitor reading the manual clocks."""
    clocks.witness = witness
    return LagMonitor(clocks, boottime=clocks.boottime, cpu_time=clocks.cpu_time,
                      witness=witness)


def run_samples(mon: LagMonitor, clocks: Clocks, n: int,
                before: dict[int, tuple[float, float, float | None]]) -> None:
    """Let the sampler take ``n`` samples; before sample k, ``before[k]`` = (late, cpu, gap)."""
    async def main() -> None:
        task = asyncio.create_task(mon.run())
        await asyncio.sleep(0)
        for k in range(n):
            if k in before:
                clocks.late_s, clocks.late_cpu_s, clocks.late_gap_s = before[k]
            target = clocks.sleeps + 1
            while clocks.sleeps < target:
                await asyncio.sleep(0)
            await asyncio.sleep(0)   # let the sample after that sleep be taken
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_an_on_time_loop_shows_no_stall() -> None:
    clocks = Clocks()
    mon = monitor(clocks, FakeWitness())
    run_samples(mon, clocks, 20, {5: (0.2, 0.0, None)})
    st = mon.stats
    assert st.samples >= 19 and st.stalls == 0 and st.clock_steps == 0
    assert st.lag_worst_s == pytest.approx(0.2)
    health = mon.health()
    assert health["lag_ms_worst"] == 200.0 and health["last_stall"] is None


@pytest.mark.parametrize("late, cpu, gap, cause", [
    (7.0, 6.9, 7.0, "event loop blocked for at least 7.0 s (busy"),
    (7.0, 0.0, 0.25, "event loop blocked for at least 7.0 s (waiting"),
    (7.0, 0.0, 7.2, "process or VM paused for at least 7.0 s"),
])
def test_a_stall_is_logged_once_with_its_cause(late: float, cpu: float, gap: float,
                                               cause: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    clocks = Clocks()
    mon = monitor(clocks, FakeWitness())
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime.looplag"):
        run_samples(mon, clocks, 10, {4: (late, cpu, gap)})
    stalls = [r.getMessage() for r in caplog.records if "stall" in r.getMessage()]
    assert len(stalls) == 1 and cause in stalls[0], stalls
    st = mon.stats
    assert st.stalls == 1 and st.last_stall is not None and cause in st.last_stall.cause
    assert st.lag_worst_s == pytest.approx(late)
    health = mon.health()
    assert health["stalls"] == 1 and health["lag_ms_worst"] == pytest.approx(late * 1000)
    last = health["last_stall"]
    assert isinstance(last, dict) and cause in str(last["cause"])
    assert clocks.late_ended_at is not None
    assert last["at_ms"] == int(clocks.late_ended_at * 1000)  # stamped when it ended


def test_a_suspend_is_told_by_boot_time_and_a_clock_step_apart_from_lag(
        caplog: pytest.LogCaptureFixture) -> None:
    clocks = Clocks()
    mon = monitor(clocks)
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime.looplag"):
        # Suspended 60 s: boot and wall time move, monotonic does not.
        clocks.boot += 60
        clocks.wall += 60
        clocks.move(INTERVAL_S)
        suspend = mon.check()
        # Then NTP steps the wall clock back 30 s: no lag at all, but slots move.
        clocks.wall -= 30
        clocks.move(INTERVAL_S)
        assert mon.check() is None
    assert suspend is not None and suspend.cause.startswith("system suspended for 60.0 s")
    assert mon.stats.clock_steps == 1 and mon.stats.stalls == 1
    assert mon.stats.last_clock_step is not None
    assert mon.stats.last_clock_step.cause == "wall clock stepped -30.0 s"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("stall: system suspended" in m for m in messages) == 1
    assert sum("wall clock stepped -30.0 s" in m for m in messages) == 1


def test_missed_slots_are_explained_by_a_recent_stall_and_logged_as_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    clocks = Clocks()
    mon = monitor(clocks, FakeWitness())
    assert mon.explain() is None
    # A 7 s pause the sampler has not woken up to yet: the scheduler's question finds it.
    clocks.move(7.5)
    witness = mon.witness
    assert isinstance(witness, FakeWitness)
    witness.gap = 7.5
    cause = mon.explain()
    assert cause is not None and cause.startswith("process or VM paused for at least 7.0 s")
    clocks.move(INTERVAL_S)
    assert mon.explain() == cause          # still the cause of what is missed just after
    clocks.move(30)
    assert mon.explain() is not None       # the 30 s jump is a stall of its own ...
    clocks.move(INTERVAL_S)
    mon.check()
    clocks.move(20)
    mon.check()  # ... and 20 s later nothing recent explains new misses
    clocks.move(0.1)
    assert "paused" not in (mon.explain() or "")

    async def gather() -> None:
        missed = MissedSlots(delay_s=0.01)
        for i in range(40):
            missed.add(f"b{i:02d}", f"d{i:02d}", 7, cause)
        missed.add("b00", "d00", 1, "the bus is overloaded")
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime.looplag"):
        asyncio.run(gather())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("missed")]
    assert lines == [f"missed 280 poll slots of 40 devices on 40 buses: {cause}",
                     "missed 1 poll slots of 1 devices on 1 buses: the bus is overloaded"]


def test_the_classifier_needs_evidence_for_each_cause() -> None:
    assert classify(5, suspended_s=0, cpu_s=0, witness_gap_s=None).startswith("process or VM")
    assert "busy" in classify(5, suspended_s=0, cpu_s=3, witness_gap_s=5)
    assert "waiting" in classify(5, suspended_s=0, cpu_s=0, witness_gap_s=0.3)
    assert classify(5, suspended_s=20, cpu_s=5, witness_gap_s=0.3).startswith("system suspended")


def test_the_witness_thread_ticks_and_stops() -> None:
    import threading
    import time

    w = Witness(interval_s=0.01)
    w.start()
    time.sleep(0.1)
    assert w.take_gap() < 0.09
    w.stop()
    time.sleep(0.05)
    assert not any(t.name == "loop-witness" and t.is_alive() for t in threading.enumerate())


def test_a_witness_stopped_by_a_dying_monitor_starts_again() -> None:
    # A supervised monitor that crashed stops its witness on the way out (run's finally) and
    # starts it again when restarted: the witness must tick again, or every later stall would
    # read as a paused process.
    import threading
    import time

    w = Witness(interval_s=0.01)
    try:
        for _ in range(3):
            w.start()
            w.start()  # idempotent while ticking
            assert w.ticking
            alive = [t for t in threading.enumerate() if t.name == "loop-witness"
                     and t.is_alive()]
            assert len(alive) >= 1
            time.sleep(0.1)
            assert w.take_gap() < 0.09
            w.stop()
            assert not w.ticking
    finally:
        w.stop()
    time.sleep(0.05)
    assert not any(t.name == "loop-witness" and t.is_alive() for t in threading.enumerate())

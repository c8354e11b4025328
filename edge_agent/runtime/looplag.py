"""Visible stalls: how late the event loop runs, and whether the loop, the process or a clock moved.

A task sleeps a fixed interval and measures how late it woke (the loop's lag). A lag over the
threshold is a stall, logged once with its cause, read from what else moved meanwhile:

* CLOCK_BOOTTIME ran ahead of CLOCK_MONOTONIC: the machine was suspended;
* the process used CPU for most of the lag: a callback held the loop (event loop blocked);
* a witness thread kept ticking: the loop thread was blocked, e.g. on I/O (event loop blocked);
* nothing in the process ran: the process or its VM was paused (SIGSTOP, a VM pause, a host
  starving the guest).

The wall clock moving more or less than the monotonic one is a clock step (NTP, RTC), logged
on its own: slots are aligned on the wall clock, so it explains slots that were skipped.
``MissedSlots`` gathers the schedulers' missed slots for a moment and logs them as one line
per cause. Cost: one sleep and a few clock reads per interval, and a thread waking as often.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.protocol.clock import Clock, SystemClock

log = logging.getLogger(__name__)

INTERVAL_S = 0.5          # how often the lag is sampled
THRESHOLD_S = 1.0         # a lag (or clock step) above this is logged as a stall
RECENT_S = 10.0           # a stall this recent explains slots missed now
MISSED_LOG_DELAY_S = 1.0  # missed slots of every bus are gathered this long into one line


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Witness:
    """A thread ticking every ``interval_s``: its longest gap tells a paused process (it
    stopped too) from a blocked event loop (it kept ticking)."""

    def __init__(self, interval_s: float = INTERVAL_S / 2) -> None:
        self.interval_s = interval_s
        self._last = time.monotonic()
        self._worst_gap = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start ticking (a daemon thread; idempotent, and again after ``stop``: a restarted
        monitor needs its witness back)."""
        if self._thread is not None and self._thread.is_alive() and not self._stop.is_set():
            return
        # A fresh event per thread: one still winding down after stop() keeps its own, set.
        self._stop = threading.Event()
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                        name="loop-witness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking."""
        self._stop.set()

    @property
    def ticking(self) -> bool:
        """Whether the thread is running and not asked to stop."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            now = time.monotonic()
            self._worst_gap = max(self._worst_gap, now - self._last)
            self._last = now

    def take_gap(self) -> float:
        """The longest gap between ticks since the last call, the current one included."""
        gap = max(self._worst_gap, time.monotonic() - self._last)
        self._worst_gap = 0.0
        return gap


@dataclass(frozen=True, slots=True)
class Stall:
    """One stall: when it ended (wall ms), how long it was, and why."""

    at_ms: int
    lag_s: float
    cause: str

    def to_json(self) -> dict[str, object]:
        """As shown in health."""
        return {"at_ms": self.at_ms, "lag_s": round(self.lag_s, 3), "cause": self.cause}


def classify(lag_s: float, *, suspended_s: float, cpu_s: float, witness_gap_s: float | None,
             threshold_s: float = THRESHOLD_S) -> str:
    """The cause of a ``lag_s`` stall from what moved meanwhile (see the module docstring).

    The lag is how late the sampler woke: the stall itself was that long or up to one sample
    interval longer, hence "at least".
    """
    if suspended_s > threshold_s:
        return (f"system suspended for {suspended_s:.1f} s (CLOCK_BOOTTIME ran ahead of "
                f"CLOCK_MONOTONIC)")
    if cpu_s >= lag_s / 2:
        return (f"event loop blocked for at least {lag_s:.1f} s (busy: the process used "
                f"{cpu_s:.1f} s "
                f"of CPU meanwhile)")
    if witness_gap_s is not None and witness_gap_s < lag_s / 2:
        return (f"event loop blocked for at least {lag_s:.1f} s (waiting: the process ran, "
                f"the loop thread did not)")
    return (f"process or VM paused for at least {lag_s:.1f} s (nothing in the process ran: "
            f"SIGSTOP, a VM pause or a starved host)")


@dataclass
class LagStats:
    """What health shows of the loop: lag, stalls and clock steps."""

    samples: int = 0
    lag_last_s: float = 0.0
    lag_worst_s: float = 0.0
    stalls: int = 0
    last_stall: Stall | None = None
    clock_steps: int = 0
    last_clock_step: Stall | None = None


class LagMonitor:
    """Samples the loop's lag; a stall or clock step is logged once with its cause."""

    def __init__(self, clock: Clock | None = None, *, interval_s: float = INTERVAL_S,
                 threshold_s: float = THRESHOLD_S,
                 boottime: Callable[[], float] | None = _boottime,
                 cpu_time: Callable[[], float] = time.process_time,
                 witness: Witness | None = None) -> None:
        self.clock = clock or SystemClock()
        self.interval_s = interval_s
        self.threshold_s = threshold_s
        self._boottime = boottime
        self._cpu_time = cpu_time
        self.witness = witness
        self.stats = LagStats()
        self._mark()

    def _mark(self) -> None:
        self._mono = self.clock.monotonic()
        self._wall = self.clock.now()
        self._boot = self._boottime() if self._boottime is not None else self._mono
        self._cpu = self._cpu_time()

    async def run(self) -> None:
        """Sample forever (until cancelled)."""
        if self.witness is not None:
            self.witness.start()
        try:
            self._mark()
            while True:
                await self.clock.sleep(self.interval_s)
                self.check()
        finally:
            if self.witness is not None:
                self.witness.stop()

    def check(self) -> Stall | None:
        """Measure since the last check: the stall it found, if any (logged and counted)."""
        mono, wall = self.clock.monotonic(), self.clock.now()
        boot = self._boottime() if self._boottime is not None else mono
        cpu = self._cpu_time()
        mono_d, wall_d = mono - self._mono, wall - self._wall
        boot_d, cpu_d = boot - self._boot, cpu - self._cpu
        self._mono, self._wall, self._boot, self._cpu = mono, wall, boot, cpu
        st = self.stats
        # The sampler was due one interval after the last check: the rest is lag. A check
        # made sooner (a scheduler asking why it is late) finds no lag of its own.
        lag = max(0.0, mono_d - self.interval_s)
        suspended = boot_d - mono_d
        st.samples += 1
        st.lag_last_s = lag
        st.lag_worst_s = max(st.lag_worst_s, lag)
        # Read every time, so the gap is this window's and not one from long ago.
        gap = self.witness.take_gap() if self.witness is not None else None
        step = wall_d - mono_d - max(0.0, suspended)  # the wall clock follows boot time
        if abs(step) > self.threshold_s:
            st.clock_steps += 1
            st.last_clock_step = Stall(int(wall * 1000), step,
                                       f"wall clock stepped {step:+.1f} s")
            log.warning("wall clock stepped %+.1f s (monotonic moved %.1f s meanwhile); slots "
                        "follow the wall clock", step, mono_d)
        if lag <= self.threshold_s and suspended <= self.threshold_s:
            return None
        stall = Stall(int(wall * 1000), max(lag, suspended),
                      classify(lag, suspended_s=suspended, cpu_s=cpu_d, witness_gap_s=gap,
                               threshold_s=self.threshold_s))
        st.stalls += 1
        st.last_stall = stall
        log.warning("stall: %s", stall.cause)
        return stall

    def explain(self, within_s: float = RECENT_S) -> str | None:
        """The cause of a stall or clock step in the last ``within_s`` (checking now first)."""
        self.check()
        now_ms = int(self.clock.now() * 1000)
        recent = [s for s in (self.stats.last_stall, self.stats.last_clock_step)
                  if s is not None and now_ms - s.at_ms <= within_s * 1000]
        return max(recent, key=lambda s: s.at_ms).cause if recent else None

    def health(self) -> dict[str, object]:
        """The loop's part of the health document."""
        st = self.stats
        return {"lag_ms_last": round(st.lag_last_s * 1000, 1),
                "lag_ms_worst": round(st.lag_worst_s * 1000, 1), "stalls": st.stalls,
                "last_stall": st.last_stall.to_json() if st.last_stall else None,
                "clock_steps": st.clock_steps,
                "last_clock_step": st.last_clock_step.to_json() if st.last_clock_step else None}


@dataclass
class _Missed:
    slots: int = 0
    devices: set[str] = field(default_factory=set)
    buses: set[str] = field(default_factory=set)


class MissedSlots:
    """Gathers missed slots for a moment and logs one line per cause (a pause hits every bus)."""

    def __init__(self, delay_s: float = MISSED_LOG_DELAY_S) -> None:
        self.delay_s = delay_s
        self._pending: dict[str, _Missed] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, bus: str, device: str, slots: int, cause: str) -> None:
        """Note ``slots`` missed slots of ``device`` on ``bus`` and why."""
        m = self._pending.setdefault(cause, _Missed())
        m.slots += slots
        m.devices.add(device)
        m.buses.add(bus)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self.flush)

    def flush(self) -> None:
        """Log what was gathered."""
        self._timer = None
        pending, self._pending = self._pending, {}
        for cause, m in pending.items():
            log.warning("missed %d poll slots of %d devices on %d buses: %s", m.slots,
                        len(m.devices), len(m.buses), cause)

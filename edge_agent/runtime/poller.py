"""Polling one bus, whatever protocol runs on it: grid slots, writes between polls, back-off.

A point with a 5 s interval is read on the 5 s marks of the wall clock, so its timestamps
are regular (they are the slot's mark, not the moment the reply arrived; the latency is
reported in health). A device that stops answering is backed off exponentially with
jitter up to a cap, and while backed off only a single one-attempt probe is sent when its
back-off ends, so it costs the healthy devices on the bus at most one timeout per probe.
The cap is two of the device's poll intervals (at most 60 s), so a replugged device is
read again within two poll cycles. A probe goes after the slot's other polls; on a Modbus
line its silence (timeout, then the no-reply guard) can outlast the room before the next
slot, and then the probe waits for a slot with room, for at most ``PROBE_DEFER_FACTOR``
probe costs (12 s at the default guard), so a dead device cannot eat a fast line's slots.

``BusPoller`` is that part, shared by every field protocol; a protocol's scheduler
(``scheduler.BusScheduler`` for Modbus, ``meter_scheduler.MeterScheduler`` for DL/T 645)
adds how one device is read (``poll_device``) and written (``write_now``).

Stopping is cooperative as well as by cancel: ``stop`` sets a flag checked before every
request, so a poller whose cancel was lost still stops after the request in flight. Before
each request and each sleep the poller beats its ``Heartbeat`` with a promise of when it
will beat again, which the gateway's watchdog holds it to.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.transport import BusStats, Reply
from edge_agent.protocol.backoff import BackoffPolicy
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.readings import Reading, Value
from edge_agent.protocol.tasks import sleep_or_event
from edge_agent.runtime.devstate import DEVICE_BACKOFF, DeviceState
from edge_agent.runtime.lifecycle import Heartbeat
from edge_agent.runtime.writes import Guard, WriteJob, WriteResult

__all__ = ["DEVICE_BACKOFF", "BusPoller", "DeviceState", "Guard", "Step", "WriteJob",
           "WriteResult"]

log = logging.getLogger(__name__)

# A due probe of a dead device whose silence (timeout, then the no-reply guard) would run
# into the next slot waits for a slot with room for it, for at most this many probe costs.
PROBE_DEFER_FACTOR = 20


class PolledPoint(Protocol):
    """What the poller needs of a point, whatever its protocol."""

    @property
    def name(self) -> str: ...

    @property
    def interval_s(self) -> float | None: ...


class BusLine(Protocol):
    """What the poller needs of a transport beyond its protocol's requests."""

    @property
    def stats(self) -> BusStats: ...

    @property
    def connected(self) -> bool: ...

    def describe(self) -> str: ...


P = TypeVar("P", bound=PolledPoint)
T = TypeVar("T", bound=BusLine)
R = TypeVar("R")  # a protocol's planned read request


class Step(NamedTuple, Generic[R]):
    """What one reply of a poll gave: its readings, and what to send next."""

    readings: list[Reading]
    resend: Sequence[R] = ()   # sent before the rest of the poll's requests
    answered: bool = True      # the device answered (data or a refusal): it is alive


def interval_groups(points: Sequence[P], poll_interval_s: float) -> dict[int, tuple[P, ...]]:
    """Points grouped by their polling interval in milliseconds."""
    groups: dict[int, list[P]] = {}
    for p in points:
        ms = round((p.interval_s or poll_interval_s) * 1000)
        groups.setdefault(ms, []).append(p)
    return {ms: tuple(pts) for ms, pts in sorted(groups.items())}


def next_mark_ms(now_ms: int, interval_ms: int) -> int:
    """The first grid mark strictly after ``now_ms``."""
    return (now_ms // interval_ms + 1) * interval_ms


class BusPoller(Generic[P, T]):
    """Polls every device of one bus through its transport and hands readings to ``sink``."""

    def __init__(
        self,
        transport: T,
        devices: Sequence[DeviceConfig],
        points_of: Callable[[DeviceConfig], Sequence[P]],
        sink: Callable[[list[Reading]], None],
        clock: Clock,
        *,
        backoff: BackoffPolicy | None = None,
        seed: int = 0,
        heartbeat: Heartbeat | None = None,
        request_budget_s: float = 30.0,
        on_missed: Callable[[str, int, float], None] | None = None,
        on_status: Callable[[str, str], None] | None = None,
        probe_cost_s: float = 0.0,
    ) -> None:
        self.transport = transport
        # Line time one unanswered request holds the bus (timeout and no-reply guard).
        self.probe_cost_s = probe_cost_s
        self.heartbeat = heartbeat
        # The longest one request may take (every attempt timing out): the promise a
        # heartbeat makes before each request.
        self.request_budget_s = request_budget_s
        # (device, slots missed, seconds the slot's polls took): the agent logs it with a cause.
        self.on_missed = on_missed
        # (device, "online" | "offline") when a device's status changes: the Sparkplug births
        # and deaths follow it.
        self.on_status = on_status
        self.stopping = False
        self.sink = sink
        self.clock = clock
        self.backoff = backoff or DEVICE_BACKOFF
        self.rng = random.Random(seed)
        self._groups = {d.name: interval_groups(points_of(d), d.poll_interval_s)
                        for d in devices}
        self.devices = {d.name: DeviceState(d, self._device_backoff(min(self._groups[d.name])))
                        for d in devices}
        self._writes: asyncio.Queue[WriteJob] = asyncio.Queue()
        self._wake = asyncio.Event()
        now_ms = int(clock.now() * 1000)
        # (device, interval_ms) -> next slot's mark in wall-clock ms. Every point is read in
        # the device's first slot, so slow points (a 15-minute counter) show up at start.
        self._due: dict[tuple[str, int], int] = {
            (name, ms): next_mark_ms(now_ms, min(groups))
            for name, groups in self._groups.items() for ms in groups
        }

    def _device_backoff(self, fastest_ms: int) -> BackoffPolicy:
        """The bus's back-off, capped at two of the device's fastest poll intervals."""
        cap = min(self.backoff.cap_s, 2 * fastest_ms / 1000)
        return BackoffPolicy(base_s=min(self.backoff.base_s, cap), cap_s=cap,
                             jitter=self.backoff.jitter)

    def stop(self) -> None:
        """Stop after the request in flight, even if a cancel never arrives (or was lost)."""
        self.stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Poll until ``stop`` (or a cancel), running queued writes between polls."""
        try:
            while not self.stopping:
                await self._run_writes()
                mark = min(self._due.values()) if self._due else None
                wait_s = 3600.0 if mark is None else mark / 1000 - self.clock.now()
                if wait_s > 0 and not await self._sleep_or_wake(wait_s):
                    continue  # woken by a write (or the stop): handle it, then wait again
                if mark is not None and not self.stopping:
                    await self.run_slot(mark)
        finally:
            if self.stopping:
                if self.heartbeat is not None:
                    self.heartbeat.rest()
                while not self._writes.empty():
                    job = self._writes.get_nowait()
                    if not job.done.done():
                        job.done.set_result(WriteResult(False, "the bus is stopping"))

    def _beat(self, next_within_s: float) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat(next_within_s)

    async def _sleep_or_wake(self, seconds: float) -> bool:
        """Sleep on the clock; False if a write command (or ``stop``) woke us first."""
        self._beat(seconds)
        slept = await sleep_or_event(self.clock.sleep, seconds, self._wake)
        self._wake.clear()
        return slept

    async def write(self, device: str, point: str, value: Value, *, guard: Guard | None = None,
                    verify: bool = False) -> WriteResult:
        """Write ``value`` to a read-write point; runs on this bus between two polls, after
        ``guard``'s fresh read allowed it, and read back when ``verify``."""
        state = self.devices.get(device)
        if state is None:
            return WriteResult(False, f"no device {device!r} on this bus")
        names = [p.name for groups in self._groups[device].values() for p in groups]
        if point not in names:
            return WriteResult(False, f"device {device!r} has no point {point!r}")
        done: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        await self._writes.put(WriteJob(device, point, value, done, guard, verify))
        self._wake.set()
        return await done

    async def _run_writes(self) -> None:
        while not self._writes.empty() and not self.stopping:
            self._beat(self.request_budget_s)
            job = self._writes.get_nowait()
            if not job.done.done():
                job.done.set_result(await self.write_now(job))

    async def write_now(self, job: WriteJob) -> WriteResult:
        """Carry out one write on the bus (the protocol's scheduler says how)."""
        raise NotImplementedError

    async def poll_device(self, state: DeviceState, points: Sequence[P], ts_ms: int,
                          key: tuple[int, ...] | None = None) -> None:
        """Read the due points of one device (the protocol's scheduler says how)."""
        raise NotImplementedError

    async def exchange(self, state: DeviceState, requests: Sequence[R],
                       read: Callable[[R, int | None], Awaitable[Reply]],
                       on_reply: Callable[[R, Reply], Step[R] | None],
                       fail: Callable[[Sequence[R]], list[Reading]], ts_ms: int,
                       readings: list[Reading]) -> str | None:
        """Send one poll's requests in turn and record the poll; hand ``readings`` to the sink.

        ``on_reply`` says what a reply gave and what to send next, or None for no answer: then
        the rest would time out too, so the rest fail (``fail``) and the device's poll ends.
        A backed-off device's probe goes with one attempt until the device answers. Returns
        the communication error ("" if it answered), or None if the poller stopped between
        requests (what was read so far is still reported).
        """
        probing = state.consecutive_failures > 0
        queue: deque[R] = deque(requests)
        state.polls += 1
        if probing:
            state.probes += 1
        latency, comm_error = 0.0, ""
        while queue:
            if self.stopping:
                if readings:
                    self.sink(readings)
                return None
            self._beat(self.request_budget_s)
            req = queue.popleft()
            reply = await read(req, 1 if probing else None)
            latency += reply.latency_s
            step = on_reply(req, reply)
            if step is None:
                comm_error = reply.error or (
                    "no reply" if reply.exception_code is None
                    else f"gateway exception {reply.exception_code}: no reply")
                readings += fail([req, *queue])
                break
            readings += step.readings
            queue.extendleft(reversed(step.resend))
            probing = probing and not step.answered
        self.record(state, comm_error, latency, ts_ms)
        if readings:
            self.sink(readings)
        return comm_error

    async def run_slot(self, mark: int) -> None:
        """Poll every device group due at ``mark``, then schedule their next slots."""
        due = [key for key, at in self._due.items() if at == mark]
        by_device: dict[str, list[int]] = {}
        # Devices that answer first, then the probes of those that do not: an unanswered
        # request keeps the line silent for its timeout and the no-reply guard, which after
        # the slot's last request costs nothing but idle line time.
        for name, ms in sorted(due, key=lambda k: self.devices[k[0]].consecutive_failures > 0):
            by_device.setdefault(name, []).append(ms)
        started = self.clock.monotonic()
        for name, intervals in by_device.items():
            if self.stopping:
                return
            if self._defer_probe(self.devices[name], mark, due):
                continue
            points = [p for ms in intervals for p in self._groups[name][ms]]
            await self.poll_device(self.devices[name], points, mark, tuple(intervals))
        now_ms = int(self.clock.now() * 1000)
        for key in due:
            ms = key[1]
            nxt = next_mark_ms(mark, ms)
            if nxt + ms <= now_ms:
                # A whole interval late: drop the missed slots instead of bursting.
                latest = next_mark_ms(now_ms - ms, ms)
                missed = (latest - nxt) // ms
                self.devices[key[0]].missed_slots += missed
                if self.on_missed is not None:
                    self.on_missed(key[0], missed, self.clock.monotonic() - started)
                nxt = latest
            self._due[key] = nxt

    def _defer_probe(self, state: DeviceState, mark: int, due: list[tuple[str, int]]) -> bool:
        """True (and counted) when a dead device's due probe would make the next slot late.

        Its silence costs ``probe_cost_s``; sent when the line is idle until the next slot it
        costs nobody anything. On a line with no such room it goes out anyway once it has
        waited ``PROBE_DEFER_FACTOR`` probe costs, so a replugged device is still found.
        """
        if state.consecutive_failures == 0 or not self.probe_cost_s:
            return False
        now_mono = self.clock.monotonic()
        if now_mono < state.retry_at_monotonic:
            return False  # not due: skip_backed_off counts it
        if now_mono >= state.retry_at_monotonic + PROBE_DEFER_FACTOR * self.probe_cost_s:
            return False
        due_keys = set(due)
        upcoming = [at for key, at in self._due.items() if key not in due_keys]
        upcoming += [next_mark_ms(mark, ms) for _, ms in due]
        room_s = min(upcoming) / 1000 - self.clock.now()
        if room_s >= self.probe_cost_s:
            return False
        state.skipped_slots += 1
        return True

    def skip_backed_off(self, state: DeviceState) -> bool:
        """True (and counted) when a backed-off device's probe is not due yet."""
        if state.consecutive_failures > 0 and self.clock.monotonic() < state.retry_at_monotonic:
            state.skipped_slots += 1
            return True
        return False

    def record(self, state: DeviceState, comm_error: str, latency_s: float, ts_ms: int) -> None:
        """Count a poll's outcome; a poll with no answer backs the device off."""
        if comm_error:
            state.failed_polls += 1
            state.consecutive_failures += 1
            state.last_error = comm_error
            delay = state.backoff.delay(state.consecutive_failures, self.rng)
            state.retry_at_monotonic = self.clock.monotonic() + delay
            if state.status != "offline":
                log.warning("device %s (%s on %s) stopped answering: %s; its points read "
                            "comm_error and it is probed again in %.1f s, then less often "
                            "(at most every %.0f s) until it answers", state.cfg.name,
                            _where(state.cfg), self.transport.describe(), comm_error, delay,
                            state.backoff.cap_s)
            self._set_status(state, "offline")
            return
        if state.status == "offline":
            log.info("device %s (%s on %s) answers again after %d failed polls",
                     state.cfg.name, _where(state.cfg), self.transport.describe(),
                     state.consecutive_failures)
        self._set_status(state, "online")
        state.consecutive_failures = 0
        state.good_polls += 1
        state.last_good_ms = ts_ms
        ms = latency_s * 1000
        state.latency_ms_last = ms
        state.latency_ms_max = max(state.latency_ms_max, ms)
        state.latency_ms_sum += ms

    def _set_status(self, state: DeviceState, status: str) -> None:
        if state.status != status:
            state.status = status
            if self.on_status is not None:
                self.on_status(state.cfg.name, status)


def _where(cfg: DeviceConfig) -> str:
    return f"address {cfg.address}" if cfg.address else f"unit {cfg.unit_id}"

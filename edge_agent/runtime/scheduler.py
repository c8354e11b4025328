"""Polling one Modbus bus: read plans from the planner, decoded replies, refusals learned.

The protocol-neutral part (grid-aligned slots, writes between polls, dead devices backed off,
stop and heartbeat) is ``poller.BusPoller``; this module adds how one Modbus device is read
and written.

The bus is any ``ModbusTransport``: the pymodbus ``BusTransport`` in the product, a
scripted fake bus on a fake clock in tests. What an exception-2 reply teaches about the
device's addresses, and what to ask instead, is the planner's ``after_reply``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.modbus.decode import decode_request, encode_write, failed_readings
from edge_agent.drivers.modbus.planner import (
    ILLEGAL_DATA_ADDRESS,
    BadRanges,
    after_reply,
    plan_reads,
)
from edge_agent.drivers.modbus.transport import ModbusTransport, WriteRequest
from edge_agent.drivers.model import Point, ReadRequest, Table
from edge_agent.drivers.transport import Reply
from edge_agent.protocol.backoff import BackoffPolicy
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.readings import Quality, Reading, Value
from edge_agent.runtime.holes import HoleStore, describe_ranges
from edge_agent.runtime.lifecycle import Heartbeat
from edge_agent.runtime.poller import DEVICE_BACKOFF as DEVICE_BACKOFF
from edge_agent.runtime.poller import BusPoller, Step, WriteJob
from edge_agent.runtime.poller import DeviceState as DeviceState
from edge_agent.runtime.poller import WriteResult as WriteResult
from edge_agent.runtime.poller import interval_groups as _interval_groups
from edge_agent.runtime.poller import next_mark_ms as next_mark_ms

log = logging.getLogger(__name__)

# A refused address range (exception 2) is asked again after 30 s, then 60, 120 ... s, at
# most every 15 minutes while it stays refused: a meter that refuses registers while it
# boots is read again within 30 s of the refusal plus one poll interval (docs/config.md).
REFUSAL_RECHECK_FIRST_S = 30.0
REFUSAL_RECHECK_CAP_S = 900.0

# Exceptions 0x0A and 0x0B come from a TCP gateway whose serial device did not answer
# (section 7): for us the device is silent, not answering with an exception.
GATEWAY_NO_ANSWER = frozenset({0x0A, 0x0B})


def interval_groups(device: DeviceConfig) -> dict[int, tuple[Point, ...]]:
    """Points of a device grouped by their polling interval in milliseconds."""
    return _interval_groups(device.points, device.poll_interval_s)


class BusScheduler(BusPoller[Point, ModbusTransport]):
    """Polls every Modbus device of one bus through its transport and hands readings to ``sink``."""

    def __init__(
        self,
        transport: ModbusTransport,
        devices: Sequence[DeviceConfig],
        sink: Callable[[list[Reading]], None],
        clock: Clock,
        *,
        max_gap: int = 16,
        backoff: BackoffPolicy | None = None,
        seed: int = 0,
        heartbeat: Heartbeat | None = None,
        request_budget_s: float = 30.0,
        on_missed: Callable[[str, int, float], None] | None = None,
        on_status: Callable[[str, str], None] | None = None,
        probe_cost_s: float = 0.0,
        holes: HoleStore | None = None,
    ) -> None:
        super().__init__(transport, devices, lambda d: d.points, sink, clock, backoff=backoff,
                         seed=seed, heartbeat=heartbeat, request_budget_s=request_budget_s,
                         on_missed=on_missed, on_status=on_status, probe_cost_s=probe_cost_s)
        self.max_gap = max_gap
        self._plans: dict[tuple[str, tuple[int, ...]], list[ReadRequest]] = {}
        self.holes = holes
        if holes is not None:
            for state in self.devices.values():
                self._restore_holes(state, holes)

    def _restore_holes(self, state: DeviceState, holes: HoleStore) -> None:
        """Start from the holes this device refused before the restart; re-ask them soon."""
        cfg = state.cfg
        stored = holes.get(cfg.name, cfg.bus, cfg.unit_id)
        if stored is None:
            return
        for table, start, end in stored.ranges:
            state.bad.mark_bad(ReadRequest(Table(table), start, end - start, ()))
        state.refused = stored.ranges
        state.recheck_delay_s = REFUSAL_RECHECK_FIRST_S
        state.recheck_at_monotonic = self.clock.monotonic() + REFUSAL_RECHECK_FIRST_S
        state.all_refused = bool(cfg.points) and all(state.bad.is_point_bad(p)
                                                     for p in cfg.points)
        log.warning("device %s (unit %d on %s) refused %s before the restart: those points "
                    "read device_exception until they are asked again in %.0f s",
                    cfg.name, cfg.unit_id, self.transport.describe(),
                    describe_ranges(stored.ranges), REFUSAL_RECHECK_FIRST_S)

    async def write_now(self, job: WriteJob) -> WriteResult:
        """Carry out one write (function 5/6/15/16 by the point's table), once: after its
        guard's fresh read allowed it, and read back when asked (``writes``)."""
        state = self.devices[job.device]
        point = next(p for p in state.cfg.points if p.name == job.point)
        try:
            data = encode_write(point, job.value)
        except ValueError as exc:
            return WriteResult(False, f"{job.device}.{exc}")
        if job.guard is not None:
            seen, error = await self._read_fresh(state, job.guard.points)
            if error:
                return WriteResult(False, f"interlock check: {error}")
            refusal = job.guard.check(seen)
            if refusal is not None:
                return WriteResult(False, refused=refusal)
        reply = await self.transport.write_request(
            state.cfg.unit_id, WriteRequest(point.table, point.address, tuple(data)))
        if reply.exception_code is not None:
            return WriteResult(False, f"device answered exception {reply.exception_code}",
                               reply.exception_code)
        if reply.error is not None:
            return WriteResult(False, reply.error)
        log.info("wrote %s.%s = %r", job.device, job.point, job.value)
        if not job.verify:
            return WriteResult(True)
        back, error = await self._read_fresh(state, (job.point,))
        if error:
            return WriteResult(False, f"written, but the read-back failed: {error}")
        value = back[job.point]
        if value != job.value:
            return WriteResult(False, f"wrote {job.value!r} but read back {value!r}",
                               readback=value)
        return WriteResult(True, readback=value)

    async def _read_fresh(self, state: DeviceState,
                          names: Sequence[str]) -> tuple[dict[str, Value], str]:
        """Read ``names`` of a device now (not from the last poll): values, or an error."""
        points = [p for p in state.cfg.points if p.name in names]
        missing = set(names) - {p.name for p in points}
        if missing:
            return {}, f"device {state.cfg.name} has no point {sorted(missing)[0]!r}"
        seen: dict[str, Value] = {}
        for req in plan_reads(points, max_gap=0):
            self._beat(self.request_budget_s)
            reply = await self.transport.read_request(state.cfg.unit_id, req)
            if reply.data is None:
                why = (f"exception {reply.exception_code}" if reply.exception_code is not None
                       else reply.error or "no reply")
                return {}, f"reading {', '.join(p.name for p in req.points)}: {why}"
            for r in decode_request(req, reply.data, device=state.cfg.name, ts_ms=0):
                if r.value is None:
                    return {}, f"reading {r.point}: {r.quality}"
                seen[r.point] = r.value
        return seen, ""

    def _plan(self, state: DeviceState, points: Sequence[Point],
              key: tuple[int, ...] | None) -> list[ReadRequest]:
        # A device with nothing learned plans the same every time for the same intervals.
        if key is None or not state.bad.empty:
            return plan_reads(points, max_gap=self.max_gap, bad=state.bad)
        cached = self._plans.get((state.cfg.name, key))
        if cached is None:
            cached = self._plans[(state.cfg.name, key)] = plan_reads(points,
                                                                     max_gap=self.max_gap)
        return cached

    async def poll_device(self, state: DeviceState, points: Sequence[Point], ts_ms: int,
                          key: tuple[int, ...] | None = None) -> None:
        """Read the due points of one device (or probe it if it is backed off).

        ``key`` names the interval groups ``points`` came from, so their plan can be reused.
        """
        if self.skip_backed_off(state):
            return
        device = state.cfg.name
        readings: list[Reading] = []
        if state.refused and self.clock.monotonic() >= state.recheck_at_monotonic:
            # Ask again: a device refuses registers while booting, updating or locked.
            state.bad = BadRanges()
            state.rechecks += 1
        if not state.bad.empty:
            known_bad = [p for p in points if state.bad.is_point_bad(p)]
            if known_bad:
                readings += failed_readings(known_bad, Quality.DEVICE_EXCEPTION, device=device,
                                            ts_ms=ts_ms, exception_code=ILLEGAL_DATA_ADDRESS)
                points = [p for p in points if not state.bad.is_point_bad(p)]
        unit = state.cfg.unit_id

        def on_reply(req: ReadRequest, reply: Reply) -> Step[ReadRequest] | None:
            follow = after_reply(state.bad, req, reply)
            if reply.data is not None:
                return Step(decode_request(req, reply.data, device=device, ts_ms=ts_ms))
            if follow.resend or follow.rejected:  # exception 2: halves to send, or bad points
                return Step(failed_readings(follow.rejected, Quality.DEVICE_EXCEPTION,
                                            device=device, ts_ms=ts_ms,
                                            exception_code=ILLEGAL_DATA_ADDRESS),
                            follow.resend, answered=False)
            if reply.exception_code is not None and reply.exception_code not in GATEWAY_NO_ANSWER:
                return Step(failed_readings(req.points, Quality.DEVICE_EXCEPTION, device=device,
                                            ts_ms=ts_ms, exception_code=reply.exception_code),
                            answered=False)
            return None

        comm_error = await self.exchange(
            state, self._plan(state, points, key),
            lambda req, attempts: self.transport.read_request(unit, req, attempts=attempts),
            on_reply, lambda rest: failed_readings([p for r in rest for p in r.points],
                                                   Quality.COMM_ERROR, device=device,
                                                   ts_ms=ts_ms), ts_ms, readings)
        if comm_error == "":
            self._note_refusals(state)

    def _note_refusals(self, state: DeviceState) -> None:
        """Log newly refused ranges once, schedule the next re-check, judge all-refused."""
        learned = frozenset((t.value, a, b) for t in Table for a, b in state.bad.ranges(t))
        now = self.clock.monotonic()
        new = learned - state.refused
        if new:
            # A refused gap between points only stops reads spanning it; refused points matter.
            hit = sorted(p.name for p in state.cfg.points if any(
                p.table.value == t and p.address < b and a < p.end for t, a, b in new))
            log.log(logging.WARNING if hit else logging.INFO,
                    "device %s (unit %d on %s) refuses %s (exception 2, illegal data address): "
                    "%s; asked again in %.0f s", state.cfg.name, state.cfg.unit_id,
                    self.transport.describe(),
                    ", ".join(f"{t} {a}-{b - 1}" for t, a, b in sorted(new)),
                    f"points {', '.join(hit)} read device_exception" if hit else
                    "no configured point lies there, reads no longer span it",
                    REFUSAL_RECHECK_FIRST_S)
            state.recheck_delay_s = REFUSAL_RECHECK_FIRST_S
        elif learned and learned == state.refused and now >= state.recheck_at_monotonic:
            # Re-checked and still refused: ask less often.
            state.recheck_delay_s = min(REFUSAL_RECHECK_CAP_S, 2 * state.recheck_delay_s)
        if learned and (new or now >= state.recheck_at_monotonic):
            state.recheck_at_monotonic = now + state.recheck_delay_s
        gone = state.refused - learned
        if gone and state.bad.empty:
            log.info("device %s (unit %d on %s) answers %s again", state.cfg.name,
                     state.cfg.unit_id, self.transport.describe(),
                     ", ".join(f"{t} {a}-{b - 1}" for t, a, b in sorted(gone)))
        if new or state.bad.empty:
            state.refused = learned
            if self.holes is not None:
                self.holes.record(state.cfg.name, state.cfg.bus, state.cfg.unit_id, learned,
                                  self.clock.now())
        state.all_refused = bool(state.cfg.points) and all(
            state.bad.is_point_bad(p) for p in state.cfg.points)


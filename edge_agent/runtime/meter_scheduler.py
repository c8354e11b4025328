"""Polling one DL/T 645 line: each meter's due points read by identifier, blocks learned.

The slots, the writes queue, the back-off of a silent meter and the heartbeat are the
protocol-neutral ``poller.BusPoller``'s, exactly as for Modbus devices; this module adds how
one meter is read: ``plan_meter_reads`` asks for blocks where two or more points share one,
an abnormal reply to a block teaches that the meter does not serve it (its points are then
read one by one, from now on), an abnormal reply to an item makes that item's readings
device exceptions carrying the meter's error byte, and silence ends the meter's poll with
comm-error readings and backs it off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.dlt645.meter import MeterPoint
from edge_agent.drivers.dlt645.planner import (
    MeterRead,
    after_meter_reply,
    decode_meter_read,
    failed_meter_readings,
    plan_meter_reads,
)
from edge_agent.drivers.dlt645.transport import READ_ONLY, MeterTransportT
from edge_agent.drivers.transport import Reply
from edge_agent.protocol.backoff import BackoffPolicy
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.lifecycle import Heartbeat
from edge_agent.runtime.poller import BusPoller, DeviceState, Step, WriteJob, WriteResult

log = logging.getLogger(__name__)


class MeterScheduler(BusPoller[MeterPoint, MeterTransportT]):
    """Polls every meter of one DL/T 645 line and hands readings to ``sink``."""

    def __init__(
        self,
        transport: MeterTransportT,
        devices: Sequence[DeviceConfig],
        sink: Callable[[list[Reading]], None],
        clock: Clock,
        *,
        backoff: BackoffPolicy | None = None,
        seed: int = 0,
        heartbeat: Heartbeat | None = None,
        request_budget_s: float = 30.0,
        on_missed: Callable[[str, int, float], None] | None = None,
        on_status: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(transport, devices, lambda d: d.meter_points, sink, clock,
                         backoff=backoff, seed=seed, heartbeat=heartbeat,
                         request_budget_s=request_budget_s, on_missed=on_missed,
                         on_status=on_status)

    async def write_now(self, job: WriteJob) -> WriteResult:
        """Meters are read-only here."""
        return WriteResult(False, READ_ONLY)

    async def poll_device(self, state: DeviceState, points: Sequence[MeterPoint], ts_ms: int,
                          key: tuple[int, ...] | None = None) -> None:
        """Read the due points of one meter (or probe it if it is backed off)."""
        if self.skip_backed_off(state):
            return
        device = state.cfg.name
        unit = state.cfg.unit_id

        def on_reply(req: MeterRead, reply: Reply) -> Step[MeterRead] | None:
            if reply.data is not None:
                return Step(decode_meter_read(req, bytes(reply.data), device=device, ts_ms=ts_ms))
            if reply.exception_code is None:
                return None
            instead = after_meter_reply(state.no_block, req, refused=True)
            if instead:
                log.info("meter %s does not serve block %08X: reading its items one by one",
                         device, req.di)
                return Step([], instead)
            return Step(failed_meter_readings(req.points, Quality.DEVICE_EXCEPTION,
                                              device=device, ts_ms=ts_ms,
                                              error_code=reply.exception_code))

        await self.exchange(
            state, plan_meter_reads(points, state.no_block),
            lambda req, attempts: self.transport.read_request(unit, req, attempts=attempts),
            on_reply, lambda rest: failed_meter_readings([p for r in rest for p in r.points],
                                                         Quality.COMM_ERROR, device=device,
                                                         ts_ms=ts_ms), ts_ms, [])

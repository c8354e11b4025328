"""The running agent: wires buses, schedulers, batcher and uplink into supervised tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import zlib
from collections import deque
from collections.abc import Awaitable, Callable

from edge_agent import __version__
from edge_agent.codecs.batch_v2 import encode_batch_v2
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.protocol.backoff import BackoffPolicy
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import SpoolError
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.batcher import Batcher, ReportFilter
from edge_agent.runtime.scheduler import BusScheduler
from edge_agent.runtime.spool import Spool
from edge_agent.runtime.spool_core import RatePacer
from edge_agent.runtime.uplink import Uplink

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")
SPOOL_FILE = "spool.db"


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


async def supervise(name: str, factory: Callable[[], Awaitable[None]], clock: Clock,
                    restarts: dict[str, int]) -> None:
    """Run ``factory()`` forever: a crash is logged once, counted and restarted with back-off."""
    backoff = BackoffPolicy(base_s=1.0, cap_s=30.0, jitter=0.5)
    failures = 0
    rng = random.Random(name)
    while True:
        try:
            await factory()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception:  # a supervisor is where a broad except belongs
            failures += 1
            restarts[name] = restarts.get(name, 0) + 1
            if failures == 1:
                log.exception("task %s crashed; restarting with back-off", name)
            await clock.sleep(backoff.delay(failures, rng))


class Agent:
    """One gateway: polls its buses and reports over MQTT until stopped."""

    def __init__(self, cfg: SiteConfig, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.epoch = int(self.clock.now() * 1000)
        self.started_monotonic = self.clock.monotonic()
        self.seq = 0
        self.restarts: dict[str, int] = {}
        self.readings_polled = 0
        self.batches_built = 0
        self.uplink = Uplink(cfg.mqtt, cfg.gateway_id, epoch=self.epoch, version=__version__,
                             clock=self.clock)
        self.spool: Spool | None = None   # opened by run(), in cfg.state_dir
        self.spool_error: str | None = None
        self.filter = ReportFilter(cfg.devices, cfg.batch.max_silence_s)
        self.batcher = Batcher(cfg.batch, self.filter)
        self._full = asyncio.Event()
        self._encoded: deque[tuple[int, bytes, int]] = deque()
        self.transports = {name: BusTransport(bus) for name, bus in cfg.buses.items()
                           if cfg.devices_on(name)}
        self.schedulers = {
            name: BusScheduler(t, cfg.devices_on(name), self._on_readings, self.clock,
                               max_gap=cfg.max_gap, seed=zlib.crc32(name.encode()))
            for name, t in self.transports.items()
        }

    def _on_readings(self, readings: list[Reading]) -> None:
        self.readings_polled += len(readings)
        if self.batcher.add(readings):
            # Encode at once: when hundreds of devices answer on the same mark, readings
            # would otherwise pile up as objects until the batch task gets to run.
            self._encode_pending()
            self._full.set()

    def _encode_pending(self) -> None:
        readings = self.batcher.take()
        if readings:
            payload = encode_batch_v2(self.cfg.gateway_id, self.epoch, self.seq, readings)
            self._encoded.append((self.seq, payload, len(readings)))
            self.seq += 1
            self.batches_built += 1

    async def flush(self) -> None:
        """Encode whatever is pending and hand every encoded batch to the uplink, in order."""
        self._full.clear()
        self._encode_pending()
        while self._encoded:
            # Removed only once handed over: a flush cancelled mid-way (at stop) leaves the
            # batch for the final flush; a repeat is dropped by (epoch, seq) downstream.
            seq, payload, count = self._encoded[0]
            try:
                await self.uplink.submit(payload, epoch=self.epoch, seq=seq, readings=count)
            except SpoolError as exc:  # counted and logged by the spool; polling goes on
                log.debug("batch %d not stored: %s", seq, exc)
            self._encoded.popleft()

    async def open_spool(self) -> None:
        """Open the spool in the state directory and hand it to the uplink.

        A spool that cannot be opened at all (an unwritable state directory) is reported in
        the log and in health, and batches then wait in memory: polling never stops for it.
        """
        path = self.cfg.state_dir / SPOOL_FILE
        try:
            self.spool = await Spool.open(path, self.cfg.spool)
        except (SpoolError, OSError, ValueError) as exc:
            self.spool_error = f"{type(exc).__name__}: {exc}"
            log.error("spool %s unavailable (%s): batches are kept in memory only", path,
                      self.spool_error)
            return
        sc = self.cfg.spool
        self.uplink.set_store(self.spool, RatePacer(sc.replay_msgs_per_s, sc.replay_bytes_per_s))

    async def _batch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.cfg.batch.window_s)
            await self.flush()

    async def _health_loop(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.health_interval_s)
            await self.uplink.publish_health(self.health())

    def health(self) -> dict[str, object]:
        """The periodic health document (see docs/topics.md)."""
        devices: dict[str, object] = {}
        buses: dict[str, object] = {}
        for name, sched in self.schedulers.items():
            st = sched.transport.stats
            buses[name] = {
                "where": sched.transport.describe(), "connected": sched.transport.connected,
                "requests": st.requests, "replies": st.replies, "timeouts": st.timeouts,
                "exceptions": st.exceptions, "retries": st.retries,
                "busy_s": round(st.busy_s, 3), "last_error": st.last_error,
            }
            for dname, dstate in sched.devices.items():
                devices[dname] = dstate.health()
        fs = self.filter.stats
        return {
            "gateway": self.cfg.gateway_id, "site": self.cfg.site, "version": __version__,
            "epoch": self.epoch, "ts": int(self.clock.now() * 1000),
            "uptime_s": round(self.clock.monotonic() - self.started_monotonic, 1),
            "memory": {"rss_bytes": rss_bytes(),
                       "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
            "readings": {"polled": self.readings_polled, "sent": fs.sent,
                         "suppressed": fs.suppressed, "pending": len(self.batcher)},
            "batches": {"built": self.batches_built, "seq": self.seq},
            "uplink": self.uplink.stats_dict(),
            "spool": (self.spool.stats_dict() if self.spool is not None
                      else {"error": self.spool_error, "memory_only": True}),
            "task_restarts": dict(self.restarts),
            "buses": buses, "devices": devices,
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run every task until ``stop`` is set (or cancelled); then flush and say goodbye."""
        stop = stop or asyncio.Event()
        log.info("agent %s starting: %d buses, %d devices, broker %s", self.cfg.gateway_id,
                 len(self.schedulers), len(self.cfg.devices), self.cfg.mqtt.url)
        await self.open_spool()
        try:
            async with asyncio.TaskGroup() as tg:
                uplink = tg.create_task(
                    supervise("uplink", self.uplink.run, self.clock, self.restarts), name="uplink")
                workers = [
                    tg.create_task(supervise("batcher", self._batch_loop, self.clock,
                                             self.restarts), name="batcher"),
                    tg.create_task(supervise("health", self._health_loop, self.clock,
                                             self.restarts), name="health"),
                ]
                for name, sched in self.schedulers.items():
                    workers.append(tg.create_task(
                        supervise(f"bus:{name}", sched.run, self.clock, self.restarts),
                        name=f"bus:{name}"))
                await stop.wait()
                log.info("stopping: flushing %d pending readings", len(self.batcher))
                for task in workers:
                    task.cancel()
                # Let them finish cancelling, so no flush of theirs runs beside this one.
                await asyncio.wait(workers)
                await self.flush()
                # with the spool the batches are safe on disk: wait only briefly for the broker
                await self.uplink.drain(timeout_s=5.0 if self.spool is None else 2.0)
                uplink.cancel()
                log.info("agent %s stopped: epoch %d, %d batches built, %d still spooled",
                         self.cfg.gateway_id, self.epoch, self.seq, self.uplink.pending)
        finally:
            for t in self.transports.values():
                await t.close()
            if self.spool is not None:
                await self.spool.close()

"""The running agent: polls its buses, encodes each batch once into the store, supervises tasks.

The data path runs one way: schedulers -> batcher -> ``Agent._seal`` (the one encode site) ->
the store -> the uplink, which only takes, publishes and acknowledges. Batches are version 3
(``edge_agent.codecs.batch_v3``): series by index into the boot epoch's schema message
(``streams.site_schema``), which is kept on disk (``schemas.SchemaShelf``) before the first
batch and sent by the uplink on every connection and on request. The store (``open_store``:
the durable spool, or memory when it cannot be opened) is created first and given to the agent,
which hands it to its uplink; the agent closes it when it stops.

Stopping is bounded (``_shutdown``): the schedulers are told to stop after the request in
flight, the tasks are cancelled (and cancelled again: a cancel can be lost), then forced by
closing their buses; the last window is flushed to the store, the uplink drained and closed,
the store closed, each step within its deadline (``STOP_*``) and an overrun logged with the
stacks of what it waited for. Tasks that outlive all of it are named in ``abandoned``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import resource
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from edge_agent import __version__
from edge_agent.codecs.batch import encode_batch_v3
from edge_agent.config.model import SiteConfig
from edge_agent.protocol.backoff import BackoffPolicy
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import SpoolError
from edge_agent.protocol.readings import Reading
from edge_agent.protocol.tasks import stop_tasks
from edge_agent.runtime.batcher import Batcher, ReportFilter
from edge_agent.runtime.buses import (
    AnyScheduler,
    AnyTransport,
    TransportFactory,
    make_scheduler,
    open_holes,
    open_transport,
    request_budget_s,
)
from edge_agent.runtime.endtoend import EndToEnd
from edge_agent.runtime.lifecycle import Heartbeat, bounded
from edge_agent.runtime.looplag import LagMonitor, MissedSlots, Witness
from edge_agent.runtime.schemas import SchemaShelf
from edge_agent.runtime.sparkplug.node import SparkplugNode
from edge_agent.runtime.spool import Spool
from edge_agent.runtime.spool_core import RatePacer
from edge_agent.runtime.store import BatchStore, MemoryStore
from edge_agent.runtime.streams import site_schema
from edge_agent.runtime.uplink import Uplink

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")
SPOOL_FILE = "spool.db"
SCHEMA_DIR = "schemas"

# Deadlines of the stop steps, in order. Even if every step runs to its deadline the stop
# stays under the unit's TimeoutStopSec=20 (``stop_budget_s``), so systemd never has to
# SIGKILL a stopping agent; a normal stop takes a fraction of a second to two seconds.
STOP_POLLERS_S = 0.5     # schedulers end on their stop flag after the request in flight
STOP_TASKS_S = 1.5       # every task ends after its cancel (re-cancelled meanwhile)
STOP_FORCED_S = 1.5      # ... after its bus was closed under it
STOP_FLUSH_S = 2.5       # the last window into the store
STOP_UPLINK_S = 3.0      # the offline state published and the broker disconnected
STOP_CLOSE_S = 2.5       # the store committed and closed
_FORCE_S = 1.0           # what ``bounded`` may add to a step it has to cancel
# How late a bus may beat its heartbeat before the watchdog counts it stuck (never under MIN).
HEARTBEAT_CYCLES = 3
HEARTBEAT_MIN_GRACE_S = 10.0


def drain_s(durable: bool) -> float:
    """How long a stop waits for the broker: briefly when the batches are safe on disk."""
    return 2.0 if durable else 4.0


def stop_budget_s(durable: bool) -> float:
    """The longest a stop may take when every step runs to its deadline."""
    return (STOP_POLLERS_S + STOP_TASKS_S + STOP_FORCED_S + STOP_FLUSH_S + drain_s(durable)
            + 0.5 + STOP_UPLINK_S + STOP_CLOSE_S + 3 * _FORCE_S)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _cancel_asked() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def supervise(name: str, factory: Callable[[], Awaitable[None]], clock: Clock,
                    restarts: dict[str, int], *, stopping: Callable[[], bool] = lambda: False,
                    heartbeat: Heartbeat | None = None) -> None:
    """Run ``factory()`` until ``stopping()``: a crash is logged once, counted and restarted
    with back-off; never restarted once this task was asked to cancel."""
    backoff = BackoffPolicy(base_s=1.0, cap_s=30.0, jitter=0.5)
    failures = 0
    rng = random.Random(name)
    while not stopping():
        try:
            await factory()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a supervisor is where a broad except belongs
            if _cancel_asked():
                # The cancel surfaced as a library's exception: end, do not restart.
                raise asyncio.CancelledError(f"{name} cancelled (surfaced as {exc!r})") from exc
            failures += 1
            restarts[name] = restarts.get(name, 0) + 1
            if failures == 1:
                log.exception("task %s crashed; restarting with back-off", name)
            delay = backoff.delay(failures, rng)
            if heartbeat is not None:
                heartbeat.beat(delay)  # the back-off is a promise too
            await clock.sleep(delay)
        if _cancel_asked():  # returned although cancelled: a cancel was swallowed below
            raise asyncio.CancelledError(f"{name} cancelled (the cancel was swallowed)")


def _flag_of(sched: AnyScheduler) -> Callable[[], bool]:
    return lambda: sched.stopping


async def open_store(cfg: SiteConfig) -> BatchStore:
    """The gateway's store: the spool in ``cfg.state_dir``, or memory if it cannot be opened.

    A spool that cannot be opened at all (an unwritable state directory) is reported in the log
    and in health, and batches then wait in memory: polling never stops for it.
    """
    path = cfg.state_dir / SPOOL_FILE
    try:
        return await Spool.open(path, cfg.spool)
    except (SpoolError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.error("spool %s unavailable (%s): batches are kept in memory only", path, error)
        return MemoryStore(error=error)


class _Sealed(NamedTuple):
    """An encoded batch not yet in the store."""

    seq: int
    payload: bytes
    readings: int


class Agent:
    """One gateway: polls its buses into ``store`` and reports over MQTT until stopped."""

    def __init__(self, cfg: SiteConfig, store: BatchStore, clock: Clock | None = None, *,
                 make_transport: TransportFactory = open_transport) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.epoch = int(self.clock.now() * 1000)
        self.started_monotonic = self.clock.monotonic()
        self.seq = 0
        self.restarts: dict[str, int] = {}
        self.readings_polled = 0
        self.batches_built = 0
        self.store = store
        self.schema = site_schema(cfg, self.epoch)
        # Kept beside a durable spool, whose batches of earlier epochs may still need theirs.
        self.schemas = SchemaShelf(self.schema,
                                   cfg.state_dir / SCHEMA_DIR if store.durable else None)
        self.schemas.save()
        sc = cfg.spool
        self.uplink = Uplink(cfg.mqtt, cfg.gateway_id, epoch=self.epoch, version=__version__,
                             clock=self.clock, store=store,
                             pacer=RatePacer(sc.replay_msgs_per_s, sc.replay_bytes_per_s),
                             schemas=self.schemas)
        # The Sparkplug view (docs/sparkplug.md): live-only, beside the guaranteed uplink.
        self.sparkplug = (SparkplugNode(cfg, self.clock) if cfg.sparkplug.enabled else None)
        self.filter = ReportFilter(cfg.devices, cfg.batch.max_silence_s)
        self.batcher = Batcher(cfg.batch, self.filter)
        self._full = asyncio.Event()
        self._sealed: deque[_Sealed] = deque()
        self.transports: dict[str, AnyTransport] = {
            name: make_transport(bus) for name, bus in cfg.buses.items() if cfg.devices_on(name)}
        self.lag = LagMonitor(witness=Witness())  # the real loop, whatever clock polls
        self._missed = MissedSlots()
        self.heartbeats: dict[str, Heartbeat] = {}
        self.schedulers: dict[str, AnyScheduler] = {}
        holes = open_holes(cfg.state_dir) if store.durable else None  # kept across restarts
        for name, t in self.transports.items():
            devices = cfg.devices_on(name)
            fastest = min(d.poll_interval_s for d in devices)
            hb = self.heartbeats[name] = Heartbeat(
                f"bus:{name}", self.clock, max(HEARTBEAT_MIN_GRACE_S, HEARTBEAT_CYCLES * fastest))
            self.schedulers[name] = make_scheduler(
                t, devices, self._on_readings, self.clock, max_gap=cfg.max_gap,
                seed=zlib.crc32(name.encode()), heartbeat=hb,
                request_budget_s=request_budget_s(cfg.buses[name]) + 1.0,
                on_missed=self._missed_on(name),
                on_status=self.sparkplug.device_status if self.sparkplug else None, holes=holes)
        self.abandoned: list[str] = []    # tasks a stop could not end, even forced
        self.readings_after_stop = 0      # polled after the final flush: counted, not stored
        self._sink_open = True
        # What the agent's owner adds (the gateway: control counters, the lamps' schedule).
        self.health_sections: dict[str, Callable[[], object]] = {}
        self.side_tasks: dict[str, Callable[[], Awaitable[None]]] = {}
        self.endtoend = EndToEnd(self)  # receipts in; this life's counters kept for the next

    def _missed_on(self, bus: str) -> Callable[[str, int, float], None]:
        def missed(device: str, slots: int, busy_s: float) -> None:
            cause = self.lag.explain() or (
                f"the bus is overloaded: its polls took longer than the poll interval (this "
                f"slot {busy_s:.1f} s)")
            self._missed.add(bus, device, slots, cause)
        return missed

    def stalled(self) -> list[str]:
        """The buses whose poller is past its heartbeat's promise, described for the log."""
        return [hb.describe() for hb in self.heartbeats.values() if hb.overdue_s() > 0]

    def _on_readings(self, readings: list[Reading]) -> None:
        if not self._sink_open:
            # After the final flush nothing would store these: counted, and logged at stop.
            self.readings_after_stop += len(readings)
            return
        self.readings_polled += len(readings)
        if self.sparkplug is not None:
            self.sparkplug.observe(readings)
        if self.batcher.add(readings):
            # Sealed at once: when hundreds of devices answer on the same mark, readings
            # would otherwise pile up as objects until the batch task gets to run.
            self._seal()
            self._full.set()

    def _seal(self) -> None:
        """Encode what the batcher holds as the next batch: the agent's one encode site."""
        readings = self.batcher.take()
        if readings:
            payload = encode_batch_v3(self.schema, self.epoch, self.seq, readings)
            if self.sparkplug is not None:
                self.sparkplug.offer(readings)  # the same readings, as DDATA when live
            self._sealed.append(_Sealed(self.seq, payload, len(readings)))
            self.seq += 1
            self.batches_built += 1

    async def flush(self) -> None:
        """Seal whatever is pending and append every sealed batch to the store, in order."""
        self._full.clear()
        self._seal()
        while self._sealed:
            # Removed only once appended: a flush cancelled mid-way (at stop) leaves the
            # batch for the final flush; a repeat is dropped by (epoch, seq) downstream.
            seq, payload, count = self._sealed[0]
            try:
                await self.store.put(payload, epoch=self.epoch, seq=seq, readings=count)
            except SpoolError as exc:  # counted and logged by the spool; polling goes on
                log.debug("batch %d not stored: %s", seq, exc)
            self._sealed.popleft()

    async def _batch_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the stop's cancel.
            try:
                async with asyncio.timeout(self.cfg.batch.window_s):
                    await self._full.wait()
            except TimeoutError:
                pass
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
                "guard_waits": st.guard_waits, "busy_s": round(st.busy_s, 3),
                "last_error": st.last_error,
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
            "batches": {"built": self.batches_built, "seq": self.seq,
                        "schema": self.schema.hash.hex(), "schema_error": self.schemas.error},
            "uplink": self.uplink.stats_dict(),
            **({"sparkplug": self.sparkplug.stats_dict()} if self.sparkplug else {}),
            "spool": self.store.stats_dict(),
            "task_restarts": dict(self.restarts),
            "loop": self.lag.health(),
            "buses": buses, "devices": devices,
            # Sections from the agent's owner (the gateway's control plane), by name.
            **{name: section() for name, section in self.health_sections.items()},
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or cancelled), then stop within ``stop_budget_s``: flush,
        say goodbye, close the store."""
        stop = stop or asyncio.Event()
        log.info("agent %s starting: %d buses, %d devices, broker %s", self.cfg.gateway_id,
                 len(self.schedulers), len(self.cfg.devices), self.cfg.mqtt.url)
        # Supervised like the others: a monitor that died would leave health's loop numbers
        # stale and stalls unexplained; it is restarted and counted in task_restarts.
        lag = asyncio.create_task(
            supervise("loop-lag", self.lag.run, self.clock, self.restarts), name="loop-lag")
        uplink = asyncio.create_task(
            supervise("uplink", self.uplink.run, self.clock, self.restarts), name="uplink")
        uplinks = [uplink]
        if self.sparkplug is not None:
            uplinks.append(asyncio.create_task(
                supervise("sparkplug", self.sparkplug.run, self.clock, self.restarts),
                name="sparkplug"))
        others = [
            asyncio.create_task(supervise("batcher", self._batch_loop, self.clock,
                                          self.restarts), name="batcher"),
            asyncio.create_task(supervise("health", self._health_loop, self.clock,
                                          self.restarts), name="health"),
            *(asyncio.create_task(supervise(n, f, self.clock, self.restarts), name=n)
              for n, f in self.side_tasks.items()),
        ]
        pollers = [
            asyncio.create_task(supervise(
                f"bus:{name}", sched.run, self.clock, self.restarts,
                stopping=_flag_of(sched), heartbeat=self.heartbeats[name]),
                name=f"bus:{name}")
            for name, sched in self.schedulers.items()]
        try:
            await stop.wait()
        finally:
            # Also when cancelled: the readings of the last window still go to the store.
            await self._shutdown(pollers, others, uplinks, lag)

    async def _shutdown(self, pollers: list[asyncio.Task[None]], others: list[asyncio.Task[None]],
                        uplinks: list[asyncio.Task[None]], lag: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.info("stopping: flushing %d pending readings", len(self.batcher))
        try:
            for sched in self.schedulers.values():
                sched.stop()
            # Pollers first, on their flag: the request in flight ends and its readings count.
            if pollers:
                await asyncio.wait(pollers, timeout=STOP_POLLERS_S)
            workers = [*pollers, *others]
            left = await stop_tasks(workers, STOP_TASKS_S, "bus, batch and health tasks",
                                    recancel_after_s=0.5)
            if left:
                # Forced: a closed bus fails its request in flight and refuses the next one.
                for t in self.transports.values():
                    await t.close()
                left = await stop_tasks(left, STOP_FORCED_S, "tasks left after closing the buses")
                self.abandoned += sorted(t.get_name() for t in left)
            await bounded(self.flush(), STOP_FLUSH_S, "flushing the last window to the store")
            self._sink_open = False
            durable = self.store.durable
            await bounded(self.uplink.drain(timeout_s=drain_s(durable)), drain_s(durable) + 0.5,
                          "draining the uplink")
            # Their goodbyes (offline state, NDEATH) run on the cancel: give them that long
            # before cancelling again.
            gone = await stop_tasks(uplinks, STOP_UPLINK_S, "the uplinks",
                                    recancel_after_s=self.uplink.goodbye_timeout_s + 0.25)
            self.abandoned += sorted(t.get_name() for t in gone)
        finally:
            await stop_tasks([lag], 0.5, "the loop-lag monitor")
            for t in self.transports.values():
                await t.close()
            closed, _ = await bounded(self.store.close(), STOP_CLOSE_S, "closing the store")
            took = loop.time() - started
            log.info("agent %s stopped in %.1f s: epoch %d, %d batches built (%d readings "
                     "polled, %d sent), %d still spooled%s", self.cfg.gateway_id, took,
                     self.epoch, self.seq, self.readings_polled, self.filter.stats.sent,
                     self.store.pending, "" if closed else "; the store did not close in time")
            if self.abandoned or self.readings_after_stop:
                log.error("agent stop was forced: tasks still running: %s; %d readings polled "
                          "after the final flush were not stored",
                          ", ".join(self.abandoned) or "none", self.readings_after_stop)

"""The durable spool: every data batch is committed to SQLite before it counts as stored,
published oldest first, and deleted after its PUBACK or, with receipts, once the ingest's
receipt confirms it (``spool_confirm``, ``spool_sent``; docs/spool.md).

This is the asyncio face of ``edge_agent.runtime.spool_db`` (the SQLite file) and it implements
the batch-store contract of ``edge_agent.runtime.store``: the agent ``put``s, the uplink
``take``s, ``ack``s or ``release``s, and ``mark_backlog`` at every connect:

- **Group commit.** ``put`` queues the batch and waits; one committer task gathers what
  arrived within ``group_commit_ms`` into one transaction (one fsync with ``synchronous=FULL``)
  and wakes every waiter once it is durable.
- **One worker thread** runs all SQLite calls: ``sqlite3`` blocks in fsync, and a slow SD
  card must not stall polling on the event loop.
- **Deletes (or sent marks) after PUBACK are grouped** (every 0.2 s or 256 batches): a crash
  may re-send a few acknowledged batches; consumers drop them by (gateway, epoch, seq).
- **Lanes.** Batches stored before the current connection are the backlog (paced by the
  uplink); with ``live_first`` batches stored since are published before the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.config.model import ReceiptMode, SpoolConfig
from edge_agent.protocol.errors import SpoolError
from edge_agent.protocol.receipts import Receipt
from edge_agent.runtime.spool_confirm import Confirmations
from edge_agent.runtime.spool_core import StoredRow, row_cost
from edge_agent.runtime.spool_db import Append, CommitResult, SpoolDB
from edge_agent.runtime.spool_sent import Confirmed
from edge_agent.runtime.store import Readiness, StoredBatch

log = logging.getLogger(__name__)

T = TypeVar("T")
CHUNK = 256            # batches read from disk at a time for publishing
LIVE_MAX = 256         # live batches kept in memory; more wait on disk in order
DELETE_EVERY_S = 0.2   # acknowledged batches are deleted at least this often
DELETE_BATCH = 256     # or as soon as this many are waiting


@dataclass
class SpoolCounters:
    """What the spool did since this process opened it."""

    commits: int = 0
    stored_batches: int = 0
    published_batches: int = 0
    errors: int = 0
    lost_batches: int = 0     # not stored because the disk failed (not the cap)
    lost_readings: int = 0
    last_error: str | None = None


class Spool:
    """The gateway's store-and-forward queue of encoded batches, in ``state_dir/spool.db``."""

    def __init__(self, db: SpoolDB, executor: ThreadPoolExecutor) -> None:
        self._db = db
        self._ex = executor
        self.cfg = db.cfg
        self.path = db.path
        self.counters = SpoolCounters()
        self._group_s = self.cfg.group_commit_ms / 1000.0
        self._appends: list[tuple[Append, asyncio.Future[bool]]] = []
        self._acked: list[StoredRow] = []
        self._ack_deadline = 0.0
        self._deleting: set[int] = set()
        self._kick = asyncio.Event()
        self._lanes = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._ready: deque[StoredBatch] = deque()   # oldest stored batches, id <= cursor
        self._live: deque[StoredBatch] = deque()    # live_first: batches since the connect
        self._cursor = 0          # highest id the loader has read past
        self._exhausted = False   # True: every stored batch above the cursor is in memory
        self._mark = db.last_id   # batches up to this id are the backlog of this connection
        self._in_flight: StoredBatch | None = None
        self._in_flight_live = False
        self._pending = db.rows - db.sent_rows   # sent ones wait for a receipt, not the uplink
        self._readiness = Readiness(self._pending)
        self.confirms = Confirmations(db)
        # (epoch, last seq, missed slots, rejections) of this life, kept with every commit
        self.life_source: Callable[[], tuple[int, int, int, int]] | None = None
        self._resend = self.confirms.resend
        self._in_flight_resend = False
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self._drop_logged = False

    @classmethod
    async def open(cls, path: Path, cfg: SpoolConfig) -> Spool:
        """Open (create, check, salvage) the spool at ``path``; SpoolError if it cannot be."""
        ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        try:
            db = await asyncio.get_running_loop().run_in_executor(ex, SpoolDB, path, cfg)
        except BaseException:
            ex.shutdown(wait=True)
            raise
        spool = cls(db, ex)
        log.info("spool %s: %d batches (%d readings) waiting; cap %d bytes, %s, synchronous=%s",
                 path, db.rows, db.readings, cfg.max_bytes, cfg.policy.value,
                 cfg.synchronous.value)
        return spool

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    # ------------------------------------------------------------------ the store contract

    @property
    def readiness(self) -> Readiness:
        """The events the uplink waits on."""
        return self._readiness

    @property
    def durable(self) -> bool:
        """True: a batch counts as stored once it is committed to disk."""
        return True

    @property
    def dropped_in_memory(self) -> int:
        """Always 0: the cap's drops are on disk, counted in ``stats_dict``."""
        return 0

    @property
    def pending(self) -> int:
        """Batches stored and not yet acknowledged (the one in flight included)."""
        return self._pending

    @property
    def in_flight(self) -> bool:
        """True while a batch is being published."""
        return self._in_flight is not None

    async def put(self, payload: bytes, *, epoch: int = 0, seq: int = 0,
                  readings: int = 0) -> bool:
        """Store a batch durably; False when the cap policy did not keep it (it is counted).

        Raises SpoolError when the disk failed (the batch is counted as lost).
        """
        if self._closing:
            raise SpoolError(f"spool {self.path} is closed")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._appends.append((Append(payload, epoch, seq, readings), fut))
        self._start_committer()
        self._kick.set()
        return await fut

    async def take(self) -> StoredBatch | None:
        """The next batch to publish, now in flight; None when nothing is waiting."""
        async with self._lanes:
            if self._in_flight is not None:
                raise RuntimeError("spool: take() while a batch is in flight")
            self._in_flight_resend = bool(self._resend)
            if self._resend:  # lost on the way: older than anything else waiting
                item = replace(self._resend.popleft(), backlog=True)
                self._in_flight_live = False
            elif self.cfg.live_first and self._live:
                item = replace(self._live.popleft(), backlog=False)
                self._in_flight_live = True
            else:
                while not self._ready and not self._exhausted:
                    await self._load()
                if not self._ready:
                    self._readiness.idle(self._pending)
                    return None
                head = self._ready.popleft()
                item = replace(head, backlog=head.id <= self._mark)
                self._in_flight_live = False
            self._in_flight = item
            return item

    async def ack(self, item: StoredBatch) -> None:
        """The broker acknowledged ``item``: it will be deleted with the next group of deletes."""
        if self._in_flight is None or self._in_flight.id != item.id:
            raise RuntimeError(f"spool: ack of batch {item.id}, which is not in flight")
        self._in_flight = None
        self._pending -= 1
        self._readiness.removed(self._pending)
        self.counters.published_batches += 1
        if not self._acked:
            self._ack_deadline = asyncio.get_running_loop().time() + DELETE_EVERY_S
        self._acked.append(StoredRow(item.id, row_cost(len(item.payload)), item.readings))
        self.confirms.sent(item.id)
        self._start_committer()
        if len(self._acked) == 1 or len(self._acked) >= DELETE_BATCH:
            self._kick.set()

    def release(self, item: StoredBatch) -> None:
        """``item`` was not acknowledged: it goes back to the front, to be sent again."""
        if self._in_flight is None or self._in_flight.id != item.id:
            raise RuntimeError(f"spool: release of batch {item.id}, which is not in flight")
        lane = self._resend if self._in_flight_resend else (
            self._live if self._in_flight_live else self._ready)
        lane.appendleft(replace(item, backlog=False))
        self._in_flight = None

    def mark_backlog(self) -> None:
        """A connection starts: everything stored so far is its backlog, read again in order."""
        held = [b.id for b in (*self._ready, *self._live)]
        if held:
            self._cursor = min(self._cursor, min(held) - 1)
        self._ready.clear()
        self._live.clear()
        self._exhausted = False
        self._mark = self._db.last_id
        self._readiness.waiting.set()

    async def _load(self) -> None:
        skip = {b.id for b in self._live} | {r.id for r in self._acked} | self._deleting
        if self._in_flight is not None:
            skip.add(self._in_flight.id)
        rows = await self._run(self._db.load, self._cursor, CHUNK)
        self._ready.extend(b for b in rows if b.id not in skip)
        if rows:
            self._cursor = rows[-1].id
        self._exhausted = len(rows) < CHUNK

    # ------------------------------------------------------------------ group commit

    def _start_committer(self) -> None:
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(
                self._commit_loop(), name="spool-commit")

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._kick.clear()
            if self._appends:
                if self._group_s > 0 and not self._closing:
                    await asyncio.sleep(self._group_s)  # let more appends join this commit
                await self._commit_once()
                continue
            if self._acked:
                wait_s = self._ack_deadline - loop.time()
                if len(self._acked) >= DELETE_BATCH or wait_s <= 0 or self._closing:
                    await self._commit_once()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), wait_s)
                continue
            if self._closing:
                return
            await self._kick.wait()

    async def _commit_once(self) -> None:
        async with self._commit_lock:  # the committer task and a receipt may both commit
            await self._commit_locked()

    async def _commit_locked(self) -> None:
        if self.life_source is not None:
            self.confirms.note_life(*self.life_source())
        appends, self._appends = self._appends, []
        deletes, self._acked = self._acked, []
        items = [a for a, _ in appends]
        self._deleting = {d.id for d in deletes}
        try:
            if items:
                # the lanes stay still while the cap may evict: nothing is handed out that
                # this commit is about to delete
                async with self._lanes:
                    in_flight = {self._in_flight.id} if self._in_flight else set()
                    result = await self._run(self._db.commit, items, deletes, in_flight)
                    self._apply(result, items)
            else:
                result = await self._run(self._db.commit, [], deletes, set())
        except SpoolError as exc:
            self._failed(exc, appends, deletes)
            return
        except Exception as exc:  # never leave a producer waiting on a commit that died
            self._failed(SpoolError(f"spool {self.path}: commit failed: "
                                    f"{type(exc).__name__}: {exc}"), appends, deletes)
            return
        finally:
            self._deleting = set()
        self.counters.commits += 1
        for (_, fut), rid in zip(appends, result.ids, strict=True):
            if not fut.done():
                fut.set_result(rid is not None)
        try:
            await self.confirms.maybe_expire(self._run)
        except SpoolError as exc:
            log.error("%s", exc)

    def _apply(self, result: CommitResult, items: list[Append]) -> None:
        evicted, resent = set(result.evicted), 0
        if evicted:
            self._ready = deque(b for b in self._ready if b.id not in evicted)
            self._live = deque(b for b in self._live if b.id not in evicted)
            resent = self.confirms.drop(evicted)
        stored = 0
        for a, rid in zip(items, result.ids, strict=True):
            if rid is None:
                continue
            stored += 1
            batch = StoredBatch(rid, a.epoch, a.seq, a.readings, a.payload)
            if self.cfg.live_first and len(self._live) < LIVE_MAX:
                self._live.append(batch)
            elif not self.cfg.live_first and self._exhausted and len(self._ready) < CHUNK:
                self._ready.append(batch)
                self._cursor = rid
            else:
                self._exhausted = False
        # pending counts batches waiting to be sent: evicted sent ones were not among them,
        # unless queued to go again
        self._pending += stored - len(evicted - result.evicted_sent) - resent
        self.counters.stored_batches += stored
        if stored:
            self._readiness.stored()
        total = self._db.meta["dropped_batches"]
        if result.dropped_batches and (not self._drop_logged or total // 1000 != (
                total - result.dropped_batches) // 1000):
            self._drop_logged = True  # first drop, then once per thousand
            log.warning("spool %s: %s dropped %d batches (%d readings); %d dropped in total",
                        self.path, "disk full:" if result.full else "cap reached:",
                        result.dropped_batches, result.dropped_readings, total)

    def _failed(self, exc: SpoolError, appends: list[tuple[Append, asyncio.Future[bool]]],
                deletes: list[StoredRow]) -> None:
        self.counters.errors += 1
        self.counters.lost_batches += len(appends)
        self.counters.lost_readings += sum(a.readings for a, _ in appends)
        if self.counters.last_error is None or self.counters.errors % 100 == 1:
            log.error("spool %s: %s (%d batches lost so far)", self.path, exc,
                      self.counters.lost_batches)
        self.counters.last_error = str(exc)
        self._acked = deletes + self._acked  # try the deletes again with the next commit
        for _, fut in appends:
            if not fut.done():
                fut.set_exception(exc)

    # ------------------------------------------------------------------ receipts

    async def receipt(self, receipt: Receipt) -> Confirmed | None:
        """Apply the ingest's receipt: delete what it confirms, queue what it reports lost to
        be sent again (``spool_confirm``); None when receipts are off."""
        if self.cfg.receipts is ReceiptMode.OFF or self._closing:
            return None
        if self._acked:  # what the broker acknowledged is marked sent first, so it can confirm
            await self._commit_once()
        busy = {self._in_flight.id} if self._in_flight is not None else set()
        async with self._lanes:
            done, again, dropped = await self.confirms.apply(receipt, busy, self._run)
        self._pending += len(again) - dropped
        if again:
            self._readiness.stored()
        return done

    # ------------------------------------------------------------------ state and shutdown

    def stats_dict(self) -> dict[str, object]:
        """Depth, disk use and loss counters for the health document."""
        db = self._db
        life = db.counters()
        doc: dict[str, object] = {
            "batches": self._pending, "stored_batches": db.rows, "stored_bytes": db.cost,
            "readings": db.readings, "disk_bytes": db.disk_bytes(),
            "max_bytes": self.cfg.max_bytes, "policy": self.cfg.policy.value,
            "synchronous": self.cfg.synchronous.value,
            **life,
            "dropped_batches": life["dropped_batches"] + self.counters.lost_batches,
            "dropped_readings": life["dropped_readings"] + self.counters.lost_readings,
            **{k: v for k, v in asdict(self.counters).items()
               if k not in ("lost_batches", "lost_readings")},
        }
        doc["receipts"] = self.confirms.health()
        if db.event is not None:
            doc["integrity_event"] = asdict(db.event)
        return doc

    @property
    def integrity_event(self) -> dict[str, object] | None:
        """What happened when the spool failed its check at open, if it did."""
        return asdict(self._db.event) if self._db.event is not None else None

    async def close(self) -> None:
        """Commit what is queued (appends and deletes), close the file and the worker thread."""
        if self._closing and self._committer is None:
            return
        self._closing = True
        self._kick.set()
        if self._committer is not None:
            await self._committer
            self._committer = None
        if self._appends or self._acked:
            await self._commit_once()
        try:
            await self._run(self._db.close)
        finally:
            self._ex.shutdown(wait=True)

"""The spool's receipts in memory (batches to send again, recent sends, retention, health),
and the counters of the agent's life it keeps for the next one.

The SQL is in ``spool_sent``; this holds what lives beside it on the event loop: the lane of
batches a receipt reported lost (sent again before anything else), when each batch was last
sent (a batch goes again at most once per ``resend_grace_s``), the highest (epoch, seq)
confirmed, and the periodic deletion of sent batches past ``confirm_retention_s``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from edge_agent.config.model import ReceiptMode
from edge_agent.protocol.errors import SpoolError
from edge_agent.protocol.receipts import Receipt
from edge_agent.runtime.spool_db import SpoolDB
from edge_agent.runtime.spool_sent import Confirmed, confirm, expire
from edge_agent.runtime.store import StoredBatch

log = logging.getLogger(__name__)

T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]
EXPIRE_EVERY_S = 30.0  # sent batches past their retention are looked for this often


class Confirmations:
    """The in-memory side of receipts for one spool."""

    def __init__(self, db: SpoolDB) -> None:
        self.db = db
        self.cfg = db.cfg
        mode = self.cfg.receipts
        db.confirming = mode is ReceiptMode.ON or (
            mode is ReceiptMode.AUTO and db.meta["receipts_seen"] > 0)
        self.resend: deque[StoredBatch] = deque()
        self.recent: dict[int, float] = {}      # row id -> loop time of its last send
        self.last_confirmed: tuple[int, int] | None = None
        self.receipts = 0
        self._next_expire = 0.0
        self.expire_every_s = EXPIRE_EVERY_S
        # The last life as the file has it (before this one overwrites it)
        self.previous_life = {k: db.meta[k] for k in ("life_epoch", "life_seq")}
        self.life_counters = {k: db.meta[k] for k in ("missed_slots", "rejected",
                                                      "dropped_batches", "dropped_readings")}

    def note_life(self, epoch: int, seq: int, missed_slots: int, rejected: int) -> None:
        """Keep this life's epoch, last seq and counters in the file with the next commit, so
        the next boot reports them even if this one is killed."""
        base = self.life_counters
        self.db.pending_meta = {"life_epoch": epoch, "life_seq": seq,
                                "missed_slots": base["missed_slots"] + missed_slots,
                                "rejected": base["rejected"] + rejected}

    def sent(self, row_id: int) -> None:
        """A batch was acknowledged by the broker just now."""
        if self.db.confirming:
            self.recent[row_id] = asyncio.get_running_loop().time()

    async def apply(self, receipt: Receipt, busy: set[int],
                    run: Runner) -> tuple[Confirmed, list[StoredBatch], int]:
        """Apply ``receipt`` on the worker thread; (what it did, batches queued to go again,
        batches it confirmed that were queued to go again)."""
        self.db.confirming = True  # auto: an ingest confirms from now on (kept in the file)
        self.receipts += 1
        now = asyncio.get_running_loop().time()
        grace = self.cfg.resend_grace_s
        self.recent = {i: t for i, t in self.recent.items() if now - t < grace}
        busy = busy | set(self.recent) | {b.id for b in self.resend}
        done: Confirmed = await run(apply_receipt, self.db, receipt, busy)
        dropped = self.drop(set(done.deleted)) if done.deleted else 0
        again: list[StoredBatch] = (await run(self.db.load_ids, done.resend)
                                    if done.resend else [])
        self.resend.extend(again)
        if again:
            log.info("receipt: %d batches lost on the way are sent again (%d confirmed)",
                     len(again), len(done.deleted))
        if done.last is not None and (self.last_confirmed is None
                                      or done.last > self.last_confirmed):
            self.last_confirmed = done.last
        return done, again, dropped

    def drop(self, ids: set[int]) -> int:
        """These rows are gone (confirmed or evicted): not to be sent again; how many were
        queued to go again."""
        kept = [b for b in self.resend if b.id not in ids]
        dropped = len(self.resend) - len(kept)
        self.resend.clear()  # the same deque object: the spool's lane is this one
        self.resend.extend(kept)
        return dropped

    async def maybe_expire(self, run: Runner) -> None:
        """Every EXPIRE_EVERY_S: delete sent batches past their retention (counted dropped)."""
        now = asyncio.get_running_loop().time()
        if not self.db.confirming or now < self._next_expire:
            return
        self._next_expire = now + self.expire_every_s
        before_ms = int((time.time() - self.cfg.confirm_retention_s) * 1000)
        n = await run(expire_sent, self.db, before_ms)
        if n:
            log.warning("spool %s: %d sent batches had no receipt within %.0f s: deleted and "
                        "counted as dropped", self.db.path, n, self.cfg.confirm_retention_s)

    def health(self) -> dict[str, object]:
        """The receipts' part of health: mode, waiting for confirmation, confirmed up to."""
        last = self.last_confirmed
        return {"mode": self.cfg.receipts.value, "confirming": self.db.confirming,
                "receipts": self.receipts, "sent_unconfirmed": self.db.sent_rows,
                "resend_queued": len(self.resend),
                "last_confirmed": None if last is None else {"epoch": last[0], "seq": last[1]}}


def apply_receipt(db: SpoolDB, receipt: Receipt, recent: set[int]) -> Confirmed:
    """Apply a receipt to the spool file in one transaction (``confirm``); receipts are seen."""
    try:
        cur = db.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        done = confirm(cur, receipt, recent)
        meta = dict(db.meta, receipts_seen=1)
        meta["confirmed_batches"] += len(done.deleted)
        meta["resent_batches"] += len(done.resend)
        db.write_meta(cur, meta)
        cur.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        db.rollback()
        raise SpoolError(f"spool {db.path}: applying a receipt failed: {exc}") from exc
    db.meta = meta
    db.gone(len(done.deleted), done.readings, done.cost)
    return done


def expire_sent(db: SpoolDB, before_ms: int) -> int:
    """Delete sent batches first sent before ``before_ms``, counted as dropped; how many."""
    try:
        cur = db.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        n, readings, cost = expire(cur, before_ms)
        meta = dict(db.meta)
        for key, add in (("expired_batches", n), ("dropped_batches", n),
                         ("dropped_readings", readings)):
            meta[key] += add
        if n:
            db.write_meta(cur, meta)
        cur.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        db.rollback()
        raise SpoolError(f"spool {db.path}: expiring sent batches failed: {exc}") from exc
    db.meta = meta
    db.gone(n, readings, cost)
    return n

"""The spool's SQLite file in use: pragmas, reads, group commits under the cap, a full disk.

Synchronous and used from one thread (``runtime.spool`` runs it on its own worker thread, so a
slow fsync never stalls the event loop). Decisions come from the pure ``runtime.spool_core``;
the file's schema and the rescue of a damaged one from ``runtime.spool_file``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.config.model import SpoolConfig
from edge_agent.protocol.errors import SpoolError
from edge_agent.runtime.spool_core import (
    PAGE_SIZE,
    NewBatch,
    StoredRow,
    admit,
    layout,
    payload_crc,
    row_cost,
)
from edge_agent.runtime.spool_file import (
    COUNTER_KEYS,
    META_KEYS,
    SCHEMA,
    SELECT_ROWS,
    SPOOL_FILE_MODE,
    SPOOL_SUFFIXES,
    IntegrityEvent,
    Salvage,
    check_file,
    private_dir,
    private_file,
    quarantine,
)
from edge_agent.runtime.spool_sent import UNSENT, mark_sent
from edge_agent.runtime.store import StoredBatch

log = logging.getLogger(__name__)

FULL_MODE_WAL_PAGES = 4  # while the disk is full the WAL is checkpointed after every commit


@dataclass(frozen=True, slots=True)
class Append:
    """A batch to store."""

    payload: bytes
    epoch: int
    seq: int
    readings: int


@dataclass(slots=True)
class CommitResult:
    """What one group commit did."""

    ids: list[int | None]                                # per append: row id, None: not stored
    evicted: list[int] = field(default_factory=list)     # stored rows dropped by the policy
    evicted_sent: set[int] = field(default_factory=set)  # ... of them sent, awaiting receipts
    dropped_batches: int = 0
    dropped_readings: int = 0
    full: bool = False                                   # the disk (or page limit) was full


def _is_full(exc: BaseException) -> bool:
    # SQLITE_FULL: "database or disk is full" (a real ENOSPC or our max_page_count).
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "database or disk is full" in str(exc))


class SpoolDB:
    """The spool file: opened (checked, salvaged if needed), appended, read and trimmed."""

    def __init__(self, path: Path, cfg: SpoolConfig) -> None:
        self.path = path
        self.cfg = cfg
        self.layout = layout(cfg.max_bytes, PAGE_SIZE)
        self.event: IntegrityEvent | None = None
        self._meta_dirty = False
        self.full_budget: int | None = None  # set while the disk is full: the effective cap
        self.confirming = False  # True: acknowledged batches wait for a receipt (spool_sent)
        self.pending_meta: dict[str, int] = {}  # state values to write with the next commit
        self.reserve_path = path.with_name(path.name + ".reserve")
        try:
            private_dir(path.parent)
        except OSError as exc:
            raise SpoolError(f"spool directory {path.parent} cannot be created: {exc}") from exc
        salvage: Salvage | None = None
        if path.exists():
            problem = check_file(path)
            if problem is not None:
                salvage = quarantine(path, problem)
                self.event = salvage.event
        try:
            # SQLite creates the -wal and -shm files with the database's mode, so a 0600
            # database made before the first connect keeps all three private.
            private_file(path, create=True)
            for suffix in SPOOL_SUFFIXES[1:]:
                private_file(path.with_name(path.name + suffix), create=False)
        except OSError as exc:
            raise SpoolError(f"spool {path} cannot be created: {exc}") from exc
        try:
            self.conn = self._connect()
            self.conn.executescript(SCHEMA)
            self.meta = {k: 0 for k in META_KEYS}
            self.meta.update({k: int(v) for k, v in self.conn.execute(
                "SELECT key, value FROM meta") if k in self.meta})
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"spool {path} cannot be opened: {exc}") from exc
        if salvage is not None:
            self._restore(salvage)
        self._make_reserve()
        self.rows, self.cost, self.readings, self.last_id = 0, 0, 0, 0
        for count, nbytes, readings, last in self.conn.execute(
                "SELECT count(*), coalesce(sum(nbytes), 0), coalesce(sum(readings), 0), "
                "coalesce(max(id), 0) FROM batches"):
            self.rows, self.cost, self.readings = count, nbytes + count * row_cost(0), readings
            self.last_id = last
        self.sent_rows = int(self.conn.execute("SELECT count(*) FROM sent").fetchone()[0])

    # ------------------------------------------------------------------ open

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")  # a reader (check-config, tests) may hold it
        conn.execute(f"PRAGMA page_size = {self.layout.page_size}")  # before the file exists
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"spool {self.path}: journal_mode is {mode!r}, WAL was asked for")
        conn.execute(f"PRAGMA synchronous = {self.cfg.synchronous.value}")
        conn.execute(f"PRAGMA max_page_count = {self.layout.max_page_count}")
        conn.execute(f"PRAGMA journal_size_limit = {self.layout.wal_pages * PAGE_SIZE}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {self.layout.wal_pages}")
        return conn

    def _restore(self, salvage: Salvage) -> None:
        """Store what was salvaged in the fresh file and keep the old file's lifetime counters."""
        for key in META_KEYS:
            self.meta[key] = max(self.meta[key], salvage.meta.get(key, 0))
        self.meta["integrity_events"] += 1
        self.meta["salvaged_batches"] += len(salvage.rows)
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        for epoch, seq, readings, crc, payload in salvage.rows:
            cur.execute("INSERT INTO batches (epoch, seq, readings, nbytes, crc, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (epoch, seq, readings, len(payload), crc,
                                                      payload))
        self.write_meta(cur)
        cur.execute("COMMIT")

    # ------------------------------------------------------------------ reading

    def load(self, after_id: int, limit: int) -> list[StoredBatch]:
        """Up to ``limit`` stored batches with id above ``after_id``, oldest first."""
        try:
            return [StoredBatch(rid, epoch, seq, readings, payload)
                    for rid, epoch, seq, readings, _n, _c, payload in self.conn.execute(
                        SELECT_ROWS + UNSENT, (after_id, limit))]
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"spool {self.path}: reading batches failed: {exc}") from exc

    def load_ids(self, ids: list[int]) -> list[StoredBatch]:
        """The stored batches with these row ids (those still there), in id order."""
        out: list[StoredBatch] = []
        for rid in sorted(ids):
            for _id, epoch, seq, readings, _n, _c, payload in self.conn.execute(
                    SELECT_ROWS + " WHERE id = ?", (rid,)):
                out.append(StoredBatch(rid, epoch, seq, readings, payload))
        return out

    def mark_dirty(self) -> None:
        """The meta values changed in memory: write them with the next commit."""
        self._meta_dirty = True

    def gone(self, n: int, readings: int, cost: int) -> None:
        self.rows -= n
        self.readings -= readings
        self.cost -= cost
        self.sent_rows -= n

    def _oldest(self, exclude: set[int]) -> Iterator[StoredRow]:
        after = 0
        while True:
            rows = self.conn.execute("SELECT id, nbytes, readings FROM batches WHERE id > ? "
                                     "ORDER BY id LIMIT 256", (after,)).fetchall()
            if not rows:
                return
            for rid, nbytes, readings in rows:
                if rid not in exclude:
                    yield StoredRow(rid, row_cost(nbytes), readings)
            after = rows[-1][0]

    # ------------------------------------------------------------------ writing

    def commit(self, appends: list[Append], deletes: list[StoredRow],
               in_flight: set[int]) -> CommitResult:
        """One transaction: delete acknowledged rows, apply the cap policy, insert the appends."""
        self._maybe_leave_full_mode()
        budget = self.layout.data_budget if self.full_budget is None else self.full_budget
        try:
            return self._transaction(appends, deletes, in_flight, budget)
        except sqlite3.DatabaseError as exc:
            self.rollback()
            if not _is_full(exc):
                raise SpoolError(f"spool {self.path}: commit failed: {exc}") from exc
        return self._commit_when_full(appends, deletes, in_flight)

    def _commit_when_full(self, appends: list[Append], deletes: list[StoredRow],
                          in_flight: set[int]) -> CommitResult:
        """The disk is full: from now on the cap is what is stored, so the file stops growing.

        Drop-oldest then frees whole pages at the old end of the table that the new rows
        reuse; the WAL is checkpointed after every commit so it needs no new space either.
        """
        self.meta["full_events"] += 1
        self._meta_dirty = True
        if self.full_budget is None:
            log.warning("spool %s: disk full (%d batches, %d bytes stored): applying %s "
                        "until space is free again", self.path, self.rows, self.cost,
                        self.cfg.policy.value)
        self.full_budget = max(0, self.cost - sum(d.cost for d in deletes) - 2 * PAGE_SIZE)
        self._set_wal_limits(FULL_MODE_WAL_PAGES)
        with contextlib.suppress(OSError):  # its space lets the WAL be checkpointed
            self.reserve_path.unlink()
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:
            log.debug("checkpoint on a full disk failed: %s", exc)
        try:
            result = self._transaction(appends, deletes, in_flight, self.full_budget)
        except sqlite3.DatabaseError as exc:
            self.rollback()
            if not _is_full(exc):
                raise SpoolError(f"spool {self.path}: commit failed: {exc}") from exc
            result = self._reject_all(appends)
        result.full = True
        return result

    def _set_wal_limits(self, pages: int) -> None:
        self.conn.execute(f"PRAGMA journal_size_limit = {pages * PAGE_SIZE}")
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")

    def _maybe_leave_full_mode(self) -> None:
        if self.full_budget is None:
            return
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        if st.f_bavail * st.f_frsize > 3 * self.layout.wal_bytes:
            log.info("spool %s: disk space is free again; back to the configured cap", self.path)
            self.full_budget = None
            self._set_wal_limits(self.layout.wal_pages)
            self._make_reserve()

    def _make_reserve(self) -> None:
        """Write the disk-full reserve file (as large as the WAL may get), best effort."""
        size = self.layout.wal_bytes
        try:
            if self.reserve_path.exists() and self.reserve_path.stat().st_size >= size:
                return
            chunk = bytes(65536)
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         SPOOL_FILE_MODE)
            os.fchmod(fd, SPOOL_FILE_MODE)  # open's mode is masked by the umask
            with os.fdopen(fd, "wb") as fh:
                left = size
                while left > 0:
                    left -= fh.write(chunk[:min(left, len(chunk))])
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            log.warning("spool %s: no room for its %d-byte disk-full reserve (%s): the disk "
                        "is smaller than the cap of %d bytes asks for", self.path, size, exc,
                        self.cfg.max_bytes)

    def _reject_all(self, appends: list[Append]) -> CommitResult:
        result = CommitResult(ids=[None] * len(appends), full=True,
                              dropped_batches=len(appends),
                              dropped_readings=sum(a.readings for a in appends))
        self.meta["dropped_batches"] += result.dropped_batches
        self.meta["dropped_readings"] += result.dropped_readings
        self._meta_dirty = True
        try:  # the counters may not fit either; they stay in memory and go with the next commit
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            self.write_meta(cur)
            cur.execute("COMMIT")
            self._meta_dirty = False
        except sqlite3.DatabaseError:
            self.rollback()
        return result

    def _transaction(self, appends: list[Append], deletes: list[StoredRow],
                     in_flight: set[int], budget: int) -> CommitResult:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        meta = dict(self.meta)
        pending, self.pending_meta = self.pending_meta, {}
        if pending:
            meta.update(pending)
            self._meta_dirty = True
        if deletes and self.confirming:  # acknowledged: kept until a receipt confirms them
            meta["send_ord"] = mark_sent(cur, [d.id for d in deletes], meta["send_ord"],
                                         int(time.time() * 1000))
            self._meta_dirty = True
            marked, deletes = len(deletes), []
        else:
            marked = 0
            cur.executemany("DELETE FROM batches WHERE id = ?", [(d.id,) for d in deletes])
        stored = self.cost - sum(d.cost for d in deletes)
        new = [NewBatch(row_cost(len(a.payload)), a.readings) for a in appends]
        exclude = in_flight | {d.id for d in deletes}
        decision = admit(new, stored, budget, self.cfg.policy, self._oldest(exclude))
        result = CommitResult(ids=[], evicted=[r.id for r in decision.evict])
        if decision.evict:
            out = set(result.evicted)
            result.evicted_sent = {rid for (rid,) in cur.execute(
                "SELECT id FROM sent WHERE id BETWEEN ? AND ?", (min(out), max(out)))
                if rid in out}
            cur.executemany("DELETE FROM batches WHERE id = ?", [(r.id,) for r in decision.evict])
        pushed_out = set(decision.evict_new)
        for i, (a, ok) in enumerate(zip(appends, decision.accepted, strict=True)):
            if not ok or i in pushed_out:
                result.ids.append(None)
                result.dropped_batches += 1
                result.dropped_readings += a.readings
                continue
            cur.execute("INSERT INTO batches (epoch, seq, readings, nbytes, crc, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (a.epoch, a.seq, a.readings, len(a.payload), payload_crc(a.payload),
                         a.payload))
            result.ids.append(cur.lastrowid)
            self.last_id = max(self.last_id, cur.lastrowid or 0)
        result.dropped_batches += len(decision.evict)
        result.dropped_readings += sum(r.readings for r in decision.evict)
        meta["dropped_batches"] += result.dropped_batches
        meta["dropped_readings"] += result.dropped_readings
        if result.dropped_batches or self._meta_dirty:
            self.write_meta(cur, meta)
        cur.execute("COMMIT")
        # committed: now the in-memory totals follow
        self.meta = meta
        self._meta_dirty = False
        gone = deletes + decision.evict
        kept = [a for a, rid in zip(appends, result.ids, strict=True) if rid is not None]
        self.rows += len(kept) - len(gone)
        # evicted rows may have been sent ones; recounted only when some were evicted
        self.sent_rows += marked
        if decision.evict:
            self.sent_rows = int(cur.execute("SELECT count(*) FROM sent").fetchone()[0])
        self.cost += sum(row_cost(len(a.payload)) for a in kept) - sum(r.cost for r in gone)
        self.readings += sum(a.readings for a in kept) - sum(r.readings for r in gone)
        return result

    def write_meta(self, cur: sqlite3.Cursor, meta: dict[str, int] | None = None) -> None:
        meta = self.meta if meta is None else meta
        cur.executemany("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [(k, meta[k]) for k in META_KEYS])

    def rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.DatabaseError as exc:
                log.debug("rollback failed: %s", exc)

    # ------------------------------------------------------------------ state

    def disk_bytes(self) -> int:
        """Bytes the spool's files take on disk now (database, WAL, WAL index, reserve)."""
        total = 0
        for suffix in ("", "-wal", "-shm", ".reserve"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def counters(self) -> dict[str, int]:
        """The lifetime counters kept in the file."""
        return {k: self.meta[k] for k in COUNTER_KEYS}

    def close(self) -> None:
        """Close the connection (the last close checkpoints and removes the WAL)."""
        self.conn.close()

"""Where the cloud ingest writes: SQLite (default) or PostgreSQL, through the same SQL.

One transaction per group of batches: each batch is claimed by inserting its identity
(gateway, epoch, seq) with ON CONFLICT DO NOTHING, so a duplicate adds nothing, even when
several ingest workers race on PostgreSQL. Readings keep their value's type exactly (bools and
ints up to int64 as integers, floats as float64, the rest as text). Gaps are derived from the
batches table with a window query and recorded with when they opened and closed.

A message that cannot be stored costs that message only: each one is written under its own
SAVEPOINT, and one the database refuses for its values (``message_fault``: an int beyond
int64, text no encoder can write, a constraint) is rolled back alone and set aside in the
``rejected`` table with the rest of the group committed. An error of the database itself
(locked, gone, disk full) still fails the whole group, which is then not acknowledged and
comes again from the broker. ``rejected`` keeps, per message, the gateway from the topic,
the time, a reason code, the error, the size and the first ``REJECTED_PREFIX`` bytes in hex.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from edge_agent.codecs.batch import DataBatch
from edge_agent.codecs.schema import StreamSchema
from edge_agent.fleet.ingest import parking
from edge_agent.fleet.ingest.schema import (
    CLAIM,
    COUNT_REJECTED,
    CURRENT_GAPS,
    DDL,
    INSERT_READING,
    INSERT_REJECTED,
    INT64_RANGE,
    PRUNE_EVERY,
    PRUNE_REJECTED,
    REJECTED_ADDED,
    REJECTED_PREFIX,
    REJECTED_ROWS,
    REJECTED_TEXT,
    SEED_TOTALS,
    STREAM,
    reading_rows,
)
from edge_agent.fleet.pgconnect import connect_postgresql, is_postgresql
from edge_agent.fleet.sqlite_file import create_private_sqlite
from edge_agent.protocol.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Received:
    """One data message as the broker delivered it."""

    topic: str
    payload: bytes
    batch: DataBatch | None   # None when it was refused
    error: str | None = None  # why it was refused, naming the field and value
    reason: str = "undecodable"  # the refusal's reason code, counted per reason
    gateway: str | None = None   # the gateway the topic names, if it names a valid one
    defer: bool = False          # a good batch over its gateway's budget: keep it for later
    schema: StreamSchema | None = None  # a schema message, read and checked
    missing: bytes | None = None  # a v3 batch whose schema (this hash) is not here: parked


DEFERRED_CAP_BYTES = 256 * 1024 * 1024  # per gateway: what one spool's worth of backlog may be


# What ``IngestStore.record_each`` did with each message.
STORED, DUPLICATE, REJECTED, DEFERRED = "stored", "duplicate", "rejected", "deferred"
SCHEMA, PARKED = parking.SCHEMA, parking.PARKED


class Outcome(NamedTuple):
    """What became of one message: STORED, DUPLICATE or REJECTED, with the reason and error."""

    status: str
    reason: str = ""
    error: str = ""


def message_fault(exc: BaseException) -> bool:
    """Whether a database error is the message's own (its values), not the database's.

    Binding errors (an int beyond int64, a string no UTF-8 encoder can write) and data or
    constraint errors are the message's: retrying it can only fail again. Everything else
    (locked, disconnected, disk full, a missing table) is the database's.
    """
    if isinstance(exc, OverflowError | UnicodeError | ValueError | TypeError
                  | sqlite3.IntegrityError | sqlite3.DataError):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a dependency
        return False
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


def _text(value: str, limit: int = REJECTED_TEXT) -> str:
    """``value`` as text every database can store: no lone surrogates or NULs, bounded."""
    safe = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return safe if len(safe) <= limit else safe[:limit] + "..."


def storable_problem(b: DataBatch) -> str | None:
    """Why the database could not store ``b`` as it is, or None (checked before it is tried).

    Integers it keys and orders by must be int64 (SQLite raises OverflowError beyond), and text
    must be UTF-8 without lone surrogates or NUL (PostgreSQL's TEXT refuses NUL). Values beyond
    int64 are fine: they are stored as text.
    """
    for what, v in (("epoch", b.epoch), ("seq", b.seq)):
        if type(v) is not int or not INT64_RANGE[0] <= v <= INT64_RANGE[1]:
            return f"batch {what} {v!r} is not an int64"
    names = {b.gateway}
    for i, r in enumerate(b.readings):
        if type(r.ts_ms) is not int or not INT64_RANGE[0] <= r.ts_ms <= INT64_RANGE[1]:
            return f"reading {i}: timestamp {r.ts_ms!r} is not an int64"
        code = r.exception_code
        if code is not None and (type(code) is not int or not 0 <= code <= 2**31 - 1):
            return f"reading {i}: exception code {code!r} is not a small int"
        names.add(r.device)
        names.add(r.point)
        if isinstance(r.value, str) and (problem := _text_problem(r.value)):
            return f"reading {i} ({_text(r.device, 64)}/{_text(r.point, 64)}): value {problem}"
    for name in names:
        if not isinstance(name, str):
            return f"name {name!r} is not text"
        if problem := _text_problem(name):
            return f"name {_text(name, 80)!r} {problem}"
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (not UTF-8 text)"
    return None


class IngestStore:
    """A connection to the ingest database and the few statements the ingest needs."""

    def __init__(self, url: str, *, schema: str | None = None,
                 deferred_cap_bytes: int = DEFERRED_CAP_BYTES) -> None:
        self.url = url
        self.deferred_cap_bytes = deferred_cap_bytes
        self._since_prune = 0
        self.dialect = "postgresql" if is_postgresql(url) else "sqlite"
        if self.dialect == "postgresql":
            self.conn: Any = connect_postgresql(url, autocommit=False)
            if schema:
                if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
                    raise ConfigError(f"--db-schema {schema!r}: expected a lower-case SQL name")
                self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                self.conn.execute(f"SET search_path TO {schema}")
            self.conn.execute(DDL["postgresql"])
            self.conn.execute(parking.DDL["postgresql"])
            self._add_rejected_columns()
            self.conn.commit()
            self._seed_totals()
        else:
            path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
            if url.startswith("sqlite://") and not url.startswith("sqlite:///"):
                raise ConfigError(f"--db {url}: expected sqlite:///path/to/file.db")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            create_private_sqlite(path)
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")  # acked to the broker after commit
            self.conn.execute("PRAGMA busy_timeout = 10000")
            self.conn.executescript(DDL["sqlite"] + parking.DDL["sqlite"])
            self._add_rejected_columns()
            self._seed_totals()

    def _add_rejected_columns(self) -> None:
        """Give a ``rejected`` table made by an older version the columns added since."""
        if self.dialect == "sqlite":
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(rejected)")}
        else:
            have = {r[0] for r in self.conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = "
                "'rejected' AND table_schema = current_schema()")}
        for column in REJECTED_ADDED:
            if column not in have:
                self.conn.execute(f"ALTER TABLE rejected ADD COLUMN {column} TEXT")

    def _seed_totals(self) -> None:
        """Count what a database made before ``rejected_totals`` had already set aside."""
        cur = self._begin()
        try:
            cur.execute(SEED_TOTALS)
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _begin(self) -> Any:
        if self.dialect == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn.cursor()
        return self.conn.cursor()

    def _commit(self) -> None:
        if self.dialect == "sqlite":
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()

    def _rollback(self) -> None:
        if self.dialect == "sqlite":
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        else:
            self.conn.rollback()

    def record(self, messages: Sequence[Received], now_ms: int | None = None) -> tuple[int, int]:
        """Store a group of messages in one transaction; (new batches, duplicates)."""
        statuses = [o.status for o in self.record_each(messages, now_ms)]
        return statuses.count(STORED), statuses.count(DUPLICATE)

    def record_each(self, messages: Sequence[Received], now_ms: int | None = None, *,
                    unpark: Sequence[int] = ()) -> list[Outcome]:
        """Store a group of messages in one transaction; what became of each, in order.

        A message refused before (``batch`` None) or refused by the database for its own
        values is kept in ``rejected`` and its Outcome says why; an error of the database
        itself rolls the whole group back and raises. ``unpark``: parked rows to delete with them.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        outcomes: list[Outcome] = []
        cur = self._begin()
        try:
            for row_id in unpark:
                cur.execute(self._sql(parking.DELETE_PARKED), (row_id,))
            for m in messages:
                cur.execute("SAVEPOINT message")
                try:
                    outcomes.append(self._one(cur, m, now_ms))
                except Exception as exc:
                    if not message_fault(exc):
                        raise
                    cur.execute("ROLLBACK TO SAVEPOINT message")
                    error = f"the database refused it: {type(exc).__name__}: {exc}"
                    self._reject(cur, m, now_ms, "database", error)
                    outcomes.append(Outcome(REJECTED, "database", error))
                cur.execute("RELEASE SAVEPOINT message")
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return outcomes

    def _one(self, cur: Any, m: Received, now_ms: int) -> Outcome:
        b = m.batch
        kept = parking.keep(cur, self._sql, m.schema, m.gateway, m.missing, _text(m.topic, 500),
                            m.payload, now_ms)
        if kept:  # a schema message, or a batch waiting for its schema
            return Outcome(kept, m.reason, m.error or "")
        if b is None:
            error = m.error or "undecodable"
            self._reject(cur, m, now_ms, m.reason, error)
            return Outcome(REJECTED, m.reason, error)
        if m.defer:
            return self._defer(cur, m, now_ms)
        cur.execute(self._sql(CLAIM), (b.gateway, b.epoch, b.seq, len(b.readings),
                                       len(m.payload), now_ms))
        fresh = cur.rowcount == 1
        if fresh:
            cur.executemany(self._sql(INSERT_READING), list(reading_rows(b)))
        cur.execute(self._sql(STREAM), (b.gateway, b.epoch, int(fresh),
                                        len(b.readings) if fresh else 0, int(not fresh),
                                        b.seq, now_ms))
        return Outcome(STORED if fresh else DUPLICATE)

    def _defer(self, cur: Any, m: Received, now_ms: int) -> Outcome:
        """Keep a good batch over its gateway's budget whole until the budget allows it; set it
        aside (reason ``rate``) only when the gateway's deferred backlog is full."""
        gateway = m.gateway or ""
        cur.execute(self._sql(parking.PARKED_BYTES), (gateway, parking.BUDGET))
        used = int(cur.fetchone()[0])
        if used + len(m.payload) > self.deferred_cap_bytes:
            error = (f"{m.error}; its deferred backlog of {used} bytes is full (cap "
                     f"{self.deferred_cap_bytes})")
            self._reject(cur, m, now_ms, "rate", error)
            return Outcome(REJECTED, "rate", error)
        cur.execute(self._sql(parking.INSERT_PARKED),
                    (gateway, parking.BUDGET, _text(m.topic, 500), now_ms, m.payload))
        return Outcome(DEFERRED, "rate", m.error or "")

    def _reject(self, cur: Any, m: Received, now_ms: int, reason: str, error: str) -> None:
        """Set a message aside in ``rejected`` (every text made storable first), count it, and
        keep the table to its newest REJECTED_ROWS rows."""
        cur.execute(self._sql(INSERT_REJECTED),
                    (_text(m.topic, 500), None if m.gateway is None else _text(m.gateway, 64),
                     now_ms, len(m.payload), _text(reason, 64), _text(error),
                     m.payload[:REJECTED_PREFIX].hex()))
        cur.execute(self._sql(COUNT_REJECTED), (_text(reason, 64),))
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            cur.execute(self._sql(PRUNE_REJECTED), (REJECTED_ROWS,))

    def deferred_gateways(self) -> list[str]:
        """The gateways with batches waiting for their budget."""
        return [str(r[0]) for r in self.query(parking.GATEWAYS_PARKED, (parking.BUDGET,))]

    def next_deferred(self, gateway: str, limit: int) -> list[tuple[int, str, bytes]]:
        """(id, topic, payload) of ``gateway``'s oldest batches waiting for its budget."""
        return [(int(i), str(t), parking.blob(p)) for i, t, p in
                self.query(parking.SELECT_PARKED, (gateway, parking.BUDGET, limit))]

    def deferred_backlog(self) -> tuple[int, int]:
        """(batches, bytes) waiting for their gateways' budgets."""
        rows, size = self.query(parking.BACKLOG, (parking.BUDGET,))[0]
        return int(rows), int(size)

    def scan_gaps(self, now_ms: int | None = None) -> list[tuple[str, int, int, int]]:
        """Record gaps that opened and close the ones filled since; the open gaps."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cur = self._begin()
        try:
            cur.execute(CURRENT_GAPS)
            current = {tuple(r) for r in cur.fetchall()}
            cur.execute("SELECT gateway, epoch, seq_from, seq_to FROM gaps "
                        "WHERE closed_ms IS NULL")
            recorded = {tuple(r) for r in cur.fetchall()}
            for g in sorted(recorded - current):
                cur.execute(self._sql("UPDATE gaps SET closed_ms = ? WHERE gateway = ? AND "
                                      "epoch = ? AND seq_from = ? AND seq_to = ?"), (now_ms, *g))
            for g in sorted(current - recorded):
                cur.execute(self._sql("INSERT INTO gaps (gateway, epoch, seq_from, seq_to, "
                                      "detected_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO "
                                      "NOTHING"), (*g, now_ms))
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return sorted(current)

    def execute(self, sql: str, params: Iterable[object] = ()) -> None:
        """Run one writing statement in its own transaction (``?`` placeholders)."""
        cur = self._begin()
        try:
            cur.execute(self._sql(sql), tuple(params))
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def query(self, sql: str, params: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (``?`` placeholders in both dialects)."""
        cur = self.conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        rows = [tuple(r) for r in cur.fetchall()]
        if self.dialect == "postgresql":
            self.conn.rollback()  # end the implicit read transaction
        return rows

    def summary(self) -> dict[str, Any]:
        """Totals per gateway and epoch, and the open gaps."""
        streams = self.query("SELECT gateway, epoch, batches, readings, duplicates, max_seq "
                             "FROM streams ORDER BY gateway, epoch")
        gaps = self.query("SELECT gateway, epoch, seq_from, seq_to FROM gaps "
                          "WHERE closed_ms IS NULL ORDER BY gateway, epoch, seq_from")
        by_reason = {str(r): int(n) for r, n in
                     self.query("SELECT reason, total FROM rejected_totals")}
        deferred, deferred_bytes = self.deferred_backlog()
        return {"streams": streams, "open_gaps": gaps, "rejected": sum(by_reason.values()),
                "rejected_by_reason": dict(sorted(by_reason.items())),
                "deferred": deferred, "deferred_bytes": deferred_bytes}

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

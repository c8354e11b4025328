"""The ingest database's schema and statements, written once for SQLite and PostgreSQL.

SQLite's INTEGER is already 64-bit and its INTEGER PRIMARY KEY auto-increments; PostgreSQL
needs BIGINT, BIGSERIAL, DOUBLE PRECISION and BYTEA spelt out. Statements use ``?``
placeholders; the store turns them into ``%s`` for psycopg.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from edge_agent.codecs.batch import DataBatch
from edge_agent.protocol.readings import Quality, Reading, Value

INT64_RANGE = (-(2**63), 2**63 - 1)

_DDL_TEMPLATE = """
CREATE TABLE IF NOT EXISTS batches (gateway TEXT NOT NULL, epoch {big} NOT NULL,
    seq {big} NOT NULL, readings INTEGER NOT NULL, bytes INTEGER NOT NULL,
    received_ms {big} NOT NULL, PRIMARY KEY (gateway, epoch, seq));
CREATE TABLE IF NOT EXISTS readings (id {serial} PRIMARY KEY, gateway TEXT NOT NULL,
    epoch {big} NOT NULL, seq {big} NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL,
    ts_ms {big} NOT NULL, quality TEXT NOT NULL, exception_code INTEGER, kind TEXT NOT NULL,
    value_int {big}, value_real {real}, value_text TEXT);
CREATE INDEX IF NOT EXISTS readings_series ON readings (gateway, device, point, ts_ms);
CREATE TABLE IF NOT EXISTS streams (gateway TEXT NOT NULL, epoch {big} NOT NULL,
    batches {big} NOT NULL, readings {big} NOT NULL, duplicates {big} NOT NULL,
    max_seq {big} NOT NULL, last_ms {big} NOT NULL, PRIMARY KEY (gateway, epoch));
CREATE TABLE IF NOT EXISTS gaps (gateway TEXT NOT NULL, epoch {big} NOT NULL,
    seq_from {big} NOT NULL, seq_to {big} NOT NULL, detected_ms {big} NOT NULL,
    closed_ms {big}, PRIMARY KEY (gateway, epoch, seq_from, seq_to));
CREATE TABLE IF NOT EXISTS rejected (topic TEXT NOT NULL, received_ms {big} NOT NULL,
    bytes INTEGER NOT NULL, error TEXT NOT NULL, gateway TEXT, reason TEXT, payload_hex TEXT);
CREATE INDEX IF NOT EXISTS rejected_age ON rejected (received_ms);
CREATE TABLE IF NOT EXISTS rejected_totals (reason TEXT PRIMARY KEY, total {big} NOT NULL);
CREATE TABLE IF NOT EXISTS epoch_ends (gateway TEXT NOT NULL, epoch {big} NOT NULL,
    last_seq {big} NOT NULL, PRIMARY KEY (gateway, epoch));
"""
# Columns added to ``rejected`` after its first version: a database made before them gets them
# with ALTER TABLE when opened (the same SQL in both dialects).
REJECTED_ADDED = ("gateway", "reason", "payload_hex")
REJECTED_PREFIX = 256  # bytes of a rejected payload kept (in hex): enough to see what it was
REJECTED_TEXT = 2000   # characters of a rejection's error text kept
INSERT_REJECTED = ("INSERT INTO rejected (topic, gateway, received_ms, bytes, reason, error, "
                   "payload_hex) VALUES (?, ?, ?, ?, ?, ?, ?)")
# ``rejected`` keeps the newest REJECTED_ROWS rows (a flood of poison must not fill the disk);
# ``rejected_totals`` counts every rejection ever, by reason, so the totals stay exact.
REJECTED_ROWS = 100_000
PRUNE_EVERY = 1000  # rejections between two prunes
COUNT_REJECTED = ("INSERT INTO rejected_totals (reason, total) VALUES (?, 1) ON CONFLICT "
                  "(reason) DO UPDATE SET total = rejected_totals.total + 1")
# Run at every open, atomically: a database from before the totals gets them once, and a
# worker opening it while another rejects neither double counts nor collides.
SEED_TOTALS = ("INSERT INTO rejected_totals (reason, total) SELECT COALESCE(reason, "
               "'undecodable'), count(*) FROM rejected WHERE NOT EXISTS (SELECT 1 FROM "
               "rejected_totals) GROUP BY COALESCE(reason, 'undecodable') "
               "ON CONFLICT (reason) DO NOTHING")
PRUNE_REJECTED = ("DELETE FROM rejected WHERE received_ms < (SELECT received_ms FROM rejected "
                  "ORDER BY received_ms DESC LIMIT 1 OFFSET ?)")
DDL = {
    "sqlite": _DDL_TEMPLATE.format(big="INTEGER", serial="INTEGER", real="REAL"),
    "postgresql": _DDL_TEMPLATE.format(big="BIGINT", serial="BIGSERIAL",
                                       real="DOUBLE PRECISION"),
}

CLAIM = ("INSERT INTO batches (gateway, epoch, seq, readings, bytes, received_ms) "
         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
INSERT_READING = ("INSERT INTO readings (gateway, epoch, seq, device, point, ts_ms, quality, "
                  "exception_code, kind, value_int, value_real, value_text) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
STREAM = ("INSERT INTO streams (gateway, epoch, batches, readings, duplicates, max_seq, last_ms) "
          "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, epoch) DO UPDATE SET "
          "batches = streams.batches + excluded.batches, "
          "readings = streams.readings + excluded.readings, "
          "duplicates = streams.duplicates + excluded.duplicates, "
          "max_seq = CASE WHEN excluded.max_seq > streams.max_seq THEN excluded.max_seq "
          "ELSE streams.max_seq END, last_ms = excluded.last_ms")
# Missing seqs between received ones, and before the first (seqs count from 0 per epoch);
# and the lost tail of an epoch whose end a later boot reported (``epoch_ends``).
CURRENT_GAPS = ("SELECT gateway, epoch, prev + 1, seq - 1 FROM (SELECT gateway, epoch, seq, "
                "LAG(seq, 1, -1) OVER (PARTITION BY gateway, epoch ORDER BY seq) AS prev "
                "FROM batches) AS t WHERE seq > prev + 1 "
                "UNION ALL SELECT e.gateway, e.epoch, COALESCE(s.max_seq, -1) + 1, e.last_seq "
                "FROM epoch_ends AS e LEFT JOIN streams AS s ON s.gateway = e.gateway AND "
                "s.epoch = e.epoch WHERE e.last_seq > COALESCE(s.max_seq, -1)")


def value_columns(value: object) -> tuple[str, int | None, float | None, str | None]:
    """(kind, value_int, value_real, value_text) holding ``value`` exactly."""
    if value is None:
        return "n", None, None, None
    if isinstance(value, bool):
        return "b", int(value), None, None
    if isinstance(value, int):
        if INT64_RANGE[0] <= value <= INT64_RANGE[1]:
            return "i", value, None, None
        return "I", None, None, str(value)  # beyond int64 (uint64 counters): exact as text
    if isinstance(value, float):
        return "f", None, value, None
    return "s", None, None, str(value)


def value_from(kind: str, vi: int | None, vr: float | None, vt: str | None) -> Value | None:
    """The value stored by ``value_columns``."""
    if kind == "b":
        return bool(vi)
    if kind == "I":
        return int(vt) if vt is not None else None
    if kind == "i":
        return vi
    if kind == "f":
        return vr
    return vt if kind == "s" else None


def reading_rows(b: DataBatch) -> Iterable[tuple[object, ...]]:
    """The rows of ``readings`` for a batch, in INSERT_READING's column order."""
    for r in b.readings:
        yield (b.gateway, b.epoch, b.seq, r.device, r.point, r.ts_ms, str(r.quality),
               r.exception_code, *value_columns(r.value))


def reading_from(row: Sequence[Any]) -> Reading:
    """A Reading from (device, point, ts_ms, quality, exception_code, kind, vi, vr, vt)."""
    device, point, ts, quality, code, kind, vi, vr, vt = row
    return Reading(device, point, int(ts), value_from(kind, vi, vr, vt), Quality(quality), code)

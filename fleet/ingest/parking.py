"""The ingest's schemas and parked batches: the SQL beside ``store`` (both dialects).

A batch is parked, kept whole as it came, while it waits for one of two things: its schema
(``hash`` names it) or its gateway's reading budget (``hash`` is ``BUDGET``, empty: a good
batch over the budget is stored when the budget refills, not set aside).

A version 3 data batch decodes only with its gateway's schema message for that boot epoch.
Every schema the ingest is sent is kept (``schemas``, by gateway and hash, the message as it
came), so a batch is decoded whenever it arrives, also years later from a replayed spool. A
batch whose schema the ingest does not have yet is not lost and not refused for good: it is
*parked* (``parked``: the message as it came), counted, the gateway is asked for the schema,
and the batch is decoded and stored the moment the schema arrives. A gateway may park at most
``MAX_PARKED_PER_GATEWAY`` batches; beyond that they are set aside as rejected (reason
``missing_schema``), so a gateway that never sends its schema cannot fill the database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.codecs.schema import StreamSchema

MAX_PARKED_PER_GATEWAY = 10_000
SCHEMA, PARKED = "schema", "parked"  # a schema kept; a batch waiting for its schema
BUDGET = ""  # the hash of a batch parked for its gateway's budget, not for a schema

DDL_TEMPLATE = """
CREATE TABLE IF NOT EXISTS schemas (gateway TEXT NOT NULL, hash TEXT NOT NULL,
    epoch {big} NOT NULL, series INTEGER NOT NULL, received_ms {big} NOT NULL,
    body {blob} NOT NULL, PRIMARY KEY (gateway, hash));
CREATE TABLE IF NOT EXISTS parked (id {serial} PRIMARY KEY, gateway TEXT NOT NULL,
    hash TEXT NOT NULL, topic TEXT NOT NULL, received_ms {big} NOT NULL,
    payload {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS parked_schema ON parked (gateway, hash);
"""
DDL = {
    "sqlite": DDL_TEMPLATE.format(big="INTEGER", serial="INTEGER", blob="BLOB"),
    "postgresql": DDL_TEMPLATE.format(big="BIGINT", serial="BIGSERIAL", blob="BYTEA"),
}
INSERT_SCHEMA = ("INSERT INTO schemas (gateway, hash, epoch, series, received_ms, body) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
SELECT_SCHEMA = "SELECT body FROM schemas WHERE gateway = ? AND hash = ?"
COUNT_PARKED = "SELECT count(*) FROM parked WHERE gateway = ? AND hash <> ''"
INSERT_PARKED = ("INSERT INTO parked (gateway, hash, topic, received_ms, payload) "
                 "VALUES (?, ?, ?, ?, ?)")
SELECT_PARKED = ("SELECT id, topic, payload FROM parked WHERE gateway = ? AND hash = ? "
                 "ORDER BY id LIMIT ?")
DELETE_PARKED = "DELETE FROM parked WHERE id = ?"
WAITING = ("SELECT gateway, hash, count(*) FROM parked WHERE hash <> '' GROUP BY gateway, hash "
           "ORDER BY gateway, hash")
PARKED_BYTES = "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM parked WHERE gateway = ? AND hash = ?"
GATEWAYS_PARKED = "SELECT DISTINCT gateway FROM parked WHERE hash = ? ORDER BY gateway"
BACKLOG = "SELECT count(*), COALESCE(SUM(LENGTH(payload)), 0) FROM parked WHERE hash = ?"


def blob(value: Any) -> bytes:
    """A BLOB/BYTEA column's value as bytes (PostgreSQL hands back memoryview)."""
    return bytes(value)


def keep(cur: Any, sql: Callable[[str], str], schema: StreamSchema | None, gateway: str | None,
         missing: bytes | None, topic: str, payload: bytes, now_ms: int) -> str | None:
    """Keep a schema message (SCHEMA) or park a batch missing its schema (PARKED) in the
    group's transaction; None when the message is neither, or its gateway has too many
    parked batches (then it is rejected, reason ``missing_schema``)."""
    if schema is not None:
        cur.execute(sql(INSERT_SCHEMA), (schema.gateway, schema.hash.hex(), schema.epoch,
                                         len(schema.series), now_ms, schema.raw))
        return SCHEMA
    if missing is None or gateway is None:
        return None
    cur.execute(sql(COUNT_PARKED), (gateway,))
    if int(cur.fetchone()[0]) >= MAX_PARKED_PER_GATEWAY:
        return None
    cur.execute(sql(INSERT_PARKED), (gateway, missing.hex(), topic, now_ms, payload))
    return PARKED

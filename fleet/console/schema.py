"""The console's tables, in the registry's database (the same SQL for SQLite and PostgreSQL).

Every piece of console state lives here, none in a process: several console instances behind
a load balancer share one database and any of them can answer any request.
"""

from __future__ import annotations

from typing import Any

SCHEMA = [
    # Local accounts: scrypt hashes (hashlib.scrypt, parameters stored with each hash).
    """CREATE TABLE IF NOT EXISTS console_users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        created_ms BIGINT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)""",
    # The key that signs session cookies, made once and shared by every instance.
    """CREATE TABLE IF NOT EXISTS console_secrets (
        name TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    # Failed logins per key (user name, client address) in the current window.
    """CREATE TABLE IF NOT EXISTS console_logins (
        key TEXT PRIMARY KEY, window_ms BIGINT NOT NULL, failures BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS console_audit (
        id {serial} PRIMARY KEY, ts_ms BIGINT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)""",
    # An alarm is open while cleared_ms is NULL; at most one open alarm per (source, kind).
    """CREATE TABLE IF NOT EXISTS console_alarms (
        id {serial} PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL,
        gateway TEXT NOT NULL, detail TEXT NOT NULL, raised_ms BIGINT NOT NULL,
        cleared_ms BIGINT, acked_ms BIGINT, acked_by TEXT)""",
    """CREATE INDEX IF NOT EXISTS console_alarms_open ON console_alarms (cleared_ms)""",
    # Conditions seen but not yet held for the alarm delay (the evaluator's memory).
    """CREATE TABLE IF NOT EXISTS console_pending (
        source TEXT NOT NULL, kind TEXT NOT NULL, since_ms BIGINT NOT NULL,
        PRIMARY KEY (source, kind))""",
    # Health documents sampled by the evaluator, for a gateway's history (bounded per gateway).
    """CREATE TABLE IF NOT EXISTS console_health (
        gateway TEXT NOT NULL, ts_ms BIGINT NOT NULL, online INTEGER NOT NULL,
        devices_offline INTEGER NOT NULL, spool_batches BIGINT NOT NULL,
        spool_dropped BIGINT NOT NULL, rss_bytes BIGINT NOT NULL,
        PRIMARY KEY (gateway, ts_ms))""",
    # Each point's latest reading, kept by the evaluator from the ingest's new rows.
    """CREATE TABLE IF NOT EXISTS console_latest (
        gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL, quality TEXT NOT NULL, kind TEXT NOT NULL, value_int BIGINT,
        value_real {real}, value_text TEXT, PRIMARY KEY (gateway, device, point))""",
    # Small named integers: the evaluator's cursor into the ingest's readings.
    """CREATE TABLE IF NOT EXISTS console_state (
        name TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
    # Which instance runs the alarm evaluator (a lease, as rollouts have).
    """CREATE TABLE IF NOT EXISTS console_leases (
        name TEXT PRIMARY KEY, owner TEXT, until_ms BIGINT NOT NULL)""",
]


def statements(pg: bool) -> list[str]:
    """The schema in one dialect."""
    serial, real = ("BIGSERIAL", "DOUBLE PRECISION") if pg else ("INTEGER", "REAL")
    return [s.replace("{serial}", serial).replace("{real}", real) for s in SCHEMA]


def ensure(registry: Any) -> None:
    """Create the console's tables in the registry's database if they are missing."""
    with registry.transaction():
        for stmt in statements(registry.pg):
            registry.execute(stmt)

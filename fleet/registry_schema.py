"""The registry's tables: the same SQL for SQLite and PostgreSQL (integer ms times as BIGINT)."""

from __future__ import annotations

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sites (
        id TEXT PRIMARY KEY, created_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS gateways (
        id TEXT PRIMARY KEY, site TEXT NOT NULL REFERENCES sites(id),
        broker_password_hash TEXT, enrolled_ms BIGINT,
        last_seen_ms BIGINT, online INTEGER NOT NULL DEFAULT 0, health TEXT,
        config_version BIGINT NOT NULL DEFAULT 0,
        result TEXT, result_version BIGINT, result_reason TEXT, result_ms BIGINT,
        desired_bundle TEXT)""",
    """CREATE TABLE IF NOT EXISTS gateway_tags (
        gateway TEXT NOT NULL REFERENCES gateways(id), tag TEXT NOT NULL,
        PRIMARY KEY (gateway, tag))""",
    """CREATE TABLE IF NOT EXISTS tokens (
        token_sha256 TEXT PRIMARY KEY, gateway TEXT NOT NULL, site TEXT NOT NULL,
        tags TEXT NOT NULL, expires_ms BIGINT NOT NULL, used_ms BIGINT)""",
    """CREATE TABLE IF NOT EXISTS roots (
        version BIGINT PRIMARY KEY, envelope TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bundles (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, version BIGINT NOT NULL,
        payload_sha256 TEXT NOT NULL, blob BYTEA NOT NULL, created_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS versions (
        kind TEXT PRIMARY KEY, last BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rollouts (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, state TEXT NOT NULL,
        rev BIGINT NOT NULL, owner TEXT, lease_until_ms BIGINT NOT NULL DEFAULT 0,
        command TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rollout_targets (
        rollout TEXT NOT NULL REFERENCES rollouts(id), gateway TEXT NOT NULL,
        PRIMARY KEY (rollout, gateway))""",
    # commands and their answers (fleet/cmdstore.py)
    """CREATE TABLE IF NOT EXISTS commands (
        id TEXT PRIMARY KEY, action TEXT NOT NULL, envelope TEXT NOT NULL,
        targets TEXT NOT NULL, created_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS command_results (
        id TEXT NOT NULL, gateway TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
        doc TEXT NOT NULL, received_ms BIGINT NOT NULL, PRIMARY KEY (id, gateway, status))""",
]

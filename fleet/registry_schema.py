"""The registry's tables: the same SQL for SQLite and PostgreSQL (integer ms times as BIGINT).

``SCHEMA`` creates what is missing; ``COLUMNS`` are added to a database created before them
(``ALTER TABLE ... ADD COLUMN``, the one spelling both accept); ``INDEXES`` follow the columns.
What the rollout driver asks every tick is indexed, so a tick costs what changed, not what
exists: reports waiting for a rollout (a partial index on ``pending > 0``), a gateway's targets
(each recorded report marks its active rollouts' rows), the active rollouts by status.
"""

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
        desired_bundle TEXT, result_ts BIGINT)""",
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
        command TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, plan TEXT)""",
    """CREATE TABLE IF NOT EXISTS rollout_targets (
        rollout TEXT NOT NULL REFERENCES rollouts(id), gateway TEXT NOT NULL,
        position BIGINT, status TEXT, reason TEXT, sent_ms BIGINT,
        pending BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (rollout, gateway))""",
    # commands and their answers (fleet/cmdstore.py)
    """CREATE TABLE IF NOT EXISTS commands (
        id TEXT PRIMARY KEY, action TEXT NOT NULL, envelope TEXT NOT NULL,
        targets TEXT NOT NULL, created_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS command_results (
        id TEXT NOT NULL, gateway TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
        doc TEXT NOT NULL, received_ms BIGINT NOT NULL, PRIMARY KEY (id, gateway, status))""",
    # each gateway's software, apart from its config result (fleet/swreport.py); a database
    # created before it gains the table empty, filled by the next state and software reports
    """CREATE TABLE IF NOT EXISTS gateway_software (
        gateway TEXT PRIMARY KEY REFERENCES gateways(id), running TEXT, running_ms BIGINT,
        result TEXT, version BIGINT, release TEXT, reason TEXT, log_tail TEXT,
        got_bytes BIGINT, total_bytes BIGINT, result_ms BIGINT, result_ts BIGINT)""",
    """CREATE TABLE IF NOT EXISTS intake_marks (
        owner TEXT PRIMARY KEY, caught_up_ms BIGINT NOT NULL, seen_ms BIGINT NOT NULL)""",
]

# (table, column, declaration) added since the first schema, for databases created before.
COLUMNS = [
    ("gateways", "result_ts", "BIGINT"),        # the gateway's own time of its latest report
    ("rollouts", "plan", "TEXT"),                # the immutable plan, written once
    ("rollout_targets", "position", "BIGINT"),   # wave order
    ("rollout_targets", "status", "TEXT"),       # the gateway's status in this rollout
    ("rollout_targets", "reason", "TEXT"),
    ("rollout_targets", "sent_ms", "BIGINT"),    # when its pending offer was published
    ("rollout_targets", "pending", "BIGINT NOT NULL DEFAULT 0"),  # reports not yet taken in
]

INDEXES = [
    "CREATE INDEX IF NOT EXISTS rollout_targets_gateway ON rollout_targets (gateway)",
    "CREATE INDEX IF NOT EXISTS rollout_targets_pending ON rollout_targets (rollout) "
    "WHERE pending > 0",
    "CREATE INDEX IF NOT EXISTS rollouts_status ON rollouts (status)",
]

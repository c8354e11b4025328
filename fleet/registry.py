"""The fleet registry: gateways, sites, tags, enrolment tokens, reports, roots, bundles, rollouts.

SQLite by default (``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a bare path),
PostgreSQL with ``postgresql://...`` through psycopg 3, with the same SQL: only '?'
placeholders are rewritten to '%s'. Times are integer milliseconds (BIGINT in both). Every
write is its own short transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol.errors import ConfigError

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
]


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """One gateway as the registry knows it."""

    id: str
    site: str
    tags: tuple[str, ...]
    online: bool
    last_seen_ms: int | None
    config_version: int
    result: str | None
    result_version: int | None
    result_reason: str | None
    health: dict[str, Any] | None


def token_hash(token: str) -> str:
    """Tokens are stored hashed: a copy of the database does not enrol anyone."""
    return hashlib.sha256(token.encode()).hexdigest()


class Registry:
    """The registry over one database connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        if url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError as exc:  # pragma: no cover - a dependency
                raise ConfigError("postgresql:// needs psycopg: pip install 'psycopg[binary]'") \
                    from exc
            try:
                self._conn: Any = psycopg.connect(url, autocommit=True)
            except psycopg.Error as exc:
                raise ConfigError(f"cannot connect to {url.split('@')[-1]}: {exc}") from exc
            self.pg = True
        else:
            # sqlite:///relative.db and sqlite:////absolute/path.db (SQLAlchemy's spelling)
            path = url.removeprefix("sqlite:///")
            if path.startswith(("sqlite:", "postgres")) or not path:
                raise ConfigError(f"registry URL {url!r}: expected sqlite:///PATH, a file path "
                                  "or postgresql://...")
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self.pg = False
        with self.transaction():
            for stmt in SCHEMA:
                self.execute(stmt)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    # ------------------------------------------------------------------ SQL plumbing

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._lock:
            cur = self._conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query; every row."""
        with self._lock:
            return [tuple(r) for r in self._conn.execute(self._sql(sql), tuple(params))]

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """Run a query; the first row or None."""
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction around several statements (BEGIN ... COMMIT, ROLLBACK on error)."""
        self.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    # ------------------------------------------------------------------ gateways, sites, tags

    def add_gateway(self, gateway: str, site: str, tags: Sequence[str], now_ms: int,
                    password_hash: str | None = None) -> None:
        """Create or update a gateway, its site and its tags."""
        with self.transaction():
            self.execute("INSERT INTO sites (id, created_ms) VALUES (?, ?) "
                         "ON CONFLICT (id) DO NOTHING", (site, now_ms))
            self.execute(
                "INSERT INTO gateways (id, site, broker_password_hash, enrolled_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET site = excluded.site, "
                "broker_password_hash = excluded.broker_password_hash, "
                "enrolled_ms = excluded.enrolled_ms", (gateway, site, password_hash, now_ms))
            self.execute("DELETE FROM gateway_tags WHERE gateway = ?", (gateway,))
            for tag in sorted(set(tags)):
                self.execute("INSERT INTO gateway_tags (gateway, tag) VALUES (?, ?)",
                             (gateway, tag))

    def gateways(self) -> list[GatewayRow]:
        """Every gateway, by id."""
        tags: dict[str, list[str]] = {}
        for gw, tag in self.fetchall("SELECT gateway, tag FROM gateway_tags ORDER BY tag"):
            tags.setdefault(gw, []).append(tag)
        rows = self.fetchall(
            "SELECT id, site, online, last_seen_ms, config_version, result, result_version, "
            "result_reason, health FROM gateways ORDER BY id")
        return [GatewayRow(r[0], r[1], tuple(tags.get(r[0], ())), bool(r[2]), r[3], int(r[4]),
                           r[5], r[6], r[7], json.loads(r[8]) if r[8] else None) for r in rows]

    def select_gateways(self, selectors: Sequence[str]) -> list[str]:
        """Gateway ids matching any selector: 'gw:ID', 'site:NAME', 'tag:NAME' or 'all'."""
        out: set[str] = set()
        for sel in selectors:
            what, _, name = sel.partition(":")
            if sel == "all":
                rows = self.fetchall("SELECT id FROM gateways")
            elif what == "gw":
                rows = self.fetchall("SELECT id FROM gateways WHERE id = ?", (name,))
                if not rows:
                    raise ConfigError(f"target {sel!r}: no gateway {name!r} is enrolled")
            elif what == "site":
                rows = self.fetchall("SELECT id FROM gateways WHERE site = ?", (name,))
            elif what == "tag":
                rows = self.fetchall("SELECT gateway FROM gateway_tags WHERE tag = ?", (name,))
            else:
                raise ConfigError(f"target {sel!r}: expected gw:ID, site:NAME, tag:NAME or all")
            out.update(r[0] for r in rows)
        return sorted(out)

    def password_hashes(self) -> list[tuple[str, str]]:
        """(gateway, mosquitto password hash) for every gateway that has broker credentials."""
        return [(r[0], r[1]) for r in self.fetchall(
            "SELECT id, broker_password_hash FROM gateways WHERE broker_password_hash "
            "IS NOT NULL ORDER BY id")]

    def record_report(self, gateway: str, doc: dict[str, Any], now_ms: int) -> bool:
        """Store a gateway's apply report; False if the gateway is unknown."""
        version = doc.get("version")
        committed = doc.get("committed")
        return self.execute(
            "UPDATE gateways SET result = ?, result_version = ?, result_reason = ?, "
            "result_ms = ?, config_version = ?, last_seen_ms = ? WHERE id = ?",
            (str(doc.get("result")), version if isinstance(version, int) else None,
             str(doc.get("reason", ""))[:500], now_ms,
             committed if isinstance(committed, int) else 0, now_ms, gateway)) == 1

    def record_health(self, gateway: str, doc: dict[str, Any], now_ms: int) -> bool:
        """Store a gateway's latest health document."""
        return self.execute("UPDATE gateways SET health = ?, last_seen_ms = ?, online = 1 "
                            "WHERE id = ?", (json.dumps(doc)[:20000], now_ms, gateway)) == 1

    def record_state(self, gateway: str, online: bool, now_ms: int) -> bool:
        """Store a gateway's online/offline state."""
        return self.execute("UPDATE gateways SET online = ?, last_seen_ms = ? WHERE id = ?",
                            (1 if online else 0, now_ms, gateway)) == 1

    # ------------------------------------------------------------------ enrolment tokens

    def add_token(self, token: str, gateway: str, site: str, tags: Sequence[str],
                  expires_ms: int) -> None:
        """Store a single-use enrolment token (hashed)."""
        self.execute("INSERT INTO tokens (token_sha256, gateway, site, tags, expires_ms) "
                     "VALUES (?, ?, ?, ?, ?)",
                     (token_hash(token), gateway, site, json.dumps(sorted(tags)), expires_ms))

    def redeem_token(self, token: str, now_ms: int) -> tuple[str, str, list[str]]:
        """Use a token once: (gateway, site, tags); ConfigError if unknown, used or expired."""
        h = token_hash(token)
        # One UPDATE decides: of two concurrent redemptions exactly one changes the row.
        if self.execute("UPDATE tokens SET used_ms = ? WHERE token_sha256 = ? AND used_ms IS "
                        "NULL AND expires_ms > ?", (now_ms, h, now_ms)) != 1:
            row = self.fetchone("SELECT used_ms, expires_ms FROM tokens WHERE token_sha256 = ?",
                                (h,))
            if row is None:
                raise ConfigError("enrolment token is not known")
            if row[0] is not None:
                raise ConfigError("enrolment token was already used")
            raise ConfigError("enrolment token has expired")
        row = self.fetchone("SELECT gateway, site, tags FROM tokens WHERE token_sha256 = ?", (h,))
        assert row is not None
        return row[0], row[1], list(json.loads(row[2]))

    # ------------------------------------------------------------------ roots and bundles

    def add_root(self, envelope: dict[str, Any]) -> None:
        """Store a root version (its number must be new)."""
        self.execute("INSERT INTO roots (version, envelope) VALUES (?, ?)",
                     (int(envelope["signed"]["version"]), json.dumps(envelope)))

    def roots(self) -> list[dict[str, Any]]:
        """Every root, oldest first."""
        return [json.loads(r[0]) for r in self.fetchall(
            "SELECT envelope FROM roots ORDER BY version")]

    def latest_root(self) -> dict[str, Any]:
        """The newest root; ConfigError if there is none yet."""
        row = self.fetchone("SELECT envelope FROM roots ORDER BY version DESC LIMIT 1")
        if row is None:
            raise ConfigError("the registry has no root yet: run 'edge-fleet root init'")
        return dict(json.loads(row[0]))

    def next_version(self, kind: str) -> int:
        """Allocate the next bundle version of ``kind`` (monotonic across the fleet)."""
        with self.transaction():
            self.execute("INSERT INTO versions (kind, last) VALUES (?, 0) "
                         "ON CONFLICT (kind) DO NOTHING", (kind,))
            self.execute("UPDATE versions SET last = last + 1 WHERE kind = ?", (kind,))
            row = self.fetchone("SELECT last FROM versions WHERE kind = ?", (kind,))
        assert row is not None
        return int(row[0])

    def add_bundle(self, kind: str, version: int, payload_sha256: str, blob: bytes,
                   now_ms: int) -> str:
        """Store signed bundle bytes; their id is the SHA-256 of the bytes."""
        bid = hashlib.sha256(blob).hexdigest()
        self.execute("INSERT INTO bundles (id, kind, version, payload_sha256, blob, created_ms) "
                     "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                     (bid, kind, version, payload_sha256, blob, now_ms))
        return bid

    def bundle(self, bundle_id: str) -> bytes:
        """The bytes of a stored bundle."""
        row = self.fetchone("SELECT blob FROM bundles WHERE id = ?", (bundle_id,))
        if row is None:
            raise ConfigError(f"no bundle {bundle_id[:12]} in the registry")
        return bytes(row[0])

    def set_desired(self, gateway: str, bundle_id: str) -> None:
        """Note the bundle a gateway is (to be) offered as its desired state."""
        self.execute("UPDATE gateways SET desired_bundle = ? WHERE id = ?", (bundle_id, gateway))

    def desired(self) -> list[tuple[str, str]]:
        """(gateway, bundle id) for every gateway with a desired bundle."""
        return [(r[0], r[1]) for r in self.fetchall(
            "SELECT id, desired_bundle FROM gateways WHERE desired_bundle IS NOT NULL")]

    def desired_payload(self, gateway: str) -> tuple[str, bytes] | None:
        """(bundle id, bundle bytes) of a gateway's current desired bundle, if any."""
        row = self.fetchone("SELECT b.id, b.blob FROM gateways g JOIN bundles b ON "
                            "b.id = g.desired_bundle WHERE g.id = ?", (gateway,))
        return None if row is None else (row[0], bytes(row[1]))

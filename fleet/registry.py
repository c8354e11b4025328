"""The fleet registry: gateways, sites, tags, enrolment tokens, reports, roots, bundles, rollouts.

SQLite by default (``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a bare path),
PostgreSQL with ``postgresql://...`` through psycopg 3, with the same SQL: only '?'
placeholders are rewritten to '%s'. Times are integer milliseconds (BIGINT in both). Every
write is its own short transaction.

The database holds the gateways' broker password hashes: a SQLite file is created 0600 (its
-wal and -shm files take the same mode from it), and an existing one readable by others is
narrowed to 0600 when opened. Gateway ids, sites and tags are checked on the way in
(``edge_agent.protocol.ids``) and gateway ids again on the way out to the broker's files.

Gateways' reports, health and state are untrusted: ``record_*`` check every field's type and
integer range (``edge_agent.fleet.intake``) before a statement runs, a health document is
stored whole or refused (never cut), and ``gateways()`` reads stored JSON back tolerantly, so
one gateway's bad row shows as that gateway's error and never breaks the listing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.fleet.intake import (
    HEALTH_LIMITS,
    IntakeError,
    health_text,
    parse_report,
    read_stored_json,
)
from edge_agent.fleet.registry_db import Database
from edge_agent.fleet.rollout import AWAITING_REPORT
from edge_agent.fleet.swreport import (
    STATE_COLUMNS,
    SoftwareState,
    record_running,
    record_software,
    running_version,
    software_state,
)
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.ids import check_gateway_id, check_site, check_tag
from edge_agent.protocol.jsonsafe import INT64_MAX


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
    health_error: str | None = None  # why the stored health did not read back, if it did not
    software: SoftwareState | None = None  # its software, apart from its config result


def token_hash(token: str) -> str:
    """Tokens are stored hashed: a copy of the database does not enrol anyone."""
    return hashlib.sha256(token.encode()).hexdigest()


def _check_ms(now_ms: int) -> None:
    if type(now_ms) is not int or not 0 <= now_ms <= INT64_MAX:
        raise ValueError(f"now_ms {now_ms!r} is not a time in ms within int64")


def _int_or_none(value: object) -> int | None:
    return value if type(value) is int else None


def _gateway_row(r: Sequence[Any], tags: tuple[str, ...]) -> GatewayRow:
    """One listing row from its columns, tolerant of what an older version or a hand stored.

    The health column is read like a message (``intake.read_stored_json``): a row from before
    documents were refused whole (cut at 20,000 characters) shows as an error for that gateway.
    """
    health: dict[str, Any] | None = None
    error: str | None = None
    if r[8] is not None:
        try:
            health = read_stored_json(r[8], HEALTH_LIMITS)
        except IntakeError as exc:
            error = f"stored health document does not read back: {exc}"
    return GatewayRow(str(r[0]), str(r[1]), tags, bool(r[2]), _int_or_none(r[3]),
                      _int_or_none(r[4]) or 0, None if r[5] is None else str(r[5]),
                      _int_or_none(r[6]), None if r[7] is None else str(r[7]), health, error,
                      software_state(r[9:]))


def _identity(gateway: str, site: str, tags: Sequence[str]) -> None:
    if isinstance(tags, str):
        raise ValueError(f"tags must be a list of names, got the string {tags!r}")
    check_gateway_id(gateway)
    check_site(site)
    for tag in tags:
        check_tag(tag)


def _selector_problem(what: str, name: str) -> str:
    check = {"gw": check_gateway_id, "site": check_site, "tag": check_tag}[what]
    try:
        check(name)
    except ValueError as exc:
        return str(exc)
    return ""


class Registry(Database):
    """The registry over one database connection (``Database``: the SQL plumbing)."""

    # ------------------------------------------------------------------ gateways, sites, tags

    def add_gateway(self, gateway: str, site: str, tags: Sequence[str], now_ms: int,
                    password_hash: str | None = None) -> None:
        """Create or update a gateway, its site and its tags (ValueError if a name breaks the
        id rule of edge_agent.protocol.ids)."""
        _identity(gateway, site, tags)
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
        """Every gateway, by id; a row that does not read back shows its error, never raises."""
        tags: dict[str, list[str]] = {}
        for gw, tag in self.fetchall("SELECT gateway, tag FROM gateway_tags ORDER BY tag"):
            tags.setdefault(gw, []).append(tag)
        rows = self.fetchall(
            "SELECT g.id, g.site, g.online, g.last_seen_ms, g.config_version, g.result, "
            f"g.result_version, g.result_reason, g.health, {STATE_COLUMNS} FROM gateways g "
            "LEFT JOIN gateway_software s ON s.gateway = g.id ORDER BY g.id")
        return [_gateway_row(r, tuple(tags.get(r[0], ()))) for r in rows]

    def select_gateways(self, selectors: Sequence[str]) -> list[str]:
        """Gateway ids matching any selector: 'gw:ID', 'site:NAME', 'tag:NAME' or 'all'."""
        out: set[str] = set()
        for sel in selectors:
            what, _, name = sel.partition(":")
            if sel == "all":
                rows = self.fetchall("SELECT id FROM gateways")
            elif what in ("gw", "site", "tag") and (problem := _selector_problem(what, name)):
                # A name no gateway can have would match nothing, silently.
                raise ConfigError(f"target {sel!r}: {problem}")
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
        """(gateway, mosquitto password hash) for every gateway that has broker credentials.

        ConfigError if a stored id breaks the id rule (a row from before ids were checked):
        written into the broker's files as is, it could be read as a fleet user or a new line.
        """
        rows = [(str(r[0]), str(r[1])) for r in self.fetchall(
            "SELECT id, broker_password_hash FROM gateways WHERE broker_password_hash "
            "IS NOT NULL ORDER BY id")]
        bad: list[str] = []
        for gw, _ in rows:
            try:
                check_gateway_id(gw)
            except ValueError as exc:
                bad.append(str(exc))
        if bad:
            raise ConfigError([f"registry: {b}; remove or rename that gateway" for b in bad])
        return rows

    def record_report(self, gateway: str, doc: Mapping[str, Any], now_ms: int,
                      topic_kind: str = "") -> bool:
        """Store a gateway's apply report; False if the gateway is unknown.

        IntakeError (before the database is touched) if a field has the wrong type or an
        integer is outside 0..2^63-1 (``edge_agent.fleet.intake.parse_report``). A software
        report (on ``reported/software``: ``topic_kind`` "software"; older gateways send it
        on ``reported``) is kept apart from the config result (``edge_agent.fleet.swreport``).
        """
        _check_ms(now_ms)
        software = isinstance(doc, Mapping) and doc.get("kind") == "software"
        if topic_kind == "software" and not software:
            raise IntakeError("field_value", "$.kind: a report on reported/software must be "
                                             "\"kind\": \"software\"")
        if software:
            return record_software(self, gateway, doc, now_ms, AWAITING_REPORT)
        report = parse_report(doc)
        gateway = check_gateway_id(gateway)
        v, ts = report.version, report.ts
        with self.transaction():
            # A report older than the stored one (a lower version, or the same version at an
            # earlier gateway time: two instances sharing a subscription may take one
            # gateway's reports in either order) is not stored over it. A report without
            # "committed" (a failure before anything was read) leaves the committed version.
            stored = self.execute(
                "UPDATE gateways SET result = ?, result_version = ?, result_reason = ?, "
                "result_ms = ?, config_version = COALESCE(?, config_version), last_seen_ms = ?, "
                "result_ts = ? WHERE id = ? AND (CAST(? AS BIGINT) IS NULL OR result_version IS "
                "NULL OR result_version < ? OR (result_version = ? AND (CAST(? AS BIGINT) IS "
                "NULL OR result_ts IS NULL OR result_ts <= ?)))",
                (report.result, v, report.reason, now_ms, report.committed, now_ms, ts, gateway,
                 v, v, v, ts, ts)) == 1
            if not stored:
                return self.fetchone("SELECT 1 FROM gateways WHERE id = ?", (gateway,)) is not None
            # Each rollout waiting for this gateway's report takes it in on its next tick
            # (rollout_driver reads only rows with pending reports: an indexed, short read).
            self.execute("UPDATE rollout_targets SET pending = pending + 1 WHERE gateway = ? "
                         "AND status IN (?, ?, ?)", (gateway, *AWAITING_REPORT))
        return True

    def record_health(self, gateway: str, doc: Mapping[str, Any], now_ms: int) -> bool:
        """Store a gateway's latest health document whole; False if the gateway is unknown.

        IntakeError if it is too large or breaks the intake limits: it is never stored cut.
        """
        text = health_text(doc)
        _check_ms(now_ms)
        return self.execute("UPDATE gateways SET health = ?, last_seen_ms = ?, online = 1 "
                            "WHERE id = ?", (text, now_ms, check_gateway_id(gateway))) == 1

    def record_state(self, gateway: str, online: bool, now_ms: int,
                     version: object = None) -> bool:
        """Store a gateway's online/offline state and the software ``version`` it says it
        runs; False if the gateway is unknown (IntakeError if the version is unusable)."""
        if type(online) is not bool:
            raise IntakeError("field_type", f"online {online!r} is not a bool")
        _check_ms(now_ms)
        running = running_version(version)
        with self.transaction():
            if self.execute("UPDATE gateways SET online = ?, last_seen_ms = ? WHERE id = ?",
                            (1 if online else 0, now_ms, check_gateway_id(gateway))) != 1:
                return False
            if running is not None:
                self.execute("INSERT INTO gateway_software (gateway) VALUES (?) "
                             "ON CONFLICT (gateway) DO NOTHING", (gateway,))
                record_running(self, gateway, running, now_ms)
        return True

    # ------------------------------------------------------------------ enrolment tokens

    def add_token(self, token: str, gateway: str, site: str, tags: Sequence[str],
                  expires_ms: int) -> None:
        """Store a single-use enrolment token (hashed); ValueError if a name breaks the id rule."""
        _identity(gateway, site, tags)
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
        self.set_desired_many([(gateway, bundle_id)])

    def set_desired_many(self, offers: Sequence[tuple[str, str]]) -> None:
        """Note many gateways' desired bundles in one transaction."""
        with self.transaction():
            self.executemany("UPDATE gateways SET desired_bundle = ? WHERE id = ?",
                             [(bid, gw) for gw, bid in offers])

    def desired(self) -> list[tuple[str, str]]:
        """(gateway, bundle id) for every gateway with a desired bundle."""
        return [(r[0], r[1]) for r in self.fetchall(
            "SELECT id, desired_bundle FROM gateways WHERE desired_bundle IS NOT NULL")]

    def desired_payload(self, gateway: str) -> tuple[str, bytes] | None:
        """(bundle id, bundle bytes) of a gateway's current desired bundle, if any."""
        row = self.fetchone("SELECT b.id, b.blob FROM gateways g JOIN bundles b ON "
                            "b.id = g.desired_bundle WHERE g.id = ?", (gateway,))
        return None if row is None else (row[0], bytes(row[1]))

"""The alarm evaluator's shell: gathers facts from the registry and the ingest, keeps each
point's latest reading and a gateway's health history, and applies ``alarms.decide``.

Several console instances may run: only the holder of the ``alarms`` lease evaluates (one
conditional UPDATE decides, as for rollouts), so an alarm is raised once however many run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from edge_agent.fleet.console import alarms as core
from edge_agent.fleet.console.readings import ReadingsDb
from edge_agent.fleet.console.schema import ensure
from edge_agent.fleet.ingest.schema import value_columns, value_from
from edge_agent.fleet.intake import HEALTH_LIMITS
from edge_agent.fleet.registry import GatewayRow, Registry
from edge_agent.fleet.swreport import STATE_COLUMNS, software_state
from edge_agent.protocol.clock import Clock

log = logging.getLogger(__name__)

PAGE = 5000            # readings pulled per query
MAX_PAGES = 40         # per cycle: a large backlog is worked off over several cycles
OVERLAP = 1000         # ids read again each cycle: a PostgreSQL id may commit after a higher one
FIRST_LOOK_BACK = 50_000  # readings read back on a first start
HISTORY_KEEP_MS = 7 * 86_400_000
DROP_WINDOW_MS = 15 * 60_000
UPSERT_LATEST = (
    "INSERT INTO console_latest (gateway, device, point, ts_ms, quality, kind, value_int, "
    "value_real, value_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, device, "
    "point) DO UPDATE SET ts_ms = excluded.ts_ms, quality = excluded.quality, kind = "
    "excluded.kind, value_int = excluded.value_int, value_real = excluded.value_real, "
    "value_text = excluded.value_text WHERE excluded.ts_ms >= console_latest.ts_ms")


def health_numbers(g: GatewayRow) -> tuple[list[str], int, int, int]:
    """(devices offline, spool backlog in batches, spool batches dropped, RSS bytes) of a
    gateway's latest health; zeros where the document lacks them (it is the gateway's word)."""
    h: dict[str, Any] = g.health or {}
    devices = h.get("devices") if isinstance(h.get("devices"), dict) else {}
    down = sorted(str(name) for name, d in (devices or {}).items()
                  if isinstance(d, dict) and d.get("status") in core.DEVICE_DOWN)
    spool = h.get("spool") if isinstance(h.get("spool"), dict) else {}
    mem = h.get("memory") if isinstance(h.get("memory"), dict) else {}

    def num(doc: Any, key: str) -> int:
        v = doc.get(key) if isinstance(doc, dict) else None
        return v if type(v) is int else 0

    return down, num(spool, "batches"), num(spool, "dropped_batches"), num(mem, "rss_bytes")


def _plain(text: str) -> str:
    """Text safe to encode as UTF-8 (a lone surrogate would end the response)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def light_gateways(db: Registry, gateway: str | None = None) -> list[GatewayRow]:
    """Every gateway with the health fields the console lists (version, device statuses,
    spool and memory numbers), read with the C JSON parser.

    ``Registry.gateways`` reads each stored health document with the strict reader, which is
    right for a document of unknown origin but costs ~0.2 ms per kilobyte; what the registry
    stored passed that reader on the way in (``fleet.intake.health_text``). A row that does not
    parse shows as that gateway's error, as in the registry's own listing. ``gateway``: only
    that one.
    """
    one, params = ("WHERE gateway = ?", (gateway,)) if gateway else ("", ())
    tags: dict[str, list[str]] = {}
    for gw, tag in db.fetchall(f"SELECT gateway, tag FROM gateway_tags {one} ORDER BY tag",
                               params):
        tags.setdefault(str(gw), []).append(str(tag))
    out = []
    for r in db.fetchall("SELECT g.id, g.site, g.online, g.last_seen_ms, g.config_version, "
                         "g.result, g.result_version, g.result_reason, g.health, "
                         f"{STATE_COLUMNS} FROM gateways g LEFT JOIN gateway_software s ON "
                         f"s.gateway = g.id {one.replace('gateway', 'g.id')} ORDER BY g.id",
                         params):
        health: dict[str, Any] | None = None
        error = None
        if isinstance(r[8], str) and len(r[8]) <= HEALTH_LIMITS.max_bytes:
            try:
                doc = json.loads(r[8])
                if isinstance(doc, dict):
                    health = _light(doc)
            except (ValueError, RecursionError) as exc:
                error = f"stored health document does not read back: {exc}"[:300]
        elif r[8] is not None:
            error = "stored health document is over the size limit"
        out.append(GatewayRow(str(r[0]), str(r[1]), tuple(tags.get(str(r[0]), ())),
                              bool(r[2]), r[3] if type(r[3]) is int else None,
                              r[4] if type(r[4]) is int else 0,
                              None if r[5] is None else _plain(str(r[5])),
                              r[6] if type(r[6]) is int else None,
                              None if r[7] is None else _plain(str(r[7])), health, error,
                              software_state(r[9:])))
    return out


def _light(doc: dict[str, Any]) -> dict[str, Any]:
    devices = doc.get("devices") if isinstance(doc.get("devices"), dict) else {}
    version = doc.get("version")
    return {"version": _plain(version) if isinstance(version, str) else None,
            "devices": {_plain(str(k)): {"status": v.get("status")} for k, v in
                        (devices or {}).items() if isinstance(v, dict)},
            **{k: doc[k] for k in ("spool", "memory") if isinstance(doc.get(k), dict)}}


class Evaluator:
    """Evaluates alarms every ``interval_s`` while this instance holds the lease."""

    def __init__(self, registry: Registry, readings: ReadingsDb, clock: Clock, *,
                 interval_s: float = 2.0, delay_s: float = 10.0, stale_s: float = 300.0,
                 owner: str | None = None) -> None:
        self.db = registry
        self.readings = readings
        self.clock = clock
        self.interval_s = interval_s
        self.delay_ms = int(delay_s * 1000)
        self.stale_ms = int(stale_s * 1000)
        self.owner = owner or uuid.uuid4().hex[:12]
        self.cycles = 0
        self.errors = 0
        self.last_error: str | None = None
        ensure(registry)
        self.db.execute("INSERT INTO console_leases (name, owner, until_ms) VALUES ('alarms', "
                        "NULL, 0) ON CONFLICT (name) DO NOTHING")

    def _lease(self, now_ms: int) -> bool:
        lease_ms = int(self.interval_s * 5000)
        return self.db.execute(
            "UPDATE console_leases SET owner = ?, until_ms = ? WHERE name = 'alarms' AND "
            "(owner = ? OR owner IS NULL OR until_ms < ?)",
            (self.owner, now_ms + lease_ms, self.owner, now_ms)) == 1

    def release(self) -> None:
        """Give the lease up (on a clean stop) so another instance takes over at once."""
        self.db.execute("UPDATE console_leases SET owner = NULL, until_ms = 0 WHERE name = "
                        "'alarms' AND owner = ?", (self.owner,))

    def pull_readings(self) -> int:
        """Fold the ingest's new readings into console_latest; how many were read."""
        row = self.db.fetchone("SELECT value FROM console_state WHERE name = 'cursor'")
        # A first start on an ingest with a long history begins near its end: the latest
        # values are in its newest rows, not in months of older ones.
        cursor = int(row[0]) if row else max(0, self.readings.max_id() - FIRST_LOOK_BACK)
        seen = 0
        for _ in range(MAX_PAGES):
            rows = self.readings.new_rows(max(0, cursor - OVERLAP) if seen == 0 else cursor,
                                          PAGE)
            fresh = [r for r in rows if int(r[0]) > cursor] if seen == 0 else rows
            newest: dict[tuple[str, str, str], tuple[Any, ...]] = {}
            for r in rows:
                key = (str(r[1]), str(r[2]), str(r[3]))
                if key not in newest or int(r[4]) >= int(newest[key][4]):
                    newest[key] = r
            with self.db.transaction():
                for r in newest.values():
                    value = value_from(str(r[6]), r[7], r[8], r[9])
                    self.db.execute(UPSERT_LATEST, (r[1], r[2], r[3], int(r[4]), str(r[5]),
                                                    *value_columns(value)))
                if rows:
                    cursor = max(cursor, int(rows[-1][0]))
                    self.db.execute("INSERT INTO console_state (name, value) VALUES "
                                    "('cursor', ?) ON CONFLICT (name) DO UPDATE SET value = "
                                    "excluded.value", (cursor,))
            seen += len(fresh)
            if len(rows) < PAGE:
                break
        return seen

    def _facts(self, now_ms: int) -> list[core.GatewayFacts]:
        gaps = self.readings.open_gaps()
        old: dict[str, int] = {str(g): int(d) for g, d in self.db.fetchall(
            "SELECT gateway, MIN(spool_dropped) FROM console_health WHERE ts_ms >= ? "
            "GROUP BY gateway", (now_ms - DROP_WINDOW_MS,))}
        facts = []
        with self.db.transaction():
            for g in self.db_gateways():
                down, backlog, dropped, rss = health_numbers(g)
                if g.last_seen_ms is not None:
                    self.db.execute(
                        "INSERT INTO console_health (gateway, ts_ms, online, devices_offline, "
                        "spool_batches, spool_dropped, rss_bytes) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (gateway, ts_ms) DO NOTHING",
                        (g.id, g.last_seen_ms, int(g.online), len(down), backlog, dropped, rss))
                facts.append(core.GatewayFacts(
                    g.id, g.last_seen_ms is not None, g.online, tuple(down), gaps.get(g.id, 0),
                    max(0, dropped - old.get(g.id, dropped))))
            if self.cycles % 100 == 0:
                self.db.execute("DELETE FROM console_health WHERE ts_ms < ?",
                                (now_ms - HISTORY_KEEP_MS,))
        return facts

    def db_gateways(self) -> list[GatewayRow]:
        """The registry's gateways, with the health fields the alarms need."""
        return light_gateways(self.db)

    def _latest(self) -> list[core.Latest]:
        rules = tuple(core.POINT_RULES)
        marks = ", ".join("?" * len(rules))
        out = [core.Latest(str(g), str(d), str(p), int(t), str(q), value_from(k, vi, vr, vt))
               for g, d, p, t, q, k, vi, vr, vt in self.db.fetchall(
                   "SELECT gateway, device, point, ts_ms, quality, kind, value_int, value_real, "
                   f"value_text FROM console_latest WHERE point IN ({marks}) OR quality <> "
                   "'good'", rules)]
        out += [core.Latest(str(g), str(d), "", int(t), "good", None) for g, d, t in
                self.db.fetchall("SELECT gateway, device, MAX(ts_ms) FROM console_latest "
                                 "GROUP BY gateway, device")]
        return out

    def step(self, now_ms: int) -> core.Decision | None:
        """One evaluation; None when another instance holds the lease."""
        if not self._lease(now_ms):
            return None
        self.pull_readings()
        facts = self._facts(now_ms)
        conditions = core.conditions(facts, self._latest(), now_ms, self.stale_ms)
        pending = {(str(s), str(k)): int(t) for s, k, t in self.db.fetchall(
            "SELECT source, kind, since_ms FROM console_pending")}
        open_ = [(str(s), str(k)) for s, k in self.db.fetchall(
            "SELECT source, kind FROM console_alarms WHERE cleared_ms IS NULL")]
        d = core.decide(conditions, pending, open_, now_ms, self.delay_ms)
        with self.db.transaction():
            for (source, kind), detail in d.raise_:
                self.db.execute("INSERT INTO console_alarms (source, kind, gateway, detail, "
                                "raised_ms) VALUES (?, ?, ?, ?, ?)",
                                (source, kind, source.split("/")[0], detail[:300], now_ms))
            for source, kind in d.clear:
                self.db.execute("UPDATE console_alarms SET cleared_ms = ? WHERE source = ? AND "
                                "kind = ? AND cleared_ms IS NULL", (now_ms, source, kind))
            for source, kind in d.forget:
                self.db.execute("DELETE FROM console_pending WHERE source = ? AND kind = ?",
                                (source, kind))
            for source, kind in d.pend:
                self.db.execute("INSERT INTO console_pending (source, kind, since_ms) VALUES "
                                "(?, ?, ?) ON CONFLICT (source, kind) DO NOTHING",
                                (source, kind, now_ms))
        for (source, kind), detail in d.raise_:
            log.warning("alarm raised: %s %s: %s", source, kind, detail)
        for source, kind in d.clear:
            log.info("alarm cleared: %s %s", source, kind)
        return d

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate until ``stop``; a failing cycle is logged once per error and retried."""
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.step, int(self.clock.now() * 1000))
                    self.cycles += 1
                    self.last_error = None
                except Exception as exc:  # the database may be away: retry next cycle
                    self.errors += 1
                    text = f"{type(exc).__name__}: {exc}"
                    if text != self.last_error:
                        log.error("alarm evaluator: %s", text)
                    self.last_error = text
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await asyncio.to_thread(self.release)

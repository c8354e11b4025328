"""The persisted rollout driver: leases, commands, reports from the registry, publishing offers.

Several service instances may run against one database: a rollout is driven only by the
instance holding its lease (a conditional UPDATE: exactly one instance wins it), and every
state write is also conditional on the row's revision, so even two instances that both believe
they hold the lease cannot both write. Operators' pause/resume/abort are queued in the row's
``command`` column and applied by the lease holder, which is then the only writer of state.

A rollout whose stored state does not read back (or that the state machine cannot step) is
set aside on its own: logged once, listed in ``RolloutDriver.broken`` (the service's health),
and the other rollouts go on being driven.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from edge_agent.fleet import rollout as ro
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.errors import ConfigError

log = logging.getLogger(__name__)

COMMANDS = ("pause", "resume", "abort")
Publish = Callable[[list[tuple[str, bytes]]], Awaitable[None]]


class CorruptRolloutError(ConfigError):
    """A stored rollout row does not read back as a rollout state."""


# The per-gateway parts of a state live in rollout_targets rows, the plan in its own column
# (written once); the rollout row's state holds the rest, a few hundred bytes at any size.
ROW_KEYS = ("plan", "gw", "reasons", "sent", "dirty")


def core_of(state: dict[str, Any]) -> dict[str, Any]:
    """The part of a state stored in the rollout row: status, wave, counters, outbox, events."""
    return {k: v for k, v in state.items() if k not in ROW_KEYS}


class RolloutStore:
    """Rollout rows in the registry's database."""

    def __init__(self, registry: Registry) -> None:
        self.db = registry

    def create(self, state: dict[str, Any], now_ms: int) -> str:
        """Insert a new rollout and its targets."""
        plan = ro.plan_of(state)
        with self.db.transaction():
            self.db.execute("INSERT INTO rollouts (id, kind, status, state, rev, created_ms, "
                            "updated_ms, plan) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                            (plan.id, plan.kind, state["status"], json.dumps(core_of(state)),
                             now_ms, now_ms, json.dumps(state["plan"])))
            self.db.executemany(
                "INSERT INTO rollout_targets (rollout, gateway, position, status) "
                "VALUES (?, ?, ?, ?)",
                [(plan.id, gw, i, state["gw"][gw]) for i, gw in enumerate(plan.gateways)])
        return plan.id

    def _row(self, rollout_id: str) -> tuple[dict[str, Any], int, str | None, Any]:
        row = self.db.fetchone("SELECT state, rev, command, plan FROM rollouts WHERE id = ?",
                               (rollout_id,))
        if row is None:
            raise KeyError(rollout_id)
        try:
            state = json.loads(row[0])
            rev = int(row[1])
        except (TypeError, ValueError, RecursionError) as exc:
            raise CorruptRolloutError(f"rollout {rollout_id}: stored state does not read back: "
                                      f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(state, dict):
            raise CorruptRolloutError(f"rollout {rollout_id}: stored state is "
                                      f"{type(state).__name__}, not an object")
        command = row[2] if isinstance(row[2], str) else None
        return state, rev, command, row[3]

    def core(self, rollout_id: str) -> dict[str, Any]:
        """The rollout row's state without the per-gateway parts: status, wave, counts.

        A short read at any fleet size, for status displays and pollers.
        """
        state = self._row(rollout_id)[0]
        if "counts" not in state and isinstance(state.get("gw"), dict):
            state = dict(state, counts=ro.counts(ro.upgrade(state)))  # stored whole (older)
        return core_of(state)

    def load(self, rollout_id: str) -> tuple[dict[str, Any], int, str | None]:
        """(state, revision, pending command); KeyError if there is no such rollout."""
        state, rev, command, plan_text = self._row(rollout_id)
        if plan_text is None:
            # Stored whole by an older version: read as it was, written split from now on.
            if "plan" not in state or not isinstance(state.get("gw"), dict):
                raise CorruptRolloutError(f"rollout {rollout_id}: stored state has no plan")
            state = ro.upgrade(state)
            return dict(state, dirty=dict.fromkeys(state["gw"], True), legacy=True), rev, command
        try:
            state["plan"] = json.loads(plan_text)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CorruptRolloutError(f"rollout {rollout_id}: stored plan does not read back: "
                                      f"{type(exc).__name__}") from None
        gw: dict[str, str] = {}
        reasons: dict[str, str] = {}
        sent: dict[str, int] = {}
        for g, status, reason, sent_ms in self.db.fetchall(
                "SELECT gateway, status, reason, sent_ms FROM rollout_targets "
                "WHERE rollout = ? ORDER BY position", (rollout_id,)):
            gw[g] = status or ro.WAITING
            if reason is not None:
                reasons[g] = reason
            if sent_ms is not None:
                sent[g] = int(sent_ms)
        state.update(gw=gw, reasons=reasons, sent=sent, dirty={})
        return ro.upgrade(state), rev, command

    def head(self, rollout_id: str) -> tuple[int, str | None]:
        """(revision, pending command): what a driver with the state cached checks per tick."""
        row = self.db.fetchone("SELECT rev, command FROM rollouts WHERE id = ?", (rollout_id,))
        if row is None:
            raise KeyError(rollout_id)
        return int(row[0]), row[1] if isinstance(row[1], str) else None

    def save(self, rollout_id: str, state: dict[str, Any], rev: int, now_ms: int,
             changed: Sequence[str] = (), acks: Sequence[tuple[int, str]] = ()) -> bool:
        """Write a state if the row is still at ``rev``; False if someone else wrote first.

        Only the rows of ``changed`` gateways are written, and the ``acks`` (pending count,
        gateway) taken in are subtracted in the same transaction, so a report is either in a
        saved state or still pending, never lost between the two.
        """
        legacy = bool(state.pop("legacy", False))
        with self.db.transaction():
            if self.db.execute(
                    "UPDATE rollouts SET state = ?, status = ?, rev = rev + 1, updated_ms = ? "
                    "WHERE id = ? AND rev = ?",
                    (json.dumps(core_of(state)), state["status"], now_ms, rollout_id,
                     rev)) != 1:
                return False
            if legacy:
                self.db.execute("UPDATE rollouts SET plan = ? WHERE id = ?",
                                (json.dumps(state["plan"]), rollout_id))
                self.db.executemany("UPDATE rollout_targets SET position = ? WHERE rollout = ? "
                                    "AND gateway = ?",
                                    [(i, rollout_id, g) for i, g in
                                     enumerate(state["plan"]["gateways"])])
            gw, reasons, sent = state["gw"], state["reasons"], state["sent"]
            self.db.executemany(
                "UPDATE rollout_targets SET status = ?, reason = ?, sent_ms = ? "
                "WHERE rollout = ? AND gateway = ?",
                [(gw[g], reasons.get(g), sent.get(g), rollout_id, g) for g in changed])
            self.db.executemany("UPDATE rollout_targets SET pending = pending - ? "
                                "WHERE rollout = ? AND gateway = ?",
                                [(n, rollout_id, g) for n, g in acks])
        return True

    def acquire(self, rollout_id: str, owner: str, now_ms: int, lease_ms: int) -> bool:
        """Take or renew the lease on an active rollout; True if this owner holds it now."""
        return self.db.execute(
            "UPDATE rollouts SET owner = ?, lease_until_ms = ? WHERE id = ? AND status IN "
            "(?, ?, ?) AND (owner = ? OR owner IS NULL OR lease_until_ms < ?)",
            (owner, now_ms + lease_ms, rollout_id, *ro.ACTIVE, owner, now_ms)) == 1

    def release(self, rollout_id: str, owner: str) -> None:
        """Give up a lease (on clean shutdown) so another instance can take over at once."""
        self.db.execute("UPDATE rollouts SET owner = NULL, lease_until_ms = 0 "
                        "WHERE id = ? AND owner = ?", (rollout_id, owner))

    def active(self) -> list[str]:
        """Ids of running, paused or aborting rollouts, oldest first."""
        return [r[0] for r in self.db.fetchall(
            "SELECT id FROM rollouts WHERE status IN (?, ?, ?) ORDER BY created_ms, id",
            ro.ACTIVE)]

    def all(self) -> list[str]:
        """Every rollout id, newest first."""
        return [r[0] for r in self.db.fetchall(
            "SELECT id FROM rollouts ORDER BY created_ms DESC, id")]

    def command(self, rollout_id: str, command: str, reason: str = "by hand") -> None:
        """Queue pause/resume/abort for the lease holder; KeyError if no such rollout."""
        if command not in COMMANDS:
            raise ValueError(f"rollout command {command!r}: expected one of {COMMANDS}")
        if self.db.execute("UPDATE rollouts SET command = ? WHERE id = ?",
                           (f"{command}:{reason}", rollout_id)) != 1:
            raise KeyError(rollout_id)

    def clear_command(self, rollout_id: str, command: str) -> None:
        """Remove a command once applied (only if it was not replaced meanwhile)."""
        self.db.execute("UPDATE rollouts SET command = NULL WHERE id = ? AND command = ?",
                        (rollout_id, command))

    def pending(self, rollout_id: str) -> list[tuple[str, int, int | None, str, str]]:
        """Reports recorded since the rollout last took them in, in one indexed read:
        (gateway, how many, version, result, reason) of the gateway's latest report of the
        rollout's kind (a software rollout reads the software reports, kept apart)."""
        return [(r[0], int(r[1]), r[2], r[3] or "", r[4] or "") for r in self.db.fetchall(
            f"SELECT t.gateway, t.pending, {_LATEST} FROM rollout_targets t "
            "JOIN rollouts r ON r.id = t.rollout JOIN gateways g ON g.id = t.gateway "
            "LEFT JOIN gateway_software s ON s.gateway = t.gateway "
            "WHERE t.rollout = ? AND t.pending > 0", (rollout_id,))]

    def reports(self, rollout_id: str) -> list[tuple[str, int | None, str, str]]:
        """The latest report of every target gateway: (gateway, version, result, reason)."""
        rows = self.db.fetchall(
            f"SELECT t.gateway, {_LATEST} FROM rollout_targets t "
            "JOIN rollouts r ON r.id = t.rollout JOIN gateways g ON g.id = t.gateway "
            "LEFT JOIN gateway_software s ON s.gateway = t.gateway WHERE t.rollout = ?",
            (rollout_id,))
        return [(r[0], r[1], r[2] or "", r[3] or "") for r in rows if r[2] is not None]


# (version, result, reason) of a target's latest report of its rollout's kind
_LATEST = ", ".join(f"CASE WHEN r.kind = 'software' THEN s.{sw} ELSE g.{cfg} END" for sw, cfg in
                    (("version", "result_version"), ("result", "result"),
                     ("reason", "result_reason")))


def apply_command(state: dict[str, Any], command: str, now_ms: int) -> dict[str, Any]:
    """Apply a queued 'verb:reason' command to a state (illegal ones are logged, not fatal)."""
    verb, _, reason = command.partition(":")
    fn = {"pause": ro.pause, "resume": ro.resume, "abort": ro.abort}[verb]
    try:
        return fn(state, now_ms, reason or "by hand")
    except ValueError as exc:
        log.warning("%s", exc)
        return state


class RolloutDriver:
    """Drives every active rollout whose lease this instance holds, one step at a time.

    The lease holder keeps each rollout's state in memory between ticks and re-reads it only
    when the row's revision moved (another instance wrote, or this one's write was refused);
    each tick reads only the reports recorded since the last (``RolloutStore.pending``) and
    writes only the gateways that changed, so a tick costs what happened since the last one.
    """

    def __init__(self, registry: Registry, publish: Publish, *, owner: str | None = None,
                 lease_s: float = 10.0, now_ms: Callable[[], int] | None = None) -> None:
        self.registry = registry
        self.store = RolloutStore(registry)
        self.publish = publish
        self.owner = owner or uuid.uuid4().hex[:12]
        self.lease_ms = int(lease_s * 1000)
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.offers_published = 0
        self.conflicts = 0
        self.reloads = 0
        self.broken: dict[str, str] = {}  # rollout id -> why it cannot be driven now
        self._blobs: dict[str, bytes] = {}
        self._cache: dict[str, tuple[dict[str, Any], int]] = {}  # rollout -> (state, rev)

    async def step(self, now_ms: int, judged_ms: int | None = None) -> int:
        """One pass over the active rollouts; how many this instance drove. Deadlines are
        judged at ``judged_ms`` (default ``now_ms``; see ``rollout.tick``)."""
        driven = 0
        active = self.store.active()
        for rid in list(self._cache):
            if rid not in active:
                del self._cache[rid]
        for rid in active:
            if not self.store.acquire(rid, self.owner, now_ms, self.lease_ms):
                self._cache.pop(rid, None)
                continue
            driven += 1
            try:
                await self._drive(rid, now_ms, now_ms if judged_ms is None else judged_ms)
            except (CorruptRolloutError, KeyError, TypeError, ValueError) as exc:
                # This rollout's row is bad, not the database or the broker (those propagate
                # to the tick loop): the others must still be driven.
                self._cache.pop(rid, None)
                self._set_aside(rid, exc)
            else:
                if self.broken.pop(rid, None) is not None:
                    log.info("rollout %s: can be driven again", rid)
        return driven

    def _set_aside(self, rid: str, exc: Exception) -> None:
        why = f"{type(exc).__name__}: {str(exc)[:300]}"
        if rid not in self.broken:  # once per rollout, not once per tick
            log.error("rollout %s cannot be driven and is set aside: %s", rid, why,
                      exc_info=exc)
        self.broken[rid] = why

    def _state(self, rid: str) -> tuple[dict[str, Any], int, str | None]:
        rev, command = self.store.head(rid)
        cached = self._cache.get(rid)
        if cached is not None and cached[1] == rev:
            return cached[0], rev, command
        self.reloads += 1
        state, rev, command = self.store.load(rid)
        if state.get("legacy"):
            # Stored whole by an older version, whose reports were never queued: read them all
            # once; the next save writes the rows, and from then on reports are queued.
            state = ro.observe_all(state, self.store.reports(rid), self.now_ms())
        self._cache[rid] = (state, rev)
        return state, rev, command

    def _save(self, rid: str, state: dict[str, Any], rev: int, now_ms: int,
              acks: list[tuple[int, str]]) -> tuple[dict[str, Any], int] | None:
        state, changed = ro.take_changes(state)
        if not self.store.save(rid, state, rev, now_ms, changed, acks):
            self.conflicts += 1
            self._cache.pop(rid, None)
            return None
        self._cache[rid] = (state, rev + 1)
        return state, rev + 1

    async def _drive(self, rid: str, now_ms: int, judged_ms: int) -> None:
        state, rev, command = self._state(rid)
        before = state
        if command:
            state = apply_command(state, command, now_ms)
        pending = self.store.pending(rid)
        acks = [(n, gw) for gw, n, _, _, _ in pending]
        state = ro.observe_all(state, [(gw, v, res, why) for gw, _, v, res, why in pending],
                               now_ms)
        state = ro.tick(state, now_ms, judged_ms)
        state, offers = ro.take_outbox(state)
        if state is before and not offers and not acks and not state.get("dirty"):
            return
        if offers:
            # Persist the offers first: a crash after this write republishes them on resume.
            saved = self._save(rid, dict(state, outbox=[list(o) for o in offers]), rev,
                               now_ms, acks)
            if saved is None:
                return
            state = dict(state, dirty={})
            rev, acks = saved[1], []
            await self._publish(offers)
            # The deadlines of these offers run from now, when the broker has them.
            state = ro.published(state, [gw for gw, _ in offers], self.now_ms())
        if self._save(rid, state, rev, now_ms, acks) is None:
            return
        if command:
            self.store.clear_command(rid, command)
        if state["status"] != before["status"]:
            log.info("rollout %s: %s", rid, state["events"][-1][1])

    async def _publish(self, offers: list[tuple[str, str]]) -> None:
        batch = []
        for gw, bid in offers:
            blob = self._blobs.get(bid)
            if blob is None:
                blob = self._blobs[bid] = self.registry.bundle(bid)
            batch.append((gw, blob))
        await self.publish(batch)
        self.registry.set_desired_many(offers)
        self.offers_published += len(offers)

    def release_all(self) -> None:
        """Give up every lease this instance holds."""
        self._cache.clear()
        for rid in self.store.active():
            self.store.release(rid, self.owner)

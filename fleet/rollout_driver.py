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
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.fleet import rollout as ro
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.errors import ConfigError

log = logging.getLogger(__name__)

COMMANDS = ("pause", "resume", "abort")
Publish = Callable[[list[tuple[str, bytes]]], Awaitable[None]]


class CorruptRolloutError(ConfigError):
    """A stored rollout row does not read back as a rollout state."""


class RolloutStore:
    """Rollout rows in the registry's database."""

    def __init__(self, registry: Registry) -> None:
        self.db = registry

    def create(self, state: dict[str, Any], now_ms: int) -> str:
        """Insert a new rollout and its targets."""
        plan = ro.plan_of(state)
        with self.db.transaction():
            self.db.execute("INSERT INTO rollouts (id, kind, status, state, rev, created_ms, "
                            "updated_ms) VALUES (?, ?, ?, ?, 0, ?, ?)",
                            (plan.id, plan.kind, state["status"], json.dumps(state), now_ms,
                             now_ms))
            for gw in plan.gateways:
                self.db.execute("INSERT INTO rollout_targets (rollout, gateway) VALUES (?, ?)",
                                (plan.id, gw))
        return plan.id

    def load(self, rollout_id: str) -> tuple[dict[str, Any], int, str | None]:
        """(state, revision, pending command); KeyError if there is no such rollout."""
        row = self.db.fetchone("SELECT state, rev, command FROM rollouts WHERE id = ?",
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
        return state, rev, command

    def save(self, rollout_id: str, state: dict[str, Any], rev: int, now_ms: int) -> bool:
        """Write a state if the row is still at ``rev``; False if someone else wrote first."""
        return self.db.execute(
            "UPDATE rollouts SET state = ?, status = ?, rev = rev + 1, updated_ms = ? "
            "WHERE id = ? AND rev = ?",
            (json.dumps(state), state["status"], now_ms, rollout_id, rev)) == 1

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

    def reports(self, rollout_id: str) -> list[tuple[str, int | None, str, str]]:
        """The latest report of every target gateway: (gateway, version, result, reason)."""
        return [(r[0], r[1], r[2] or "", r[3] or "") for r in self.db.fetchall(
            "SELECT g.id, g.result_version, g.result, g.result_reason FROM rollout_targets t "
            "JOIN gateways g ON g.id = t.gateway WHERE t.rollout = ? AND g.result IS NOT NULL",
            (rollout_id,))]


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
    """Drives every active rollout whose lease this instance holds, one step at a time."""

    def __init__(self, registry: Registry, publish: Publish, *, owner: str | None = None,
                 lease_s: float = 10.0) -> None:
        self.registry = registry
        self.store = RolloutStore(registry)
        self.publish = publish
        self.owner = owner or uuid.uuid4().hex[:12]
        self.lease_ms = int(lease_s * 1000)
        self.offers_published = 0
        self.conflicts = 0
        self.broken: dict[str, str] = {}  # rollout id -> why it cannot be driven now
        self._blobs: dict[str, bytes] = {}

    async def step(self, now_ms: int) -> int:
        """One pass over the active rollouts; how many this instance drove."""
        driven = 0
        for rid in self.store.active():
            if not self.store.acquire(rid, self.owner, now_ms, self.lease_ms):
                continue
            driven += 1
            try:
                await self._drive(rid, now_ms)
            except (CorruptRolloutError, KeyError, TypeError, ValueError) as exc:
                # This rollout's row is bad, not the database or the broker (those propagate
                # to the tick loop): the others must still be driven.
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

    async def _drive(self, rid: str, now_ms: int) -> None:
        state, rev, command = self.store.load(rid)
        before = state
        if command:
            state = apply_command(state, command, now_ms)
        state = ro.observe_all(state, self.store.reports(rid), now_ms)
        state = ro.tick(state, now_ms)
        state, offers = ro.take_outbox(state)
        if state == before and not offers:
            return
        if offers:
            # Persist the offers first: a crash after this write republishes them on resume.
            pending = dict(state, outbox=[list(o) for o in offers])
            if not self.store.save(rid, pending, rev, now_ms):
                self.conflicts += 1
                return
            rev += 1
            await self._publish(offers)
        if not self.store.save(rid, state, rev, now_ms):
            self.conflicts += 1
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
        for gw, bid in offers:
            self.registry.set_desired(gw, bid)
        self.offers_published += len(offers)

    def release_all(self) -> None:
        """Give up every lease this instance holds."""
        for rid in self.store.active():
            self.store.release(rid, self.owner)

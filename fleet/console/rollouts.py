"""Rollouts as the console shows and starts them: per-wave counts (pure), and a rollout started
from a bundle an operator signed offline (``edge-fleet sign``) and uploaded.

The console holds no signing key: an uploaded bundle is verified against the registry's newest
root like a gateway would (release-key threshold, kind, expiry, payload hash), its version must
be above every config version the fleet has issued (or gateways would refuse it as a rollback),
and its own targets choose the gateways. Without a key the console cannot pre-sign each
gateway's previous config, so an abort of such a rollout stops offering it and reverts nothing
(the page says so); ``edge-fleet rollout start`` with a release key remains the way to a
rollout that can roll back.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from edge_agent.fleet import rollout as ro
from edge_agent.fleet.actions import parse_waves
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.protocol.bundle import split_bundle
from edge_agent.protocol.errors import ConfigError, VerificationError
from edge_agent.protocol.verify import (
    MAX_ENVELOPE,
    MAX_PAYLOAD,
    count_signatures,
    role_keys,
    update_root,
)

# A gateway's status in a rollout -> the column the console counts it in.
COLUMN = {ro.WAITING: "pending", ro.OFFERED: "pending", ro.APPLIED: "applied",
          ro.FAILED: "failed", ro.REVERTING: "reverted", ro.RESTORED: "reverted",
          ro.RESTORE_FAILED: "failed"}
COLUMNS = ("pending", "applied", "failed", "reverted")


def wave_counts(state: dict[str, Any]) -> list[dict[str, int]]:
    """For each wave, how many of its gateways are pending, applied, failed and reverted."""
    plan = ro.plan_of(state)
    out = []
    begin = 0
    for end in plan.wave_ends():
        counts = dict.fromkeys(COLUMNS, 0)
        for gw in plan.gateways[begin:end]:
            counts[COLUMN.get(state["gw"].get(gw, ""), "pending")] += 1
        counts["size"] = end - begin
        out.append(counts)
        begin = end
    return out


def view(state: dict[str, Any], command: str | None) -> dict[str, Any]:
    """What the page and the event stream show of one rollout."""
    s = ro.summary(state)
    plan = ro.plan_of(state)
    return {"id": s["id"], "kind": s["kind"], "version": s["version"], "status": s["status"],
            "wave": s["wave"], "waves": wave_counts(state), "gateways": s["gateways"],
            "abort_reason": s["abort_reason"], "started_ms": s["started_ms"],
            "revertible": bool(plan.revert),
            "queued": command.split(":")[0] if command else None,
            "events": [[int(t), str(x)] for t, x in state.get("events", [])[-5:]]}


# id -> (revision, command, view): a rollout's state is re-read only when its row changed
# (every event stream asks once a second). Derived data, so any instance may hold its own.
_VIEWS: dict[str, tuple[int, str | None, dict[str, Any]]] = {}


def all_views(store: RolloutStore, limit: int = 20) -> list[dict[str, Any]]:
    """The newest rollouts' views; a row that does not read back is shown as broken."""
    out = []
    for rid, rev, command in store.db.fetchall(
            "SELECT id, rev, command FROM rollouts ORDER BY created_ms DESC, id LIMIT ?",
            (limit,)):
        hit = _VIEWS.get(rid)
        if hit is not None and hit[0] == rev and hit[1] == command:
            out.append(hit[2])
            continue
        try:
            state, rev, command = store.load(rid)
            out.append(view(state, command))
            if len(_VIEWS) > 10 * limit:
                _VIEWS.clear()
            _VIEWS[rid] = (rev, command, out[-1])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            out.append({"id": rid, "broken": str(exc)[:200]})
    return out


def start_from_bundle(registry: Registry, blob: bytes, *, waves: str, abort_above_pct: float,
                      abort_min_count: int, wave_deadline_s: float,
                      now_ms: int) -> dict[str, Any]:
    """Verify an uploaded config bundle and store a running rollout of it; ConfigError or
    VerificationError saying why not."""
    env, payload_view = split_bundle(blob, MAX_ENVELOPE)
    root = update_root(registry.latest_root(), env.get("roots"))
    keys, threshold = role_keys(root["signed"], "release")
    got = count_signatures(env, keys)
    if got < threshold:
        raise VerificationError(f"bundle has {got} valid release signatures of root "
                                f"v{root['signed']['version']}, needs {threshold}")
    signed = env["signed"]
    kind, version = signed["kind"], int(signed["version"])
    if kind != "config":
        raise VerificationError(f"bundle kind is {kind!r}: the console starts config rollouts")
    if signed["expires"] * 1000 <= now_ms:
        raise VerificationError(f"bundle config v{version} has expired")
    payload = bytes(payload_view)
    if len(payload) != signed["payload"]["length"] or len(payload) > MAX_PAYLOAD or \
            hashlib.sha256(payload).hexdigest() != signed["payload"]["sha256"]:
        raise VerificationError("payload does not match the bundle's length and SHA-256")
    targets = signed["targets"]
    selectors = ([f"gw:{g}" for g in targets["gateways"]] + [f"site:{s}" for s in
                 targets["sites"]] + [f"tag:{t}" for t in targets["tags"]])
    known = {r[0] for r in registry.fetchall("SELECT id FROM gateways")}
    gateways = sorted(set(registry.select_gateways(
        [s for s in selectors if not s.startswith("gw:") or s[3:] in known])))
    if not gateways:
        raise ConfigError("the bundle's targets match no enrolled gateway")
    with registry.transaction():
        registry.execute("INSERT INTO versions (kind, last) VALUES (?, 0) ON CONFLICT (kind) "
                         "DO NOTHING", (kind,))
        row = registry.fetchone("SELECT last FROM versions WHERE kind = ?", (kind,))
        last = int(row[0]) if row else 0
        if version <= last:
            raise ConfigError(f"bundle config v{version} is not above v{last}, the fleet's "
                              "last config version: gateways would refuse it as a rollback; "
                              f"sign it again with --version {last + 1} or more")
        registry.execute("UPDATE versions SET last = ? WHERE kind = ?", (version, kind))
    bundle_id = registry.add_bundle(kind, version, signed["payload"]["sha256"], blob, now_ms)
    rid = uuid.uuid4().hex[:10]
    order = sorted(gateways, key=lambda g: hashlib.sha256(f"{rid}/{g}".encode()).digest())
    plan = ro.Plan(id=rid, kind=kind, version=version, bundle_id=bundle_id, gateways=order,
                   waves_pct=parse_waves(waves), wave_deadline_s=wave_deadline_s,
                   abort_above_pct=abort_above_pct, abort_min_count=abort_min_count)
    try:
        state = ro.start(plan, now_ms)
    except ValueError as exc:
        raise ConfigError(f"rollout: {exc}") from exc
    RolloutStore(registry).create(state, now_ms)
    return state

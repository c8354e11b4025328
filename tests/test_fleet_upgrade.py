"""A registry made by the version before the split rollout rows: opened by this one, its
columns are added, and a rollout it stored whole is read as it was, driven on, written split."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutDriver, RolloutStore, core_of
from edge_agent.protocol.keys import PrivateKey

SEED = 1818
T0 = 1_700_000_000_000
KEYS = [PrivateKey(hashlib.sha256(f"{SEED}/{i}".encode()).digest()) for i in range(2)]
# The tables as the version before created them (no result_ts, plan, per-gateway columns).
OLD_SCHEMA = [
    "CREATE TABLE sites (id TEXT PRIMARY KEY, created_ms BIGINT NOT NULL)",
    "CREATE TABLE gateways (id TEXT PRIMARY KEY, site TEXT NOT NULL REFERENCES sites(id), "
    "broker_password_hash TEXT, enrolled_ms BIGINT, last_seen_ms BIGINT, online INTEGER NOT "
    "NULL DEFAULT 0, health TEXT, config_version BIGINT NOT NULL DEFAULT 0, result TEXT, "
    "result_version BIGINT, result_reason TEXT, result_ms BIGINT, desired_bundle TEXT)",
    "CREATE TABLE rollouts (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, "
    "state TEXT NOT NULL, rev BIGINT NOT NULL, owner TEXT, lease_until_ms BIGINT NOT NULL "
    "DEFAULT 0, command TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)",
    "CREATE TABLE rollout_targets (rollout TEXT NOT NULL REFERENCES rollouts(id), gateway "
    "TEXT NOT NULL, PRIMARY KEY (rollout, gateway))",
]


def _report(version: int) -> dict[str, object]:
    return {"kind": "config", "version": version, "result": "applied", "committed": version,
            "ts": 1, "reason": ""}


def test_an_older_registry_and_its_whole_stored_rollout_carry_on(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    conn = sqlite3.connect(path)
    for stmt in OLD_SCHEMA:
        conn.execute(stmt)
    conn.commit()
    conn.close()
    reg = Registry(f"sqlite:///{path}")  # adds the missing columns and the indexes
    ops.init_root(reg, [KEYS[0].public], 1, [KEYS[1].public], 1, [KEYS[0]], now=T0 // 1000)
    gws = [f"gw-{i}" for i in range(4)]
    for gw in gws:
        reg.add_gateway(gw, "north", [], T0)
    state = ops.start_rollout(reg, b"# new\n", ["all"], [KEYS[1]], now_ms=T0, rollout_id="r",
                              waves=[100], wave_deadline_s=60)
    # Store it as the version before did: the whole state in one row, no plan, no target rows.
    old = {k: v for k, v in state.items() if k not in ("counts", "sent", "next_due_ms", "dirty")}
    old["outbox"] = []  # already published by the old version
    reg.execute("UPDATE rollouts SET state = ?, plan = NULL WHERE id = 'r'", (json.dumps(old),))
    reg.execute("UPDATE rollout_targets SET status = NULL, position = NULL")
    for gw in gws[:3]:  # reported while the old version ran: never queued
        assert reg.record_report(gw, _report(state["plan"]["version"]), T0 + 1000)
    store = RolloutStore(reg)
    assert store.core("r")["counts"] == {ro.OFFERED: 4}

    async def no_publish(offers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"nothing to publish, got {len(offers)}")

    driver = RolloutDriver(reg, no_publish, owner="new", now_ms=lambda: T0 + 2000)
    asyncio.run(driver.step(T0 + 2000))
    core = store.core("r")
    assert core["counts"] == {ro.APPLIED: 3, ro.OFFERED: 1}, core
    assert reg.fetchone("SELECT plan FROM rollouts WHERE id = 'r'") is not None
    # written split: the row holds no per-gateway map, the targets hold the statuses
    assert "gw" not in json.loads(reg.fetchall("SELECT state FROM rollouts")[0][0])
    assert dict(reg.fetchall("SELECT gateway, status FROM rollout_targets")) == {
        "gw-0": ro.APPLIED, "gw-1": ro.APPLIED, "gw-2": ro.APPLIED, "gw-3": ro.OFFERED}
    # the last report is queued now: its row has a status to be waited on
    assert reg.record_report("gw-3", _report(state["plan"]["version"]), T0 + 3000)
    asyncio.run(driver.step(T0 + 3000))
    loaded, _, _ = store.load("r")
    assert loaded["status"] == ro.SUCCEEDED and core_of(loaded)["counts"] == {ro.APPLIED: 4}
    reg.close()

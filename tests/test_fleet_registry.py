"""The registry on SQLite and PostgreSQL (same SQL): gateways, tokens, versions, rollout leases,
and two drivers sharing one database without double-driving a rollout."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.registry import Registry, token_hash
from edge_agent.fleet.rollout_driver import RolloutDriver, RolloutStore
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.keys import PrivateKey
from tests.support.pgdb import pg_available, pg_schema

SEED = 3
print(f"test_fleet_registry: key seed {SEED}")
T0 = 1_700_000_000_000
KEYS = [PrivateKey(hashlib.sha256(f"{SEED}/{i}".encode()).digest()) for i in range(3)]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    if not pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    with pg_schema() as url:
        yield url


def fleet(url: str, n: int = 20) -> Registry:
    reg = Registry(url)
    ops.init_root(reg, [KEYS[0].public], 1, [KEYS[1].public], 1, [KEYS[0]], now=T0 // 1000)
    for i in range(n):
        reg.add_gateway(f"gw-{i:02d}", "north" if i % 2 else "south",
                        ["lamps"] if i % 3 == 0 else [], T0)
    return reg


def test_gateways_sites_tags_and_selection(db_url: str) -> None:
    reg = fleet(db_url, 6)
    assert [g.id for g in reg.gateways()] == [f"gw-{i:02d}" for i in range(6)]
    assert reg.select_gateways(["site:north"]) == ["gw-01", "gw-03", "gw-05"]
    assert reg.select_gateways(["tag:lamps", "gw:gw-01"]) == ["gw-00", "gw-01", "gw-03"]
    assert len(reg.select_gateways(["all"])) == 6
    with pytest.raises(ConfigError, match="no gateway 'gw-99'"):
        reg.select_gateways(["gw:gw-99"])
    with pytest.raises(ConfigError, match="expected gw:ID"):
        reg.select_gateways(["nonsense"])
    assert reg.record_report("gw-01", {"result": "applied", "version": 4, "committed": 4}, T0)
    assert not reg.record_report("gw-99", {"result": "applied"}, T0)
    g = next(g for g in reg.gateways() if g.id == "gw-01")
    assert (g.config_version, g.result, g.result_version) == (4, "applied", 4)
    reg.close()


def test_tokens_are_single_use_and_expire(db_url: str) -> None:
    reg = fleet(db_url, 0)
    token = ops.issue_token(reg, "gw-new", "east", ["meters"], ttl_s=60, now_ms=T0)
    answer = ops.enroll(reg, token, broker_url="mqtt://b:1883", now_ms=T0 + 1000)
    assert answer["gateway_id"] == "gw-new" and answer["tags"] == ["meters"]
    assert answer["mqtt"]["username"] == "gw-new" and len(answer["mqtt"]["password"]) > 20
    with pytest.raises(ConfigError, match="already used"):
        ops.enroll(reg, token, broker_url="mqtt://b:1883", now_ms=T0 + 2000)
    late = ops.issue_token(reg, "gw-late", "east", [], ttl_s=60, now_ms=T0)
    with pytest.raises(ConfigError, match="expired"):
        ops.enroll(reg, late, broker_url="mqtt://b:1883", now_ms=T0 + 61_000)
    with pytest.raises(ConfigError, match="not known"):
        ops.enroll(reg, "made-up", broker_url="mqtt://b:1883", now_ms=T0)
    # the token is stored hashed only
    assert not reg.fetchall("SELECT 1 FROM tokens WHERE token_sha256 = ?", (token,))
    reg.close()


def test_concurrent_redemptions_enrol_once(db_url: str) -> None:
    regs = [fleet(db_url, 0)] + [Registry(db_url) for _ in range(3)]
    token = ops.issue_token(regs[0], "gw-race", "east", [], now_ms=T0)
    wins: list[str] = []
    losses: list[str] = []

    def redeem(reg: Registry) -> None:
        try:
            reg.redeem_token(token, T0 + 1)
            wins.append("won")
        except ConfigError as exc:
            losses.append(str(exc))

    threads = [threading.Thread(target=redeem, args=(r,)) for r in regs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 3, (wins, losses)
    for r in regs:
        r.close()


def test_versions_are_monotonic_and_rollouts_persist(db_url: str) -> None:
    reg = fleet(db_url, 10)
    assert [reg.next_version("config") for _ in range(3)] == [1, 2, 3]
    state = ops.start_rollout(reg, b"[gateway]\n", ["all"], [KEYS[1]], now_ms=T0,
                              rollout_id="r-a")
    assert state["plan"]["version"] == 4 and state["plan"]["revert_version"] == 0
    store = RolloutStore(reg)
    loaded, rev, cmd = store.load("r-a")
    # the changed-rows marker is in-memory bookkeeping: every row was written at creation
    assert loaded == dict(state, dirty={}) and rev == 0 and cmd is None
    assert store.active() == ["r-a"]
    assert store.save("r-a", loaded, 0, T0) and not store.save("r-a", loaded, 0, T0)
    reg.close()


def test_two_drivers_never_double_drive(db_url: str) -> None:
    """Two service instances share the database: every offer is published exactly once, and
    the rollout survives the lease holder vanishing (the other takes over after the lease)."""
    reg_a, reg_b = fleet(db_url, 40), None
    reg_b = Registry(db_url)
    ops.start_rollout(reg_a, b"[gateway]\n", ["all"], [KEYS[1]], now_ms=T0, rollout_id="r-b",
                      waves=[5, 10, 20, 40, 60, 80, 100], abort_above_pct=50)
    published: list[tuple[str, str]] = []

    def publisher(name: str) -> Callable[[list[tuple[str, bytes]]], Awaitable[None]]:
        async def publish(offers: list[tuple[str, bytes]]) -> None:
            published.extend((name, gw) for gw, _ in offers)
        return publish

    a = RolloutDriver(reg_a, publisher("a"), owner="a", lease_s=5)
    b = RolloutDriver(reg_b, publisher("b"), owner="b", lease_s=5)

    async def scenario() -> None:
        now = T0
        assert await a.step(now) == 1 and await b.step(now) == 0
        for step in range(30):
            now += 1000
            # every offered gateway reports applied (as the broker would deliver to both)
            for _, gw in published:
                reg_a.record_report(gw, {"result": "applied", "version": 1, "committed": 1}, now)
            if step == 2:
                now += 6000  # "a" is killed: its lease runs out, "b" takes over
            if step >= 2:
                await b.step(now)
            else:
                await a.step(now)
                await b.step(now)

    asyncio.run(scenario())
    state, _, _ = RolloutStore(reg_a).load("r-b")
    assert state["status"] == ro.SUCCEEDED, state["events"]
    gws = [gw for _, gw in published]
    assert sorted(gws) == sorted(set(gws)) and len(gws) == 40  # each exactly once
    assert {who for who, _ in published} == {"a", "b"}
    reg_a.close()
    reg_b.close()


def test_queued_commands_are_applied_by_the_lease_holder(db_url: str) -> None:
    reg = fleet(db_url, 10)
    ops.start_rollout(reg, b"x", ["all"], [KEYS[1]], now_ms=T0, rollout_id="r-c")
    store = RolloutStore(reg)
    published: list[str] = []

    async def publish(offers: list[tuple[str, bytes]]) -> None:
        published.extend(gw for gw, _ in offers)

    d = RolloutDriver(reg, publish, owner="x")
    store.command("r-c", "pause", "looks odd")
    asyncio.run(d.step(T0))
    state, _, cmd = store.load("r-c")
    assert state["status"] == ro.PAUSED and cmd is None
    assert "paused: looks odd" in state["events"][-1][1]
    store.command("r-c", "abort")
    asyncio.run(d.step(T0 + 1))
    assert store.load("r-c")[0]["status"] == ro.ABORTED  # nothing to restore: done at once
    with pytest.raises(KeyError):
        store.command("nope", "pause")
    reg.close()


# ------------------------------------------------------------------ file modes and identities

def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    # The database holds broker password hashes; sqlite3 alone would make it 0644.
    old = os.umask(0o022)
    try:
        reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
        reg.add_gateway("gw-1", "north", [], T0, "$7$101$c2FsdA==$aGFzaA==")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["fleet.db", "fleet.db-shm", "fleet.db-wal"], names
        for p in tmp_path.iterdir():
            assert p.stat().st_mode & 0o777 == 0o600, p.name
        reg.close()
    finally:
        os.umask(old)


def test_an_existing_readable_database_is_narrowed(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    Registry(str(db)).close()
    for p in tmp_path.iterdir():
        p.chmod(0o644)
    Registry(str(db)).close()
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p.name


@pytest.mark.parametrize(("gateway", "site", "tags", "fragment"), [
    ("fleet", "north", [], "gateway id 'fleet' is reserved"),
    ("gw-1\nfleet:$7$", "north", [], r"gateway id 'gw-1\\nfleet:\$7\$' is not valid"),
    ("gw 1", "north", [], "must not contain ' '"),
    ("x" * 300, "north", [], "has 300 characters"),
    ("gw-1", "no/rth", [], "site 'no/rth'"),
    ("gw-1", "north", ["lamps", "a:b"], "tag 'a:b'"),
])
def test_ids_are_checked_at_intake(db_url: str, gateway: str, site: str, tags: list[str],
                                   fragment: str) -> None:
    reg = fleet(db_url, 0)
    with pytest.raises(ConfigError, match=fragment):
        ops.issue_token(reg, gateway, site, tags)
    with pytest.raises(ValueError, match=fragment):
        reg.add_gateway(gateway, site, tags, T0)
    with pytest.raises(ValueError, match=fragment):
        reg.add_token("t", gateway, site, tags, T0)
    assert reg.gateways() == [] and reg.fetchall("SELECT 1 FROM tokens") == []
    reg.close()


def test_targets_naming_impossible_gateways_are_refused(db_url: str) -> None:
    reg = fleet(db_url, 2)
    for sel, fragment in (("site:North", "uppercase"), ("gw:fleet", "reserved"),
                          ("tag:a b", "must not contain ' '")):
        with pytest.raises(ConfigError, match=fragment):
            reg.select_gateways([sel])
    reg.close()


def test_rows_from_before_the_checks_never_reach_the_broker(db_url: str) -> None:
    """A token or gateway stored before ids were checked: enrolment refuses it, and the
    broker's password file is not written from it."""
    reg = fleet(db_url, 0)
    reg.execute("INSERT INTO tokens (token_sha256, gateway, site, tags, expires_ms) "
                "VALUES (?, ?, ?, ?, ?)", (token_hash("old"), "fleet", "north", "[]", T0 + 1))
    with pytest.raises(ConfigError, match="reserved"):
        ops.enroll(reg, "old", broker_url="mqtt://b:1883", now_ms=T0)
    assert reg.gateways() == []
    reg.execute("INSERT INTO sites (id, created_ms) VALUES ('north', 0)")
    reg.execute("INSERT INTO gateways (id, site, broker_password_hash) VALUES (?, ?, ?)",
                ("gw-1\nfleet", "north", "$7$101$c2FsdA==$aGFzaA=="))
    with pytest.raises(ConfigError, match=r"registry: gateway id 'gw-1\\nfleet'.*remove"):
        reg.password_hashes()
    reg.close()


def test_a_postgresql_connection_cannot_wait_forever(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("timeouts of a PostgreSQL connection")
    reg = Registry(db_url)
    try:
        conn = reg._conn
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "2min"
        assert conn.info.get_parameters()["connect_timeout"] == "10"
        assert conn.info.get_parameters()["keepalives"] == "1"
    finally:
        reg.close()

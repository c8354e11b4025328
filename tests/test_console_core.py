"""The console's pure parts and its accounts over SQLite: alarm rules and decisions, wave
counts, fleet filters, the chart's geometry, password hashes, sessions, CSRF, login limits,
bounded form parsing and bundle uploads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.fleet.console import alarms as core
from edge_agent.fleet.console import views
from edge_agent.fleet.console.accounts import (
    LOGIN_MAX_PER_USER,
    Accounts,
    check_password,
    hash_password,
)
from edge_agent.fleet.console.readings import Bucket
from edge_agent.fleet.console.rollouts import start_from_bundle, wave_counts
from edge_agent.fleet.console.web import Refused, _fields
from edge_agent.fleet.registry import GatewayRow, Registry
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.protocol.bundle import make_bundle
from edge_agent.protocol.errors import ConfigError, VerificationError
from edge_agent.protocol.keys import PrivateKey
from tests.support.fleetkit import Pki

NOW = 1_800_000_000_000
ALLOWED = tuple(f"a{i}" for i in range(40))


def test_point_rules_and_silence_make_conditions() -> None:
    gws = [core.GatewayFacts("gw1", True, True, open_gaps=2),
           core.GatewayFacts("gw2", True, False, devices_down=("m1",), recent_drops=3),
           core.GatewayFacts("gw3", False, False)]
    latest = [core.Latest("gw1", "lamp", "lamp_fault", NOW, "good", True),
              core.Latest("gw1", "lamp", "supply_voltage", NOW, "good", 230.0),
              core.Latest("gw1", "cab", "mains_power", NOW, "good", 0),
              core.Latest("gw1", "cab", "door_open", NOW, "comm_error", None),
              core.Latest("gw1", "pipe", "leak_alarm", NOW - 10, "good", 1),
              core.Latest("gw1", "pipe", "pressure", NOW, "comm_error", None),
              core.Latest("gw1", "old", "x", NOW - 999_000, "good", 1)]
    got = core.conditions(gws, latest, NOW, stale_ms=300_000)
    assert set(got) == {
        ("gw1", "data_gap"), ("gw2", "gateway_offline"), ("gw2/m1", "device_offline"),
        ("gw2", "spool_drops"), ("gw1/lamp", "lamp_fault"), ("gw1/cab", "mains_lost"),
        ("gw1/cab", "device_offline"), ("gw1/pipe", "leak"), ("gw1/pipe", "device_offline"),
        ("gw1/old", "device_offline")}
    # never seen: not offline; a bad-quality door reading is not a door alarm
    assert ("gw3", "gateway_offline") not in got and ("gw1/cab", "door_open") not in got


def test_a_device_that_answers_again_is_not_offline() -> None:
    latest = [core.Latest("g", "d", "a", NOW - 5000, "comm_error", None),
              core.Latest("g", "d", "", NOW, "good", None)]
    assert core.conditions([core.GatewayFacts("g", True, True)], latest, NOW, 300_000) == {}


def test_decide_waits_for_the_delay_and_clears_at_once() -> None:
    k = ("g/d", "device_offline")
    d = core.decide({k: "x"}, {}, [], NOW, 10_000)
    assert d.pend == [k] and not d.raise_
    d = core.decide({k: "x"}, {k: NOW - 9_999}, [], NOW, 10_000)
    assert not d.raise_ and not d.pend
    d = core.decide({k: "x"}, {k: NOW - 10_000}, [], NOW, 10_000)
    assert d.raise_ == [(k, "x")] and d.forget == [k]
    d = core.decide({}, {}, [k], NOW, 10_000)
    assert d.clear == [k]
    d = core.decide({}, {k: NOW}, [], NOW, 10_000)  # a flicker: forgotten, never raised
    assert d.forget == [k] and not d.raise_ and not d.clear
    assert core.decide({k: "x"}, {}, [k], NOW, 10_000).raise_ == []


def test_wave_counts_follow_the_gateways() -> None:
    from edge_agent.fleet import rollout as ro

    plan = ro.Plan("r1", "config", 2, "b" * 64, [f"g{i}" for i in range(10)], [10, 50, 100],
                   60.0, 50.0, 3)
    state = ro.start(plan, NOW)
    state = ro.observe_all(state, [("g0", 2, "applied", "")], NOW)
    state = ro.tick(state, NOW)
    state = ro.observe_all(state, [("g1", 2, "failed", "x"), ("g2", 2, "applied", "")], NOW)
    waves = wave_counts(state)
    assert [w["size"] for w in waves] == [1, 4, 5]
    assert waves[0]["applied"] == 1 and waves[1]["failed"] == 1 and waves[1]["applied"] == 1
    assert waves[1]["pending"] == 2 and waves[2]["pending"] == 5


def _row(gw: str, site: str, tags: tuple[str, ...], online: bool) -> GatewayRow:
    health = {"version": "0.1.0", "spool": {"batches": 4, "dropped_batches": 1},
              "devices": {"a": {"status": "offline"}, "b": {"status": "online"}}}
    return GatewayRow(gw, site, tags, online, NOW, 3, None, None, None, health)


def test_fleet_rows_and_filters() -> None:
    rows = views.fleet_rows([_row("gw-a1", "north", ("lamps",), True),
                             _row("gw-b2", "south", ("pipes",), False)])
    assert rows[0].devices_offline == 1 and rows[0].spool_backlog == 4
    assert rows[0].spool_dropped == 1 and rows[0].software == "0.1.0"
    assert [r.id for r in views.filtered(rows, site="south")] == ["gw-b2"]
    assert [r.id for r in views.filtered(rows, tag="lamps")] == ["gw-a1"]
    assert [r.id for r in views.filtered(rows, state="offline")] == ["gw-b2"]
    assert [r.id for r in views.filtered(rows, q="PIP")] == ["gw-b2"]
    assert views.site_overview(rows) == [("north", 1, 1, 1, 1), ("south", 1, 0, 1, 1)]


def test_chart_geometry_stays_inside_the_box() -> None:
    buckets = [Bucket(NOW + i * 1000, i - 1.0, float(i), i + 1.0, 3, int(i == 5))
               for i in range(10)]
    c = views.chart(buckets, NOW, NOW + 10_000)
    xs = [float(p.split(",")[0]) for p in c["line"].split()]
    ys = [float(p.split(",")[1]) for p in c["line"].split()]
    assert len(xs) == 10 and xs == sorted(xs)
    assert all(views.PAD <= y <= views.CHART_H - views.PAD for y in ys)
    assert c["count"] == 30 and len(c["bad"]) == 1
    assert views.chart([], NOW, NOW + 1)["empty"]


def test_passwords_hash_with_scrypt() -> None:
    h = hash_password("correct horse")
    assert h.startswith("scrypt$16384$8$1$")
    assert check_password("correct horse", h) and not check_password("wrong", h)
    assert not check_password("x", "scrypt$1$1$1$zz$zz") and not check_password("x", "md5$")


def test_sessions_csrf_and_login_limit(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    acc = Accounts(reg)
    acc.add_user("olga", "operator", "password-1", NOW)
    cookie, _ = acc.login("olga", "password-1", "10.0.0.1", NOW)
    s = acc.session(cookie, NOW + 1000)
    assert s is not None and s.operator and acc.csrf_ok(s.sid, s.csrf)
    assert not acc.csrf_ok(s.sid, None) and not acc.csrf_ok(s.sid, "0" * 32)
    assert acc.session(cookie[:-2] + "AA", NOW) is None              # forged signature
    assert acc.session(cookie, NOW + 13 * 3600 * 1000) is None       # expired
    assert Accounts(reg).session(cookie, NOW) is not None            # another instance
    acc.add_user("olga", "viewer", "password-1", NOW)                # demoted: at once
    s2 = acc.session(cookie, NOW)
    assert s2 is not None and not s2.operator
    for _ in range(LOGIN_MAX_PER_USER):
        assert acc.login("olga", "nope", "10.0.0.2", NOW)[0] == ""
    cookie, why = acc.login("olga", "password-1", "10.0.0.3", NOW)
    assert cookie == "" and "too many" in why
    assert acc.login("olga", "password-1", "10.0.0.3", NOW + 6 * 60_000)[0]
    with pytest.raises(ConfigError):
        acc.add_user("Bad Name", "viewer", "password-1", NOW)
    with pytest.raises(ConfigError):
        acc.add_user("short", "viewer", "x", NOW)
    reg.close()


@pytest.mark.parametrize(("raw", "key"), [
    ("a=1&a=2", "repeated-form-field"), ("zzz=1", "unknown-form-field"),
    ("a=%00", "bad-form-value"), ("a=" + "x" * 2000, "bad-form-value"),
    ("&".join(f"a{i}=1" for i in range(40)), "bad-form"), ("a=%ff", "bad-form")])
def test_forms_are_parsed_under_limits(raw: str, key: str) -> None:
    with pytest.raises(Refused) as err:
        _fields(raw, ("a", *ALLOWED), "form")
    assert err.value.key == key


def test_a_signed_bundle_starts_a_rollout_and_a_forged_one_does_not(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    pki = Pki.from_seed(7)
    pki.init(reg)
    for i in range(4):
        reg.add_gateway(f"gw{i}", "north", ["lamps"], NOW)
    now = int(time.time())

    def bundle(version: int, keys: list[PrivateKey] | None = None, *,
               gateways: tuple[str, ...] = (), sites: tuple[str, ...] = (),
               tags: tuple[str, ...] = ()) -> bytes:
        return make_bundle("config", version, b'[gateway]\nid = "x"\n',
                           keys or pki.release_keys, issued=now, expires=now + 86400,
                           gateways=gateways, sites=sites, tags=tags)

    ms = now * 1000
    state = start_from_bundle(reg, bundle(3, sites=("north",)), waves="50,100",
                              abort_above_pct=10, abort_min_count=3, wave_deadline_s=60,
                              now_ms=ms)
    assert sorted(state["plan"]["gateways"]) == ["gw0", "gw1", "gw2", "gw3"]
    assert RolloutStore(reg).all() == [state["plan"]["id"]]
    assert reg.next_version("config") == 4  # the CLI's next rollout goes above it
    with pytest.raises(ConfigError, match="not above"):
        start_from_bundle(reg, bundle(2, gateways=("gw1",)), waves="100", abort_above_pct=10,
                          abort_min_count=3, wave_deadline_s=60, now_ms=ms)
    with pytest.raises(VerificationError, match="signatures"):
        start_from_bundle(reg, bundle(9, [pki.releases[0], Pki.key(8, "x")], gateways=("gw1",)),
                          waves="100", abort_above_pct=10, abort_min_count=3,
                          wave_deadline_s=60, now_ms=ms)
    with pytest.raises(ConfigError, match="match no"):
        start_from_bundle(reg, bundle(9, tags=("pipes",)), waves="100", abort_above_pct=10,
                          abort_min_count=3, wave_deadline_s=60, now_ms=ms)
    with pytest.raises(VerificationError):
        start_from_bundle(reg, b"\x00garbage", waves="100", abort_above_pct=10,
                          abort_min_count=3, wave_deadline_s=60, now_ms=ms)
    assert len(RolloutStore(reg).all()) == 1
    reg.close()

"""Gateways' software state in the registry (fleet/swreport.py): kept apart from the config
result, fed by ``reported/software`` (and old gateways' software reports on ``reported``) and by
the ``state`` version, read by software rollouts, shown by ``edge-fleet``; hostile fields
refused and counted. In process, on a real SQLite registry: no broker needed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.brokerconf import acl_text
from edge_agent.fleet.cli import main as fleet_cli
from edge_agent.fleet.console.evaluator import light_gateways
from edge_agent.fleet.console.views import fleet_rows
from edge_agent.fleet.intake import IntakeError
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutDriver, RolloutStore
from edge_agent.fleet.service import FleetService
from edge_agent.fleet.swreport import parse_software_report
from edge_agent.protocol import topics
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.keys import PrivateKey
from tests.support.pgdb import pg_available, pg_schema

T0 = 1_700_000_000_000
NUMBER = 2_000_000  # release 2.0.0
CONFIG = {"kind": "config", "version": 3, "result": "applied", "committed": 3, "ts": T0,
          "reason": ""}
APPLIED = {"kind": "software", "result": "applied", "step": "commit", "version": NUMBER,
           "release": "2.0.0", "status": {"kind": "config"}}
ROLLED_BACK = {"kind": "software", "result": "rolled_back", "version": NUMBER,
               "release": "2.0.0", "reason": "no healthy start in 3 tries",
               "log_tail": ["Traceback (most recent call last):", "\x1b[2Jforged\nline",
                            "release: crashing"]}


class Msg:
    """What the service's handler reads of an aiomqtt message."""

    def __init__(self, topic: str, payload: object) -> None:
        self.topic = topic
        self.payload = payload


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield from _with(r)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """The registry on SQLite and, where it runs, PostgreSQL (the same SQL)."""
    if request.param == "sqlite":
        yield from _with(Registry(f"sqlite:///{tmp_path / 'fleet.db'}"))
        return
    if not pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    with pg_schema() as url:
        yield from _with(Registry(url))


def _with(r: Registry) -> Iterator[Registry]:
    for gw in ("gw-a", "gw-b"):
        r.add_gateway(gw, "north", [], T0)
    yield r
    r.close()


def rows(reg: Registry) -> dict[str, Any]:
    return {g.id: g for g in reg.gateways()}


def test_a_config_report_after_a_software_report_keeps_the_software_state(
        any_reg: Registry) -> None:
    reg = any_reg
    assert reg.record_state("gw-a", True, T0, "1.0.0")
    assert reg.record_report("gw-a", {"kind": "software", "result": "downloading",
                                      "release": "2.0.0", "bytes": 50, "total": 100}, T0 + 1)
    assert rows(reg)["gw-a"].software.text() == "downloading 2.0.0 50%"
    assert reg.record_report("gw-a", APPLIED, T0 + 2, "software")
    assert reg.record_report("gw-a", CONFIG, T0 + 3)
    g = rows(reg)["gw-a"]
    assert (g.result, g.result_version, g.config_version) == ("applied", 3, 3)
    assert g.software.text() == "applied 2.0.0" and g.software.running == "2.0.0"
    # a software release number (2,000,000) never holds back a later config version
    assert reg.record_report("gw-a", {**CONFIG, "version": 4, "committed": 4}, T0 + 4)
    assert rows(reg)["gw-a"].config_version == 4
    # a rollback keeps its reason and log lines; repeating it as a refusal does not hide them
    assert reg.record_report("gw-a", ROLLED_BACK, T0 + 5)
    assert reg.record_report("gw-a", {"kind": "software", "result": "refused",
                                      "version": "2.0.0", "reason": "rolled back here"}, T0 + 6)
    sw = rows(reg)["gw-a"].software
    assert sw.result == "rolled_back" and sw.reason.startswith("no healthy start")
    assert sw.log_tail[-1] == "release: crashing" and sw.running == "2.0.0"
    assert not reg.record_report("gw-nobody", APPLIED, T0)


@pytest.mark.parametrize(("doc", "code"), [
    ({"result": "Applied!"}, "field_value"),
    ({"result": 7}, "field_type"),
    ({"result": "applied", "version": "2.0"}, "field_value"),
    ({"result": "applied", "version": -1}, "int_range"),
    ({"result": "applied", "version": 10**12}, "int_range"),
    ({"result": "applied", "version": True}, "field_type"),
    ({"result": "applied", "version": NUMBER, "release": "3.0.0"}, "field_value"),
    ({"result": "downloading", "release": "2.0.0\n"}, "field_value"),
    ({"result": "downloading", "bytes": 5, "total": 4}, "field_value"),
    ({"result": "downloading", "bytes": -5}, "int_range"),
    ({"result": "rolled_back", "log_tail": "a line"}, "field_type"),
    ({"result": "rolled_back", "log_tail": [1]}, "field_value"),
    ({"result": "rolled_back", "log_tail": ["x"] * 21}, "field_value"),
    ({"result": "applied", "reason": ["no"]}, "field_type"),
    ({"result": "applied", "staged_s": "1"}, "field_type"),
])
def test_hostile_software_fields_are_refused(doc: dict[str, Any], code: str) -> None:
    with pytest.raises(IntakeError) as info:
        parse_software_report({"kind": "software", **doc})
    assert info.value.code == code, info.value


def test_the_service_records_software_reports_and_counts_hostile_ones(reg: Registry) -> None:
    svc = FleetService(reg, "mqtt://127.0.0.1:1", clock=FakeClock())
    soft = topics.reported_topic("edge", "gw-b", "software")
    assert soft == "edge/gw-b/reported/software"
    assert topics.subscription("edge", topics.REPORTED) == "edge/+/reported/#"
    assert f"pattern readwrite edge/%u/{topics.REPORTED}/{topics.SOFTWARE}" in acl_text()

    async def main() -> None:
        for topic, doc in [
                (soft, {"kind": "software", "result": "applied", "version": "x.y"}),
                (soft, {**APPLIED, "log_tail": {"a": 1}}),
                (soft, CONFIG),  # a config report has no place on reported/software
                ("edge/gw-b/reported/other", APPLIED),
                ("edge/gw-b/state", {"status": "online", "version": "1.0.0 \u2028"}),
                ("edge/gw-b/state", {"status": "online", "version": "1.0.0"}),
                ("edge/gw-b/reported", CONFIG),
                (soft, ROLLED_BACK)]:
            await svc._handle(Msg(topic, json.dumps(doc).encode()))  # type: ignore[arg-type]

    asyncio.run(main())
    assert svc.health()["consumer"]["rejected"] == {
        "reported:field_value": 2, "reported:field_type": 1, "state:field_value": 1,
        "topic:not_a_gateway_topic": 1}
    g = rows(reg)["gw-b"]
    assert g.result == "applied" and g.software.result == "rolled_back"
    assert g.software.running == "1.0.0"
    assert fleet_rows([g])[0].software == "1.0.0 (rolled_back 2.0.0)"
    # the console's fleet page reads the same, through its own light query
    light = light_gateways(reg, "gw-b")
    assert fleet_rows(light)[0].software == "1.0.0 (rolled_back 2.0.0)"


def test_a_software_rollout_reads_software_reports_and_status_shows_them(
        reg: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    keys = [PrivateKey(bytes([i]) * 32) for i in (1, 2)]
    ops.init_root(reg, [keys[0].public], 1, [keys[1].public], 1, [keys[0]], now=T0 // 1000)
    ops.start_rollout(reg, b'{"release": "2.0.0"}', ["all"], [keys[1]], kind="software",
                      version=NUMBER, now_ms=T0, rollout_id="sw", waves=[100],
                      abort_above_pct=60, abort_min_count=2)

    async def publish(offers: list[tuple[str, bytes]]) -> None:
        pass

    driver = RolloutDriver(reg, publish, owner="t")
    asyncio.run(driver.step(T0 + 1000))
    reg.record_report("gw-a", APPLIED, T0 + 2000, "software")
    reg.record_report("gw-a", CONFIG, T0 + 2001)  # after it: must not hide the commit
    reg.record_report("gw-b", ROLLED_BACK, T0 + 2002, "software")
    asyncio.run(driver.step(T0 + 3000))
    state = RolloutStore(reg).load("sw")[0]
    assert state["gw"] == {"gw-a": ro.APPLIED, "gw-b": ro.FAILED}, state["gw"]
    driver.release_all()
    db = reg.url
    capsys.readouterr()
    assert fleet_cli(["rollout", "status", "sw", "-v", "--db", db]) == 0
    out = capsys.readouterr().out
    line_a = next(x for x in out.splitlines() if x.split()[:1] == ["gw-a"])
    assert "applied 2.0.0" in line_a and "running 2.0.0" in line_a, out
    assert "reason: no healthy start in 3 tries" in out and "| release: crashing" in out, out
    assert "\x1b" not in out and "| \\x1b[2Jforged\\nline" in out, out  # shown, not sent
    assert fleet_cli(["gateways", "--db", db]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[3] == "software"
    assert next(x for x in out.splitlines() if x.startswith("gw-a")).split()[3] == "2.0.0"

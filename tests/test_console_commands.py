"""The Commands page's reading side on SQLite and PostgreSQL: the commands the registry holds,
each gateway's outcome from its stored answers, who sent it, the event stream's snapshot; and
the form's fields becoming ``cmd send``'s options."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.fleet import cmdstore
from edge_agent.fleet.console import cmdpage
from edge_agent.fleet.console.accounts import Accounts
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.errors import CommandError
from tests.support.pgdb import pg_available, pg_schema

T0 = 1_700_000_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        r = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
        yield r
        r.close()
        return
    if not pg_available():
        pytest.skip("PostgreSQL is not running at the test address (tests/support/pgdb.py)")
    with pg_schema() as url:
        r = Registry(url)
        yield r
        r.close()


def _answer(cid: str, gw: str, status: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "gateway": gw, "status": status, "reason": reason, **extra}


def test_each_gateway_shows_its_outcome_and_the_snapshot_follows(reg: Registry) -> None:
    accounts = Accounts(reg)  # makes the console's tables (the audit log)
    for gw in ("gw-a", "gw-b", "gw-c"):
        reg.add_gateway(gw, "north", [], T0)
    envelope = json.dumps({"signed": {"args": {"lamps": ["lamp-1"], "level_pct": 40},
                                      "targets": {"sites": ["north"]}, "expires": 1}})
    cmdstore.record_command(reg, "c-1", "dim", envelope.encode(), ["gw-a", "gw-b", "gw-c"], T0)
    accounts.audit("olga", cmdpage.AUDIT_ACTION, "c-1", "action=dim", T0)
    before = cmdpage.snapshot(reg)
    write = {"device": "lamp-1", "point": "dim_command", "value": 40, "ok": True,
             "readback": 40, "error": None, "exception_code": None}
    answers: list[tuple[str, str, str, dict[str, Any]]] = [
            ("gw-a", "accepted", "1 writes queued", {}),
            ("gw-a", "done", "1 writes done and read back", {"writes": [write]}),
            ("gw-b", "accepted", "1 writes queued", {}),
            ("gw-b", "failed", "lamp-1: exception 4", {"exception_code": 4})]
    for gw, status, reason, extra in answers:
        cmdstore.record_result(reg, gw, "c-1", _answer("c-1", gw, status, reason, **extra),
                               T0 + 100)
    assert cmdpage.snapshot(reg) != before
    [view] = cmdpage.command_views(reg)
    assert view["by"] == "olga" and view["args"]["level_pct"] == 40
    rows = {g["gateway"]: g for g in view["gateways"]}
    assert [g["gateway"] for g in view["gateways"]] == ["gw-b", "gw-c", "gw-a"]  # worst first
    assert rows["gw-a"]["status"] == "done" and rows["gw-a"]["writes"][0]["readback"] == 40
    assert rows["gw-b"]["status"] == "failed" and rows["gw-b"]["exception_code"] == 4
    assert rows["gw-c"]["status"] == "sent" and rows["gw-c"]["reason"] == "no answer yet"
    assert view["counts"] == {"done": 1, "refused": 0, "failed": 1, "accepted": 0, "sent": 1}


def test_a_command_sent_elsewhere_reads_as_sent_by_the_cli(reg: Registry) -> None:
    Accounts(reg)
    reg.add_gateway("gw-a", "north", [], T0)
    cmdstore.record_command(reg, "c-2", "plan", b"not json", ["gw-a"], T0)
    [view] = cmdpage.command_views(reg)
    assert view["by"] == "edge-fleet cmd send" and view["args"] == {}


def test_form_fields_become_the_options_of_cmd_send() -> None:
    opts = cmdpage.options_from_form({"action": "dim", "value": " 40 ", "lamps": "lamp-1",
                                      "for": "", "target": "site:north"})
    assert (opts.action, opts.value, opts.lamps, opts.for_, opts.site, opts.gateway) == (
        "dim", "40", "lamp-1", None, ["north"], [])
    for bad in ({"action": "reboot", "target": "gw:a"}, {"action": "dim", "target": "all"},
                {"action": "dim", "target": "gw:"}, {"action": "dim"}):
        with pytest.raises(CommandError):
            cmdpage.options_from_form(bad)

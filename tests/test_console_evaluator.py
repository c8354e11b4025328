"""The alarm evaluator's shell on SQLite and PostgreSQL (skipped where PostgreSQL is absent):
readings folded into the latest values, a silent device raised after the delay and cleared when
it answers, one lease holder among instances; and ``edge-fleet user``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.fleet.cli import main as fleet_main
from edge_agent.fleet.console.accounts import Accounts
from edge_agent.fleet.console.evaluator import Evaluator
from edge_agent.fleet.console.readings import ReadingsDb
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.clock import FakeClock
from tests.support.pgdb import pg_available, pg_schema

T0 = 1_800_000_000_000
INSERT = ("INSERT INTO readings (gateway, epoch, seq, device, point, ts_ms, quality, "
          "exception_code, kind, value_int, value_real, value_text) VALUES "
          "(?, 1, ?, ?, ?, ?, ?, NULL, ?, ?, ?, NULL)")


@pytest.fixture(params=["sqlite", "postgresql"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}", f"sqlite:///{tmp_path / 'ingest.db'}"
        return
    if not pg_available():
        pytest.skip("PostgreSQL is not running at the test address (tests/support/pgdb.py)")
    with pg_schema() as reg, pg_schema() as ingest:
        yield reg, ingest


def put(db: ReadingsDb, seq: int, ts: int, point: str, quality: str, value: float | None,
        device: str = "lamp") -> None:
    sql = INSERT.replace("?", "%s") if db.pg else INSERT
    with db._lock:
        db._conn.execute(sql, ("gw1", seq, device, point, ts, quality,
                               "f" if value is not None else "n", None, value))


def open_alarms(reg: Registry) -> set[tuple[str, str]]:
    return {(str(s), str(k)) for s, k in reg.fetchall(
        "SELECT source, kind FROM console_alarms WHERE cleared_ms IS NULL")}


def test_a_silent_device_is_raised_after_the_delay_and_cleared(dbs: tuple[str, str]) -> None:
    reg, readings = Registry(dbs[0]), ReadingsDb(dbs[1])
    reg.add_gateway("gw1", "north", [], T0)
    reg.record_health("gw1", {"version": "0.1.0", "spool": {"batches": 0,
                                                            "dropped_batches": 0}}, T0)
    clock = FakeClock(T0 / 1000)
    ev = Evaluator(reg, readings, clock, delay_s=10, owner="a")
    other = Evaluator(reg, readings, clock, delay_s=10, owner="b")
    put(readings, 0, T0, "supply_voltage", "good", 230.0)
    put(readings, 0, T0, "lamp_fault", "good", 0.0)
    assert ev.step(T0) is not None and open_alarms(reg) == set()
    assert other.step(T0) is None  # "a" holds the lease
    put(readings, 1, T0 + 5000, "supply_voltage", "comm_error", None)
    put(readings, 1, T0 + 5000, "lamp_fault", "comm_error", None)
    ev.step(T0 + 6000)
    assert open_alarms(reg) == set()  # pending: the delay has not passed
    ev.step(T0 + 16_000)
    assert open_alarms(reg) == {("gw1/lamp", "device_offline")}
    ev.step(T0 + 17_000)  # raised once
    assert reg.fetchone("SELECT COUNT(*) FROM console_alarms")[0] == 1  # type: ignore[index]
    put(readings, 2, T0 + 20_000, "supply_voltage", "good", 231.0)
    put(readings, 2, T0 + 20_000, "lamp_fault", "good", 1.0)
    ev.step(T0 + 21_000)
    assert open_alarms(reg) == set()  # answered: cleared at once; the lamp fault is pending
    ev.step(T0 + 32_000)
    assert open_alarms(reg) == {("gw1/lamp", "lamp_fault")}
    latest = dict(reg.fetchall("SELECT point, value_real FROM console_latest"))
    assert latest == {"supply_voltage": 231.0, "lamp_fault": 1.0}
    assert reg.fetchall("SELECT COUNT(*) FROM console_health")[0][0] == 1
    ev.release()
    assert other.step(T0 + 33_000) is not None  # released: the other instance takes over
    readings.close()
    reg.close()


def test_user_add_takes_the_password_from_a_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    (tmp_path / "pw").write_text("a long password\n")
    assert fleet_main(["user", "add", "olga", "--role", "operator", "--password-file",
                       str(tmp_path / "pw"), "--db", db]) == 0
    reg = Registry(db)
    cookie, _ = Accounts(reg).login("olga", "a long password", "127.0.0.1", T0)
    assert cookie
    reg.close()
    (tmp_path / "short").write_text("x\n")
    assert fleet_main(["user", "add", "bob", "--password-file", str(tmp_path / "short"),
                       "--db", db]) != 0
    assert fleet_main(["user", "add", "Bad Name", "--password-file", str(tmp_path / "pw"),
                       "--db", db]) != 0
    assert fleet_main(["user", "list", "--db", db]) == 0
    out = capsys.readouterr()
    assert "olga operator" in out.out and "8 to 256" in out.err

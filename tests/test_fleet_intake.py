"""Intake of gateways' reported/health/state (strict parsing under limits, counted rejections),
the registry's checks and tolerant read-back, the supervisor, and the service's message handler
(in process, on a real registry: no broker needed)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_agent.fleet import actions as ops
from edge_agent.fleet import cli
from edge_agent.fleet import service as service_module
from edge_agent.fleet.intake import (
    HEALTH_DEVICE_BUDGET,
    HEALTH_LIMITS,
    REPORT_LIMITS,
    STATE_LIMITS,
    IntakeError,
    health_text,
    parse_report,
    parse_state,
    read_json,
)
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutDriver
from edge_agent.fleet.service import FleetService
from edge_agent.fleet.supervisor import FAILED, RESTARTING, RUNNING, Supervisor, TaskFailedError
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.rejections import Rejections
from tests.support.pgdb import pg_available, pg_schema

T0 = 1_700_000_000_000
GOOD_REPORT = {"kind": "config", "version": 3, "result": "applied", "committed": 3,
               "ts": T0, "reason": "", "status": {"kind": "config", "committed": 3}}


def code_of(payload: bytes, limits: Any = REPORT_LIMITS) -> str:
    with pytest.raises(IntakeError) as info:
        read_json(payload, limits)
    return info.value.code


# ------------------------------------------------------------------ the strict reader

def test_the_observed_poison_reports_are_refused_with_a_reason() -> None:
    assert code_of(json.dumps({"version": 10**30}).encode()) == "int_range"
    assert code_of(b"[" * 100_000) == "too_large"  # over 64 KiB: refused before parsing
    assert code_of(b"[" * 1000) == "too_deep"       # under the size limit: the depth says no
    assert code_of(b'{"result": "applied", "reason": "\\ud800"}') == "lone_surrogate"


@pytest.mark.parametrize(("payload", "code"), [
    (b"", "empty"),
    (b"\xff\xfe{}", "not_utf8"),
    (b"not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'{"a": 1, "a": 2}', "duplicate_key"),
    (b'{"a": NaN}', "not_json"),
    (b'{"version": 9223372036854775808}', "int_range"),
    (b'{"version": -9223372036854775809}', "int_range"),
    (b'{"a": "' + b"x" * 9000 + b'"}', "string_too_long"),
    (b'{"a": [' + b"0," * 1500 + b"0]}", "too_many_items"),
])
def test_the_reader_refuses_what_breaks_a_limit(payload: bytes, code: str) -> None:
    assert code_of(payload) == code


def test_the_reader_takes_real_documents_and_non_bytes_are_refused() -> None:
    assert read_json(json.dumps(GOOD_REPORT).encode(), REPORT_LIMITS) == GOOD_REPORT
    assert read_json(b'{"status": "online", "epoch": 1, "ts": 2}', STATE_LIMITS)["ts"] == 2
    with pytest.raises(IntakeError) as info:
        read_json("{}", REPORT_LIMITS)
    assert info.value.code == "not_bytes"
    with pytest.raises(IntakeError, match="expected a JSON object"):
        read_json(b'"text"', HEALTH_LIMITS)


# ------------------------------------------------------------------ field types

def test_report_fields_have_exact_types_and_ranges() -> None:
    r = parse_report(GOOD_REPORT)
    assert (r.result, r.version, r.committed, r.reason) == ("applied", 3, 3, "")
    assert parse_report({"result": "failed", "reason": "x"}).committed is None
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({}, "field_missing", "$.result"),
        ({"result": 5}, "field_type", "$.result"),
        ({"result": "Applied; DROP"}, "field_value", "$.result"),
        ({"result": "applied", "version": True}, "field_type", "$.version"),
        ({"result": "applied", "version": 1.5}, "field_type", "$.version"),
        ({"result": "applied", "version": "3"}, "field_type", "$.version"),
        ({"result": "applied", "version": -1}, "int_range", "$.version"),
        ({"result": "applied", "committed": 2**63}, "int_range", "$.committed"),
        ({"result": "applied", "reason": ["x"]}, "field_type", "$.reason"),
        ({"result": "applied", "status": "ok"}, "field_type", "$.status"),
    ]
    for doc, code, where in bad:
        with pytest.raises(IntakeError) as info:
            parse_report(doc)
        assert info.value.code == code, doc
        assert where in str(info.value), (doc, str(info.value))
    long = parse_report({"result": "invalid", "reason": "r" * 5000}).reason
    assert long.startswith("r" * 2000) and "3000 more characters" in long


def test_state_is_online_or_offline_and_nothing_else() -> None:
    assert parse_state({"status": "online", "epoch": 1}) is True
    assert parse_state({"status": "offline", "reason": "shutdown"}) is False
    for doc in ({}, {"status": "ONLINE"}, {"status": 1}, {"status": "online", "epoch": -5},
                {"status": "online", "ts": "now"}):
        with pytest.raises(IntakeError):
            parse_state(doc)


def test_health_is_stored_whole_or_refused_never_cut() -> None:
    doc = {"devices": {f"d{i}": {"status": "online", "pad": "x" * 900} for i in range(30)}}
    text = health_text(doc)
    assert len(text) > 20_000 and json.loads(text) == doc   # was cut at 20,000 before
    huge = {"devices": {f"d{i}": {"pad": "x" * 4000} for i in range(1100)}}
    with pytest.raises(IntakeError) as info:
        health_text(huge)
    assert info.value.code == "too_large"
    with pytest.raises(IntakeError):
        health_text({"bad": float("nan")})
    with pytest.raises(IntakeError):
        health_text({"s": "\ud800"})


def test_the_health_of_a_gateway_with_ten_thousand_devices_is_taken() -> None:
    # Each device as a gateway reports it, with a long name and a full error text (the
    # largest entries seen), on 41 buses: the budget HEALTH_LIMITS is sized for.
    device = {"status": "offline", "unit_id": 247, "bus": "rs485-north-cabinet-02",
              "polls": 123456789, "good_polls": 123456000, "failed_polls": 789,
              "skipped_slots": 12345, "missed_slots": 123, "probes": 42,
              "consecutive_failures": 17, "last_good_ms": 1795880318000,
              "last_error": "Modbus Error: [Input/Output] No response received after 1 "
                            "retries (device timed out)",
              "latency_ms": {"last": 17.8, "max": 1017.0, "mean": 11.3}}
    bus = {"where": "serial port /dev/ttyUSB0 9600 8N1", "connected": True, "requests": 10**9,
           "replies": 10**9, "timeouts": 789, "exceptions": 1, "retries": 12,
           "busy_s": 123456.789, "last_error": "Modbus Error: [Input/Output] No response"}
    doc = {"gateway": "gw-0001", "uptime_s": 1e6,
           "buses": {f"rs485-{b:02d}": bus for b in range(HEALTH_DEVICE_BUDGET // 247 + 1)},
           "devices": {f"streetlight-controller-{i:05d}": device
                       for i in range(HEALTH_DEVICE_BUDGET)}}
    text = health_text(doc)
    assert json.loads(text) == doc
    assert read_json(text.encode(), HEALTH_LIMITS) == doc


# ------------------------------------------------------------------ rejections are counted

def test_rejections_log_the_first_of_each_reason_then_a_periodic_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    rej = Rejections("test intake", logging.getLogger("test.intake"), summary_s=60,
                     clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.intake"):
        for i in range(1000):
            rej.reject("reported:int_range", f"edge/gw-{i}/reported: $.version too big")
        rej.reject("health:too_large", "edge/gw-x/health: big")
        assert len(caplog.records) == 2  # the first of each reason only
        assert "edge/gw-0/reported" in caplog.records[0].getMessage()
        clock.advance(61)
        rej.maybe_summarise()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "999 more 'reported:int_range' rejections" in lines[2]
    assert "gw-999" in lines[2]  # the latest one is named
    assert rej.counts == {"reported:int_range": 1000, "health:too_large": 1}
    assert rej.total == 1001


# ------------------------------------------------------------------ the registry

@pytest.fixture(params=["sqlite", "postgresql"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        r = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    else:
        if not pg_available():
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        with pg_schema() as url:
            r = Registry(url)
            yield from _with(r)
            return
    yield from _with(r)


def _with(r: Registry) -> Iterator[Registry]:
    for gw in ("gw-a", "gw-b", "gw-c"):
        r.add_gateway(gw, "north", [], T0)
    try:
        yield r
    finally:
        r.close()


def test_registry_refuses_bad_reports_before_the_database(reg: Registry) -> None:
    with pytest.raises(IntakeError):
        reg.record_report("gw-a", {"result": "applied", "version": 10**30}, T0)
    with pytest.raises(IntakeError):
        reg.record_health("gw-a", {"n": 10**30}, T0)
    with pytest.raises(IntakeError):
        reg.record_state("gw-a", "online", T0)  # type: ignore[arg-type]
    assert reg.record_report("gw-a", {"result": "applied", "version": 4, "committed": 4}, T0)
    # A report without "committed" says nothing about the committed version.
    assert reg.record_report("gw-a", {"result": "failed", "reason": "no uplink"}, T0 + 1)
    row = next(g for g in reg.gateways() if g.id == "gw-a")
    assert (row.config_version, row.result, row.result_version) == (4, "failed", None)
    assert not reg.record_report("gw-zz", GOOD_REPORT, T0)


def test_a_bad_stored_health_row_shows_as_that_gateways_error(reg: Registry) -> None:
    assert reg.record_health("gw-a", {"uptime_s": 1.5}, T0)
    assert reg.record_health("gw-c", {"uptime_s": 2.5}, T0)
    # What an older version stored: a document cut at 20,000 characters.
    cut = json.dumps({"pad": "x" * 30_000})[:20_000]
    reg.execute("UPDATE gateways SET health = ? WHERE id = ?", (cut, "gw-b"))
    rows = {g.id: g for g in reg.gateways()}
    assert list(rows) == ["gw-a", "gw-b", "gw-c"]
    assert rows["gw-a"].health == {"uptime_s": 1.5} and rows["gw-a"].health_error is None
    assert rows["gw-b"].health is None
    assert rows["gw-b"].health_error is not None and "does not read back" in \
        rows["gw-b"].health_error
    assert rows["gw-c"].health == {"uptime_s": 2.5}


def test_a_corrupt_rollout_row_is_set_aside_and_the_others_are_driven(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    keys = [PrivateKey(bytes([i]) * 32) for i in (1, 2)]
    ops.init_root(reg, [keys[0].public], 1, [keys[1].public], 1, [keys[0]], now=T0 // 1000)
    for gw in ("gw-a", "gw-b"):
        reg.add_gateway(gw, "north", [], T0)
    for rid, gw in (("r-bad", "gw-a"), ("r-good", "gw-b")):
        ops.start_rollout(reg, b"[gateway]\n", [f"gw:{gw}"], [keys[1]], now_ms=T0,
                          rollout_id=rid, waves=[100])
    reg.execute("UPDATE rollouts SET state = ? WHERE id = ?", ('{"status": "runn', "r-bad"))
    published: list[list[tuple[str, bytes]]] = []

    async def publish(offers: list[tuple[str, bytes]]) -> None:
        published.append(offers)

    driver = RolloutDriver(reg, publish, owner="t")
    assert asyncio.run(driver.step(T0 + 1000)) == 2
    assert "r-bad" in driver.broken and "r-good" not in driver.broken
    assert [gw for offers in published for gw, _ in offers] == ["gw-b"]
    reg.close()


# ------------------------------------------------------------------ the supervisor

def test_a_dying_task_is_restarted_with_backoff_and_shown_at_once(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock, base_s=1.0, cap_s=8.0, max_failures=100, healthy_s=1000)
    runs: list[float] = []
    seen: list[dict[str, Any]] = []

    async def flaky() -> None:
        runs.append(clock.monotonic())
        if len(runs) > 1:
            seen.append(sup.snapshot()["flaky"])
        if len(runs) < 5:
            raise RuntimeError(f"boom {len(runs)}")
        await asyncio.Event().wait()

    async def main() -> None:
        sup.start("flaky", flaky)
        while len(runs) < 5:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sup.tasks["flaky"].state == RUNNING
        await sup.stop()

    with caplog.at_level(logging.ERROR, logger="edge_agent.fleet.supervisor"):
        asyncio.run(main())
    assert seen[0]["restarts"] == 1 and seen[0]["last_error"] == "RuntimeError: boom 1"
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert all(g <= c for g, c in zip(gaps, [1, 2, 4, 8], strict=True))  # capped back-off
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "boom 1" in str(tracebacks[0].exc_info)
    assert len(caplog.records) == 4  # one line per crash, the traceback only the first time


def test_a_task_that_cannot_be_restarted_is_fatal() -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock, base_s=0.1, cap_s=0.1, max_failures=3)
    state: list[str] = []

    async def broken() -> None:
        state.append(sup.tasks["broken"].state)
        raise OSError("disk gone")

    async def main() -> None:
        sup.start("broken", broken)
        await asyncio.wait_for(sup.fatal.wait(), 5)

    asyncio.run(main())
    assert state == [RUNNING] * 3
    assert sup.tasks["broken"].state == FAILED and not sup.all_running()
    assert sup.failure is not None and "disk gone" in sup.failure


def test_restarting_shows_in_the_snapshot_between_runs() -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock, base_s=5, cap_s=5, max_failures=5)
    gate = asyncio.Event()

    async def once() -> None:
        raise ValueError("bad row")

    async def main() -> dict[str, Any]:
        # a clock whose sleep blocks, so the task stays between runs while we look
        async def blocked(_s: float) -> None:
            await gate.wait()

        clock.sleep = blocked  # type: ignore[method-assign,assignment]
        sup.start("t", once)
        for _ in range(5):
            await asyncio.sleep(0)
        snap = sup.snapshot()["t"]
        await sup.stop()
        return snap

    snap = asyncio.run(main())
    assert snap["state"] == RESTARTING and snap["restarts"] == 1
    assert snap["last_error"] == "ValueError: bad row"


# ------------------------------------------------------------------ the service's handler

class Msg:
    """What the handler reads of an aiomqtt message."""

    def __init__(self, topic: str, payload: object) -> None:
        self.topic = topic
        self.payload = payload


def test_the_service_handler_is_total_and_counts_every_rejection(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    for gw in ("gw-good", "gw-evil"):
        reg.add_gateway(gw, "north", [], T0)
    svc = FleetService(reg, "mqtt://127.0.0.1:1", clock=FakeClock())
    poison = [
        ("edge/gw-evil/reported", json.dumps({"version": 10**30}).encode()),
        ("edge/gw-evil/reported", b"[" * 100_000),
        ("edge/gw-evil/reported", b'{"result": "applied", "version": 1e400}'),
        ("edge/gw-evil/health", json.dumps({"pad": "x" * 4_200_000}).encode()),
        ("edge/gw-evil/health", b'{"a": "\\udc00"}'),
        ("edge/gw-evil/state", b'{"status": "maybe"}'),
        ("edge/gw-evil/state", b""),
        ("edge/gw-evil/state", 12345),
        ("edge/GW-EVIL/state", b'{"status": "online"}'),
        ("edge/gw-nobody/state", b'{"status": "online"}'),
    ]

    async def main() -> None:
        for topic, payload in poison:
            await svc._handle(Msg(topic, payload))  # type: ignore[arg-type]
        # A value that slips past intake and the database refuses costs that message only.
        orig = reg.record_report

        def explode(gateway: str, doc: Mapping[str, Any], now_ms: int,
                    topic_kind: str = "") -> bool:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")

        reg.record_report = explode  # type: ignore[method-assign]
        await svc._handle(Msg("edge/gw-evil/reported", b'{"result": "applied"}'))  # type: ignore[arg-type]
        reg.record_report = orig  # type: ignore[method-assign]
        await svc._handle(Msg("edge/gw-good/reported", json.dumps(GOOD_REPORT).encode()))  # type: ignore[arg-type]
        await svc._handle(Msg("edge/gw-good/health", b'{"uptime_s": 3.5}'))  # type: ignore[arg-type]
        await svc._handle(Msg("edge/gw-good/state", b'{"status": "online"}'))  # type: ignore[arg-type]

    asyncio.run(main())
    rej = svc.health()["consumer"]["rejected"]
    assert rej == {"health:lone_surrogate": 1, "health:too_large": 1, "reported:database": 1,
                   "reported:float": 1, "reported:int_range": 1, "reported:too_large": 1,
                   "state:empty": 1, "state:field_value": 1, "state:not_bytes": 1,
                   "state:unknown_gateway": 1, "topic:not_a_gateway_topic": 1}, rej
    assert svc.health()["consumer"]["recorded"] == {"reported": 1, "health": 1, "state": 1,
                                                    "cmd-result": 0}
    rows = {g.id: g for g in reg.gateways()}
    assert rows["gw-good"].result == "applied" and rows["gw-good"].health == {"uptime_s": 3.5}
    assert rows["gw-evil"].result is None and rows["gw-evil"].health is None
    reg.close()


def test_the_service_ends_with_an_error_when_a_task_cannot_be_restarted(
        tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    sup = Supervisor(base_s=0.01, cap_s=0.01, max_failures=3)
    svc = FleetService(reg, "mqtt://127.0.0.1:1", supervisor=sup)

    async def dies() -> None:
        raise RuntimeError("the tick cannot run")

    svc._tick_loop = dies  # type: ignore[method-assign]

    async def main() -> None:
        await asyncio.wait_for(svc.run(asyncio.Event()), 10)

    with pytest.raises(TaskFailedError, match="fleet-tick failed 3 times") as info:
        asyncio.run(main())
    assert info.value.status == 1
    health = svc.health()
    assert health["ok"] is False and health["tasks"]["fleet-tick"]["state"] == FAILED
    reg.close()


def test_edge_fleet_serve_exits_1_when_a_task_cannot_be_restarted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    async def dies(self: FleetService) -> None:
        raise RuntimeError("the tick cannot run")

    monkeypatch.setattr(FleetService, "_tick_loop", dies)
    monkeypatch.setattr(service_module, "Supervisor",
                        functools.partial(Supervisor, base_s=0.01, cap_s=0.01, max_failures=3))
    status = cli.main(["serve", "--db", f"sqlite:///{tmp_path / 'fleet.db'}",
                       "--broker", "mqtt://127.0.0.1:1"])
    assert status == 1
    assert "task fleet-tick failed 3 times in a row" in capsys.readouterr().err


def test_a_stop_ends_even_when_a_task_will_not(caplog: pytest.LogCaptureFixture) -> None:
    holding = True

    async def stubborn() -> None:
        while holding:  # swallows every cancel while holding: the stop must end without it
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    async def polite() -> None:
        await asyncio.sleep(3600)

    async def scenario() -> tuple[list[str], float]:
        nonlocal holding
        sup = Supervisor(clock=FakeClock())
        sup.start("stubborn", stubborn)
        sup.start("polite", polite)
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        left = await sup.stop(timeout_s=0.5)
        took = loop.time() - started
        holding = False  # now it may end, so the test's own loop can close
        return left, took

    with caplog.at_level(logging.ERROR):
        left, took = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert left == ["stubborn"]
    assert took < 5  # the deadline ended the wait, not the task
    assert "supervised tasks still running" in caplog.text and "stubborn" in caplog.text

"""Learned register holes kept across restarts (``runtime/holes.py``), on the fake bus.

A meter refuses registers 0-4 (exception 2); the agent learns the hole, keeps it in the
state dir, and a restarted scheduler starts from it: no failing reads at start, the points
read device_exception until the first re-check 30 s later, and a mended device is read
again then and forgotten in the file. The file is read back as untrusted bytes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import DataType, Point, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.holes import HOLES_FILE, HoleStore, parse_holes, read_holes
from edge_agent.runtime.scheduler import REFUSAL_RECHECK_FIRST_S, BusScheduler
from edge_agent.tools.doctor import Level, check_refusals
from tests.support.fakebus import FakeBus, Polling, SteppedClock

HR = Table.HOLDING_REGISTER
START = 1_700_000_000.25
PTS = tuple(Point(name=name, table=HR, address=a, type=DataType.UINT16, count=1)
            for name, a in (("p0", 0), ("p1", 1), ("p2", 2), ("p3", 3), ("p4", 4), ("ok", 10)))
CFG = DeviceConfig(name="water", bus="fake", unit_id=9, profile=DeviceProfile("w", "", PTS),
                   poll_interval_s=1.0, points=PTS)


def run(path: Path, seconds: float, *, refusing: bool) -> tuple[list[Reading], FakeBus]:
    """Poll the meter for ``seconds`` with the holes file at ``path``."""
    clock = SteppedClock(START)
    bus = FakeBus(clock, retries=1)
    unit = bus.unit(9).load(HR, 0, [1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 42])
    if refusing:
        unit.refuse(HR, 0, 5)
    readings: list[Reading] = []
    sched = BusScheduler(bus, [CFG], readings.extend, clock, holes=HoleStore(path))

    async def main() -> None:
        async with Polling(sched.run, clock) as polling:
            await polling.until(clock.monotonic() + seconds)

    asyncio.run(main())
    return readings, bus


def test_a_learned_hole_is_kept_and_a_restart_starts_from_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / HOLES_FILE
    with caplog.at_level("WARNING", logger="edge_agent.runtime.scheduler"):
        run(path, 3, refusing=True)
    learned = [m for m in caplog.messages if "refuses holding_register 0-4" in m]
    assert len(learned) == 1 and "points p0, p1, p2, p3, p4 read device_exception" in learned[0]
    caplog.clear()
    holes, problem = read_holes(path)
    assert problem == "" and set(holes) == {"water"}
    assert holes["water"].ranges == {("holding_register", 0, 5)}
    assert (holes["water"].bus, holes["water"].unit_id) == ("fake", 9)

    # Restarted, still refusing: nothing is sent for the hole before the re-check.
    with caplog.at_level("WARNING", logger="edge_agent.runtime.scheduler"):
        readings, bus = run(path, REFUSAL_RECHECK_FIRST_S - 2, refusing=True)
    assert not any(e.covers(HR, 0) for e in bus.sent(9))
    assert {r.quality for r in readings if r.point == "p0"} == {Quality.DEVICE_EXCEPTION}
    assert {r.quality for r in readings if r.point == "ok"} == {Quality.GOOD}
    restored = [m for m in caplog.messages if "before the restart" in m]
    assert len(restored) == 1 and "holding_register 0-4" in restored[0]

    # Restarted after the meter was mended: read again at the first re-check, then forgotten.
    readings, bus = run(path, REFUSAL_RECHECK_FIRST_S + 3, refusing=False)
    first_good = next(r.ts_ms for r in readings if r.point == "p0" and r.quality is Quality.GOOD)
    assert first_good / 1000 - START <= REFUSAL_RECHECK_FIRST_S + 2
    assert read_holes(path) == ({}, "")


def test_a_refused_gap_between_points_is_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = SteppedClock(START)
    bus = FakeBus(clock, retries=1)
    bus.unit(9).load(HR, 0, [1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 42]).refuse(HR, 5, 10)
    readings: list[Reading] = []
    sched = BusScheduler(bus, [CFG], readings.extend, clock)

    async def main() -> None:
        async with Polling(sched.run, clock) as polling:
            await polling.until(clock.monotonic() + 3)

    with caplog.at_level("INFO", logger="edge_agent.runtime.scheduler"):
        asyncio.run(main())
    learned = [r for r in caplog.records if "refuses holding_register 5-9" in r.getMessage()]
    assert len(learned) == 1 and learned[0].levelname == "INFO"
    assert "no configured point lies there" in learned[0].getMessage()
    assert {r.quality for r in readings} == {Quality.GOOD}


def test_holes_of_a_device_moved_to_another_unit_or_bus_are_not_used(tmp_path: Path) -> None:
    path = tmp_path / HOLES_FILE
    store = HoleStore(path)
    store.record("water", "fake", 9, frozenset({("holding_register", 0, 5)}), START)
    again = HoleStore(path)
    assert again.get("water", "fake", 9) is not None
    assert again.get("water", "fake", 10) is None and again.get("water", "rs485", 9) is None


@pytest.mark.parametrize("raw", [
    b"", b"[]", b'{"version": 2, "devices": {}}', b'{"version": 1}',
    b'{"version": 1, "devices": {"w": {"bus": "b", "unit_id": 1, "learned_at": 0, '
    b'"ranges": [["holding_register", 5, 5]]}}}',
    b'{"version": 1, "devices": {"w": {"bus": "b", "unit_id": 1, "learned_at": 0, '
    b'"ranges": [["nonsense", 0, 5]]}}}',
    b'{"version": 1, "devices": {"w": {"bus": "b", "unit_id": 1, "learned_at": 0, '
    b'"ranges": [["coil", 0, 70000]]}}}',
    b"\xff\xfe", b"[" * 100,
])
def test_a_malformed_holes_file_is_refused_and_the_agent_starts_without_it(
        tmp_path: Path, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError):
        parse_holes(raw)
    path = tmp_path / HOLES_FILE
    path.write_bytes(raw)
    with caplog.at_level("WARNING", logger="edge_agent.runtime.holes"):
        store = HoleStore(path)
    assert store.holes == {}
    assert any("not loaded" in m and HOLES_FILE in m for m in caplog.messages)


def test_doctor_lists_refused_registers(tmp_path: Path) -> None:
    path = tmp_path / HOLES_FILE
    assert check_refusals(path, START).level is Level.PASS
    HoleStore(path).record("water", "rs485", 9, frozenset({("holding_register", 0, 5)}),
                           START - 7200)
    check = check_refusals(path, START)
    assert check.level is Level.WARN
    assert "water (unit 9 on rs485): holding_register 0-4 refused" in check.detail
    assert "2.0 h ago" in check.detail and check.remedy
    path.write_text(json.dumps({"version": 1, "devices": []}))
    assert check_refusals(path, START).level is Level.WARN


def test_the_agent_keeps_holes_in_its_state_dir_when_its_store_is_durable(
        tmp_path: Path) -> None:
    from edge_agent.protocol.clock import FakeClock
    from edge_agent.runtime.agent import Agent
    from edge_agent.runtime.store import MemoryStore
    from tests.support.sitekit import write_site
    from tests.test_gateway_fakebus import Buses, _gateway

    class DurableMemory(MemoryStore):
        @property
        def durable(self) -> bool:
            return True

    site = write_site(tmp_path, [("meter", "rs485", 1, "energy_meter")])
    cfg = _gateway(site, Buses()).local
    HoleStore(cfg.state_dir / HOLES_FILE).record(
        "meter", "rs485", 1, frozenset({("input_register", 0, 2)}), START)
    agent = Agent(cfg, DurableMemory(), FakeClock(), make_transport=Buses())
    state = agent.schedulers["rs485"].devices["meter"]
    assert state.refused == {("input_register", 0, 2)}
    devices = agent.health()["devices"]
    assert isinstance(devices, dict)
    assert devices["meter"]["refused"] == [["input_register", 0, 2]]
    # A store that is not durable keeps nothing on disk: no holes are read or written.
    plain = Agent(cfg, MemoryStore(), FakeClock(), make_transport=Buses())
    assert not plain.schedulers["rs485"].devices["meter"].refused

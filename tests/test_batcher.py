"""Report-by-exception filter and batcher."""

from __future__ import annotations

import math

from edge_agent.config.model import BatchConfig
from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import DataType, Point, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.batcher import Batcher, ReportFilter


def _device(deadband: float | None) -> DeviceConfig:
    p = Point(name="v", table=Table.INPUT_REGISTER, address=0, type=DataType.FLOAT32, count=2,
              deadband=deadband)
    q = Point(name="on", table=Table.COIL, address=0, type=DataType.BOOL, count=1)
    prof = DeviceProfile("t", "", (p, q))
    return DeviceConfig(name="d", bus="b", unit_id=1, profile=prof, poll_interval_s=1,
                        points=(p, q))


def _r(point: str, ts: int, value: object, q: Quality = Quality.GOOD) -> Reading:
    return Reading("d", point, ts, value if q is Quality.GOOD else None, q)  # type: ignore[arg-type]


def test_deadband_suppresses_small_moves_and_sends_big_ones() -> None:
    f = ReportFilter([_device(0.5)], max_silence_s=300)
    values = [230.0, 230.4, 230.6, 230.2, 231.2]
    sent = [f.accept(_r("v", t * 1000, v)) for t, v in enumerate(values)]
    # 230.0 first; 230.4 within 0.5; 230.6 moved 0.6 from 230.0; 230.2 within 0.4 of 230.6; 231.2
    assert sent == [True, False, True, False, True]
    assert (f.stats.sent, f.stats.suppressed, f.stats.seen) == (3, 2, 5)


def test_no_deadband_sends_every_change_but_not_repeats() -> None:
    f = ReportFilter([_device(None)], max_silence_s=300)
    sent = [f.accept(_r("v", t, v)) for t, v in enumerate([1.0, 1.0, 1.5, 1.5, 1.0])]
    assert sent == [True, False, True, False, True]


def test_max_silence_forces_a_steady_value_out() -> None:
    f = ReportFilter([_device(10.0)], max_silence_s=60)
    assert f.accept(_r("v", 0, 5.0))
    assert not f.accept(_r("v", 59_999, 5.0))
    assert f.accept(_r("v", 60_000, 5.0))
    assert not f.accept(_r("v", 61_000, 5.0))


def test_quality_change_is_always_sent_and_nan_is_steady() -> None:
    f = ReportFilter([_device(0.1)], max_silence_s=300)
    assert f.accept(_r("v", 0, 1.0))
    assert f.accept(_r("v", 1, None, Quality.COMM_ERROR))
    assert not f.accept(_r("v", 2, None, Quality.COMM_ERROR))
    assert f.accept(_r("v", 3, 1.0))
    assert f.accept(_r("v", 4, math.nan))
    assert not f.accept(_r("v", 5, math.nan))
    assert f.accept(_r("v", 6, 1.0))


def test_bools_ignore_deadband() -> None:
    f = ReportFilter([_device(5.0)], max_silence_s=300)
    assert [f.accept(_r("on", t, v)) for t, v in enumerate([False, True, True, False])] == [
        True, True, False, True]


def test_batcher_says_full_at_max_readings_and_take_empties() -> None:
    b = Batcher(BatchConfig(max_readings=3), ReportFilter([_device(None)], 300))
    assert not b.add([_r("v", 0, 1.0), _r("v", 1, 2.0)])
    assert b.add([_r("v", 2, 3.0)])
    assert [r.value for r in b.take()] == [1.0, 2.0, 3.0]
    assert len(b) == 0

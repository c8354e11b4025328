"""DL/T 645 line timing: exchange times from frame sizes, reply waits, the line budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from edge_agent.drivers.budget import line_budgets
from edge_agent.drivers.bus import FieldProtocol, Parity, SerialBus
from edge_agent.drivers.dlt645.identifiers import IDENTIFIERS
from edge_agent.drivers.dlt645.meter import MeterPoint
from edge_agent.drivers.dlt645.planner import MeterRead
from edge_agent.drivers.dlt645.timing import (
    char_time_s,
    exchange_s,
    first_byte_timeout_s,
    meters_per_s,
    reply_chars,
)
from edge_agent.tools.checkconfig import summarize

BUS = SerialBus("m", "/dev/null", baudrate=2400, parity=Parity.EVEN,
                protocol=FieldProtocol.DLT645)


def _point(di: int) -> MeterPoint:
    i = IDENTIFIERS[di]
    return MeterPoint(i.name, di, i.fmt, i.unit, i.signed)


def test_exchange_is_request_turnaround_and_reply_at_eleven_bits() -> None:
    assert char_time_s(BUS) == pytest.approx(11 / 2400)   # 4.1: start, 8 data, even, stop
    energy = MeterRead(0x00010000, (_point(0x00010000),))
    # request FE x4 + 12 + DI 4 = 20; reply FE x4 + 12 + DI 4 + XXXXXX.XX 4 = 24 characters
    assert reply_chars(energy) == 24
    assert exchange_s(BUS, energy, 0.02) == pytest.approx(44 * 11 / 2400 + 0.02)
    volts = MeterRead(0x0201FF00, tuple(_point(0x02010000 | ph << 8) for ph in (1, 2, 3)),
                      block=True)
    assert reply_chars(volts) == 4 + 12 + 4 + 3 * 2
    # A silent meter costs the request and the standard's 500 ms (4.3.3), or timeout_ms.
    assert first_byte_timeout_s(BUS) == pytest.approx(20 * 11 / 2400 + 0.5)


def test_meters_per_second_at_2400_baud() -> None:
    fast = [_point(di) for di in (0x02010100, 0x02010200, 0x02010300, 0x00010000)]
    # Two requests (voltage block, energy): (20+26 + 20+24) chars + 2 x 20 ms.
    assert meters_per_s(BUS, fast) == pytest.approx(1 / (90 * 11 / 2400 + 0.04))


def test_check_config_budgets_the_demo_meter_line() -> None:
    cfg = load_config(Path(__file__).parent.parent / "configs" / "demo.toml")
    budget = line_budgets(cfg)["residential"]
    assert budget.baudrate == 2400 and [d.name for d in budget.devices] == [
        "flat-101", "flat-102", "flat-201"]
    assert 0.1 < budget.utilisation < 0.8
    text = summarize(cfg)
    assert "DL/T 645, reply wait" in text and "flat-101  000000000101  dlt645_meter  21" in text

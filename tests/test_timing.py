"""The Modbus RTU timing model against the figures worked out by hand from the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from edge_agent.drivers.bus import Parity, SerialBus, TcpBus, TcpFraming
from edge_agent.drivers.modbus.timing import (
    bus_budget,
    char_time_s,
    exchange_s,
    frame_bytes,
    inter_frame_gap_s,
    no_reply_guard_s,
    no_reply_s,
    reply_timeout_s,
    requests_per_s,
    serial_budget,
    silent_probe_s,
)
from edge_agent.drivers.modbus.transport import bus_no_reply_guard_s, request_budget_s
from edge_agent.drivers.model import DataType, Point, Table


def line(baud: int, parity: str = "E", stopbits: int = 1) -> SerialBus:
    return SerialBus(name="l", port="/dev/null", baudrate=baud, parity=Parity(parity),
                     stopbits=stopbits)


@pytest.mark.parametrize(("parity", "stopbits", "bits"),
                         [("E", 1, 11), ("O", 1, 11), ("N", 2, 11), ("N", 1, 10)])
def test_character_is_start_data_parity_stop_bits(parity: str, stopbits: int, bits: int) -> None:
    assert char_time_s(line(9600, parity, stopbits)) == pytest.approx(bits / 9600)


def test_gaps_are_character_based_up_to_19200_and_fixed_above() -> None:
    assert inter_frame_gap_s(line(9600)) == pytest.approx(3.5 * 11 / 9600)
    assert inter_frame_gap_s(line(19200)) == pytest.approx(3.5 * 11 / 19200)
    assert inter_frame_gap_s(line(38400)) == 0.00175
    configured = SerialBus(name="l", port="/dev/null", inter_frame_gap_s=0.01)
    assert inter_frame_gap_s(configured) == 0.01


def test_hand_worked_figures_for_register_reads() -> None:
    # 9600 8E1: 10 registers 45.8 ms (21.8/s), 125 registers 309 ms; 19200 8E1: 22.9 ms.
    assert exchange_s(line(9600), 3, 10, 0) == pytest.approx(0.0458, abs=5e-5)
    assert requests_per_s(line(9600), 3, 10, 0) == pytest.approx(21.8, abs=0.05)
    assert exchange_s(line(9600), 4, 125, 0) == pytest.approx(0.3094, abs=5e-4)
    assert exchange_s(line(19200), 3, 10, 0) == pytest.approx(0.0229, abs=5e-5)
    # Turnaround adds once per exchange.
    assert exchange_s(line(9600), 3, 10, 0.02) == pytest.approx(0.0658, abs=5e-5)


@pytest.mark.parametrize(("fc", "count", "sizes"), [
    (1, 1, (8, 6)), (1, 9, (8, 7)), (2, 2000, (8, 255)), (3, 125, (8, 255)), (4, 1, (8, 7)),
    (5, 1, (8, 8)), (6, 1, (8, 8)), (15, 10, (11, 8)), (16, 123, (255, 8)),
])
def test_frame_sizes_per_function_code(fc: int, count: int, sizes: tuple[int, int]) -> None:
    assert frame_bytes(fc, count) == sizes


def test_counts_modbus_forbids_are_refused_with_the_limit() -> None:
    with pytest.raises(ValueError, match=r"1\.\.125"):
        frame_bytes(3, 126)
    with pytest.raises(ValueError, match="function code 7"):
        frame_bytes(7, 1)


def test_no_reply_wait_covers_the_whole_exchange_but_one_gap() -> None:
    bus = line(19200, "N")
    assert no_reply_s(bus, 3, 1, 0.02) == pytest.approx(
        exchange_s(bus, 3, 1, 0.02) - inter_frame_gap_s(bus))


def _reg(name: str, address: int, interval: float | None = None) -> Point:
    return Point(name=name, table=Table.HOLDING_REGISTER, address=address,
                 type=DataType.UINT16, count=1, interval_s=interval)


def test_budget_sums_devices_and_intervals() -> None:
    bus = line(9600)
    one = exchange_s(bus, 3, 2, 0.01)  # the planner joins addresses 0 and 1 into one read
    budget = serial_budget(bus, [("a", 1.0, [_reg("x", 0), _reg("y", 1)]),
                                 ("b", 0.5, [_reg("x", 0), _reg("slow", 100, interval=10.0)])],
                           max_gap=16, turnaround_s=0.01)
    single = exchange_s(bus, 3, 1, 0.01)
    assert budget.requests_per_s == pytest.approx(1 + 2 + 0.1)
    assert budget.utilisation == pytest.approx(one + single / 0.5 + single / 10)
    assert budget.full_cycle_s == pytest.approx(one + 2 * single)
    assert budget.status == "ok"


def test_budget_status_thresholds_and_advice() -> None:
    bus = line(9600)
    points = [_reg(f"p{i}", i * 200) for i in range(10)]  # ten separate reads
    cycle = 10 * exchange_s(bus, 3, 1)
    over = serial_budget(bus, [("d", cycle * 0.9, points)], max_gap=16)
    warn = serial_budget(bus, [("d", cycle * 1.1, points)], max_gap=16)
    ok = serial_budget(bus, [("d", cycle * 2, points)], max_gap=16)
    assert (over.status, warn.status, ok.status) == ("over", "warn", "ok")
    assert over.fastest_interval_s == pytest.approx(cycle)
    assert "OVER CAPACITY" in over.describe() and f"{cycle:.2f} s" in over.describe()
    assert "above 80%" in warn.describe()


def test_bus_budget_covers_only_serial_buses_of_a_site() -> None:
    cfg = load_config(Path(__file__).parent.parent / "configs" / "example-site.toml")
    budgets = bus_budget(cfg)
    assert set(budgets) == {"meters", "lamps"}
    lamps = budgets["lamps"]
    assert lamps.framing == "8N1" and lamps.baudrate == 19200
    assert 0 < lamps.utilisation < 0.1
    assert [d.name for d in lamps.devices] == ["lamp_01", "lamp_02"]


def test_the_no_reply_guard_outlasts_libmodbus_s_confirmation_wait() -> None:
    """libmodbus waits 0.5 s for another unit's reply: the default guard is longer."""
    bus = line(9600)
    assert no_reply_guard_s(bus) > 0.5
    assert no_reply_guard_s(SerialBus(name="l", port="/dev/null", no_reply_guard_s=0.0)) == 0.0
    assert bus_no_reply_guard_s(TcpBus(name="t", host="h")) == 0.0   # Modbus TCP
    assert bus_no_reply_guard_s(TcpBus(name="t", host="h", framing=TcpFraming.RTU)) > 0.5
    # A silent probe holds the line for the request and the later of timeout and guard.
    request = 8 * char_time_s(bus)
    assert silent_probe_s(bus) == pytest.approx(request + max(reply_timeout_s(bus),
                                                              no_reply_guard_s(bus)))
    # The heartbeat's promise for one read covers every attempt's timeout and guard.
    assert request_budget_s(bus) >= request + no_reply_guard_s(bus) + reply_timeout_s(bus)
    assert request_budget_s(bus) >= 2 * reply_timeout_s(bus)


def test_the_budget_names_a_silent_probe_s_cost_and_whether_it_fits() -> None:
    bus = line(9600)
    points = [_reg(f"p{i}", i * 200) for i in range(4)]
    cycle = 4 * exchange_s(bus, 3, 1)
    roomy = serial_budget(bus, [("d", 2.0, points)], max_gap=16)
    tight = serial_budget(bus, [("d", cycle + 0.1, points)], max_gap=16)
    assert roomy.silent_probe_s == pytest.approx(silent_probe_s(bus))
    assert roomy.probe_fits and not tight.probe_fits
    assert f"costs {silent_probe_s(bus) * 1000:.0f} ms per probe" in roomy.describe()
    assert "cannot hold its polls and a probe" in tight.describe()
    assert "cannot hold" not in roomy.describe()

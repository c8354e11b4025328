"""The simulators follow commands (issue 12, item 5): a written signal plan takes over at the
end of the running cycle; a lamp's power and delivered dim level follow relay and dim writes;
a cabinet can be told to report a fault, manual control, an open door or a mains failure."""

from __future__ import annotations

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import Table
from edge_agent.drivers.profile import load_profile
from edge_agent.drivers.sim.device import DeviceSim
from edge_agent.drivers.sim.models import PLANS

DAY = 86_400.0
NOON = 1_767_225_600.0 + 12 * 3600   # 2026-01-01 12:00 UTC: off-peak, plan 1 (90 s cycle)
NIGHT = 1_767_225_600.0 + 20 * 3600  # 20:00 UTC: lamps on


def sim(profile: str) -> DeviceSim:
    prof = load_profile(profile)
    return DeviceSim(DeviceConfig(name="d", bus="b", unit_id=1, profile=prof,
                                  poll_interval_s=1.0, points=prof.points), seed=3)


def test_a_written_plan_takes_over_at_the_next_cycle_start() -> None:
    cab = sim("signal_cabinet")
    t = NOON + 30  # 30 s into a 90 s cycle of plan 1 (cycles start at multiples of 90 s)
    start = (t // 90) * 90
    assert cab.values(t)["active_plan"] == 1
    assert cab.write(Table.HOLDING_REGISTER, 0, [2], t) is None
    v = cab.values(t + 1)
    assert v["plan_command"] == 2 and v["active_plan"] == 1  # the cycle runs to its end
    assert cab.values(start + 89)["active_plan"] == 1
    after = cab.values(start + 90)
    assert after["active_plan"] == 2 and after["cycle_second"] == 0
    assert after["cycle_length"] == PLANS[2].cycle_s
    assert cab.values(start + 90 + 130)["cycle_second"] == 10  # plan 2's 120 s cycle


def test_a_lamp_follows_relay_and_dim_writes() -> None:
    lamp = sim("streetlight")
    on = lamp.values(NIGHT)
    assert on["relay_on"] is True and on["dim_actual"] == 100
    assert lamp.write(Table.HOLDING_REGISTER, 0, [40], NIGHT) is None
    dimmed = lamp.values(NIGHT + 1)
    assert dimmed["dim_actual"] == 40
    assert float(dimmed["lamp_power"]) < float(on["lamp_power"])
    assert lamp.write(Table.COIL, 0, [False], NIGHT + 2) is None
    off = lamp.values(NIGHT + 3)
    assert off["dim_actual"] == 0 and float(off["lamp_power"]) < 1.0


def test_a_cabinet_reports_what_it_is_told() -> None:
    cab = sim("signal_cabinet")
    for point, value in [("door_open", True), ("controller_mode", 4), ("mains_power", False),
                         ("lamp_faults", 2)]:
        cab.set_point(point, value, NOON)
        assert cab.values(NOON + 1)[point] == value
        cab.clear_point(point)

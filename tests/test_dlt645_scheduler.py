"""The meter scheduler on a fake clock, against simulated meters behind an in-memory line.

``MeterLineBus`` is a ``FieldTransport`` for meter reads that encodes each request with the
real frame codec, lets every ``MeterSim`` on the line answer it, and decodes the reply
bytes with the codec and ``check_reply`` as the serial transport does: only the port is
missing. A silent exchange costs the fake clock the bus's timeout, an answered one the
wire time, so tests count requests instead of timing them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge_agent.config.loader import load_config
from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.dlt645.frame import decode_frame, next_frame, read_request
from edge_agent.drivers.dlt645.planner import MeterRead
from edge_agent.drivers.dlt645.transport import check_reply, meter_address
from edge_agent.drivers.sim.device import Fault
from edge_agent.drivers.sim.meter import MeterSim
from edge_agent.drivers.sim.meter_server import collide
from edge_agent.drivers.transport import BusStats, Reply
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.meter_scheduler import MeterScheduler

TIMEOUT_S = 0.5
EXCHANGE_S = 0.125


class MeterLineBus:
    """Simulated meters on an in-memory line, spoken to through the real codec."""

    def __init__(self, meters: list[MeterSim], clock: FakeClock) -> None:
        self.meters = meters
        self.clock = clock
        self.stats = BusStats()
        self.log: list[tuple[str, int]] = []   # (address, identifier) of every request

    @property
    def connected(self) -> bool:
        return True

    def describe(self) -> str:
        return "in-memory DL/T 645 line"

    async def read_request(self, unit_id: int, request: MeterRead, *,
                           attempts: int | None = None) -> Reply:
        address = meter_address(unit_id)
        for _ in range(attempts or 2):
            self.stats.requests += 1
            self.log.append((address, request.di))
            frame = decode_frame(read_request(address, request.di))
            replies = [r for m in self.meters if (r := m.answer(frame, self.clock.now()))]
            if not replies:
                self.clock.advance(TIMEOUT_S)
                continue
            self.clock.advance(EXCHANGE_S)
            step = next_frame(collide(replies))
            if step.frame is None:
                continue
            outcome = check_reply(step.frame, address, 0x11, request.di)
            assert outcome is not None
            return outcome
        await asyncio.sleep(0)
        return Reply(error="no reply")

    async def write_request(self, unit_id: int, request: None) -> Reply:
        return Reply(error="read-only")

    async def close(self) -> None:
        return None


def _site(tmp_path: Path, n: int, poll_s: float = 1.0) -> list[DeviceConfig]:
    lines = ['[gateway]\nid = "gw"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"',
             f'[buses.m]\ntype = "serial"\nprotocol = "dlt645"\nport = "{tmp_path / "m"}"\n'
             'baudrate = 2400\nparity = "N"']
    for i in range(1, n + 1):
        lines.append(f'[devices.m{i}]\nbus = "m"\naddress = "0000000001{i:02d}"\n'
                     f'profile = "dlt645_meter"\npoll_interval_s = {poll_s}')
    (tmp_path / "site.toml").write_text("\n".join(lines) + "\n")
    return list(load_config(tmp_path / "site.toml").devices)


def _rig(tmp_path: Path, n: int, **sim: bool) -> tuple[MeterScheduler, MeterLineBus,
                                                       list[Reading], FakeClock]:
    devices = _site(tmp_path, n)
    clock = FakeClock()
    bus = MeterLineBus([MeterSim(d, seed=3, **sim) for d in devices], clock)
    out: list[Reading] = []
    sched = MeterScheduler(bus, devices, out.extend, clock)
    return sched, bus, out, clock


async def _slots(sched: MeterScheduler, clock: FakeClock, count: int) -> None:
    for _ in range(count):
        mark = min(sched._due.values())
        clock.advance(max(0.0, mark / 1000 - clock.now()))
        await sched.run_slot(mark)


def test_a_poll_reads_every_point_good_with_blocks(tmp_path: Path) -> None:
    sched, bus, out, clock = _rig(tmp_path, 1)
    asyncio.run(_slots(sched, clock, 1))
    names = {p.name for p in sched.devices["m1"].cfg.meter_points}
    assert {r.point for r in out} == names
    assert all(r.quality is Quality.GOOD for r in out), [r for r in out if r.value is None]
    # 21 points in 10 requests: energy, voltage, current and power blocks.
    assert len(bus.log) == 10 and any(di == 0x0201FF00 for _, di in bus.log)
    v = {r.point: r.value for r in out}
    assert isinstance(v["voltage_a"], float) and 200 < v["voltage_a"] < 240
    assert v["energy_forward_total"] >= v["energy_forward_tariff1"]  # type: ignore[operator]


def test_a_meter_without_blocks_is_learned_and_read_item_by_item(tmp_path: Path) -> None:
    sched, bus, out, clock = _rig(tmp_path, 1, blocks=False)
    asyncio.run(_slots(sched, clock, 1))
    first = list(bus.log)
    assert all(r.quality is Quality.GOOD for r in out)
    assert sched.devices["m1"].no_block == {0x0001FF00, 0x0201FF00, 0x0202FF00, 0x0203FF00}
    bus.log.clear()
    asyncio.run(_slots(sched, clock, 1))
    blocks_asked = [di for _, di in bus.log if (di >> 8) & 0xFF == 0xFF]
    assert not blocks_asked, "a refused block must not be asked for again"
    # Each due point's own identifier once (the 1 s points: voltages, currents, powers,
    # power factor, frequency), none of the refusals repeated.
    fast = [p for p in sched.devices["m1"].cfg.meter_points if p.interval_s is None]
    assert sorted(di for _, di in bus.log) == sorted(p.di for p in fast)
    assert len(first) == 4 + len(sched.devices["m1"].cfg.meter_points)
    assert sched.devices["m1"].status == "online"


def test_faults_give_the_modbus_qualities(tmp_path: Path) -> None:
    sched, bus, out, clock = _rig(tmp_path, 3)
    bus.meters[1].set_fault(Fault.EXCEPTION, 0x04)
    bus.meters[2].set_fault(Fault.BAD_CRC)
    asyncio.run(_slots(sched, clock, 1))
    by_meter = {d: [r for r in out if r.device == d] for d in ("m1", "m2", "m3")}
    assert all(r.quality is Quality.GOOD for r in by_meter["m1"])
    assert all(r.quality is Quality.DEVICE_EXCEPTION and r.exception_code == 0x04
               for r in by_meter["m2"])
    assert all(r.quality is Quality.COMM_ERROR for r in by_meter["m3"])
    assert sched.devices["m3"].status == "offline"
    assert sched.devices["m2"].status == "online"  # it answered, if only to refuse


def test_a_dead_meter_is_backed_off_and_costs_the_others_nothing(tmp_path: Path) -> None:
    sched, bus, out, clock = _rig(tmp_path, 3)
    asyncio.run(_slots(sched, clock, 3))
    healthy = {a: sum(1 for x, _ in bus.log if x == a) for a, _ in bus.log}
    bus.log.clear()
    bus.meters[2].set_fault(Fault.SILENT)
    asyncio.run(_slots(sched, clock, 12))
    sent = {a: sum(1 for x, _ in bus.log if x == a) for a in healthy}
    dead = meter_address(sched.devices["m3"].cfg.unit_id)
    for address in healthy:
        if address != dead:
            assert sent[address] >= 3 * healthy[address], (address, sent, healthy)
    # 12 slots of a silent meter: the first poll gives up after its first request (two
    # attempts), then each back-off ends in one single-attempt probe and the slots in
    # between are skipped; never the two attempts a slot of an answering meter may get.
    state = sched.devices["m3"]
    assert sent[dead] == 2 + state.probes, (sent, state.probes)
    assert 1 + state.probes + state.skipped_slots == 12
    assert state.status == "offline" and state.skipped_slots >= 3 and state.probes >= 1
    gone = [r for r in out if r.device == "m3" and r.quality is Quality.COMM_ERROR]
    assert gone
    # Back again: read within two poll intervals of its return.
    bus.meters[2].set_fault(Fault.NONE)
    asyncio.run(_slots(sched, clock, 3))
    assert state.status == "online"

"""A libmodbus-style slave on a real PTY line: what it does, and the guard that keeps it read.

The simulator's ``libmodbus`` fault makes a device read the line as libmodbus's RTU server
does: after a request for another unit it takes the next frame (within 0.5 s) as that unit's
reply and ignores it. A dead unit polled before such a device would then cost it its
readings; the transport's no-reply guard keeps the line silent long enough after every
unanswered request.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import DeviceConfig, Parity, SerialBus
from edge_agent.drivers.modbus.scan import ScanSetting
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.drivers.profile import load_profile
from edge_agent.drivers.sim import build_site, run_site, sim_control
from edge_agent.drivers.sim.server import SiteSim
from edge_agent.protocol.broker import MqttConfig
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.scheduler import BusScheduler
from edge_agent.tools.scan import sweep

SEED = 20261206
METER_UNIT = 37
DEAD_UNIT = 5


def device(name: str, unit_id: int) -> DeviceConfig:
    prof = load_profile("water_meter")
    return DeviceConfig(name=name, bus="rs485", unit_id=unit_id, profile=prof,
                        poll_interval_s=1.0, points=prof.points)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lmb-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def site(port: Path) -> SiteConfig:
    """One line: a libmodbus-style water meter at unit 37 (unit 5 has nobody)."""
    bus = SerialBus(name="rs485", port=str(port), baudrate=9600, parity=Parity.NONE)
    mqtt = MqttConfig(url="mqtt://127.0.0.1:1", scheme="mqtt", host="127.0.0.1", port=1)
    return SiteConfig(source=Path("test.toml"), gateway_id="gw-test", site="test", mqtt=mqtt,
                      buses={"rs485": bus}, devices=(device("meter", METER_UNIT),))


@contextlib.asynccontextmanager
async def libmodbus_line(d: Path) -> AsyncIterator[tuple[SiteSim, SerialBus]]:
    """The simulator serving the line, its meter in the libmodbus fault."""
    cfg = site(d / "ttyA")
    sim = build_site(cfg, SystemClock(), SEED)
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_site(cfg, control_path=d / "ctl", stop=stop,
                                        seed=SEED, site=sim, on_ready=ready.set_result))
    done, _ = await asyncio.wait([task, ready], timeout=15,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready.done(), "simulator did not come up within 15 s"
    try:
        reply = await sim_control(d / "ctl", {"device": "meter", "fault": "libmodbus"})
        assert reply["ok"], reply
        bus = cfg.buses["rs485"]
        assert isinstance(bus, SerialBus)
        yield sim, bus
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def test_the_test_slave_ignores_the_frame_after_another_unit_s_request(
        short_dir: Path) -> None:
    """The behaviour itself, on raw pymodbus requests: swallowed, then answered after 0.5 s."""
    async def main() -> None:
        async with libmodbus_line(short_dir) as (sim, bus):
            client = AsyncModbusSerialClient(bus.port, framer=FramerType.RTU, baudrate=9600,
                                             parity="N", timeout=0.3, retries=0)
            assert await client.connect()
            try:
                assert not (await client.read_holding_registers(
                    0, count=2, device_id=METER_UNIT)).isError()
                with pytest.raises(ModbusIOException):  # nobody there: it waits...
                    await client.read_holding_registers(0, count=1, device_id=DEAD_UNIT)
                with pytest.raises(ModbusIOException):  # ...and takes this for the reply
                    await client.read_holding_registers(0, count=2, device_id=METER_UNIT)
                await asyncio.sleep(0.6)  # a second request after the wait is answered
                with pytest.raises(ModbusIOException):
                    await client.read_holding_registers(0, count=1, device_id=DEAD_UNIT)
                await asyncio.sleep(0.6)
                assert not (await client.read_holding_registers(
                    0, count=2, device_id=METER_UNIT)).isError()
            finally:
                client.close()
            assert sim.devices["meter"].confirmation.ignored == 1

    asyncio.run(main())


async def poll(bus: SerialBus, seconds: float) -> tuple[list[Reading], BusScheduler]:
    """Poll a dead unit 5 (configured first) and the meter at 37 every second."""
    transport = BusTransport(bus)
    readings: list[Reading] = []
    sched = BusScheduler(transport, [device("dead", DEAD_UNIT), device("meter", METER_UNIT)],
                         readings.extend, SystemClock())
    task = asyncio.create_task(sched.run())
    try:
        await asyncio.sleep(seconds)
    finally:
        sched.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await transport.close()
    return readings, sched


@pytest.mark.serial
def test_a_dead_unit_before_a_libmodbus_meter_does_not_degrade_its_readings(
        short_dir: Path) -> None:
    async def main() -> tuple[list[Quality], list[Quality], int, int, int]:
        async with libmodbus_line(short_dir) as (sim, bus):
            unguarded, _ = await poll(replace(bus, no_reply_guard_s=0.0, retries=0), 3.5)
            ignored_unguarded = sim.devices["meter"].confirmation.ignored
            await asyncio.sleep(0.6)
            guarded, sched = await poll(replace(bus, retries=0), 8.5)
            assert sched.devices["dead"].status == "offline"
            assert sched.devices["meter"].failed_polls == 0
            ignored = sim.devices["meter"].confirmation.ignored - ignored_unguarded
        slots = len({r.ts_ms for r in guarded if r.device == "meter"})
        return ([r.quality for r in unguarded if r.device == "meter"],
                [r.quality for r in guarded if r.device == "meter"], ignored_unguarded,
                ignored, slots)

    unguarded, guarded, ignored_unguarded, ignored, slots = asyncio.run(main())
    bad = unguarded.count(Quality.COMM_ERROR)
    print(f"libmodbus meter behind a dead unit: without the guard {bad}"
          f" of {len(unguarded)} readings comm_error; with it {guarded.count(Quality.GOOD)} of "
          f"{len(guarded)} good in {slots} one-second slots of 8.5 s")
    # Without the guard the slave swallows a request and the meter reads comm_error.
    assert ignored_unguarded >= 1 and Quality.COMM_ERROR in unguarded
    # With it (the default), every reading is good and the meter keeps its one-second slots.
    assert ignored == 0
    assert set(guarded) == {Quality.GOOD}
    assert slots >= 7


@pytest.mark.serial
def test_the_scan_finds_the_libmodbus_style_meter_behind_silent_ids(short_dir: Path) -> None:
    """Unit 37 after 36 silent ids: every decoy after a silent id is the frame it swallows."""
    async def main() -> tuple[list[int], int, int, int]:
        async with libmodbus_line(short_dir) as (sim, bus):
            setting = ScanSetting(bus.baudrate, bus.parity, bus.stopbits)
            # A reply wait a loaded machine cannot beat; the decoys do not depend on it.
            res = await sweep(setting, bus.port, list(range(1, 41)), 0.2)
            meter = sim.devices["meter"]
            return res.present, res.decoys, res.guard_waits, meter.confirmation.ignored

    present, decoys, guard_waits, ignored = asyncio.run(main())
    print(f"ids 1-40: found {present}, {decoys} decoys, {ignored} frames ignored by the meter")
    assert present == [METER_UNIT]
    assert decoys + guard_waits == 38  # after every silent id but the last
    assert ignored == decoys  # each decoy, and nothing else, taken for another unit's reply

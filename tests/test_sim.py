"""Device simulators: pure value models, and real pymodbus clients over socat PTYs and TCP."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import DeviceConfig, Parity, SerialBus, TcpBus, TcpFraming
from edge_agent.drivers.modbus.decode import decode_point
from edge_agent.drivers.model import TYPE_LAYOUT, Table
from edge_agent.drivers.profile import DeviceProfile, load_profile
from edge_agent.drivers.sim import build_site, run_site, sim_control
from edge_agent.drivers.sim.device import compose_image, extract_point
from edge_agent.drivers.sim.models import PLANS, plan_colour, values_at
from edge_agent.drivers.sim.server import Served, SiteSim
from edge_agent.protocol.broker import MqttConfig
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.errors import DeviceError
from edge_agent.protocol.readings import Value
from tests.support.brokers import free_port

SEED = 20240611
TYPE_COUNT = {t: n for t, (n, _fmt) in TYPE_LAYOUT.items()}
# 2023-11-14 00:00:00 UTC, a midnight, so times of day below are exact.
MIDNIGHT = 1_699_920_000.0
HOUR = 3600.0


def device(name: str, bus: str, unit_id: int, profile: str) -> DeviceConfig:
    """A device with its shipped profile's points."""
    prof = load_profile(profile)
    return DeviceConfig(name=name, bus=bus, unit_id=unit_id, profile=prof, poll_interval_s=1.0,
                        points=prof.points)


def site_config(buses: list[SerialBus | TcpBus], devices: list[DeviceConfig]) -> SiteConfig:
    """A SiteConfig built directly (no config parser involved)."""
    mqtt = MqttConfig(url="mqtt://127.0.0.1:1", scheme="mqtt", host="127.0.0.1", port=1)
    return SiteConfig(source=Path("test.toml"), gateway_id="gw-test", site="test", mqtt=mqtt,
                      buses={b.name: b for b in buses}, devices=tuple(devices))


# ---------------------------------------------------------------- pure models


@functools.cache
def _profile(name: str) -> DeviceProfile:
    return load_profile(name)


def _values(profile: str, t: float, seed: int = SEED, **overrides: Value) -> dict[str, Value]:
    return values_at(profile, _profile(profile).points, t, device="d1", seed=seed,
                     overrides=overrides)


COUNTERS = [("energy_meter", "import_kwh"), ("energy_meter", "export_kwh"),
            ("energy_meter", "total_kwh"), ("water_meter", "volume"),
            ("pipe_sensor", "total_volume"), ("streetlight", "burning_hours"),
            ("streetlight", "energy_wh"), ("signal_cabinet", "cycle_length")]


@pytest.mark.parametrize(("profile", "point"), COUNTERS[:-1])
def test_counters_only_rise_over_simulated_time(profile: str, point: str) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    prof = load_profile(profile)
    p = prof.point(point)
    t = MIDNIGHT
    # Compare decoded register values, as the agent sees them (float32 rounding included).

    def on_wire(t: float) -> float:
        regs = compose_image([p], {point: _values(profile, t)[point]})[p.table]
        return float(decode_point(p, [int(regs[a]) for a in range(p.address, p.end)]))

    prev = on_wire(t)
    first = prev
    for _ in range(2000):
        t += rng.choice([0.5, 1.0, 7.0, 60.0, 600.0, 3600.0])
        now = on_wire(t)
        assert now >= prev, f"{profile}.{point} fell from {prev} to {now} at t={t}"
        prev = now
    assert prev > first  # and it did rise over the ~weeks simulated


def test_models_are_deterministic_per_seed() -> None:
    for profile in ("energy_meter", "pipe_sensor", "env_monitor", "water_meter"):
        a = _values(profile, MIDNIGHT + 12345.6)
        assert a == _values(profile, MIDNIGHT + 12345.6)
        assert a != _values(profile, MIDNIGHT + 12345.6, seed=SEED + 1)


def test_streetlight_schedule_dimming_and_command() -> None:
    evening, late, noon = MIDNIGHT + 20 * HOUR, MIDNIGHT + 2 * HOUR, MIDNIGHT + 12 * HOUR
    assert _values("streetlight", evening)["dim_actual"] == 100
    assert _values("streetlight", late)["dim_actual"] == 50
    day = _values("streetlight", noon)
    assert (day["relay_on"], day["dim_actual"]) == (False, 0)
    assert _values("streetlight", evening, dim_command=30)["dim_actual"] == 30
    assert _values("streetlight", late, dim_command=30)["dim_actual"] == 30
    # A written level is delivered as written (the gateway's schedule owns dimming), ...
    assert _values("streetlight", late, dim_command=80)["dim_actual"] == 80
    assert _values("streetlight", noon, relay_on=True)["dim_actual"] == 50
    # ... while the relay is closed; the power follows the delivered level.
    dark = _values("streetlight", evening, relay_on=False, dim_command=80)
    assert (dark["dim_actual"], dark["lamp_power"]) == (0, 0.4)
    half = _values("streetlight", noon, relay_on=True, dim_command=40)
    full = _values("streetlight", noon, relay_on=True, dim_command=100)
    assert half["dim_actual"] == 40
    assert 0.3 < float(half["lamp_power"]) / float(full["lamp_power"]) < 0.5
    on, off = _values("streetlight", evening), _values("streetlight", noon)
    assert float(on["lamp_power"]) > 10 * float(off["lamp_power"])


def test_pressure_follows_a_daily_cycle() -> None:
    night = [float(_values("pipe_sensor", MIDNIGHT + 3 * HOUR + s)["pressure"]) for s in range(60)]
    day = [float(_values("pipe_sensor", MIDNIGHT + 15 * HOUR + s)["pressure"]) for s in range(60)]
    assert min(night) > max(day)  # low demand at night: higher pressure, beyond the noise
    assert len(set(night)) > 30  # and it is noisy


def test_signal_groups_follow_the_plan_table() -> None:
    t = MIDNIGHT + 12 * HOUR  # off-peak: plan 1
    seen = []
    for s in range(200):
        v = _values("signal_cabinet", t + s)
        plan = PLANS[int(v["active_plan"])]
        assert v["active_plan"] == 1 and v["cycle_length"] == plan.cycle_s
        assert v["cycle_second"] == int(t + s) % plan.cycle_s
        for g in range(1, 9):
            assert v[f"group_{g}"] == plan_colour(plan, g, int(v["cycle_second"]))
        seen.append(v["group_1"])
    assert {1, 2, 3} <= set(seen)  # red, amber and green all shown
    assert _values("signal_cabinet", t, plan_command=2)["active_plan"] == 2
    # Conflicting groups (1 and 3) are never green together in any plan.
    for plan in PLANS.values():
        assert not any(plan_colour(plan, 1, s) == 3 == plan_colour(plan, 3, s)
                       for s in range(plan.cycle_s))


def test_env_monitor_peaks_at_rush_hour() -> None:
    rush = [float(_values("env_monitor", MIDNIGHT + 8 * HOUR + 10 * s)["pm25"]) for s in range(30)]
    night = [float(_values("env_monitor", MIDNIGHT + 3 * HOUR + 10 * s)["pm25"]) for s in range(30)]
    assert sum(rush) > 1.5 * sum(night)


@pytest.mark.parametrize("profile", ["streetlight", "energy_meter", "water_meter",
                                     "pipe_sensor", "signal_cabinet", "env_monitor"])
def test_image_decodes_back_to_the_model(profile: str) -> None:
    prof = load_profile(profile)
    vals = _values(profile, MIDNIGHT + 21 * HOUR + 17)
    image = compose_image(prof.points, vals)
    for p in prof.points:
        got = extract_point(p, image[p.table])
        if isinstance(vals[p.name], float) and not isinstance(got, bool):
            assert got == pytest.approx(vals[p.name], rel=1e-6, abs=p.scale), p.name
        else:
            assert got == vals[p.name], p.name


# ---------------------------------------------------------------- servers


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for PTY links and the control socket (unix paths max 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="sim-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def running(cfg: SiteConfig, clock: FakeClock, control: Path | None
                  ) -> AsyncIterator[tuple[SiteSim, list[Served]]]:
    """run_site in a task, until the block ends; fails the test if it dies early."""
    print(f"seed {SEED}")
    site = build_site(cfg, clock, SEED)
    stop = asyncio.Event()
    ready: asyncio.Future[list[Served]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_site(cfg, control_path=control, stop=stop, clock=clock,
                                        seed=SEED, site=site, on_ready=ready.set_result))
    waiters: list[asyncio.Future[Any]] = [task, ready]
    done, _ = await asyncio.wait(waiters, timeout=15,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what went wrong
    assert ready.done(), "simulator did not come up within 15 s"
    try:
        yield site, ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def serial_client(port: Path, timeout: float = 1.0) -> AsyncModbusSerialClient:
    # Parity N: Linux PTYs reject even/odd parity.
    return AsyncModbusSerialClient(str(port), framer=FramerType.RTU, baudrate=9600, parity="N",
                                   timeout=timeout, retries=0)


def tcp_client(port: int, framer: FramerType = FramerType.SOCKET,
               timeout: float = 1.0) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient("127.0.0.1", port=port, framer=framer, timeout=timeout, retries=0)


async def read_table(client: AsyncModbusSerialClient | AsyncModbusTcpClient, table: Table,
                     address: int, count: int, unit: int) -> list[int] | list[bool]:
    """Read one span; raise on an exception reply."""
    call = {Table.COIL: client.read_coils, Table.DISCRETE_INPUT: client.read_discrete_inputs,
            Table.HOLDING_REGISTER: client.read_holding_registers,
            Table.INPUT_REGISTER: client.read_input_registers}[table]
    rr = await call(address, count=count, device_id=unit)
    assert not rr.isError(), f"{table.value} {address}+{count} on unit {unit}: {rr}"
    return list(rr.bits[:count]) if table.is_bit else list(rr.registers)


def spans(addresses: list[int], limit: int) -> list[tuple[int, int]]:
    """Contiguous runs of addresses, at most ``limit`` long."""
    out: list[tuple[int, int]] = []
    for a in sorted(addresses):
        if out and a == out[-1][0] + out[-1][1] and out[-1][1] < limit:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((a, 1))
    return out


async def assert_serves_model(client: AsyncModbusSerialClient | AsyncModbusTcpClient,
                              dev: DeviceConfig, t: float) -> int:
    """Every register and bit of ``dev`` read over the wire equals the model's image at ``t``."""
    expected = compose_image(dev.points, values_at(dev.profile.name, dev.points, t,
                                                   device=dev.name, seed=SEED, overrides={}))
    checked = 0
    for table, cells in expected.items():
        for address, count in spans(list(cells), table.max_read):
            got = await read_table(client, table, address, count, dev.unit_id)
            want = [cells[a] for a in range(address, address + count)]
            assert list(got) == want, f"{dev.name} {table.value} {address}+{count}"
            checked += count
    return checked


def serial_site(d: Path) -> tuple[SiteConfig, Path]:
    port = d / "ttyA"
    bus = SerialBus(name="rs485", port=str(port), baudrate=9600, parity=Parity.EVEN)
    devs = [device("lamp1", "rs485", 1, "streetlight"), device("meter1", "rs485", 2,
                                                               "energy_meter"),
            device("water1", "rs485", 3, "water_meter")]
    return site_config([bus], devs), port


def test_serial_bus_serves_the_model_over_a_pty(short_dir: Path) -> None:
    cfg, port = serial_site(short_dir)
    clock = FakeClock(MIDNIGHT + 20 * HOUR)

    async def main() -> None:
        async with running(cfg, clock, short_dir / "ctl") as (site, served):
            assert served[0].where.startswith("pty ") and port.is_symlink()
            client = serial_client(port)
            assert await client.connect()
            try:
                for dev in cfg.devices:
                    assert await assert_serves_model(client, dev, clock.now()) > 0
                # Counters only rise over simulated time, as read over the wire.
                meter = cfg.devices[1]
                p = meter.profile.point("import_kwh")
                before = decode_point(p, await read_table(client, p.table, p.address, 2, 2))
                clock.advance(6 * HOUR)
                after = decode_point(p, await read_table(client, p.table, p.address, 2, 2))
                assert float(after) > float(before)
                assert await assert_serves_model(client, meter, clock.now()) > 0
                stats = await sim_control(short_dir / "ctl", {"cmd": "stats",
                                                              "device": "meter1"})
                assert stats["ok"] and stats["requests"] == stats["answered"] > 3
                # A unit id nobody has: a real RS-485 bus stays silent (no exception 4).
                with pytest.raises(ModbusIOException):
                    await client.read_holding_registers(0, count=1, device_id=99)
            finally:
                client.close()
            assert site.devices["lamp1"].requests > 0

    asyncio.run(main())
    # Clean shutdown: links gone, control socket gone, no socat left (the autouse fixture
    # also fails the test on any leftover child process).
    assert not port.exists() and not port.is_symlink()
    assert not Path(f"{port}.sim").is_symlink()
    assert not (short_dir / "ctl").exists()
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "socat"]


def test_tcp_buses_serve_the_model_with_both_framings(short_dir: Path) -> None:
    mbap, rtu, sock = free_port(), free_port(), free_port()
    buses: list[SerialBus | TcpBus] = [
        TcpBus(name="eth", host="127.0.0.1", port=mbap),
        TcpBus(name="gw", host="127.0.0.1", port=rtu, framing=TcpFraming.RTU),
        SerialBus(name="tunnel", port=f"socket://127.0.0.1:{sock}", parity=Parity.NONE)]
    devs = [device("cab1", "eth", 1, "signal_cabinet"), device("env1", "eth", 2, "env_monitor"),
            device("pipe1", "gw", 7, "pipe_sensor"), device("lamp9", "tunnel", 9, "streetlight")]
    cfg = site_config(buses, devs)
    clock = FakeClock(MIDNIGHT + 8 * HOUR + 13)

    async def main() -> None:
        async with running(cfg, clock, None) as (_site, served):
            assert [s.bus for s in served] == ["eth", "gw", "tunnel"]
            for port, framer, names in [(mbap, FramerType.SOCKET, ["cab1", "env1"]),
                                        (rtu, FramerType.RTU, ["pipe1"]),
                                        (sock, FramerType.RTU, ["lamp9"])]:
                client = tcp_client(port, framer)
                assert await client.connect()
                try:
                    for dev in [d for d in devs if d.name in names]:
                        assert await assert_serves_model(client, dev, clock.now()) > 0
                    if framer is FramerType.SOCKET:
                        # A Modbus TCP gateway answers an unknown unit with exception 0x0B.
                        rr = await client.read_input_registers(0, count=1, device_id=42)
                        assert rr.isError() and rr.exception_code == 0x0B
                    else:
                        with pytest.raises(ModbusIOException):
                            await client.read_input_registers(0, count=1, device_id=42)
                finally:
                    client.close()

    asyncio.run(main())


def test_faults_on_a_serial_bus(short_dir: Path) -> None:
    cfg, port = serial_site(short_dir)
    clock = FakeClock(MIDNIGHT + 20 * HOUR)
    ctl = short_dir / "ctl"

    async def main() -> None:
        async with running(cfg, clock, ctl) as (site, _served):
            client = serial_client(port)
            assert await client.connect()
            meter = site.devices["meter1"]
            try:
                rr = await client.read_input_registers(0, count=2, device_id=2)
                assert not rr.isError()
                # silent: a clean unplug; the request arrives, no reply is sent.
                reply = await sim_control(ctl, {"device": "meter1", "fault": "silent"})
                assert reply["ok"], reply
                answered = meter.answered
                with pytest.raises(ModbusIOException):
                    await client.read_input_registers(0, count=2, device_id=2)
                assert meter.answered == answered
                # Neighbours on the same line still answer.
                assert not (await client.read_holding_registers(0, count=2,
                                                                device_id=1)).isError()
                # exception: every request answered with that code, even bad addresses.
                await sim_control(ctl, {"device": "meter1", "fault": "exception", "code": 6})
                for address in (0, 0x46, 0x3000):
                    rr = await client.read_input_registers(address, count=2, device_id=2)
                    assert rr.isError() and rr.exception_code == 6
                # bad_crc: the reply is sent but the client's framer rejects it.
                await sim_control(ctl, {"device": "meter1", "fault": "bad_crc"})
                answered = meter.answered
                with pytest.raises(ModbusIOException):
                    await client.read_input_registers(0, count=2, device_id=2)
                assert meter.answered == answered + 1
                await sim_control(ctl, {"device": "meter1", "fault": "none"})
                rr = await client.read_input_registers(0, count=2, device_id=2)
                assert not rr.isError()
                bad = await sim_control(ctl, {"device": "meter1", "fault": "exception",
                                              "code": 99})
                assert not bad["ok"] and "99" in bad["error"]
                bad = await sim_control(ctl, {"device": "nobody", "fault": "silent"})
                assert not bad["ok"] and "meter1" in bad["error"]
            finally:
                client.close()

    asyncio.run(main())


def test_faults_on_modbus_tcp(short_dir: Path) -> None:
    port = free_port()
    cfg = site_config([TcpBus(name="eth", host="127.0.0.1", port=port)],
                      [device("env1", "eth", 2, "env_monitor")])
    ctl = short_dir / "ctl"

    async def main() -> None:
        async with running(cfg, FakeClock(MIDNIGHT), ctl):
            for fault, code in [("exception", 4), ("bad_crc", None), ("silent", None)]:
                await sim_control(ctl, {"device": "env1", "fault": fault, "code": code or 4})
                client = tcp_client(port)
                assert await client.connect()
                try:
                    if code:
                        rr = await client.read_input_registers(0, count=1, device_id=2)
                        assert rr.isError() and rr.exception_code == code
                    else:
                        with pytest.raises(ModbusIOException):
                            await client.read_input_registers(0, count=1, device_id=2)
                finally:
                    client.close()

    asyncio.run(main())


def test_writes_freeze_set_and_registers_commands(short_dir: Path) -> None:
    cfg, port = serial_site(short_dir)
    clock = FakeClock(MIDNIGHT + 20 * HOUR)
    ctl = short_dir / "ctl"
    lamp = cfg.devices[0]

    async def main() -> None:
        async with running(cfg, clock, ctl) as (site, _served):
            client = serial_client(port)
            assert await client.connect()
            try:
                # The agent writes a commanded dim level; the lamp obeys it.
                cmd = lamp.profile.point("dim_command")
                rr = await client.write_register(cmd.address, 30, device_id=1)
                assert not rr.isError()
                regs = await read_table(client, Table.HOLDING_REGISTER, 0, 2, 1)
                assert regs == [30, 30]
                # Read-only register: illegal data address.
                rr = await client.write_register(lamp.profile.point("dim_actual").address, 5,
                                                 device_id=1)
                assert rr.isError() and rr.exception_code == 2
                # Switch the relay off through its coil.
                rr = await client.write_coil(0, False, device_id=1)
                assert not rr.isError()
                assert await read_table(client, Table.COIL, 0, 1, 1) == [False]
                assert (await read_table(client, Table.HOLDING_REGISTER, 1, 1, 1)) == [0]

                # registers: raw image by table and address, decodable by hand.
                reply = await sim_control(ctl, {"cmd": "registers", "device": "meter1"})
                assert reply["ok"]
                raw = reply["registers"]["input_register"]
                p = cfg.devices[1].profile.point("voltage_l1")
                by_hand = decode_point(p, [raw[str(a)] for a in range(p.address, p.end)])
                wire = decode_point(p, await read_table(client, p.table, p.address, 2, 2))
                assert by_hand == wire == pytest.approx(reply["values"]["voltage_l1"])

                # freeze: time moves, values do not; unfreeze and they move again.
                assert (await sim_control(ctl, {"cmd": "freeze", "on": True}))["ok"]
                before = await read_table(client, Table.INPUT_REGISTER, 0x48, 2, 2)
                clock.advance(2 * HOUR)
                assert await read_table(client, Table.INPUT_REGISTER, 0x48, 2, 2) == before
                await sim_control(ctl, {"cmd": "freeze", "on": False})
                assert await read_table(client, Table.INPUT_REGISTER, 0x48, 2, 2) != before

                # set: force a fault bit; the status register shows it (bit 1: driver fault).
                reply = await sim_control(ctl, {"cmd": "set", "device": "lamp1",
                                                "point": "driver_fault", "value": True})
                assert reply["ok"], reply
                status = await read_table(client, Table.HOLDING_REGISTER, 5, 1, 1)
                assert status == [0b10]
                bad = await sim_control(ctl, {"cmd": "set", "device": "lamp1",
                                              "point": "dim_command", "value": -5})
                assert not bad["ok"] and "dim_command" in bad["error"]
                await sim_control(ctl, {"cmd": "set", "device": "lamp1",
                                        "point": "driver_fault", "value": None})
                assert await read_table(client, Table.HOLDING_REGISTER, 5, 1, 1) == [0]
            finally:
                client.close()
            assert site.devices["lamp1"].writes >= 2

    asyncio.run(main())


def test_control_socket_rejects_nonsense(short_dir: Path) -> None:
    cfg, _port = serial_site(short_dir)
    ctl = short_dir / "ctl"

    async def main() -> None:
        async with running(cfg, FakeClock(MIDNIGHT), ctl):
            bad: list[tuple[dict[str, Any], str]] = [
                ({"cmd": "dance"}, "unknown request"),
                ({"cmd": "registers"}, "device"),
                ({"device": "lamp1", "fault": "smoke"}, "silent"),
                ({"cmd": "set", "device": "lamp1", "point": "nope", "value": 1}, "no point"),
                ({"cmd": "freeze", "on": "yes"}, "true or false")]
            for msg, words in bad:
                reply = await sim_control(ctl, msg)
                assert not reply["ok"] and words in reply["error"], (msg, reply)
            all_stats = await sim_control(ctl, {"cmd": "stats"})
            assert [d["device"] for d in all_stats["devices"]] == ["lamp1", "meter1", "water1"]

    asyncio.run(main())


def test_a_real_file_at_the_port_path_is_not_replaced(short_dir: Path) -> None:
    cfg, port = serial_site(short_dir)
    port.write_text("not a pty")

    async def main() -> None:
        with pytest.raises(Exception, match="real file"):
            async with running(cfg, FakeClock(MIDNIGHT), None):
                pass

    asyncio.run(main())
    assert port.read_text() == "not a pty"


@pytest.mark.integration
def test_simulate_command_serves_a_site_file_and_cleans_up(short_dir: Path) -> None:
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient

    from tests.support.sitekit import control, simulator, write_site

    tcp_port = free_port()
    site = write_site(short_dir, [("lamp1", "rs485", 1, "streetlight"),
                                  ("meter1", "rs485", 2, "energy_meter"),
                                  ("env1", "lan", 5, "env_monitor")], tcp_port=tcp_port)
    with simulator(site, short_dir, seed=SEED) as sock:
        serial = ModbusSerialClient(str(short_dir / "rs485"), framer=FramerType.RTU,
                                    baudrate=9600, parity="N", timeout=2.0, retries=0)
        tcp = ModbusTcpClient("127.0.0.1", port=tcp_port, timeout=2.0, retries=0)
        try:
            assert serial.connect() and tcp.connect()  # type: ignore[no-untyped-call]
            assert not serial.read_input_registers(0x48, count=2, device_id=2).isError()
            assert not serial.read_holding_registers(0, count=2, device_id=1).isError()
            assert not tcp.read_input_registers(0, count=5, device_id=5).isError()
        finally:
            serial.close()  # type: ignore[no-untyped-call]  # pymodbus sync client
            tcp.close()  # type: ignore[no-untyped-call]
        stats = control(sock, {"cmd": "stats", "device": "meter1"})
        assert stats["requests"] == stats["answered"] == 1
    log = (short_dir / "sim.log").read_text()
    assert f"seed {SEED}" in log and "bus rs485: pty" in log and "simulator ready" in log
    assert not (short_dir / "rs485").is_symlink() and not (short_dir / "rs485.sim").is_symlink()
    assert not (short_dir / "sim.sock").exists()


def test_counters_count_from_installation_not_from_1970() -> None:
    v = _values("streetlight", MIDNIGHT)
    assert 10_000 < int(v["burning_hours"]) < 100_000  # ~4 years at 12 h a night
    assert float(_values("water_meter", MIDNIGHT)["volume"]) < 2**32 / 1000
    early = [_values("streetlight", 1_500_000_000.0 + h * HOUR) for h in range(48)]
    assert len({int(e["burning_hours"]) for e in early}) == 1  # before installation: constant


def test_broadcast_write_reaches_every_device_and_gets_no_reply(short_dir: Path) -> None:
    port = short_dir / "ttyL"
    cfg = site_config([SerialBus(name="rs485", port=str(port))],
                      [device(f"lamp{n}", "rs485", n, "streetlight") for n in (1, 2, 3)])
    clock = FakeClock(MIDNIGHT + 20 * HOUR)

    async def main() -> None:
        async with running(cfg, clock, None) as (site, _served):
            client = serial_client(port)
            assert await client.connect()
            try:
                # Modbus over serial line V1.02, 2.1: unit 0 is a broadcast, never answered.
                await client.write_register(0, 40, device_id=0, no_response_expected=True)
                # A master waits a turnaround delay after a broadcast (V1.02, 2.4.1); here we
                # wait for its effect instead (pymodbus's RTU server drops a second frame that
                # arrives in the same read as the first).
                async with asyncio.timeout(10):
                    while site.devices["lamp3"].writes < 1:
                        await asyncio.sleep(0.01)
                for n in (1, 2, 3):
                    assert await read_table(client, Table.HOLDING_REGISTER, 0, 2, n) == [40, 40]
            finally:
                client.close()
            assert [site.devices[f"lamp{n}"].answered for n in (1, 2, 3)] == [1, 1, 1]

    asyncio.run(main())


def test_a_dead_socat_stops_the_simulator_with_a_clear_error(short_dir: Path) -> None:
    cfg, port = serial_site(short_dir)

    async def main() -> None:
        site = build_site(cfg, FakeClock(MIDNIGHT), SEED)
        stop = asyncio.Event()
        served: list[Served] = []
        task = asyncio.create_task(run_site(cfg, control_path=None, stop=stop, site=site,
                                            on_ready=served.extend))
        while not served:
            await asyncio.sleep(0.01)
            assert not task.done(), task
        helper = served[0].helper
        assert helper is not None
        helper.kill()
        with pytest.raises(DeviceError, match="bus rs485: socat exited"):
            await asyncio.wait_for(task, 15)

    asyncio.run(main())
    assert not port.is_symlink() and not Path(f"{port}.sim").is_symlink()


def test_points_no_model_knows_get_values_their_type_can_hold() -> None:
    from edge_agent.drivers.model import DataType, Point

    print(f"seed {SEED}")
    points = [Point(name=f"p_{t.value}", table=Table.HOLDING_REGISTER, address=10 * i, type=t,
                    count=3 if t is DataType.STRING else TYPE_COUNT[t], scale=0.01)
              for i, t in enumerate(DataType)]
    points += [Point(name="coil", table=Table.COIL, address=3, type=DataType.BOOL, count=1),
               Point(name="field", table=Table.INPUT_REGISTER, address=0, type=DataType.UINT16,
                     count=1, bit=4, bits=3)]
    for t in (MIDNIGHT, MIDNIGHT + 7777.0):
        vals = values_at("custom_rtu_thing", points, t, device="x", seed=SEED, overrides={})
        image = compose_image(points, vals)  # raises if a value does not fit its point
        assert all(extract_point(p, image[p.table]) is not None for p in points)

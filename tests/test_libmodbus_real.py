"""The scan and the poller against a slave built on libmodbus itself (not a simulation of it).

``tests/data/libmodbus/slave.c`` is compiled against the system's libmodbus (Debian
``libmodbus-dev``; the tests skip without it or without a C compiler) and served on a socat
PTY pair. A real libmodbus slave reads the line byte by byte by its own frame-length rules,
so these tests also prove that the frames we send after an unanswered request keep it in
frame (the scan's decoy is 8 bytes whichever way it parses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.drivers.bus import DeviceConfig, Parity, SerialBus
from edge_agent.drivers.modbus.scan import ScanSetting
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.drivers.profile import load_profile
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.scheduler import BusScheduler
from edge_agent.tools.scan import sweep

SOURCE = Path(__file__).parent / "data" / "libmodbus" / "slave.c"
UNIT = 37
DEAD_UNIT = 5


def _libmodbus_flags() -> list[str] | None:
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        return None
    res = subprocess.run(["pkg-config", "--cflags", "--libs", "libmodbus"],
                         capture_output=True, text=True, check=False)
    return res.stdout.split() if res.returncode == 0 else None


@dataclass
class Slave:
    """The master's end of the line and the slave's log (one "served N" line per reply)."""

    port: str
    log: Path

    def served(self) -> int:
        return self.log.read_text().count("served")


@pytest.fixture
def libmodbus_slave() -> Iterator[Slave]:
    flags = _libmodbus_flags()
    if flags is None:
        pytest.skip("needs gcc and libmodbus-dev (apt-get install libmodbus-dev)")
    d = Path(tempfile.mkdtemp(prefix="lmbr-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        binary = d / "slave"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE), *flags], check=True)
        procs.append(subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={d / 'A'}", f"pty,raw,echo=0,link={d / 'B'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not ((d / "A").exists() and (d / "B").exists()):
            assert time.monotonic() < deadline, "socat made no PTY pair within 10 s"
            time.sleep(0.02)
        log = d / "slave.log"
        with log.open("wb") as err:
            procs.append(subprocess.Popen([str(binary), str(d / "B"), str(UNIT)],
                                          stdout=subprocess.DEVNULL, stderr=err))
        yield Slave(str(d / "A"), log)
    finally:
        for p in reversed(procs):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.serial
def test_the_scan_finds_a_libmodbus_slave_behind_silent_ids(libmodbus_slave: Slave) -> None:
    setting = ScanSetting(9600, Parity.NONE, 1)
    # A reply wait a loaded machine cannot beat; the decoys do not depend on it.
    res = asyncio.run(sweep(setting, libmodbus_slave.port, list(range(25, 41)), 0.2))
    print(f"ids 25-40: found {res.present} with {res.decoys} decoys in {res.elapsed_s:.2f} s")
    assert res.present == [UNIT]
    assert res.decoys == 14 - res.guard_waits  # after every silent id but the last
    assert libmodbus_slave.served() == 1


def _device(name: str, unit_id: int) -> DeviceConfig:
    prof = load_profile("water_meter")
    return DeviceConfig(name=name, bus="rs485", unit_id=unit_id, profile=prof,
                        poll_interval_s=1.0, points=prof.points)


@pytest.mark.serial
def test_a_dead_unit_before_a_libmodbus_meter_does_not_degrade_its_readings(
        libmodbus_slave: Slave, caplog: pytest.LogCaptureFixture) -> None:
    bus = SerialBus(name="rs485", port=libmodbus_slave.port, baudrate=9600,
                    parity=Parity.NONE, retries=1)

    async def main() -> tuple[list[Reading], BusScheduler]:
        transport = BusTransport(bus)
        readings: list[Reading] = []
        sched = BusScheduler(transport, [_device("dead", DEAD_UNIT), _device("meter", UNIT)],
                             readings.extend, SystemClock())
        task = asyncio.create_task(sched.run())
        try:
            await asyncio.sleep(6.5)
        finally:
            sched.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await transport.close()
        return readings, sched

    with caplog.at_level("WARNING", logger="edge_agent.runtime.poller"):
        readings, sched = asyncio.run(main())
    meter = [r for r in readings if r.device == "meter"]
    slots = len({r.ts_ms for r in meter})
    print(f"libmodbus meter behind dead unit {DEAD_UNIT}: {len(meter)} readings in {slots} "
          f"slots, qualities {sorted({r.quality.value for r in meter})}")
    assert sched.devices["dead"].status == "offline"
    assert sched.devices["meter"].failed_polls == 0
    assert meter and {r.quality for r in meter} == {Quality.GOOD}
    assert slots >= 5
    # Said in our words: which device, unit and bus, the retries as configured, what next.
    dead = [m for m in caplog.messages if "stopped answering" in m]
    assert len(dead) == 1, caplog.messages
    assert f"device dead (unit {DEAD_UNIT} on serial port {bus.port})" in dead[0]
    assert "2 attempts: 1 retry, as configured" in dead[0] and "probed again in" in dead[0]
    assert "No response received" not in dead[0] and "0 retries" not in dead[0]

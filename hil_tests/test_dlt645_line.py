"""DL/T 645 meters through the paced line emulator at 2400 baud 8E1: read rate and scan.

``edge-agent simulate`` serves the meters on one PTY pair (their shared drop cable); the
line emulator (``--protocol dlt645``) joins that drop onto a line paced at 11 bits per
character, as meters run it. Figures are printed (``-s``): meters read per second against
the timing model, and the time a scan takes to find five meters nobody named. Assertions
are orderings and ratios: the line can never be beaten, and every meter is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from edge_agent.drivers.bus import DeviceConfig, FieldProtocol, Parity, SerialBus
from edge_agent.drivers.dlt645.planner import plan_meter_reads
from edge_agent.drivers.dlt645.timing import meters_per_s, read_exchanges_s
from edge_agent.drivers.dlt645.transport import MeterTransport
from edge_agent.tools.procs import spawn_until_ready, stop_process
from edge_agent.tools.scan import scan_main
from hil_tests.rig import REPO

pytestmark = pytest.mark.simulated_only

BAUD = 2400
SIM_TURNAROUND_S = 0.020   # the simulated meters answer after the standard's minimum Td
# The scan's reply wait: five times what the simulated meters need, so a loaded machine does
# not make a meter late (the default, 200 ms, is for real meters).
SCAN_TURNAROUND_MS = 100
FIVE = {"a": "230401000017", "b": "230401000023", "c": "230401000112",
        "d": "230402000017", "e": "190000005566"}


def _site(tmp: Path, meters: dict[str, str]) -> Path:
    lines = ["[gateway]", 'id = "bench-meters"', f'state_dir = "{tmp / "sim-state"}"',
             "[mqtt]", 'url = "mqtt://127.0.0.1:1"',
             "[buses.drop]", 'type = "serial"', 'protocol = "dlt645"',
             f'port = "{tmp / "drop"}"', f"baudrate = {BAUD}", 'parity = "N"']
    for name, address in meters.items():
        lines += [f"[devices.{name}]", 'bus = "drop"', f'address = "{address}"',
                  'profile = "dlt645_meter"', "poll_interval_s = 60"]
    path = tmp / "meters.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def meter_line(tmp: Path, meters: dict[str, str]) -> Iterator[Path]:
    """Simulated meters behind the paced emulator; yields the line's client port."""
    site = _site(tmp, meters)
    line, sock = tmp / "line", tmp / "line.sock"
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = []
    try:
        procs.append(spawn_until_ready(
            [sys.executable, "-m", "edge_agent", "simulate", str(site)], tmp / "sim.log",
            "simulator ready", env=env, what="meter simulator"))
        procs.append(spawn_until_ready(
            [sys.executable, "-m", "hil_tests.linemu", "--line", str(line),
             f"--drop=meters={tmp / 'drop'}", "--control", str(sock), "--baud", str(BAUD),
             "--parity", "E", "--protocol", "dlt645"], tmp / "line.log",
            lambda: sock.exists() and line.exists(), env=env, cwd=REPO, what="line emulator"))
        yield line
    finally:
        for p in reversed(procs):
            stop_process(p)


def _client_bus(port: Path) -> SerialBus:
    # The PTY takes parity N; the emulator paces 8E1 whatever the client's port says.
    return SerialBus("line", str(port), baudrate=BAUD, parity=Parity.NONE,
                     protocol=FieldProtocol.DLT645)


async def _read_all(port: Path, devices: list[DeviceConfig], rounds: int) -> tuple[float, int]:
    transport = MeterTransport(_client_bus(port))
    good = 0
    try:
        started = time.monotonic()
        for _ in range(rounds):
            for d in devices:
                for req in plan_meter_reads(d.meter_points):
                    reply = await transport.read_request(d.unit_id, req, attempts=1)
                    good += reply.data is not None
        return time.monotonic() - started, good
    finally:
        await transport.close()


def test_meters_read_per_second_at_2400_baud_against_the_model(tmp_path: Path) -> None:
    meters = {"flat-101": "000000000101", "flat-102": "000000000102",
              "flat-201": "000000000201"}
    devices = list(load_config(_site(tmp_path, meters)).devices)
    rounds = 2
    with meter_line(tmp_path, meters) as port:
        elapsed, good = asyncio.run(_read_all(port, devices, rounds))
    requests = rounds * sum(len(plan_meter_reads(d.meter_points)) for d in devices)
    assert good == requests  # every read answered through the paced line
    measured = rounds * len(devices) / elapsed
    line_8e1 = SerialBus("m", "-", baudrate=BAUD, parity=Parity.EVEN,
                         protocol=FieldProtocol.DLT645)
    points = devices[0].meter_points
    model = meters_per_s(line_8e1, points, SIM_TURNAROUND_S)
    wire_only = meters_per_s(line_8e1, points, 0.0)
    n, _ = read_exchanges_s(line_8e1, points)
    print(f"\n2400 8E1, {n} requests per meter ({len(points)} points): measured "
          f"{measured:.3f} meters/s ({elapsed:.1f} s for {rounds * len(devices)} meter reads); "
          f"timing model {model:.3f} meters/s at {SIM_TURNAROUND_S * 1000:g} ms turnaround "
          f"({wire_only:.3f} on the wire alone)")
    assert measured <= wire_only * 1.02  # nothing reads faster than the characters cross
    assert measured >= 0.5 * model       # and the stack adds less than the line itself


def test_scan_finds_five_meters_through_the_paced_line(tmp_path: Path) -> None:
    out = io.StringIO()
    with meter_line(tmp_path, FIVE) as port:
        started = time.monotonic()
        status = scan_main([str(port), "--protocol", "dlt645", "--bauds", str(BAUD),
                            "--framings", "8N1", "--turnaround-ms", str(SCAN_TURNAROUND_MS),
                            "--out", str(tmp_path / "draft.toml")], out=out)
        took = time.monotonic() - started
    text = out.getvalue()
    print(f"\n{text}scan of 5 meters through the 2400 8E1 line: {took:.1f} s in all")
    assert status == 0, text
    for address in FIVE.values():
        assert f"meter {address}: forward active energy" in text

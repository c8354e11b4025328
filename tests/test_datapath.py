"""The data path end to end: simulators over a PTY pair and TCP, the agent, a real mosquitto.

Everything runs as real processes: ``edge-agent simulate`` (socat PTYs and pymodbus servers),
``edge-agent run``, and a paho subscriber decoding what the broker delivers.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any, cast

import pytest

from edge_agent.protocol.readings import Quality
from edge_agent.tools.devbroker import Mosquitto
from tests.support.sitekit import Collector, agent, control, simulator, write_site

pytestmark = [pytest.mark.integration, pytest.mark.serial]


def _regs(doc: dict, table: str, start: int, n: int) -> list[int]:  # type: ignore[type-arg]
    cells = doc["registers"][table]
    return [int(cells[str(a)]) for a in range(start, start + n)]


def _latest(readings, device: str, point: str):  # type: ignore[no-untyped-def]
    values = [r for r in readings if r.device == device and r.point == point]
    assert values, f"no reading of {device}.{point} was published"
    return values[-1]


def test_published_values_equal_the_simulated_registers_decoded_by_hand(
        tmp_path: Path, broker: Mosquitto) -> None:
    site = write_site(tmp_path, [
        ("meter", "rs485", 1, "energy_meter"),
        ("water", "rs485", 2, "water_meter"),
        ("lamp", "rs485", 3, "streetlight"),
        ("cabinet", "lan", 1, "signal_cabinet"),
    ], poll_s=0.5)
    sub = Collector(broker.port)
    try:
        with simulator(site, tmp_path) as sock:
            control(sock, {"cmd": "freeze", "on": True})
            with agent(site, broker.url, tmp_path):
                devices = {"meter", "water", "lamp", "cabinet"}
                assert sub.wait_for(lambda c: devices <= {r.device for r in c.readings}
                                    and any(r.point == "energy_wh" for r in c.readings)), \
                    (tmp_path / "agent.log").read_text()
            readings = sub.snapshot()
            meter = control(sock, {"cmd": "registers", "device": "meter"})
            water = control(sock, {"cmd": "registers", "device": "water"})
            lamp = control(sock, {"cmd": "registers", "device": "lamp"})
            cab = control(sock, {"cmd": "registers", "device": "cabinet"})
    finally:
        sub.close()

    assert all(r.quality is Quality.GOOD for r in readings), \
        [r for r in readings if r.quality is not Quality.GOOD][:5]
    # SDM630 voltage L1: input registers 0-1, float32 big-endian (ABCD).
    raw = struct.pack(">HH", *_regs(meter, "input_register", 0, 2))
    assert _latest(readings, "meter", "voltage_l1").value == struct.unpack(">f", raw)[0]
    # SDM630 frequency at 0x46.
    raw = struct.pack(">HH", *_regs(meter, "input_register", 0x46, 2))
    assert _latest(readings, "meter", "frequency").value == struct.unpack(">f", raw)[0]
    # Water volume: uint32 litres, low word first (CDAB), scale 0.001 to m³.
    lo, hi = _regs(water, "holding_register", 0, 2)
    assert _latest(readings, "water", "volume").value == pytest.approx(((hi << 16) | lo) * 0.001)
    # Lamp energy: uint64 fully little-endian (DCBA) in holding registers 8-11.
    wire = struct.pack(">4H", *_regs(lamp, "holding_register", 8, 4))
    assert _latest(readings, "lamp", "energy_wh").value == int.from_bytes(wire, "little")
    # Lamp fault: bit 0 of holding register 5.
    status = _regs(lamp, "holding_register", 5, 1)[0]
    assert _latest(readings, "lamp", "lamp_fault").value is bool(status & 1)
    # Signal group 1: bits 0-1 of input register 10; door: discrete input 0 (over Modbus TCP).
    groups = _regs(cab, "input_register", 10, 1)[0]
    assert _latest(readings, "cabinet", "group_1").value == groups & 0b11
    door = cab["registers"]["discrete_input"]["0"]
    assert _latest(readings, "cabinet", "door_open").value is bool(door)


def test_a_dead_device_does_not_slow_the_healthy_ones_on_its_bus(
        tmp_path: Path, broker: Mosquitto) -> None:
    profiles = ["energy_meter", "streetlight", "water_meter", "pipe_sensor", "env_monitor",
                "streetlight", "energy_meter", "pipe_sensor"]
    names = [f"dev{i}" for i in range(1, 9)]
    site = write_site(tmp_path, [(n, "rs485", i + 1, p)
                                 for i, (n, p) in enumerate(zip(names, profiles, strict=True))],
                      poll_s=0.25, baud=115200, health_s=1.0)
    window_s = 12.0

    def counts(sock: Path) -> dict[str, int]:
        docs = control(sock, {"cmd": "stats"})["devices"]
        return {d["device"]: int(d["requests"]) for d in docs}

    sub = Collector(broker.port)
    try:
        with simulator(site, tmp_path) as sock, agent(site, broker.url, tmp_path):
            assert sub.wait_for(lambda c: set(names) <= {r.device for r in c.readings})
            time.sleep(1.0)
            c0 = counts(sock)
            time.sleep(window_s)
            c1 = counts(sock)
            control(sock, {"device": "dev8", "fault": "silent"})
            c2 = counts(sock)
            time.sleep(window_s)
            c3 = counts(sock)
            readings = sub.snapshot()
    finally:
        sub.close()

    healthy = {n: c1[n] - c0[n] for n in names[:7]}
    with_dead = {n: c3[n] - c2[n] for n in names[:7]}
    print("requests per device, all healthy:", healthy)
    print("requests per device, dev8 dead:  ", with_dead)
    print("requests sent to dead dev8:", c3["dev8"] - c2["dev8"])
    for n in names[:7]:
        assert healthy[n] > 0
        assert with_dead[n] >= 0.95 * healthy[n], (n, healthy[n], with_dead[n])
    # The dead device was backed off to one single-attempt probe per one to two cycles: at
    # most half the requests it got while healthy (pipe_sensor: 2 reads a cycle).
    assert c3["dev8"] - c2["dev8"] <= 0.5 * (c1["dev8"] - c0["dev8"])
    dead = [r for r in readings if r.device == "dev8" and r.quality is Quality.COMM_ERROR]
    assert dead, "the dead device's points were never reported as comm_error"
    last = cast(dict[str, Any], sub.health[-1]["devices"])
    assert last["dev8"]["status"] == "offline" and last["dev8"]["consecutive_failures"] >= 1
    assert all(last[n]["status"] == "online" for n in names[:7])

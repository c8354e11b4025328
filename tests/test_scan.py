"""The pure parts of scanning: settings, timeouts, recognition by profile, the draft config.

The scan of a simulated line (devices at unknown addresses and baud) is in
hil_tests/test_bench.py; here recognition is fed the register images the simulators serve.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import serial

from edge_agent.config.loader import load_config
from edge_agent.drivers.bus import Parity
from edge_agent.drivers.modbus.planner import plan_reads
from edge_agent.drivers.modbus.recognise import (
    W_FLOAT,
    W_IDENTITY,
    W_RANGE,
    W_STRING,
    evidence,
    hole_probes,
)
from edge_agent.drivers.modbus.scan import (
    DECOY_WITHIN_S,
    FEW_SECONDS_PER_100,
    Answer,
    Found,
    LinePhase,
    ReadKey,
    ScanSetting,
    ambiguous,
    candidate_settings,
    draft_site,
    parse_framing,
    parse_ids,
    probe_timeout_s,
    rank_profiles,
    recognised,
    recognition_reads,
    sweep_estimate_s,
)
from edge_agent.drivers.modbus.timing import exchange_s
from edge_agent.drivers.profile import DeviceProfile, load_profile, shipped_profiles
from edge_agent.drivers.sim.device import compose_image
from edge_agent.drivers.sim.models import values_at
from edge_agent.tools.scan import scan_main

PROFILES = [load_profile(n) for n in shipped_profiles()]
T = 1_790_000_000.0  # a fixed simulated moment


def test_ids_and_framings_parse_and_refuse_what_modbus_forbids() -> None:
    assert parse_ids("1-3,7,5-6") == [1, 2, 3, 5, 6, 7]
    assert parse_ids("1-247") == list(range(1, 248))
    for bad in ("0-5", "240-250", "x"):
        with pytest.raises(ValueError, match="unit ids"):
            parse_ids(bad)
    assert parse_framing("8e1") == (Parity.EVEN, 1)
    assert parse_framing("N") == (Parity.NONE, 1)
    assert parse_framing("8N2") == (Parity.NONE, 2)
    with pytest.raises(ValueError, match="framing"):
        parse_framing("7E1")


def test_candidates_start_with_the_modbus_defaults() -> None:
    labels = [s.label() for s in candidate_settings()]
    assert labels[:3] == ["9600 8E1", "9600 8N1", "9600 8N2"]
    assert labels.index("19200 8E1") < labels.index("1200 8E1")
    assert [s.label() for s in candidate_settings([19200], [(Parity.NONE, 1)])] == ["19200 8N1"]


def test_probe_timeout_is_the_exchange_less_one_gap_and_sweeps_are_quick() -> None:
    s = ScanSetting(9600, Parity.EVEN, 1)
    bus = s.bus("-")
    assert probe_timeout_s(s, 0.02) < exchange_s(bus, 3, 1, 0.02)
    assert probe_timeout_s(s, 0.02, 0.016) == pytest.approx(probe_timeout_s(s, 0.02) + 0.016)
    # The promise: a few seconds per hundred ids at 9600 and above, not at 1200.
    for baud in (9600, 19200, 38400, 115200):
        assert sweep_estimate_s(ScanSetting(baud, Parity.EVEN, 1), 100) <= FEW_SECONDS_PER_100
    assert sweep_estimate_s(ScanSetting(1200, Parity.EVEN, 1), 100) > FEW_SECONDS_PER_100


def test_a_decoy_follows_each_unanswered_probe_while_a_waiting_slave_surely_takes_it() -> None:
    phase = LinePhase()
    assert phase.before_probe(0.0, 0.6) == (False, 0.0)  # a quiet line: probe at once
    phase.probed(True, 0.05)
    assert phase.before_probe(0.06, 0.6) == (False, 0.0)  # an answer leaves everyone in step
    phase.probed(False, 0.10)
    assert phase.before_probe(0.11, 0.6) == (True, 0.0)  # silent id: decoy first
    assert phase.before_probe(0.12, 0.6) == (False, 0.0)  # ...once
    phase.probed(False, 1.00)
    # The scanner stalled: too late for a decoy to be surely taken; let the wait run out.
    silent, wait = phase.before_probe(1.00 + DECOY_WITHIN_S + 0.01, 0.6)
    assert not silent and wait == pytest.approx(0.6 - DECOY_WITHIN_S - 0.01)
    assert (phase.decoys, phase.guard_waits) == (1, 1)
    # A reply wait near libmodbus's 0.5 s (--turnaround-ms 500): the wait has run out or
    # nearly, so no decoy (it would start a new wait) but the whole guard.
    phase.probed(False, 2.00)
    decoy, wait = phase.before_probe(2.00 + 0.52, 0.6)
    assert not decoy and wait == pytest.approx(0.08)


def answers_for(profile_name: str, seed: int = 3) -> dict[ReadKey, Answer]:
    """What a simulated device of ``profile_name`` answers to the recognition reads."""
    prof = next(p for p in PROFILES if p.name == profile_name)
    image = compose_image(prof.points, values_at(prof.name, prof.points, T, device="d",
                                                 seed=seed, overrides={}))
    out = {}
    for table, address, count in recognition_reads(PROFILES):
        cells = image[table]
        span = range(address, address + count)
        if not cells:
            out[(table, address, count)] = Answer(exception_code=2)  # no such table
        elif table.is_bit:
            out[(table, address, count)] = Answer(
                tuple(int(cells.get(a, 0)) for a in span) if address in cells else None,
                None if address in cells else 2)
        elif all(a in cells for a in span):
            out[(table, address, count)] = Answer(tuple(int(cells[a]) for a in span))
        else:
            out[(table, address, count)] = Answer(exception_code=2)
    return out


@pytest.mark.parametrize("name", [p.name for p in PROFILES])
def test_every_shipped_profile_is_recognised_from_its_own_registers(name: str) -> None:
    ranking = rank_profiles(PROFILES, answers_for(name))
    best = recognised(ranking)
    assert best is not None and best.profile == name, ranking[:3]


def answers_everywhere(profile_name: str, fill: int | None) -> dict[ReadKey, Answer]:
    """A device of ``profile_name`` that maps every address: registers the profile does
    not name read ``fill`` (None: seeded noise), bits read off."""
    prof = next(p for p in PROFILES if p.name == profile_name)
    image = compose_image(prof.points, values_at(prof.name, prof.points, T, device="d",
                                                 seed=3, overrides={}))
    rnd = random.Random(17)
    out = {}
    for table, address, count in recognition_reads(PROFILES):
        cells = image[table]
        out[(table, address, count)] = Answer(tuple(
            int(cells[a]) if a in cells else 0 if table.is_bit
            else (rnd.randrange(65536) if fill is None else fill)
            for a in range(address, address + count)))
    return out


@pytest.mark.parametrize("fill", [0, 1, None], ids=["zeros", "ones", "noise"])
@pytest.mark.parametrize("name", [p.name for p in PROFILES])
def test_a_device_mapping_every_address_is_named_by_the_profile_that_explains_it(
        name: str, fill: int | None) -> None:
    """Not by the count of answering points (the signal cabinet has the most)."""
    ranking = rank_profiles(PROFILES, answers_everywhere(name, fill))
    best = recognised(ranking)
    assert best is not None and best.profile == name, [(m.profile, m.score) for m in ranking]
    assert ambiguous(ranking) == ()


def test_identity_and_refused_holes_weigh_and_a_tie_is_said_to_be_ambiguous(
        tmp_path: Path) -> None:
    water = next(p for p in PROFILES if p.name == "water_meter")
    serial = next(p for p in water.points if p.name == "serial_number")
    text = [0x4C4D, 0x422D, 0x3030, 0x3030, 0x3337, 0x0000]  # a printable serial number
    assert evidence(serial, text) == pytest.approx(W_STRING + W_IDENTITY)
    assert evidence(serial, [0x0001] * 6) is None  # control characters: not a serial
    volts = next(p for p in PROFILES if p.name == "energy_meter").points[0]
    assert evidence(volts, [0x4366, 0x0000]) == pytest.approx(W_FLOAT + W_RANGE)  # 230 V
    assert evidence(volts, [0x0002, 0x0001]) is None  # two small integers as a float
    assert evidence(volts, [0x4780, 0x0000]) is None  # 65536 V
    # The same answers fit two made-up profiles equally: ambiguous, and the draft says so.
    a, b = (DeviceProfile(n, "", (volts,)) for n in ("meter_a", "meter_b"))
    answers = {k: Answer((0x4366, 0x0000)) for k in recognition_reads([a, b])}
    ranking = rank_profiles([a, b], answers)
    assert recognised(ranking) is None
    assert [m.profile for m in ambiguous(ranking)] == ["meter_a", "meter_b"]
    text_out = draft_site("/dev/ttyUSB0", ScanSetting(9600, Parity.EVEN, 1),
                          [Found(7, None, (), ("meter_a", "meter_b"))])
    assert "fits meter_a and meter_b about equally well (ambiguous)" in text_out
    # Exception 2 just past the profile's last register is evidence for it.
    (hole,) = hole_probes(a)
    refused = {**answers, hole: Answer(exception_code=2)}
    assert rank_profiles([a], refused)[0].score > rank_profiles([a], answers)[0].score


def test_a_device_answering_nothing_is_not_recognised() -> None:
    silent = {k: Answer(exception_code=2) for k in recognition_reads(PROFILES)}
    ranking = rank_profiles(PROFILES, silent)
    assert recognised(ranking) is None
    assert all(m.matched == 0 for m in ranking)


def test_recognition_reads_cover_every_profile_without_holes() -> None:
    reads = set(recognition_reads(PROFILES))
    for prof in PROFILES:
        for r in plan_reads(prof.points, max_gap=0):
            assert (r.table, r.address, r.count) in reads


def test_draft_config_loads_once_named(tmp_path: Path) -> None:
    text = draft_site("/dev/serial/by-id/usb-x", ScanSetting(19200, Parity.NONE, 1), [
        Found(5, "pipe_sensor", ()), Found(17, "energy_meter", ()),
        Found(99, None, ("water_meter 3/8",))], gateway_id="gw-1")
    assert "closest: water_meter 3/8" in text
    path = tmp_path / "draft.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert [(d.name, d.unit_id) for d in cfg.devices] == [("pipe_sensor_5", 5),
                                                         ("energy_meter_17", 17)]
    bus = cfg.buses["rs485"]
    assert (bus.baudrate, bus.parity) == (19200, Parity.NONE)  # type: ignore[union-attr]


def test_scan_refuses_a_port_held_by_another_process(tmp_path: Path) -> None:
    import os

    master, slave = os.openpty()
    link = tmp_path / "ttyBUS"
    link.symlink_to(os.ttyname(slave))
    holder = serial.Serial(str(link), exclusive=True)
    try:
        err = io.StringIO()
        import contextlib

        with contextlib.redirect_stderr(err):
            rc = scan_main([str(link), "--ids", "1-2"], io.StringIO())
        assert rc == 2
        assert "is in use" in err.getvalue() and "stop the agent" in err.getvalue()
    finally:
        holder.close()
        os.close(master)
        os.close(slave)


def test_scan_rejects_bad_arguments_before_touching_the_port() -> None:
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert scan_main(["/dev/does-not-exist", "--ids", "0-300"], io.StringIO()) == 2
    assert "unit ids" in err.getvalue()

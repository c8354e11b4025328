"""The shipped device profiles: every one parses, names are unique, points do not overlap."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from edge_agent.drivers.modbus.decode import decode_point, encode_point
from edge_agent.drivers.model import DataType, Point, Table, WordOrder
from edge_agent.drivers.profile import DeviceProfile, load_profile, shipped_profiles
from edge_agent.protocol.errors import ConfigError

REQUIRED = {"streetlight", "energy_meter", "water_meter", "pipe_sensor", "signal_cabinet",
            "env_monitor"}


def _all() -> dict[str, DeviceProfile]:
    return {name: load_profile(name) for name in shipped_profiles()}


def test_every_required_profile_is_shipped_and_parses() -> None:
    profiles = _all()
    assert set(profiles) >= REQUIRED
    for name, prof in profiles.items():
        assert prof.name == name, f"{name}.toml declares name {prof.name!r}"
        assert prof.description
        assert prof.points


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_points_have_unique_names_units_and_descriptions(name: str) -> None:
    prof = load_profile(name)
    names = [p.name for p in prof.points]
    assert len(names) == len(set(names))
    for p in prof.points:
        assert p.description, f"{name}.{p.name} has no description"
        numeric = not (p.table.is_bit or p.type in (DataType.BOOL, DataType.STRING)
                       or p.bit is not None)
        if numeric and p.name not in ("serial_number", "controller_mode", "active_plan",
                                      "plan_command"):
            assert p.unit, f"{name}.{p.name} has no unit"


def _bit_mask(p: Point) -> int:
    assert p.bit is not None
    return ((1 << p.bits) - 1) << p.bit


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_points_of_a_device_do_not_overlap(name: str) -> None:
    prof = load_profile(name)
    for a, b in itertools.combinations(prof.points, 2):
        if a.table is not b.table or a.end <= b.address or b.end <= a.address:
            continue
        # The only allowed overlap: bit fields of the same register with disjoint bits.
        assert a.bit is not None and b.bit is not None and a.address == b.address, \
            f"{name}: {a.name} and {b.name} overlap in {a.table.value}"
        assert _bit_mask(a) & _bit_mask(b) == 0, f"{name}: bit fields {a.name}, {b.name} overlap"


def test_energy_meter_follows_the_sdm630_map() -> None:
    prof = load_profile("energy_meter")
    expected = {"voltage_l1": 0x00, "voltage_l2": 0x02, "voltage_l3": 0x04, "current_l1": 0x06,
                "current_l2": 0x08, "current_l3": 0x0A, "power_l1": 0x0C, "power_l2": 0x0E,
                "power_l3": 0x10, "total_power": 0x34, "frequency": 0x46, "import_kwh": 0x48,
                "export_kwh": 0x4A, "total_kwh": 0x156}
    for name, address in expected.items():
        p = prof.point(name)
        assert (p.table, p.address, p.type, p.order) == (
            Table.INPUT_REGISTER, address, DataType.FLOAT32, WordOrder.ABCD), name
    # 230.1 V as float32 big-endian is 0x4366199A (struct.pack(">f", 230.1)).
    assert encode_point(prof.point("voltage_l1"), 230.1) == [0x4366, 0x199A]


def test_profiles_exercise_types_and_orders() -> None:
    points = [p for prof in _all().values() for p in prof.points]
    types = {p.type for p in points}
    orders = {p.order for p in points if p.count > 1}
    assert {DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.UINT64,
            DataType.FLOAT32, DataType.FLOAT64, DataType.STRING, DataType.BOOL} <= types
    assert {WordOrder.ABCD, WordOrder.CDAB, WordOrder.BADC, WordOrder.DCBA} <= orders
    assert any(p.bit is not None and p.bits > 1 for p in points)  # multi-bit fields
    water = load_profile("water_meter").point("volume")
    assert (water.type, water.order) == (DataType.UINT32, WordOrder.CDAB)
    # 123456 litres = 0x0001E240, low word first in CDAB.
    assert encode_point(water, 123.456) == [0xE240, 0x0001]
    assert decode_point(water, [0xE240, 0x0001]) == pytest.approx(123.456)


def test_slow_values_poll_slower_and_noisy_analogs_have_deadbands() -> None:
    slow = {("streetlight", "burning_hours"), ("energy_meter", "import_kwh"),
            ("energy_meter", "total_kwh"), ("water_meter", "volume")}
    for prof_name, point in slow:
        p = load_profile(prof_name).point(point)
        assert p.interval_s is not None and p.interval_s >= 300, (prof_name, point)
    for prof_name, point in [("energy_meter", "voltage_l1"), ("pipe_sensor", "pressure"),
                             ("env_monitor", "noise"), ("streetlight", "lamp_power")]:
        assert load_profile(prof_name).point(point).deadband, (prof_name, point)


def test_signal_groups_are_two_bit_fields_of_one_register() -> None:
    prof = load_profile("signal_cabinet")
    groups = [prof.point(f"group_{n}") for n in range(1, 9)]
    assert {g.address for g in groups} == {groups[0].address}
    assert [(g.bit, g.bits) for g in groups] == [(2 * i, 2) for i in range(8)]


def test_write_limits_are_read_from_profiles_and_checked() -> None:
    from edge_agent.drivers.profile import parse_profile
    from edge_agent.protocol.errors import ConfigError

    assert load_profile("streetlight").point("dim_command").max_value == 100
    bad = {"points": {"x": {"table": "holding_register", "address": 0, "type": "uint16",
                            "min": 5, "max": 1}}}
    with pytest.raises(ConfigError, match=r"points\.x\.min = 5\.0: expected a minimum"):
        parse_profile(bad, "bad.toml")


# --- intake limits: a profile file is read like a config (UTF-8, 1 MiB, 16 levels) ---------

PROFILE_HEAD = '[profile]\nname = "p"\n[points.t]\ntable = "input_register"\naddress = 0\n' \
               'type = "int16"\n'


def _refused(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert len(info.value.problems) == 1, info.value.problems
    problem = info.value.problems[0]
    assert problem.startswith(f"{path}: "), problem
    return problem


def test_a_latin1_profile_names_the_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    data = PROFILE_HEAD.encode() + 'unit = "°C"\n'.encode("latin-1")
    path.write_bytes(data)
    offset = data.index(b"\xb0")
    assert f"not UTF-8: byte 0xb0 at offset {offset} (line 7, column 9)" in _refused(path)


def test_a_deeply_nested_profile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(PROFILE_HEAD + "description = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in _refused(path)
    path.write_text(PROFILE_HEAD + ".".join(["x"] * 100) + " = 1\n")
    assert "nested more than 16 levels deep" in _refused(path)


def test_a_profile_over_1_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(PROFILE_HEAD + "#" * (1024 * 1024) + "\n")
    assert "larger than 1048576 bytes" in _refused(path)


def test_a_profile_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    os.mkfifo(path)
    assert _refused(path) == f"{path}: cannot read: Not a regular file"

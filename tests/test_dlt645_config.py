"""DL/T 645 buses and meters in a site config, and the shipped meter profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import FieldProtocol, SerialBus
from edge_agent.drivers.dlt645.meter import load_meter_profile, shipped_meter_profiles
from edge_agent.protocol.errors import ConfigError

HEAD = '[gateway]\nid = "gw"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'


def _bus(tmp_path: Path, extra: str = "") -> str:
    return (f'[buses.m]\ntype = "serial"\nprotocol = "dlt645"\nport = "{tmp_path / "m"}"\n'
            f'baudrate = 2400\n{extra}')


def load_config_from(tmp_path: Path, body: str) -> SiteConfig:
    (tmp_path / "site.toml").write_text(HEAD + body)
    return load_config(tmp_path / "site.toml")


def _problems(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config_from(tmp_path, body)
    return str(err.value)


def test_a_meter_bus_and_its_meters(tmp_path: Path) -> None:
    cfg = load_config_from(tmp_path, _bus(tmp_path) + (
        '[devices.flat]\nbus = "m"\naddress = "000102030425"\nprofile = "dlt645_meter"\n'
        'poll_interval_s = 30\n[devices.flat.points.voltage_a]\ndeadband = 2.0\n'
        '[devices.flat.points.meter_time]\nenabled = false\n'))
    bus = cfg.buses["m"]
    assert isinstance(bus, SerialBus) and bus.protocol is FieldProtocol.DLT645
    (meter,) = cfg.devices
    assert meter.address == "000102030425" and meter.unit_id == 102030425 and not meter.points
    names = [p.name for p in meter.meter_points]
    assert "meter_time" not in names and "energy_forward_total" in names
    assert next(p for p in meter.meter_points if p.name == "voltage_a").deadband == 2.0


def test_meter_problems_are_reported_together(tmp_path: Path) -> None:
    text = _problems(tmp_path, _bus(tmp_path) + (
        '[devices.a]\nbus = "m"\naddress = "12345"\nprofile = "dlt645_meter"\n'
        'poll_interval_s = 30\n'
        '[devices.b]\nbus = "m"\nunit_id = 3\nprofile = "dlt645_meter"\npoll_interval_s = 30\n'
        '[devices.c]\nbus = "m"\naddress = "000000000001"\nprofile = "energy_meter"\n'
        'poll_interval_s = 30\n'
        '[devices.d]\nbus = "m"\naddress = "000000000001"\nprofile = "dlt645_meter"\n'
        'poll_interval_s = 30\n[devices.d.points.nope]\ndeadband = 1\n'
        '[devices.e]\nbus = "m"\naddress = "000000000001"\nprofile = "dlt645_meter"\n'
        'poll_interval_s = 30\n'))
    assert "devices.a.address = '12345': expected a meter address of 12 decimal digits" in text
    assert "devices.b.unit_id: unknown key" in text and "devices.b.address: missing" in text
    assert "'energy_meter' is a Modbus profile and this bus speaks DL/T 645" in text
    assert "devices.d.points.nope: profile 'dlt645_meter' has no point 'nope'" in text
    assert "devices.e.address = '000000000001': expected an address not already used" in text


def test_protocol_is_checked_and_defaults_to_modbus(tmp_path: Path) -> None:
    text = _problems(tmp_path, _bus(tmp_path).replace('"dlt645"', '"iec62056"'))
    assert "buses.m.protocol = 'iec62056': expected one of 'modbus', 'dlt645'" in text
    text = _problems(tmp_path, _bus(tmp_path).replace(f'"{tmp_path / "m"}"',
                                                      '"rfc2217://10.0.0.5:4001"'))
    assert "rfc2217:// is supported on Modbus buses only" in text
    cfg = load_config_from(tmp_path, f'[buses.r]\ntype = "serial"\nport = "{tmp_path / "r"}"\n'
                           '[devices.x]\nbus = "r"\nunit_id = 1\nprofile = "energy_meter"\n'
                           'poll_interval_s = 5\n')
    modbus = cfg.buses["r"]
    assert isinstance(modbus, SerialBus) and modbus.protocol is FieldProtocol.MODBUS


def test_the_shipped_profile_covers_the_common_identifiers() -> None:
    profile = load_meter_profile(shipped_meter_profiles()["dlt645_meter"])
    dis = {p.di for p in profile.points}
    assert {0x00000000, 0x00010000, 0x00020000, 0x02010100, 0x02020100, 0x02030000,
            0x02060000, 0x02800002, 0x04000101, 0x04000102} <= dis
    current = next(p for p in profile.points if p.di == 0x02020100)
    assert current.signed and current.unit == "A" and current.fmt.pattern == "XXX.XXX"


def test_a_profile_file_with_an_unknown_identifier_needs_its_format(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        '[profile]\nname = "mine"\n[points.x]\ndi = "02800001"\n'
        '[points.y]\ndi = "0201FF00"\n[points.z]\ndi = "02800001"\nformat = "XX.XXXX"\n'
        'unit = "kW"\n')
    text = _problems(tmp_path, _bus(tmp_path) + (
        '[devices.a]\nbus = "m"\naddress = "000000000001"\nprofile = "mine.toml"\n'
        'poll_interval_s = 30\n'))
    assert "identifier 02800001 is not in the table: give its format and unit" in text
    assert "points.y.di = '0201FF00': expected one item, not a block" in text

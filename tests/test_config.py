"""Site config loading: every rejection names file, key path, bad value and expectation."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from edge_agent.config.model import BatchConfig
from edge_agent.drivers.bus import Parity, SerialBus, TcpBus, TcpFraming
from edge_agent.drivers.model import DataType, Table
from edge_agent.drivers.profile import shipped_profiles
from edge_agent.protocol.broker import MqttConfig
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.ids import ID_RULE
from edge_agent.tools.checkconfig import check_config_main

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "configs"
METER = DATA / "profiles" / "meter.toml"
LAMP = DATA / "profiles" / "lamp.toml"
BROKEN = DATA / "profiles" / "broken.toml"
# Configs name files only in their own directory or the state dir: write() copies the test
# profiles beside each config, which names them by these relative paths.
METER_REF, LAMP_REF, BROKEN_REF = "meter.toml", "lamp.toml", "broken.toml"

BASE = f"""
[gateway]
id = "gw-01"

[mqtt]
url = "mqtt://broker.example"

[buses.rs485]
type = "serial"
port = "/dev/ttyUSB0"

[devices.meter1]
bus = "rs485"
unit_id = 1
profile = "{METER_REF}"
poll_interval_s = 10
"""


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    """Write a config into tmp_path, the test profiles beside it, and return its path."""
    path = tmp_path / name
    for profile in (METER, LAMP, BROKEN):
        if not (path.parent / profile.name).exists():
            shutil.copyfile(profile, path.parent / profile.name)
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    """Load a config that must be rejected; return its path and the problems."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, info.value.problems


def one(tmp_path: Path, text: str, *fragments: str) -> str:
    """Assert exactly one problem, naming the file and containing every fragment."""
    path, found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: "), found[0]
    for fragment in fragments:
        assert fragment in found[0], (fragment, found[0])
    return found[0]


# --- accepted configs ---------------------------------------------------------------------

def test_full_site_round_trips_into_dataclasses() -> None:
    cfg = load_config(DATA / "full-site.toml")
    assert (cfg.gateway_id, cfg.site) == ("cab-0042", "Main St / 5th Ave cabinet")
    assert cfg.state_dir == DATA / "state"  # relative to the config file
    assert cfg.health_interval_s == 30.0
    assert cfg.mqtt == MqttConfig(
        url="mqtt://broker.example.net", scheme="mqtt", host="broker.example.net", port=1883,
        username="cab-0042", password="s3cret", client_id="edge-cab-0042",
        topic_prefix="city/north", keepalive_s=20)
    assert "s3cret" not in repr(cfg.mqtt)
    assert cfg.batch == BatchConfig(window_s=2.5, max_readings=1000, max_silence_s=600.0)
    assert cfg.max_gap == 8
    assert cfg.buses == {
        "rs485a": SerialBus(
            name="rs485a",
            port="/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1ABC-if00-port0",
            baudrate=9600, parity=Parity.EVEN, stopbits=1, timeout_s=0.25, retries=0),
        "rs485b": SerialBus(name="rs485b", port="rfc2217://10.20.0.7:4001", baudrate=19200,
                            parity=Parity.NONE, stopbits=2, inter_frame_gap_s=0.005),
        "plc": TcpBus(name="plc", host="10.20.0.5"),
        "converter": TcpBus(name="converter", host="10.20.0.6", port=4001,
                            framing=TcpFraming.RTU, timeout_s=0.8, retries=2),
    }
    assert [(d.name, d.bus, d.unit_id, d.profile.name, d.poll_interval_s) for d in cfg.devices] == [
        ("meter1", "rs485a", 1, "test_meter", 15.0),
        ("meter2", "rs485a", 2, "test_meter", 15.0),
        ("lamp7", "converter", 7, "test_lamp", 0.5),
        ("cabinet_plc", "plc", 1, "test_lamp", 1.0),
    ]
    assert [d.name for d in cfg.devices_on("rs485a")] == ["meter1", "meter2"]


def test_overrides_are_applied_and_disabled_points_dropped() -> None:
    cfg = load_config(DATA / "full-site.toml")
    meter1, meter2, lamp7, _ = cfg.devices
    assert [p.name for p in meter1.points] == [
        "voltage_l1", "power_total", "energy_import", "frequency"]
    power = meter1.points[1]
    assert (power.scale, power.unit, power.deadband, power.address) == (0.001, "kW", 20.0, 0x34)
    freq = meter1.points[3]
    assert (freq.table, freq.address, freq.type, freq.count) == (
        Table.INPUT_REGISTER, 0x46, DataType.FLOAT32, 2)
    # The other device with the same profile keeps the profile's values.
    assert [p.name for p in meter2.points] == [
        "voltage_l1", "current_l1", "power_total", "energy_import"]
    assert (meter2.points[2].scale, meter2.points[2].unit, meter2.points[2].deadband) == (
        1.0, "W", 5.0)
    level = lamp7.points[0]
    assert (level.interval_s, level.offset, level.unit) == (5.0, -1.0, "%")


def test_defaults_of_a_minimal_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.mqtt == MqttConfig(url="mqtt://broker.example", scheme="mqtt",
                                  host="broker.example", port=1883, client_id="gw-01")
    assert (cfg.mqtt.topic_prefix, cfg.mqtt.keepalive_s) == ("edge", 30)
    assert cfg.site == ""
    assert cfg.state_dir == Path("/var/lib/edge-agent")
    assert cfg.health_interval_s == 60.0
    assert cfg.batch == BatchConfig()
    assert cfg.max_gap == 16
    assert cfg.buses["rs485"] == SerialBus(name="rs485", port="/dev/ttyUSB0", baudrate=9600,
                                           parity=Parity.EVEN, stopbits=1, retries=1)


def test_broker_url_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    cfg = load_config(path, broker_url="mqtt://127.0.0.1:18831")
    assert (cfg.mqtt.url, cfg.mqtt.host, cfg.mqtt.port) == ("mqtt://127.0.0.1:18831",
                                                            "127.0.0.1", 18831)
    with pytest.raises(ConfigError) as info:
        load_config(path, broker_url="tcp://127.0.0.1")
    assert info.value.problems == [
        f"{path}: mqtt.url (from --broker) = 'tcp://127.0.0.1': expected mqtt://host[:port], "
        "mqtts://host[:port] or unix:///path/to/socket"]


@pytest.mark.parametrize(("url", "scheme", "host", "port"), [
    ("mqtt://h.example", "mqtt", "h.example", 1883),
    ("mqtt://h.example:1884", "mqtt", "h.example", 1884),
    ("mqtts://h.example", "mqtts", "h.example", 8883),
    ("mqtt://[::1]:1883", "mqtt", "::1", 1883),
    ("unix:///run/mosquitto/mqtt.sock", "unix", "/run/mosquitto/mqtt.sock", 0),
])
def test_broker_url_forms(tmp_path: Path, url: str, scheme: str, host: str, port: int) -> None:
    cfg = load_config(write(tmp_path, BASE.replace("mqtt://broker.example", url)))
    assert (cfg.mqtt.scheme, cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == (
        scheme, host, port, scheme == "mqtts")


@pytest.mark.parametrize("url", [
    "http://h", "mqtt://", "mqtt://h:0", "mqtt://h:70000", "mqtt://u:p@h", "mqtt://h/x",
    "mqtt://h?x=1", "unix://relative.sock", "unix:///", "h:1883",
])
def test_bad_broker_urls(tmp_path: Path, url: str) -> None:
    one(tmp_path, BASE.replace("mqtt://broker.example", url),
        f"mqtt.url = {url!r}: expected mqtt://host[:port]")


# --- structure: unknown keys and wrong types ----------------------------------------------

@pytest.mark.parametrize(("addition", "key_path"), [
    ("[logging]\nlevel = 'debug'\n", "logging"),
    ("[devices.meter1.points.voltage_l1]\nscal = 2\n", "devices.meter1.points.voltage_l1.scal"),
    ("[devices.meter1.extra_points.f]\ntable = 'input_register'\naddress = 1\ntype = 'uint16'\n"
     "colour = 'red'\n", "devices.meter1.extra_points.f.colour"),
    ("[buses.tcp1]\ntype = 'tcp'\nhost = 'h'\nbaudrate = 9600\n", "buses.tcp1.baudrate"),
])
def test_unknown_keys_anywhere(tmp_path: Path, addition: str, key_path: str) -> None:
    one(tmp_path, BASE + addition, f": {key_path}: unknown key; expected one of: ")


@pytest.mark.parametrize(("old", "new", "key_path"), [
    ('id = "gw-01"', 'id = "gw-01"\nname = "x"', "gateway.name"),
    ('url = "mqtt://broker.example"', 'url = "mqtt://broker.example"\nhost = "x"', "mqtt.host"),
    ('port = "/dev/ttyUSB0"', 'port = "/dev/ttyUSB0"\nbaud = 9600', "buses.rs485.baud"),
    ("unit_id = 1", "unit_id = 1\nslave = 1", "devices.meter1.slave"),
])
def test_unknown_keys_in_known_tables(tmp_path: Path, old: str, new: str, key_path: str) -> None:
    one(tmp_path, BASE.replace(old, new), f": {key_path}: unknown key; expected one of: ")


@pytest.mark.parametrize(("old", "new", "fragment"), [
    ("unit_id = 1", 'unit_id = "1"', "devices.meter1.unit_id = '1': expected a unit id"),
    ("poll_interval_s = 10", 'poll_interval_s = "10s"',
     "devices.meter1.poll_interval_s = '10s': expected a number of seconds from 0.05 to 604800"),
    ('port = "/dev/ttyUSB0"', 'port = "/dev/ttyUSB0"\nbaudrate = 9600.0',
     "buses.rs485.baudrate = 9600.0: expected one of 1200, 2400"),
    ('id = "gw-01"', "id = 1", "gateway.id = 1: expected a gateway id: 1-64 characters of "
     "lowercase"),
    ('[devices.meter1]', '[devices.meter1]\npoints = 3',
     "devices.meter1.points = 3: expected a table"),
])
def test_wrong_types(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    one(tmp_path, BASE.replace(old, new), fragment)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path, found = problems(tmp_path, BASE + "\n[devices.x\n")
    assert len(found) == 1 and found[0].startswith(f"{path}: not valid TOML: ")


# --- values -------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", [0, 248, 255, -1, 300])
def test_unit_id_outside_1_to_247(tmp_path: Path, unit: int) -> None:
    one(tmp_path, BASE.replace("unit_id = 1", f"unit_id = {unit}"),
        f"devices.meter1.unit_id = {unit}: expected a unit id from 1 to 247 (0 is broadcast, "
        "248-255 reserved")


@pytest.mark.parametrize("unit", [1, 247])
def test_unit_id_bounds_accepted(tmp_path: Path, unit: int) -> None:
    cfg = load_config(write(tmp_path, BASE.replace("unit_id = 1", f"unit_id = {unit}")))
    assert cfg.devices[0].unit_id == unit


def test_device_on_missing_bus(tmp_path: Path) -> None:
    one(tmp_path, BASE.replace('bus = "rs485"', 'bus = "rs458"'),
        "devices.meter1.bus = 'rs458': expected the name of a bus under [buses] (rs485)")


def test_device_on_invalid_bus_reports_only_the_bus(tmp_path: Path) -> None:
    one(tmp_path, BASE.replace("/dev/ttyUSB0", "ttyUSB0"),
        "buses.rs485.port = 'ttyUSB0': expected a device path")


METER2 = f"""
[devices.meter2]
bus = "rs485"
unit_id = 1
profile = "{METER_REF}"
poll_interval_s = 10
"""


def test_duplicate_unit_id_on_one_bus(tmp_path: Path) -> None:
    one(tmp_path, BASE + METER2, "devices.meter2.unit_id = 1: expected a unit id not already "
        "used on bus 'rs485' (devices.meter1 has it)")


def test_same_unit_id_on_two_buses_is_fine(tmp_path: Path) -> None:
    text = BASE + "[buses.rs485b]\ntype='serial'\nport='/dev/ttyUSB1'\n" + METER2.replace(
        'bus = "rs485"', 'bus = "rs485b"')
    assert [d.unit_id for d in load_config(write(tmp_path, text)).devices] == [1, 1]


@pytest.mark.parametrize(("second", "endpoint"), [
    ("type='tcp'\nhost='10.0.0.5'\n", "tcp 10.0.0.5:502"),
    ("type='tcp'\nhost='10.0.0.5'\nport=502\nframing='rtu'\n", "tcp 10.0.0.5:502"),
    ("type='serial'\nport='socket://10.0.0.5:502'\n", "tcp 10.0.0.5:502"),
])
def test_same_tcp_endpoint_as_two_buses(tmp_path: Path, second: str, endpoint: str) -> None:
    text = BASE + "[buses.a]\ntype='tcp'\nhost='10.0.0.5'\nport=502\n[buses.b]\n" + second
    one(tmp_path, text, f"buses.b: {endpoint} is already buses.a; expected each physical line")


def test_same_serial_port_as_two_buses(tmp_path: Path) -> None:
    one(tmp_path, BASE + "[buses.again]\ntype='serial'\nport='/dev/ttyUSB0'\nbaudrate=19200\n",
        "buses.again: serial /dev/ttyUSB0 is already buses.rs485")


@pytest.mark.parametrize(("point", "fragment"), [
    ("table='holding_register'\naddress=65536\ntype='uint16'",
     "devices.meter1.extra_points.x.address = 65536: expected an integer address from 0 to 65535"),
    ("table='holding_register'\naddress=65535\ntype='float32'",
     "devices.meter1.extra_points.x.address = 65535: expected an address whose 2 item(s) end"),
    ("table='input_register'\naddress=0\ntype='float32'\ncount=1",
     "devices.meter1.extra_points.x.count = 1: expected 2 (registers of type float32)"),
    ("table='holding_register'\naddress=0\ntype='string'\nlength=126",
     "devices.meter1.extra_points.x.length = 126: expected a string length of 1 to 125"),
    ("table='input_register'\naddress=0\ntype='uint16'\ninterval_s=0.01",
     "devices.meter1.extra_points.x.interval_s = 0.01: expected a number of seconds from 0.05 "
     "to 604800"),
    ("table='coil'\naddress=0\ntype='uint16'",
     "devices.meter1.extra_points.x.type = 'uint16': expected 'bool' (coil holds single bits)"),
])
def test_bad_extra_points(tmp_path: Path, point: str, fragment: str) -> None:
    one(tmp_path, BASE + f"[devices.meter1.extra_points.x]\n{point}\n", fragment)


def test_extra_point_may_not_shadow_a_profile_point(tmp_path: Path) -> None:
    one(tmp_path, BASE + "[devices.meter1.extra_points.voltage_l1]\ntable='input_register'\n"
        "address=200\ntype='float32'\n",
        "devices.meter1.extra_points.voltage_l1: the profile already has a point 'voltage_l1'")


def test_override_of_a_point_the_profile_lacks(tmp_path: Path) -> None:
    one(tmp_path, BASE + "[devices.meter1.points.voltage_l9]\nscale = 2\n",
        "devices.meter1.points.voltage_l9: profile 'test_meter' has no point 'voltage_l9'; "
        "expected one of: voltage_l1, current_l1, power_total, energy_import")


@pytest.mark.parametrize(("override", "fragment"), [
    ("scale = 0", "devices.meter1.points.voltage_l1.scale = 0.0: expected a non-zero number"),
    ("deadband = -1", "devices.meter1.points.voltage_l1.deadband = -1.0: expected a number >= 0"),
    ("interval_s = 0.01",
     "voltage_l1.interval_s = 0.01: expected a number of seconds from 0.05 to 604800"),
    ("enabled = 'no'", "devices.meter1.points.voltage_l1.enabled = 'no': expected a boolean"),
    ("unit = 5", "devices.meter1.points.voltage_l1.unit = 5: expected a string"),
])
def test_bad_override_values(tmp_path: Path, override: str, fragment: str) -> None:
    one(tmp_path, BASE + f"[devices.meter1.points.voltage_l1]\n{override}\n", fragment)


def test_scale_on_a_bool_point_is_rejected(tmp_path: Path) -> None:
    text = BASE.replace(METER_REF, LAMP_REF) + "[devices.meter1.points.lamp_fault]\nscale=2\n"
    one(tmp_path, text, "devices.meter1.points.lamp_fault.scale = 2.0: expected no scale on a "
        "bool point")


def test_disabling_every_point_is_rejected(tmp_path: Path) -> None:
    text = BASE + "".join(f"[devices.meter1.points.{p}]\nenabled = false\n" for p in (
        "voltage_l1", "current_l1", "power_total", "energy_import"))
    one(tmp_path, text, "devices.meter1: every point is disabled; expected at least one point")


@pytest.mark.parametrize("interval", [0.049, 0.0, -1])
def test_poll_interval_below_50_ms(tmp_path: Path, interval: float) -> None:
    one(tmp_path, BASE.replace("poll_interval_s = 10", f"poll_interval_s = {interval}"),
        f"devices.meter1.poll_interval_s = {float(interval)!r}: expected a number of seconds "
        "from 0.05 to 604800")


def test_poll_interval_of_50_ms_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE.replace("poll_interval_s = 10",
                                                   "poll_interval_s = 0.05")))
    assert cfg.devices[0].poll_interval_s == 0.05


@pytest.mark.parametrize(("parity", "stopbits"), [("E", 2), ("O", 2), ("N", 2), ("N", 1)])
def test_legal_serial_characters(tmp_path: Path, parity: str, stopbits: int) -> None:
    # 8E2 and 8O2 make 12-bit characters: unusual, but legal on the line.
    text = BASE.replace('port = "/dev/ttyUSB0"',
                        f'port = "/dev/ttyUSB0"\nparity = "{parity}"\nstopbits = {stopbits}')
    bus = load_config(write(tmp_path, text)).buses["rs485"]
    assert isinstance(bus, SerialBus)
    assert (bus.parity.value, bus.stopbits) == (parity, stopbits)


@pytest.mark.parametrize(("setting", "fragment"), [
    ("baudrate = 9601", "buses.rs485.baudrate = 9601: expected one of 1200, 2400, 4800, 9600"),
    ("baudrate = 230400", "buses.rs485.baudrate = 230400: expected one of 1200"),
    ("parity = 'X'", "buses.rs485.parity = 'X': expected one of 'N', 'E', 'O'"),
    ("stopbits = 1.5", "buses.rs485.stopbits = 1.5: expected 1 or 2"),
    ("retries = 4", "buses.rs485.retries = 4: expected an integer from 0 to 3"),
    ("timeout_ms = 0", "buses.rs485.timeout_ms = 0.0: expected a number of milliseconds from 1"),
    ("inter_frame_gap_ms = -1", "buses.rs485.inter_frame_gap_ms = -1.0: expected a number of "
     "milliseconds from 0 to 1000"),
])
def test_bad_serial_settings(tmp_path: Path, setting: str, fragment: str) -> None:
    one(tmp_path, BASE.replace('port = "/dev/ttyUSB0"', f'port = "/dev/ttyUSB0"\n{setting}'),
        fragment)


def test_no_reply_guard_is_set_per_bus_and_bounded(tmp_path: Path) -> None:
    text = BASE.replace('port = "/dev/ttyUSB0"', 'port = "/dev/ttyUSB0"\nno_reply_guard_ms = 750')
    bus = load_config(write(tmp_path, text)).buses["rs485"]
    assert isinstance(bus, SerialBus) and bus.no_reply_guard_s == 0.75
    default = load_config(write(tmp_path, BASE)).buses["rs485"]
    assert isinstance(default, SerialBus) and default.no_reply_guard_s is None
    one(tmp_path, BASE.replace('port = "/dev/ttyUSB0"',
                               'port = "/dev/ttyUSB0"\nno_reply_guard_ms = 6000'),
        "buses.rs485.no_reply_guard_ms = 6000.0: expected a number of milliseconds from 0 to 5000")


@pytest.mark.parametrize("port", ["socket://10.1.1.1:4001", "rfc2217://conv.local:2217",
                                  "socket://[fd00::7]:4001", "/dev/ttyAMA0", "/dev/null",
                                  "/dev/serial/by-id/usb-FTDI-if00-port0"])
def test_serial_port_forms(tmp_path: Path, port: str) -> None:
    bus = load_config(write(tmp_path, BASE.replace("/dev/ttyUSB0", port))).buses["rs485"]
    assert isinstance(bus, SerialBus) and bus.port == port


def test_a_serial_port_may_be_a_link_to_a_device_or_not_there_yet(tmp_path: Path) -> None:
    # The simulator (and the demo) link a PTY at a path of their own: pyserial never creates
    # a file at a port, so a link not made yet is harmless; once there it must be a device.
    link = tmp_path / "rs485"
    assert load_config(write(tmp_path, BASE.replace("/dev/ttyUSB0", str(link)))).buses
    link.symlink_to("/dev/null")
    assert load_config(write(tmp_path, BASE.replace("/dev/ttyUSB0", str(link)))).buses
    # Left dangling by a simulator that was killed: nothing to open, nothing pyserial creates.
    link.unlink()
    link.symlink_to("/dev/pts/999999")
    assert load_config(write(tmp_path, BASE.replace("/dev/ttyUSB0", str(link)))).buses


@pytest.mark.parametrize("port", ["ttyUSB0", "socket://host", "tcp://h:1", "", "COM3",
                                  "dev/ttyUSB0", "./ttyUSB0"])
def test_bad_serial_ports(tmp_path: Path, port: str) -> None:
    one(tmp_path, BASE.replace("/dev/ttyUSB0", port),
        f"buses.rs485.port = {port!r}: expected a device path")


@pytest.mark.parametrize(("port", "why"), [
    # pyserial schemes with powers no bus needs: spy:// writes (truncates) the file it names.
    ("spy:///dev/ttyUSB0?file=/var/lib/edge-agent/trust.json", "scheme 'spy://' is not allowed"),
    ("spy:///dev/ttyUSB0", "scheme 'spy://' is not allowed"),
    ("SPY:///dev/ttyUSB0", "scheme 'spy://' is not allowed"),
    ("loop://", "scheme 'loop://' is not allowed"),
    ("alt:///dev/ttyUSB0?class=PosixPollSerial", "scheme 'alt://' is not allowed"),
    ("hwgrep://0403:6001", "scheme 'hwgrep://' is not allowed"),
    ("cp2110://0001:0004:00", "scheme 'cp2110://' is not allowed"),
    ("socket://10.0.0.5:502?logging=debug", "no path or options"),
    ("rfc2217://conv:2217/x", "no path or options"),
    ("SOCKET://10.0.0.5:502", "lowercase"),
    ("socket://10.0.0.5:70000", "a port from 1 to 65535"),
    ("/dev/../etc/passwd", "no '..'"),
    ("/dev//ttyUSB0", "no '..', '.' or empty components"),
    ("/dev/ttyUSB0\x00", "no NUL or control characters"),
    ("/etc/passwd", "/etc/passwd is not a device: it resolves to /etc/passwd"),
])
def test_serial_ports_pyserial_would_misuse_are_refused(tmp_path: Path, port: str,
                                                         why: str) -> None:
    text = BASE.replace('"/dev/ttyUSB0"', json.dumps(port))
    message = one(tmp_path, text, "buses.rs485.port = ", "expected a device path such as "
                  "/dev/serial/by-id/... (absolute, or a link to a device) or a pyserial URL "
                  "socket://host:port or rfc2217://host:port (", why)
    assert "\x00" not in message  # shown escaped, never raw


def test_a_port_linked_to_a_state_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trust.json").write_text("{}")
    (tmp_path / "port").symlink_to(tmp_path / "trust.json")
    one(tmp_path, BASE.replace("/dev/ttyUSB0", str(tmp_path / "port")),
        f"it resolves to {os.path.realpath(tmp_path / 'trust.json')}, not a character device")


@pytest.mark.parametrize(("setting", "fragment"), [
    ("host='tcp://10.0.0.1'", "buses.t.host = 'tcp://10.0.0.1': expected a host name or IP"),
    ("host='h'\nport=0", "buses.t.port = 0: expected a TCP port from 1 to 65535"),
    ("host='h'\nframing='ascii'", "buses.t.framing = 'ascii': expected one of 'socket', 'rtu'"),
    ("host='h'\ntimeout_ms='1s'", "buses.t.timeout_ms = '1s': expected a number of milliseconds"),
])
def test_bad_tcp_settings(tmp_path: Path, setting: str, fragment: str) -> None:
    one(tmp_path, BASE + f"[buses.t]\ntype='tcp'\n{setting}\n", fragment)


def test_bad_bus_type(tmp_path: Path) -> None:
    one(tmp_path, BASE.replace('type = "serial"', 'type = "rs485"'),
        "buses.rs485.type = 'rs485': expected 'serial' or 'tcp'")


@pytest.mark.parametrize(("gid", "why"), [
    ("gw/01", "it must not contain '/'"), ("gw 01", "it must not contain ' '"),
    ("", "it is empty"), ("x" * 65, "it has 65 characters"),
    ("GW-01", "it has uppercase letters (did you mean 'gw-01'?)"),
    ("-gw", "it must not start with '-'"), ("$gw", "it must not start with '$'"),
])
def test_gateway_id_follows_the_one_id_rule(tmp_path: Path, gid: str, why: str) -> None:
    # protocol.ids.check_gateway_id: the rule the fleet's enrolment and broker files use too.
    one(tmp_path, BASE.replace('id = "gw-01"', f'id = "{gid}"'),
        f": gateway.id: gateway id '{gid[:40]}", f"is not valid: {why}", f"expected {ID_RULE}")


@pytest.mark.parametrize("gid", ["fleet", "ingest", "fleet-north", "admin"])
def test_gateway_id_of_the_operations_centre_is_refused(tmp_path: Path, gid: str) -> None:
    one(tmp_path, BASE.replace('id = "gw-01"', f'id = "{gid}"'),
        f": gateway.id: gateway id {gid!r} is reserved")


@pytest.mark.parametrize("gid", ["CHANGE-ME", "change-me"])
def test_the_scan_drafts_placeholder_id_is_refused_clearly(tmp_path: Path, gid: str) -> None:
    one(tmp_path, BASE.replace('id = "gw-01"', f'id = "{gid}"'),
        f"gateway.id = {gid!r}: expected this gateway's own id, not the placeholder of a draft "
        "config (edge-agent scan)")


def test_the_site_is_free_text(tmp_path: Path) -> None:
    text = BASE.replace('id = "gw-01"', 'id = "gw-01"\nsite = "Harbour Rd / Mill St #7, Ü"')
    assert load_config(write(tmp_path, text)).site == "Harbour Rd / Mill St #7, Ü"


@pytest.mark.parametrize("prefix", ["a/+/b", "edge/#", "/edge", "edge/", "$SYS"])
def test_bad_topic_prefix(tmp_path: Path, prefix: str) -> None:
    one(tmp_path, BASE.replace('url = "mqtt://broker.example"',
                               f'url = "mqtt://broker.example"\ntopic_prefix = "{prefix}"'),
        f"mqtt.topic_prefix = {prefix!r}: expected topic levels")


def test_empty_devices_table(tmp_path: Path) -> None:
    text = BASE.split("[devices.meter1]")[0] + "[devices]\n"
    one(tmp_path, text, "devices: no devices; expected at least one [devices.NAME] table")


def test_missing_devices_table(tmp_path: Path) -> None:
    one(tmp_path, BASE.split("[devices.meter1]")[0], "devices: no devices")


def test_missing_required_keys(tmp_path: Path) -> None:
    path, found = problems(tmp_path, "[devices.m]\nbus='x'\nprofile='nope'\n")
    assert found == [
        f"{path}: gateway.id: missing; expected a gateway id: {ID_RULE}",
        f"{path}: mqtt.url: missing; expected mqtt://host[:port], mqtts://host[:port] or "
        "unix:///path/to/socket",
        f"{path}: devices.m.bus = 'x': expected the name of a bus under [buses] (none is "
        "defined)",
        f"{path}: devices.m.unit_id: missing; expected a unit id from 1 to 247 (0 is broadcast, "
        "248-255 reserved: serial line V1.02, 2.2)",
        f"{path}: devices.m.poll_interval_s: missing; expected a number of seconds from 0.05 "
        "to 604800",
        f"{path}: devices.m.profile = 'nope': expected a shipped profile ("
        + (", ".join(shipped_profiles()) or "none")
        + f") or a profile file; there is no file at {tmp_path / 'nope'}",
    ]


# --- profiles -----------------------------------------------------------------------------

def test_profile_by_path_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "m.toml").write_text(METER.read_text())
    cfg = load_config(write(tmp_path, BASE.replace(METER_REF, "profiles/m.toml")))
    assert cfg.devices[0].profile.name == "test_meter"


def test_profile_errors_name_the_profile_file_and_key(tmp_path: Path) -> None:
    path, found = problems(tmp_path, BASE.replace(METER_REF, BROKEN_REF))
    broken = os.path.realpath(tmp_path / BROKEN_REF)
    assert found == [
        f"{path}: devices.meter1.profile: profile {BROKEN_REF!r} is invalid: {broken}: "
        "points.far.address = 70000: expected an integer address from 0 to 65535",
        f"{path}: devices.meter1.profile: profile {BROKEN_REF!r} is invalid: {broken}: "
        "points.miscounted.count = 3: expected 2 (registers of type float32)",
    ]


def test_a_broken_profile_shared_by_devices_is_reported_once(tmp_path: Path) -> None:
    text = (BASE + METER2.replace("unit_id = 1", "unit_id = 2")).replace(METER_REF, BROKEN_REF)
    _, found = problems(tmp_path, text)
    assert len(found) == 2 and all("devices.meter1.profile" in p for p in found)


# --- MQTT credentials and TLS -------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA-style certificate with its key, and a second unrelated key."""
    d = tmp_path_factory.mktemp("tls")
    for stem in ("client", "other"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(d / f"{stem}.key"), "-out", str(d / f"{stem}.crt"),
             "-subj", f"/CN={stem}", "-days", "2"],
            check=True, capture_output=True, timeout=60)
    (d / "garbage.pem").write_text("not a certificate\n")
    return d


@pytest.fixture
def tls_files(tmp_path: Path, tls_made: Path) -> Path:
    """The TLS files copied into the test's directory, where its config may name them."""
    d = tmp_path / "tls"
    shutil.copytree(tls_made, d)
    return d


def tls_config(url: str, **files: str) -> str:
    """BASE with the broker URL replaced and TLS file keys added."""
    keys = "".join(f'{k} = "{v}"\n' for k, v in files.items())
    return BASE.replace('url = "mqtt://broker.example"\n', f'url = "{url}"\n{keys}')


def test_tls_config_loads(tmp_path: Path, tls_files: Path) -> None:
    cfg = load_config(write(tmp_path, tls_config(
        "mqtts://broker.example", ca_file=str(tls_files / "client.crt"),
        cert_file=str(tls_files / "client.crt"), key_file=str(tls_files / "client.key"))))
    assert cfg.mqtt.tls and cfg.mqtt.port == 8883
    assert (cfg.mqtt.ca_file, cfg.mqtt.key_file) == (tls_files / "client.crt",
                                                     tls_files / "client.key")


def test_tls_files_relative_to_the_config(tmp_path: Path, tls_files: Path) -> None:
    (tmp_path / "ca.pem").write_bytes((tls_files / "client.crt").read_bytes())
    cfg = load_config(write(tmp_path, tls_config("mqtts://b", ca_file="ca.pem")))
    assert cfg.mqtt.ca_file == tmp_path / "ca.pem"


def test_tls_files_with_plain_mqtt(tmp_path: Path, tls_files: Path) -> None:
    one(tmp_path, tls_config("mqtt://broker.example", ca_file=str(tls_files / "client.crt")),
        "mqtt.url = 'mqtt://broker.example': expected an mqtts:// URL, since ca_file ask")


def test_cert_without_key(tmp_path: Path, tls_files: Path) -> None:
    one(tmp_path, tls_config("mqtts://b", cert_file=str(tls_files / "client.crt")),
        "mqtt.key_file: missing; expected one with mqtt.cert_file")


def test_key_that_does_not_match_the_cert(tmp_path: Path, tls_files: Path) -> None:
    one(tmp_path, tls_config("mqtts://b", cert_file=str(tls_files / "client.crt"),
                             key_file=str(tls_files / "other.key")),
        "mqtt.key_file: ", "expected a PEM certificate and its unencrypted private key")


def test_missing_ca_file(tmp_path: Path) -> None:
    one(tmp_path, tls_config("mqtts://b", ca_file="certs/ca.pem"),
        "mqtt.ca_file = 'certs/ca.pem': expected a readable file (No such file or directory: "
        f"{tmp_path / 'certs' / 'ca.pem'})")


def test_ca_file_that_is_not_pem(tmp_path: Path, tls_files: Path) -> None:
    assert tls_files == tmp_path / "tls"
    one(tmp_path, tls_config("mqtts://b", ca_file="tls/garbage.pem"),
        "mqtt.ca_file = 'tls/garbage.pem': expected a PEM file of CA certificates")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_ca_file(tmp_path: Path, tls_files: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes((tls_files / "client.crt").read_bytes())
    ca.chmod(0)
    one(tmp_path, tls_config("mqtts://b", ca_file="ca.pem"),
        "mqtt.ca_file = 'ca.pem': expected a readable file (Permission denied")


def test_ca_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    one(tmp_path, tls_config("mqtts://b", ca_file="certs"),
        "mqtt.ca_file = 'certs': expected a readable file (Is a directory: ")


def test_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    cfg = load_config(write(tmp_path, tls_config("mqtt://b", username="gw",
                                                 password_file="pw")))
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("gw", "hunter2")


def test_password_problems_never_show_the_secret(tmp_path: Path) -> None:
    text = BASE.replace('url = "mqtt://broker.example"',
                        'url = "mqtt://b"\nusername = "gw"\npassword = 271828')
    message = one(tmp_path, text, "mqtt.password = <hidden>: expected a non-empty string")
    assert "271828" not in message


@pytest.mark.parametrize(("keys", "fragment"), [
    ({"password": "x"}, "mqtt.password: given without mqtt.username"),
    ({"username": "u", "password": "x", "password_file": "pw"},
     "mqtt.password_file: given with mqtt.password; expected one of the two"),
    ({"username": "u", "password_file": "empty"}, "expected a file holding the password"),
])
def test_password_combinations(tmp_path: Path, keys: dict[str, str], fragment: str) -> None:
    (tmp_path / "pw").write_text("x")
    (tmp_path / "empty").write_text("\n")
    one(tmp_path, tls_config("mqtt://b", **keys), fragment)


# --- files a config names: only its directory and the state dir ---------------------------

def pw_config(name: str, extra: str = "") -> str:
    """BASE logging in with a password file called ``name``."""
    return BASE.replace('url = "mqtt://broker.example"\n',
                        f'url = "mqtt://broker.example"\nusername = "gw"\n'
                        f"password_file = {json.dumps(name)}\n") + extra


@pytest.mark.parametrize("name", ["../../../etc/passwd", "../outside/pw", "/etc/passwd",
                                  "sub/../../outside/pw"])
def test_a_password_file_outside_the_config_and_state_dirs_is_refused(tmp_path: Path,
                                                                      name: str) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "pw").write_text("stolen\n")
    (tmp_path / "site" / "sub").mkdir(parents=True)
    message = one(tmp_path / "site", pw_config(name),
                  f"mqtt.password_file = {name!r}: expected a file in the config's directory or "
                  f"the state dir, {os.path.realpath(tmp_path / 'site')} or /var/lib/edge-agent",
                  "files elsewhere are not read")
    assert "stolen" not in message


def test_a_symlink_out_of_the_config_dir_is_judged_by_its_target(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "pw").write_text("stolen\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "pw").symlink_to(tmp_path / "outside" / "pw")
    one(site, pw_config("pw"), "mqtt.password_file = 'pw': expected a file in the config's",
        f"(pw resolves to {os.path.realpath(tmp_path / 'outside' / 'pw')})")


def test_files_in_the_state_dir_and_inner_links_are_allowed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "mqtt.password").write_text("from-enrolment\n")
    site = tmp_path / "etc"
    site.mkdir()
    (site / "pw").symlink_to(state / "mqtt.password")
    text = pw_config(str(state / "mqtt.password")).replace(
        "[gateway]", f"[gateway]\nstate_dir = {json.dumps(str(state))}")
    assert load_config(write(site, text)).mqtt.password == "from-enrolment"
    text = pw_config("pw").replace("[gateway]", "[gateway]\nstate_dir = '../state'")
    assert load_config(write(site, text)).mqtt.password == "from-enrolment"


@pytest.mark.parametrize(("content", "fragment"), [
    ("line one\nline two\n", "a file holding the password on one line (it has several lines)"),
    ("x" * 5000, "a file of at most 4096 bytes"),
    ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n", "on one line"),
])
def test_a_password_file_is_one_short_line(tmp_path: Path, content: str, fragment: str) -> None:
    # A key, a certificate or a config is never a password: refused without showing it.
    (tmp_path / "pw").write_text(content)
    message = one(tmp_path, pw_config("pw"), "mqtt.password_file = ", fragment)
    assert "line one" not in message and "MIGH" not in message


def test_a_password_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pw")
    one(tmp_path, pw_config("pw"), "mqtt.password_file = 'pw': expected a readable file (Not a "
        "regular file")


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_tls_files_outside_are_refused(tmp_path: Path, key: str) -> None:
    _, found = problems(tmp_path, tls_config("mqtts://b", **{key: "/etc/ssl/../passwd"}))
    assert any(f"mqtt.{key} = '/etc/ssl/../passwd': expected a file in the config's directory"
               in p for p in found), found


@pytest.mark.parametrize("ref", ["../profiles/meter.toml", str(METER)])
def test_a_profile_file_outside_is_refused(tmp_path: Path, ref: str) -> None:
    one(tmp_path, BASE.replace(METER_REF, ref),
        "devices.meter1.profile = ", "expected a shipped profile or a profile file: "
        "a file in the config's directory or the state dir")


def test_a_state_dir_with_a_nul_is_refused(tmp_path: Path) -> None:
    one(tmp_path, BASE.replace("[gateway]", '[gateway]\nstate_dir = "a\\u0000b"'),
        "gateway.state_dir = 'a\\x00b': expected a directory path")


# --- intake: encoding, size, nesting, parser failures -------------------------------------

LATIN1 = BASE.encode() + "[devices.meter1.points.voltage_l1]\nunit = \"°C\"\n".encode("latin-1")


def test_a_latin1_config_names_the_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    write(tmp_path, "")
    path.write_bytes(LATIN1)
    offset = LATIN1.index(b"\xb0")
    line = LATIN1[:offset].count(b"\n") + 1
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: not UTF-8: byte 0xb0 at offset {offset} (line {line}, column 9) is not valid "
        "UTF-8; expected a UTF-8 file (re-save it as UTF-8; Latin-1 and other 8-bit encodings "
        "are not read)"]


def test_check_config_on_a_latin1_file_prints_one_numbered_problem_and_exits_2(
        tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(LATIN1)
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(str(path), out=out, err=err) == 2
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"1. {path}: not UTF-8: byte 0xb0 at offset "), lines
    assert lines[1] == f"1 problem found in {path}; nothing was changed"
    # The real command, as the unit's ExecStartPre runs it: exit 2, no traceback.
    res = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr and "not UTF-8: byte 0xb0" in res.stderr, res.stderr


@pytest.mark.parametrize(("tail", "fragment"), [
    # inline arrays and tables: tomllib recurses per level (RecursionError inside it)
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply; expected at most 16 levels"),
    ("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
    # within the recursion limit, and dotted keys, which nest without recursing
    ("x = " + "[" * 30 + "]" * 30 + "\n", "nested more than 16 levels deep"),
    (".".join(["k"] * 5000) + " = 1\n", "nested more than 16 levels deep"),
])
def test_deep_nesting_is_refused(tmp_path: Path, tail: str, fragment: str) -> None:
    path, found = problems(tmp_path, "[planner]\n" + tail)
    assert len(found) == 1 and found[0].startswith(f"{path}: "), found
    assert fragment in found[0], found


def test_a_config_over_1_mib_is_refused(tmp_path: Path) -> None:
    path, found = problems(tmp_path, BASE + "# " + "x" * (1024 * 1024) + "\n")
    assert found == [f"{path}: larger than 1048576 bytes (1 MiB); expected a config of at most "
                     "that size"]


def test_parser_failures_beyond_syntax_are_problems_of_the_file(tmp_path: Path) -> None:
    # tomllib raises plain ValueError past Python's 4300-digit integer limit.
    path, found = problems(tmp_path, BASE + "[planner]\nmax_gap = " + "9" * 5000 + "\n")
    assert len(found) == 1 and found[0].startswith(f"{path}: not valid TOML: ValueError: "), found


def test_an_integer_too_large_for_a_float_is_a_bad_value(tmp_path: Path) -> None:
    big = "9" * 400
    one(tmp_path, BASE.replace("poll_interval_s = 10", f"poll_interval_s = {big}"),
        "devices.meter1.poll_interval_s = 9999", "expected a number of seconds from 0.05 to 604800")


def test_control_characters_in_key_names_are_shown_escaped(tmp_path: Path) -> None:
    text = BASE.replace('id = "gw-01"', 'id = "gw-01"\n"a\\nb\\u001b[2J" = 1')
    message = one(tmp_path, text, "gateway.a\\nb\\x1b[2J: unknown key")
    assert "\n" not in message and "\x1b" not in message


def test_a_config_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: cannot read: Not a regular file"]


# --- all problems at once; purity ---------------------------------------------------------

def test_five_mistakes_are_all_reported(tmp_path: Path) -> None:
    text = (BASE.replace('id = "gw-01"', 'id = "gw 01"')
            .replace("unit_id = 1", "unit_id = 0")
            .replace('port = "/dev/ttyUSB0"', 'port = "/dev/ttyUSB0"\nbaudrate = 9601')
            .replace("mqtt://broker.example", "mqtt://broker.example:99999")
            + "[devices.meter1.points.no_such_point]\nscale = 2\n")
    path, found = problems(tmp_path, text)
    assert len(found) == 5, found
    for key in ("gateway.id", "mqtt.url", "buses.rs485.baudrate", "devices.meter1.unit_id",
                "devices.meter1.points.no_such_point"):
        assert sum(p.startswith(f"{path}: {key}") for p in found) == 1, (key, found)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("valid", [True, False])
def test_loading_writes_nothing(tmp_path: Path, valid: bool) -> None:
    text = BASE.replace("[gateway]", "[gateway]\nstate_dir = 'state'")
    path = write(tmp_path, text if valid else text.replace("unit_id = 1", "unit_id = 0"))
    before = snapshot(tmp_path)
    if valid:
        assert load_config(path).state_dir == tmp_path / "state"
    else:
        with pytest.raises(ConfigError):
            load_config(path)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "state").exists()


# --- check-config -------------------------------------------------------------------------

def test_check_config_prints_numbered_problems_and_returns_2(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("unit_id = 1", "unit_id = 0").replace(
        "poll_interval_s = 10", "poll_interval_s = 0"))
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(str(path), out=out, err=err) == 2
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"1. {path}: devices.meter1.unit_id = 0: expected")
    assert lines[1].startswith(f"2. {path}: devices.meter1.poll_interval_s = 0.0: expected")
    assert lines[2] == f"2 problems found in {path}; nothing was changed"


def test_check_config_on_a_missing_file(tmp_path: Path) -> None:
    err = io.StringIO()
    assert check_config_main(str(tmp_path / "nope.toml"), out=io.StringIO(), err=err) == 2
    assert err.getvalue().splitlines() == [
        f"1. {tmp_path / 'nope.toml'}: file not found",
        f"1 problem found in {tmp_path / 'nope.toml'}; nothing was changed"]


def test_check_config_prints_the_summary_and_returns_0() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(str(DATA / "full-site.toml"), out=out, err=err) == 0
    assert err.getvalue() == ""
    text = out.getvalue()
    for fragment in (
        "gateway cab-0042 at Main St / 5th Ave cabinet",
        "broker mqtt://broker.example.net; user cab-0042 with password; client id edge-cab-0042",
        "bus rs485a: serial /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1ABC-if00-port0 "
        "9600 8E1, frame gap 4.01 ms (derived), timeout 0.25 s, retries 0",
        "bus rs485b: serial rfc2217://10.20.0.7:4001 19200 8N2, frame gap 5 ms, timeout ",
        "bus plc: tcp 10.20.0.5:502 framing socket, timeout 1 s (derived), retries 1",
        "bus converter: tcp 10.20.0.6:4001 framing rtu, timeout 0.8 s, retries 2",
        "  (no devices)",
        "total: 4 buses, 4 devices, 16 points, ",
    ):
        assert fragment in text, (fragment, text)
    assert "s3cret" not in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  meter")]
    # Input registers, max_gap 8. meter1: voltage 0-1 | power 0x34-0x35 | frequency and
    # energy 0x46-0x49 (contiguous) = 3 reads; meter2: voltage 0-1 and current 6-7 (hole of 4)
    # | power | energy (holes of 16 and 18 stay apart) = 3 reads.
    assert rows == [["meter1", "1", "test_meter", "4", "15", "s", "3"],
                    ["meter2", "2", "test_meter", "4", "15", "s", "3"]]


ONE_POINT = """
[points.power]
table = "input_register"
address = 0
type = "float32"
"""


@pytest.mark.parametrize(("devices", "expected", "code"), [
    (1, "utilisation 75% (turnaround 10 ms assumed)", 0),
    (2, "utilisation 150% (turnaround 10 ms assumed)", 2),
])
def test_check_config_budgets_serial_lines_and_fails_over_capacity(
        tmp_path: Path, devices: int, expected: str, code: int) -> None:
    # 9600 8E1: 11 bits a character, 1.1458 ms. One float32 read: 8-byte request and 9-byte
    # reply = 17 characters (19.48 ms) + 2 x 3.5 characters of silence (8.02 ms) + 10 ms of
    # device turnaround = 37.5 ms, every 50 ms: 75 % of the line per device.
    (tmp_path / "one.toml").write_text(ONE_POINT)
    text = BASE.replace(METER_REF, "one.toml").replace("poll_interval_s = 10",
                                                         "poll_interval_s = 0.05")
    text += "".join(METER2.replace("meter2", f"m{i}").replace("unit_id = 1", f"unit_id = {i}")
                    .replace(METER_REF, "one.toml").replace("= 10", "= 0.05")
                    for i in range(2, devices + 1))
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(str(write(tmp_path, text)), out=out, err=err) == code
    assert expected in out.getvalue(), out.getvalue()
    if code:
        assert "over capacity (150%): poll no faster than every 0.07 s" in err.getvalue(), \
            err.getvalue()


EXAMPLE = REPO / "configs" / "example-site.toml"


def test_the_shipped_example_site_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert {d.profile.name for d in cfg.devices} == {
        "energy_meter", "water_meter", "streetlight", "env_monitor", "pipe_sensor"}
    assert {type(b).__name__ for b in cfg.buses.values()} == {"SerialBus", "TcpBus"}
    out = io.StringIO()
    assert check_config_main(str(EXAMPLE), out=out, err=io.StringIO()) == 0
    assert "total: 4 buses, 7 devices" in out.getvalue()


def test_check_config_writes_to_the_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(EXAMPLE)) == 0
    assert "gateway cab-0117" in capsys.readouterr().out


def test_every_toml_example_in_the_docs_parses() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    blocks = text.split("```toml\n")[1:]
    assert len(blocks) >= 4
    for block in blocks:
        tomllib.loads(block.split("```")[0])


# --- numbers the scheduler cannot keep: refused at load, never an exception later ---------

@pytest.mark.parametrize(("setting", "fragment"), [
    ("poll_interval_s = inf", "devices.meter1.poll_interval_s = inf: expected a finite number"),
    ("poll_interval_s = nan", "devices.meter1.poll_interval_s = nan: expected a finite number"),
    ("poll_interval_s = -inf", "devices.meter1.poll_interval_s = -inf: expected a finite"),
    ("poll_interval_s = 1e300", "devices.meter1.poll_interval_s = 1e+300: expected a number "
                                "of seconds from 0.05 to 604800"),
    ("poll_interval_s = 604801", "expected a number of seconds from 0.05 to 604800"),
])
def test_non_finite_and_huge_poll_intervals_are_refused(tmp_path: Path, setting: str,
                                                         fragment: str) -> None:
    one(tmp_path, BASE.replace("poll_interval_s = 10", setting), fragment)


@pytest.mark.parametrize(("section", "fragment"), [
    ("[gateway]\nhealth_interval_s = inf", "gateway.health_interval_s = inf: expected a finite"),
    ("[gateway]\nhealth_interval_s = 1e9", "expected a number of seconds from 1 to 86400"),
    ("[batch]\nwindow_s = inf", "batch.window_s = inf: expected a finite number"),
    ("[batch]\nwindow_s = 1e300", "batch.window_s = 1e+300: expected a number of seconds above 0"),
    ("[batch]\nmax_silence_s = nan", "batch.max_silence_s = nan: expected a finite number"),
    ("[spool]\nreplay_bytes_per_s = inf", "spool.replay_bytes_per_s = inf: expected a finite"),
])
def test_non_finite_and_huge_durations_elsewhere_are_refused(tmp_path: Path, section: str,
                                                              fragment: str) -> None:
    table, line = section.split("\n")
    text = BASE.replace(table, f"{table}\n{line}") if table in BASE else f"{BASE}\n{section}\n"
    one(tmp_path, text, fragment)


@pytest.mark.parametrize("interval", ["1e-9", "inf", "1e300"])
def test_a_profile_point_interval_follows_the_same_rule(tmp_path: Path, interval: str) -> None:
    profile = tmp_path / "odd.toml"
    profile.write_text('[profile]\nname = "odd"\n[points.v]\ntable = "input_register"\n'
                       f'address = 0\ntype = "uint16"\ninterval_s = {interval}\n')
    text = BASE.replace(f'profile = "{METER_REF}"', 'profile = "odd.toml"')
    message = one(tmp_path, text, "points.v.interval_s")
    assert "expected a" in message


def test_check_config_refuses_an_infinite_interval_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("poll_interval_s = 10", "poll_interval_s = inf"))
    done = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "poll_interval_s = inf: expected a finite number" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr

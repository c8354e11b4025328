"""The field side of a site config: the [buses] and [devices] sections, checked together.

Each bus names a physical line or host:port once; each device a unit id once per bus, a profile
(shipped or a file beside the config) and that profile's points with the device's overrides and
extra points. Problems go to the loader's Checker, so every one is reported at once.

A serial port is a device path or a ``socket://`` / ``rfc2217://`` URL, nothing else: pyserial
gives other URL schemes powers no bus needs (``spy://`` opens, and truncates, a log file it
names; ``alt://`` picks an implementation class; ``hwgrep://`` opens whatever port matches a
pattern; ``loop://`` is no line at all), and a dry run opens the port before any device answers.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent.config.meters import is_meter_bus, parse_meter_device
from edge_agent.config.model import SAFE_ID, SAFE_ID_TEXT
from edge_agent.config.paths import FileRoots
from edge_agent.drivers.bus import (
    Bus,
    DeviceConfig,
    FieldProtocol,
    Parity,
    SerialBus,
    TcpBus,
    TcpFraming,
)
from edge_agent.drivers.dlt645.meter import MeterProfile
from edge_agent.drivers.model import POLL_TEXT, DataType, Point, poll_interval_ok
from edge_agent.drivers.profile import DeviceProfile, parse_point, parse_profile, shipped_profiles
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.readings import point_text_problem
from edge_agent.protocol.tomlcheck import Checker, load_toml

STANDARD_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
# The Modbus over serial line V1.02 2.2 address space: 0 is broadcast, 248-255 reserved.
UNIT_TEXT = "a unit id from 1 to 247 (0 is broadcast, 248-255 reserved: serial line V1.02, 2.2)"
SERIAL_KEYS = ("type", "port", "baudrate", "parity", "stopbits", "inter_frame_gap_ms",
               "timeout_ms", "retries", "protocol", "no_reply_guard_ms")
TCP_KEYS = ("type", "host", "port", "framing", "timeout_ms", "retries", "no_reply_guard_ms")
DEVICE_KEYS = ("bus", "unit_id", "profile", "poll_interval_s", "points", "extra_points")
OVERRIDE_KEYS = ("interval_s", "deadband", "scale", "offset", "unit", "enabled")
NON_NUMERIC = (DataType.BOOL, DataType.STRING)


# The only pyserial URL schemes a bus may use: a raw TCP tunnel and an RFC 2217 converter.
PORT_SCHEMES = ("socket", "rfc2217")
PORT_TEXT = ("a device path such as /dev/serial/by-id/... (absolute, or a link to a device) or "
             "a pyserial URL socket://host:port or rfc2217://host:port")
_URL_PORT = re.compile(r"(socket|rfc2217)://([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _port_problem(port: str) -> str | None:
    """Why ``port`` is not an allowed serial port, or None if it is one."""
    if "://" in port:
        # pyserial's own test: anything with "://" is a URL, its scheme matched lowercased.
        scheme = port.split("://", 1)[0].lower()
        if scheme not in PORT_SCHEMES:
            return (f"the pyserial URL scheme {scheme + '://'!r} is not allowed: only "
                    "socket:// and rfc2217:// are")
        m = _URL_PORT.fullmatch(port)
        if m is None or not 1 <= int(m.group(3)) <= 65535:
            return (f"a {scheme}:// port is {scheme}://host:port, lowercase, with a port from "
                    "1 to 65535 and no path or options")
        return None
    if not port.startswith("/") or len(port) < 2:
        return "a device path is absolute (pyserial would open a relative one from the " \
               "working directory)"
    if _CONTROL.search(port):
        return "a device path has no NUL or control characters"
    if os.path.normpath(port) != port:
        return "a device path has no '..', '.' or empty components and no trailing '/'"
    real = os.path.realpath(port)
    try:
        mode = os.stat(real).st_mode
    except OSError:
        # Nothing there (yet): an unplugged adapter, a simulator's PTY link not made yet or
        # left dangling. pyserial opens without O_CREAT, so no file can come of it.
        return None
    if not (stat.S_ISCHR(mode) and real.startswith("/dev/")):
        # A path outside /dev is fine as a link to a device (a simulator's PTY link).
        return f"{port} is not a device: it resolves to {real}, not a character device " \
               "under /dev"
    return None


def _serial_endpoint(port: str) -> str:
    """A key naming the physical line an allowed port opens (two buses must not share one)."""
    m = _URL_PORT.fullmatch(port)
    if m is not None:
        return f"tcp {m.group(2).strip('[]').lower()}:{int(m.group(3))}"
    return f"serial {port}"


def _ms(chk: Checker, raw: dict[str, Any], path: str, key: str, low: float,
        high: float) -> float | None:
    ms = chk.get(raw, path, key, float, None, check=lambda v: low <= v <= high,
                 expected=f"a number of milliseconds from {low:g} to {high:g}")
    return None if ms is None else ms / 1000.0


def _retries(chk: Checker, raw: dict[str, Any], path: str) -> int:
    return chk.get(raw, path, "retries", int, 1, check=lambda v: 0 <= v <= 3,
                   expected="an integer from 0 to 3")


def parse_buses(chk: Checker, raw: dict[str, Any]) -> dict[str, Bus]:
    """The [buses] tables; a physical line claimed by two buses is a problem."""
    buses: dict[str, Bus] = {}
    endpoints: dict[str, str] = {}  # physical line -> the bus that claimed it first
    for name, b in raw.items():
        p = f"buses.{name}"
        if not SAFE_ID.fullmatch(name):
            chk.problem(p, name, f"a bus name of {SAFE_ID_TEXT}")
        if not isinstance(b, dict):
            chk.problem(p, b, "a table with type = 'serial' or 'tcp'")
            continue
        kind = chk.get(b, p, "type", str, expected="'serial' or 'tcp'")
        bus: Bus | None
        if kind == "serial":
            bus, endpoint = _serial_bus(chk, name, b, p)
        elif kind == "tcp":
            bus, endpoint = _tcp_bus(chk, name, b, p)
        else:
            if kind is not None:
                chk.problem(f"{p}.type", kind, "'serial' or 'tcp'")
            continue
        if endpoint is not None and endpoint in endpoints:
            chk.note(p, f"{endpoint} is already buses.{endpoints[endpoint]}; expected each "
                     "physical line or host:port once (put all its devices on one bus)")
        elif endpoint is not None:
            endpoints[endpoint] = name
        if bus is not None:
            buses[name] = bus
    return buses


def _serial_bus(chk: Checker, name: str, raw: dict[str, Any],
                p: str) -> tuple[SerialBus | None, str | None]:
    chk.keys(raw, p, SERIAL_KEYS)
    before = len(chk.problems)
    port = chk.get(raw, p, "port", str, expected=PORT_TEXT)
    why = None if port is None else _port_problem(port)
    if why is not None:
        chk.problem(f"{p}.port", port, f"{PORT_TEXT} ({why})")
    baud = chk.get(raw, p, "baudrate", int, 9600, check=lambda v: v in STANDARD_BAUDS,
                   expected="one of " + ", ".join(map(str, STANDARD_BAUDS)))
    # Modbus over serial line V1.02 2.5.1: even parity is the default; 8N2 and 8N1 are common.
    parity = chk.choice(raw, p, "parity", Parity, ["N", "E", "O"], default=Parity.EVEN)
    stopbits = chk.get(raw, p, "stopbits", int, 1, check=lambda v: v in (1, 2),
                       expected="1 or 2")
    gap = _ms(chk, raw, p, "inter_frame_gap_ms", 0, 1000)
    timeout = _ms(chk, raw, p, "timeout_ms", 1, 60000)
    retries = _retries(chk, raw, p)
    guard = _ms(chk, raw, p, "no_reply_guard_ms", 0, 5000)
    protocol = chk.choice(raw, p, "protocol", FieldProtocol, [f.value for f in FieldProtocol],
                          default=FieldProtocol.MODBUS)
    if protocol is FieldProtocol.DLT645 and port is not None and port.startswith("rfc2217://"):
        # The meter transport reads through the event loop, which needs a file descriptor;
        # pyserial's RFC 2217 client has none.
        chk.problem(f"{p}.port", port, "a device path or socket://host:port on a DL/T 645 "
                    "bus (rfc2217:// is supported on Modbus buses only)")
    endpoint = _serial_endpoint(port) if port is not None and why is None else None
    if len(chk.problems) > before:
        return None, endpoint
    return (SerialBus(name=name, port=port, baudrate=baud, parity=parity, stopbits=stopbits,
                      inter_frame_gap_s=gap, timeout_s=timeout, retries=retries,
                      protocol=protocol, no_reply_guard_s=guard), endpoint)


def _tcp_bus(chk: Checker, name: str, raw: dict[str, Any],
             p: str) -> tuple[TcpBus | None, str | None]:
    chk.keys(raw, p, TCP_KEYS)
    before = len(chk.problems)
    host = chk.get(raw, p, "host", str,
                   check=lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.:-]+|\[[0-9A-Fa-f:.]+\]", v)),
                   expected="a host name or IP address (not a URL)")
    port = chk.get(raw, p, "port", int, 502, check=lambda v: 1 <= v <= 65535,
                   expected="a TCP port from 1 to 65535")
    framing = chk.choice(raw, p, "framing", TcpFraming, [f.value for f in TcpFraming],
                         default=TcpFraming.SOCKET)
    timeout = _ms(chk, raw, p, "timeout_ms", 1, 60000)
    retries = _retries(chk, raw, p)
    guard = _ms(chk, raw, p, "no_reply_guard_ms", 0, 5000)
    endpoint = f"tcp {host.strip('[]').lower()}:{port}" if host else None
    if len(chk.problems) > before:
        return None, endpoint
    return (TcpBus(name=name, host=host, port=port, framing=framing, timeout_s=timeout,
                   retries=retries, no_reply_guard_s=guard), endpoint)


def parse_devices(chk: Checker, raw: dict[str, Any], buses: dict[str, Bus], declared: set[str],
                  base: Path, roots: FileRoots) -> list[DeviceConfig]:
    """The [devices] tables, each on a ``declared`` bus (built only when it has no problem).

    Profile files resolve against ``base`` and must lie inside ``roots``.
    """
    devices: list[DeviceConfig] = []
    units: dict[tuple[str, int], str] = {}  # (bus, unit id) -> device that has it
    profiles: dict[str, DeviceProfile | None] = {}  # profile file -> parsed (None: bad)
    meter_profiles: dict[str, MeterProfile | None] = {}
    for name, d in raw.items():
        p = f"devices.{name}"
        if not SAFE_ID.fullmatch(name):
            chk.problem(p, name, f"a device name of {SAFE_ID_TEXT}")
        if not isinstance(d, dict):
            chk.problem(p, d, "a table with bus, unit_id, profile and poll_interval_s")
            continue
        if is_meter_bus(buses, d.get("bus")):
            meter = parse_meter_device(chk, name, d, buses, base, roots, units, meter_profiles)
            if meter is not None:
                devices.append(meter)
            continue
        before = len(chk.problems)
        chk.keys(d, p, DEVICE_KEYS)
        bus = chk.get(d, p, "bus", str)
        if bus is not None and bus not in declared:
            chk.problem(f"{p}.bus", bus, "the name of a bus under [buses] ("
                        + (", ".join(sorted(declared)) or "none is defined") + ")")
        unit = chk.get(d, p, "unit_id", int, check=lambda v: 1 <= v <= 247, expected=UNIT_TEXT)
        if bus is not None and unit is not None:
            if (bus, unit) in units:
                chk.problem(f"{p}.unit_id", unit, f"a unit id not already used on bus {bus!r} "
                            f"(devices.{units[bus, unit]} has it)")
            units.setdefault((bus, unit), name)
        poll = chk.get(d, p, "poll_interval_s", float, check=poll_interval_ok,
                       expected=POLL_TEXT)
        profile = _profile(chk, d, p, base, roots, profiles)
        points = _points(chk, d, p, profile)
        for pt in points:  # every point is a series of the schema message: its rules
            why = point_text_problem(pt.name, pt.unit)
            if why is not None:
                chk.problem(f"{p}.profile", f"point {pt.name!r} (unit {pt.unit!r})", why)
        if len(chk.problems) == before and profile is not None and bus in buses:
            devices.append(DeviceConfig(name=name, bus=bus, unit_id=unit, profile=profile,
                                        poll_interval_s=poll, points=tuple(points)))
    return devices


def _profile(chk: Checker, raw: dict[str, Any], p: str, base: Path, roots: FileRoots,
             cache: dict[str, DeviceProfile | None]) -> DeviceProfile | None:
    ref = chk.get(raw, p, "profile", str, check=bool,
                  expected="a shipped profile name or a profile file path")
    if ref is None:
        return None
    shipped = shipped_profiles()
    if ref in shipped:
        path = shipped[ref]
    else:
        placed, why = roots.place(base, ref)
        if placed is None:
            chk.problem(f"{p}.profile", ref, f"a shipped profile or a profile file: {why}")
            return None
        path = placed
    key = str(path)
    if key in cache:
        return cache[key]
    cache[key] = None
    try:
        found = path.is_file()
    except OSError:  # a name too long for the file system, say: no such file either
        found = False
    if not found:
        chk.problem(f"{p}.profile", ref, "a shipped profile (" + (", ".join(shipped) or "none")
                    + f") or a profile file; there is no file at {base / ref}")
        return None
    try:
        cache[key] = parse_profile(load_toml(path), str(path))
    except ConfigError as exc:
        for problem in exc.problems:
            chk.note(f"{p}.profile", f"profile {ref!r} is invalid: {problem}")
    return cache[key]


def _points(chk: Checker, raw: dict[str, Any], p: str,
            profile: DeviceProfile | None) -> list[Point]:
    """The profile's points with this device's overrides applied, then its extra points."""
    overrides = chk.get(raw, p, "points", dict, {})
    extras = chk.get(raw, p, "extra_points", dict, {})
    known = {pt.name: pt for pt in profile.points} if profile is not None else {}
    changed: dict[str, Point | None] = {}  # None: disabled
    for pname, o in overrides.items():
        op = f"{p}.points.{pname}"
        if not isinstance(o, dict):
            chk.problem(op, o, "a table of point overrides")
            continue
        target = known.get(pname)
        if profile is not None and target is None:
            chk.note(op, f"profile {profile.name!r} has no point {pname!r}; expected one of: "
                     + ", ".join(known) + " (define new points under extra_points)")
        changed[pname] = _override(chk, o, op, target)
    points = [changed.get(pt.name, pt) for pt in known.values()]
    result = [pt for pt in points if pt is not None]
    for xname, x in extras.items():
        xp = f"{p}.extra_points.{xname}"
        if xname in known:
            chk.note(xp, f"the profile already has a point {xname!r}; expected a new name "
                     "(change profile points under points.NAME)")
        point = parse_point(chk, xname, x, xp)
        if point is not None:
            result.append(point)
    if profile is not None and not result:
        chk.note(p, "every point is disabled; expected at least one point to poll")
    return result


def _override(chk: Checker, o: dict[str, Any], op: str, target: Point | None) -> Point | None:
    """Apply one point's overrides; None when the point is disabled."""
    chk.keys(o, op, OVERRIDE_KEYS)
    changes: dict[str, Any] = {}
    for key, kind, check, expected in (
        ("interval_s", float, poll_interval_ok, POLL_TEXT),
        ("deadband", float, lambda v: v >= 0, "a number >= 0"),
        ("scale", float, lambda v: v != 0, "a non-zero number"),
        ("offset", float, None, "a number"),
        ("unit", str, None, "a string"),
    ):
        value = chk.get(o, op, key, kind, None, check=check, expected=expected)
        if value is None:
            continue
        if target is not None and key in ("deadband", "scale", "offset") \
                and target.type in NON_NUMERIC:
            chk.problem(f"{op}.{key}", value,
                        f"no {key} on a {target.type.value} point (only numbers take one)")
        changes[key] = value
    enabled = chk.get(o, op, "enabled", bool, True)
    if target is None or not enabled:
        return None
    return replace(target, **changes)
